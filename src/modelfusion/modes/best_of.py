"""best-of: the judge picks one candidate; the answer is that candidate verbatim."""

from __future__ import annotations

from ..judge import consensus_pick
from .base import ModeContext, ModeOutcome, choice_schema, pick_label, register

TASK = (
    "Pick the single best candidate for the user's request. Think briefly about each "
    'candidate\'s correctness first. Reply as JSON: {"reason": "<one or two sentences>", '
    '"choice": "<label>"}'
)


@register("best-of")
async def best_of(ctx: ModeContext) -> ModeOutcome:
    labeled = ctx.labeled()
    system, prompt = ctx.judge_prompt(labeled, TASK)
    verdict = await ctx.judge.verdict(system, prompt, choice_schema(labeled), pick_label(labeled))
    if verdict is None:
        chosen = consensus_pick(ctx.candidates)
        reason = "judge failed; chose the candidate that agrees most with the others"
    else:
        item, reason = verdict
        chosen = item.member
    return ModeOutcome(answer=chosen.content or "", chosen=chosen.model, reason=reason)

"""merge: the judge analyses the candidates, then writes one answer built from them."""

from __future__ import annotations

from typing import Any

from ..accounts import ANALYSIS_SECTIONS, Analysis
from ..judge import Labeled, consensus_pick
from .base import SAMPLES_AGREE, ModeContext, ModeOutcome, register

TASK = """Fuse the candidates into the best possible answer to the user's request.
First analyse them (each item one short sentence; refer to candidates by label):
- consensus: points most candidates agree on
- contradictions: where candidates disagree, and which side is right
- partial_coverage: points only some candidates cover
- unique_insights: valuable points made by a single candidate
- blind_spots: what every candidate missed or got wrong
Then write the answer: complete and self-contained, addressed to the user, keeping what is \
correct from each candidate and fixing what is wrong. Do not mention candidates or labels in it.
Reply as JSON: {"analysis": {"consensus": [...], "contradictions": [...], \
"partial_coverage": [...], "unique_insights": [...], "blind_spots": [...]}, "answer": "..."}"""

SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "analysis": {
            "type": "object",
            "properties": {s: {"type": "array", "items": {"type": "string"}}
                           for s in ANALYSIS_SECTIONS},
            "required": list(ANALYSIS_SECTIONS),
        },
        "answer": {"type": "string"},
    },
    "required": ["analysis", "answer"],
}


def _validate(data: Any) -> tuple[Analysis, str]:
    answer = data["answer"]
    if not isinstance(answer, str) or not answer.strip():
        raise ValueError("the answer is empty")
    raw = data.get("analysis") or {}
    if not isinstance(raw, dict):
        raise ValueError("analysis must be an object")
    return Analysis.from_dict(raw), answer


async def merge_candidates(ctx: ModeContext, labeled: list[Labeled]) -> ModeOutcome:
    system, prompt = ctx.judge_prompt(labeled, TASK)
    # The judge writes the answer here, so the caller's bound on an answer is its bound.
    verdict = await ctx.judge.verdict(system, prompt, SCHEMA, _validate,
                                      max_tokens=ctx.answer_max_tokens)
    if verdict is None:
        chosen = consensus_pick([item.member for item in labeled])
        return ModeOutcome.picked(
            chosen, reason="judge failed; returned the candidate that agrees most with the others")
    analysis, answer = verdict
    return ModeOutcome(answer=answer, analysis=analysis, finish_reason=ctx.judge.finish_reason)


@register("merge", accept=SAMPLES_AGREE)
async def merge(ctx: ModeContext) -> ModeOutcome:
    return await merge_candidates(ctx, ctx.labeled())

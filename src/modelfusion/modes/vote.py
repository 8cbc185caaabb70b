"""vote: for short answers (yes/no, a choice, a number). Normalise, count, report the split.

The judge is used only to map free-text answers to short labels and to break a tie.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from ..accounts import Votes, VoteSplit
from ..judge import bare, normalise
from ..types import MemberResult
from .base import (
    PICK_MAX_TOKENS,
    SAMPLES_AGREE,
    ModeContext,
    ModeOutcome,
    choice_schema,
    pick_label,
    register,
)

MAX_LABEL_WORDS = 4


def is_label(text: str) -> bool:
    return 0 < len(text.split()) <= MAX_LABEL_WORDS and len(text) <= 40


LABEL_TASK = (
    "Each candidate answers a question whose answer is short (yes/no, a choice, a number). "
    "Map every candidate to its final answer as a short canonical label (at most "
    f"{MAX_LABEL_WORDS} words, lower case; use the same label for the same answer). "
    'Reply as JSON: {"labels": {"<candidate label>": "<answer label>", ...}}'
)


def _label_validator(expected: set[str]) -> Any:
    def validate(data: Any) -> dict[str, str]:
        labels = {str(k).strip().upper(): normalise(str(v)) for k, v in data["labels"].items()}
        missing = expected - set(labels)
        if missing:
            raise ValueError(f"labels missing for {sorted(missing)}")
        return {k: labels[k] for k in expected}

    return validate


async def _labels(ctx: ModeContext) -> dict[int, str]:
    """member index -> answer label."""
    plain = {m.index: normalise(m.content or "") for m in ctx.candidates}
    if all(is_label(v) for v in plain.values()):
        return plain
    labeled = ctx.labeled()
    system, prompt = ctx.judge_prompt(labeled, LABEL_TASK)
    schema = {"type": "object", "properties": {"labels": {"type": "object"}},
              "required": ["labels"]}
    mapped = await ctx.judge.verdict(system, prompt, schema,
                                     _label_validator({i.label for i in labeled}),
                                     max_tokens=PICK_MAX_TOKENS)
    if mapped is None:
        # Fallback rule: the first line of each answer, normalised.
        return {m.index: normalise((m.content or "").strip().splitlines()[0])
                for m in ctx.candidates}
    return {item.member.index: mapped[item.label] for item in labeled}


async def _break_tie(ctx: ModeContext, tied: list[str], by_member: dict[int, str]) -> str:
    lead = ctx.lead
    if ctx.adaptive and lead is not None and by_member[lead.index] in tied:
        # The caller's strongest model breaks the tie, not a judge reading answers it
        # cannot check: on the outputs dev set's 21 ties the 1.5B judge was right 3 times,
        # the lead's own answer (always among the tied) 10 times (docs/results.md).
        ctx.judge.skip("tie_to_lead")
        return by_member[lead.index]
    voters = [m for m in ctx.candidates if by_member[m.index] in tied]
    labeled = ctx.labeled(voters)
    task = ("The panel is split between these answers. Pick the candidate whose answer is "
            'correct. Reply as JSON: {"reason": "<one short sentence>", "choice": "<label>"}')
    system, prompt = ctx.judge_prompt(labeled, task)
    verdict = await ctx.judge.verdict(system, prompt, choice_schema(labeled), pick_label(labeled),
                                      max_tokens=PICK_MAX_TOKENS)
    if verdict is None:  # fallback rule: the tied answer of the first-listed member
        return by_member[min(voters, key=lambda m: m.index).index]
    return by_member[verdict[0].member.index]


# The split is the answer, unanimous or not.
@register("vote", shortcut=False, accept=SAMPLES_AGREE)
async def vote(ctx: ModeContext) -> ModeOutcome:
    by_member = await _labels(ctx)
    counts = Counter(by_member.values())
    top = max(counts.values())
    tied = sorted(label for label, n in counts.items() if n == top)
    winner = tied[0] if len(tied) == 1 else await _break_tie(ctx, tied, by_member)
    total = len(by_member)
    names: dict[int, MemberResult] = {m.index: m for m in ctx.candidates}
    split = [
        VoteSplit(label=label, count=n, share=round(n / total, 4),
                  members=[names[i].model for i, lab in by_member.items() if lab == label])
        for label, n in counts.most_common()
    ]
    summary = f"{winner}: {counts[winner]} of {total}, {round(100 * counts[winner] / total)} %"
    votes = Votes(winner=winner, split=split, total=total, tie=len(tied) > 1, summary=summary)
    # Say why no judge was asked (if none was), as the other modes do when they skip it.
    ctx.judge.skip("single_candidate" if total == 1 else "short_answers_no_tie")
    # Short answers: the first winning member's own answer without markup, in its own case
    # (a label is lower case, and `True` is not `true`). Free text the judge labelled: the
    # label.
    first = min(i for i, label in by_member.items() if label == winner)
    text = bare(names[first].content or "")
    answer = text if normalise(text) == winner else winner
    return ModeOutcome(answer=answer, votes=votes, reason=summary)

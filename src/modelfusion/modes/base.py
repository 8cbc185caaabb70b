"""What a mode is: a small async strategy from (request, candidates, judge) to an outcome.

A new mode is one module with one function decorated by `@register("name")`. A mode that
reports something even when the candidates leave nothing to choose (one answered, or all
agree) registers with `shortcut=False`; otherwise the engine answers without it then. A mode
that supports adaptive compute (`max_samples`, docs/adaptive.md) registers its acceptance
rule with `accept=`: how many candidates its first stage holds and when their answer stands.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..accounts import Analysis, ChecksReport, Votes
from ..judge import JUDGE_RULES, Judge, Labeled, anonymise, fence, normalise, render_request
from ..panel import Emit, Member, Panel
from ..types import FusionEvent, MemberResult, Message

if TYPE_CHECKING:
    from ..review.findings import ReviewAnalysis


@dataclass(slots=True, kw_only=True)
class ModeContext:
    messages: list[Message]
    candidates: list[MemberResult]  # the members that answered, in member order
    members: list[MemberResult]  # every member of the first round
    judge: Judge
    seed: int
    nonce: str
    emit: Emit
    # For modes that go back to the panel (debate).
    panel: Panel
    seats: list[Member]
    deadline_at: float
    rounds: int = 1
    # Adaptive compute is on: the caller named the first listed member the lead, its
    # strongest (docs/adaptive.md), and the modes may lean on that (vote: ties go to it).
    adaptive: bool = False
    rubric: str = ""  # from the fusion's skills: extra judging rules, after ours
    # The caller's bound on the answer (the `answer_max_tokens` option): a judge that
    # writes the answer (merge, debate) is held to it, below its own judge_max_tokens.
    answer_max_tokens: int | None = None
    # What a mode keeps between its acceptance test and its run over every candidate (one
    # dict per fusion; verified keeps each candidate's check run there, so none runs twice).
    memo: dict[Any, Any] = field(default_factory=dict)

    @property
    def lead(self) -> MemberResult | None:
        """The first listed member's answer (adaptive compute's lead), if it answered."""
        return next((c for c in self.candidates if c.index == 0), None)

    def labeled(self, candidates: list[MemberResult] | None = None) -> list[Labeled]:
        return anonymise(self.candidates if candidates is None else candidates, self.seed)

    def emit_round(self, round_no: int) -> None:
        self.emit(FusionEvent("round_started", round=round_no))

    def judge_prompt(self, labeled: list[Labeled], task: str) -> tuple[str, str]:
        """(system, user): the rules; the user's request, the fenced candidates, the task."""
        system = JUDGE_RULES.format(nonce=self.nonce)
        if self.rubric:
            system += f"\n\nRubric for this panel (after correctness):\n{self.rubric}"
        user = (
            f"The user's request:\n<request>\n{render_request(self.messages)}\n</request>\n\n"
            f"Candidates:\n\n{fence(labeled, self.nonce)}\n\n{task}"
        )
        return system, user


@dataclass(slots=True, kw_only=True)
class ModeOutcome:
    answer: str
    analysis: Analysis | ReviewAnalysis | None = None
    votes: Votes | None = None
    rounds: list[list[MemberResult]] | None = None
    chosen: str | None = None
    reason: str | None = None
    checks: ChecksReport | None = None  # verified mode
    # Why the answer's text ended (FusionResult.finish_reason): `picked` carries the
    # member's; a mode whose judge wrote the answer passes `Judge.finish_reason`.
    finish_reason: str | None = None

    @classmethod
    def picked(cls, member: MemberResult, **fields: Any) -> ModeOutcome:
        """A member's answer, verbatim: its text, its spec and why its text ended."""
        return cls(answer=member.content or "", chosen=member.model,
                   finish_reason=member.finish_reason, **fields)


ModeFn = Callable[[ModeContext], Awaitable[ModeOutcome]]
# A judge reply that only picks (a label and a one-sentence reason) needs no more tokens
# than this; merge and review, which write, keep `judge_max_tokens`.
PICK_MAX_TOKENS = 256


@dataclass(frozen=True, slots=True)
class Acceptance:
    """A mode's rule for adaptive compute (docs/adaptive.md). Stage 1 is the lead (the
    first listed model) and `first - 1` samples of it; `test` reads stage 1's answered
    candidates and returns why they suffice (`compute.stopped`), or None: spend the rest of
    the budget, then run the mode over every candidate.

    `feedback`, when stage 1 did not stand: why the lead's answer was not taken, as a
    message to the lead model (verified: the checks its code failed). Stage 2's samples of
    the lead are shown the lead's answer and this message, and revise it. None, or no
    message: they answer the request afresh."""

    first: int
    test: Callable[[ModeContext], Awaitable[str | None]]
    feedback: Callable[[ModeContext], Awaitable[str | None]] | None = None


async def _samples_agree(ctx: ModeContext) -> str | None:
    answers = {normalise(c.content or "") for c in ctx.candidates}
    return "samples_agree" if len(ctx.candidates) >= 2 and len(answers) == 1 else None


# Text modes: the lead and one sample of it; the same answer (as `normalise` reads it) twice
# stands.
SAMPLES_AGREE = Acceptance(first=2, test=_samples_agree)


@dataclass(frozen=True, slots=True)
class ModeSpec:
    name: str
    run: ModeFn
    # The engine may skip the mode (and the judge) when the candidates leave nothing to
    # choose (`judge.nothing_to_judge`). False: the mode reports something even then (vote
    # its split, verified the checks each passed, review the agreement) and decides itself.
    shortcut: bool = True
    # Adaptive compute: when stage 1's answer stands. None: the mode takes no max_samples.
    accept: Acceptance | None = None


MODES: dict[str, ModeSpec] = {}


def register(name: str, *, shortcut: bool = True, accept: Acceptance | None = None
             ) -> Callable[[ModeFn], ModeFn]:
    def deco(fn: ModeFn) -> ModeFn:
        MODES[name] = ModeSpec(name, fn, shortcut, accept)
        return fn

    return deco


def pick_label(labeled: list[Labeled]) -> Callable[[Any], tuple[Labeled, str]]:
    """Validator for {"choice": "B", "reason": "..."} verdicts."""
    by_label = {item.label: item for item in labeled}

    def validate(data: Any) -> tuple[Labeled, str]:
        choice = str(data["choice"]).strip().strip('"').upper()
        if choice not in by_label:
            raise ValueError(f"choice {choice!r} is not one of {sorted(by_label)}")
        return by_label[choice], str(data.get("reason", ""))

    return validate


def choice_schema(labeled: list[Labeled]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "reason": {"type": "string"},
            "choice": {"type": "string", "enum": [item.label for item in labeled]},
        },
        "required": ["reason", "choice"],
        "additionalProperties": False,
    }

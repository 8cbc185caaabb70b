"""Typed values that flow through the engine: messages, usage, completions, results, events."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from .accounts import Analysis, ChecksReport, Compute, Votes

if TYPE_CHECKING:  # review imports the judge, which imports this module
    from .review.findings import ReviewAnalysis

Role = Literal["system", "user", "assistant"]

# Why a member produced no answer. Stable strings: tests, traces and users rely on them.
FailureReason = Literal["timeout", "rate_limited", "upstream_error", "bad_response", "cancelled"]
MemberStatus = Literal["pending", "ok", "failed", "cancelled"]
JudgeStatus = Literal["ok", "fallback", "skipped"]


@dataclass(frozen=True, slots=True)
class Message:
    role: Role
    content: str

    def to_dict(self) -> dict[str, str]:
        return {"role": self.role, "content": self.content}


def to_messages(prompt: str | Sequence[Message | Mapping[str, Any]]) -> list[Message]:
    """Accept a bare prompt, Message objects or OpenAI-style dicts."""
    if isinstance(prompt, str):
        return [Message("user", prompt)]
    out: list[Message] = []
    for m in prompt:
        if isinstance(m, Message):
            out.append(m)
        else:
            out.append(Message(m["role"], str(m.get("content") or "")))
    return out


@dataclass(slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            self.prompt_tokens + other.prompt_tokens,
            self.completion_tokens + other.completion_tokens,
        )

    def to_dict(self) -> dict[str, int]:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}


@dataclass(frozen=True, slots=True, kw_only=True)
class GenerationParams:
    """What one call to one model is asked to do (everything but the messages)."""

    temperature: float | None = None
    max_tokens: int | None = None
    seed: int | None = None
    top_p: float | None = None  # nucleus sampling; None = the provider's default
    # Strings that end the answer where they first appear (not part of it): OpenAI's `stop`.
    stop: tuple[str, ...] | None = None
    # A JSON schema the answer must follow; providers that support structured output enforce it.
    json_schema: dict[str, Any] | None = None


@dataclass(slots=True)
class Completion:
    """One model's finished answer, as a provider returns it."""

    content: str
    usage: Usage = field(default_factory=Usage)
    # USD as reported by the provider (OpenRouter does); None when it reported none.
    cost: float | None = None
    finish_reason: str | None = None


@dataclass(slots=True)
class MemberResult:
    """One panel member's outcome. `model` is the spec the user wrote (e.g. `openai:gpt-4o`)."""

    index: int
    model: str
    status: MemberStatus = "pending"
    reason: FailureReason | None = None
    error: str | None = None
    content: str | None = None
    usage: Usage = field(default_factory=Usage)
    latency_ms: float = 0.0
    cost: float | None = None
    attempts: int = 0
    # Why the model stopped, as its provider said: "stop", "length" (cut at max_tokens)...
    finish_reason: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "status": self.status,
            "reason": self.reason,
            "error": self.error,
            "content": self.content,
            "usage": self.usage.to_dict(),
            "latency_ms": round(self.latency_ms, 1),
            "cost": self.cost,
            "attempts": self.attempts,
            "finish_reason": self.finish_reason,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, index: int) -> MemberResult:
        """Back from `to_dict()` (a trace); the index is the member's place in its list."""
        return cls(index=index, model=d["model"], status=d["status"], reason=d.get("reason"),
                   error=d.get("error"), content=d.get("content"),
                   usage=Usage(**d.get("usage") or {}), latency_ms=d.get("latency_ms") or 0.0,
                   cost=d.get("cost"), attempts=d.get("attempts") or 0,
                   finish_reason=d.get("finish_reason"))


@dataclass(slots=True)
class JudgeResult:
    model: str | None
    status: JudgeStatus = "ok"
    reason: str | None = None
    error: str | None = None
    usage: Usage = field(default_factory=Usage)
    latency_ms: float = 0.0
    cost: float | None = None
    # The order in which candidates were shown to the judge: label -> member index.
    labels: dict[str, int] = field(default_factory=dict)
    shuffle_seed: int | None = None
    # member index -> kinds of judge-addressed text removed from the judge's view of it
    defused: dict[int, list[str]] = field(default_factory=dict)
    demoted: list[int] = field(default_factory=list)  # best-of: kept from the judge for it

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "status": self.status,
            "reason": self.reason,
            "error": self.error,
            "usage": self.usage.to_dict(),
            "latency_ms": round(self.latency_ms, 1),
            "cost": self.cost,
            "labels": self.labels,
            "shuffle_seed": self.shuffle_seed,
            "defused": self.defused,
            "demoted": self.demoted,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> JudgeResult:
        return cls(model=d.get("model"), status=d.get("status", "ok"), reason=d.get("reason"),
                   error=d.get("error"), usage=Usage(**d.get("usage") or {}),
                   latency_ms=d.get("latency_ms") or 0.0, cost=d.get("cost"),
                   labels=dict(d.get("labels") or {}), shuffle_seed=d.get("shuffle_seed"),
                   # JSON keys are strings; member indexes are ints
                   defused={int(k): list(v) for k, v in (d.get("defused") or {}).items()},
                   demoted=list(d.get("demoted") or []))


def spent(calls: Sequence[MemberResult | JudgeResult]) -> tuple[Usage, float | None]:
    """The tokens and USD of these calls. The cost is None when any call that used tokens
    (or reported a cost) has no known cost, or when none did: a partial sum would mislead."""
    usage = sum((c.usage for c in calls), Usage())
    costs = [c.cost for c in calls if c.usage.total_tokens or c.cost]
    if not costs or any(c is None for c in costs):
        return usage, None
    return usage, sum(c for c in costs if c is not None)


@dataclass(slots=True)
class Timings:
    total_ms: float = 0.0
    panel_ms: float = 0.0
    judge_ms: float = 0.0

    @property
    def overhead_ms(self) -> float:
        return max(0.0, self.total_ms - self.panel_ms - self.judge_ms)

    def to_dict(self) -> dict[str, float]:
        d = {k: round(v, 2) for k, v in asdict(self).items()}
        d["overhead_ms"] = round(self.overhead_ms, 2)
        return d


@dataclass(slots=True)
class FusionResult:
    """Everything that happened in one fusion. `to_dict()` is the `fusion ask --json` contract."""

    answer: str
    mode: str
    members: list[MemberResult]
    judge: JudgeResult
    analysis: Analysis | ReviewAnalysis | None = None  # merge and debate; review
    votes: Votes | None = None  # vote mode
    rounds: list[list[MemberResult]] | None = None
    reason: str | None = None  # the judge's stated reason for its choice (best-of)
    chosen: str | None = None  # the member spec whose answer was chosen verbatim (best-of)
    degraded: bool = False  # some member failed or was cancelled
    timings: Timings = field(default_factory=Timings)
    checks: ChecksReport | None = None  # verified mode: which checks each candidate passed
    compute: Compute | None = None  # adaptive compute: samples spent, why it stopped
    # Why the answer ended: the finish reason of the call that wrote it (the chosen member's,
    # or the judge's where the judge wrote it); "length" = cut at max_tokens. None: not a
    # model's text (vote's label, review's findings) or not reported. Not in to_dict(): a
    # trace keeps the --json contract and has no column for it (the members' is kept).
    finish_reason: str | None = None

    @property
    def usage(self) -> Usage:
        return spent([*self._all_members(), self.judge])[0]

    @property
    def cost(self) -> float | None:
        """Sum of known costs; None if any call that used tokens has no known cost."""
        cost = spent([*self._all_members(), self.judge])[1]
        return None if cost is None else round(cost, 8)

    def _all_members(self) -> list[MemberResult]:
        if self.rounds:
            return [m for r in self.rounds for m in r]
        return self.members

    def to_dict(self) -> dict[str, Any]:
        return {
            "answer": self.answer,
            "mode": self.mode,
            "degraded": self.degraded,
            "chosen": self.chosen,
            "reason": self.reason,
            "members": [m.to_dict() for m in self.members],
            "judge": self.judge.to_dict(),
            "analysis": self.analysis.to_dict() if self.analysis else None,
            "votes": self.votes.to_dict() if self.votes else None,
            "rounds": [[m.to_dict() for m in r] for r in self.rounds] if self.rounds else None,
            "checks": self.checks.to_dict() if self.checks else None,
            "compute": self.compute.to_dict() if self.compute else None,
            "usage": self.usage.to_dict(),
            "cost": self.cost,
            "timings": self.timings.to_dict(),
        }


EventType = Literal[
    "member_started",
    "member_delta",
    "member_done",
    "member_failed",
    "round_started",
    "judge_started",
    "judge_done",
    "answer_delta",
    "done",
    "error",
]


@dataclass(frozen=True, slots=True)
class FusionEvent:
    """One step of progress. The CLI renders these, the server sends them as SSE."""

    type: EventType
    member: int | None = None  # member index
    model: str | None = None
    text: str | None = None  # delta text for *_delta events
    member_result: MemberResult | None = None
    result: FusionResult | None = None
    error: BaseException | None = None
    round: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": self.type}
        for key in ("member", "model", "text", "round"):
            value = getattr(self, key)
            if value is not None:
                d[key] = value
        if self.member_result is not None:
            d["member_result"] = self.member_result.to_dict()
        if self.result is not None:
            d["result"] = self.result.to_dict()
        if self.error is not None:
            d["error"] = str(self.error)
        return d

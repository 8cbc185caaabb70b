"""One line of records.jsonl: what one config did on one problem.

`EvalRecord.to_dict()` is the line's exact JSON (key order included); `from_dict()` reads a
line back. Only `config` and `task_id` are required: a record from an older run without the
newer keys still loads (their defaults: none replayed, nothing known).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ..accounts import Compute
from ..types import Usage


def _tokens(usage: Usage) -> dict[str, int]:
    return {"prompt": usage.prompt_tokens, "completion": usage.completion_tokens}


def _usage(d: Mapping[str, Any] | None) -> Usage:
    d = d or {}
    return Usage(d.get("prompt", 0), d.get("completion", 0))


@dataclass(slots=True, kw_only=True)
class EvalMember:
    """One panel member's answer to the problem, graded on its own (the solo view)."""

    model: str
    status: str  # the MemberResult status
    reason: str | None = None  # why it failed, when it did
    passed: bool | None = None  # None: it gave no answer to grade
    error: str | None = None  # the grade's error kind (evals/grade.py), when graded
    latency_ms: float = 0.0
    tokens: Usage = field(default_factory=Usage)
    # The member's own answer, kept where answers are short (outputs): what shows whether a
    # fused answer was a member's, and which. None (and no key): not kept (humaneval).
    answer: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"model": self.model, "status": self.status, "reason": self.reason,
               "passed": self.passed, "error": self.error, "latency_ms": self.latency_ms,
               "tokens": _tokens(self.tokens)}
        if self.answer is not None:
            out["answer"] = self.answer
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EvalMember:
        return cls(model=d.get("model", ""), status=d.get("status", ""),
                   reason=d.get("reason"), passed=d.get("passed"), error=d.get("error"),
                   latency_ms=d.get("latency_ms", 0.0), tokens=_usage(d.get("tokens")),
                   answer=d.get("answer"))


@dataclass(slots=True, kw_only=True)
class EvalRecord:
    config: str  # the config's name ("solo fake:good", "fused best-of", ...)
    task_id: str
    seed: int = 0  # the problem's seed (runner.problem_seed)
    passed: bool = False
    error: str | None = None  # the grade's error kind when not passed
    error_detail: str = ""
    answer: str | None = None  # the fused answer; None when every member failed
    code: str = ""  # the code graded, as extracted from the answer
    tokens: Usage = field(default_factory=Usage)  # members + judge
    cost: float | None = None  # USD; None when unknown (or the fusion failed)
    latency_ms: float = 0.0  # fusion_ms + replayed_ms: what a live run would have taken
    fusion_ms: float = 0.0
    replayed_ms: float = 0.0  # the recorded latency of the calls answered from the cache
    replayed_calls: int = 0
    live_calls: int = 0
    chosen: str | None = None
    reason: str | None = None  # the judge's reason, or the failure's message
    judge_status: str | None = None  # None: no judge result (the fusion failed)
    judge_reason: str | None = None
    members: list[EvalMember] = field(default_factory=list)
    compute: Compute | None = None  # adaptive compute: samples used, why it stopped

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config, "task_id": self.task_id, "seed": self.seed,
            "passed": self.passed, "error": self.error, "error_detail": self.error_detail,
            "answer": self.answer, "code": self.code, "tokens": _tokens(self.tokens),
            "cost": self.cost, "latency_ms": self.latency_ms, "fusion_ms": self.fusion_ms,
            "replayed_ms": self.replayed_ms, "replayed_calls": self.replayed_calls,
            "live_calls": self.live_calls, "chosen": self.chosen, "reason": self.reason,
            "judge": {"status": self.judge_status, "reason": self.judge_reason}
            if self.judge_status is not None else None,
            "members": [m.to_dict() for m in self.members],
            "compute": self.compute.to_dict() if self.compute else None,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> EvalRecord:
        """A line read back; KeyError without `config` or `task_id` (not a record)."""
        judge = d.get("judge")
        judge = judge if isinstance(judge, Mapping) else {}
        return cls(
            config=d["config"], task_id=d["task_id"], seed=d.get("seed", 0),
            passed=d.get("passed", False), error=d.get("error"),
            error_detail=d.get("error_detail", ""), answer=d.get("answer"),
            code=d.get("code", ""), tokens=_usage(d.get("tokens")), cost=d.get("cost"),
            latency_ms=d.get("latency_ms", 0.0), fusion_ms=d.get("fusion_ms", 0.0),
            replayed_ms=d.get("replayed_ms", 0.0), replayed_calls=d.get("replayed_calls", 0),
            live_calls=d.get("live_calls", 0), chosen=d.get("chosen"), reason=d.get("reason"),
            judge_status=judge.get("status"), judge_reason=judge.get("reason"),
            members=[EvalMember.from_dict(m) for m in d.get("members") or []],
            compute=Compute.from_dict(d["compute"]) if d.get("compute") else None,
        )

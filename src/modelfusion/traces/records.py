"""Traces as typed records: a `FusionResult` (or a failure) to a row, and a row back.

`TraceSummary` is one line of `fusion log`; `TraceRecord` one fusion as `fusion show` and
`GET /v1/fusion/traces/{id}` give it, with the same keys as `FusionResult.to_dict()`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..accounts import Analysis, ChecksReport, Compute, Votes
from ..errors import RunError
from ..review.findings import ReviewAnalysis
from ..types import FusionResult, JudgeResult, MemberResult, Message, Usage, spent, to_messages
from .schema import PREVIEW_CHARS

SHORT_ID = 8  # characters of the id that `fusion log` shows and `fusion show` accepts

# ---------------------------------------------------------------- typed records


@dataclass(frozen=True, slots=True)
class TraceSummary:
    """One line of `fusion log`."""

    id: str
    created_at: datetime  # UTC, aware
    source: str
    preset: str | None
    mode: str | None
    status: str  # ok | failed
    degraded: bool
    members_ok: int
    members_failed: int
    cost: float | None
    total_ms: float | None
    prompt_preview: str | None  # None when prompts were not stored
    error_code: str | None
    owner: str | None = None  # the server key's id (server/auth.key_id); None: no key

    @property
    def short_id(self) -> str:
        return self.id[:SHORT_ID]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "created_at": self.created_at.isoformat(),
            "source": self.source,
            "preset": self.preset,
            "mode": self.mode,
            "status": self.status,
            "degraded": self.degraded,
            "members_ok": self.members_ok,
            "members_failed": self.members_failed,
            "cost": self.cost,
            "total_ms": self.total_ms,
            "prompt_preview": self.prompt_preview,
            "error": {"code": self.error_code} if self.error_code else None,
            "owner": self.owner,
        }


@dataclass(frozen=True, slots=True)
class TraceRecord:
    """One fusion as it was kept: the summary plus everything `FusionResult` held."""

    summary: TraceSummary
    messages: list[Message] | None  # None when prompts were not stored
    answer: str | None
    chosen: str | None
    reason: str | None
    members: list[MemberResult]
    judge: JudgeResult | None  # None for a failed fusion (no judge ran)
    analysis: Analysis | ReviewAnalysis | None
    votes: Votes | None
    rounds: list[list[MemberResult]] | None
    usage: Usage
    timings: dict[str, float] = field(default_factory=dict)
    error_message: str | None = None
    checks: ChecksReport | None = None  # verified mode
    compute: Compute | None = None  # adaptive compute (max_samples)

    @property
    def id(self) -> str:
        return self.summary.id

    def to_dict(self) -> dict[str, Any]:
        """Trace metadata + the same keys as `FusionResult.to_dict()` (the --json contract)."""
        s = self.summary
        head = {k: v for k, v in s.to_dict().items() if k not in ("prompt_preview", "error")}
        return {
            **head,
            "messages": [m.to_dict() for m in self.messages] if self.messages is not None
            else None,
            "answer": self.answer,
            "chosen": self.chosen,
            "reason": self.reason,
            "members": [m.to_dict() for m in self.members],
            "judge": self.judge.to_dict() if self.judge else None,
            "analysis": self.analysis.to_dict() if self.analysis else None,
            "votes": self.votes.to_dict() if self.votes else None,
            "rounds": [[m.to_dict() for m in r] for r in self.rounds] if self.rounds else None,
            "checks": self.checks.to_dict() if self.checks else None,
            "compute": self.compute.to_dict() if self.compute else None,
            "usage": self.usage.to_dict(),
            "timings": self.timings,
            "error": {"code": s.error_code, "message": self.error_message}
            if s.error_code else None,
        }


# ---------------------------------------------------------------- rows <-> records


@dataclass(slots=True)
class _Pending:
    """What record() captured; turned into a row on the writer thread, off the caller's path."""

    trace_id: str
    created_at: datetime
    result: FusionResult | None
    messages: list[Message] | None
    source: str
    preset: str | None
    mode: str | None
    error: Exception | None
    owner: str | None = None
    # False: keep nothing of the request's text (the store's store_prompts), neither the
    # messages nor what other columns quote of them (verified's checks).
    prompts: bool = True


def _row(p: _Pending) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": p.trace_id, "created_at": p.created_at, "source": p.source, "preset": p.preset,
        "messages": [m.to_dict() for m in p.messages] if p.messages is not None else None,
        "prompt_preview": _preview(p.messages),
        "error_code": None, "error_message": None, "owner": p.owner,
    }
    if p.result is not None:
        row.update(_result_columns(p.result, prompts=p.prompts))
    else:
        row.update(_failure_columns(p.error, p.mode))
    return _clean(row)


def _result_columns(r: FusionResult, *, prompts: bool) -> dict[str, Any]:
    d = r.to_dict()
    if not prompts and r.checks is not None:  # the checks quote the request's code
        d["checks"] = r.checks.without_request_text().to_dict()
    ok = sum(m.ok for m in r.members)
    return {
        "mode": r.mode, "status": "ok", "answer": r.answer, "chosen": r.chosen,
        "reason": r.reason, "members": d["members"], "judge": d["judge"],
        "analysis": d["analysis"], "votes": d["votes"], "rounds": d["rounds"],
        "checks": d["checks"], "compute": d["compute"], "timings": d["timings"],
        "prompt_tokens": r.usage.prompt_tokens,
        "completion_tokens": r.usage.completion_tokens, "cost": r.cost,
        "total_ms": round(r.timings.total_ms, 2), "degraded": r.degraded,
        "members_ok": ok, "members_failed": len(r.members) - ok,
    }


def _failure_columns(error: Exception | None, mode: str | None) -> dict[str, Any]:
    members = list(error.members) if isinstance(error, RunError) else []
    usage, cost = spent(members)
    ok = sum(m.ok for m in members)
    return {
        "mode": mode, "status": "failed", "answer": None, "chosen": None, "reason": None,
        "members": [m.to_dict() for m in members], "judge": None, "analysis": None,
        "votes": None, "rounds": None, "checks": None, "compute": None, "timings": None,
        "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
        "cost": cost, "total_ms": None, "degraded": True,
        "members_ok": ok, "members_failed": len(members) - ok,
        "error_code": getattr(error, "code", None) or type(error).__name__,
        "error_message": str(error),
    }


def _preview(messages: list[Message] | None) -> str | None:
    if not messages:
        return None
    users = [m for m in messages if m.role == "user"] or messages
    lines = [line.strip() for line in users[-1].content.splitlines() if line.strip()]
    return (lines[0] if lines else "")[:PREVIEW_CHARS]


def _clean(value: Any) -> Any:
    # PostgreSQL refuses NUL in text and jsonb; a model can emit one. Keep the rest intact.
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _utc(value: datetime) -> datetime:
    # SQLite keeps no zone; we only ever write UTC.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _summary(row: Any) -> TraceSummary:
    return TraceSummary(
        id=row.id, created_at=_utc(row.created_at), source=row.source, preset=row.preset,
        mode=row.mode, status=row.status, degraded=bool(row.degraded),
        members_ok=row.members_ok, members_failed=row.members_failed, cost=row.cost,
        total_ms=row.total_ms, prompt_preview=row.prompt_preview, error_code=row.error_code,
        owner=row.owner,
    )


def _members(rows: list[dict[str, Any]]) -> list[MemberResult]:
    return [MemberResult.from_dict(d, index=i) for i, d in enumerate(rows)]


def _analysis(mode: str | None, d: dict[str, Any] | None) -> Analysis | ReviewAnalysis | None:
    """Each mode keeps its own account in the one `analysis` column: review its findings,
    merge and debate the judge's sections."""
    if d is None:
        return None
    return ReviewAnalysis.from_dict(d) if mode == "review" else Analysis.from_dict(d)


def _record(row: Any) -> TraceRecord:
    return TraceRecord(
        summary=_summary(row),
        messages=to_messages(row.messages) if row.messages is not None else None,
        answer=row.answer, chosen=row.chosen, reason=row.reason,
        members=_members(row.members or []),
        judge=JudgeResult.from_dict(row.judge) if row.judge is not None else None,
        analysis=_analysis(row.mode, row.analysis),
        votes=Votes.from_dict(row.votes) if row.votes is not None else None,
        rounds=[_members(r) for r in row.rounds] if row.rounds else None,
        usage=Usage(row.prompt_tokens, row.completion_tokens),
        timings=dict(row.timings or {}), error_message=row.error_message,
        checks=ChecksReport.from_dict(row.checks) if row.checks else None,
        compute=Compute.from_dict(row.compute) if row.compute else None,
    )



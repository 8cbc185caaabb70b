"""What the MCP tools hand back: text for the model that called them, and the same facts
as structured content (the `fusion ask --json` / `fusion review --format json` shapes).

No SDK here: `server.py` wraps these in the SDK's result types.
"""

from __future__ import annotations

from typing import Any

from ..errors import RunError
from ..review import report
from ..review.findings import Finding
from ..types import FusionResult


def fuse_payload(result: FusionResult, *, trace_id: str | None,
                 show_members: bool) -> dict[str, Any]:
    """`FusionResult.to_dict()` (the --json contract) plus `trace_id`. Members' answers are
    left out unless `show_members`: the fused answer is what the caller asked for, and the
    trace keeps every answer (`fusion show TRACE`)."""
    out = result.to_dict()
    if not show_members:
        for member in [*out["members"], *(m for r in out["rounds"] or () for m in r)]:
            member.pop("content", None)
    out["trace_id"] = trace_id
    return out


def fuse_text(result: FusionResult, *, trace_id: str | None) -> str:
    """The lines after the answer: how the panel did and how it was decided."""
    ok = sum(m.ok for m in result.members)
    judge = result.judge.status + (f" ({result.judge.reason})" if result.judge.reason else "")
    cost = "cost unknown" if result.cost is None else f"${result.cost:.6g}"
    parts = [result.mode, *([result.compute.line()] if result.compute else []),
             f"{ok}/{len(result.members)} members ok", f"judge {judge}",
             f"{result.usage.total_tokens} tokens", cost,
             f"{result.timings.total_ms / 1000:.1f} s",
             *([f"trace {trace_id}"] if trace_id else [])]
    lines = [" · ".join(parts)]
    lines += [member_line(m.model, m.status, m.reason, m.error)
              for m in result.members if not m.ok]
    if result.chosen:
        lines.append(f"chosen: {result.chosen}"
                     + (f" ({result.reason})" if result.reason else ""))
    if result.votes is not None:
        lines.append(f"votes: {result.votes.summary}")
    if result.checks is not None:
        lines += result.checks.lines()
    return "\n".join(lines)


def failure_text(e: RunError, *, trace_id: str | None) -> str:
    """A failed fusion as the tool error's message (which names each member's failure when
    they all failed) and where its trace is."""
    return f"fusion failed ({e.code}): {e}" + (f"\ntrace {trace_id}" if trace_id else "")


def member_line(model: str, status: str, reason: str | None, error: str | None) -> str:
    return f"{model}: {status}" + (f" ({reason})" if reason else "") + (
        f": {error}" if error else "")


def review_payload(findings: list[Finding], summary: dict[str, Any]) -> dict[str, Any]:
    """The `fusion review --format json` document."""
    return {"findings": [f.to_dict() for f in findings], "summary": summary}


def review_text(findings: list[Finding], summary: dict[str, Any]) -> str:
    """The markdown report `fusion review --format markdown` writes for a PR comment."""
    return report.markdown(findings, summary)

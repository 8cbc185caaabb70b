"""What a mode reports beside its answer: merge's analysis, vote's split, verified's checks.

Each is typed here and serialised by its own `to_dict()`, which is the shape the `--json`
contract, the traces and the web page carry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

from .text import clip


@dataclass(slots=True)
class Analysis:
    """Merge's (and debate's) account of the candidates: short sentences, by section."""

    consensus: list[str] = field(default_factory=list)  # points most candidates agree on
    contradictions: list[str] = field(default_factory=list)  # and which side is right
    partial_coverage: list[str] = field(default_factory=list)  # covered by only some
    unique_insights: list[str] = field(default_factory=list)  # made by a single candidate
    blind_spots: list[str] = field(default_factory=list)  # what every candidate missed

    def to_dict(self) -> dict[str, list[str]]:
        return {s: getattr(self, s) for s in ANALYSIS_SECTIONS}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Analysis:
        """Lenient, as it also reads the judge's JSON: a missing section is empty, a single
        item becomes a list of one, every item a string."""
        sections: dict[str, list[str]] = {}
        for s in ANALYSIS_SECTIONS:
            items = d.get(s) or []
            sections[s] = [str(x) for x in (items if isinstance(items, list) else [items])]
        return cls(**sections)


# The sections in the order the judge is asked for them and `fusion show` lists them.
ANALYSIS_SECTIONS: tuple[str, ...] = tuple(f.name for f in fields(Analysis))


@dataclass(slots=True)
class VoteSplit:
    """One answer's share of a vote."""

    label: str  # the normalised answer
    count: int
    share: float  # count / total, 4 decimals
    members: list[str]  # the member specs that gave it, in member order

    def to_dict(self) -> dict[str, Any]:
        return {"label": self.label, "count": self.count, "share": self.share,
                "members": self.members}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VoteSplit:
        return cls(label=str(d.get("label", "")), count=int(d.get("count", 0)),
                   share=float(d.get("share") or 0.0), members=list(d.get("members") or []))


@dataclass(slots=True)
class Votes:
    """Vote mode's account: the winning label and how the panel split."""

    winner: str
    split: list[VoteSplit]  # most votes first
    total: int  # members that voted
    tie: bool  # the top was tied and the judge (or the fallback rule) broke it
    summary: str  # "ship: 3 of 4, 75 %"

    def to_dict(self) -> dict[str, Any]:
        return {"winner": self.winner, "split": [s.to_dict() for s in self.split],
                "total": self.total, "tie": self.tie, "summary": self.summary}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Votes:
        return cls(winner=str(d.get("winner", "")),
                   split=[VoteSplit.from_dict(s) for s in d.get("split") or []],
                   total=int(d.get("total", 0)), tie=bool(d.get("tie")),
                   summary=str(d.get("summary") or ""))


@dataclass(slots=True)
class CheckOutcome:
    """One visible check run against one candidate's code (verified mode)."""

    check: str  # the expression or statement, as the request wrote it
    expected: str | None  # the expected output or value as written; None: an assert
    ok: bool
    actual: str | None = None  # repr of what the code produced, or the exception (truncated)

    def to_dict(self) -> dict[str, Any]:
        return {"check": self.check, "expected": self.expected, "ok": self.ok,
                "actual": self.actual}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CheckOutcome:
        return cls(check=str(d.get("check", "")), expected=d.get("expected"),
                   ok=bool(d.get("ok")), actual=d.get("actual"))


@dataclass(slots=True)
class CandidateChecks:
    """How one candidate did against the request's visible checks."""

    member: int  # member index
    model: str
    passed: int
    total: int
    # How many other candidates produced exactly the same outputs on the checks' inputs;
    # None when this one cannot be compared (no code, crashed, timed out, not run).
    agreement: int | None
    status: str  # ran | no_code | timeout | crashed | not_run
    error: str | None = None
    isolated: bool = False  # the sandbox had its own network and PID namespaces
    results: list[CheckOutcome] = field(default_factory=list)
    # Its behaviour group: the member index of the first candidate with exactly the same
    # outputs on every input (its own index when it is the first); None when `agreement` is.
    group: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"member": self.member, "model": self.model, "passed": self.passed,
                "total": self.total, "agreement": self.agreement, "status": self.status,
                "error": self.error, "isolated": self.isolated,
                "results": [r.to_dict() for r in self.results], "group": self.group}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CandidateChecks:
        return cls(member=int(d.get("member", 0)), model=str(d.get("model", "")),
                   passed=int(d.get("passed", 0)), total=int(d.get("total", 0)),
                   agreement=d.get("agreement"), status=str(d.get("status", "")),
                   error=d.get("error"), isolated=bool(d.get("isolated")),
                   results=[CheckOutcome.from_dict(r) for r in d.get("results") or []],
                   group=d.get("group"))

    def line(self) -> str:
        """One line for a terminal: `model: 2/3 checks passed · failed f(1): ...`."""
        parts = [f"{self.model}: {self.passed}/{self.total} checks passed" if self.total
                 else f"{self.model}: no visible checks"]
        if self.agreement:
            parts.append(f"same outputs as {self.agreement} other"
                         + ("s" if self.agreement > 1 else ""))
        failed = [r for r in self.results if not r.ok]
        if failed and self.status in ("ran", "timeout") and failed[0].actual is not None:
            r = failed[0]
            want = f" expected {r.expected}," if r.expected else ""
            parts.append(f"failed {_line(r.check)}:{want} got {_line(r.actual or '')}")
        if self.error:
            parts.append(_line(self.error))
        if self.status == "ran" and not self.isolated:
            parts.append("sandbox without namespaces")
        return " · ".join(parts)


def _line(text: str) -> str:
    return clip(text, 80, one_line=True)


@dataclass(slots=True)
class ChecksReport:
    """Verified mode's account: the checks found, each candidate's results, the rule used."""

    total: int  # visible checks found in the request
    # per kind: doctest, assert, example; probe and generated (inputs, not counted)
    found: dict[str, int]
    rule: str  # one_passed | several_passed | none_passed | no_checks
    passing: list[int]  # member indexes that passed every check
    candidates: list[CandidateChecks]
    # Wall time spent running the checks (inside `timings.overhead_ms`: not panel, not judge).
    duration_ms: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"total": self.total, "found": self.found, "rule": self.rule,
                "passing": self.passing, "candidates": [c.to_dict() for c in self.candidates],
                "duration_ms": round(self.duration_ms, 1)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ChecksReport:
        return cls(total=int(d.get("total", 0)), found=dict(d.get("found") or {}),
                   rule=str(d.get("rule", "")), passing=list(d.get("passing") or []),
                   candidates=[CandidateChecks.from_dict(c) for c in d.get("candidates") or []],
                   duration_ms=float(d.get("duration_ms") or 0.0))

    def without_request_text(self) -> ChecksReport:
        """The account with nothing the request wrote: what a trace keeps when prompts are
        not stored (--no-store-prompts). A check's source, its expected value and the
        code's output quote the request (its doctest and assert lines, their literals), and
        an error can name its functions or echo a failing line: those go. Counts, pass/fail
        per check, status, agreement and groups stay."""
        return replace(self, candidates=[
            replace(c, error=None, results=[CheckOutcome(check="", expected=None, ok=r.ok)
                                            for r in c.results])
            for c in self.candidates])

    def lines(self) -> list[str]:
        """What a terminal shows: one line per candidate, or that there was nothing to run."""
        if not self.total and all(c.agreement is None for c in self.candidates):
            return ["checks: none found in the request (no doctest examples, asserts or "
                    "f(x) == y lines)"]
        return [f"checks {c.line()}" for c in self.candidates]


@dataclass(slots=True)
class Compute:
    """Adaptive compute's account (`max_samples` / `effort`, docs/adaptive.md): what the
    fusion spent and why it stopped. None on a result when adaptive compute is off."""

    max_samples: int  # the budget: candidates at most
    samples_used: int  # candidates dispatched, stage 1 and stage 2 together
    stages: int  # 1: stage 1 was all that ran; 2: the rest of the budget was dispatched
    # lead_passed_checks | nothing_to_verify | samples_agree (the mode accepted stage 1) |
    # budget_spent (every sample of the budget was dispatched) | deadline (no time was left
    # for stage 2)
    stopped: str
    lead: str  # the lead's label: the first listed model, asked first
    # Stage 2's samples of the lead that were shown its answer and why it was not taken
    # (the failing checks), to revise it; 0 when none were (`revise` off, or no feedback).
    revised: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"max_samples": self.max_samples, "samples_used": self.samples_used,
                "stages": self.stages, "stopped": self.stopped, "lead": self.lead,
                "revised": self.revised}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Compute:
        return cls(max_samples=int(d.get("max_samples", 0)),
                   samples_used=int(d.get("samples_used", 0)), stages=int(d.get("stages", 0)),
                   stopped=str(d.get("stopped", "")), lead=str(d.get("lead", "")),
                   revised=int(d.get("revised", 0)))

    def line(self) -> str:
        """`1 of 4 samples · lead passed checks`."""
        revised = f" · {self.revised} revised the lead" if self.revised else ""
        return (f"{self.samples_used} of {self.max_samples} samples · "
                f"{self.stopped.replace('_', ' ')}{revised}")

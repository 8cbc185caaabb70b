"""Review findings: what a member reports, how they are grouped, how agreement is counted.

Members answer `{"findings": [...]}`. The judge (modes/review.py) only says which findings
describe the same problem; `merge_group` turns a group into one finding and counts
`agreed_by` from the distinct members in it — a count is never taken from a model.
`group_nearby` is the deterministic grouping used when the judge fails or is not needed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from ..judge import parse_json
from .diff import Line

SEVERITIES = ("info", "low", "medium", "high", "critical")  # ascending
CATEGORIES = ("bug", "security", "performance", "error-handling", "maintainability", "style",
              "test", "other")
_CATEGORY_ALIASES = {
    "logic": "bug", "correctness": "bug", "logic error": "bug", "off-by-one": "bug",
    "functionality": "bug", "error": "bug", "vulnerability": "security",
    "perf": "performance", "efficiency": "performance", "exception": "error-handling",
    "exceptions": "error-handling", "error handling": "error-handling",
    "readability": "maintainability", "design": "maintainability", "complexity":
    "maintainability", "naming": "style", "formatting": "style", "tests": "test",
    "testing": "test",
}
_SEVERITY_ALIASES = {"error": "high", "major": "high", "warning": "medium", "minor": "low",
                     "note": "info", "blocker": "critical", "moderate": "medium"}
NEARBY_LINES = 3  # two members pointing within this many lines at one file may mean one bug

MEMBER_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "findings": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "file": {"type": "string"},
                    "line": {"type": "integer"},
                    "severity": {"type": "string", "enum": list(SEVERITIES)},
                    "category": {"type": "string", "enum": list(CATEGORIES)},
                    "message": {"type": "string"},
                    "suggestion": {"type": "string"},
                },
                "required": ["file", "line", "severity", "category", "message", "suggestion"],
            },
        },
    },
    "required": ["findings"],
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Finding:
    file: str
    line: int | None
    severity: str
    category: str
    message: str
    suggestion: str = ""
    agreed_by: int = 1  # distinct members that reported it
    panel: int = 1  # members whose review could be read, for this part of the diff
    members: tuple[str, ...] = ()  # which members (model specs), for solo/fused analysis

    @property
    def single(self) -> bool:
        """Reported by one member of a panel of several: shown, and marked as such."""
        return self.agreed_by == 1 and self.panel > 1

    @property
    def rank(self) -> int:
        return SEVERITIES.index(self.severity)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["members"] = list(self.members)
        d["single_member"] = self.single
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Finding:
        """Back from `to_dict()` (a kept trace); `single_member` is derived, not read."""
        return cls(file=d["file"], line=d.get("line"), severity=d["severity"],
                   category=d["category"], message=d["message"],
                   suggestion=d.get("suggestion", ""), agreed_by=d.get("agreed_by", 1),
                   panel=d.get("panel", 1), members=tuple(d.get("members", ())))


def severity(value: Any) -> str:
    v = str(value or "").strip().lower()
    v = _SEVERITY_ALIASES.get(v, v)
    return v if v in SEVERITIES else "medium"


def category(value: Any) -> str:
    v = str(value or "").strip().lower().replace("_", "-")
    v = _CATEGORY_ALIASES.get(v, v)
    return v if v in CATEGORIES else "other"


_NO_ISSUES = re.compile(r"(?is)\W*(no (issues|findings|problems|bugs)|lgtm|looks good)\b")


def parse_findings(text: str, *, files: list[str], member: str = "") -> list[Finding] | None:
    """A member's reply as findings; None when it is not a readable review.

    `files` are the paths in the reviewed chunk: a finding naming another file (or none) is
    put on the chunk's first file, as small models often shorten or invent paths.
    """
    stripped = text.strip()
    data: Any
    try:
        data = json.loads(stripped)  # the usual case; a bare list too
    except ValueError:
        try:
            data = parse_json(stripped)  # code fences, chatter around the object
        except ValueError:
            if _NO_ISSUES.match(stripped):
                return []
            data = _salvage(stripped)
            if data is None:
                return None
    items = data.get("findings") if isinstance(data, dict) else data
    if not isinstance(items, list):
        return None
    return [f for item in items if (f := _finding(item, files, member)) is not None]


def _salvage(text: str) -> dict[str, Any] | None:
    """The complete findings of a reply cut off by max_tokens: `{"findings": [{..}, {..}, {`."""
    m = re.match(r'\s*\{\s*"findings"\s*:\s*\[', text)
    if not m:
        return None
    decoder, items, at = json.JSONDecoder(), [], m.end()
    while True:
        while at < len(text) and text[at] in " \t\r\n,":
            at += 1
        try:
            item, at = decoder.raw_decode(text, at)
        except ValueError:
            break
        items.append(item)
    return {"findings": items} if items else None


def _finding(item: Any, files: list[str], member: str) -> Finding | None:
    if not isinstance(item, dict):
        return None
    message = str(item.get("message") or item.get("description") or item.get("issue") or "")
    if not message.strip():
        return None
    path = str(item.get("file") or "").strip().removeprefix("b/").removeprefix("./")
    if files and path not in files:
        matches = [f for f in files if path and (f.endswith("/" + path) or path.endswith(f))]
        path = matches[0] if matches else files[0]
    path = path or "unknown"
    try:
        line: int | None = int(item.get("line"))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        line = None
    if line is not None and line < 1:
        line = None
    return Finding(file=path, line=line, severity=severity(item.get("severity")),
                   category=category(item.get("category")), message=message.strip(),
                   suggestion=str(item.get("suggestion") or "").strip(),
                   members=(member,) if member else ())


_QUOTE = re.compile(r"`([^`\n]{4,})`")


def anchor(f: Finding, lines: list[Line]) -> Finding:
    """Put a finding on the line its message quotes when its own line number is off.

    Small models often give the hunk's first line, or quote the removed line. A quote of an
    added line moves the finding there; of a removed line, to the added line that replaced
    it. A finding already on an added line, or quoting nothing in the diff, stays.
    """
    added = {ln.new for ln in lines if ln.kind == "+"}
    if f.line in added:
        return f
    for quote in _QUOTE.findall(f.message):
        q = " ".join(quote.split())
        for rank in ("+", "-"):
            for i, ln in enumerate(lines):
                if ln.kind == rank and q in " ".join(ln.text.split()):
                    target = ln.new if rank == "+" else _replacement(lines, i)
                    if target is not None:
                        return replace(f, line=target)
    return f


def _replacement(lines: list[Line], i: int) -> int | None:
    """The new line number of the added line that follows removed line i (its replacement)."""
    for ln in lines[i + 1:]:
        if ln.kind == "+":
            return ln.new
        if ln.kind == " ":
            return None
    return None


def merge_group(group: list[Finding], panel: int, *, severity_: str | None = None,
                message: str | None = None, suggestion: str | None = None,
                changed: set[int] | frozenset[int] = frozenset()) -> Finding:
    """One finding for a group; `agreed_by` = distinct members in it (counted here).

    Its line: the lower median of the members' lines, taken among those on a `changed`
    (added) line when there are any — a review is about the change.
    """
    members = tuple(dict.fromkeys(m for f in group for m in f.members))
    top = max(group, key=lambda f: f.rank)  # the most severe report leads
    lines = sorted(f.line for f in group if f.line is not None)
    lines = [n for n in lines if n in changed] or lines
    return replace(
        top,
        line=lines[(len(lines) - 1) // 2] if lines else None,  # the lower median
        severity=severity(severity_) if severity_ else top.severity,
        message=(message or "").strip() or top.message,
        suggestion=(suggestion or "").strip() or top.suggestion,
        agreed_by=max(len(members), 1),
        panel=panel,
        members=members,
    )


def _distance(group: list[Finding], f: Finding) -> int | None:
    """Lines between f and the nearest finding of the group; None if they cannot be one."""
    head = group[0]
    if head.file != f.file or head.category != f.category:
        return None
    if set(f.members) & {m for x in group for m in x.members}:
        return None  # one member repeating itself is not agreement
    if f.line is None:
        return 0 if all(x.line is None for x in group) else None
    lines = [x.line for x in group if x.line is not None]
    if not lines:
        return None
    d = min(abs(f.line - n) for n in lines)
    return d if d <= NEARBY_LINES else None


def group_nearby(findings: list[Finding]) -> list[list[Finding]]:
    """Deterministic grouping: same file, same category, lines within NEARBY_LINES.

    Each finding joins the nearest compatible group; a group never takes two findings of
    one member, since agreement counts members.
    """
    groups: list[list[Finding]] = []
    for f in sorted(findings, key=lambda f: (f.file, f.line or 0)):
        options = [(d, i) for i, g in enumerate(groups) if (d := _distance(g, f)) is not None]
        if options:
            groups[min(options)[1]].append(f)
        else:
            groups.append([f])
    return groups


def sort_findings(findings: list[Finding]) -> list[Finding]:
    return sorted(findings, key=lambda f: (-f.rank, -f.agreed_by, f.file, f.line or 0))


def at_or_above(findings: list[Finding], threshold: str) -> list[Finding]:
    return [f for f in findings if f.rank >= SEVERITIES.index(threshold)]


@dataclass(slots=True, kw_only=True)
class ReviewAnalysis:
    """Review mode's account (`FusionResult.analysis`): the merged findings, as objects."""

    findings: list[Finding]  # merged and sorted, most severe first
    panel: int  # members whose review could be read
    grouping: str  # judge | nearby (the judge failed) | none (nothing to merge)
    unreadable: list[str]  # members whose reply was not a readable review

    def to_dict(self) -> dict[str, Any]:
        return {"findings": [f.to_dict() for f in self.findings], "panel": self.panel,
                "grouping": self.grouping, "unreadable": self.unreadable}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ReviewAnalysis:
        return cls(findings=[Finding.from_dict(f) for f in d.get("findings") or []],
                   panel=int(d.get("panel", 0)), grouping=str(d.get("grouping", "")),
                   unreadable=list(d.get("unreadable") or []))

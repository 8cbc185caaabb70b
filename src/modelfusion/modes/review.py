"""review: members review a diff independently; the judge merges their findings.

Each member answers `{"findings": [...]}` (review/findings.py). The judge sees every readable
finding under an id (A1, A2, B1, ...; candidates anonymised and fenced as in every mode) and
only says which ids describe the same problem, with one message per group. Agreement —
`agreed_by`, k of n members — is counted by code from that grouping, never by the model.
If the judge fails, findings are grouped deterministically (same file, same category,
nearby lines). No debate: members never see each other's findings.
"""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from ..judge import Labeled, anonymise
from ..review.diff import lines_in
from ..review.findings import (
    SEVERITIES,
    Finding,
    ReviewAnalysis,
    anchor,
    group_nearby,
    merge_group,
    parse_findings,
    sort_findings,
)
from ..types import MemberResult
from .base import ModeContext, ModeOutcome, register

TASK = """Each candidate above is one reviewer's findings about the diff in the request, one \
finding per line, each starting with its id. Group the findings that describe the same \
problem (the same place and the same cause), even when they are worded differently; \
findings about different problems stay in different groups. Every id goes in exactly one \
group; a finding only one reviewer reported is a group of its own. For each group write one \
clear message, one suggestion, and the severity the problem deserves \
(one of: info, low, medium, high, critical).
Reply as JSON: {"groups": [{"ids": ["A1", "B2"], "severity": "high", \
"message": "...", "suggestion": "..."}]}"""


def _render(findings: list[Finding], label: str) -> str:
    rows = []
    for i, f in enumerate(findings, 1):
        where = f"{f.file}:{f.line}" if f.line else f.file
        rows.append(f"{label}{i}: {where} [{f.severity}, {f.category}] {f.message}"
                    + (f" Suggestion: {f.suggestion}" if f.suggestion else ""))
    return "\n".join(rows)


def _schema(ids: list[str]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {"groups": {"type": "array", "items": {
            "type": "object",
            "properties": {
                "ids": {"type": "array", "items": {"type": "string", "enum": ids}},
                "severity": {"type": "string", "enum": list(SEVERITIES)},
                "message": {"type": "string"},
                "suggestion": {"type": "string"},
            },
            "required": ["ids", "severity", "message", "suggestion"],
        }}},
        "required": ["groups"],
    }


def _validator(by_id: dict[str, Finding]) -> Any:
    def validate(data: Any) -> list[tuple[list[str], dict[str, Any]]]:
        groups: list[tuple[list[str], dict[str, Any]]] = []
        seen: set[str] = set()
        for g in data["groups"]:
            ids = [str(i).strip().upper() for i in g["ids"]]
            unknown = [i for i in ids if i not in by_id]
            if unknown:
                raise ValueError(f"unknown ids {unknown}; the ids are {sorted(by_id)}")
            if len({by_id[i].file for i in ids}) > 1:
                raise ValueError(f"group {ids} mixes files: one group is one problem")
            if seen & set(ids):
                raise ValueError(f"ids {sorted(seen & set(ids))} are in more than one group")
            seen |= set(ids)
            if ids:
                groups.append((ids, g))
        # A finding the judge left out is kept on its own: never hidden.
        groups += [([i], {}) for i in by_id if i not in seen]
        return groups

    return validate


# Identical reviews still count: agreed_by is the point, so the engine must not skip.
@register("review", shortcut=False)
async def review(ctx: ModeContext) -> ModeOutcome:
    diff_lines = lines_in(ctx.messages)
    files = list(diff_lines)
    readable: dict[int, list[Finding]] = {}
    unreadable: list[str] = []
    for m in ctx.candidates:
        found = parse_findings(m.content or "", files=files, member=m.model)
        if found is None:
            unreadable.append(m.model)
        else:
            readable[m.index] = [anchor(f, diff_lines.get(f.file, [])) for f in found]
    panel = len(readable)
    reporting = [m for m in ctx.candidates if readable.get(m.index)]
    every = [f for m in reporting for f in readable[m.index]]

    grouping = "none"
    merged: list[Finding]
    if len(reporting) < 2:  # nothing to merge across members: the judge is not needed
        ctx.judge.skip("nothing_to_merge")
        merged = [replace(f, panel=panel) for f in every]
    else:
        added = {ln.new for lines in diff_lines.values() for ln in lines
                 if ln.kind == "+" and ln.new is not None}
        merged, grouping = await _judge_groups(ctx, reporting, readable, panel, added)
    analysis = ReviewAnalysis(findings=sort_findings(merged), panel=panel, grouping=grouping,
                              unreadable=unreadable)
    answer = {"findings": [f.to_dict() for f in analysis.findings]}
    return ModeOutcome(answer=json.dumps(answer, indent=2, ensure_ascii=False),
                       analysis=analysis)


async def _judge_groups(ctx: ModeContext, reporting: list[MemberResult],
                        readable: dict[int, list[Finding]], panel: int, added: set[int]
                        ) -> tuple[list[Finding], str]:
    labeled = anonymise(reporting, ctx.seed)
    by_id: dict[str, Finding] = {}
    shown: list[Labeled] = []
    for item in labeled:
        own = readable[item.member.index]
        by_id.update({f"{item.label}{i}": f for i, f in enumerate(own, 1)})
        # The judge reads the parsed findings, not the raw reply: same fence, same labels.
        shown.append(Labeled(item.label, replace(item.member,
                                                 content=_render(own, item.label))))
    system, prompt = ctx.judge_prompt(shown, TASK)
    verdict = await ctx.judge.verdict(system, prompt, _schema(sorted(by_id)), _validator(by_id))
    if verdict is None:
        groups = group_nearby(list(by_id.values()))
        return [merge_group(g, panel, changed=added) for g in groups], "nearby"
    merged = [
        merge_group([by_id[i] for i in ids], panel, severity_=g.get("severity"),
                    message=g.get("message"), suggestion=g.get("suggestion"), changed=added)
        for ids, g in verdict
    ]
    return merged, "judge"

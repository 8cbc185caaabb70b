"""Render a review: a terminal table, markdown for a PR comment, JSON, or SARIF."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from .. import __version__
from ..text import printable
from .findings import Finding
from .sarif import to_sarif

FORMATS = ("table", "markdown", "json", "sarif")
_ICON = {"critical": "🔴", "high": "🟠", "medium": "🟡", "low": "🔵", "info": "⚪"}


def agreement(f: Finding) -> str:
    text = f"{f.agreed_by}/{f.panel}"
    return text + " (single member)" if f.single else text


def where(f: Finding) -> str:
    return f"{f.file}:{f.line}" if f.line else f.file


def table(findings: list[Finding], console: Console) -> None:
    if not findings:
        console.print("No findings.")
        return
    t = Table(show_lines=True)
    for col in ("severity", "where", "category", "agreed", "finding"):
        t.add_column(col, overflow="fold")
    for f in findings:
        # Every cell is the models' text: a Text (never markup), printable (no ESC). The
        # same rule as cli/common.safe, which review/ may not import.
        body = Text(printable(f.message))
        if f.suggestion:
            body.append(printable(f"\n→ {f.suggestion}"), style="dim")
        t.add_row(*(Text(printable(c)) for c in (f.severity, where(f), f.category,
                                                  agreement(f))), body)
    console.print(t)


def markdown(findings: list[Finding], summary: dict[str, Any]) -> str:
    lines = ["## modelfusion review", ""]
    lines.append(f"{len(findings)} finding(s) from {summary['models']} "
                 f"({summary['chunks']} part(s) of the diff reviewed).")
    if summary.get("failed"):
        lines.append(f"\n**{summary['failed']} part(s) could not be reviewed** "
                     "(every member failed).")
    if summary.get("left_out"):
        lines.append(f"\n**{len(summary['left_out'])} file(s) left out** of the review:")
        lines += [f"- `{_cell(i['file'])}`: {_cell(i['reason'])}" for i in summary["left_out"]]
    if not findings:
        return "\n".join(lines) + "\n"
    lines += ["", "| | where | category | agreed by | finding |", "|---|---|---|---|---|"]
    for f in findings:
        body = _cell(f.message) + (f"<br>*Suggestion:* {_cell(f.suggestion)}"
                                   if f.suggestion else "")
        lines.append(f"| {_ICON[f.severity]} {f.severity} | `{where(f)}` | {f.category} | "
                     f"{agreement(f)} | {body} |")
    lines += ["", "*Agreed by k/n: k of the n models that reviewed that part found it; "
              "single-member findings are shown, not hidden.*"]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>")


def as_json(findings: list[Finding], summary: dict[str, Any]) -> str:
    return json.dumps({"findings": [f.to_dict() for f in findings], "summary": summary},
                      indent=2, ensure_ascii=False) + "\n"


def sarif(findings: list[Finding]) -> str:
    return json.dumps(to_sarif(findings, version=__version__), indent=2,
                      ensure_ascii=False) + "\n"

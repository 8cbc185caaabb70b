"""`fusion log` and `fusion show`: look back at kept fusions. Rendering only; storage is
in traces.py. `cli.py` calls `register(app)` once its own commands are defined."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.console import Console, Group
from rich.markdown import Markdown
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from ..accounts import ANALYSIS_SECTIONS, Votes
from ..errors import UsageError
from ..text import clip, printable
from ..types import JudgeResult, MemberResult
from .common import cost_text, handle_errors, safe

if TYPE_CHECKING:  # traces pulls in SQLAlchemy: import it only when a command runs
    from ..traces.records import TraceRecord, TraceSummary

DASH = "—"
PROMPT_WIDTH = 60

DbOption = Annotated[str | None, typer.Option(
    "--db", help="Trace store URL (sqlite:///path or postgresql://...; default "
    "$FUSION_TRACES_URL, else traces.db in the user data dir).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def register(app: typer.Typer) -> None:
    """Add `log` and `show` to the `fusion` app."""

    app.command("log")(handle_errors(log_command))
    app.command("show")(handle_errors(show_command))


def log_command(
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, help="How many fusions.")] = 20,
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """List recent fusions, newest first."""
    from ..traces.store import TraceStore

    with TraceStore.open(db) as store:
        rows = store.recent(limit)
        url = store.url
    if as_json:
        print(json.dumps([r.to_dict() for r in rows], indent=2, ensure_ascii=False))
        return
    out = Console()
    if not rows:
        out.print(safe(f"No fusions recorded yet in {url}. Every `fusion ask` is kept there; "
                       'try: fusion ask "your question"'))
        return
    out.print(_log_table(rows))


def show_command(
    trace_id: Annotated[str, typer.Argument(metavar="ID",
                                            help="A trace id or its first characters.")],
    db: DbOption = None,
    as_json: JsonOption = False,
) -> None:
    """Show one fusion: every member side by side, the judge, the analysis, the answer."""
    from ..traces.store import TraceStore

    with TraceStore.open(db) as store:
        record = store.get(trace_id)
        url = store.url
    if record is None:
        raise UsageError(f"no trace with id {trace_id!r} in {url}; `fusion log` lists "
                         "recent ones")
    if as_json:
        print(json.dumps(record.to_dict(), indent=2, ensure_ascii=False))
        return
    Console().print(_show(record))


# ---------------------------------------------------------------- log


def _log_table(rows: list[TraceSummary]) -> Table:
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for name, justify in (("time", "left"), ("id", "left"), ("preset", "left"),
                          ("mode", "left"), ("members", "left"), ("cost", "right"),
                          ("latency", "right"), ("prompt", "left")):
        table.add_column(name, justify=justify, no_wrap=name != "prompt")  # type: ignore[arg-type]
    for r in rows:  # ids, presets and prompts are the callers' text: safe
        table.add_row(
            r.created_at.astimezone().strftime("%Y-%m-%d %H:%M:%S"),
            safe(r.short_id),
            safe(r.preset or DASH),
            safe(r.mode or DASH),
            _members_cell(r),
            _cost(r.cost),
            _seconds(r.total_ms),
            safe(clip(r.prompt_preview, PROMPT_WIDTH)) if r.prompt_preview is not None
            else DASH,
        )
    return table


def _members_cell(r: TraceSummary) -> Text:
    if r.status == "failed":
        return Text(f"failed ({r.members_failed})", style="red")
    if r.members_failed:
        return Text(f"{r.members_ok} ok, {r.members_failed} failed", style="yellow")
    return Text(f"{r.members_ok} ok")


# ---------------------------------------------------------------- show


def _show(record: TraceRecord) -> Group:
    s = record.summary
    parts: list[Any] = [_header(record)]
    if record.messages is not None:
        prompt = "\n\n".join(f"[{m.role}] {m.content}" if len(record.messages) > 1
                             else m.content for m in record.messages)
        parts.append(Panel(safe(prompt), title="prompt", title_align="left"))
    else:
        parts.append(Text("prompt not stored (--no-store-prompts)",
                          style="dim"))
    if record.rounds:
        for i, members in enumerate(record.rounds):
            title = "first answers" if i == 0 else f"debate round {i}"
            parts.append(_members_table(members, title))
    else:
        parts.append(_members_table(record.members, "members"))
    if record.judge is not None:
        parts.append(_judge_line(record.judge, record.members))
    if record.analysis:
        parts.append(_analysis_table(record.analysis.to_dict()))
    if record.votes:
        parts.append(_votes_table(record.votes))
    if record.checks:
        parts.append(safe("\n".join(record.checks.lines())))
    if record.compute:
        parts.append(safe(f"compute: {record.compute.line()}"))
    if s.status == "failed":
        parts.append(safe(f"fusion failed ({s.error_code}): {record.error_message}", "red"))
    else:
        title = "answer" + (f" (chosen: {record.chosen})" if record.chosen else "")
        # links shown with their address: the answer is a model's text
        parts.append(Panel(Markdown(printable(record.answer or ""), hyperlinks=False),
                           title=safe(title), title_align="left"))
    return Group(*parts)


def _header(record: TraceRecord) -> Text:
    s = record.summary
    when = s.created_at.astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")
    status = s.status + (" (degraded)" if s.degraded and s.status == "ok" else "")
    line = Text()
    line.append(printable(f"trace {s.id}"), style="bold")
    line.append(printable(f"\n{when} · {s.source} · preset {s.preset or DASH} · mode "
                          f"{s.mode or DASH} · {status}\n"))
    line.append(f"{record.usage.total_tokens} tokens ({record.usage.prompt_tokens} prompt, "
                f"{record.usage.completion_tokens} completion) · cost {_cost(s.cost)} · "
                f"{_seconds(s.total_ms)}", style="dim")
    return line


def _members_table(members: list[MemberResult], title: str) -> Table:
    """One column per member, so the answers sit side by side."""
    table = Table(title=title, title_justify="left", box=box.ROUNDED, show_lines=True,
                  expand=True)
    table.add_column("", style="dim", no_wrap=True)
    for m in members:
        table.add_column(safe(m.model), overflow="fold", ratio=1)
    table.add_row("status", *(_status(m) for m in members))
    table.add_row("latency", *(_seconds(m.latency_ms) for m in members))
    table.add_row("tokens", *(f"{m.usage.prompt_tokens} in, {m.usage.completion_tokens} out"
                              for m in members))
    table.add_row("cost", *(_cost(m.cost) for m in members))
    table.add_row("answer", *(_answer(m) for m in members))
    return table


def _status(m: MemberResult) -> Text:
    if m.ok:
        return Text("ok", style="green")
    return Text(f"{m.status}: {m.reason}", style="red" if m.status == "failed" else "yellow")


def _answer(m: MemberResult) -> Text:
    if m.content is not None and m.ok:
        return safe(m.content)
    return safe(m.error or m.content or DASH, "dim")


def _judge_line(judge: JudgeResult, members: list[MemberResult]) -> Text:
    line = Text("judge ", style="bold")
    line.append(printable(f"{judge.model or DASH} · {judge.status}"))
    if judge.reason:
        line.append(f" ({judge.reason})")
    line.append(f" · {_seconds(judge.latency_ms)} · {judge.usage.total_tokens} tokens · "
                f"{_cost(judge.cost)}")
    if judge.labels:
        names = {m.index: m.model for m in members}
        shown = ", ".join(f"{label}={names.get(i, i)}" for label, i in judge.labels.items())
        line.append(printable(f"\nlabels: {shown}"), style="dim")
    if judge.error:
        line.append(printable(f"\n{judge.error}"), style="dim red")
    return line


def _analysis_table(analysis: dict[str, Any]) -> Table:
    """Merge's sections in their order, then any other mode's keys (review: findings...)."""
    table = Table(title="analysis", title_justify="left", box=box.SIMPLE_HEAD, show_header=False)
    table.add_column("section", style="bold", no_wrap=True)
    table.add_column("points", overflow="fold")
    keys = [k for k in ANALYSIS_SECTIONS if k in analysis]
    keys += [k for k in analysis if k not in ANALYSIS_SECTIONS]
    for key in keys:
        value = analysis[key]
        items = value if isinstance(value, list) else [value]
        text = "\n".join(f"• {item}" for item in items) if items else DASH
        table.add_row(safe(key.replace("_", " ")), safe(text))  # the judge's words
    return table


def _votes_table(votes: Votes) -> Table:
    caption = votes.summary
    if votes.tie:
        caption += " (tie broken by the judge)"
    table = Table(title="votes", title_justify="left", caption=safe(caption),
                  caption_justify="left", box=box.SIMPLE_HEAD)
    for name, justify in (("answer", "left"), ("votes", "right"), ("share", "right"),
                          ("members", "left")):
        table.add_column(name, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for row in votes.split:
        table.add_row(safe(row.label), str(row.count), f"{100 * row.share:.0f} %",
                      safe(", ".join(row.members)))  # the answers' labels, model names
    return table


# ---------------------------------------------------------------- formatting


def _cost(cost: float | None) -> str:
    return cost_text(cost, DASH)


def _seconds(ms: float | None) -> str:
    if ms is None:
        return DASH
    return f"{ms / 1000:.2f}s" if ms < 10_000 else f"{ms / 1000:.1f}s"

"""Live terminal view of a fusion: one row per member, then the judge. Renders events only."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from rich.console import Console
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ..types import FusionEvent
from .common import safe

STATUS_STYLE = {"waiting": "dim", "running": "cyan", "ok": "green", "failed": "red",
                "cancelled": "yellow", "judging": "magenta", "done": "green"}


@dataclass(slots=True)
class _Row:
    name: str
    status: str = "waiting"
    tokens: int = 0
    started: float = field(default_factory=time.monotonic)
    elapsed: float | None = None
    attempts: int = 0
    note: str = ""


class LiveProgress:
    """Feed it events; it redraws a table on stderr while the fusion runs."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.rows: dict[int, _Row] = {}
        self.judge: _Row | None = None
        self.round: int = 0
        self._live = Live(console=console, refresh_per_second=8, transient=True)

    def __enter__(self) -> LiveProgress:
        self._live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._live.__exit__(*exc)  # type: ignore[arg-type]

    def handle(self, event: FusionEvent) -> None:
        if event.type == "member_started" and event.member is not None:
            row = self.rows.setdefault(event.member, _Row(event.model or "?"))
            row.status, row.tokens = "running", 0
            row.attempts += 1
            row.note = f"retry {row.attempts - 1}" if row.attempts > 1 else ""
        elif event.type == "member_delta" and event.member is not None:
            self.rows[event.member].tokens += 1
        elif event.type in ("member_done", "member_failed") and event.member_result:
            res = event.member_result
            row = self.rows.setdefault(res.index, _Row(res.model))
            row.status = res.status
            row.elapsed = res.latency_ms / 1000
            if res.ok:
                row.tokens = res.usage.completion_tokens or row.tokens
            else:
                row.note = f"{res.reason}: {res.error}" if res.error else str(res.reason)
        elif event.type == "round_started" and event.round:
            self.round = event.round
        elif event.type == "judge_started":
            self.judge = _Row(event.model or "judge", status="judging")
        elif event.type == "judge_done" and self.judge:
            self.judge.status = "done"
            self.judge.elapsed = time.monotonic() - self.judge.started
        self._live.update(self.render())

    def render(self) -> Table:
        title = "panel" + (f" · debate round {self.round}" if self.round else "")
        table = Table(title=title, title_justify="left", expand=False, box=None)
        for col in ("member", "status", "tokens", "time", ""):
            table.add_column(col)
        now = time.monotonic()
        rows = [*self.rows.values(), *([self.judge] if self.judge else [])]
        for row in rows:
            elapsed = row.elapsed if row.elapsed is not None else now - row.started
            table.add_row(
                safe(("judge: " if row is self.judge else "") + row.name),  # model names
                Text(row.status, style=STATUS_STYLE.get(row.status, "")),
                str(row.tokens or ""),
                f"{elapsed:.1f}s",
                safe(row.note[:60], "dim"),  # an upstream error
            )
        return table

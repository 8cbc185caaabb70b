"""Progress of an eval on stderr: a bar over (config, problem) pairs with the running pass@1
of every config; a plain line per finished pair when stderr is not a terminal (logs)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console, RenderableType
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..evals.configs import EvalConfig
from ..evals.record import EvalRecord
from ..evals.suite import Task
from ..text import printable
from .common import safe


class _Bar(Progress):
    scores: RenderableType = ""

    def get_renderables(self) -> Any:
        yield self.make_tasks_table(self.tasks)
        yield self.scores


class EvalProgress:
    def __init__(self, console: Console, configs: Sequence[EvalConfig], task_ids: Sequence[str],
                 records: Mapping[tuple[str, str], EvalRecord]) -> None:
        self.console = console
        self.configs = configs
        self.task_ids = task_ids
        self.records = records  # the runner's live dict
        self.total = len(configs) * len(task_ids)
        self.live = console.is_terminal
        # markup=False: the description names a config (its models), not rich markup
        self._bar = _Bar(TextColumn("{task.description}", markup=False), BarColumn(),
                         MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                         transient=False, disable=not self.live)
        self._task = self._bar.add_task("eval", total=self.total, completed=self._done())

    def __enter__(self) -> EvalProgress:
        self._bar.scores = self._scores()
        self._bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.__exit__(None, None, None)

    def _done(self) -> int:
        return sum((c.name, t) in self.records for c in self.configs for t in self.task_ids)

    def _score(self, name: str) -> tuple[int, int]:
        rows = [self.records[(name, t)] for t in self.task_ids if (name, t) in self.records]
        return sum(bool(r.passed) for r in rows), len(rows)

    def _scores(self) -> Table:
        table = Table.grid(padding=(0, 2))
        for cfg in self.configs:
            passed, n = self._score(cfg.name)
            pct = f"{100 * passed / n:5.1f} %" if n else "    —  "
            table.add_row(safe(cfg.name), f"pass@1 {pct}", f"[dim]{passed}/{n}[/dim]")
        return table

    def start(self, cfg: EvalConfig, problem: Task) -> None:
        self._bar.update(self._task, description=printable(f"{problem.task_id} · {cfg.name}"))

    def record(self, record: EvalRecord) -> None:
        self._bar.scores = self._scores()
        self._bar.update(self._task, completed=self._done())
        if not self.live:
            passed, n = self._score(record.config)
            status = "passed" if record.passed else f"failed ({record.error})"
            self.console.print(safe(
                f"[{self._done()}/{self.total}] {record.task_id} · {record.config}: "
                f"{status}, {record.latency_ms / 1000:.1f} s · pass@1 so far "
                f"{passed}/{n}"), soft_wrap=True)


class BuildBar:
    """Progress while a suite prepares its tasks (outputs: the canonical solutions run once
    per problem, then cached). Silent when nothing is built; a bar on a terminal, a line
    every BUILD_LINE_EVERY problems otherwise. Use as a callback inside `with`."""

    BUILD_LINE_EVERY = 10

    def __init__(self, console: Console, name: str) -> None:
        self.console = console
        self.name = name
        self._bar = Progress(TextColumn("{task.description}", markup=False), BarColumn(),
                             MofNCompleteColumn(), TimeElapsedColumn(), console=console,
                             transient=True, disable=not console.is_terminal)
        self._task: Any = None

    def __enter__(self) -> BuildBar:
        self._bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.__exit__(None, None, None)

    def __call__(self, done: int, total: int, task_id: str) -> None:
        if self._task is None:
            self._task = self._bar.add_task(f"building {self.name} questions", total=total)
        self._bar.update(self._task, completed=done)
        if not self.console.is_terminal and (done % self.BUILD_LINE_EVERY == 0
                                             or done == total):
            self.console.print(safe(f"building {self.name} questions: {done}/{total} "
                                    f"problems ({task_id})"), soft_wrap=True)

"""CLI for the embedded models: `fusion pull`, the local table of `fusion models`, and the
assembly progress bar `fusion ask` shows the first time a shipped model is used."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from ..fusion import Fusion
from ..providers.local import catalog
from .common import handle_errors, safe


def _bar(console: Console) -> Progress:
    # markup=False: the description carries a model name as it was typed
    return Progress(TextColumn("{task.description}", style="progress.description",
                               markup=False), BarColumn(), DownloadColumn(),
                    TimeRemainingColumn(), console=console, transient=True)


def assemble_with_progress(names: list[str], console: Console) -> None:
    """Assemble (or verify) catalogue models before they are needed, with a progress bar."""
    with _bar(console) as bar:
        for name in names:
            task = bar.add_task(f"assembling {name}", total=None)

            def show(done: int, total: int, task: TaskID = task) -> None:
                bar.update(task, completed=done, total=total)

            catalog.resolve(name, progress=show)


def prepare(fusion: Fusion, console: Console) -> None:
    """Show progress for shipped models that are not assembled yet (2-5 s each, once)."""
    wanted = {seat.model for seat in fusion.plan.seats if seat.provider == "local"}
    for judge in (fusion.plan.judge, fusion.plan.fallback_judge):
        if judge is not None and judge.provider == "local":
            wanted.add(judge.model)
    ready = {row["name"] for row in catalog.status() if row["assembled"]}
    todo = sorted(n for n in wanted if not catalog.is_path_spec(n) and n not in ready)
    if todo:
        assemble_with_progress(todo, console)


def models_table() -> Table:
    table = Table(title="local models (embedded llama.cpp)", title_justify="left")
    table.add_column("spec", no_wrap=True)
    for col in ("installed", "assembled", "size", "file"):
        table.add_column(col)
    for row in catalog.status():
        installed = "yes" if row["installed"] else f"no ({len(row['missing'])} packages missing)"
        table.add_row(safe(f"local:{row['name']}"), installed,
                      "yes" if row["assembled"] else "no", f"{row['size'] / 1e6:,.0f} MB",
                      safe(row["path"]))  # a path may hold brackets
    return table


def register(app: typer.Typer) -> None:

    @app.command()
    @handle_errors
    def pull(
        name: Annotated[str, typer.Argument(help="A shipped model, e.g. qwen2.5-coder-1.5b "
                                            "(`fusion models` lists them).")],
    ) -> None:
        """Assemble and verify a shipped local model ahead of time."""
        name = name.removeprefix("local:")
        console = Console(stderr=True)
        with _bar(console) as bar:
            task = bar.add_task(f"verifying {name}", total=None)
            path = catalog.pull(
                name, progress=lambda done, total: bar.update(task, completed=done, total=total))
        console.print(safe(f"local:{name} ready: {path}"))

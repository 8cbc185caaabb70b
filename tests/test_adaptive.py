"""Adaptive compute (`max_samples` / `effort`, docs/adaptive.md): the lead answers first, the
mode's acceptance rule says whether that stands, and only then is the rest of the budget
spent. Real HTTP on loopback (the fake upstream records every call), real sandboxes, the
real CLI, server and trace store."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from modelfusion import Fusion, FusionOptions, FusionResult, UsageError
from modelfusion.accounts import Compute
from modelfusion.config import load_config
from modelfusion.modes import MODES
from modelfusion.traces.store import SCHEMA_VERSION, TraceStore
from modelfusion.types import FusionEvent, JudgeResult, MemberResult
from tests.fake_upstream import FakeUpstream, RecordedRequest, Reply
from tests.helpers import CORRECT, PROMPT, PROSE, WRONG, Served, judge_requests, pick
from tests.helpers import fusion as fusion_cli

FAST = {"retry_backoff": 0.01, "seed": 11, "judge": "fake:judge"}
MEMBERS = ["fake:alpha", "fake:beta", "fake:gamma"]


async def run(fake_config: Path, members: list[str], prompt: Any = PROMPT,
              **kw: Any) -> FusionResult:
    async with Fusion(members, config=fake_config, **{**FAST, **kw}) as f:
        return await f.run(prompt)


def members_asked(up: FakeUpstream) -> list[str]:
    return [r.model for r in up.requests if r.model != "judge"]


def by_seed(answers: dict[int | None, str], default: str) -> Callable[[RecordedRequest], str]:
    """A member whose answer depends on the seed it was sent (one per sample)."""
    return lambda req: answers.get(req.body.get("seed"), default)


def by_temperature(greedy: str, sampled: str) -> Callable[[RecordedRequest], str]:
    return lambda req: greedy if req.body.get("temperature") == 0 else sampled


# ---------------------------------------------------------------- verified: run the lead first


async def test_the_lead_passing_every_check_is_the_answer_and_nobody_else_is_asked(
        upstream, fake_config, programs):
    upstream.script("alpha", CORRECT)
    result = await run(fake_config, MEMBERS, mode="verified", max_samples=4)
    assert members_asked(upstream) == ["alpha"]  # stage 1 only: no other member, no judge
    (lead,) = upstream.requests
    assert lead.body["temperature"] == 0  # greedy: no temperature was set
    assert result.answer == CORRECT and result.chosen == "fake:alpha"
    assert result.compute == Compute(max_samples=4, samples_used=1, stages=1,
                                     stopped="lead_passed_checks", lead="fake:alpha")
    assert result.to_dict()["compute"] == {"max_samples": 4, "samples_used": 1, "stages": 1,
                                           "stopped": "lead_passed_checks",
                                           "lead": "fake:alpha", "revised": 0}
    assert [m.model for m in result.members] == ["fake:alpha"]
    assert result.judge.status == "skipped" and result.checks is not None
    assert result.checks.passing == [0]
    assert len(programs) == 1  # the acceptance test's run is the mode's: not run twice
    assert result.compute.line() == "1 of 4 samples · lead passed checks"


async def test_a_lead_failing_a_check_escalates_and_a_passing_candidate_wins(
        upstream, fake_config, programs):
    upstream.script("alpha", WRONG)
    upstream.script("beta", CORRECT)
    upstream.script("gamma", PROSE)
    events: list[FusionEvent] = []
    async with Fusion(MEMBERS, config=fake_config, mode="verified", max_samples=4,
                      **FAST) as f:
        async for event in f.stream(PROMPT):
            events.append(event)
    result = events[-1].result
    assert result is not None
    # Stage 2: the panel's other seats, then a sample of the lead (as a self-fusion copy).
    assert [m.model for m in result.members] == ["fake:alpha", "fake:beta", "fake:gamma",
                                                 "fake:alpha#2"]
    assert result.answer == CORRECT and result.chosen == "fake:beta"
    assert result.compute is not None
    assert (result.compute.samples_used, result.compute.stages, result.compute.stopped) == (
        4, 2, "budget_spent")
    sent = {(r.model, r.body.get("temperature"), r.body.get("seed")) for r in upstream.requests}
    assert sent == {("alpha", 0, 11), ("beta", None, 11), ("gamma", None, 11),
                    ("alpha", 0.7, 12)}
    assert judge_requests(upstream) == []  # one passer: no judge
    # Stage 2's members report like any member: started and done events, indexes 1..3.
    started = sorted({(e.member, e.model) for e in events if e.type == "member_started"})
    assert started == [(0, "fake:alpha"), (1, "fake:beta"), (2, "fake:gamma"),
                       (3, "fake:alpha#2")]
    assert sum(e.type == "member_done" for e in events) == 4
    # The lead's code ran once (stage 1); stage 2 ran beta and alpha#2 (gamma has no code).
    assert len(programs) == 3


async def test_samples_of_the_lead_revise_its_answer_told_the_checks_it_failed(
        upstream, fake_config, programs):
    # Execution feedback: alpha#2 sees the lead's answer and what its code did; beta, another
    # model, answers the request afresh.
    upstream.script("alpha", lambda req: CORRECT if len(req.body["messages"]) > 1 else WRONG)
    upstream.script("beta", PROSE)
    result = await run(fake_config, ["fake:alpha", "fake:beta"], mode="verified",
                       max_samples=3, revise=True)
    sent = {r.body.get("seed"): r.body["messages"] for r in upstream.requests}
    assert sent[11] == [{"role": "user", "content": PROMPT}]  # the lead and beta
    first, answer, note = sent[12]  # alpha#2 (seed + 1)
    assert first == {"role": "user", "content": PROMPT}
    assert answer == {"role": "assistant", "content": WRONG}
    assert note["role"] == "user"
    assert "failed 1:\n- `add_one([1, 2])`: expected `[2, 3]`, got `[1, 2]`" in note["content"]
    assert "add_one([])" not in note["content"]  # it passed that one: not a failure
    assert result.chosen == "fake:alpha#2" and result.answer == CORRECT
    assert result.compute is not None and result.compute.revised == 1
    assert result.compute.line() == "3 of 3 samples · budget spent · 1 revised the lead"


async def test_revise_off_or_nothing_failed_sends_the_request_alone(upstream, fake_config):
    upstream.script("alpha", WRONG)
    off = await run(fake_config, ["fake:alpha"], mode="verified", max_samples=2)  # default
    assert [len(r.body["messages"]) for r in upstream.requests] == [1, 1]
    assert off.compute is not None and off.compute.revised == 0
    # Example calls but no expected values: the lead failed nothing it could be told about.
    upstream.reset()
    upstream.script("alpha", WRONG)
    await run(fake_config, ["fake:alpha"], mode="verified", max_samples=2, revise=True,
              prompt='def add_one(xs):\n    """Add one to each item, as in add_one([1, 2])."""\n')
    assert [len(r.body["messages"]) for r in upstream.requests] == [1, 1]


async def test_a_lead_that_crashes_is_told_why(upstream, fake_config):
    upstream.script("alpha", lambda req: "```python\ndef add_one(xs):\n    return xs[5] +\n```"
                    if len(req.body["messages"]) == 1 else CORRECT)
    result = await run(fake_config, ["fake:alpha"], mode="verified", max_samples=2,
                       revise=True)
    note = upstream.requests[-1].body["messages"][-1]["content"]
    assert "SyntaxError" in note and "Reply with the complete corrected code" in note
    assert result.answer == CORRECT


async def test_a_request_with_nothing_to_run_keeps_the_lead(upstream, fake_config):
    # No example calls at all: more samples could only be compared by reading them.
    upstream.script("alpha", CORRECT)
    result = await run(fake_config, MEMBERS, mode="verified", max_samples=4,
                       prompt="Write add_one(xs) that adds one to each item of a list.")
    assert members_asked(upstream) == ["alpha"]
    assert result.answer == CORRECT and result.judge.status == "skipped"
    assert result.compute is not None and result.compute.stopped == "nothing_to_verify"
    assert result.compute.line() == "1 of 4 samples · nothing to verify"


async def test_samples_of_the_lead_fill_the_budget_and_a_passing_one_wins(upstream,
                                                                          fake_config):
    upstream.script("alpha", by_seed({13: CORRECT}, WRONG))  # the third sample is right
    result = await run(fake_config, ["fake:alpha"], mode="verified", max_samples=5)
    assert [m.model for m in result.members] == [
        "fake:alpha", "fake:alpha#2", "fake:alpha#3", "fake:alpha#4", "fake:alpha#5"]
    assert sorted(r.body.get("seed") for r in upstream.requests) == [11, 12, 13, 14, 15]
    assert sorted(r.body.get("temperature") for r in upstream.requests) == [0, .7, .7, .7, .7]
    assert result.chosen == "fake:alpha#3" and result.answer == CORRECT
    assert result.compute is not None and result.compute.samples_used == 5


async def test_a_caller_temperature_applies_to_the_lead_and_its_samples(upstream,
                                                                        fake_config):
    upstream.script("alpha", WRONG)
    await run(fake_config, ["fake:alpha"], mode="verified", max_samples=2, temperature=0.3)
    assert sorted(r.body.get("temperature") for r in upstream.requests) == [0.3, 0.3]


# ---------------------------------------------------------------- text modes: a second sample


async def test_two_agreeing_samples_stop_early(upstream, fake_config):
    upstream.script("alpha", "**Paris.**")  # greedy and sampled answers agree (normalised)
    result = await run(fake_config, ["fake:alpha", "fake:beta"], "Capital of France?",
                       mode="best-of", max_samples=4)
    assert members_asked(upstream) == ["alpha", "alpha"]  # the lead and one sample of it
    assert sorted(r.body.get("temperature") for r in upstream.requests) == [0, 0.7]
    assert judge_requests(upstream) == []
    assert result.answer == "**Paris.**" and result.judge.reason == "identical_candidates"
    assert result.compute is not None
    assert (result.compute.samples_used, result.compute.stopped) == (2, "samples_agree")


async def test_disagreeing_samples_escalate_to_the_panel(upstream, fake_config):
    upstream.script("alpha", by_temperature("Paris.", "Lyon."))
    upstream.script("beta", "Paris.")
    upstream.script("judge", pick("Paris"))
    result = await run(fake_config, MEMBERS, "Capital of France?", mode="best-of",
                       max_samples=3)
    # Stage 1: alpha, alpha#2; stage 2: what the budget leaves, the panel's next seat.
    assert [m.model for m in result.members] == ["fake:alpha", "fake:alpha#2", "fake:beta"]
    assert "gamma" not in members_asked(upstream)
    assert len(judge_requests(upstream)) == 1
    assert result.answer == "Paris."
    assert result.compute is not None
    assert (result.compute.stages, result.compute.stopped) == (2, "budget_spent")


async def test_vote_and_merge_accept_agreeing_samples_too(upstream, fake_config):
    upstream.script("alpha", "Yes")
    voted = await run(fake_config, MEMBERS, "Ship it?", mode="vote", effort="low")
    assert voted.votes is not None and voted.votes.summary == "yes: 2 of 2, 100 %"
    assert voted.compute is not None and voted.compute.stopped == "samples_agree"
    assert voted.compute.max_samples == 2
    upstream.reset()
    upstream.script("alpha", "Yes")
    merged = await run(fake_config, MEMBERS, "Ship it?", mode="merge", effort="medium")
    assert merged.compute is not None and merged.compute.stopped == "samples_agree"
    assert members_asked(upstream) == ["alpha", "alpha"] and merged.answer == "Yes"


async def test_a_vote_tie_in_stage_2_goes_to_the_lead_not_the_judge(upstream, fake_config):
    # The lead's two samples disagree (greedy "Yes", sampled "No"), so stage 2 runs; beta
    # says "Yes" and gamma "No": 2-2. The lead is the caller's strongest model: its answer
    # breaks the tie, and no judge is asked.
    upstream.script("alpha", by_temperature("Yes", "No"))
    upstream.script("beta", "Yes")
    upstream.script("gamma", "No")
    voted = await run(fake_config, MEMBERS, "Ship it?", mode="vote", max_samples=4)
    assert [m.model for m in voted.members] == ["fake:alpha", "fake:alpha#2", "fake:beta",
                                                "fake:gamma"]
    assert voted.votes is not None and voted.votes.tie
    assert voted.answer == "Yes" and voted.votes.winner == "yes"
    assert judge_requests(upstream) == []
    assert (voted.judge.status, voted.judge.reason) == ("skipped", "tie_to_lead")

    # Without adaptive compute the same 2-2 split is the judge's to break: it picks "No".
    upstream.reset()
    upstream.script("alpha", "Yes")
    upstream.script("beta", "No")
    upstream.script("gamma", "No")
    upstream.script("delta", "Yes")
    upstream.script("judge", pick("No"))
    fixed = await run(fake_config, ["fake:alpha", "fake:beta", "fake:gamma", "fake:delta"],
                      "Ship it?", mode="vote")
    assert fixed.votes is not None and fixed.votes.tie
    assert len(judge_requests(upstream)) >= 1 and fixed.answer == "No"


async def test_a_budget_of_one_is_the_lead_alone(upstream, fake_config):
    upstream.script("alpha", "Paris.")
    result = await run(fake_config, MEMBERS, "q", mode="best-of", max_samples=1)
    assert members_asked(upstream) == ["alpha"]
    assert result.compute is not None and result.compute.stopped == "budget_spent"


async def test_off_is_every_seat_at_once(upstream, fake_config):
    result = await run(fake_config, MEMBERS, "q", mode="best-of")
    assert result.compute is None and result.to_dict()["compute"] is None
    assert sorted(members_asked(upstream)) == ["alpha", "beta", "gamma"]


# ---------------------------------------------------------------- deadline, quorum


async def test_the_deadline_covers_both_stages(upstream, fake_config):
    upstream.script("alpha", WRONG)
    upstream.script("beta", Reply(CORRECT, delay=120))  # hangs past the deadline
    upstream.script("judge", "not json")
    started = time.monotonic()
    # Room for stage 1 (a call and a sandbox run) on a busy machine before the panel's
    # share of the deadline ends: under load a 4 s deadline left stage 2 no time.
    result = await run(fake_config, ["fake:alpha", "fake:beta"], mode="verified",
                       max_samples=2, deadline=12, retries=0)
    assert time.monotonic() - started < 60
    beta = result.members[1]
    assert (beta.model, beta.status, beta.reason) == ("fake:beta", "failed", "timeout")
    assert result.answer == WRONG and result.degraded
    assert result.compute is not None and result.compute.stages == 2


async def test_quorum_counts_the_answers_of_both_stages(upstream, fake_config):
    upstream.script("alpha", by_temperature("Paris.", "Lyon."))
    upstream.script("beta", "Paris.")
    upstream.script("gamma", Reply("Marseille.", delay=30))
    upstream.script("judge", pick("Paris"))
    started = time.monotonic()
    # Stage 1 (alpha, alpha#2) waits for both, even with a quorum of 1 ...
    one = await run(fake_config, MEMBERS, "q", mode="best-of", max_samples=2, quorum=1)
    assert [m.status for m in one.members] == ["ok", "ok"]
    # ... and answered twice: a quorum of 3 waits for one more in stage 2, not for all.
    result = await run(fake_config, MEMBERS, "q", mode="best-of", max_samples=4, quorum=3)
    assert time.monotonic() - started < 20
    statuses = {m.model: m.status for m in result.members}
    assert statuses["fake:gamma"] == "cancelled" and result.answer == "Paris."
    assert statuses["fake:beta"] == "ok" and statuses["fake:alpha"] == "ok"


# ---------------------------------------------------------------- the plan and the options


def test_the_plan_puts_the_lead_first_and_counts_the_budget(fake_config):
    def plan(models: list[str], mode: str, **kw: Any) -> tuple[list[tuple[str, Any]], Any]:
        p = Fusion(models, config=fake_config, mode=mode, seed=5, **kw).plan
        return [(s.label, s.params.temperature) for s in p.seats], p.first

    assert plan(MEMBERS, "verified", max_samples=2) == (
        [("fake:alpha", 0.0), ("fake:beta", None)], 1)
    assert plan(MEMBERS, "best-of", max_samples=2) == (
        [("fake:alpha", 0.0), ("fake:alpha#2", 0.7)], 2)
    assert plan(MEMBERS, "best-of", effort="medium") == (
        [("fake:alpha", 0.0), ("fake:alpha#2", 0.7), ("fake:beta", None),
         ("fake:gamma", None)], 2)
    # A lead given as model*N: its own copies are its first samples.
    assert plan(["fake:alpha*2", "fake:beta"], "vote", max_samples=4) == (
        [("fake:alpha#1", 0.0), ("fake:alpha#2", 0.7), ("fake:beta", None),
         ("fake:alpha#3", 0.7)], 2)
    assert plan(MEMBERS, "best-of") == ([(m, None) for m in MEMBERS], None)  # off


def test_effort_levels_and_refusals():
    assert [FusionOptions(effort=e).samples for e in ("low", "medium", "high", "off")] == [
        2, 4, 8, None]
    assert FusionOptions(max_samples=3).samples == 3 and FusionOptions().samples is None
    for options, option, words in [
        ({"effort": "extreme"}, "effort", "--effort must be one of low, medium, high, off"),
        ({"max_samples": 0}, "max_samples", "--max-samples must be between 1 and 16"),
        ({"max_samples": 2, "effort": "low"}, "effort", "not both"),
    ]:
        with pytest.raises(UsageError, match=words) as info:
            FusionOptions(**options).validate(3)
        assert info.value.option == option


def test_modes_declare_their_acceptance_rule():
    accepting = {name: mode.accept.first for name, mode in MODES.items() if mode.accept}
    assert accepting == {"verified": 1, "best-of": 2, "merge": 2, "vote": 2}


def test_a_mode_without_an_acceptance_rule_refuses_a_budget(fake_config):
    with pytest.raises(UsageError, match="mode 'debate' has no acceptance rule") as info:
        Fusion(MEMBERS, config=fake_config, mode="debate", max_samples=3)
    assert info.value.option == "max_samples"


def test_a_preset_sets_the_budget_and_a_caller_replaces_it(upstream, tmp_path):
    path = tmp_path / "fusion.toml"
    path.write_text(f'[providers.fake]\nbase_url = "{upstream.base_url}"\n'
                    '[presets.lean]\nmodels = ["fake:alpha", "fake:beta"]\n'
                    'judge = "fake:judge"\nmode = "verified"\neffort = "low"\n')
    cfg = load_config(path)
    plan = Fusion(preset="lean", config=cfg).plan
    assert (plan.options.samples, plan.first, len(plan.seats)) == (2, 1, 2)
    # The caller's max_samples replaces the preset's effort (no "not both" error) ...
    assert Fusion(preset="lean", config=cfg, max_samples=3).plan.options.samples == 3
    # ... and effort "off" turns it off: every seat at once.
    off = Fusion(preset="lean", config=cfg, effort="off").plan
    assert off.first is None and off.options.samples is None


# ---------------------------------------------------------------- the judge's budget


async def test_a_pick_is_bounded_and_merge_keeps_its_room(upstream, fake_config):
    upstream.script("alpha", "Paris.")
    upstream.script("beta", "Lyon.")
    upstream.script("judge", pick("Paris"))
    await run(fake_config, ["fake:alpha", "fake:beta"], "q", mode="best-of")
    (req,) = judge_requests(upstream)
    assert req.body["max_tokens"] == 256
    assert "one short sentence" in req.messages[-1]["content"]
    upstream.reset()
    upstream.script("judge", pick("Paris"))
    await run(fake_config, ["fake:alpha", "fake:beta"], "q", mode="best-of",
              judge_max_tokens=100)
    assert judge_requests(upstream)[0].body["max_tokens"] == 100  # a lower limit stands
    upstream.reset()
    upstream.script("alpha", "Paris.")
    upstream.script("beta", "Lyon.")
    await run(fake_config, ["fake:alpha", "fake:beta"], "q", mode="merge")
    assert judge_requests(upstream)[0].body["max_tokens"] == 2048


async def test_a_verdict_cut_off_at_the_limit_is_retried_with_that_said(upstream,
                                                                       fake_config):
    upstream.script("alpha", "Paris.")
    upstream.script("beta", "Lyon.")
    upstream.script("judge", Reply('{"reason": "Paris is the capital because',
                                   finish_reason="length"), pick("Paris"))
    result = await run(fake_config, ["fake:alpha", "fake:beta"], "q", mode="best-of")
    _, again = judge_requests(upstream)
    assert "cut off at the 256-token limit" in again.messages[-1]["content"]
    assert result.answer == "Paris." and result.judge.status == "ok"


# ---------------------------------------------------------------- where the account shows


def test_cli_flags_status_line_json_and_trace(upstream, fake_config, tmp_path):
    upstream.script("alpha", CORRECT)
    home = str(tmp_path / "home")
    args = ["ask", "--mode", "verified", "--config", str(fake_config), "--judge",
            "fake:judge", *(a for m in MEMBERS for a in ("-m", m))]
    plain = fusion_cli(*args, "--max-samples", "4", PROMPT, home=home)
    assert plain.returncode == 0, plain.stderr
    assert "verified · 1 of 4 samples · lead passed checks · 1/1 members ok" in plain.stderr
    assert members_asked(upstream) == ["alpha"]
    proc = fusion_cli(*args, "--effort", "high", "--json", PROMPT, home=home)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["compute"]["max_samples"] == 8
    trace = json.loads(fusion_cli("log", "--json", "-n", "1", home=home).stdout)[0]["id"]
    shown = fusion_cli("show", "--json", trace, home=home)
    assert json.loads(shown.stdout)["compute"]["stopped"] == "lead_passed_checks"
    assert "compute: 1 of 8 samples · lead passed checks" in fusion_cli(
        "show", trace, home=home).stdout
    bad = fusion_cli(*args, "--effort", "max", PROMPT, home=home)
    assert bad.returncode == 2 and "--effort must be one of low, medium, high" in bad.stderr
    off = fusion_cli(*args, "--json", PROMPT, home=home)
    assert json.loads(off.stdout)["compute"] is None  # the --json contract, unchanged


def test_server_request_sets_the_budget(serve: Callable[..., Served],
                                        upstream: FakeUpstream):
    served = serve()
    upstream.script("alpha", CORRECT)
    body = {"model": "fusion", "messages": [{"role": "user", "content": PROMPT}],
            "fusion": {"models": MEMBERS, "judge": "fake:judge", "mode": "verified",
                       "max_samples": 3}}
    reply = served.post(body)
    assert reply.status_code == 200, reply.text
    assert reply.json()["fusion"]["compute"]["stopped"] == "lead_passed_checks"
    assert members_asked(upstream) == ["alpha"]
    for fusion, param, code in [({"max_samples": 9}, "fusion.max_samples", "too_many_members"),
                                ({"effort": "lots"}, "fusion.effort", "invalid_value")]:
        refused = served.post({**body, "fusion": {**body["fusion"], **fusion}})
        assert refused.status_code == 400, refused.text
        error = refused.json()["error"]
        assert (error["param"], error["code"]) == (param, code), error
    fusion_schema = httpx.get(f"{served.url}/openapi.json", timeout=10).json()
    assert '"enum": ["low", "medium", "high", "off"]' in json.dumps(fusion_schema)
    # A passthrough is one member as asked: no samples of it.
    solo = served.post({**body, "model": "fake:alpha", "fusion": {"effort": "low"}})
    assert solo.status_code == 200 and solo.json()["fusion"]["compute"] is None


def test_traces_keep_the_account_and_a_v2_store_migrates(tmp_path):
    url = f"sqlite:///{tmp_path / 'traces.db'}"
    TraceStore.open(url).close()
    engine = create_engine(url)
    with engine.begin() as conn:  # a v2 store: no `compute` column
        conn.execute(text("ALTER TABLE traces DROP COLUMN compute"))
        conn.execute(text("DELETE FROM schema_version WHERE version > 2"))
    engine.dispose()
    compute = Compute(max_samples=4, samples_used=2, stages=1, stopped="samples_agree",
                      lead="fake:a")
    result = FusionResult(answer="a", mode="best-of",
                          members=[MemberResult(index=0, model="fake:a", status="ok",
                                                content="a")],
                          judge=JudgeResult(model="fake:a", status="skipped"), compute=compute)
    with TraceStore.open(url) as store:
        trace_id = store.record(result, messages="q", source="library")
        store.flush()
        kept = store.get(trace_id)
        assert kept is not None and kept.compute == compute
        assert kept.to_dict()["compute"] == compute.to_dict()
        with store.engine.connect() as conn:
            versions = conn.execute(text("SELECT version FROM schema_version")).scalars().all()
        assert sorted(versions) == list(range(1, SCHEMA_VERSION + 1))
        assert SCHEMA_VERSION >= 3  # 4 added `owner`

"""The fault matrix: every upstream fault x every mode x (library, server JSON, server SSE).

One panel member (`a-*`) misbehaves; the other two answer. Each case checks that the faulted
member is retried or failed with the right typed reason and the right number of upstream
calls, that the survivors still produce an answer labelled `degraded`, and that nothing
waits past the deadline. After each group of cases nothing may be left behind: no asyncio
task (in the test's loop or the server's), no client socket to the upstream, no open file
descriptor beyond the baseline, no fusion slot, no upstream connection the fake still holds
(except the ones a `hang` fault holds on purpose: it never reads, so it cannot see the client
hang up).

Nothing is mocked. The server is uvicorn on 127.0.0.1 in a thread (tests/helpers.py's
`start_server`), the client is the real `openai.AsyncOpenAI`, the upstream is the loopback
`FakeUpstream`. The twelve cases of one fault run concurrently, each with its own model names,
so the slow faults (hang, drip) cost their timeout once per fault, not twelve times.

`FAULT_MATRIX_OUT=path.md python -m pytest tests/test_faults.py` writes the observed matrix
as the Markdown tables in docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from modelfusion import AllMembersFailed, Fusion
from modelfusion.config import load_config
from modelfusion.server import ServerSettings, create_app
from modelfusion.traces.store import TraceStore
from tests.fake_upstream import FakeUpstream, Fault, Reply
from tests.helpers import Served, smart_judge, start_server

MODES = ("best-of", "merge", "debate", "vote")
PATHS = ("direct", "server-json", "server-stream")
RETRIES = 2
# No limit here may be one that a healthy member or judge could miss on a busy 2-core
# machine: twelve fusions run at once, and under load a healthy member has been seen to
# get no request out within 1.6 s. Every limit a healthy call must meet is >= 5 s, and each
# bound a test asserts is far from what the broken behaviour would take.
#
# Slow faults: the faulted member must be cut off at `timeout` (its error says so), and the
# fusion must answer before `deadline`. Each slow group costs `timeout` once.
SLOW_LIMITS = {"timeout": 5.0, "deadline": 10.0}
# Everything else gets room. The server's backoff is the engine default (0.5 s, jittered;
# requests cannot set `retry_backoff`), so two retries cost up to 1.5 s there.
FAST_LIMITS = {"timeout": 6.0, "deadline": 9.0}
# Seconds of scheduling slack on top of a deadline on a busy machine: between the deadline
# firing and the client holding the answer come the fallback, the result, SSE and the trace.
MARGIN = 4.0
ASK = [{"role": "user", "content": "What is the capital of France?"}]
BETA, GAMMA = "Paris.", "Paris, France."  # differ, and both are vote labels (a 1:1 tie)
HEALTHY_ALPHA = "Paris is the capital city."  # five words: not a vote label


# ---------------------------------------------------------------- the faults


@dataclass(frozen=True)
class FaultSpec:
    name: str
    fault: Fault
    reason: str | None  # the faulted member's typed reason; None: it answers (status ok)
    retryable: bool  # persistent fault: retries + 1 calls; else 1
    slow: bool = False  # hang/drip: cut off by the member timeout

    @property
    def calls(self) -> int:
        return RETRIES + 1 if self.retryable else 1


FAULTS = [
    FaultSpec("429", Fault("status", status=429), "rate_limited", True),
    FaultSpec("429 + Retry-After: 0", Fault("status", status=429, retry_after="0"),
              "rate_limited", True),
    FaultSpec("500", Fault("status", status=500), "upstream_error", True),
    FaultSpec("502", Fault("status", status=502), "upstream_error", True),
    FaultSpec("503", Fault("status", status=503), "upstream_error", True),
    FaultSpec("hang", Fault("hang"), "timeout", False, slow=True),
    FaultSpec("drip", Fault("drip", delay=0.05), "timeout", False, slow=True),
    FaultSpec("reset", Fault("reset"), "upstream_error", True),
    FaultSpec("malformed_json", Fault("malformed_json"), "bad_response", False),
    FaultSpec("error_body_200", Fault("error_body_200"), "upstream_error", True),
    FaultSpec("sse_cut", Fault("sse_cut"), "upstream_error", True),
    FaultSpec("sse_error_event", Fault("sse_error_event"), "upstream_error", True),
    FaultSpec("empty", Fault("empty"), "bad_response", False),
    # ~2 MB of text: over the provider's max_response_chars (500,000), refused.
    FaultSpec("oversized", Fault("oversized"), "bad_response", False),
]


# ---------------------------------------------------------------- what a case saw


@dataclass
class Outcome:
    path: str
    mode: str
    answered: bool
    result: dict[str, Any] | None  # FusionResult.to_dict() (from `fusion` / the done event)
    elapsed: float
    calls: int  # upstream calls the faulted member made
    judge_calls: int
    trace_id: str | None = None
    error: dict[str, Any] | None = None  # an OpenAI error object, or AllMembersFailed's

    @property
    def member(self) -> dict[str, Any]:
        assert self.result is not None
        return dict(self.result["members"][0])

    @property
    def judge(self) -> dict[str, Any]:
        assert self.result is not None
        return dict(self.result["judge"])


@dataclass
class Row:
    """One line of the generated matrix in docs/reliability.md."""

    table: str
    name: str
    outcomes: list[Outcome]
    expected: str
    extra: dict[str, Any] = field(default_factory=dict)


ROWS: list[Row] = []


# ---------------------------------------------------------------- leak accounting


def _tcp_sockets() -> dict[str, tuple[int, int, str]]:
    """inode -> (local port, remote port, state) for this network namespace's TCP sockets."""
    out: dict[str, tuple[int, int, str]] = {}
    for name in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with contextlib.suppress(OSError), open(name, encoding="ascii") as f:
            next(f)
            for line in f:
                parts = line.split()
                local, remote, state, inode = parts[1], parts[2], parts[3], parts[9]
                out[inode] = (int(local.rsplit(":", 1)[1], 16),
                              int(remote.rsplit(":", 1)[1], 16), state)
    return out


@dataclass(frozen=True)
class FdCensus:
    total: int  # every open fd of this process
    to_fake: int  # client sockets connected to the fake upstream
    fake_side: int  # the fake's own sockets (listener + accepted connections)

    @property
    def ours(self) -> int:
        """Everything but the fake's side: the fake holds `hang` connections on purpose."""
        return self.total - self.fake_side


def fd_census(fake_port: int) -> FdCensus:
    tcp = _tcp_sockets()
    total = to_fake = fake_side = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the listing's own fd, closed by now
        total += 1
        m = re.fullmatch(r"socket:\[(\d+)\]", target)
        if m and m[1] in tcp:
            local, remote, _ = tcp[m[1]]
            to_fake += remote == fake_port
            fake_side += local == fake_port
    return FdCensus(total, to_fake, fake_side)


def fake_open_connections(up: FakeUpstream) -> int:
    # FakeUpstream has no public count of its open connections; `_writers` is that set.
    return len(up._writers)


async def settle(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    """gc + poll until `check()` holds (closing sockets and tasks takes a few loop turns)."""
    end = time.monotonic() + timeout
    while True:
        gc.collect()
        if check():
            return True
        if time.monotonic() > end:
            return False
        await asyncio.sleep(0.02)


def other_tasks() -> list[asyncio.Task[Any]]:
    return [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]


# ---------------------------------------------------------------- the server under test


@dataclass
class Rig:
    up: FakeUpstream
    served: Served
    store: TraceStore
    config_path: Path
    server_tasks_baseline: int = 0

    def server_state(self, quiesce: bool = False) -> dict[str, Any]:
        r = httpx.post(f"{self.served.url}/_test/state", json={"quiesce": quiesce}, timeout=10)
        r.raise_for_status()
        return dict(r.json())


def add_state_route(app: Any) -> None:
    """A test-only route on the server's own loop: its task count; optionally close the
    pooled upstream clients first (they reopen on the next request), so that no upstream
    socket is legitimately left open and any that is open is a leak."""

    @app.post("/_test/state")
    async def state(body: dict[str, Any]) -> dict[str, Any]:
        if body.get("quiesce"):
            await app.state.pool.aclose()
        await asyncio.sleep(0)
        names = sorted(t.get_name() for t in other_tasks())
        return {"tasks": len(names), "names": names, "active": app.state.gate.active}


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    tmp = tmp_path_factory.mktemp("faults")
    with FakeUpstream() as up:
        path = tmp / "fusion.toml"
        path.write_text(f"""default_preset = "pair"
[providers.fake]
base_url = "{up.base_url}"
[presets.pair]
models = ["fake:warm-1", "fake:warm-2"]
judge = "fake:warm-judge"
""", encoding="utf-8")
        store = TraceStore.open(f"sqlite:///{tmp / 'traces.db'}")
        app = create_app(load_config(path), store, ServerSettings())
        add_state_route(app)
        served = start_server(app, store)
        up.script("warm-judge", smart_judge)
        rig = Rig(up, served, store, path)
        try:
            # Warm up every path once (imports, the SQLite file, the pools), then baseline.
            assert served.post({"model": "fusion", "messages": ASK}).status_code == 200
            with served.client() as c:
                list(c.chat.completions.create(model="fusion", messages=ASK, stream=True))
            store.flush()
            rig.server_tasks_baseline = rig.server_state(quiesce=True)["tasks"]
            yield rig
        finally:
            served.stop()
            store.close()


@pytest.fixture(scope="module", autouse=True)
def _write_matrix() -> Iterator[None]:
    yield
    out = os.environ.get("FAULT_MATRIX_OUT")
    if out and ROWS:
        Path(out).write_text(render_tables(ROWS), encoding="utf-8")


# ---------------------------------------------------------------- running one case


@dataclass(frozen=True)
class Case:
    key: str  # unique per case: model names are derived from it
    path: str
    mode: str
    limits: dict[str, float]

    @property
    def models(self) -> list[str]:
        return [f"fake:a-{self.key}", f"fake:b-{self.key}", f"fake:g-{self.key}"]

    @property
    def judge(self) -> str:
        return f"fake:j-{self.key}"

    def script(self, up: FakeUpstream, alpha: list[Any], judge: Any = smart_judge,
               beta: str = BETA, gamma: str = GAMMA) -> None:
        up.script(f"a-{self.key}", *alpha)
        up.script(f"b-{self.key}", beta)
        up.script(f"g-{self.key}", gamma)
        up.script(f"j-{self.key}", judge)


def cases(tag: str, limits: dict[str, float]) -> list[Case]:
    slug = re.sub(r"[^a-z0-9]+", "", tag.lower())
    return [Case(f"{slug}-{mode}-{path}", path, mode, limits)
            for mode in MODES for path in PATHS]


async def run_case(rig: Rig, case: Case, client: openai.AsyncOpenAI) -> Outcome:
    started = time.monotonic()
    result: dict[str, Any] | None = None
    trace_id: str | None = None
    error: dict[str, Any] | None = None
    if case.path == "direct":
        fusion = Fusion(case.models, case.judge, case.mode, config=rig.config_path,
                        retries=RETRIES, retry_backoff=0.01, seed=7, **case.limits)
        try:
            async with fusion:
                result = (await fusion.run(ASK)).to_dict()
        except AllMembersFailed as e:
            error = {"code": e.code, "members": [m.to_dict() for m in e.members]}
    else:
        extra = {"fusion": {"models": case.models, "judge": case.judge, "mode": case.mode,
                            "retries": RETRIES, "seed": 7, **case.limits}}
        if case.path == "server-json":
            try:
                r = await client.chat.completions.create(model="fusion", messages=ASK,
                                                         extra_body=extra)
                fusion_obj = dict((r.model_extra or {})["fusion"])
                trace_id = fusion_obj.pop("trace_id")
                result = fusion_obj
                assert r.choices[0].message.content == result["answer"]
            except openai.APIStatusError as e:
                assert isinstance(e.body, dict)
                error = {**e.body, "status": e.status_code}
        else:
            result, trace_id, error = await stream_case(client, extra)
    return Outcome(case.path, case.mode, result is not None, result,
                   time.monotonic() - started, rig.up.calls(f"a-{case.key}"),
                   rig.up.calls(f"j-{case.key}"), trace_id, error)


async def stream_case(client: openai.AsyncOpenAI, extra: dict[str, Any]
                      ) -> tuple[dict[str, Any] | None, str | None, dict[str, Any] | None]:
    """An SSE fusion read raw through the openai client: chunks, progress and the end."""
    content: list[str] = []
    done: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    finished = False
    async with client.chat.completions.with_streaming_response.create(
            model="fusion", messages=ASK, stream=True, extra_body=extra) as resp:
        assert resp.http_response.status_code == 200
        async for line in resp.iter_lines():
            if line.startswith(": fusion "):
                event = json.loads(line.removeprefix(": fusion "))
                if event["type"] == "done":
                    done = event
            elif line == "data: [DONE]":
                finished = True
            elif line.startswith("data: "):
                chunk = json.loads(line.removeprefix("data: "))
                if "error" in chunk:
                    error = chunk["error"]
                    continue
                for choice in chunk["choices"]:
                    content.append(choice["delta"].get("content") or "")
    if error is not None:
        assert not finished, "an in-stream error must not be followed by [DONE]"
        return None, None, error
    assert finished and done is not None, "the stream ended without [DONE] or an error"
    assert "".join(content) == done["result"]["answer"]
    return dict(done["result"]), done.get("trace_id"), None


async def run_group(rig: Rig, group: list[Case], *, hangs: int = 0) -> list[Outcome]:
    """Run the cases at once, then check that nothing was left behind by any of them."""
    port = rig.up.port
    gc.collect()  # what earlier tests left for the collector must not close during ours
    before = fd_census(port)
    async with openai.AsyncOpenAI(base_url=rig.served.v1, api_key="none", max_retries=0,
                                  timeout=30) as client:
        outcomes = await asyncio.gather(*(run_case(rig, c, client) for c in group))
    state = rig.server_state(quiesce=True)
    assert state["active"] == 0, "a fusion slot was not released"
    # The server's loop: back to its baseline (uvicorn's own tasks), nothing of ours.
    assert await settle(lambda: rig.server_state()["tasks"] == rig.server_tasks_baseline), \
        rig.server_state()["names"]
    assert await settle(lambda: not other_tasks()), other_tasks()  # the test's own loop
    assert await settle(lambda: fd_census(port).to_fake == 0), \
        "a client socket to the upstream is still open"
    assert await settle(lambda: fake_open_connections(rig.up) == hangs), \
        f"the fake still holds {fake_open_connections(rig.up)} connections, expected {hangs}"
    assert await settle(lambda: fd_census(port).ours <= before.ours), \
        f"file descriptors: {before} before, {fd_census(port)} after"
    rig.store.flush()
    for o in outcomes:
        if o.path != "direct":
            trace_id = o.trace_id or (o.error or {}).get("trace_id")
            assert trace_id and rig.store.get(trace_id) is not None, "fusion without a trace"
    return outcomes


async def close_hung(up: FakeUpstream) -> None:
    """Abort the connections a `hang` fault holds (the fake would keep them until stop())."""
    assert up._loop is not None

    def abort() -> None:  # the handler sleeps forever: cancel it (it closes its socket)
        for task in list(up._conns):
            task.cancel()

    up._loop.call_soon_threadsafe(abort)
    assert await settle(lambda: fake_open_connections(up) == 0)


# ---------------------------------------------------------------- the matrix


@pytest.mark.parametrize("spec", FAULTS, ids=[f.name for f in FAULTS])
async def test_member_fault(rig: Rig, spec: FaultSpec):
    limits = SLOW_LIMITS if spec.slow else FAST_LIMITS
    group = cases(spec.name, limits)
    for case in group:
        case.script(rig.up, [spec.fault])
    hangs = len(group) if spec.fault.kind == "hang" else 0
    outcomes = await run_group(rig, group, hangs=hangs)
    if hangs:
        await close_hung(rig.up)
    for o in outcomes:
        where = f"{spec.name} / {o.mode} / {o.path}"
        assert o.answered, f"{where}: no answer: {o.error}"
        assert o.result is not None
        member, others = o.member, o.result["members"][1:]
        if spec.reason is None:
            assert member["status"] == "ok", where
            assert not o.result["degraded"], where
        else:
            assert (member["status"], member["reason"]) == ("failed", spec.reason), \
                f"{where}: {member}"
            assert o.result["degraded"] is True, where
        assert [m["status"] for m in others] == ["ok", "ok"], where
        assert member["attempts"] == spec.calls, f"{where}: {member}"
        # A member that answered in debate is asked once more, to revise.
        revision = o.mode == "debate" and member["status"] == "ok"
        assert o.calls == spec.calls + revision, f"{where}: {o.calls} calls"
        assert o.judge["status"] == "ok", f"{where}: {o.judge}"
        assert o.result["answer"].strip(), where
        assert o.elapsed < limits["deadline"] + MARGIN, f"{where}: {o.elapsed:.2f} s"
        if spec.slow:
            assert o.elapsed >= limits["timeout"] * 0.95, where
            assert f"within {limits['timeout']:g} s" in member["error"], where
    expected = (f"`{spec.reason}`" if spec.reason else "answers (`ok`)") + \
        (f", {spec.calls} calls" if spec.calls > 1 else ", 1 call")
    ROWS.append(Row("member", spec.name, outcomes, expected,
                    {"timeout": limits["timeout"], "deadline": limits["deadline"]}))


TRANSIENT = [f for f in FAULTS if f.retryable]


@pytest.mark.parametrize("spec", TRANSIENT, ids=[f.name for f in TRANSIENT])
async def test_transient_member_fault_is_retried(rig: Rig, spec: FaultSpec):
    """Once faulty, then healthy: the retry answers, nothing is degraded."""
    group = [c for c in cases(f"t-{spec.name}", FAST_LIMITS) if c.path != "server-stream"]
    for case in group:
        case.script(rig.up, [spec.fault, Reply(HEALTHY_ALPHA)])
    outcomes = await run_group(rig, group)
    for o in outcomes:
        where = f"transient {spec.name} / {o.mode} / {o.path}"
        assert o.answered and o.result is not None, where
        assert o.member["status"] == "ok" and o.member["attempts"] == 2, where
        assert o.calls == 2 + (o.mode == "debate"), where  # debate: + the revision
        assert not o.result["degraded"], where
    ROWS.append(Row("transient", spec.name, outcomes, "retried once, then `ok`"))


# ---------------------------------------------------------------- the judge


@dataclass(frozen=True)
class JudgeFault:
    name: str
    step: Any
    reason: str
    calls: int  # judge calls per verdict: 2 = the corrective retry happened


JUDGE_FAULTS = [
    JudgeFault("not JSON", Reply("The best answer is A, clearly."), "judge_not_valid_json", 2),
    JudgeFault("wrong schema", Reply(json.dumps({"verdict": "A", "score": 9})),
               "judge_wrong_schema", 2),
    JudgeFault("refusal", Reply("I'm sorry, but I can't help with that request."),
               "judge_not_valid_json", 2),
    JudgeFault("empty", Fault("empty"), "judge_empty_completion", 2),
    JudgeFault("500", Fault("status", status=500), "judge_upstream_error", 2),
    JudgeFault("hang", Fault("hang"), "judge_timeout", 1),
]
# The hanging judge is cut off by the deadline (8 s), long before its call timeout (20 s);
# the members have until 80 % of the deadline (6.4 s) to answer.
JUDGE_LIMITS = {"timeout": 20.0, "deadline": 8.0}


@pytest.mark.parametrize("jf", JUDGE_FAULTS, ids=[j.name for j in JUDGE_FAULTS])
async def test_judge_fault_falls_back(rig: Rig, jf: JudgeFault):
    group = cases(f"judge-{jf.name}", JUDGE_LIMITS)
    for case in group:
        # Three different answers; alpha's is not a vote label, so vote asks the judge to
        # map labels (fails) and then to break the three-way tie (fails again).
        case.script(rig.up, [Reply(HEALTHY_ALPHA)], judge=jf.step, gamma="Lyon.")
    hangs = len(group) if jf.name == "hang" else 0
    outcomes = await run_group(rig, group, hangs=hangs)
    if hangs:
        await close_hung(rig.up)
    deadline = JUDGE_LIMITS["deadline"]
    for o in outcomes:
        where = f"judge {jf.name} / {o.mode} / {o.path}"
        assert o.answered and o.result is not None, f"{where}: {o.error}"
        assert (o.judge["status"], o.judge["reason"]) == ("fallback", jf.reason), \
            f"{where}: {o.judge}"
        assert not o.result["degraded"], where  # every member answered
        verdicts = 2 if o.mode == "vote" and jf.name != "hang" else 1
        assert o.judge_calls == jf.calls * verdicts, f"{where}: {o.judge_calls} judge calls"
        if o.mode == "vote":  # fallback rule: the first-listed member's label wins the tie
            # (the answer in that member's own words: a label is lower case)
            assert o.result["answer"] == "Paris is the capital city", where
            assert o.result["votes"]["tie"] is True, where
        else:  # consensus_pick: a candidate verbatim
            assert o.result["answer"] in (HEALTHY_ALPHA, BETA, "Lyon."), where
            assert o.result["chosen"], where
        assert o.elapsed < deadline + MARGIN, f"{where}: {o.elapsed:.2f} s"
        if jf.name == "hang":  # the judge is cut off by the fusion deadline
            assert o.elapsed >= deadline * 0.95, where
    ROWS.append(Row("judge", jf.name, outcomes, f"fallback `{jf.reason}`"))


# ---------------------------------------------------------------- the edges


@pytest.mark.parametrize("retries", [0, 1, 3])
async def test_persistent_429_costs_exactly_retries_plus_one_calls(rig: Rig, retries: int):
    case = Case(f"r429-{retries}", "direct", "best-of", FAST_LIMITS)
    case.script(rig.up, [Fault("status", status=429)])
    async with Fusion(case.models, case.judge, "best-of", config=rig.config_path,
                      retries=retries, retry_backoff=0.01, **FAST_LIMITS) as fusion:
        result = await fusion.run(ASK)
    member = result.members[0]
    assert (member.status, member.reason) == ("failed", "rate_limited")
    assert rig.up.calls(f"a-{case.key}") == retries + 1 == member.attempts
    assert result.degraded


async def test_retry_after_is_honoured_and_never_waited_past_the_timeout(rig: Rig):
    """Retry-After: 2 with a 3.5 s member timeout: one wait of 2 s, then the next wait would
    pass the timeout, so the member fails at once (`rate_limited`, 2 attempts) instead of
    sleeping into it (that would be `timeout`). The 1.5 s between the second call and the
    timeout leave room for the two round trips on a busy machine."""
    case = Case("retry-after", "direct", "best-of", {})
    case.script(rig.up, [Fault("status", status=429, retry_after="2")])
    started = time.monotonic()
    async with Fusion(case.models, case.judge, "best-of", config=rig.config_path,
                      retries=5, retry_backoff=0.01, timeout=3.5, deadline=9) as fusion:
        result = await fusion.run(ASK)
    elapsed = time.monotonic() - started
    first, second = [r for r in rig.up.requests if r.model == f"a-{case.key}"]
    assert second.time - first.time >= 1.95  # the Retry-After was honoured
    assert result.members[0].attempts == 2 and result.members[0].reason == "rate_limited"
    assert 1.95 <= elapsed < 3.5 + MARGIN


@pytest.mark.parametrize("fault", [Fault("status", status=500), Fault("hang")],
                         ids=["500", "hang"])
async def test_every_member_faulted_is_a_typed_failure(rig: Rig, fault: Fault):
    """No survivor: 502 all_members_failed / 504 deadline_exceeded (JSON and in-stream),
    AllMembersFailed in the library; every member carries its typed reason."""
    limits = SLOW_LIMITS if fault.kind == "hang" else FAST_LIMITS
    group = [c for c in cases(f"all-{fault.kind}", limits) if c.mode == "merge"]
    for case in group:
        for name in case.models:
            rig.up.script(name.split(":", 1)[1], fault)
        rig.up.script(case.judge.split(":", 1)[1], smart_judge)
    hangs = 3 * len(group) if fault.kind == "hang" else 0
    outcomes = await run_group(rig, group, hangs=hangs)
    if hangs:
        await close_hung(rig.up)
    reason, status, code = ("timeout", 504, "deadline_exceeded") if fault.kind == "hang" \
        else ("upstream_error", 502, "all_members_failed")
    for o in outcomes:
        assert not o.answered and o.error is not None
        assert {m["reason"] for m in o.error["members"]} == {reason}
        assert o.elapsed < limits["deadline"] + MARGIN
        if o.path == "direct":
            assert o.error["code"] == "all_members_failed"
        else:
            assert o.error["code"] == code and o.error["trace_id"]
            if o.path == "server-json":
                assert o.error["status"] == status
    ROWS.append(Row("all", "hang" if fault.kind == "hang" else "500", outcomes,
                    f"{status} `{code}` (library: `AllMembersFailed`)"))


# The hanging member is cut at 80 % of the deadline (6.4 s), far before its timeout (60 s).
EDGE_LIMITS = {"timeout": 60.0, "deadline": 8.0}


async def test_hang_bounded_by_the_deadline_not_the_timeout(rig: Rig):
    """deadline < timeout: the hanging member is cut off before the fusion deadline, early
    enough to leave the judge its reserve (20 % of the deadline), so the judge answers."""
    limits = EDGE_LIMITS
    group = [c for c in cases("deadline-bound", limits) if c.mode == "best-of"]
    for case in group:
        case.script(rig.up, [Fault("hang")])
    outcomes = await run_group(rig, group, hangs=len(group))
    await close_hung(rig.up)
    for o in outcomes:
        assert o.answered and o.result is not None
        assert (o.member["reason"], o.member["error"]) == ("timeout",
                                                           "the fusion deadline passed")
        assert o.result["degraded"]
        assert o.elapsed < limits["deadline"] + MARGIN
        assert (o.judge["status"], o.judge["reason"]) == ("ok", None)
    ROWS.append(Row("edge", "hang", outcomes,
                    "`timeout` at 80 % of the deadline; the judge answers in its reserve"))


async def test_client_gone_mid_json_request_frees_the_slot(rig: Rig):
    case = Case("gone-json", "server-json", "best-of", {})
    case.script(rig.up, [Fault("hang")])
    body = {"model": "fusion", "messages": ASK,
            "fusion": {"models": case.models, "judge": case.judge, "mode": "best-of",
                       "timeout": 30, "deadline": 40}}
    try:
        async with httpx.AsyncClient(timeout=0.5) as client:
            with pytest.raises(httpx.ReadTimeout):
                await client.post(f"{rig.served.v1}/chat/completions", json=body)
        # Held until the fusion's own timeout, the slot would stay taken for 30 s.
        freed = await settle(lambda: rig.server_state()["active"] == 0, timeout=10)
    finally:
        await close_hung(rig.up)
        await settle(lambda: rig.server_state()["active"] == 0, timeout=10)
    assert freed, "the slot is held until the fusion's own timeout, not released on hang-up"


# ---------------------------------------------------------------- the generated tables


def _cell(o: Outcome) -> str:
    if not o.answered:
        err = o.error or {}
        return " ".join(str(x) for x in (err.get("status"), err.get("code")) if x)
    assert o.result is not None
    m, j = o.member, o.judge
    text = "ok" if m["status"] == "ok" else f"`{m['reason']}`"
    if o.result["degraded"]:
        text += ", degraded"
    if j["status"] != "ok":
        text += f", judge `{j['reason']}`"
    return text


def _by_mode(values: dict[str, Any]) -> str:
    """'x' when every mode saw x, else 'x; debate: y'."""
    common, _ = Counter(values.values()).most_common(1)[0]
    odd = [f"{mode}: {v}" for mode, v in values.items() if v != common]
    return "; ".join([str(common), *odd])


TITLES = {
    "member": "One member faulted on every call (retries = 2)",
    "transient": "One member faulted once, then healthy (library and server JSON)",
    "judge": f"The judge faulted, members healthy (deadline {JUDGE_LIMITS['deadline']:g} s)",
    "all": "Every member faulted (mode merge)",
    "edge": f"Deadline ({EDGE_LIMITS['deadline']:g} s) shorter than the member timeout "
            f"({EDGE_LIMITS['timeout']:g} s), mode best-of",
}


def render_tables(rows: list[Row]) -> str:
    out: list[str] = []
    for table, title in TITLES.items():
        order = [j.name for j in JUDGE_FAULTS] if table == "judge" else [f.name for f in FAULTS]
        group = sorted((r for r in rows if r.table == table),
                       key=lambda r: order.index(r.name) if r.name in order else 0)
        if not group:
            continue
        calls = "judge calls" if table == "judge" else "calls (faulted member)"
        out += [f"#### {title}", "",
                f"| fault | expected | library | server JSON | server SSE | {calls} | "
                "max wall s |", "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in group:
            cells = []
            for path in PATHS:
                seen = Counter(_cell(o) for o in r.outcomes if o.path == path)
                cells.append("; ".join(f"{k} ×{n}" for k, n in seen.items()) or "—")
            n = {o.mode: o.judge_calls if table == "judge" else o.calls for o in r.outcomes}
            wall = max(o.elapsed for o in r.outcomes)
            out.append(f"| {r.name} | {r.expected} | {' | '.join(cells)} | {_by_mode(n)} | "
                       f"{wall:.2f} |")
        out.append("")
    return "\n".join(out)

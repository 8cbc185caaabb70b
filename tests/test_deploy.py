"""Scale-out as deploy/README.md describes it, run for real on loopback.

* `fusion serve --workers 2`: two worker processes on one port, one trace store; a worker
  that dies is replaced and the port keeps answering.
* deploy/haproxy.cfg, unchanged, in front of two `fusion serve` replicas that share one
  PostgreSQL trace store: a bounded stream of fusions (the loopback fake upstream), one
  replica SIGKILLed in the middle. Every request gets an answer or HAProxy's clean,
  retryable error; the dead replica is taken out within its health-check interval;
  every answered fusion has exactly one trace.

Everything here is a real process (`python -m modelfusion serve`, `haproxy`), started
by a fixture that kills what it started. Skips, saying why, without HAProxy
(`apt-get install -y haproxy`) or a PostgreSQL (`. .ci/postgres.sh`); CI has both.
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelfusion.config import load_config
from modelfusion.server import ServerSettings, create_app
from modelfusion.traces.store import TraceStore
from tests.fake_upstream import FakeUpstream, RecordedRequest, Reply
from tests.helpers import ASK, FUSED, TRIO, error_of, fusion, start_server

ROOT = Path(__file__).resolve().parent.parent
HAPROXY_CFG = ROOT / "deploy" / "haproxy.cfg"
HAPROXY = shutil.which("haproxy")
needs_haproxy = pytest.mark.skipif(
    HAPROXY is None, reason="needs HAProxy on PATH (Debian: apt-get install -y haproxy); CI "
    "installs it")
CHECK_INTER_S = 0.5  # FUSION_CHECK_INTER for the test; deploy/haproxy.cfg says fall 2
FALL = 2
WAIT_S = 120  # the most any start-up or catch-up may take on a busy machine


# ---------------------------------------------------------------- processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def tail(self) -> str:
        text = self.log.read_text(encoding="utf-8", errors="replace")
        return f"--- {self.name} (last lines of {self.log}) ---\n" + "\n".join(
            text.splitlines()[-30:])


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """start(name, argv, env) -> a process logging to a file; all killed at the end."""
    started: list[Proc] = []

    def start(name: str, argv: list[str], env: dict[str, str] | None = None) -> Proc:
        log = tmp_path / f"{name}.log"
        full_env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("FUSION_", "OPENAI_", "OPENROUTER_"))}
        full_env.update({"MODELFUSION_HOME": str(tmp_path / "home"), **(env or {})})
        with log.open("wb") as out:
            popen = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=full_env, cwd=tmp_path)
        proc = Proc(name, popen, log)
        started.append(proc)
        return proc

    yield start
    for proc in reversed(started):
        if proc.popen.poll() is None:
            proc.popen.terminate()
    for proc in started:
        try:
            proc.popen.wait(15)
        except subprocess.TimeoutExpired:
            proc.popen.kill()
            proc.popen.wait(5)


def serve_argv(port: int, config: Path, db: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "modelfusion", "serve", "--port", str(port), "--config",
            str(config), "--db", db, "--log-level", "warning", *extra]


def wait_up(url: str, *procs: Proc) -> None:
    """Until `url` answers 200; fail with the logs if a process exits or time runs out."""
    end = time.monotonic() + WAIT_S
    while time.monotonic() < end:
        for p in procs:
            if p.popen.poll() is not None:
                pytest.fail(f"{p.name} exited with {p.popen.returncode}\n{p.tail()}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    pytest.fail(f"{url} did not come up in {WAIT_S} s\n" + "\n".join(p.tail() for p in procs))


def eventually(what: str, check: Callable[[], bool], timeout: float = WAIT_S) -> None:
    end = time.monotonic() + timeout
    while not check():
        if time.monotonic() > end:
            pytest.fail(f"{what}: not within {timeout} s")
        time.sleep(0.05)


def worker_pids(parent: int) -> set[int]:
    """uvicorn's worker processes under `parent` (multiprocessing's spawn children; not
    its resource tracker)."""
    pids = set()
    children = Path(f"/proc/{parent}/task/{parent}/children")
    for pid in children.read_text().split() if children.exists() else ():
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline:
            pids.add(int(pid))
    return pids


# ---------------------------------------------------------------- the load


@dataclass
class Outcome:
    i: int
    status: int | None = None
    replica: str | None = None
    body: Any = None
    headers: dict[str, str] | None = None
    failure: str | None = None  # a transport error or timeout: what must never happen


def prompt(i: int) -> str:
    return f"request {i}: what is the capital of France?"


def fuse(client: httpx.Client, url: str, i: int) -> Outcome:
    body = {"model": "fusion", "messages": [{"role": "user", "content": prompt(i)}]}
    out = Outcome(i)
    try:
        r = client.post(f"{url}/v1/chat/completions", json=body)
    except httpx.HTTPError as e:  # reset, closed without a status, or a hang (timeout)
        out.failure = f"{type(e).__name__}: {e}"
        return out
    out.status, out.replica, out.headers = r.status_code, r.headers.get("x-fusion-replica"), \
        dict(r.headers)
    try:
        out.body = r.json()
    except ValueError:
        out.body = r.text
    return out


def stream_of(url: str, ids: range, *, clients: int = 4) -> list[Outcome]:
    """`ids` fusions through `url`, `clients` at a time; each has 60 s (no hang)."""
    with httpx.Client(timeout=60) as client, ThreadPoolExecutor(clients) as pool:
        return list(pool.map(lambda i: fuse(client, url, i), ids))


def held_members(up: FakeUpstream, gate: threading.Event) -> None:
    """Members answer once `gate` is set (at once while it is): fusions can be held in
    flight on a replica while it is killed."""

    async def step(req: RecordedRequest) -> Reply:
        while not gate.is_set():
            await asyncio.sleep(0.02)
        return Reply(f"Paris, says {req.model}.", delay=0.02)

    for model in TRIO:
        up.script(model.split(":", 1)[1], step)


def replica_states(stats_url: str) -> dict[str, str]:
    """HAProxy's view of each server in the `replicas` backend: UP, DOWN, ..."""
    rows = csv.DictReader(io.StringIO(httpx.get(f"{stats_url}/stats;csv", timeout=5)
                                      .text.lstrip("# ")))
    return {row["svname"]: row["status"].split()[0] for row in rows
            if row["pxname"] == "replicas" and row["svname"] not in ("FRONTEND", "BACKEND")}


def active_fusions(url: str) -> int:
    return int(httpx.get(f"{url}/healthz", timeout=5).json()["active_fusions"])


def pg_traces(url: str) -> list[tuple[str, str]]:
    import psycopg

    with psycopg.connect(url) as conn:
        return [(r[0], r[1]) for r in conn.execute("SELECT id, prompt_preview FROM traces")]


# ---------------------------------------------------------------- the tests


def test_workers_share_one_port_and_one_store(procs: Callable[..., Proc],
                                              server_config: Path, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'traces.db'}"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    parent = procs("serve", serve_argv(port, server_config, db, "--workers", "2"))
    wait_up(f"{url}/healthz", parent)
    eventually("two workers started", lambda: len(worker_pids(parent.popen.pid)) == 2)
    first = stream_of(url, range(6), clients=3)
    # (A SIGKILL loses the traces still queued in a worker's writer thread.)
    with TraceStore.open(db) as store:
        eventually("the first traces written", lambda: len(store.recent(100)) == 6)

    # A worker that dies is replaced by uvicorn's supervisor; the port keeps answering.
    dead = min(worker_pids(parent.popen.pid))
    os.kill(dead, signal.SIGKILL)
    eventually("the dead worker replaced", lambda: len(worker_pids(parent.popen.pid)) == 2
               and dead not in worker_pids(parent.popen.pid))
    second = stream_of(url, range(6, 12), clients=3)

    outcomes = first + second
    assert [o.failure for o in outcomes if o.failure] == []
    assert [o.status for o in outcomes] == [200] * 12
    assert all(o.body["choices"][0]["message"]["content"] == FUSED for o in outcomes)
    # SIGTERM: the supervisor stops the workers gracefully (they flush their traces).
    parent.popen.send_signal(signal.SIGTERM)
    assert parent.popen.wait(WAIT_S) == 0, parent.tail()
    with TraceStore.open(db) as store:
        kept = {t.id for t in store.recent(100)}
    assert kept == {o.body["fusion"]["trace_id"] for o in outcomes}


@needs_haproxy
def test_haproxy_routes_around_a_killed_replica(pg_url: str, upstream: FakeUpstream,
                                                server_config: Path,
                                                procs: Callable[..., Proc]) -> None:
    # (pg_url first: its schema is dropped after `procs` has stopped the replicas.)
    assert HAPROXY is not None
    gate = threading.Event()
    gate.set()
    held_members(upstream, gate)
    ports = {"r1": free_port(), "r2": free_port()}
    direct = {name: f"http://127.0.0.1:{p}" for name, p in ports.items()}
    replicas = {name: procs(name, serve_argv(p, server_config, pg_url))
                for name, p in ports.items()}
    lb_port, stats_port = free_port(), free_port()
    lb, stats = f"http://127.0.0.1:{lb_port}", f"http://127.0.0.1:{stats_port}"
    haproxy = procs("haproxy", [HAPROXY, "-db", "-f", str(HAPROXY_CFG)], env={
        "FUSION_LB_BIND": f"127.0.0.1:{lb_port}", "FUSION_LB_STATS": f"127.0.0.1:{stats_port}",
        "FUSION_REPLICA_1": f"127.0.0.1:{ports['r1']}",
        "FUSION_REPLICA_2": f"127.0.0.1:{ports['r2']}",
        "FUSION_CHECK_INTER": f"{int(CHECK_INTER_S * 1000)}ms"})
    for name in replicas:
        wait_up(f"{direct[name]}/healthz", replicas[name])
    wait_up(f"{stats}/stats", haproxy)
    eventually("HAProxy sees both replicas up",
               lambda: replica_states(stats) == {"r1": "UP", "r2": "UP"})

    # 1. A stream through the balancer; wait for its traces (a SIGKILL loses the traces
    # still queued in the writer thread: record() never delays an answer).
    warm = stream_of(lb, range(0, 8))
    assert [o.status for o in warm] == [200] * 8, [o.body for o in warm]
    eventually("the first traces written", lambda: len(pg_traces(pg_url)) == 8)

    # 2. Four fusions held in flight at the members: leastconn puts two on each replica.
    gate.clear()
    with ThreadPoolExecutor(1) as bg:
        held = bg.submit(stream_of, lb, range(8, 12))
        eventually("four fusions in flight", lambda: sum(
            active_fusions(u) for u in direct.values()) == 4)
        victim = max(direct, key=lambda n: active_fusions(direct[n]))
        survivor = next(n for n in direct if n != victim)
        assert active_fusions(direct[victim]) >= 1
        # 3. Kill one replica in the middle, let the held fusions go on, keep sending.
        replicas[victim].popen.kill()
        killed_at = time.monotonic()
        gate.set()
        during = bg.submit(stream_of, lb, range(12, 24))
        eventually(f"HAProxy takes {victim} out",
                   lambda: replica_states(stats).get(victim) == "DOWN")
        down_after = time.monotonic() - killed_at
        in_flight, during_kill = held.result(), during.result()
    after = stream_of(lb, range(24, 30))

    outcomes = warm + in_flight + during_kill + after
    assert [o.failure for o in outcomes if o.failure] == [], "a request got no status"
    lost = [o for o in in_flight if o.status != 200]
    # The victim's held fusions: HAProxy's own 502, in the OpenAI error shape, retryable.
    assert lost and all(o.status == 502 for o in lost), [(o.status, o.body) for o in lost]
    for o in lost:
        assert o.body["error"]["code"] == "replica_lost"
        assert o.headers is not None and o.headers["x-should-retry"] == "true"
    # Everything else was answered: the survivor's held fusions, the requests sent while
    # the victim was dead but not yet marked down (refused connections are retried on the
    # other replica), and those after.
    answered = [o for o in outcomes if o.status == 200]
    assert len(answered) == len(outcomes) - len(lost)
    assert {o.replica for o in during_kill + after} == {survivor}
    assert {o.replica for o in warm + in_flight if o.status == 200} >= {survivor}
    assert all(o.body["choices"][0]["message"]["content"] == FUSED for o in answered)
    # Taken out within its health-check schedule: FALL failed checks, each up to one
    # interval apart, plus one interval for the first to come round; 5 s of slack for a
    # busy machine.
    assert down_after <= (FALL + 1) * CHECK_INTER_S + 5, down_after

    # Exactly one trace per answered fusion, none for a lost one (never run twice).
    eventually("every answered fusion's trace written",
               lambda: len(pg_traces(pg_url)) >= len(answered))
    rows = pg_traces(pg_url)
    assert sorted(tid for tid, _ in rows) == sorted(o.body["fusion"]["trace_id"]
                                                    for o in answered)
    previews = [preview for _, preview in rows]
    assert sorted(previews) == sorted(prompt(o.i) for o in answered)
    assert not {prompt(o.i) for o in lost} & set(previews)


def test_no_traces_keeps_none_and_says_so(server_config: Path, tmp_path: Path) -> None:
    """ServerSettings(traces=False) (`fusion serve --no-traces`): a store handed to the app
    is not written, and the traces API is a clear 404, not a 500."""

    db = f"sqlite:///{tmp_path / 'traces.db'}"
    store = TraceStore.open(db)
    served = start_server(create_app(load_config(server_config), store,
                                     ServerSettings(traces=False)), store)
    try:
        r = served.post({"model": "fusion", "messages": ASK})
        assert r.status_code == 200 and r.json()["fusion"]["trace_id"] is None
        for path in ("/v1/fusion/traces", "/v1/fusion/traces/abc"):
            resp = httpx.get(served.url + path, timeout=10)
            assert resp.status_code == 404 and error_of(resp)["code"] == "traces_disabled"
    finally:
        served.stop()
        store.close()
    with TraceStore.open(db) as again:
        assert again.recent(10) == []


def test_no_traces_with_a_store_is_a_usage_error(tmp_path: Path) -> None:
    r = fusion("serve", "--no-traces", "--db", f"sqlite:///{tmp_path / 't.db'}",
               home=str(tmp_path))
    assert r.returncode == 2 and "--no-traces" in r.stderr and "--db" in r.stderr
    r = fusion("serve", "--workers", "0", home=str(tmp_path))
    assert r.returncode == 2 and "--workers" in r.stderr

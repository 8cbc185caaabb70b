"""Soak: many fused requests through `fusion serve` while upstream calls fail at random.

    python bench/soak.py [--requests 1000] [--concurrency 32] [--fault-rate 0.2]
                         [--seed 1234] [--timeout 1.5] [--deadline 3]

On demand, not a test; loopback only. Three processes:
  * the fake upstream (tests/fake_upstream.py) in a child process. Every member call draws
    from one `random.Random(seed)`: with probability --fault-rate it gets a fault drawn
    uniformly from every kind the fake has (status 429 with and without Retry-After,
    500/502/503, hang, drip, reset, malformed_json, error_body_200, sse_cut,
    sse_error_event, empty, oversized); hangs are cut by the member timeout. The judge is
    healthy (tests/test_faults.py covers its faults);
  * `python -m modelfusion serve` (the real CLI) with SQLite traces;
  * this process: httpx.AsyncClient, --concurrency requests in flight, modes in turn
    (best-of, merge, debate, vote), every other request streamed.

Each request ends as one of: answered (200, maybe degraded), a typed error (502
all_members_failed / 504 deadline_exceeded, as JSON or as an in-stream error event), or
lost (anything else: a 500, a dropped connection, a stream that just stops, a missing
trace id) or hung (no answer within deadline + --margin). It prints the counts, latency,
the server's RSS at the 100th and the last request (nothing in flight either time; the
server runs with a fixed glibc mmap threshold unless --default-malloc), and checks that
the store holds one trace per request that reached the engine. Exit status 1 if a check fails:
0 lost, 0 hung, RSS growth < 10 %, traces == requests that reached the engine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "src"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import httpx  # noqa: E402

MODES = ("best-of", "merge", "debate", "vote")
MEMBERS = ("m1", "m2", "m3")
ANSWERS = {"m1": "Paris.", "m2": "Paris, France.", "m3": "The capital of France is Paris."}
TYPED_CODES = {"all_members_failed", "deadline_exceeded", "stream_diverged"}
PROMPT = [{"role": "user", "content": "What is the capital of France?"}]


# ---------------------------------------------------------------- the faulty upstream


def fault_kinds() -> list[Any]:
    from tests.fake_upstream import Fault

    return [
        Fault("status", status=429), Fault("status", status=429, retry_after="0"),
        Fault("status", status=500), Fault("status", status=502),
        Fault("status", status=503), Fault("hang"), Fault("drip", delay=0.05),
        Fault("reset"), Fault("malformed_json"), Fault("error_body_200"), Fault("sse_cut"),
        Fault("sse_error_event"), Fault("empty"), Fault("oversized"),
    ]


def fault_name(f: Any) -> str:
    if f.kind == "status":
        return f"status {f.status}" + (" +Retry-After" if f.retry_after is not None else "")
    return str(f.kind)


def _judge(req: Any) -> Any:
    from tests.fake_upstream import Reply

    text = "\n".join(str(m.get("content")) for m in req.messages)
    labels = sorted(set(re.findall(r'<candidate-[0-9a-f]+ label="([A-Z])">', text)))
    task = text[-1500:]
    if '"labels"' in task:
        return Reply(json.dumps({"labels": {label: "paris" for label in labels}}))
    if '"choice"' in task:
        return Reply(json.dumps({"reason": "correct", "choice": labels[0]}))
    return Reply(json.dumps({"analysis": {"consensus": ["Paris"]},
                             "answer": "Paris is the capital of France."}))


def _run_upstream(conn: Any, seed: int, fault_rate: float) -> None:
    import random
    import threading

    from tests.fake_upstream import FakeUpstream, Reply

    rng = random.Random(seed)
    kinds = fault_kinds()
    drawn: Counter[str] = Counter()
    lock = threading.Lock()

    def member(name: str) -> Any:
        def step(_: Any) -> Any:
            with lock:
                drawn["calls"] += 1
                if rng.random() < fault_rate:
                    fault = rng.choice(kinds)
                    drawn[fault_name(fault)] += 1
                    return fault
            return Reply(ANSWERS[name])

        return step

    up = FakeUpstream().start()
    for m in MEMBERS:
        up.script(m, member(m))
    up.script("judge", _judge)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    conn.send(up.base_url)
    signal.sigwait({signal.SIGTERM})
    with lock:
        conn.send(dict(drawn))
    up.stop()


# ---------------------------------------------------------------- the server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def start_server(base_url: str, tmp: Path, *, max_concurrent: int, fixed_malloc: bool = True,
                 src: Path = ROOT / "src") -> tuple[subprocess.Popen[bytes], str, Path]:
    """`python -m modelfusion serve` (from the package in `src`) on a free loopback port
    over the fake at `base_url` (provider `fake`, preset `soak` = m1, m2, m3 with the
    judge), SQLite traces in `tmp`; returns once `/healthz` answers."""
    config = tmp / "fusion.toml"
    config.write_text(f"""default_preset = "soak"
[providers.fake]
base_url = "{base_url}"
[presets.soak]
models = {json.dumps([f"fake:{m}" for m in MEMBERS])}
judge = "fake:judge"
mode = "merge"
""", encoding="utf-8")
    db = tmp / "traces.db"
    port = free_port()
    env = {**os.environ, "MODELFUSION_HOME": str(tmp / "home"),
           "PYTHONPATH": os.pathsep.join([str(src), str(ROOT)])}
    for var in ("FUSION_CONFIG", "FUSION_TRACES_URL", "FUSION_API_KEYS", "FUSION_OFFLINE"):
        env.pop(var, None)
    if fixed_malloc:
        # glibc raises its mmap threshold after the first large free, so later 2 MB answers
        # (the `oversized` fault) land on the heap and its high-water mark swings RSS by
        # ±15 % with no trend. A fixed threshold hands them back: RSS then shows retention.
        env["MALLOC_MMAP_THRESHOLD_"] = "131072"
    log = (tmp / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelfusion", "serve", "--host", "127.0.0.1", "--port",
         str(port), "--config", str(config), "--db", f"sqlite:///{db}", "--log-level",
         "warning", "--max-concurrent", str(max_concurrent)],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=tmp)
    url = f"http://127.0.0.1:{port}"
    end = time.monotonic() + 120  # a busy machine
    while True:
        try:
            if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                return proc, url, db
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > end:
            raise RuntimeError(f"fusion serve did not start (exit {proc.poll()}); see "
                               f"{tmp / 'serve.log'}")
        time.sleep(0.1)


# ---------------------------------------------------------------- the load


@dataclass
class Tally:
    outcomes: Counter[str] = field(default_factory=Counter)
    lost: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    trace_ids: set[str] = field(default_factory=set)
    reached_engine: int = 0
    member_reasons: Counter[str] = field(default_factory=Counter)
    judge_status: Counter[str] = field(default_factory=Counter)
    rss_kb: dict[int, int] = field(default_factory=dict)
    done: int = 0


async def one(client: httpx.AsyncClient, i: int, args: argparse.Namespace, t: Tally) -> None:
    stream = i % 2 == 1
    body = {"model": "fusion", "messages": PROMPT, "stream": stream,
            "fusion": {"mode": MODES[i % len(MODES)], "retries": 2, "timeout": args.timeout,
                       "deadline": args.deadline}}
    started = time.monotonic()
    outcome, trace_id, result = "lost", None, None
    try:
        async with asyncio.timeout(args.deadline + args.margin):
            async with client.stream("POST", "/v1/chat/completions", json=body) as resp:
                if resp.status_code != 200:
                    err = json.loads(await resp.aread()).get("error", {})
                    trace_id = err.get("trace_id")
                    if resp.status_code in (502, 504) and err.get("code") in TYPED_CODES:
                        outcome = f"typed {resp.status_code} {err['code']}"
                    elif resp.status_code == 429:
                        outcome = "refused 429 (server busy)"
                    else:
                        outcome = f"lost: HTTP {resp.status_code} {err.get('code')}"
                elif not stream:
                    fusion = json.loads(await resp.aread())["fusion"]
                    trace_id, result = fusion["trace_id"], fusion
                    outcome = "answered"
                else:
                    outcome, trace_id, result = await read_stream(resp)
    except TimeoutError:
        outcome = "hung"
    except (httpx.HTTPError, ValueError, KeyError) as e:
        outcome = f"lost: {type(e).__name__}"
    elapsed = time.monotonic() - started
    t.latencies.append(elapsed)
    if outcome.startswith(("answered", "typed")):
        t.reached_engine += 1
        if trace_id:
            t.trace_ids.add(trace_id)
        else:
            outcome = "lost: no trace_id"
    if result is not None:
        t.member_reasons.update(m["reason"] or "ok" for m in result["members"])
        judge = result["judge"]
        t.judge_status[judge["status"] + (f" ({judge['reason']})" if judge["reason"]
                                          else "")] += 1
        if result["degraded"]:
            outcome += " (degraded)"
    if outcome.startswith(("lost", "hung")):
        t.lost.append(f"#{i} {'SSE' if stream else 'JSON'} {body['fusion']['mode']}: {outcome}"
                      f" after {elapsed:.2f} s")
    t.outcomes[outcome] += 1


async def read_stream(resp: httpx.Response) -> tuple[str, str | None, dict[str, Any] | None]:
    done: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    finished = False
    async for line in resp.aiter_lines():
        if line.startswith(": fusion "):
            event = json.loads(line[len(": fusion "):])
            if event["type"] == "done":
                done = event
        elif line == "data: [DONE]":
            finished = True
        elif line.startswith('data: {"error"'):
            error = json.loads(line[6:])["error"]
    if error is not None:
        code = error.get("code")
        status = {"deadline_exceeded": 504}.get(code, 502)
        kind = f"typed {status} {code} (in-stream)" if code in TYPED_CODES \
            else f"lost: in-stream {code}"
        return kind, error.get("trace_id"), None
    if finished and done is not None:
        return "answered", done.get("trace_id"), done["result"]
    return "lost: stream ended without [DONE] or an error", None, None


async def load(url: str, pid: int, args: argparse.Namespace) -> Tally:
    """Run the requests; read the server's RSS when the 100th and the last have completed,
    each time with nothing in flight (the load pauses for the first reading), so the two
    readings compare like with like rather than catching a 2 MB answer in transit."""
    t = Tally()
    first_mark = min(100, args.requests)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(args.requests):
        queue.put_nowait(i)
    running = asyncio.Event()
    running.set()
    in_flight = 0
    limits = httpx.Limits(max_connections=args.concurrency,
                          max_keepalive_connections=args.concurrency)

    async def quiet_rss() -> int:
        while in_flight:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.5)  # let the server finish its bookkeeping (traces, sockets)
        return rss_kb(pid)

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal in_flight
        while not queue.empty():
            await running.wait()
            if queue.empty():
                break
            i = queue.get_nowait()
            in_flight += 1
            try:
                await one(client, i, args, t)
            finally:
                in_flight -= 1
            t.done += 1
            if t.done == first_mark and first_mark < args.requests:
                running.clear()
                t.rss_kb[first_mark] = await quiet_rss()
                running.set()
            if t.done % 100 == 0:
                print(f"  {t.done} done, server RSS {rss_kb(pid) / 1024:.0f} MiB", flush=True)

    async with httpx.AsyncClient(base_url=url, timeout=None, limits=limits) as client:
        await asyncio.gather(*(worker(client) for _ in range(args.concurrency)))
        t.rss_kb[args.requests] = await quiet_rss()
    return t


def count_traces(db: Path) -> tuple[int, set[str]]:
    with sqlite3.connect(db) as conn:
        ids = {row[0] for row in conn.execute("SELECT id FROM traces")}
    return len(ids), ids


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def main() -> int:
    case = argparse.ArgumentParser(add_help=False)
    case.add_argument("--case", choices=("faults", "burst", "slowloris"), default="faults")
    known, rest = case.parse_known_args()
    if known.case != "faults":  # bench/soak_cases.py
        from bench.soak_cases import main as run_case

        return run_case(known.case, rest)
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", choices=("faults",), default="faults",
                    help="faults (this soak), burst or slowloris (bench/soak_cases.py)")
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--fault-rate", type=float, default=0.2)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--timeout", type=float, default=1.5, help="member timeout, seconds")
    ap.add_argument("--deadline", type=float, default=3.0, help="fusion deadline, seconds")
    ap.add_argument("--margin", type=float, default=5.0,
                    help="seconds past the deadline before a request counts as hung")
    ap.add_argument("--default-malloc", action="store_true",
                    help="leave glibc's dynamic mmap threshold on in the server (RSS swings)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="fusion-soak-"))
    parent, child = mp.Pipe()
    upstream = mp.get_context("fork").Process(target=_run_upstream,
                                              args=(child, args.seed, args.fault_rate))
    upstream.start()
    base_url = parent.recv()
    proc, url, db = start_server(base_url, tmp, max_concurrent=max(64, 2 * args.concurrency),
                                 fixed_malloc=not args.default_malloc)
    print(f"soak: {args.requests} requests, concurrency {args.concurrency}, fault rate "
          f"{args.fault_rate:.0%}, seed {args.seed}, member timeout {args.timeout:g} s, "
          f"deadline {args.deadline:g} s; server pid {proc.pid}, files in {tmp}")
    started = time.monotonic()
    try:
        t = asyncio.run(load(url, proc.pid, args))
        wall = time.monotonic() - started
        active = httpx.get(f"{url}/healthz", timeout=10).json()["active_fusions"]
    finally:
        proc.send_signal(signal.SIGINT)  # graceful: the store flushes and closes
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        assert upstream.pid is not None
        os.kill(upstream.pid, signal.SIGTERM)
        drawn = parent.recv() if parent.poll(10) else {}
        upstream.join(10)
    n_traces, stored = count_traces(db)

    print(f"\nwall {wall:.1f} s, {args.requests / wall:.1f} req/s; latency p50 "
          f"{pct(t.latencies, 0.5):.2f} s, p95 {pct(t.latencies, 0.95):.2f} s, max "
          f"{max(t.latencies):.2f} s")
    calls = drawn.pop("calls", 0)
    print(f"member calls {calls}, faulted {sum(drawn.values())} "
          f"({sum(drawn.values()) / max(calls, 1):.1%}):")
    for kind, n in sorted(drawn.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:22} {n}")
    print("outcomes:")
    for outcome, n in t.outcomes.most_common():
        print(f"  {outcome:46} {n}")
    print("member reasons (answered fusions):",
          ", ".join(f"{k} {n}" for k, n in t.member_reasons.most_common()))
    print("judge:", ", ".join(f"{k} {n}" for k, n in t.judge_status.most_common()))
    first, last = min(t.rss_kb), max(t.rss_kb)
    growth = (t.rss_kb[last] - t.rss_kb[first]) / t.rss_kb[first]
    print(f"server RSS (nothing in flight): {t.rss_kb[first] / 1024:.1f} MiB at request "
          f"{first}, {t.rss_kb[last] / 1024:.1f} MiB at request {last}: {growth:+.1%}"
          + (" (glibc default malloc)" if args.default_malloc else
             " (MALLOC_MMAP_THRESHOLD_=131072)"))
    print(f"traces stored {n_traces}; requests that reached the engine {t.reached_engine}; "
          f"trace ids returned {len(t.trace_ids)}, of them missing from the store "
          f"{len(t.trace_ids - stored)}")

    checks = {
        "0 lost": sum(1 for x in t.lost if not x.endswith("hung")) == 0
        and not any(o.startswith("lost") for o in t.outcomes),
        "0 hung": t.outcomes["hung"] == 0,
        "every request completed": sum(t.outcomes.values()) == args.requests,
        "no fusion slot left in use": active == 0,
        "RSS growth < 10 %": growth < 0.10,
        "one trace per fusion": n_traces == t.reached_engine and t.trace_ids <= stored,
    }
    for line in t.lost[:20]:
        print("  !", line)
    print("checks:", ", ".join(f"{k}: {'ok' if v else 'FAILED'}" for k, v in checks.items()))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

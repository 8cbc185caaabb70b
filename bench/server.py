"""What `fusion serve` costs on top of its upstreams: throughput and added latency.

    python bench/server.py [--clients 32] [--seconds 10] [--max-requests 5000] [--profile]
                           [--pg postgresql://...]

Not a test: it prints figures next to their targets and asserts nothing about time.

Three processes on loopback, so the server does not share a GIL with the load:
  * the fake upstream (tests/fake_upstream.py), zero delay, in its own process;
  * the server (create_app + uvicorn, access log off), a 3-member best-of preset + judge;
  * this process: httpx.AsyncClient load, N concurrent clients, bounded by count and time.

Each run is paired with its baseline in the same run: the same client calling the fake
directly "the way the server does" -- the three members at once (streamed, as the panel
streams them), then the judge (non-streamed). server - direct is what the server adds.
Runs: concurrency 1 (added latency, no queueing) and concurrency N (throughput), each with
traces off (`fusion serve --no-traces`), SQLite traces on and, with --pg (default
$MODELFUSION_TEST_PG_URL), PostgreSQL traces on. The server's CPU time per answered request
(its process, the trace writer thread included; Linux /proc) is printed beside req/s, and
a last table puts the configurations side by side with their ratios to traces off.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
for p in (ROOT, ROOT / "src"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import httpx  # noqa: E402

TARGET_RPS = 300.0
TARGET_P50_ADDED_MS = 5.0
MEMBERS = ("alpha", "beta", "gamma")
PROMPT = "In one sentence: why is the sky blue?"
VERDICT = json.dumps({"reason": "A is correct and complete.", "choice": "A"})


def answer(i: int) -> str:
    # Distinct per member: identical candidates would let the engine skip the judge.
    return (f"Candidate {i}: air molecules scatter short blue wavelengths far more than long "
            "red ones (Rayleigh scattering), so blue reaches the eye from all over the sky.")


# ---------------------------------------------------------------- child processes


def _run_upstream(conn: Any) -> None:
    from tests.fake_upstream import FakeUpstream

    up = FakeUpstream().start()
    for i, m in enumerate(MEMBERS):
        up.script(m, answer(i))
    up.script("judge", VERDICT)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    conn.send(up.base_url)
    signal.sigwait({signal.SIGTERM})
    up.stop()


def _run_server(base_url: str, port: int, db: str | None, profile: str | None) -> None:
    # db None: `fusion serve --no-traces` (ServerSettings.traces=False, no store).
    import uvicorn

    from modelfusion.config import load_config
    from modelfusion.server import ServerSettings, create_app

    cfg = write_config(base_url)
    store = None
    if db:
        from modelfusion.traces.store import TraceStore

        store = TraceStore.open(db)
    app = create_app(load_config(cfg), store, ServerSettings(max_concurrent=1024,
                                                             traces=store is not None))
    profiler = None
    if profile:
        from pyinstrument import Profiler

        profiler = Profiler(async_mode="disabled", interval=0.0005)
        profiler.start()
    try:
        # Stopped with SIGINT: uvicorn re-raises it after a graceful shutdown, and the
        # KeyboardInterrupt still runs this finally (SIGTERM would kill us first).
        uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    finally:
        if profiler is not None:
            profiler.stop()
            Path(profile).write_text(profiler.output_text(unicode=True, color=False),  # type: ignore[arg-type]
                                     encoding="utf-8")
        if store is not None:
            store.close()


def write_config(base_url: str) -> Path:
    cfg = Path(tempfile.mkdtemp(prefix="fusion-bench-")) / "fusion.toml"
    cfg.write_text(f"""default_preset = "bench"
[providers.fake]
base_url = "{base_url}"
[presets.bench]
models = {json.dumps([f"fake:{m}" for m in MEMBERS])}
judge = "fake:judge"
mode = "best-of"
""", encoding="utf-8")
    return cfg


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, timeout: float = 20.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{url} did not come up")


# ---------------------------------------------------------------- load


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU of a process so far (Linux /proc; nan elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Run:
    name: str
    latencies_ms: list[float]
    seconds: float
    errors: int
    cpu_s: float = float("nan")  # the server process's CPU over the run (server rows)

    @property
    def cpu_ms_per_req(self) -> float:
        return 1000 * self.cpu_s / len(self.latencies_ms) if self.latencies_ms else float("nan")

    @property
    def rps(self) -> float:
        return len(self.latencies_ms) / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        xs = sorted(self.latencies_ms)
        return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


async def load(name: str, one: Callable[[], Awaitable[None]], clients: int, seconds: float,
               max_requests: int, warmup: int = 20) -> Run:
    for _ in range(warmup):
        await one()
    latencies: list[float] = []
    errors = 0
    started = time.perf_counter()
    stop_at = started + seconds

    async def worker() -> None:
        nonlocal errors
        while time.perf_counter() < stop_at and len(latencies) + errors < max_requests:
            t0 = time.perf_counter()
            try:
                await one()
            except Exception:
                errors += 1
                continue
            latencies.append((time.perf_counter() - t0) * 1000)

    await asyncio.gather(*(worker() for _ in range(clients)))
    return Run(name, latencies, time.perf_counter() - started, errors)


def fused_call(client: httpx.AsyncClient, url: str) -> Callable[[], Awaitable[None]]:
    body = {"model": "fusion", "messages": [{"role": "user", "content": PROMPT}]}

    async def one() -> None:
        r = await client.post(url, json=body)
        if r.status_code != 200:
            raise RuntimeError(r.text)
        r.json()

    return one


def library_call(fusion: Any) -> Callable[[], Awaitable[None]]:
    """The same fusion through the library in this process: the engine without the server."""

    async def one() -> None:
        await fusion.run(PROMPT)

    return one


def direct_call(client: httpx.AsyncClient, base_url: str) -> Callable[[], Awaitable[None]]:
    """What the server sends upstream for one fusion, sent by hand."""
    url = f"{base_url}/chat/completions"
    messages = [{"role": "user", "content": PROMPT}]

    async def member(model: str) -> None:
        body = {"model": model, "messages": messages, "stream": True,
                "stream_options": {"include_usage": True}}
        async with client.stream("POST", url, json=body) as r:
            async for line in r.aiter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    json.loads(line[6:])

    async def one() -> None:
        await asyncio.gather(*(member(m) for m in MEMBERS))
        judge = {"model": "judge", "messages": messages, "temperature": 0,
                 "response_format": {"type": "json_schema", "json_schema": {
                     "name": "verdict", "schema": {"type": "object"}}}}
        (await client.post(url, json=judge)).json()

    return one


# ---------------------------------------------------------------- main


def row(run: Run, base: Run | None) -> str:
    added = ""
    if base is not None:
        added = (f"  added p50 {run.pct(.5) - base.pct(.5):6.2f} ms"
                 f"  p99 {run.pct(.99) - base.pct(.99):6.2f} ms")
    err = f"  errors {run.errors}" if run.errors else ""
    cpu = f"  server CPU {run.cpu_ms_per_req:5.2f} ms/req" if run.cpu_s == run.cpu_s else ""
    return (f"  {run.name:<28} {run.rps:7.1f} req/s  p50 {run.pct(.5):7.2f} ms"
            f"  p99 {run.pct(.99):7.2f} ms{added}{cpu}{err}")


async def measure(base_url: str, server: str, clients: int, seconds: float,
                  max_requests: int, library: bool, server_pid: int | None
                  ) -> list[tuple[Run, Run, Run | None]]:
    """(server, direct, library) per concurrency level."""
    from modelfusion import Fusion
    from modelfusion.config import load_config

    limits = httpx.Limits(max_connections=max(clients * 4, 16),
                          max_keepalive_connections=max(clients * 4, 16))
    out = []
    fusion = Fusion(preset="bench", config=load_config(write_config(base_url)))
    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        for n in (1, clients):
            direct = await load(f"direct upstream x{n}", direct_call(client, base_url), n,
                                seconds, max_requests)
            lib = await load(f"library (engine) x{n}", library_call(fusion), n, seconds,
                             max_requests) if library else None
            call = fused_call(client, server)
            for _ in range(20):  # the same warm-up as load(), outside the CPU count
                await call()
            before = cpu_seconds(server_pid)
            fused = await load(f"server x{n}", call, n, seconds, max_requests, warmup=0)
            fused.cpu_s = cpu_seconds(server_pid) - before
            out.append((fused, direct, lib))
    await fusion.aclose()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=8.0, help="per measured run")
    ap.add_argument("--max-requests", type=int, default=5000, help="per measured run")
    ap.add_argument("--profile", metavar="DIR", help="pyinstrument the server; reports here")
    ap.add_argument("--pg", default=os.environ.get("MODELFUSION_TEST_PG_URL"),
                    help="also measure PostgreSQL traces, in this (throwaway) database")
    args = ap.parse_args()

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    upstream = ctx.Process(target=_run_upstream, args=(child,), daemon=True)
    upstream.start()
    base_url = parent.recv()
    tmp = Path(tempfile.mkdtemp(prefix="fusion-bench-"))
    print(f"server bench: {os.cpu_count()} cores, 3 members + judge (best-of), fake upstream "
          f"zero delay; {args.clients} clients, {args.seconds:g} s or {args.max_requests} "
          "requests per run")
    configs: list[tuple[str, str | None]] = [("traces off", None),
                                             ("SQLite traces on", f"sqlite:///{tmp}/t.db")]
    if args.pg:
        configs.append(("PostgreSQL traces on", args.pg))
    summary: list[tuple[str, Run, Run]] = []  # (label, server x1, server xN)
    try:
        for label, db in configs:
            port = free_port()
            profile = str(Path(args.profile) / f"server-{'db' if db else 'nodb'}.txt") \
                if args.profile else None
            if profile:
                Path(args.profile).mkdir(parents=True, exist_ok=True)
            server = ctx.Process(target=_run_server, args=(base_url, port, db, profile))
            server.start()
            try:
                wait_ready(f"http://127.0.0.1:{port}/healthz")
                runs = asyncio.run(measure(base_url, f"http://127.0.0.1:{port}/v1/chat/"
                                           "completions", args.clients, args.seconds,
                                           args.max_requests, library=db is None,
                                           server_pid=server.pid))
            finally:
                if server.pid is not None:
                    os.kill(server.pid, signal.SIGINT)
                server.join(30)
            print(f"{label}:")
            for fused, direct, lib in runs:
                print(row(direct, None))
                if lib is not None:
                    print(row(lib, direct))
                print(row(fused, direct))
                if lib is not None:
                    print(f"  {'(server over library)':<33}"
                          f"added p50 {fused.pct(.5) - lib.pct(.5):6.2f} ms"
                          f"  p99 {fused.pct(.99) - lib.pct(.99):6.2f} ms")
            fused_n, direct_n, _ = runs[1]
            single, single_base, _ = runs[0]
            summary.append((label, single, fused_n))
            added = single.pct(.5) - single_base.pct(.5)
            print(f"  -> {fused_n.rps:.0f} fused req/s (target >= {TARGET_RPS:g}; the fake "
                  f"upstream alone managed {direct_n.rps:.0f} fusion-equivalents/s); added "
                  f"p50 at x1 {added:.2f} ms over direct (target <= {TARGET_P50_ADDED_MS:g})"
                  + (f"; profile: {profile}" if profile else ""))
        print_summary(summary, args.clients)
    finally:
        if upstream.pid is not None:
            os.kill(upstream.pid, signal.SIGTERM)
        upstream.join(10)


def print_summary(summary: list[tuple[str, Run, Run]], clients: int) -> None:
    """Traces off vs on, side by side, as ratios to traces off (same run, same machine)."""
    _, off1, offn = summary[0]
    print(f"traces, side by side (ratios to traces off; x{clients} = {clients} clients):")
    print(f"  {'':<22} {'req/s x1':>9} {'req/s x' + str(clients):>10} "
          f"{'CPU ms/req x1':>14} {'CPU ms/req x' + str(clients):>15}")
    for label, one, many in summary:
        print(f"  {label:<22} {one.rps:9.1f} {many.rps:10.1f} {one.cpu_ms_per_req:14.2f} "
              f"{many.cpu_ms_per_req:15.2f}")
        if one is not off1:
            print(f"  {'  ratio to off':<22} {one.rps / off1.rps:9.2f} {many.rps / offn.rps:10.2f}"
                  f" {one.cpu_ms_per_req / off1.cpu_ms_per_req:14.2f}"
                  f" {many.cpu_ms_per_req / offn.cpu_ms_per_req:15.2f}")


if __name__ == "__main__":
    main()

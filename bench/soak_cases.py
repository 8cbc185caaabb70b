"""The burst and slowloris cases of bench/soak.py (`--case burst`, `--case slowloris`).

    python bench/soak.py --case burst [--burst 200] [--bursts 3] [--limit 64] [--deadline 3]
    python bench/soak.py --case slowloris [--slow-headers 400] [--slow-bodies 100]
                                          [--drip 1] [--seconds 40]

On demand, not a test; loopback only, bounded in count and time. Both run the real
`python -m modelfusion serve` (soak.start_server) over the fake upstream in a child process:
members `ok1`-`ok3` answer after 0.2 / 0.4 / 0.6 s, `hang1`-`hang3` hang, the judge answers
whichever task it gets. The clients are raw asyncio sockets read through h11 (uvicorn's own
HTTP parser), not httpx: the burst's requests are written in one turn of the loop on
connections opened beforehand, and little client work stands between a byte arriving and
its time being taken, so what is timed is the server rather than the client's own queue.

burst: --burst requests at once, --bursts times, the first right after start (the openai
SDK's import and the clients' set-up used to land on it), at --limit (the server's default,
64). Requests cycle through three panels (healthy; one member hanging; every member
hanging: a 504 at the deadline), two modes (best-of, merge), JSON and SSE; member timeout
30 s, so only the deadline cuts a hang. A probe opens a fresh connection for `/healthz`
every 0.1 s throughout. Prints answered / 429 / 502 / 504 / lost / hung, p50/p99 of the
refusals' time and of the admitted requests' deadline overrun (time - deadline), and the
probe's latency. Exit 1 unless 0 lost, 0 hung, refusal p99 < 0.1 s, overrun < 0.5 s, no
slot left in use.

slowloris: --slow-headers connections send a request's headers a byte every --drip s,
--slow-bodies send a POST's headers whole and then its body a byte every --drip s; each
reconnects (after --drip s) when the server closes it, for --seconds. Meanwhile the probe
runs (against a baseline taken first, with no attack), and a normal merge fusion with the
healthy panel goes out every second. Exit 1 unless every fusion answered 200, every probe
answered, probe p99 < 0.5 s, header connections were closed by the header deadline (10 s)
and body connections answered 408 by the body deadline (30 s), each within 2 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import signal
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h11

from bench.soak import ANSWERS, PROMPT, TYPED_CODES, _judge, pct, start_server

HEALTHY = ["fake:ok1", "fake:ok2", "fake:ok3"]
PANELS = {"healthy": HEALTHY, "one hangs": ["fake:ok1", "fake:ok2", "fake:hang1"],
          "all hang": ["fake:hang1", "fake:hang2", "fake:hang3"]}
HEADER_DEADLINE, BODY_DEADLINE = 10.0, 30.0  # ServerSettings' defaults
PROBE_EVERY = 0.1


# ---------------------------------------------------------------- the fake upstream


def _run_upstream(conn: Any) -> None:
    from tests.fake_upstream import FakeUpstream, Fault, Reply

    up = FakeUpstream().start()
    for i, (name, delay) in enumerate(zip(("m1", "m2", "m3"), (0.2, 0.4, 0.6), strict=True)):
        up.script(f"ok{i + 1}", Reply(ANSWERS[name], delay=delay))
        up.script(f"hang{i + 1}", Fault("hang"))
    up.script("judge", _judge)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    conn.send(up.base_url)
    signal.sigwait({signal.SIGTERM})
    up.stop()


class Stack:
    """The fake upstream (child process) and `fusion serve` (subprocess), stopped on exit."""

    def __init__(self, limit: int, src: Path) -> None:
        self.tmp = Path(tempfile.mkdtemp(prefix="fusion-soak-"))
        parent, child = mp.Pipe()
        self.upstream = mp.get_context("fork").Process(target=_run_upstream, args=(child,))
        self.upstream.start()
        self.proc, self.url, _ = start_server(parent.recv(), self.tmp, max_concurrent=limit,
                                           src=src)
        self.port = int(self.url.rsplit(":", 1)[1])

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *_: object) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        assert self.upstream.pid is not None
        os.kill(self.upstream.pid, signal.SIGTERM)
        self.upstream.join(10)


# ---------------------------------------------------------------- one exchange


@dataclass
class Answer:
    status: int = 0
    body: bytes = b""
    seconds: float = 0.0  # from the request's last byte written to the answer's last byte
    failure: str | None = None  # "hung", or why the exchange broke


def request_bytes(body: dict[str, Any]) -> tuple[h11.Connection, bytes]:
    """A POST /v1/chat/completions, and the h11 client connection that will read its answer."""
    conn = h11.Connection(h11.CLIENT)
    data = json.dumps(body).encode()
    out = conn.send(h11.Request(method="POST", target="/v1/chat/completions", headers=[
        ("Host", "127.0.0.1"), ("Content-Type", "application/json"),
        ("Content-Length", str(len(data)))])) or b""
    return conn, out + (conn.send(h11.Data(data=data)) or b"") + \
        (conn.send(h11.EndOfMessage()) or b"")


async def read_answer(conn: h11.Connection, reader: asyncio.StreamReader, started: float,
                      limit: float) -> Answer:
    a = Answer()
    parts: list[bytes] = []
    try:
        async with asyncio.timeout(limit):
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(await reader.read(65536))
                elif isinstance(event, h11.Response):
                    a.status = event.status_code
                elif isinstance(event, h11.Data):
                    parts.append(bytes(event.data))
                elif isinstance(event, h11.EndOfMessage):
                    break
                elif isinstance(event, h11.ConnectionClosed):
                    a.failure = "lost: connection closed mid-answer"
                    break
    except TimeoutError:
        a.failure = "hung"
    except (h11.RemoteProtocolError, ConnectionError) as e:
        a.failure = f"lost: {type(e).__name__}"
    a.seconds = time.monotonic() - started
    a.body = b"".join(parts)
    return a


def outcome(a: Answer, stream: bool) -> str:
    """answered [(degraded)] / refused 429 / typed 502|504 code [(in-stream)] / lost / hung."""
    if a.failure:
        return a.failure
    try:
        if a.status == 429:
            return "refused 429"
        if a.status != 200:
            code = json.loads(a.body)["error"]["code"]
            return f"typed {a.status} {code}" if code in TYPED_CODES \
                else f"lost: HTTP {a.status} {code}"
        if not stream:
            return "answered" + (" (degraded)" if json.loads(a.body)["fusion"]["degraded"]
                                 else "")
        done: dict[str, Any] | None = None
        for line in a.body.decode().splitlines():
            if line.startswith(": fusion "):
                event = json.loads(line[len(": fusion "):])
                done = event if event["type"] == "done" else done
            elif line.startswith('data: {"error"'):
                code = json.loads(line[6:])["error"]["code"]
                status = 504 if code == "deadline_exceeded" else 502
                return f"typed {status} {code} (in-stream)" if code in TYPED_CODES \
                    else f"lost: in-stream {code}"
        if done is not None and a.body.rstrip().endswith(b"data: [DONE]"):
            return "answered" + (" (degraded)" if done["result"]["degraded"] else "")
        return "lost: stream ended without [DONE] or an error"
    except (ValueError, KeyError, TypeError) as e:
        return f"lost: unreadable answer ({type(e).__name__})"


def fusion_body(i: int, panel: str, deadline: float) -> dict[str, Any]:
    return {"model": "fusion", "messages": PROMPT, "stream": i % 2 == 1,
            "fusion": {"mode": ("best-of", "merge")[i // 2 % 2], "models": PANELS[panel],
                       "judge": "fake:judge", "retries": 0, "timeout": 30,
                       "deadline": deadline}}


# ---------------------------------------------------------------- the /healthz probe


@dataclass
class Probe:
    latencies: list[float] = field(default_factory=list)
    failures: Counter[str] = field(default_factory=Counter)
    slow: list[tuple[float, float]] = field(default_factory=list)  # (start, latency) > 50 ms

    async def run(self, port: int, stop: asyncio.Event) -> None:
        """A fresh connection per probe, as a new client would come."""
        began = time.monotonic()
        while not stop.is_set():
            started = time.monotonic()
            try:
                async with asyncio.timeout(5):
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                 b"Connection: close\r\n\r\n")
                    got = await reader.read()
                    writer.close()
                if got.startswith(b"HTTP/1.1 200"):
                    self.latencies.append(time.monotonic() - started)
                    if self.latencies[-1] > 0.05:
                        self.slow.append((started - began, self.latencies[-1]))
                else:
                    self.failures[got.split(b"\r\n", 1)[0].decode(errors="replace")
                                  or "closed"] += 1
            except TimeoutError:
                self.failures["no answer in 5 s"] += 1
            except OSError as e:
                self.failures[type(e).__name__] += 1
            await asyncio.sleep(max(0.0, PROBE_EVERY - (time.monotonic() - started)))

    def line(self) -> str:
        xs = self.latencies
        return (f"{len(xs)} answered, p50 {pct(xs, 0.5) * 1e3:.1f} ms, p99 "
                f"{pct(xs, 0.99) * 1e3:.1f} ms, max {max(xs, default=0) * 1e3:.1f} ms"
                + (f"; failed: {dict(self.failures)}" if self.failures else "")
                + (f"; over 50 ms: {len(self.slow)}, the first at +{self.slow[0][0]:.2f} s"
                   if self.slow else ""))


def ms(xs: list[float]) -> str:
    if not xs:
        return "none"
    return (f"p50 {pct(xs, 0.5) * 1e3:.0f} ms, p99 {pct(xs, 0.99) * 1e3:.0f} ms, "
            f"max {max(xs) * 1e3:.0f} ms")


async def active_fusions(port: int) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
    got = await reader.read()
    writer.close()
    return int(json.loads(got.split(b"\r\n\r\n", 1)[1])["active_fusions"])


# ---------------------------------------------------------------- burst


async def one_burst(port: int, n: int, deadline: float, margin: float
                    ) -> list[tuple[str, str, Answer]]:
    panels = list(PANELS)
    opened = await asyncio.gather(*(asyncio.open_connection("127.0.0.1", port)
                                    for _ in range(n)))
    prepared = [(i, panels[i % 3], *request_bytes(fusion_body(i, panels[i % 3], deadline)))
                for i in range(n)]
    reads = []
    for (reader, writer), (i, panel, conn, data) in zip(opened, prepared, strict=True):
        writer.write(data)  # all of them in this one turn of the loop
        reads.append((i, panel, read_answer(conn, reader, time.monotonic(), deadline + margin)))
    answers = await asyncio.gather(*(r for _, _, r in reads))
    for _, writer in opened:
        writer.close()
    return [(panel, outcome(a, i % 2 == 1), a)
            for (i, panel, _), a in zip(reads, answers, strict=True)]


async def burst(port: int, args: argparse.Namespace) -> bool:
    ok = True
    for b in range(args.bursts):
        stop = asyncio.Event()
        probe = Probe()
        probing = asyncio.create_task(probe.run(port, stop))
        started = time.monotonic()
        results = await one_burst(port, args.burst, args.deadline, args.margin)
        wall = time.monotonic() - started
        stop.set()
        await probing
        await asyncio.sleep(0.5)  # the slots of requests that just ended
        active = await active_fusions(port)
        counts = Counter(o for _, o, _ in results)
        refused = [a.seconds for _, o, a in results if o == "refused 429"]
        admitted = [(p, a) for p, o, a in results if o != "refused 429"]
        overrun = [a.seconds - args.deadline for p, a in admitted if p != "healthy"]
        healthy = [a.seconds for p, a in admitted if p == "healthy"]
        print(f"\nburst {b + 1} of {args.bursts}{' (the first after start)' if b == 0 else ''}"
              f": {args.burst} at once, limit {args.limit}, deadline {args.deadline:g} s; "
              f"all done in {wall:.2f} s")
        for o, k in counts.most_common():
            print(f"  {o:46} {k}")
        print(f"  refusals (429): {len(refused)}, time {ms(refused)}, min "
              f"{min(refused, default=0) * 1e3:.0f} ms")
        print(f"  admitted with a hanging member: {len(overrun)}, time - deadline "
              f"{ms(overrun)}; over 0.5 s: {sum(x > 0.5 for x in overrun)}")
        print(f"  admitted healthy panels: {len(healthy)}, time {ms(healthy)} "
              f"(slowest member 0.6 s + judge)")
        print(f"  /healthz probe: {probe.line()}")
        print(f"  active_fusions after: {active}")
        checks = {
            "0 lost": not any(o.startswith("lost") for o in counts),
            "0 hung": counts["hung"] == 0,
            "refusal p99 < 0.1 s": not refused or pct(refused, 0.99) < 0.1,
            "overrun < 0.5 s": max(overrun, default=0) < 0.5,
            "probe answered": not probe.failures,
            "no slot left in use": active == 0,
        }
        print("  checks:", ", ".join(f"{k}: {'ok' if v else 'FAILED'}"
                                     for k, v in checks.items()))
        ok = ok and all(checks.values())
        await asyncio.sleep(1)
    return ok


# ---------------------------------------------------------------- slowloris


@dataclass
class Slow:
    lifetimes: list[float] = field(default_factory=list)  # connect to the server's close
    answers: Counter[str] = field(default_factory=Counter)  # what the server sent first
    open_at_end: int = 0
    connect_errors: Counter[str] = field(default_factory=Counter)


async def slow_client(port: int, head: bytes, drip: float, stop: asyncio.Event,
                      tally: Slow) -> None:
    """Send `head`, then one byte every `drip` s, until the server closes; then again."""
    await asyncio.sleep(random.uniform(0, drip))  # not all in step
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError as e:
            tally.connect_errors[type(e).__name__] += 1
            await asyncio.sleep(drip)
            continue
        started = time.monotonic()
        writer.write(head)
        got = asyncio.ensure_future(reader.read(4096))
        while not stop.is_set() and not got.done():
            await asyncio.wait({got}, timeout=drip)
            if not got.done() and not writer.is_closing():
                writer.write(b"a" if head.startswith(b"GET") else b" ")
        if got.done():
            tally.lifetimes.append(time.monotonic() - started)
            first = got.result() if got.exception() is None else b"reset"
            tally.answers[first.split(b"\r\n", 1)[0].decode(errors="replace")
                          or "closed, nothing sent"] += 1
        else:
            got.cancel()
            tally.open_at_end += 1
        writer.close()
        await asyncio.sleep(drip)


async def fusions_every_second(port: int, stop: asyncio.Event,
                               results: list[tuple[str, float]]) -> None:
    i = 0
    while not stop.is_set():
        started = time.monotonic()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            body = {**fusion_body(0, "healthy", 10), "stream": False}
            body["fusion"] = {**body["fusion"], "mode": "merge"}
            conn, data = request_bytes(body)
            writer.write(data)
            a = await read_answer(conn, reader, time.monotonic(), 15)
            writer.close()
            results.append((outcome(a, False), a.seconds))
        except OSError as e:
            results.append((f"lost: {type(e).__name__}", time.monotonic() - started))
        i += 1
        await asyncio.sleep(max(0.0, 1 - (time.monotonic() - started)))


async def slowloris(port: int, args: argparse.Namespace) -> bool:
    stop = asyncio.Event()
    baseline = Probe()
    task = asyncio.create_task(baseline.run(port, stop))
    await asyncio.sleep(3)
    stop.set()
    await task
    print(f"\nbaseline /healthz probe (no attack, 3 s): {baseline.line()}")

    stop = asyncio.Event()
    heads, bodies, probe = Slow(), Slow(), Probe()
    fusions: list[tuple[str, float]] = []
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
    post = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{")
    tasks = [asyncio.create_task(slow_client(port, head, args.drip, stop, heads))
             for _ in range(args.slow_headers)]
    tasks += [asyncio.create_task(slow_client(port, post, args.drip, stop, bodies))
              for _ in range(args.slow_bodies)]
    tasks += [asyncio.create_task(probe.run(port, stop)),
              asyncio.create_task(fusions_every_second(port, stop, fusions))]
    await asyncio.sleep(args.seconds)
    stop.set()
    await asyncio.gather(*tasks)
    await asyncio.sleep(1)
    active = await active_fusions(port)

    print(f"slowloris: {args.slow_headers} connections dripping headers and "
          f"{args.slow_bodies} dripping bodies, a byte every {args.drip:g} s, "
          f"for {args.seconds:g} s")
    for name, t in (("headers", heads), ("bodies", bodies)):
        print(f"  slow {name}: {len(t.lifetimes)} closed by the server after "
              f"{ms(t.lifetimes)}; first line sent: {dict(t.answers)}; still open at the "
              f"end {t.open_at_end}"
              + (f"; connect errors {dict(t.connect_errors)}" if t.connect_errors else ""))
    fusion_outcomes = Counter(o for o, _ in fusions)
    print(f"  fusions meanwhile: {dict(fusion_outcomes)}, time {ms([s for _, s in fusions])}")
    print(f"  /healthz probe under attack: {probe.line()}")
    p99 = pct(probe.latencies, 0.99)
    print(f"  probe p99 under attack / baseline: {p99 / pct(baseline.latencies, 0.99):.1f}x")
    print(f"  active_fusions after: {active}")
    header_slack = [x for x in heads.lifetimes if x > HEADER_DEADLINE + 2]
    checks = {
        "every fusion answered": bool(fusions)
        and set(fusion_outcomes) <= {"answered", "answered (degraded)"},
        "every probe answered": not probe.failures,
        "probe p99 < 0.5 s": p99 < 0.5,
        "slow headers closed by the deadline": bool(heads.lifetimes) and not header_slack
        or not args.slow_headers,
        "slow bodies answered 408 by the deadline": not args.slow_bodies or (
            bool(bodies.lifetimes) and max(bodies.lifetimes) < BODY_DEADLINE + 2
            and set(bodies.answers) == {"HTTP/1.1 408 Request Timeout"}),
        "no slot left in use": active == 0,
    }
    print("  checks:", ", ".join(f"{k}: {'ok' if v else 'FAILED'}" for k, v in checks.items()))
    return all(checks.values())


# ---------------------------------------------------------------- entry point


def main(case: str, argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog=f"soak.py --case {case}",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--limit", type=int, default=64, help="the server's --max-concurrent")
    ap.add_argument("--server-src", type=Path, default=Path(__file__).resolve().parent.parent
                    / "src", help="the package the server runs (to compare two versions)")
    if case == "burst":
        ap.add_argument("--burst", type=int, default=200, help="requests at once")
        ap.add_argument("--bursts", type=int, default=3)
        ap.add_argument("--deadline", type=float, default=3.0)
        ap.add_argument("--margin", type=float, default=5.0,
                        help="seconds past the deadline before a request counts as hung")
    else:
        ap.add_argument("--slow-headers", type=int, default=400)
        ap.add_argument("--slow-bodies", type=int, default=100)
        ap.add_argument("--drip", type=float, default=1.0, help="seconds between bytes")
        ap.add_argument("--seconds", type=float, default=40.0)
    args = ap.parse_args(argv)
    with Stack(args.limit, args.server_src) as stack:
        print(f"soak --case {case}: server pid {stack.proc.pid} ({args.server_src}), files "
              f"in {stack.tmp}")
        run = burst if case == "burst" else slowloris
        ok = asyncio.run(run(stack.port, args))
    return 0 if ok else 1

"""Load a client can put on the server: bounded work per request, refusals that cost
nothing, slow clients cut off and holding no fusion slot, logs that cannot flood (issue
12, items 1, 10, 13).

No timed assertions: where a hang must be caught the bound is generous (5 s for
`/healthz`, which answers in milliseconds) and the measured figures live in bench/soak.py
and docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import uvicorn

from modelfusion.config import load_config
from modelfusion.fusion import ProviderPool
from modelfusion.server import ServerSettings, create_app
from modelfusion.server import app as app_module
from modelfusion.server.logs import RateLimit
from modelfusion.server.transport import uvicorn_config
from tests.fake_upstream import FakeUpstream, Reply
from tests.helpers import ASK, Served, error_of

# ---------------------------------------------------------------- item 1: many messages


def test_too_many_messages_is_a_400_naming_messages(served: Served, upstream: FakeUpstream):
    messages = [{"role": "user", "content": ""}] * 20_000  # ~660 KB, under the body limit
    r = served.post({"model": "fusion", "messages": messages})
    assert r.status_code == 400, r.text
    err = error_of(r)
    assert (err["param"], err["code"]) == ("messages", "too_many_messages")
    assert "2,048" in err["message"]
    assert not upstream.requests


def test_the_message_limit_is_a_setting(serve: Callable[..., Served], upstream: FakeUpstream):
    served = serve(max_messages=3)
    ok = served.post({"model": "fake:solo", "messages": ASK * 3})
    assert ok.status_code == 200, ok.text
    assert len(upstream.requests[0].messages) == 3
    over = served.post({"model": "fake:solo", "messages": ASK * 4})
    assert error_of(over)["code"] == "too_many_messages"


def healthz_worst(url: str, until: threading.Event) -> list[float]:
    """Seconds each /healthz took, polled until `until` is set."""
    seen: list[float] = []
    with httpx.Client(timeout=60) as client:
        while not until.is_set():
            started = time.monotonic()
            assert client.get(f"{url}/healthz").status_code == 200
            seen.append(time.monotonic() - started)
            time.sleep(0.02)
    return seen


def test_a_huge_conversation_does_not_freeze_the_event_loop(serve: Callable[..., Served],
                                                            upstream: FakeUpstream):
    # Above the default limits on purpose: what is left of the work per message must not
    # run on the event loop once per member call (the openai SDK's transform did: ~6 s per
    # call for this body, so /healthz waited through three of them).
    served = serve(max_messages=40_000, max_body_bytes=4 << 20)
    for name in ("alpha", "beta", "gamma"):
        upstream.script(name, Reply(name, delay=0.5))
    messages = [{"role": "user", "content": ""}] * 36_000
    done = threading.Event()
    polls: list[list[float]] = []
    poller = threading.Thread(target=lambda: polls.append(healthz_worst(served.url, done)))
    poller.start()
    try:
        r = served.post({"model": "fusion", "messages": messages,
                         "fusion": {"deadline": 15}})
    finally:
        done.set()
        poller.join(60)
    assert r.status_code == 200, r.text[:300]
    assert len(upstream.requests) == 4 and all(len(q.messages) == 36_000
                                               for q in upstream.requests[:3])
    assert polls and polls[0] and max(polls[0]) < 5, polls  # a hang, not a performance bound


# ---------------------------------------------------------------- item 13: bursts


def test_a_refusal_under_load_reads_no_body(serve: Callable[..., Served],
                                            upstream: FakeUpstream):
    """Admission comes first: a request past the limit is refused before its body is
    read (so before any parse or plan), even a body that never arrives."""
    served = serve(max_concurrent=1)
    upstream.script("slow", Reply("late", delay=3))
    first = threading.Thread(target=served.post, args=(
        {"model": "fake:slow", "messages": ASK},))
    first.start()
    try:
        for _ in range(200):
            if httpx.get(f"{served.url}/healthz").json()["active_fusions"] == 1:
                break
            time.sleep(0.02)
        port = int(served.url.rsplit(":", 1)[1])
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                      b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n")
            head = s.recv(4096)  # the body is never sent: before, this waited for it
        assert head.startswith(b"HTTP/1.1 429"), head
    finally:
        first.join(30)


def test_providers_are_built_when_the_server_starts(server_config: Any,
                                                    monkeypatch: pytest.MonkeyPatch):
    """The SDK import and the client set-up happen at start-up, not in the first
    request's timings on the event loop."""
    built: list[str] = []
    real_get = ProviderPool.get
    monkeypatch.setattr(ProviderPool, "get",
                        lambda self, name: (built.append(name), real_get(self, name))[1])
    app = create_app(load_config(server_config), None, ServerSettings())
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, lifespan="on",
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        for _ in range(1000):
            if server.started:
                break
            time.sleep(0.01)
        assert server.started and built == ["fake"]  # before any request
    finally:
        server.should_exit = True
        thread.join(10)


async def test_a_burst_is_refused_before_the_admitted_requests_work(
        server_config: Any, monkeypatch: pytest.MonkeyPatch):
    """Two requests arriving together at a limit of one: the second's 429 goes out before
    the first's parse and plan run (the admitted request yields once after taking its
    slot). Before, every admitted request of a burst did its set-up first, and the
    refusals waited behind it: 40-250 ms each at 200 at once (bench/soak.py --case burst).
    """
    events: list[Any] = []
    real_prepare = app_module.prepare

    def prepare(*args: Any, **kw: Any) -> Any:
        events.append("prepare")
        return real_prepare(*args, **kw)

    monkeypatch.setattr(app_module, "prepare", prepare)
    app = create_app(load_config(server_config), None, ServerSettings(max_concurrent=1))

    async def recorded(scope: Any, receive: Any, send: Any) -> None:
        async def sending(message: Any) -> None:
            if message["type"] == "http.response.start":
                events.append(message["status"])
            await send(message)

        await app(scope, receive, sending)

    transport = httpx.ASGITransport(app=recorded)
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1",
                                 timeout=30) as client:
        body = {"model": "fusion", "messages": ASK}
        first, second = await asyncio.gather(
            client.post("/v1/chat/completions", json=body),
            client.post("/v1/chat/completions", json=body))
    assert (first.status_code, second.status_code) == (200, 429), (first.text, second.text)
    assert error_of(second)["code"] == "server_busy"
    assert events == [429, "prepare", 200]


# ---------------------------------------------------------------- item 10: slow clients


def guarded_server(server_config: Any, **settings: Any) -> tuple[uvicorn.Server, int,
                                                                  threading.Thread]:
    settings = ServerSettings(**settings)
    app = create_app(load_config(server_config), None, settings)
    server = uvicorn.Server(uvicorn_config(app, settings, port=0, log_level="warning",
                                           lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(3000):
        if server.started:
            break
        time.sleep(0.01)
    assert server.started
    return server, server.servers[0].sockets[0].getsockname()[1], thread


def closed_within(s: socket.socket, seconds: float) -> bytes | None:
    """What the server sent before closing, or None if it kept the connection open."""
    s.settimeout(seconds)
    got = b""
    try:
        while chunk := s.recv(4096):
            got += chunk
    except TimeoutError:
        return None
    return got


def test_half_sent_headers_and_bodies_are_cut_off(server_config: Any):
    server, port, thread = guarded_server(server_config, header_timeout_s=0.5,
                                          body_timeout_s=0.5)
    try:
        slow_head = socket.create_connection(("127.0.0.1", port))
        slow_head.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        assert closed_within(slow_head, 10) == b""  # closed, nothing to answer
        slow_body = socket.create_connection(("127.0.0.1", port))
        slow_body.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                          b"Content-Type: application/json\r\nContent-Length: 50\r\n\r\n{")
        answer = closed_within(slow_body, 10)
        assert answer is not None and answer.startswith(b"HTTP/1.1 408"), answer
        assert b"request_timeout" in answer
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
        for s in (slow_head, slow_body):
            s.close()
    finally:
        server.should_exit = True
        thread.join(10)


def test_connections_past_the_cap_are_refused_and_healthz_recovers(server_config: Any):
    server, port, thread = guarded_server(server_config, max_connections=64,
                                          max_concurrent=8, header_timeout_s=1)
    idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(64)]
    try:
        for s in idle:
            s.sendall(b"GET /healthz HTTP/1.1\r\n")  # half a request each
        extra = socket.create_connection(("127.0.0.1", port))
        answer = closed_within(extra, 10)
        assert answer is not None and answer.startswith(b"HTTP/1.1 503"), answer
        assert b"server_busy" in answer
        extra.close()
        assert all(closed_within(s, 10) == b"" for s in idle)  # the header deadline
        assert httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).status_code == 200
    finally:
        for s in idle:
            s.close()
        server.should_exit = True
        thread.join(10)


def started_reading(gate: Any) -> bool:
    # `reading` is new with the fix; before it, a request took its slot before its body.
    return bool(gate.active or getattr(gate, "reading", 0))


def test_a_body_still_arriving_holds_no_fusion_slot(serve: Callable[..., Served]):
    """A client that sends its body a byte now and then waits in `reading`, not in a
    fusion slot: before, 64 of them (the default limit) kept every fusion out for as long
    as they kept dripping, 32 of 35 refused in 35 s (bench/soak.py --case slowloris)."""
    served = serve(max_concurrent=1)
    gate = served.app.state.gate
    port = int(served.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as slow:
        slow.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        for _ in range(1000):
            if started_reading(gate):
                break
            time.sleep(0.01)
        assert started_reading(gate)
        r = served.post({"model": "fusion", "messages": ASK})
        assert r.status_code == 200, r.text
        assert gate.active == 0 and gate.reading == 1


def test_bodies_being_read_share_a_byte_budget(serve: Callable[..., Served]):
    """Reading outside the slots must not lift the memory bound slot-first reading had:
    bodies arriving at once hold at most max_concurrent x max_body_bytes."""
    served = serve(max_concurrent=1, max_body_bytes=4096)
    gate = served.app.state.gate
    port = int(served.url.rsplit(":", 1)[1])
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 4000\r\n\r\n")
    with socket.create_connection(("127.0.0.1", port), timeout=10) as one:
        one.sendall(head + b"[" + b" " * 2999)
        for _ in range(1000):
            if getattr(getattr(gate, "bodies", None), "held", 0) == 3000:
                break
            time.sleep(0.01)
        assert gate.bodies.held == 3000 and gate.active == 0
        with socket.create_connection(("127.0.0.1", port), timeout=10) as two:
            two.sendall(head + b"[" + b" " * 1999)
            answer = closed_within(two, 10) or b""
        assert answer.startswith(b"HTTP/1.1 429"), answer
        assert b"server_busy" in answer and b"bytes" in answer
        assert gate.bodies.held == 3000  # the refused body gave back what it had taken
    for _ in range(1000):  # the first client left: its bytes are given back too
        if gate.bodies.held == 0 and gate.reading == 0:
            break
        time.sleep(0.01)
    assert gate.bodies.held == 0 and gate.reading == 0


def test_a_flood_of_log_lines_is_cut_to_a_budget_and_counted():
    limit = RateLimit(burst=5, rate=0.001)
    records = [logging.LogRecord("uvicorn.error", logging.WARNING, __file__, 1,
                                 "Invalid HTTP request received.", None, None)
               for _ in range(1000)]
    passed = [r for r in records if limit.filter(r)]
    assert len(passed) == 5
    limit._tokens = 1  # time passes (without waiting for it)
    late = logging.LogRecord("uvicorn.error", logging.WARNING, __file__, 1, "again", None, None)
    assert limit.filter(late)
    assert late.getMessage() == "[995 log lines left out: too many at once] again"

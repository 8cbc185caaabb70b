"""Self-test of the fake upstream, driven by the real openai client over real sockets."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator

import openai
import pytest

from tests.fake_upstream import FakeUpstream, Fault, RecordedRequest, Reply
from tests.helpers import NetworkBlockedError

MSGS = [{"role": "user", "content": "what is two plus two"}]


@pytest.fixture
def client(upstream: FakeUpstream) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=upstream.base_url, api_key="test", max_retries=0, timeout=5) as c:
        yield c


def ask(client: openai.OpenAI, model: str = "m1", **kw: object) -> str | None:
    return (
        client.chat.completions.create(model=model, messages=MSGS, **kw).choices[0].message.content
    )


def stream_text(client: openai.OpenAI, model: str = "m1", **kw: object) -> tuple[str, list]:
    chunks = list(client.chat.completions.create(model=model, messages=MSGS, stream=True, **kw))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, chunks


# ------------------------------------------------------------------ replies


def test_plain_reply(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    upstream.script("m1", Reply("hello there", cost=0.25))
    r = client.chat.completions.create(model="m1", messages=MSGS)
    assert r.choices[0].message.content == "hello there"
    assert r.choices[0].finish_reason == "stop"
    assert r.model == "m1"
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (5, 2, 7)
    assert r.usage.model_extra["cost"] == 0.25


def test_unscripted_model_gets_default_answer(client: openai.OpenAI) -> None:
    assert ask(client, "whatever") == "answer from whatever"


def test_stream_reassembles_text_and_reports_usage(
    upstream: FakeUpstream, client: openai.OpenAI
) -> None:
    upstream.script("m1", Reply("the answer is four", prompt_tokens=7, cost=0.01))
    text, chunks = stream_text(client, stream_options={"include_usage": True})
    assert text == "the answer is four"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == []
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (7, 4)
    assert chunks[-1].usage.model_extra["cost"] == 0.01


def test_stream_without_include_usage_has_no_usage_chunk(client: openai.OpenAI) -> None:
    text, chunks = stream_text(client)
    assert text == "answer from m1"
    assert all(c.choices and c.usage is None for c in chunks)


async def test_async_client_and_concurrent_delays(upstream: FakeUpstream) -> None:
    upstream.script("slow", Reply("done", delay=1.0))
    async with openai.AsyncOpenAI(base_url=upstream.base_url, api_key="test", max_retries=0) as c:
        t0 = time.monotonic()
        rs = await asyncio.gather(
            *(c.chat.completions.create(model="slow", messages=MSGS) for _ in range(8))
        )
        assert time.monotonic() - t0 < 4  # served concurrently, not one after another (8 s)
        assert {r.choices[0].message.content for r in rs} == {"done"}
        stream = await c.chat.completions.create(model="m2", messages=MSGS, stream=True)
        parts = [ch.choices[0].delta.content or "" async for ch in stream if ch.choices]
        assert "".join(parts) == "answer from m2"


def test_script_sequence_last_step_repeats(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    upstream.script("m1", Reply("first"), "second")
    assert [ask(client) for _ in range(4)] == ["first", "second", "second", "second"]
    assert upstream.calls("m1") == 4
    upstream.script("m1", Reply("again"))  # re-scripting restarts the sequence
    assert ask(client) == "again"


def test_callable_step_sees_request(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    seen: list[RecordedRequest] = []

    def judge(req: RecordedRequest) -> Reply | Fault:
        seen.append(req)
        return Reply(req.messages[-1]["content"].upper())

    upstream.script("judge", judge)
    assert ask(client, "judge", temperature=0.5) == "WHAT IS TWO PLUS TWO"
    assert seen[0].body["temperature"] == 0.5 and seen[0].stream is False


def test_requests_are_recorded_with_headers(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    before = time.monotonic()
    ask(client, "m1", extra_headers={"X-Fusion-Depth": "1"})
    stream_text(client, "m2")
    first, second = upstream.requests
    assert first.headers["x-fusion-depth"] == "1"
    assert first.headers["authorization"] == "Bearer test"
    assert (first.model, first.stream, first.messages) == ("m1", False, MSGS)
    assert (second.model, second.stream) == ("m2", True)
    assert before <= first.time <= second.time
    upstream.reset()
    assert upstream.requests == [] and upstream.calls("m1") == 0


def test_models_endpoint_and_unknown_path(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    upstream.script("b", Reply("x"))
    upstream.script("a", Reply("y"))
    assert [m.id for m in client.models.list()] == ["a", "b"]
    conn = http.client.HTTPConnection("127.0.0.1", upstream.port, timeout=5)
    conn.request("GET", "/v1/nope")
    resp = conn.getresponse()
    assert resp.status == 404
    assert set(json.loads(resp.read())["error"]) == {"message", "type", "code"}
    conn.request("GET", "/v1/models")  # same connection: keep-alive works
    assert conn.getresponse().status == 200
    conn.close()


# ------------------------------------------------------------------ faults


def test_status_429_with_retry_after(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    upstream.script("m1", Fault("status", status=429, retry_after="2", message="slow down"))
    with pytest.raises(openai.RateLimitError) as info:
        ask(client)
    assert info.value.status_code == 429
    assert info.value.response.headers["retry-after"] == "2"
    assert "slow down" in str(info.value)


def test_status_500(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    upstream.script("m1", Fault("status"), Reply("recovered"))
    with pytest.raises(openai.InternalServerError):
        ask(client)
    assert ask(client) == "recovered"  # the connection survives an error status


@pytest.mark.parametrize("stream", [False, True])
def test_malformed_json_raises(upstream: FakeUpstream, client: openai.OpenAI, stream: bool) -> None:
    upstream.script("m1", Fault("malformed_json"))
    # the SDK lets the raw json.JSONDecodeError (a ValueError) escape, not an openai error
    with pytest.raises(ValueError):
        stream_text(client) if stream else ask(client)


def test_error_body_200(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    upstream.script("m1", Fault("error_body_200", status=503, message="provider down"))
    # non-stream: the SDK returns a completion with choices=None and the error as an extra field
    r = client.chat.completions.create(model="m1", messages=MSGS)
    assert r.choices is None
    assert r.model_extra["error"] == {"message": "provider down", "code": 503}
    # stream: the SDK raises on the error event
    with pytest.raises(openai.APIError, match="provider down"):
        stream_text(client)


def test_sse_error_event_raises_mid_stream(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    upstream.script("m1", Fault("sse_error_event", status=502, message="upstream died"))
    got: list[str] = []
    with pytest.raises(openai.APIError, match="upstream died") as info:
        for c in client.chat.completions.create(model="m1", messages=MSGS, stream=True):
            got.append(c.choices[0].delta.content or "")
    assert "".join(got) == "partial answer "
    assert info.value.body == {"message": "upstream died", "code": 502}


@pytest.mark.parametrize("stream", [False, True])
def test_sse_cut(upstream: FakeUpstream, client: openai.OpenAI, stream: bool) -> None:
    upstream.script("m1", Fault("sse_cut"))
    got: list[str] = []
    with pytest.raises(openai.APIConnectionError):
        if stream:
            for c in client.chat.completions.create(model="m1", messages=MSGS, stream=True):
                got.append(c.choices[0].delta.content or "")
        else:
            ask(client)
    assert "".join(got) == ("partial answer " if stream else "")


@pytest.mark.parametrize("stream", [False, True])
def test_reset(upstream: FakeUpstream, client: openai.OpenAI, stream: bool) -> None:
    upstream.script("m1", Fault("reset"), Reply("fine"))
    with pytest.raises(openai.APIConnectionError):
        stream_text(client) if stream else ask(client)
    assert ask(client) == "fine"


def test_hang_ends_by_client_timeout(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    upstream.script("m1", Fault("hang"))
    t0 = time.monotonic()
    with pytest.raises(openai.APITimeoutError):
        ask(client, timeout=0.3)
    assert time.monotonic() - t0 < 10  # the hang itself lasts until stop()


def test_drip(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    upstream.script("slow", Fault("drip"))  # a byte every 0.5 s: the read timeout fires
    with pytest.raises(openai.APITimeoutError):
        stream_text(client, "slow", timeout=0.2)
    upstream.script("fast", Fault("drip", delay=0.001, message="ok"))
    assert ask(client, "fast") == "ok"


def test_empty_and_oversized(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    upstream.script("e", Fault("empty"))
    upstream.script("big", Fault("oversized"))
    assert ask(client, "e") == ""
    text, chunks = stream_text(client, "e")
    assert text == "" and all(not (c.choices and c.choices[0].delta.content) for c in chunks)
    assert len(ask(client, "big") or "") >= 1_900_000
    assert len(stream_text(client, "big")[0]) >= 1_900_000


def test_broken_script_step_is_a_500(upstream: FakeUpstream, client: openai.OpenAI) -> None:
    upstream.script("m1", lambda req: 1 / 0)
    with pytest.raises(openai.InternalServerError, match="ZeroDivisionError"):
        ask(client)


def test_unknown_fault_kind() -> None:
    with pytest.raises(ValueError):
        Fault("explode")


# ------------------------------------------------------------------ lifecycle and sandbox


def test_stop_is_prompt_with_a_hanging_connection() -> None:
    up = FakeUpstream().start()
    up.script("m1", Fault("hang"))
    sock = socket.create_connection(("127.0.0.1", up.port), timeout=5)
    body = json.dumps({"model": "m1", "messages": MSGS}).encode()
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    deadline = time.monotonic() + 2
    while up.calls("m1") == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert up.calls("m1") == 1
    t0 = time.monotonic()
    up.stop()
    assert time.monotonic() - t0 < 5  # a stop stuck on the hang would wait out its 2 x 5 s
    assert not any(t.name == "fake-upstream" and t.is_alive() for t in threading.enumerate())
    with contextlib.suppress(ConnectionResetError):
        assert sock.recv(1) == b""  # the server closed the connection
    sock.close()
    up.stop()  # idempotent


def test_network_ban_allows_loopback_only(upstream: FakeUpstream) -> None:
    with socket.socket() as s, pytest.raises(NetworkBlockedError):
        s.connect(("203.0.113.7", 443))
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", upstream.port)) == 0

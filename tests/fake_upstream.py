"""A scriptable fake OpenAI-compatible upstream for tests.

A real HTTP/1.1 server on 127.0.0.1 (ephemeral port), run by hand on ``asyncio.start_server``
in a background thread with its own event loop, so tests exercise real sockets and byte-level
faults (resets, hangs, streams cut mid-way) are possible.

    with FakeUpstream() as up:
        up.script("m1", Reply("hello"), Fault("status", status=429, retry_after="1"))
        client = openai.OpenAI(base_url=up.base_url, api_key="test", max_retries=0)

Endpoints: ``POST /v1/chat/completions`` (streaming and not) and ``GET /v1/models``; anything
else is a 404 with an OpenAI-shaped error body. Streams use chunked transfer encoding (as real
upstreams do), so a connection closed mid-stream is an incomplete body to the client.
Callable script steps run on the server's event-loop thread; they may also be ``async``.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import json
import re
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import KW_ONLY, dataclass
from http import HTTPStatus
from typing import Any

__all__ = ["FAULT_KINDS", "Fault", "FakeUpstream", "RecordedRequest", "Reply", "Step"]


@dataclass
class RecordedRequest:
    """One chat-completions request as the fake received it."""

    model: str
    body: dict[str, Any]
    headers: dict[str, str]  # lower-cased names
    stream: bool
    messages: list[dict[str, Any]]
    time: float  # time.monotonic() when the request had fully arrived


@dataclass
class Reply:
    """A successful answer."""

    text: str
    _: KW_ONLY
    delay: float = 0.0  # seconds before the response starts
    chunk_delay: float = 0.0  # seconds between stream chunks
    prompt_tokens: int | None = None  # default: words in the request's messages
    completion_tokens: int | None = None  # default: words in text (min 1 if text is non-empty)
    cost: float | None = None  # reported as usage["cost"], as OpenRouter does
    finish_reason: str = "stop"


FAULT_KINDS = frozenset(
    {"status", "hang", "drip", "reset", "malformed_json", "error_body_200"}
    | {"sse_cut", "sse_error_event", "empty", "oversized"}
)


@dataclass
class Fault:
    """A misbehaving upstream. Kinds:

    status          HTTP ``status`` with an OpenAI error body (+ Retry-After if ``retry_after``)
    hang            read the request, then send nothing until the server stops
    drip            a normal reply (text = ``message``), one byte every ``delay or 0.5`` s
    reset           close the socket with an RST, no response
    malformed_json  200 application/json with a truncated body (stream: a truncated data event)
    error_body_200  200 with ``{"error": {...}}`` (stream: as the first and only data event)
    sse_cut         stream: a couple of content chunks, then close without [DONE];
                    non-stream: a Content-Length larger than the body sent, then close
    sse_error_event stream: a couple of content chunks, then an ``{"error": ...}`` data event;
                    non-stream: like error_body_200
    empty           a normal success with content "" (stream: no content deltas)
    oversized       a normal success with ~2 MB of text

    The in-band error kinds put ``status`` in the error's ``code``.
    """

    kind: str
    _: KW_ONLY
    status: int = 500  # HTTP status for "status"; the error "code" for the in-band error kinds
    retry_after: str | None = None  # Retry-After header for "status"
    delay: float = 0.0  # seconds before acting; for "drip": seconds per byte (default 0.5)
    message: str = "fake upstream failure"

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(
                f"unknown Fault kind {self.kind!r}; expected one of {sorted(FAULT_KINDS)}"
            )


Step = Reply | Fault | Callable[[RecordedRequest], Any]

_OVERSIZED_TEXT = ("lorem ipsum dolor sit amet " * 80_000)[:2_000_000]
_PARTIAL = ["partial ", "answer "]  # content sent before sse_cut / sse_error_event strike
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    429: "rate_limit_error",
}


def _error_body(message: str, status: int, code: Any = None) -> dict[str, Any]:
    etype = _ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": etype, "code": status if code is None else code}}


def _words(messages: list[dict[str, Any]]) -> int:
    n = 0
    for m in messages:
        content = m.get("content") if isinstance(m, dict) else None
        if isinstance(content, str):
            n += len(content.split())
        elif isinstance(content, list):  # multi-part content: count the text parts
            n += sum(
                len(p["text"].split())
                for p in content
                if isinstance(p, dict) and isinstance(p.get("text"), str)
            )
    return n


def _pieces(text: str) -> list[str]:
    """Split text into stream deltas: a word (plus its trailing space) each, big slices if huge."""
    if len(text) > 8192:
        return [text[i : i + 4096] for i in range(0, len(text), 4096)]
    return re.findall(r"\S+\s*|\s+", text)


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def _chunk(data: bytes) -> bytes:  # one HTTP/1.1 chunked-encoding chunk
    return f"{len(data):X}\r\n".encode() + data + b"\r\n"


def _head(status: int, headers: dict[str, str]) -> bytes:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Unknown"
    lines = [f"HTTP/1.1 {status} {reason}", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


_STREAM_HEADERS = {
    "Content-Type": "text/event-stream; charset=utf-8",
    "Transfer-Encoding": "chunked",
    "Cache-Control": "no-cache",
}


class FakeUpstream:
    """Scriptable OpenAI chat-completions server on 127.0.0.1, run in a background thread."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = 0
        self._lock = threading.Lock()
        self._scripts: dict[str, list[Step]] = {}
        self._served: dict[str, int] = {}
        self._requests: list[RecordedRequest] = []
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._conns: set[asyncio.Task[Any]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> FakeUpstream:
        if self._thread is not None:
            raise RuntimeError("FakeUpstream already started")
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._handle, self.host, 0)
                )
                self.port = self._server.sockets[0].getsockname()[1]
            except BaseException as exc:  # surface bind errors in start()
                failure.append(exc)
                loop.close()
                return
            finally:
                ready.set()
            try:
                loop.run_forever()
            finally:
                loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="fake-upstream", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure or not self.port:
            self._loop = self._thread = None
            raise RuntimeError("FakeUpstream failed to start") from (
                failure[0] if failure else None
            )
        return self

    def stop(self) -> None:
        """Close the listener and every open connection (hanging ones too), then join the thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        self._loop = self._thread = None
        fut = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
        with contextlib.suppress(Exception):
            fut.result(timeout=5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)

    async def _shutdown(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        tasks = list(self._conns)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._server.wait_closed(), 1)

    def __enter__(self) -> FakeUpstream:
        return self if self._thread is not None else self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ---------------------------------------------------------------- scripting

    @property
    def base_url(self) -> str:
        if not self.port:
            raise RuntimeError("FakeUpstream not started")
        return f"http://{self.host}:{self.port}/v1"

    def script(self, model: str, *steps: Step | str) -> None:
        """Replace the script for ``model``: calls get the steps in order, the last one repeats.

        A step is a Reply, a Fault, a plain string (shorthand for Reply(text)), or a callable
        taking the RecordedRequest and returning one of those. No steps: back to the default.
        """
        with self._lock:
            self._scripts.pop(model, None)
            self._served[model] = 0
            if steps:
                self._scripts[model] = [Reply(s) if isinstance(s, str) else s for s in steps]

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def calls(self, model: str) -> int:
        with self._lock:
            return sum(1 for r in self._requests if r.model == model)

    def reset(self) -> None:
        with self._lock:
            self._scripts.clear()
            self._served.clear()
            self._requests.clear()

    def _record_and_pick(self, req: RecordedRequest) -> Step:
        with self._lock:
            self._requests.append(req)
            steps = self._scripts.get(req.model)
            if not steps:
                return Reply(f"answer from {req.model}")
            i = self._served.get(req.model, 0)
            self._served[req.model] = i + 1
            return steps[min(i, len(steps) - 1)]

    # ---------------------------------------------------------------- HTTP plumbing

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._conns.add(task)
        self._writers.add(writer)
        try:
            keep_alive = True
            while keep_alive:
                request = await self._read_request(reader)
                if request is None:
                    break
                keep_alive = await self._dispatch(*request, writer)
        except (
            ConnectionError,
            asyncio.IncompleteReadError,
            asyncio.LimitOverrunError,
            ValueError,
        ):
            pass  # client went away or sent garbage: drop the connection
        except asyncio.CancelledError:
            pass  # stop(); don't re-raise: 3.11's start_server callback logs cancelled tasks
        finally:
            self._conns.discard(task)
            self._writers.discard(writer)
            if not writer.is_closing():
                writer.close()

    @staticmethod
    async def _read_request(
        reader: asyncio.StreamReader,
    ) -> tuple[str, str, dict[str, str], bytes] | None:
        line = await reader.readline()
        while line in (b"\r\n", b"\n"):  # tolerate stray blank lines between requests
            line = await reader.readline()
        if not line:
            return None
        method, target, _version = line.decode("latin-1").split(" ", 2)
        headers: dict[str, str] = {}
        while (raw := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = raw.decode("latin-1").partition(":")
            name, value = name.strip().lower(), value.strip()
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        length = int(headers.get("content-length") or 0)
        body = await reader.readexactly(length) if length else b""
        return method.upper(), target.split("?", 1)[0], headers, body

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, data: bytes) -> None:
        writer.write(data)
        await writer.drain()

    async def _send_json(
        self,
        writer: asyncio.StreamWriter,
        status: int,
        payload: Any,
        extra: dict[str, str] | None = None,
    ) -> None:
        body = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json", "Content-Length": str(len(body))}
        await self._send(writer, _head(status, {**headers, **(extra or {})}) + body)

    async def _dispatch(
        self,
        method: str,
        path: str,
        headers: dict[str, str],
        body: bytes,
        writer: asyncio.StreamWriter,
    ) -> bool:
        """Answer one request; return whether the connection may be reused."""
        keep_alive = headers.get("connection", "").lower() != "close"
        path = path.rstrip("/")
        if method == "GET" and path == "/v1/models":
            with self._lock:
                names = sorted(self._scripts)
            data = [{"id": n, "object": "model", "created": 0, "owned_by": "fake"} for n in names]
            await self._send_json(writer, 200, {"object": "list", "data": data})
            return keep_alive
        if method != "POST" or path != "/v1/chat/completions":
            err = _error_body(f"Unknown request URL: {method} {path}", 404, "unknown_url")
            await self._send_json(writer, 404, err)
            return keep_alive
        try:
            payload = json.loads(body or b"null")
        except ValueError:
            payload = None
        if not isinstance(payload, dict) or not isinstance(payload.get("model"), str):
            err = _error_body("request body must be a JSON object with a 'model'", 400)
            await self._send_json(writer, 400, err)
            return keep_alive
        messages = payload.get("messages")
        req = RecordedRequest(
            model=payload["model"],
            body=payload,
            headers=headers,
            stream=bool(payload.get("stream")),
            messages=messages if isinstance(messages, list) else [],
            time=time.monotonic(),
        )
        step = self._record_and_pick(req)
        try:
            outcome = step(req) if callable(step) else step
            if inspect.isawaitable(outcome):
                outcome = await outcome
            if isinstance(outcome, str):
                outcome = Reply(outcome)
            if not isinstance(outcome, Reply | Fault):
                raise TypeError(f"script step returned {outcome!r}, not a Reply or Fault")
        except Exception as exc:  # a broken script shows up as a 500 the test can read
            await self._send_json(
                writer, 500, _error_body(f"fake upstream script error: {exc!r}", 500)
            )
            return keep_alive
        if isinstance(outcome, Reply):
            await self._reply(req, outcome, writer)
            return keep_alive
        return await self._fault(req, outcome, writer) and keep_alive

    # ---------------------------------------------------------------- payloads

    def _usage(self, req: RecordedRequest, r: Reply) -> dict[str, Any]:
        prompt = r.prompt_tokens if r.prompt_tokens is not None else _words(req.messages)
        completion = r.completion_tokens
        if completion is None:
            completion = max(len(r.text.split()), 1) if r.text else 0
        usage: dict[str, Any] = {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
        }
        if r.cost is not None:
            usage["cost"] = r.cost
        return usage

    def _completion(self, req: RecordedRequest, r: Reply) -> dict[str, Any]:
        message = {"role": "assistant", "content": r.text, "refusal": None}
        return {
            "id": f"chatcmpl-fake-{next(self._ids)}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": req.model,
            "choices": [
                {"index": 0, "message": message, "logprobs": None, "finish_reason": r.finish_reason}
            ],
            "usage": self._usage(req, r),
        }

    def _events(self, req: RecordedRequest, r: Reply, *, complete: bool = True) -> Iterator[bytes]:
        """SSE frames for a streamed reply; ``complete=False`` stops after the content."""
        include_usage = bool((req.body.get("stream_options") or {}).get("include_usage"))
        base = {
            "id": f"chatcmpl-fake-{next(self._ids)}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": req.model,
        }
        extra = {"usage": None} if include_usage else {}

        def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
            choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return _sse({**base, "choices": [choice], **extra})

        yield chunk({"role": "assistant", "content": ""})
        for piece in _pieces(r.text):
            yield chunk({"content": piece})
        if not complete:
            return
        yield chunk({}, r.finish_reason)
        if include_usage:
            yield _sse({**base, "choices": [], "usage": self._usage(req, r)})
        yield b"data: [DONE]\n\n"

    async def _reply(self, req: RecordedRequest, r: Reply, writer: asyncio.StreamWriter) -> None:
        if r.delay:
            await asyncio.sleep(r.delay)
        if not req.stream:
            await self._send_json(writer, 200, self._completion(req, r))
            return
        await self._send(writer, _head(200, _STREAM_HEADERS))
        for i, event in enumerate(self._events(req, r)):
            if i and r.chunk_delay:
                await asyncio.sleep(r.chunk_delay)
            await self._send(writer, _chunk(event))
        await self._send(writer, b"0\r\n\r\n")

    # ---------------------------------------------------------------- faults

    async def _fault(self, req: RecordedRequest, f: Fault, writer: asyncio.StreamWriter) -> bool:
        """Misbehave as ``f`` says; return whether the connection may be reused."""
        if f.kind == "hang":
            await asyncio.Event().wait()  # until stop() cancels us
        if f.kind == "drip":
            await self._drip(req, f, writer)
            return True
        if f.delay:
            await asyncio.sleep(f.delay)
        in_band_error = {"error": {"message": f.message, "code": f.status}}
        partial = Reply("".join(_PARTIAL))

        if f.kind == "status":
            extra = {"Retry-After": f.retry_after} if f.retry_after is not None else None
            await self._send_json(writer, f.status, _error_body(f.message, f.status), extra)
            return True
        if f.kind == "reset":
            sock = writer.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()  # SO_LINGER 0: the close sends an RST
            return False
        if f.kind in ("empty", "oversized"):
            await self._reply(req, Reply("" if f.kind == "empty" else _OVERSIZED_TEXT), writer)
            return True
        if not req.stream:
            if f.kind in ("error_body_200", "sse_error_event"):
                await self._send_json(writer, 200, in_band_error)
                return True
            body = json.dumps(self._completion(req, partial)).encode()
            if f.kind == "malformed_json":
                await self._send(
                    writer,
                    _head(
                        200,
                        {"Content-Type": "application/json", "Content-Length": str(len(body) // 2)},
                    )
                    + body[: len(body) // 2],
                )
                return True
            # sse_cut: promise more body than we send, then hang up
            head = {"Content-Type": "application/json", "Content-Length": str(len(body) + 1000)}
            await self._send(writer, _head(200, head) + body)
            return False

        await self._send(writer, _head(200, _STREAM_HEADERS))
        if f.kind == "error_body_200":
            await self._send(writer, _chunk(_sse(in_band_error)) + b"0\r\n\r\n")
            return True
        frames = list(self._events(req, partial, complete=False))
        if f.kind == "malformed_json":  # a data event whose JSON is cut short
            frames = [frames[0], frames[1][: len(frames[1]) // 2].rstrip(b"\n") + b"\n\n"]
        elif f.kind == "sse_error_event":
            frames.append(_sse(in_band_error))
        for frame in frames:
            await self._send(writer, _chunk(frame))
        if f.kind == "sse_cut":
            return False  # close without [DONE] or the terminating chunk
        await self._send(writer, b"0\r\n\r\n")
        return True

    async def _drip(self, req: RecordedRequest, f: Fault, writer: asyncio.StreamWriter) -> None:
        """Send the headers at once, then the body of a normal reply one byte at a time."""
        interval = f.delay or 0.5
        reply = Reply(f.message)
        if req.stream:
            await self._send(writer, _head(200, _STREAM_HEADERS))
            body = b"".join(self._events(req, reply))
            wrap: Callable[[bytes], bytes] = _chunk
        else:
            body = json.dumps(self._completion(req, reply)).encode()
            head = {"Content-Type": "application/json", "Content-Length": str(len(body))}
            await self._send(writer, _head(200, head))
            wrap = bytes
        for i in range(len(body)):
            await self._send(writer, wrap(body[i : i + 1]))
            await asyncio.sleep(interval)
        if req.stream:
            await self._send(writer, b"0\r\n\r\n")

"""Security: keys never leak, requests are validated, nothing the caller names becomes a URL,
limits hold, and generated (schemathesis) inputs never produce a 500.

Key hygiene runs real fusions end to end with a sentinel key in the environment for a
provider pointed at the loopback fake: the CLI (`python -m modelfusion ask --json`, every
logger at DEBUG, the openai SDK's debug log on) and `fusion serve` as a subprocess (logs at
debug, SQLite traces). Then stdout, stderr, the response bodies, the SSE streams, the trace
API and the raw bytes of the SQLite file are searched for the sentinel. The fake upstream
checks that the key really was sent (else the search would prove nothing).
"""

from __future__ import annotations

import copy
import hmac
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelfusion.config import load_config
from modelfusion.server import ServerSettings, create_app
from modelfusion.traces.store import TraceStore
from tests.fake_upstream import FakeUpstream, Fault, RecordedRequest
from tests.helpers import ASK, Served, error_of, smart_judge, start_server, write_config

SENTINEL = "sk-sentinel-7f3a9c2e5b1d4086aa42c0ffee"
ROOT = Path(__file__).resolve().parent.parent
DEBUG_CLI = ("import logging, sys; logging.basicConfig(level=logging.DEBUG, stream=sys.stderr); "
             "from modelfusion.cli import main; sys.argv[0] = 'fusion'; main()")


# ---------------------------------------------------------------- key hygiene: the setup


def keyed_config(path: Path, base_url: str) -> Path:
    path.write_text(f"""default_preset = "keyed"
[providers.fake]
base_url = "{base_url}"
api_key_env = "FAKE_KEY"
[presets.keyed]
models = ["fake:ok-1", "fake:ok-2", "fake:deny"]
judge = "fake:judge"
mode = "merge"
retries = 1
timeout = 10
deadline = 20
""", encoding="utf-8")
    return path


def echo_key(status: int = 400) -> Callable[[RecordedRequest], Fault]:
    """An upstream that quotes the Authorization header it got in its error message, as
    some proxies and self-hosted gateways do."""

    def step(req: RecordedRequest) -> Fault:
        return Fault("status", status=status,
                     message=f"Incorrect API key provided: {req.headers.get('authorization')}")

    return step


def echo_key_in_stream(req: RecordedRequest) -> Fault:
    return Fault("sse_error_event", status=403,
                 message=f"key {req.headers.get('authorization')} is not allowed here")


def script_keyed(up: FakeUpstream, *, echo: bool) -> None:
    up.script("ok-1", "Paris.")
    up.script("ok-2", "Paris, France.")
    up.script("judge", smart_judge)
    up.script("deny", Fault("status", status=401, message="invalid api key"))  # echoes nothing
    up.script("down", Fault("status", status=500))
    if echo:
        up.script("echo", echo_key())
        up.script("echo-stream", echo_key_in_stream)
        up.script("echo-200", lambda r: Fault("error_body_200", status=401,
                                              message=f"bad key {r.headers['authorization']}"))


def key_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FUSION_", "OPENAI_"))}
    return {**env, "FAKE_KEY": SENTINEL, "OPENAI_LOG": "debug", "MODELFUSION_HOME": str(home),
            "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}


def assert_key_was_sent(up: FakeUpstream) -> None:
    auth = {r.headers.get("authorization") for r in up.requests}
    assert auth == {f"Bearer {SENTINEL}"}, auth


def leaks(places: dict[str, str | bytes]) -> list[str]:
    """The names of the places that contain the sentinel."""
    return [name for name, text in places.items()
            if (SENTINEL.encode() in text if isinstance(text, bytes) else SENTINEL in text)]


def run_cli(config: Path, db: Path, home: Path, models: list[str]) -> subprocess.CompletedProcess:
    args = [sys.executable, "-c", DEBUG_CLI, "ask", "What is the capital of France?", "--json",
            "--config", str(config), "--db", f"sqlite:///{db}", "--judge", "fake:judge",
            "--mode", "merge"]
    for m in models:
        args += ["-m", f"fake:{m}"]
    return subprocess.run(args, env=key_env(home), capture_output=True, text=True, timeout=120,
                          cwd=home)


def cli_places(upstream: FakeUpstream, tmp_path: Path, runs: list[list[str]]
               ) -> tuple[dict[str, str | bytes], list[subprocess.CompletedProcess]]:
    config = keyed_config(tmp_path / "fusion.toml", upstream.base_url)
    db, home = tmp_path / "traces.db", tmp_path / "home"
    home.mkdir()
    done = [run_cli(config, db, home, models) for models in runs]
    places: dict[str, str | bytes] = {"traces.db": db.read_bytes()}
    for i, p in enumerate(done):
        places[f"run {i} stdout"] = p.stdout
        places[f"run {i} stderr"] = p.stderr
    return places, done


# ---------------------------------------------------------------- key hygiene: the CLI


def test_cli_json_logs_and_traces_never_contain_the_key(upstream: FakeUpstream,
                                                        tmp_path: Path):
    script_keyed(upstream, echo=False)
    places, done = cli_places(upstream, tmp_path, [["ok-1", "ok-2", "deny", "down"],
                                                   ["deny", "down"]])
    assert done[0].returncode == 0, done[0].stderr[-2000:]
    answer = json.loads(done[0].stdout)
    assert answer["degraded"] and {m["reason"] for m in answer["members"][2:]} == \
        {"upstream_error"}
    assert done[1].returncode == 1  # every member failed: the --json error object
    assert json.loads(done[1].stdout)["error"]["code"] == "all_members_failed"
    assert "DEBUG" in done[0].stderr  # the debug logs really were on
    assert_key_was_sent(upstream)
    found = leaks(places)
    assert not found, f"the key is in: {found}"


def test_cli_redacts_a_key_the_upstream_echoes(upstream: FakeUpstream, tmp_path: Path):
    script_keyed(upstream, echo=True)
    places, done = cli_places(upstream, tmp_path, [["ok-1", "ok-2", "echo", "echo-stream"],
                                                   ["echo", "echo-200"]])
    assert done[0].returncode == 0 and done[1].returncode == 1
    assert_key_was_sent(upstream)
    found = leaks(places)
    assert not found, f"the key is in: {found}"


# ---------------------------------------------------------------- key hygiene: the server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServeProcess:
    """`fusion serve` in a subprocess, every logger at DEBUG, stdout/stderr to files."""

    def __init__(self, config: Path, db: Path, home: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.out, self.err = home / "serve.out", home / "serve.err"
        with self.out.open("wb") as out, self.err.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", DEBUG_CLI, "serve", "--port", str(self.port),
                 "--config", str(config), "--db", f"sqlite:///{db}", "--log-level", "debug"],
                env=key_env(home), stdout=out, stderr=err, cwd=home)
        end = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError(f"fusion serve did not start: {self.err.read_text()[-2000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # graceful: flushes and closes the store
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def server_places(upstream: FakeUpstream, tmp_path: Path, panels: list[list[str]]
                  ) -> dict[str, str | bytes]:
    """Fusions over `panels` through a served subprocess, JSON and SSE; everything it said."""
    config = keyed_config(tmp_path / "fusion.toml", upstream.base_url)
    db, home = tmp_path / "traces.db", tmp_path / "home"
    home.mkdir()
    server = ServeProcess(config, db, home)
    places: dict[str, str | bytes] = {}
    try:
        url = f"{server.url}/v1/chat/completions"
        for i, panel in enumerate(panels):
            fusion = {"models": [f"fake:{m}" for m in panel], "judge": "fake:judge"}
            for stream in (False, True):
                r = httpx.post(url, json={"model": "fusion", "messages": ASK, "stream": stream,
                                          "fusion": fusion}, timeout=60)
                assert r.status_code in (200, 502), r.text
                places[f"panel {i} {'SSE' if stream else 'JSON'} ({r.status_code})"] = r.text
        traces = httpx.get(f"{server.url}/v1/fusion/traces?limit=500", timeout=30)
        places["GET /v1/fusion/traces"] = traces.text
        for t in traces.json()["data"]:
            one = httpx.get(f"{server.url}/v1/fusion/traces/{t['id']}", timeout=30)
            places[f"GET /v1/fusion/traces/{t['id'][:8]}"] = one.text
        assert len(traces.json()["data"]) == 2 * len(panels)
    finally:
        server.stop()
    places["server stdout"] = server.out.read_text()
    places["server stderr"] = server.err.read_text()
    places["traces.db"] = db.read_bytes()
    assert "DEBUG" in str(places["server stderr"])  # the debug logs really were on
    return places


def test_server_responses_logs_and_traces_never_contain_the_key(upstream: FakeUpstream,
                                                                tmp_path: Path):
    script_keyed(upstream, echo=False)
    places = server_places(upstream, tmp_path, [["ok-1", "ok-2", "deny", "down"],
                                                ["deny", "down"]])
    assert_key_was_sent(upstream)
    found = leaks(places)
    assert not found, f"the key is in: {found}"


def test_server_redacts_a_key_the_upstream_echoes(upstream: FakeUpstream, tmp_path: Path):
    script_keyed(upstream, echo=True)
    places = server_places(upstream, tmp_path, [["ok-1", "ok-2", "echo", "echo-stream"],
                                                ["echo", "echo-200"]])
    assert_key_was_sent(upstream)
    found = leaks(places)
    assert not found, f"the key is in: {found}"


def test_missing_key_error_names_neither_key_nor_variable(served: Served):
    """The 400 for a provider whose key is unset says nothing about the server's env."""
    resp = served.post({"model": "keyed:m", "messages": ASK})
    assert resp.status_code == 400 and error_of(resp)["code"] == "provider_unavailable"
    assert "MODELFUSION_TEST_UNSET_KEY" not in resp.text


# ---------------------------------------------------------------- auth


def test_bearer_compare_is_constant_time_against_every_key(serve: Callable[..., Served],
                                                           monkeypatch: pytest.MonkeyPatch):
    served = serve(api_keys=("key-one", "key-two", "key-three"))
    seen: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    for key, status in (("key-one", 200), ("key-three", 200), ("nope", 401)):
        seen.clear()
        r = served.post({"model": "fusion", "messages": ASK},
                        headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == status
        # Every configured key is compared, whichever matches: no early exit to time.
        assert [b for _, b in seen] == [b"key-one", b"key-two", b"key-three"]
    r = served.post({"model": "fusion", "messages": ASK}, headers={"Authorization": "key-one"})
    assert r.status_code == 401 and "Bearer" in error_of(r)["message"]


# ---------------------------------------------------------------- validation: clear 400s


@pytest.mark.parametrize(("raw", "param", "code"), [
    (b"[]", None, "invalid_json"),
    (b'"fusion"', None, "invalid_json"),
    (b"\xff\xfe", None, "invalid_json"),
    (b'{"model": "fusion", "messages": "hi"}', "messages", "missing_required_parameter"),
    (b'{"model": "fusion", "messages": [{"role": "system", "content": "x"}]}', "messages",
     "invalid_value"),
    (b'{"model": 5, "messages": []}', "model", "missing_required_parameter"),
    (b'{"model": "fusion", "messages": [{"role": "user", "content": {"a": 1}}]}',
     "messages[0].content", "invalid_value"),
    (b'{"model": "fusion", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}',
     "messages[0].content[0]", "unsupported_parameter"),
    (b'{"model": "fusion", "messages": [{"role": "user", "content": "x"}], "stream": "yes"}',
     "stream", "invalid_value"),
    (b'{"model": "fusion", "messages": [{"role": "user", "content": "x"}], "temperature": NaN}',
     "temperature", "invalid_value"),
    (b'{"model": "fusion", "messages": [{"role": "user", "content": "x"}], "seed": true}',
     "seed", "invalid_value"),
    (b'{"model": "fusion", "messages": [{"role": "user", "content": "x"}], "fusion": []}',
     "fusion", "invalid_value"),
    (b'{"model": "fusion", "messages": [{"role": "user", "content": "x"}],'
     b' "fusion": {"retries": 11}}', "fusion.retries", "invalid_value"),
    (b'{"model": "fusion", "messages": [{"role": "user", "content": "x"}],'
     b' "fusion": {"rounds": 6}}', "fusion.rounds", "invalid_value"),
    (b'{"model": "fusion", "messages": [{"role": "user", "content": "x"}],'
     b' "fusion": {"timeout": -1}}', "fusion.timeout", "invalid_value"),
    (b'{"model": "fusion", "messages": [{"role": "user", "content": "x"}],'
     b' "fusion": {"depth": 2}}', "fusion.depth", "unknown_parameter"),
    (b'{"model": "fusion", "messages": [{"role": "user", "content": "x"}],'
     b' "response_format": {"type": "json_object"}}', "response_format",
     "unsupported_parameter"),
])
def test_invalid_requests_are_clear_400s(served: Served, upstream: FakeUpstream, raw: bytes,
                                         param: str | None, code: str):
    resp = httpx.post(f"{served.v1}/chat/completions", content=raw, timeout=30,
                      headers={"content-type": "application/json"})
    assert resp.status_code == 400, resp.text
    err = error_of(resp)
    assert (err["param"], err["code"]) == (param, code)
    assert err["message"] and "Traceback" not in err["message"]
    assert not upstream.requests


# Inputs that once crashed the server (docs/reliability.md, 'Defects'): each is a 400.
CRASHERS = [
    pytest.param(b'{"model": "fusion", "messages": ' + b"[" * 50_000 + b"]" * 50_000 + b"}",
                 id="deeply nested JSON (RecursionError, 500)"),
    pytest.param(b'{"model": "fusion", "messages": [{"role": {"a": 1}, "content": "x"}]}',
                 id="role is an object (TypeError, 500)"),
    pytest.param(b'{"model": "fusion", "messages": [{"role": ["user"], "content": "x"}]}',
                 id="role is an array (TypeError, 500)"),
    pytest.param(b'{"model": "fusion", "messages": [{"role": "user", "content": "x"}],'
                 b' "fusion": {"deadline": 1' + b"0" * 400 + b"}}",
                 id="deadline too large for a float (OverflowError, 500)"),
    pytest.param(b'{"model": "fusion", "messages": [{"role": "user", "content": "x"}],'
                 b' "fusion": {"timeout": 1' + b"0" * 400 + b"}}",
                 id="timeout too large for a float (502 with reason null)"),
    pytest.param(b'{"model": "fusion", "messages": [{"role": "user", "content": "x"}],'
                 b' "fusion": {"deadline": NaN}}', id="deadline NaN (accepted)"),
    pytest.param(b'{"model": "fusion", "messages": [{"role": "user", "content": "x"}],'
                 b' "fusion": {"timeout": Infinity, "deadline": Infinity}}',
                 id="timeout and deadline Infinity (accepted: unbounded)"),
]


@pytest.mark.parametrize("raw", CRASHERS)
def test_malformed_inputs_that_once_crashed_are_400s(served: Served, raw: bytes):
    resp = httpx.post(f"{served.v1}/chat/completions", content=raw, timeout=30,
                      headers={"content-type": "application/json"})
    assert resp.status_code == 400, resp.text[:300]


def test_bad_query_parameter_is_an_openai_shaped_400(served: Served):
    resp = httpx.get(f"{served.v1}/fusion/traces?limit=abc", timeout=30)
    assert resp.status_code == 400
    assert error_of(resp)["param"] == "limit"


# ---------------------------------------------------------------- SSRF


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every address any socket of this process connects to while the test runs."""
    seen: list[Any] = []
    real = socket.socket.connect

    def connect(self: socket.socket, address: Any) -> Any:
        seen.append(address)
        return real(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    return seen


@pytest.mark.parametrize(("where", "spec", "code"), [
    ("model", "http://169.254.169.254/latest/meta-data", "url_not_allowed"),
    ("model", "//169.254.169.254/x", "url_not_allowed"),
    ("model", "file:///etc/passwd", "url_not_allowed"),
    ("model", "169.254.169.254:80", "invalid_model"),
    ("model", "localhost:8080", "invalid_model"),
    ("model", "evil.test:gpt-4o", "invalid_model"),
    ("models", "fake:http://169.254.169.254/v1", "url_not_allowed"),
    ("models", "http:127.0.0.1:22", "invalid_model"),
    ("judge", "gopher://127.0.0.1:25/x", "url_not_allowed"),
    ("fallback_judge", "https://evil.test/v1:gpt", "url_not_allowed"),
    ("plugin", "ftp://evil.test/x:y", "url_not_allowed"),
])
def test_a_request_cannot_name_a_url_or_an_unconfigured_provider(
        served: Served, upstream: FakeUpstream, connects: list[Any], where: str, spec: str,
        code: str):
    body: dict[str, Any] = {"model": "fusion", "messages": ASK}
    if where == "model":
        body["model"] = spec
    elif where == "plugin":
        body["plugins"] = [{"id": "fusion", "analysis_models": ["fake:a", spec]}]
    else:
        body["fusion"] = {where: [spec] if where == "models" else spec}
    resp = served.post(body)
    assert resp.status_code == 400, resp.text
    assert error_of(resp)["code"] == code
    assert not upstream.requests
    # The only connection made was the test's own, to the server.
    assert {a[1] for a in connects if isinstance(a, tuple)} == {int(served.url.rsplit(":", 1)[1])}


def test_a_request_cannot_set_base_url_headers_or_keys(served: Served, upstream: FakeUpstream,
                                                       connects: list[Any]):
    """Fields that would redirect or re-key the upstream call are refused or ignored; the
    call goes to the configured base_url with the configured (empty) key."""
    for extra in ({"fusion": {"base_url": "http://evil.test/v1"}},
                  {"fusion": {"api_key": "sk-x"}},
                  {"plugins": [{"id": "fusion", "base_url": "http://evil.test/v1"}]}):
        resp = served.post({"model": "fusion", "messages": ASK, **extra})
        assert resp.status_code == 400 and error_of(resp)["code"] == "unknown_parameter"
    resp = served.post({"model": "fake:solo", "messages": ASK, "base_url": "http://evil.test",
                        "api_key": "sk-evil", "extra_headers": {"Authorization": "Bearer x"},
                        "user": "u1", "metadata": {"a": "b"}})
    assert resp.status_code == 200
    (req,) = upstream.requests
    assert req.headers.get("authorization") == "Bearer not-needed"
    assert set(req.body) <= {"model", "messages", "max_tokens", "stream", "stream_options"}
    ports = {a[1] for a in connects if isinstance(a, tuple)}
    assert ports == {int(served.url.rsplit(":", 1)[1]), upstream.port}


# {rel}: the test's folder, relative to the server's working directory.
LOCAL_FILES = ["local:{rel}/model.gguf", "local:{rel}/missing.gguf", "local:../../x.gguf",
               "local:~/models/x.gguf", "local:~/x", "local:x.gguf"]


@pytest.mark.parametrize("where", ["model", "models", "judge", "fallback_judge"])
def test_a_request_cannot_name_a_file_on_the_server(served: Served, upstream: FakeUpstream,
                                                    tmp_path: Path, where: str):
    """`local:` takes a .gguf path in the CLI and the library; from a request it names
    catalogue models only, and the refusal says nothing of the server's files: the same
    answer whether the file exists or not, no absolute path (issue 12, item 18)."""
    (tmp_path / "model.gguf").write_bytes(b"GGUF" + bytes(64))
    rel = os.path.relpath(tmp_path)
    answers = set()
    for spec in (s.format(rel=rel) for s in LOCAL_FILES):
        body: dict[str, Any] = {"model": "fusion", "messages": ASK}
        if where == "model":
            body["model"] = spec
        else:
            body["fusion"] = {where: [spec] if where == "models" else spec}
        resp = served.post(body)
        assert resp.status_code == 400, resp.text
        err = error_of(resp)
        assert err["code"] == "local_model_not_allowed" and where in err["param"]
        message = err["message"]
        assert str(Path.home()) not in message and str(Path.cwd()) not in message
        assert str(tmp_path) not in message and "exist" not in message
        answers.add(message)
    assert len(answers) == 1  # nothing tells one file from another
    # An absolute path is refused before it is read as a spec (it looks like a URL).
    resp = served.post({"model": f"local:{tmp_path}/model.gguf", "messages": ASK})
    assert resp.status_code == 400 and "exist" not in error_of(resp)["message"]
    assert not upstream.requests


def test_a_request_may_still_name_catalogue_models(server_config: Path):
    from modelfusion.providers.local.catalog import CATALOG
    from modelfusion.server.resolve import check_spec

    config = load_config(server_config)
    for name in CATALOG:  # passes the filter (whether it can load is checked later)
        check_spec(f"local:{name}", "model", config)


# ---------------------------------------------------------------- limits


def test_body_limit_is_checked_before_parsing(serve: Callable[..., Served],
                                              upstream: FakeUpstream):
    served = serve(max_body_bytes=1024)
    at_limit = json.dumps({"model": "fake:solo", "messages": ASK}).encode()
    at_limit += b" " * (1024 - len(at_limit))
    ok = httpx.post(f"{served.v1}/chat/completions", content=at_limit, timeout=30,
                    headers={"content-type": "application/json"})
    assert ok.status_code == 200
    over = httpx.post(f"{served.v1}/chat/completions", content=at_limit + b" ", timeout=30,
                      headers={"content-type": "application/json"})
    assert over.status_code == 413 and error_of(over)["code"] == "request_too_large"
    assert not [r for r in upstream.requests if r.model != "solo"]


def test_member_limit_counts_copies_and_plugins(serve: Callable[..., Served],
                                                upstream: FakeUpstream):
    served = serve(max_members=4)
    for fusion in ({"models": ["fake:a*2", "fake:b*2"]}, {"models": "fake:a, fake:b*3"}):
        r = served.post({"model": "fusion", "messages": ASK, "fusion": fusion})
        assert r.status_code == 200, r.text
    for body in ({"fusion": {"models": ["fake:a*2", "fake:b*3"]}},
                 {"plugins": [{"id": "fusion", "analysis_models": ["fake:a*5"]}]},
                 {"fusion": {"models": "fake:a, fake:b, fake:c, fake:d, fake:e"}}):
        r = served.post({"model": "fusion", "messages": ASK, **body})
        assert r.status_code == 400 and error_of(r)["code"] == "too_many_members", r.text


# ---------------------------------------------------------------- schemathesis


def chat_request_schema() -> dict[str, Any]:
    """A narrower chat-completions body than the served one (server/openapi.py), for
    generation: specs are the fake's models and limits small, so positive cases are valid
    fusions that reach the engine; negative cases break one rule each."""
    spec = {"type": "string", "enum": ["fake:alpha", "fake:beta", "fake:judge", "fake:gamma*2"]}
    text = {"type": "string", "maxLength": 80}
    part = {"type": "object", "required": ["type", "text"], "additionalProperties": False,
            "properties": {"type": {"type": "string", "const": "text"}, "text": text}}
    message = {"type": "object", "required": ["role", "content"], "additionalProperties": False,
               "properties": {
                   "role": {"type": "string",
                            "enum": ["system", "developer", "user", "assistant"]},
                   "content": {"anyOf": [text, {"type": "array", "items": part, "maxItems": 2},
                                         {"type": "null"}]}}}
    user = {"type": "object", "properties": {"role": {"const": "user"}}, "required": ["role"]}
    models = {"type": "array", "items": spec, "minItems": 2, "maxItems": 3}
    fusion = {"type": "object", "additionalProperties": False, "properties": {
        "models": models, "judge": spec, "fallback_judge": spec,
        "mode": {"type": "string", "enum": ["merge", "best-of", "debate", "vote"]},
        "quorum": {"type": "integer", "minimum": 1, "maximum": 2},
        "rounds": {"type": "integer", "minimum": 0, "maximum": 2},
        "retries": {"type": "integer", "minimum": 0, "maximum": 3},
        "seed": {"type": "integer"},
        "max_tokens": {"type": "integer", "minimum": 1, "maximum": 16384},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "judge_temperature": {"type": "number", "minimum": 0, "maximum": 2},
        "timeout": {"type": "number", "minimum": 0.5, "maximum": 30},
        "deadline": {"type": "number", "minimum": 0.5, "maximum": 30},
        "system": text}}
    return {"type": "object", "required": ["model", "messages"], "additionalProperties": False,
            "properties": {
                "model": {"type": "string", "enum": ["fusion", "fusion/trio", "fusion/quick",
                                                     "fake:alpha", "fake:beta*2"]},
                "messages": {"type": "array", "items": message, "contains": user,
                             "minItems": 1, "maxItems": 3},
                "stream": {"type": "boolean"},
                "stream_options": {"type": "object", "additionalProperties": False,
                                   "properties": {"include_usage": {"type": "boolean"}}},
                "temperature": {"type": "number", "minimum": 0, "maximum": 2},
                "max_tokens": {"type": "integer", "minimum": 1, "maximum": 16384},
                "seed": {"type": "integer"},
                "n": {"type": "integer", "const": 1},
                "response_format": {"type": "object", "required": ["type"],
                                    "properties": {"type": {"type": "string",
                                                            "const": "text"}}},
                "fusion": fusion,
                "plugins": {"type": "array", "maxItems": 1, "items": {
                    "type": "object", "required": ["id"], "additionalProperties": False,
                    "properties": {"id": {"type": "string", "const": "fusion"},
                                   "analysis_models": models, "model": spec}}},
            }}


def openapi_for(app: Any) -> dict[str, Any]:
    spec = copy.deepcopy(app.openapi())
    post = spec["paths"]["/v1/chat/completions"]["post"]
    assert "requestBody" in post  # the served schema declares it (defect 11)
    post["requestBody"] = {"required": True, "content": {
        "application/json": {"schema": chat_request_schema()}}}
    return dict(spec)


class ServerErrors(logging.Handler):
    """The exceptions behind the server's 500s, from its 'unhandled error' log records."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def signature(self) -> str:
        for record in reversed(self.records):
            if record.exc_info and record.exc_info[1] is not None:
                exc = record.exc_info[1]
                frames = [f for f in traceback.extract_tb(exc.__traceback__)
                          if "modelfusion" in f.filename]
                where = f"{Path(frames[-1].filename).name}:{frames[-1].name}" if frames else "?"
                return f"500 {type(exc).__name__} in {where}"
        return "500 (no exception logged)"


# Problems schemathesis finds today; each is a defect in docs/reliability.md. Anything else
# fails the test. Remove an entry once its defect is fixed.
# (Defects 2, 3, 4, 8 and 9 were here; all fixed, so the table is empty.)
KNOWN: dict[str, str] = {}


@pytest.fixture
def fuzz_server(tmp_path: Path, upstream: FakeUpstream) -> Iterator[tuple[Served, Any]]:
    """A served app whose only provider is the fake (no built-ins: nothing generated can
    reach a real host, Ollama's port or the embedded llama.cpp), auth on, SQLite traces."""
    upstream.script("judge", smart_judge)
    config = load_config(write_config(tmp_path / "fusion.toml", upstream.base_url))
    for name in list(config.providers):
        if name not in ("fake", "keyed"):
            del config.providers[name]
    store = TraceStore.open(f"sqlite:///{tmp_path / 'traces.db'}")
    app = create_app(config, store, ServerSettings(api_keys=("fuzz-key",)))
    served = start_server(app, store)
    try:
        yield served, app
    finally:
        served.stop()
        store.close()


def test_schemathesis_finds_no_500(fuzz_server: tuple[Served, Any]):
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings
    from hypothesis.errors import Unsatisfiable

    served, app = fuzz_server
    schema = schemathesis.openapi.from_dict(openapi_for(app))
    errors = ServerErrors()
    server_log = logging.getLogger("modelfusion.server")
    server_log.addHandler(errors)
    problems: dict[str, str] = {}
    lock = threading.Lock()
    calls = 0

    def check(case: Any) -> None:
        nonlocal calls
        resp = case.call(base_url=served.url, headers={"Authorization": "Bearer fuzz-key"},
                         timeout=60)
        calls += 1
        problem = classify(resp.status_code, resp.text, errors)
        if problem:
            with lock:
                problems.setdefault(problem, f"{case.method} {case.path} "
                                    f"{json.dumps(case.body, default=str)[:300]} -> "
                                    f"{resp.status_code}")

    try:
        for result in schema.get_all_operations():
            operation = result.ok()
            for mode in (schemathesis.GenerationMode.POSITIVE,
                         schemathesis.GenerationMode.NEGATIVE):
                runner = given(case=operation.as_strategy(generation_mode=mode))(check)
                try:
                    examples = 100 if operation.method.upper() == "POST" else 25
                    settings(max_examples=examples, deadline=None, derandomize=True, database=None,
                             suppress_health_check=list(HealthCheck))(runner)()
                except Unsatisfiable:
                    # No invalid input exists (an operation without parameters or body).
                    assert mode == schemathesis.GenerationMode.NEGATIVE, operation.label
    finally:
        server_log.removeHandler(errors)
    assert calls > 200
    unknown = {k: v for k, v in problems.items() if k not in KNOWN}
    assert not unknown, json.dumps(unknown, indent=1)
    for problem, example in problems.items():
        warnings.warn(f"known defect still present: {problem} ({KNOWN[problem]}): {example}",
                      stacklevel=1)


TYPED = {"timeout", "rate_limited", "upstream_error", "bad_response", "cancelled",
         "budget_exceeded"}


def classify(status: int, text: str, errors: ServerErrors) -> str | None:
    """What is wrong with one answer, as a stable signature; None if nothing is."""
    if status == 500 or '"code":"internal_error"' in text:
        return errors.signature()
    if status in (502, 504) or '"code":"all_members_failed"' in text \
            or '"code":"deadline_exceeded"' in text:
        members = _error_object(text).get("members", [])
        if any(m.get("reason") not in TYPED for m in members):
            return "502/504 with a member reason that is not typed"
        return None
    if status >= 500:
        return f"{status} (undocumented)"
    if 400 <= status < 500 and not (isinstance(_json(text), dict) and "error" in _json(text)):
        return f"{status} not OpenAI-shaped"
    return None


def _json(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return {}


def _error_object(text: str) -> dict[str, Any]:
    """The error object of a JSON error body, or of an in-stream error frame."""
    body = _json(text)
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return dict(body["error"])
    for frame in text.split("\n\n"):
        if frame.startswith('data: {"error"'):
            return dict(json.loads(frame[6:])["error"])
    return {}





# ---------------------------------------------------------------- type confusion

# Every field of a valid request, and values of every JSON type (plus the non-standard
# NaN/Infinity Python's json accepts and integers too large for a float), one at a time.
FIELDS = ["model", "messages", "messages[0]", "messages[0].role", "messages[0].content",
          "messages[0].content[0]", "messages[0].content[0].text", "stream", "stream_options",
          "stream_options.include_usage", "temperature", "max_tokens", "max_completion_tokens",
          "seed", "n", "response_format", "fusion", "fusion.models", "fusion.models[0]",
          "fusion.judge", "fusion.mode", "fusion.quorum", "fusion.rounds", "fusion.retries",
          "fusion.seed", "fusion.max_tokens", "fusion.temperature", "fusion.judge_temperature",
          "fusion.timeout", "fusion.deadline", "fusion.system", "fusion.fallback_judge",
          "plugins", "plugins[0]", "plugins[0].id", "plugins[0].analysis_models",
          "plugins[0].analysis_models[0]", "plugins[0].model"]
VALUES = ["null", "true", "0", "-1", "1e308", "1" + "0" * 30, "1" + "0" * 400, "NaN",
          "Infinity", "-Infinity", '""', '"x"', '"fake:alpha"', "[]", "[1]", '["x"]', "{}",
          '{"a": 1}', "[[]]", '{"type": "text", "text": 1}']
VALID = {"model": "fusion", "messages": [{"role": "user", "content": [{"type": "text",
                                                                       "text": "hi"}]}],
         "stream": False, "stream_options": {"include_usage": True}, "temperature": 0.5,
         "max_tokens": 50, "max_completion_tokens": 50, "seed": 1, "n": 1,
         "response_format": {"type": "text"},
         "fusion": {"models": ["fake:alpha", "fake:beta"], "judge": "fake:judge",
                    "mode": "best-of", "quorum": 1, "rounds": 1, "retries": 0, "seed": 2,
                    "max_tokens": 50, "temperature": 0.5, "judge_temperature": 0.0,
                    "timeout": 10, "deadline": 20, "system": "brief",
                    "fallback_judge": "fake:judge"},
         "plugins": [{"id": "fusion", "analysis_models": ["fake:alpha", "fake:gamma"],
                      "model": "fake:judge"}]}


def with_raw(body: Any, path: str, raw: str) -> bytes:
    """`body` as JSON text with the value at `path` replaced by the raw JSON `raw`."""
    marker = "__RAW_VALUE__"
    doc = copy.deepcopy(body)
    parts = re.findall(r"[^.\[\]]+|\[\d+\]", path)
    target = doc
    for p in parts[:-1]:
        target = target[int(p[1:-1])] if p.startswith("[") else target[p]
    last = parts[-1]
    if last.startswith("["):
        target[int(last[1:-1])] = marker
    else:
        target[last] = marker
    return json.dumps(doc).replace(f'"{marker}"', raw).encode()


def test_type_confusion_finds_no_500(fuzz_server: tuple[Served, Any]):
    served, _ = fuzz_server
    errors = ServerErrors()
    server_log = logging.getLogger("modelfusion.server")
    server_log.addHandler(errors)
    problems: dict[str, str] = {}
    statuses: Counter[int] = Counter()
    try:
        with httpx.Client(base_url=served.v1, timeout=60,
                          headers={"Authorization": "Bearer fuzz-key",
                                   "Content-Type": "application/json"}) as client:
            assert client.post("/chat/completions",
                               content=json.dumps(VALID).encode()).status_code == 200
            for path in FIELDS:
                for raw in VALUES:
                    body = with_raw(VALID, path, raw)
                    try:
                        resp = client.post("/chat/completions", content=body)
                    except httpx.TransportError:
                        # uvicorn closes a keep-alive connection after the app re-raised
                        # (every 500 does): the next request on it is reset. Once more:
                        problems.setdefault("keep-alive connection reset after a 500",
                                            f"before {path} = {raw[:20]}")
                        resp = client.post("/chat/completions", content=body)
                    statuses[resp.status_code] += 1
                    problem = classify(resp.status_code, resp.text, errors)
                    if problem:
                        problems.setdefault(problem, f"{path} = {raw[:20]} -> "
                                            f"{resp.status_code}")
    finally:
        server_log.removeHandler(errors)
    assert statuses[200] > 50 and statuses[400] > 300, statuses
    unknown = {k: v for k, v in problems.items() if k not in KNOWN}
    assert not unknown, json.dumps(unknown, indent=1)
    for problem, example in problems.items():
        warnings.warn(f"known defect still present: {problem} ({KNOWN[problem]}): {example}",
                      stacklevel=1)

"""Security: what a web page in the user's browser can do with a keyless loopback server.

DNS rebinding: a page whose own name resolves to 127.0.0.1 sends `Host: its.name`; only
loopback names and configured ones are served (`/healthz` answers any). The server keeps
its traces apart from the CLI's, so what it hands out never includes `fusion ask` prompts.

Cross-site requests: a page may POST to the server without a CORS preflight when the body
is a form, multipart or text/plain (the body itself can still be JSON). Such bodies are a
415, and a state-changing request from another site's page (its Origin, or Sec-Fetch-Site)
is a 403; the server's own page (same origin) is served. CORS is off unless origins are
listed (Starlette's CORSMiddleware).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from modelfusion.cli import app as cli_app
from modelfusion.cli.serve import allowed_hosts
from modelfusion.server import ServerSettings
from modelfusion.server.guards import BrowserGuard
from tests.fake_upstream import FakeUpstream
from tests.helpers import ASK, Served, error_of

EVIL = "attacker.example"


def get(served: Served, path: str, **headers: str) -> httpx.Response:
    return httpx.get(f"{served.url}{path}", headers=headers, timeout=30)


# ---------------------------------------------------------------- the Host check


def test_a_rebinding_page_cannot_read_traces_or_run_fusions(served: Served,
                                                            upstream: FakeUpstream):
    trace_id = served.post({"model": "fusion", "messages": ASK}).json()["fusion"]["trace_id"]
    calls = len(upstream.requests)
    for host in (EVIL, f"{EVIL}:8000", "127.0.0.1.attacker.example", "localhost.evil"):
        for path in ("/v1/fusion/traces", f"/v1/fusion/traces/{trace_id}", "/v1/models", "/",
                     "/static/app.js", "/openapi.json"):
            resp = get(served, path, Host=host)
            assert resp.status_code == 421, (host, path, resp.text)
            err = error_of(resp)
            assert (err["code"], err["param"]) == ("host_not_allowed", "Host")
            assert "--allowed-host" in err["message"]
        resp = httpx.post(f"{served.v1}/chat/completions", json={"model": "fusion",
                          "messages": ASK}, headers={"Host": host}, timeout=30)
        assert resp.status_code == 421
    assert len(upstream.requests) == calls  # nothing ran
    assert get(served, "/healthz", Host=EVIL).status_code == 200  # tells nothing


@pytest.mark.parametrize("host", ["localhost", "localhost:8000", "LOCALHOST:1", "localhost.",
                                  "127.0.0.1", "127.0.0.1:9999", "127.1.2.3:80", "[::1]",
                                  "[::1]:8000"])
def test_loopback_names_with_any_port_are_served(served: Served, host: str):
    resp = get(served, "/v1/fusion/traces", Host=host)
    assert resp.status_code == 200, resp.text


def test_configured_hosts_are_served_too(serve: Callable[..., Served]):
    served = serve(allowed_hosts=frozenset({"fusion.lan", "Box.Example:8000"}))
    for host in ("fusion.lan", "fusion.lan:8000", "box.example", "localhost:1"):
        assert get(served, "/v1/models", Host=host).status_code == 200, host
    resp = get(served, "/v1/models", Host=EVIL)
    assert resp.status_code == 421 and "fusion.lan" in error_of(resp)["message"]
    anything = serve(allowed_hosts=None)
    assert get(anything, "/v1/models", Host=EVIL).status_code == 200


def test_fusion_serve_checks_the_host_where_a_web_page_could_use_it():
    assert allowed_hosts(None, loopback=True, keyed=False) == frozenset()  # loopback only
    assert allowed_hosts(None, loopback=True, keyed=True) is None  # a key is needed anyway
    assert allowed_hosts(None, loopback=False, keyed=False) is None  # its name is unknown
    assert allowed_hosts(["fusion.lan"], loopback=False, keyed=True) == {"fusion.lan"}
    assert allowed_hosts(["*"], loopback=True, keyed=False) is None
    with pytest.raises(ValueError, match="allowed host"):
        ServerSettings(allowed_hosts=frozenset({"http://x/"}))


# ---------------------------------------------------------------- `fusion serve` itself


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch, server_config: Path) -> Callable[..., Any]:
    """`fusion serve ARGS` through the real CLI up to uvicorn.Server.run, which returns at
    once; gives the app its config was handed."""
    import uvicorn

    apps: list[Any] = []
    monkeypatch.setattr(uvicorn.Server, "run",
                        lambda server, *a, **kw: apps.append(server.config.app))

    def run(*args: str) -> Any:
        result = CliRunner().invoke(cli_app, ["serve", "--config", str(server_config), *args])
        assert result.exit_code == 0, result.output
        return apps[-1]

    return run


def guard_hosts(app: Any) -> frozenset[str] | None:
    [guard] = [m for m in app.user_middleware if m.cls is BrowserGuard]
    return guard.kwargs["hosts"]


def test_the_serve_command_sets_the_host_check(started: Callable[..., Any],
                                               monkeypatch: pytest.MonkeyPatch):
    assert guard_hosts(started()) == frozenset()
    assert guard_hosts(started("--allowed-host", "fusion.lan", "--allowed-host", "x.lan")) \
        == {"fusion.lan", "x.lan"}
    assert guard_hosts(started("--allowed-host", "*")) is None
    monkeypatch.setenv("FUSION_API_KEYS", "k1")
    assert guard_hosts(started()) is None


def test_the_server_keeps_its_own_trace_file(started: Callable[..., Any],
                                             monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    home = tmp_path / "home"
    monkeypatch.setenv("MODELFUSION_HOME", str(home))
    started()
    assert (home / "data" / "server-traces.db").is_file()
    assert not (home / "data" / "traces.db").exists()  # `fusion ask`'s, never served
    monkeypatch.setenv("FUSION_TRACES_URL", f"sqlite:///{tmp_path / 'shared.db'}")
    started()  # one store named on purpose is used as named
    assert (tmp_path / "shared.db").is_file()


# ---------------------------------------------------------------- cross-site requests

BODY = json.dumps({"model": "fusion", "messages": ASK}).encode()
SIMPLE_TYPES = ["text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
                "multipart/form-data; boundary=x"]  # a page may send these without asking


def chat(served: Served, content: bytes = BODY, **headers: str) -> httpx.Response:
    return httpx.post(f"{served.v1}/chat/completions", content=content, headers=headers,
                      timeout=30)


@pytest.mark.parametrize("media", SIMPLE_TYPES)
def test_a_cross_site_page_cannot_run_a_fusion(served: Served, upstream: FakeUpstream,
                                               media: str):
    for headers in ({"Origin": "https://evil.example"},
                    {"Origin": "null"},  # a sandboxed frame, a file:// page
                    {"Origin": f"http://{EVIL}:8000"},
                    {"Sec-Fetch-Site": "cross-site"}):
        resp = chat(served, **{"Content-Type": media, **headers})
        assert resp.status_code == 403, (headers, resp.text)
        err = error_of(resp)
        assert (err["code"], err["param"]) == ("cross_site_request", "Origin")
        assert "--cors-origin" in err["message"]
        json_too = chat(served, **{"Content-Type": "application/json", **headers})
        assert json_too.status_code == 403  # a fetch() that was let through a preflight
    assert not upstream.requests


@pytest.mark.parametrize("media", [*SIMPLE_TYPES, None, "application/jsonx", "json"])
def test_a_body_that_is_not_declared_json_is_415(served: Served, upstream: FakeUpstream,
                                                 media: str | None):
    resp = chat(served, **({"Content-Type": media} if media else {}))
    assert resp.status_code == 415, resp.text
    err = error_of(resp)
    assert (err["code"], err["param"]) == ("unsupported_media_type", "Content-Type")
    assert "application/json" in err["message"]
    assert not upstream.requests


@pytest.mark.parametrize("media", ["application/json", "application/json; charset=utf-8",
                                   "Application/JSON", "application/vnd.fusion+json"])
def test_json_bodies_from_clients_and_the_servers_own_page_are_served(served: Served,
                                                                      media: str):
    port = served.url.rsplit(":", 1)[1]
    for headers in ({},  # a client outside a browser: no Origin
                    {"Origin": served.url, "Sec-Fetch-Site": "same-origin"},  # the page
                    {"Origin": f"http://localhost:{port}", "Host": f"localhost:{port}"}):
        resp = chat(served, **{"Content-Type": media, **headers})
        assert resp.status_code == 200, (headers, resp.text)
        assert "access-control-allow-origin" not in resp.headers
    # Reads change nothing, and without CORS the browser shows them to no other origin.
    resp = get(served, "/v1/models", Origin="https://evil.example")
    assert resp.status_code == 200 and "access-control-allow-origin" not in resp.headers


def test_cors_is_off_unless_origins_are_listed(serve: Callable[..., Served],
                                               upstream: FakeUpstream):
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "authorization,content-type"}
    off = serve()
    resp = httpx.options(f"{off.v1}/chat/completions", headers=preflight, timeout=30)
    assert "access-control-allow-origin" not in resp.headers

    on = serve(cors_origins=("https://app.example",))
    resp = httpx.options(f"{on.v1}/chat/completions", headers=preflight, timeout=30)
    assert resp.status_code == 200
    assert resp.headers["access-control-allow-origin"] == "https://app.example"
    assert "POST" in resp.headers["access-control-allow-methods"]
    ok = chat(on, **{"Content-Type": "application/json", "Origin": "https://app.example"})
    assert ok.status_code == 200
    assert ok.headers["access-control-allow-origin"] == "https://app.example"
    other = chat(on, **{"Content-Type": "application/json", "Origin": "https://evil.example"})
    assert other.status_code == 403 and "access-control-allow-origin" not in other.headers
    evil = httpx.options(f"{on.v1}/chat/completions",
                         headers={**preflight, "Origin": "https://evil.example"}, timeout=30)
    assert "access-control-allow-origin" not in evil.headers
    with pytest.raises(ValueError, match="CORS origin"):
        ServerSettings(cors_origins=("https://app.example/path",))


def test_the_serve_command_lists_cors_origins(started: Callable[..., Any]):
    app = started("--cors-origin", "https://app.example")
    [guard] = [m for m in app.user_middleware if m.cls is BrowserGuard]
    assert guard.kwargs["origins"] == ("https://app.example",)
    assert any(m.cls.__name__ == "CORSMiddleware" for m in app.user_middleware)
    assert not any(m.cls.__name__ == "CORSMiddleware" for m in started().user_middleware)

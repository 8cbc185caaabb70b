"""Shared fixtures: no network beyond loopback, a private home, a started FakeUpstream,
trace store URLs (SQLite; PostgreSQL when MODELFUSION_TEST_PG_URL is set), a served app
(`fusion serve` in a thread), the embedded model's home and a Playwright page.

Plain helpers (functions, constants) are in tests/helpers.py; no test module imports
another one."""

from __future__ import annotations

import ipaddress
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from modelfusion.code import harness as harness_module
from modelfusion.code.sandbox import run_python
from modelfusion.config import load_config
from modelfusion.server import ServerSettings, create_app
from modelfusion.traces.store import TraceStore
from tests.fake_upstream import FakeUpstream
from tests.helpers import (
    CHROMIUM,
    HAVE_PARTS,
    MODEL,
    PG_URL,
    VERDICT,
    NetworkBlockedError,
    Served,
    assembled_home,
    start_server,
    write_config,
)


def _is_loopback(address: Any) -> bool:
    if not isinstance(address, tuple):  # AF_UNIX path (str or bytes)
        return True
    host = address[0].decode() if isinstance(address[0], bytes) else str(address[0])
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return ip.is_loopback or (mapped is not None and mapped.is_loopback)


def _guarded(real: Any) -> Any:
    def connect(self: socket.socket, address: Any) -> Any:
        if not _is_loopback(address):
            raise NetworkBlockedError(f"tests may only connect to loopback, not {address!r}")
        return real(self, address)

    return connect


@pytest.fixture(autouse=True, scope="session")
def _no_network() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", _guarded(socket.socket.connect))
        mp.setattr(socket.socket, "connect_ex", _guarded(socket.socket.connect_ex))
        yield


@pytest.fixture
def upstream() -> Iterator[FakeUpstream]:
    with FakeUpstream() as up:
        yield up


@pytest.fixture(autouse=True)
def _isolated_home(tmp_path_factory: pytest.TempPathFactory,
                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Never read or write the real user dirs, nor inherit the developer's fusion settings."""
    monkeypatch.setenv("MODELFUSION_HOME", str(tmp_path_factory.mktemp("home")))
    for var in ("FUSION_CONFIG", "FUSION_OFFLINE", "FUSION_TRACES_URL"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture
def fake_config(upstream: FakeUpstream, tmp_path: Any) -> Any:
    """A fusion.toml declaring provider `fake` -> the loopback fake upstream."""
    path = tmp_path / "fusion.toml"
    path.write_text(f'[providers.fake]\nbase_url = "{upstream.base_url}"\n')
    return path


# ---------------------------------------------------------------- trace store URLs


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'db' / 'traces.db'}"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh schema in the test database per test, dropped afterwards."""
    if not PG_URL:
        pytest.skip("MODELFUSION_TEST_PG_URL is not set (`. .ci/postgres.sh` starts a "
                    "throwaway PostgreSQL and sets it; CI does)")
    import psycopg

    schema = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        sep = "&" if "?" in PG_URL else "?"
        yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest) -> str:
    return request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url")


# ---------------------------------------------------------------- `fusion serve` in a thread


@pytest.fixture
def server_config(upstream: FakeUpstream, tmp_path: Path) -> Path:
    """helpers.write_config's presets over the fake upstream; the judge answers VERDICT."""
    upstream.script("judge", VERDICT)
    return write_config(tmp_path / "fusion.toml", upstream.base_url)


@pytest.fixture
def serve(server_config: Path, tmp_path: Path) -> Iterator[Callable[..., Served]]:
    """serve(**settings) -> a running server with a SQLite trace store."""
    started: list[Served] = []

    def make(*, traces: bool = True, store_prompts: bool = True, **settings: Any) -> Served:
        store = TraceStore.open(f"sqlite:///{tmp_path / f'traces{len(started)}.db'}",
                                store_prompts=store_prompts) if traces else None
        app = create_app(load_config(server_config), store, ServerSettings(**settings))
        served = start_server(app, store)
        started.append(served)
        return served

    yield make
    for s in started:
        s.stop()
        if s.store is not None:
            s.store.close()


@pytest.fixture
def served(serve: Callable[..., Served]) -> Served:
    return serve()


# ---------------------------------------------------------------- the embedded model


@pytest.fixture(scope="session")
def session_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A MODELFUSION_HOME holding the assembled, verified 0.5B (assembled once)."""
    if not HAVE_PARTS:
        pytest.skip(f"the {MODEL} data packages are not installed")
    return assembled_home(tmp_path_factory, MODEL)


@pytest.fixture
def model_home(session_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("MODELFUSION_HOME", str(session_home))
    return session_home


# ---------------------------------------------------------------- the web page

BROWSER_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture
def page() -> Iterator[Any]:
    """A Playwright page in Debian's headless chromium; skips (with the reason) when the
    browser or Playwright is not installed."""
    if not CHROMIUM.exists():
        pytest.skip(f"needs Debian's chromium at {CHROMIUM} (apt-get install chromium); "
                    "CI installs it")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS)
        context = browser.new_context(viewport={"width": 1400, "height": 1000})
        pg = context.new_page()
        pg.set_default_timeout(15_000)
        yield pg
        context.close()
        browser.close()


@pytest.fixture
def programs(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every program verified mode sends to the sandbox (it still runs for real)."""
    sent: list[str] = []

    async def spy(code: str, **kw: Any) -> Any:
        sent.append(code)
        return await run_python(code, **kw)

    monkeypatch.setattr(harness_module, "run_python", spy)
    return sent

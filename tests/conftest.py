"""Shared fixtures: a started FakeUpstream, and no network beyond loopback."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from tests.fake_upstream import FakeUpstream


class NetworkBlockedError(RuntimeError):
    """A test tried to connect somewhere other than loopback."""


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

"""How uvicorn serves the app: its own limits, plus the two it lacks.

uvicorn (h11) bounds a header's size (`h11_max_incomplete_event_size`) and the idle time
between requests on a kept-alive connection (`timeout_keep_alive`); those are its settings
and are set here. Its `limit_concurrency` is not used: it answers 503 (in plain text) only
once a request has fully arrived, so it counts slow connections without closing any, and
the cap below makes it redundant. It has no limit
on how long a request's *headers* may take to arrive, and it accepts every connection, so
slowloris clients (connections that send half a header and wait) held the server's file
descriptors until none were left and `/healthz` stopped answering (issue 12, item 10).
`protocol()` adds both: a connection that has not sent its request headers within
`header_timeout_s` is closed, and one past `max_connections` is answered 503 and closed as
soon as it is accepted. A body's pace is bounded in the app (`limits.read_body`).

`uvicorn_config()` is what `fusion serve` and the tests run; `logs.quiet()` bounds what
the logs can grow by. `run(config, workers)` serves it in this process or, with several
workers, under uvicorn's own supervisor (`Multiprocess`: it spawns the workers, restarts
one that dies, and passes SIGTERM on for a graceful stop). Each worker builds its own app
(`ReplicaApp`), so everything in memory is per worker; only the trace store is shared.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.supervisors import Multiprocess

from ..config import Config
from .logs import quiet
from .settings import ServerSettings

HEADER_LIMIT_BYTES = 16 * 1024  # uvicorn's default, set here so that it is a decision
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
         b"retry-after: 1\r\nconnection: close\r\ncontent-length: 105\r\n\r\n"
         b'{"error":{"message":"too many open connections","type":"server_error",'
         b'"param":null,"code":"server_busy"}}')


def protocol(settings: ServerSettings) -> type[H11Protocol]:
    """uvicorn's h11 protocol with a header deadline and a connection cap."""
    header_timeout = settings.header_timeout_s
    cap = settings.max_connections

    class GuardedH11Protocol(H11Protocol):
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > cap:
                transport.write(_BUSY)
                transport.close()  # connection_lost takes it out of `connections`
                return
            self._arm()

        def handle_events(self) -> None:
            super().handle_events()
            # Headers in (their side moved past IDLE): the app's limits take over.
            if self.conn.their_state is not h11.IDLE:
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self._arm()  # the next request's headers get the same deadline

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._header_timer = self.loop.call_later(header_timeout, self._headers_late)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_late(self) -> None:
            self._header_timer = None
            if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
                self.transport.close()  # no request: nothing to answer

    return GuardedH11Protocol


class FusionConfig(uvicorn.Config):
    """uvicorn's Config with the guarded protocol. The protocol class is built from the
    settings where the config is loaded (in each worker): a class made inside a function
    cannot be pickled, and the supervisor pickles the config to hand it to a worker."""

    def __init__(self, app: Any, settings: ServerSettings, **kwargs: Any) -> None:
        super().__init__(app, http="h11", **kwargs)
        self.fusion_settings = settings

    def load(self) -> None:
        super().load()
        self.http_protocol_class = protocol(self.fusion_settings)


def uvicorn_config(app: Any, settings: ServerSettings, *, host: str = "127.0.0.1",
                   port: int = 8000, log_level: str = "info", **extra: Any) -> FusionConfig:
    return FusionConfig(
        app, settings, host=host, port=port, log_level=log_level, timeout_keep_alive=5,
        h11_max_incomplete_event_size=HEADER_LIMIT_BYTES, **extra)


@dataclass(frozen=True, slots=True)
class ReplicaApp:
    """The app factory a worker calls (uvicorn's `factory=True`): its own trace-store
    connection (`db` None: no traces), provider pool and limits, from the config the
    parent already read and checked."""

    config: Config
    settings: ServerSettings
    db: str | None
    store_prompts: bool = True

    def __call__(self) -> Any:
        from ..traces.store import TraceStore
        from .app import create_app

        # The parent opened (and migrated) this store already, so a bad URL stopped it
        # before any worker started. Closed at exit (traces.store's atexit hook).
        store = TraceStore.open(self.db, store_prompts=self.store_prompts) \
            if self.db and self.settings.traces else None
        quiet()  # uvicorn configured this worker's loggers just before calling us
        return create_app(self.config, store, self.settings)


def run(config: FusionConfig, workers: int = 1) -> None:
    """Serve until stopped: in this process, or in `workers` processes sharing one
    listening socket (the kernel spreads connections between them)."""
    if workers == 1:
        uvicorn.Server(config).run()
        return
    config.workers = workers
    sock = config.bind_socket()
    try:
        Multiprocess(config, sockets=[sock]).run()
    finally:
        sock.close()

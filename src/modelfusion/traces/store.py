"""The trace store: every fusion kept, so a user can look back at it (`fusion log`/`show`).

One SQLAlchemy Core schema serves SQLite (the default, `<data dir>/traces.db`) and
PostgreSQL (shared by server replicas). A trace holds what `FusionResult.to_dict()` holds,
plus the request messages and, for a failed fusion, the error and each member's failure;
a server's trace also the id of the key that made it (`owner`: a hash, never the key).
Nothing else: no headers, no config, no keys. Opened with `store_prompts=False` it keeps no
request text: no messages, and verified's checks without their source, expected values,
outputs or errors.

`record()` only enqueues; one daemon writer thread batch-inserts, so a slow or broken
database never delays or fails a fusion (failures are logged and counted in
`failed_writes`). `flush()` waits for the queue, `close()` drains it.

    store = TraceStore.open()                      # or open("postgresql://u@host/db")
    trace_id = store.record(result, messages=msgs, source="library")
    store.close()
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import queue
import re
import threading
import time
import uuid
import weakref
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    Engine,
    Select,
    exc,
    insert,
    select,
)

from ..errors import FusionError, UsageError
from ..types import (
    FusionResult,
    Message,
    to_messages,
)
from .records import TraceRecord, TraceSummary, _Pending, _record, _row, _summary
from .schema import (
    SCHEMA_VERSION,
    URL_ENV,
    AmbiguousTraceId,
    _db_reason,
    _engine,
    default_url,
    mask_url,
    migrate,
    traces,
)

__all__ = ["SCHEMA_VERSION", "TraceRecord", "TraceStore", "TraceSummary", "migrate"]

log = logging.getLogger("modelfusion.traces")

SOURCES: frozenset[str] = frozenset({"cli", "server", "library"})
_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

# ---------------------------------------------------------------- the store

_STOP = object()  # tells the writer thread to finish
_BATCH = 100
# While the database is down, traces wait in memory up to this many; beyond, they are
# dropped (and counted) rather than growing a server's memory without bound.
MAX_QUEUED = 10_000
_open_stores: weakref.WeakSet[TraceStore] = weakref.WeakSet()


class TraceStore:
    """Where traces live. Thread-safe; `record()` never blocks and never raises on a DB error."""

    def __init__(self, engine: Engine, url: str, *, store_prompts: bool = True) -> None:
        self.engine = engine
        self.url = mask_url(url)  # what errors and logs may show
        self.store_prompts = store_prompts
        self.failed_writes = 0  # traces that never reached the database
        self._dropped = 0  # of those, refused at record() (closed store or queue full)
        self._queue: queue.SimpleQueue[_Pending | object] = queue.SimpleQueue()
        self._pending = 0  # queued or being written
        self._cond = threading.Condition()
        self._writer: threading.Thread | None = None
        self._closed = False

    @classmethod
    def open(cls, url: str | None = None, *, store_prompts: bool = True) -> TraceStore:
        """Connect and migrate. A bad URL or unreachable database is a `UsageError`."""
        url = url or default_url()
        engine = _engine(url)
        try:
            migrate(engine)
        except FusionError:
            engine.dispose()
            raise
        except (exc.SQLAlchemyError, OSError) as e:
            engine.dispose()
            raise UsageError(
                f"cannot open the trace store at {mask_url(url)}: {_db_reason(e)}. "
                f"Check the URL (--db or ${URL_ENV}) and that the database is running "
                "and accepts this user"
            ) from None
        store = cls(engine, url, store_prompts=store_prompts)
        _open_stores.add(store)
        return store

    def __enter__(self) -> TraceStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- writing

    def record(
        self,
        result: FusionResult | None,
        *,
        messages: Sequence[Message] | str,
        source: str,
        preset: str | None = None,
        error: Exception | None = None,
        trace_id: str | None = None,
        mode: str | None = None,
        owner: str | None = None,
    ) -> str:
        """Queue one fusion (or a failed one: result None + error) and return its id at once.

        `mode` is only needed for a failed fusion (a result knows its mode). `owner` is who
        may read it back besides an admin (the server's key id; never a secret). Wrong
        arguments are the caller's bug and raise ValueError; database trouble never raises.
        """
        if source not in SOURCES:
            raise ValueError(f"source must be one of {sorted(SOURCES)}, not {source!r}")
        if result is None and error is None:
            raise ValueError("record() needs a result, or error= for a failed fusion")
        if trace_id is not None and not _ID.match(trace_id):
            raise ValueError(f"trace_id must match {_ID.pattern}, not {trace_id!r}")
        trace_id = trace_id or uuid.uuid4().hex
        pending = _Pending(
            trace_id=trace_id, created_at=datetime.now(UTC), result=result,
            messages=to_messages(messages) if self.store_prompts else None,
            source=source, preset=preset, mode=mode, error=error, owner=owner,
            prompts=self.store_prompts,
        )
        with self._cond:
            if self._closed or self._pending >= MAX_QUEUED:
                self.failed_writes += 1
                self._dropped += 1
                if self._dropped % 1000 == 1:  # once, then every 1000th: no log flood
                    why = ("the store is closed" if self._closed
                           else f"{MAX_QUEUED} traces are already waiting for {self.url}")
                    log.warning("trace %s dropped (%d so far): %s", trace_id, self._dropped,
                                why)
                return trace_id
            self._pending += 1
            self._start_writer()
        self._queue.put(pending)
        return trace_id

    def flush(self, timeout: float = 5.0) -> None:
        """Wait until every queued trace is written (or failed); at most `timeout` seconds."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._pending == 0, timeout):
                log.warning("trace store %s: %d trace(s) still queued after %.1fs",
                            self.url, self._pending, timeout)

    def close(self, timeout: float = 10.0) -> None:
        """Drain the queue, stop the writer, release the database. Idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            writer = self._writer
        self.flush(timeout)
        if writer is not None:
            self._queue.put(_STOP)
            writer.join(timeout)
        self.engine.dispose()
        _open_stores.discard(self)

    def _start_writer(self) -> None:
        # Called with self._cond held: one writer, started on the first record().
        if self._writer is None:
            self._writer = threading.Thread(target=self._run_writer,
                                            name="modelfusion-traces", daemon=True)
            self._writer.start()

    def _run_writer(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch = [first]
            stop = False
            while len(batch) < _BATCH:  # take whatever else is already waiting
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                batch.append(item)
            self._write([p for p in batch if isinstance(p, _Pending)])
            if stop:
                return

    def _write(self, batch: list[_Pending]) -> None:
        rows, failed = [], 0
        for p in batch:
            try:
                rows.append(_row(p))
            except Exception as e:  # a result we cannot encode must not sink the others
                failed += 1
                log.warning("could not encode trace %s: %s", p.trace_id, e)
        try:
            if len(rows) > 1:
                try:
                    self._insert(rows)
                except (exc.OperationalError, exc.InterfaceError):
                    raise  # the database is away: retrying row by row would only wait longer
                except Exception:
                    failed += self._insert_one_by_one(rows)  # find the bad row, keep the rest
            elif rows:
                self._insert(rows)
        except Exception as e:
            failed += len(rows)
            log.warning("could not write %d trace(s) to %s: %s", len(rows), self.url,
                        _db_reason(e), exc_info=log.isEnabledFor(logging.DEBUG))
        finally:
            with self._cond:
                self.failed_writes += failed
                self._pending -= len(batch)
                self._cond.notify_all()

    def _insert_one_by_one(self, rows: list[dict[str, Any]]) -> int:
        failed = 0
        for row in rows:
            try:
                self._insert([row])
            except Exception as e:
                failed += 1
                log.warning("could not write trace %s to %s: %s", row["id"], self.url,
                            _db_reason(e))
        return failed

    def _insert(self, rows: list[dict[str, Any]]) -> None:
        with self.engine.begin() as conn:
            conn.execute(insert(traces), rows)

    # ---- reading: `owner` None reads every trace (the CLI, an admin key); an owner's id
    # reads only the traces recorded with it, so a prefix or an ambiguity never tells one
    # key about another's traces.

    def recent(self, limit: int = 20, *, owner: str | None = None) -> list[TraceSummary]:
        """The newest `limit` traces (of `owner`, if given), newest first."""
        cols = [c for c in traces.c if c.name not in _HEAVY]
        query = (_owned(select(*cols), owner)
                 .order_by(traces.c.created_at.desc(), traces.c.id.desc())
                 .limit(max(0, limit)))
        with self._reading() as conn:
            return [_summary(row) for row in conn.execute(query)]

    def get(self, trace_id_or_prefix: str, *, owner: str | None = None
            ) -> TraceRecord | None:
        """The full trace by id or unique id prefix (among `owner`'s, if given); None if
        none matches.

        An ambiguous prefix is a `UsageError` listing the candidates.
        """
        key = trace_id_or_prefix.strip()
        if not key or not _ID.match(key):
            return None
        with self._reading() as conn:
            row = conn.execute(_owned(select(traces), owner).where(traces.c.id == key)).first()
            if row is not None:
                return _record(row)
            ids = conn.scalars(
                _owned(select(traces.c.id), owner)
                .where(traces.c.id.startswith(key, autoescape=True))
                .order_by(traces.c.created_at.desc()).limit(6)
            ).all()
            if len(ids) > 1:
                shown = ", ".join(i[:12] for i in ids[:5]) + (", …" if len(ids) > 5 else "")
                raise AmbiguousTraceId(f"id prefix {key!r} matches several traces ({shown}); "
                                       "give more characters")
            if not ids:
                return None
            row = conn.execute(select(traces).where(traces.c.id == ids[0])).first()
        return _record(row) if row is not None else None

    @contextlib.contextmanager
    def _reading(self) -> Any:
        try:
            with self.engine.connect() as conn:
                yield conn
        except exc.SQLAlchemyError as e:
            raise UsageError(f"cannot read the trace store at {self.url}: "
                             f"{_db_reason(e)}") from None


def _owned(query: Select[Any], owner: str | None) -> Select[Any]:
    """The one place traces are scoped to an owner."""
    return query if owner is None else query.where(traces.c.owner == owner)


# Columns `recent()` leaves out: they can be large and the log does not show them.
_HEAVY = frozenset({"messages", "members", "judge", "analysis", "votes", "rounds", "answer",
                    "reason", "timings", "error_message", "checks", "compute"})


@atexit.register
def _close_open_stores() -> None:
    # A library user who never calls close() still gets queued traces written at exit
    # (daemon threads would otherwise die with them).
    deadline = time.monotonic() + 5.0
    for store in list(_open_stores):
        store.close(timeout=max(0.1, deadline - time.monotonic()))

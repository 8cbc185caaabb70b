"""The trace store: every fusion kept, so a user can look back at it (`fusion log`/`show`).

One SQLAlchemy Core schema serves SQLite (the default, `<data dir>/traces.db`) and
PostgreSQL (shared by server replicas). A trace holds what `FusionResult.to_dict()` holds,
plus the request messages (unless opened with `store_prompts=False`) and, for a failed
fusion, the error and each member's failure. Nothing else: no headers, no config, no keys.

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
import os
import queue
import re
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import (
    JSON,
    Boolean,
    Column,
    DateTime,
    Engine,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    create_engine,
    exc,
    func,
    insert,
    inspect,
    select,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.pool import StaticPool
from sqlalchemy.schema import CreateIndex, CreateTable

from .config import home_dir
from .errors import FusionError, UsageError
from .types import (
    ChecksReport,
    FusionResult,
    JudgeResult,
    MemberResult,
    Message,
    Usage,
    to_messages,
)

__all__ = ["SCHEMA_VERSION", "TraceRecord", "TraceStore", "TraceSummary", "migrate"]

log = logging.getLogger("modelfusion.traces")

Source = Literal["cli", "server", "library"]
SOURCES: frozenset[str] = frozenset({"cli", "server", "library"})
URL_ENV = "FUSION_TRACES_URL"
SHORT_ID = 8  # characters of the id that `fusion log` shows and `fusion show` accepts
PREVIEW_CHARS = 200
_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

# ---------------------------------------------------------------- schema

# JSONB on PostgreSQL (indexable, compact), JSON text elsewhere. none_as_null: a Python
# None is SQL NULL, not the JSON literal `null`, so "not stored" is visible to SQL.
_Json = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")

metadata = MetaData()

schema_version = Table(
    "schema_version",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("applied_at", DateTime(timezone=True), nullable=False),
)

traces = Table(
    "traces",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("source", String(16), nullable=False),
    Column("preset", Text),
    Column("mode", String(32)),
    Column("status", String(16), nullable=False),  # ok | failed
    Column("messages", _Json),  # NULL when the store was opened with store_prompts=False
    Column("prompt_preview", String(PREVIEW_CHARS)),  # first line, for `fusion log`
    Column("answer", Text),
    Column("chosen", Text),
    Column("reason", Text),
    Column("members", _Json, nullable=False),
    Column("judge", _Json),
    Column("analysis", _Json),
    Column("votes", _Json),
    Column("rounds", _Json),
    Column("checks", _Json),  # verified mode's per-candidate check results (schema v2)
    Column("timings", _Json),
    Column("prompt_tokens", Integer, nullable=False),
    Column("completion_tokens", Integer, nullable=False),
    Column("cost", Float),
    Column("total_ms", Float),
    Column("degraded", Boolean, nullable=False),
    Column("members_ok", Integer, nullable=False),
    Column("members_failed", Integer, nullable=False),
    Column("error_code", Text),
    Column("error_message", Text),
)
_created_idx = Index("ix_traces_created_at", traces.c.created_at)


def _v1(conn: Connection) -> None:
    conn.execute(CreateTable(traces, if_not_exists=True))
    conn.execute(CreateIndex(_created_idx, if_not_exists=True))


def _v2(conn: Connection) -> None:
    """`checks`: which visible checks each candidate passed (verified mode). Its own column,
    like `analysis` and `votes`: one JSON value per mode's account, NULL for other modes."""
    if "checks" not in {c["name"] for c in inspect(conn).get_columns(traces.name)}:
        kind = _Json.compile(dialect=conn.dialect)  # JSON on SQLite, JSONB on PostgreSQL
        conn.execute(text(f"ALTER TABLE traces ADD COLUMN checks {kind}"))


# Step N brings the schema from N-1 to N. Steps must be idempotent (SQLite replicas have no
# lock to serialise them): add a column only after checking it is missing.
MIGRATIONS: dict[int, Callable[[Connection], None]] = {1: _v1, 2: _v2}
SCHEMA_VERSION = max(MIGRATIONS)

# Any constant works; it only has to be the same for every modelfusion process.
_PG_MIGRATE_LOCK = 0x6D66_7472_6163_6573 & 0x7FFF_FFFF_FFFF_FFFF


def migrate(engine: Engine) -> int:
    """Create or upgrade the schema; idempotent. Returns the schema version.

    A schema already current is only read: no lock, no DDL (so read-only users can browse).
    Otherwise, on PostgreSQL a transaction-level advisory lock serialises replicas starting
    at once (released at commit). Elsewhere the steps are CREATE IF NOT EXISTS and the
    version row is inserted tolerantly, so concurrent starts converge too.
    """
    with engine.connect() as conn:
        if _current_version(conn) == SCHEMA_VERSION:
            return SCHEMA_VERSION
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(select(func.pg_advisory_xact_lock(_PG_MIGRATE_LOCK)))
        conn.execute(CreateTable(schema_version, if_not_exists=True))
        for version in range(_current_version(conn) + 1, SCHEMA_VERSION + 1):
            MIGRATIONS[version](conn)
            _mark_applied(conn, version)
    return SCHEMA_VERSION


def _current_version(conn: Connection) -> int:
    if not inspect(conn).has_table(schema_version.name):
        return 0
    current = conn.scalar(select(func.max(schema_version.c.version))) or 0
    if current > SCHEMA_VERSION:
        raise UsageError(
            f"the trace store has schema version {current}, newer than this modelfusion "
            f"understands ({SCHEMA_VERSION}): upgrade modelfusion, or use another --db"
        )
    return current


def _mark_applied(conn: Connection, version: int) -> None:
    done = select(schema_version.c.version).where(schema_version.c.version == version)
    if conn.scalar(done) is not None:
        return
    # Another process may insert the same row between our check and insert: that's fine.
    with contextlib.suppress(exc.IntegrityError):
        conn.execute(insert(schema_version).values(version=version,
                                                   applied_at=datetime.now(UTC)))


# ---------------------------------------------------------------- URLs and engines



class AmbiguousTraceId(UsageError):
    """An id prefix that matches more than one trace: the caller must give more of it."""

    code = "ambiguous_id"

def default_url() -> str:
    """$FUSION_TRACES_URL, else SQLite in the user data dir."""
    env = os.environ.get(URL_ENV)
    if env:
        return env
    return f"sqlite:///{home_dir('data') / 'traces.db'}"


def mask_url(url: str) -> str:
    """The URL without its password, fit for errors and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # unparsable: mask whatever sits between user: and @
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)


def _driver_url(url: str) -> str:
    # psycopg 3 is the PostgreSQL driver we ship; SQLAlchemy would otherwise pick psycopg2.
    for plain in ("postgresql://", "postgres://"):
        if url.startswith(plain):
            return "postgresql+psycopg://" + url[len(plain):]
    return url


def _bad_url(url: str, why: str) -> UsageError:
    return UsageError(
        f"trace store URL {mask_url(url)!r}: {why}. Write sqlite:///path/to/traces.db or "
        f"postgresql://user:password@host:5432/dbname (--db or ${URL_ENV})"
    )


def _engine(url: str) -> Engine:
    try:
        parsed = make_url(_driver_url(url))
    except exc.ArgumentError:
        raise _bad_url(url, "not a database URL") from None
    backend = parsed.get_backend_name()
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if backend == "sqlite":
        database = parsed.database or ""
        if database in ("", ":memory:") or database.startswith("file:"):
            # One shared connection, or every thread would get its own empty database.
            kwargs = {"poolclass": StaticPool, "connect_args": {"check_same_thread": False}}
        else:
            folder = os.path.dirname(os.path.abspath(database))
            try:
                os.makedirs(folder, exist_ok=True)
            except OSError as e:
                raise _bad_url(url, f"cannot create {folder} ({e.strerror})") from None
    elif backend == "postgresql":
        kwargs["connect_args"] = {"connect_timeout": 5}  # fail fast, never hang a command
    try:
        return create_engine(parsed, **kwargs)
    except (exc.NoSuchModuleError, ImportError) as e:
        why = ("its driver is not installed: pip install 'psycopg[binary]'"
               if backend == "postgresql" else f"its driver is not installed ({_db_reason(e)})")
        raise _bad_url(url, why) from None
    except (exc.ArgumentError, TypeError, ValueError, OSError) as e:
        raise _bad_url(url, _db_reason(e)) from None


def _db_reason(e: BaseException) -> str:
    """The driver's own first line, without SQLAlchemy's SQL echo and links."""
    orig = getattr(e, "orig", None) or e
    lines = str(orig).strip().splitlines()
    return lines[0] if lines else type(orig).__name__


# ---------------------------------------------------------------- typed records


@dataclass(frozen=True, slots=True)
class TraceSummary:
    """One line of `fusion log`."""

    id: str
    created_at: datetime  # UTC, aware
    source: str
    preset: str | None
    mode: str | None
    status: str  # ok | failed
    degraded: bool
    members_ok: int
    members_failed: int
    cost: float | None
    total_ms: float | None
    prompt_preview: str | None  # None when prompts were not stored
    error_code: str | None

    @property
    def short_id(self) -> str:
        return self.id[:SHORT_ID]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "created_at": self.created_at.isoformat(),
            "source": self.source,
            "preset": self.preset,
            "mode": self.mode,
            "status": self.status,
            "degraded": self.degraded,
            "members_ok": self.members_ok,
            "members_failed": self.members_failed,
            "cost": self.cost,
            "total_ms": self.total_ms,
            "prompt_preview": self.prompt_preview,
            "error": {"code": self.error_code} if self.error_code else None,
        }


@dataclass(frozen=True, slots=True)
class TraceRecord:
    """One fusion as it was kept: the summary plus everything `FusionResult` held."""

    summary: TraceSummary
    messages: list[Message] | None  # None when prompts were not stored
    answer: str | None
    chosen: str | None
    reason: str | None
    members: list[MemberResult]
    judge: JudgeResult | None  # None for a failed fusion (no judge ran)
    analysis: dict[str, Any] | None
    votes: dict[str, Any] | None
    rounds: list[list[MemberResult]] | None
    usage: Usage
    timings: dict[str, float] = field(default_factory=dict)
    error_message: str | None = None
    checks: ChecksReport | None = None  # verified mode

    @property
    def id(self) -> str:
        return self.summary.id

    def to_dict(self) -> dict[str, Any]:
        """Trace metadata + the same keys as `FusionResult.to_dict()` (the --json contract)."""
        s = self.summary
        head = {k: v for k, v in s.to_dict().items() if k not in ("prompt_preview", "error")}
        return {
            **head,
            "messages": [m.to_dict() for m in self.messages] if self.messages is not None
            else None,
            "answer": self.answer,
            "chosen": self.chosen,
            "reason": self.reason,
            "members": [m.to_dict() for m in self.members],
            "judge": self.judge.to_dict() if self.judge else None,
            "analysis": self.analysis,
            "votes": self.votes,
            "rounds": [[m.to_dict() for m in r] for r in self.rounds] if self.rounds else None,
            "checks": self.checks.to_dict() if self.checks else None,
            "usage": self.usage.to_dict(),
            "timings": self.timings,
            "error": {"code": s.error_code, "message": self.error_message}
            if s.error_code else None,
        }


# ---------------------------------------------------------------- rows <-> records


@dataclass(slots=True)
class _Pending:
    """What record() captured; turned into a row on the writer thread, off the caller's path."""

    trace_id: str
    created_at: datetime
    result: FusionResult | None
    messages: list[Message] | None
    source: str
    preset: str | None
    mode: str | None
    error: Exception | None


def _row(p: _Pending) -> dict[str, Any]:
    row: dict[str, Any] = {
        "id": p.trace_id, "created_at": p.created_at, "source": p.source, "preset": p.preset,
        "messages": [m.to_dict() for m in p.messages] if p.messages is not None else None,
        "prompt_preview": _preview(p.messages),
        "error_code": None, "error_message": None,
    }
    if p.result is not None:
        row.update(_result_columns(p.result))
    else:
        row.update(_failure_columns(p.error, p.mode))
    return _clean(row)


def _result_columns(r: FusionResult) -> dict[str, Any]:
    d = r.to_dict()
    ok = sum(m.ok for m in r.members)
    return {
        "mode": r.mode, "status": "ok", "answer": r.answer, "chosen": r.chosen,
        "reason": r.reason, "members": d["members"], "judge": d["judge"],
        "analysis": d["analysis"], "votes": d["votes"], "rounds": d["rounds"],
        "checks": d["checks"], "timings": d["timings"], "prompt_tokens": r.usage.prompt_tokens,
        "completion_tokens": r.usage.completion_tokens, "cost": r.cost,
        "total_ms": round(r.timings.total_ms, 2), "degraded": r.degraded,
        "members_ok": ok, "members_failed": len(r.members) - ok,
    }


def _failure_columns(error: Exception | None, mode: str | None) -> dict[str, Any]:
    members: list[MemberResult] = list(getattr(error, "members", None) or [])
    usage = sum((m.usage for m in members), Usage())
    costs = [m.cost for m in members if m.usage.total_tokens or m.cost]
    cost = None if not costs or None in costs else sum(c for c in costs if c is not None)
    ok = sum(m.ok for m in members)
    return {
        "mode": mode, "status": "failed", "answer": None, "chosen": None, "reason": None,
        "members": [m.to_dict() for m in members], "judge": None, "analysis": None,
        "votes": None, "rounds": None, "checks": None, "timings": None,
        "prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
        "cost": cost, "total_ms": None, "degraded": True,
        "members_ok": ok, "members_failed": len(members) - ok,
        "error_code": getattr(error, "code", None) or type(error).__name__,
        "error_message": str(error),
    }


def _preview(messages: list[Message] | None) -> str | None:
    if not messages:
        return None
    users = [m for m in messages if m.role == "user"] or messages
    lines = [line.strip() for line in users[-1].content.splitlines() if line.strip()]
    return (lines[0] if lines else "")[:PREVIEW_CHARS]


def _clean(value: Any) -> Any:
    # PostgreSQL refuses NUL in text and jsonb; a model can emit one. Keep the rest intact.
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def _utc(value: datetime) -> datetime:
    # SQLite keeps no zone; we only ever write UTC.
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _summary(row: Any) -> TraceSummary:
    return TraceSummary(
        id=row.id, created_at=_utc(row.created_at), source=row.source, preset=row.preset,
        mode=row.mode, status=row.status, degraded=bool(row.degraded),
        members_ok=row.members_ok, members_failed=row.members_failed, cost=row.cost,
        total_ms=row.total_ms, prompt_preview=row.prompt_preview, error_code=row.error_code,
    )


def _member(index: int, d: dict[str, Any]) -> MemberResult:
    return MemberResult(
        index=index, model=d["model"], status=d["status"], reason=d.get("reason"),
        error=d.get("error"), content=d.get("content"), usage=Usage(**d.get("usage") or {}),
        latency_ms=d.get("latency_ms") or 0.0, cost=d.get("cost"),
        attempts=d.get("attempts") or 0,
    )


def _judge(d: dict[str, Any] | None) -> JudgeResult | None:
    if d is None:
        return None
    return JudgeResult(
        model=d.get("model"), status=d.get("status", "ok"), reason=d.get("reason"),
        error=d.get("error"), usage=Usage(**d.get("usage") or {}),
        latency_ms=d.get("latency_ms") or 0.0, cost=d.get("cost"),
        labels=dict(d.get("labels") or {}), shuffle_seed=d.get("shuffle_seed"),
        defused={int(k): list(v) for k, v in (d.get("defused") or {}).items()},
        demoted=list(d.get("demoted") or []),
    )


def _record(row: Any) -> TraceRecord:
    return TraceRecord(
        summary=_summary(row),
        messages=to_messages(row.messages) if row.messages is not None else None,
        answer=row.answer, chosen=row.chosen, reason=row.reason,
        members=[_member(i, m) for i, m in enumerate(row.members or [])],
        judge=_judge(row.judge), analysis=row.analysis, votes=row.votes,
        rounds=[[_member(i, m) for i, m in enumerate(r)] for r in row.rounds]
        if row.rounds else None,
        usage=Usage(row.prompt_tokens, row.completion_tokens),
        timings=dict(row.timings or {}), error_message=row.error_message,
        checks=ChecksReport.from_dict(row.checks) if row.checks else None,
    )


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
    ) -> str:
        """Queue one fusion (or a failed one: result None + error) and return its id at once.

        `mode` is only needed for a failed fusion (a result knows its mode). Wrong arguments
        are the caller's bug and raise ValueError; database trouble never raises here.
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
            source=source, preset=preset, mode=mode, error=error,
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

    # ---- reading

    def recent(self, limit: int = 20) -> list[TraceSummary]:
        """The newest `limit` traces, newest first."""
        cols = [c for c in traces.c if c.name not in _HEAVY]
        query = (select(*cols).order_by(traces.c.created_at.desc(), traces.c.id.desc())
                 .limit(max(0, limit)))
        with self._reading() as conn:
            return [_summary(row) for row in conn.execute(query)]

    def get(self, trace_id_or_prefix: str) -> TraceRecord | None:
        """The full trace by id or unique id prefix; None if none matches.

        An ambiguous prefix is a `UsageError` listing the candidates.
        """
        key = trace_id_or_prefix.strip()
        if not key or not _ID.match(key):
            return None
        with self._reading() as conn:
            row = conn.execute(select(traces).where(traces.c.id == key)).first()
            if row is not None:
                return _record(row)
            ids = conn.scalars(
                select(traces.c.id).where(traces.c.id.startswith(key, autoescape=True))
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


# Columns `recent()` leaves out: they can be large and the log does not show them.
_HEAVY = frozenset({"messages", "members", "judge", "analysis", "votes", "rounds", "answer",
                    "reason", "timings", "error_message", "checks"})


@atexit.register
def _close_open_stores() -> None:
    # A library user who never calls close() still gets queued traces written at exit
    # (daemon threads would otherwise die with them).
    deadline = time.monotonic() + 5.0
    for store in list(_open_stores):
        store.close(timeout=max(0.1, deadline - time.monotonic()))

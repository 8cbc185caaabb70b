"""The trace store's tables, their migrations, and the database URLs and engines.

One SQLAlchemy Core schema serves SQLite (the default, `<data dir>/traces.db`) and
PostgreSQL (shared by server replicas). Each schema change is a numbered, idempotent step.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

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

from ..errors import UsageError
from ..files import home_dir

URL_ENV = "FUSION_TRACES_URL"
# `fusion serve`'s default store, apart from traces.db: the server hands its traces to
# whoever may call it, and the prompts of `fusion ask` are none of their business.
SERVER_FILE = "server-traces.db"
PREVIEW_CHARS = 200
OWNER_CHARS = 64  # room for any key id (server/auth.py uses 24)

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
    Column("compute", _Json),  # adaptive compute: samples spent, why it stopped (schema v3)
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
    # Which server key made it (server/auth.key_id: a hash, never the key); NULL for the
    # CLI's and the library's traces and for a server without keys (schema v4).
    Column("owner", String(OWNER_CHARS)),
)
_created_idx = Index("ix_traces_created_at", traces.c.created_at)
# A key's own traces, newest first: what `GET /v1/fusion/traces` asks for most.
_owner_idx = Index("ix_traces_owner_created_at", traces.c.owner, traces.c.created_at)


def _v1(conn: Connection) -> None:
    # The table as it is now (a later step finds its column there and only adds the index).
    conn.execute(CreateTable(traces, if_not_exists=True))
    conn.execute(CreateIndex(_created_idx, if_not_exists=True))


def _v2(conn: Connection) -> None:
    """`checks`: which visible checks each candidate passed (verified mode). Its own column,
    like `analysis` and `votes`: one JSON value per mode's account, NULL for other modes."""
    _add_column(conn, "checks")


def _v3(conn: Connection) -> None:
    """`compute`: adaptive compute's account (samples used of max_samples, stages, why it
    stopped); NULL when a fusion ran without max_samples."""
    _add_column(conn, "compute")


def _v4(conn: Connection) -> None:
    """`owner`: the id of the server key that made a trace, so a key reads only its own
    (issue 12, item 9). Older traces have none: only an admin key sees them."""
    _add_column(conn, "owner")
    conn.execute(CreateIndex(_owner_idx, if_not_exists=True))


def _add_column(conn: Connection, name: str) -> None:
    """Add `traces.<name>` as the table above declares it, unless it is there already."""
    if name not in {c["name"] for c in inspect(conn).get_columns(traces.name)}:
        # JSON on SQLite, JSONB on PostgreSQL; VARCHAR(n) for a string.
        kind = traces.c[name].type.compile(dialect=conn.dialect)
        conn.execute(text(f"ALTER TABLE traces ADD COLUMN {name} {kind}"))


# Step N brings the schema from N-1 to N. Steps must be idempotent (SQLite replicas have no
# lock to serialise them): add a column only after checking it is missing.
MIGRATIONS: dict[int, Callable[[Connection], None]] = {1: _v1, 2: _v2, 3: _v3, 4: _v4}
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

def default_url(file: str = "traces.db") -> str:
    """$FUSION_TRACES_URL, else the SQLite `file` in the user data dir: the CLI's and the
    library's traces.db, or the server's own SERVER_FILE."""
    env = os.environ.get(URL_ENV)
    if env:
        return env
    return f"sqlite:///{home_dir('data') / file}"


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



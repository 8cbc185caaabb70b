"""The trace store: real fusions through the loopback fake, kept in SQLite (always) and
PostgreSQL (when MODELFUSION_TEST_PG_URL is set: `. .ci/postgres.sh` starts one)."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, exc, make_url, text

from modelfusion import AllMembersFailed, Fusion, FusionResult, UsageError
from modelfusion.traces import store as traces
from modelfusion.traces.store import SCHEMA_VERSION, TraceStore, migrate
from tests.fake_upstream import Fault, Reply
from tests.helpers import PG_URL, fusion

PROMPT = "What is the capital of France?\nAnswer briefly."
VERDICT = {
    "analysis": {"consensus": ["both say Paris"], "contradictions": [],
                 "partial_coverage": ["only b gives population"],
                 "unique_insights": ["a: history"], "blind_spots": ["nobody: area"]},
    "answer": "Paris, with 2.1M people.",
}
SENTINEL_KEY = "sk-sentinel-trace-7f3a9c"


@pytest.fixture(autouse=True)
def _no_trace_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FUSION_TRACES_URL", raising=False)


@pytest.fixture
def store(url: str) -> Iterator[TraceStore]:
    s = TraceStore.open(url)
    yield s
    s.close()


async def fuse(config: Path, mode: str = "merge", models: tuple[str, ...] = ("fake:a", "fake:b"),
               **options: object) -> FusionResult:
    async with Fusion(list(models), judge="fake:judge", mode=mode, config=config,
                      retry_backoff=0.01, retries=0, seed=7, **options) as fusion:
        return await fusion.run(PROMPT)


async def fail(config: Path, upstream) -> AllMembersFailed:
    upstream.script("a", Fault("status", status=503))
    upstream.script("b", Fault("status", status=400, message="bad request for b"))
    with pytest.raises(AllMembersFailed) as info:
        await fuse(config)
    return info.value


def sqlite_bytes(url: str) -> bytes:
    """The database file and any journal beside it."""
    path = Path(url.removeprefix("sqlite:///"))
    return b"".join(p.read_bytes() for p in path.parent.glob(path.name + "*"))


# ---------------------------------------------------------------- round trips


async def test_fusion_and_failure_round_trip(store, upstream, fake_config):
    upstream.script("judge", Reply(json.dumps(VERDICT)))
    result = await fuse(fake_config)
    ok_id = store.record(result, messages=[{"role": "user", "content": PROMPT}],
                         source="library", preset="team")
    error = await fail(fake_config, upstream)
    failed_id = store.record(None, messages=PROMPT, source="cli", error=error, mode="merge")
    store.flush()

    newest, older = store.recent()
    assert (newest.id, older.id) == (failed_id, ok_id)
    assert older.created_at <= newest.created_at and older.created_at.tzinfo is not None
    assert (older.source, older.preset, older.mode, older.status) == ("library", "team",
                                                                      "merge", "ok")
    assert (older.members_ok, older.members_failed, older.degraded) == (2, 0, False)
    assert older.prompt_preview == "What is the capital of France?"
    assert older.total_ms == pytest.approx(result.timings.total_ms, abs=0.01)

    kept = store.get(ok_id)
    assert kept is not None and kept.messages is not None
    assert kept.messages[0].content == PROMPT
    assert kept.analysis is not None and kept.analysis.to_dict() == VERDICT["analysis"]
    assert kept.answer == VERDICT["answer"]
    expected = result.to_dict()
    assert {k: kept.to_dict()[k] for k in expected} == expected  # the --json contract, intact

    failed = store.get(failed_id)
    assert failed is not None
    assert (newest.status, newest.error_code, newest.members_failed) == ("failed",
                                                                        "all_members_failed", 2)
    assert failed.error_message == str(error) and "bad request for b" in str(error)
    assert [m.reason for m in failed.members] == ["upstream_error", "upstream_error"]
    assert failed.judge is None and failed.answer is None
    assert failed.to_dict()["error"]["code"] == "all_members_failed"


@pytest.mark.parametrize("mode", ["best-of", "vote", "debate"])
async def test_every_mode_keeps_what_its_result_holds(store, upstream, fake_config, mode):
    if mode == "best-of":
        upstream.script("judge", Reply('{"reason": "a is right", "choice": "A"}'))
    elif mode == "vote":
        upstream.script("a", "yes")
        upstream.script("b", "Yes.")
        upstream.script("c", "no")
    else:
        upstream.script("judge", Reply(json.dumps(VERDICT)))
    result = await fuse(fake_config, mode, models=("fake:a", "fake:b", "fake:c"))
    trace_id = store.record(result, messages=PROMPT, source="server")
    store.flush()
    kept = store.get(trace_id)
    assert kept is not None
    expected = result.to_dict()
    assert {k: kept.to_dict()[k] for k in expected} == expected
    if mode == "vote":
        assert kept.votes is not None and kept.votes.winner == "yes"
    if mode == "debate":
        assert kept.rounds is not None and len(kept.rounds) == 2


def test_prefix_lookup_and_ambiguous_prefix(store):
    result = _tiny_result()
    for trace_id in ("abc123", "abd456", "abd789"):
        store.record(result, messages="q", source="library", trace_id=trace_id)
    store.flush()
    assert store.get("abc").id == "abc123"  # unique prefix
    assert store.get("abd456").id == "abd456"  # exact id
    assert store.get("zz") is None
    assert store.get("a%") is None and store.get("a_c") is None  # LIKE wildcards are literal
    with pytest.raises(UsageError, match="matches several traces") as info:
        store.get("abd")
    assert "abd456" in str(info.value) and "abd789" in str(info.value)


def test_without_prompts_no_message_is_kept(sqlite_url):
    with TraceStore.open(sqlite_url, store_prompts=False) as store:
        trace_id = store.record(_tiny_result(), messages="my secret prompt", source="cli")
    with TraceStore.open(sqlite_url) as store:
        kept = store.get(trace_id)
        assert kept is not None and kept.messages is None
        assert store.recent()[0].prompt_preview is None
    path = sqlite_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT messages FROM traces").fetchall() == [(None,)]
    assert b"my secret prompt" not in sqlite_bytes(sqlite_url)


# ---------------------------------------------------------------- migration


def test_migration_is_idempotent_and_keeps_data(url):
    with TraceStore.open(url) as store:
        trace_id = store.record(_tiny_result(), messages="q", source="library")
    with TraceStore.open(url) as store:  # second open: migrate again, no error, data kept
        assert store.get(trace_id) is not None
        assert migrate(store.engine) == SCHEMA_VERSION
        with store.engine.connect() as conn:
            versions = conn.execute(text("SELECT version FROM schema_version")).scalars().all()
        assert versions == list(range(1, SCHEMA_VERSION + 1))


def test_replicas_starting_at_once_all_migrate(url):
    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True)
    engines = [create_engine(url.replace("postgresql://", "postgresql+psycopg://"))
               for _ in range(6)]
    barrier = threading.Barrier(len(engines))
    errors: list[BaseException] = []

    def start(engine) -> None:
        barrier.wait()
        try:
            migrate(engine)
        except BaseException as e:  # collected, asserted below
            errors.append(e)

    threads = [threading.Thread(target=start, args=(e,)) for e in engines]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    with engines[0].connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM schema_version")).scalar() == \
            SCHEMA_VERSION
    for engine in engines:
        engine.dispose()


def test_a_read_only_user_can_browse_and_its_writes_are_counted(pg_url):
    import psycopg

    with TraceStore.open(pg_url) as store:
        trace_id = store.record(_tiny_result(), messages="q", source="server")
    role = f"ro_{uuid.uuid4().hex[:8]}"
    schema = pg_url.rsplit("%3D", 1)[1]
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN")
        conn.execute(f"GRANT USAGE ON SCHEMA {schema} TO {role}")
        conn.execute(f"GRANT SELECT ON ALL TABLES IN SCHEMA {schema} TO {role}")
    try:
        as_role = make_url(pg_url).set(username=role, password=None)
        with TraceStore.open(as_role.render_as_string(hide_password=False)) as store:
            assert store.get(trace_id) is not None  # a current schema needs no DDL
            store.record(_tiny_result(), messages="q", source="server")
            store.flush()
            assert store.failed_writes == 1
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"DROP OWNED BY {role}")
            conn.execute(f"DROP ROLE {role}")


def test_a_newer_schema_is_refused(sqlite_url):
    TraceStore.open(sqlite_url).close()
    path = sqlite_url.removeprefix("sqlite:///")
    with sqlite3.connect(path) as conn:
        conn.execute("INSERT INTO schema_version VALUES (99, '2030-01-01 00:00:00')")
    with pytest.raises(UsageError, match="newer than this modelfusion"):
        TraceStore.open(sqlite_url)


# ---------------------------------------------------------------- safety


async def test_api_key_never_lands_in_the_database(upstream, tmp_path, sqlite_url, monkeypatch):
    monkeypatch.setenv("MF_TEST_KEY", SENTINEL_KEY)
    config = tmp_path / "fusion.toml"
    config.write_text(f'[providers.fake]\nbase_url = "{upstream.base_url}"\n'
                      'api_key_env = "MF_TEST_KEY"\n')
    upstream.script("judge", Reply(json.dumps(VERDICT)))
    upstream.script("b", Fault("status", status=401, message="invalid key"))
    result = await fuse(config)
    assert any(SENTINEL_KEY in r.headers.get("authorization", "") for r in upstream.requests)
    with TraceStore.open(sqlite_url) as store:
        store.record(result, messages=PROMPT, source="cli")
        error = await fail(config, upstream)
        store.record(None, messages=PROMPT, source="cli", error=error)
    data = sqlite_bytes(sqlite_url)
    assert b"answer from a" in data and b"invalid key" in data  # it reads the real bytes
    assert SENTINEL_KEY.encode() not in data


def test_record_returns_before_the_write_happens(sqlite_url, monkeypatch):
    store = TraceStore.open(sqlite_url)
    release, writing = threading.Event(), threading.Event()
    real_insert = store._insert

    def slow_insert(rows):
        writing.set()
        assert release.wait(10), "never released"
        real_insert(rows)

    monkeypatch.setattr(store, "_insert", slow_insert)
    trace_id = store.record(_tiny_result(), messages="q", source="server")
    # record() came back while the database write is still held up.
    assert writing.wait(5)
    assert store.recent() == []
    release.set()
    store.flush()
    assert [s.id for s in store.recent()] == [trace_id]
    store.close()


def test_a_failing_write_is_counted_and_logged_never_raised(sqlite_url, monkeypatch, caplog):
    store = TraceStore.open(sqlite_url)

    def broken(rows):
        raise exc.OperationalError("INSERT", {}, Exception("disk I/O error"))

    monkeypatch.setattr(store, "_insert", broken)
    trace_id = store.record(_tiny_result(), messages="q", source="server")
    store.flush()
    assert store.failed_writes == 1 and isinstance(trace_id, str)
    assert "disk I/O error" in caplog.text
    store.close()


def test_one_bad_row_does_not_sink_the_others(url):
    with TraceStore.open(url) as store:
        hold = threading.Event()
        real_insert = store._insert

        def held(rows):
            hold.wait(5)
            real_insert(rows)

        store._insert = held  # type: ignore[method-assign]  # queue up a batch behind it
        store.record(_tiny_result(), messages="first", source="library", trace_id="dup1")
        store.record(_tiny_result(), messages="dup", source="library", trace_id="dup1")
        store.record(_tiny_result(), messages="other", source="library", trace_id="other1")
        hold.set()
        store.flush()
        assert store.failed_writes == 1
        assert sorted(s.id for s in store.recent()) == ["dup1", "other1"]


def test_a_stuck_database_bounds_the_queue(sqlite_url, monkeypatch, caplog):
    monkeypatch.setattr(traces, "MAX_QUEUED", 3)
    store = TraceStore.open(sqlite_url)
    release = threading.Event()
    real_insert = store._insert
    monkeypatch.setattr(store, "_insert", lambda rows: (release.wait(10), real_insert(rows)))
    ids = [store.record(_tiny_result(), messages="q", source="server") for _ in range(5)]
    assert store.failed_writes == 2 and "dropped" in caplog.text
    release.set()
    store.close()
    with TraceStore.open(sqlite_url) as again:
        assert {s.id for s in again.recent()} == set(ids[:3])


def test_close_drains_the_queue(sqlite_url):
    store = TraceStore.open(sqlite_url)
    ids = [store.record(_tiny_result(), messages=f"q{i}", source="library") for i in range(50)]
    store.close()
    store.close()  # idempotent
    assert store.record(_tiny_result(), messages="late", source="library")  # dropped, counted
    assert store.failed_writes == 1
    with TraceStore.open(sqlite_url) as again:
        assert {s.id for s in again.recent(100)} == set(ids)


def test_caller_mistakes_raise_value_error(sqlite_url):
    with TraceStore.open(sqlite_url) as store:
        with pytest.raises(ValueError, match="source"):
            store.record(_tiny_result(), messages="q", source="web")
        with pytest.raises(ValueError, match="error="):
            store.record(None, messages="q", source="cli")
        with pytest.raises(ValueError, match="trace_id"):
            store.record(_tiny_result(), messages="q", source="cli", trace_id="no spaces")


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("not a url", "not a database URL"),
        ("postgresql://fusion:hunter2@127.0.0.1:9/x", "cannot open the trace store"),
        ("mysql://fusion:hunter2@127.0.0.1/x", "driver is not installed"),
    ],
)
def test_bad_or_unreachable_database_is_a_clear_usage_error(bad, message):
    with pytest.raises(UsageError, match=message) as info:
        TraceStore.open(bad)
    assert "hunter2" not in str(info.value)
    assert "sqlite:///" in str(info.value) or "127.0.0.1" in str(info.value)


def test_default_store_lives_in_the_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("MODELFUSION_HOME", str(tmp_path / "home"))
    with TraceStore.open() as store:
        store.record(_tiny_result(), messages="q", source="library")
    assert (tmp_path / "home" / "data" / "traces.db").is_file()
    monkeypatch.setenv("FUSION_TRACES_URL", f"sqlite:///{tmp_path / 'env.db'}")
    TraceStore.open().close()
    assert (tmp_path / "env.db").is_file()


# ---------------------------------------------------------------- the CLI


def fusion_cmd(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return fusion(*args, home=str(home))


async def test_log_and_show(upstream, fake_config, sqlite_url, tmp_path):
    home = tmp_path / "home"
    empty = fusion_cmd("log", "--db", sqlite_url, home=home)
    assert empty.returncode == 0, empty.stderr
    assert "No fusions recorded yet" in empty.stdout and "fusion ask" in empty.stdout

    upstream.script("a", "Paris is the capital.")
    upstream.script("b", "It is Paris; 2.1M people live there.")
    upstream.script("judge", Reply(json.dumps(VERDICT)))
    result = await fuse(fake_config)
    with TraceStore.open(sqlite_url) as store:
        ok_id = store.record(result, messages=PROMPT, source="cli", preset="team")
        failed_id = store.record(None, messages="doomed question", source="cli", mode="merge",
                                 error=await fail(fake_config, upstream))

    log = fusion_cmd("log", "--db", sqlite_url, home=home)
    assert log.returncode == 0, log.stderr
    lines = log.stdout.splitlines()
    ok_line = next(line for line in lines if ok_id[:8] in line)
    assert "team" in ok_line and "merge" in ok_line and "2 ok" in ok_line
    assert "What is the capital of France?" in ok_line and "Answer briefly" not in ok_line
    assert "failed (2)" in next(line for line in lines if failed_id[:8] in line)
    assert lines.index(next(line for line in lines if failed_id[:8] in line)) < \
        lines.index(ok_line)  # newest first

    as_json = json.loads(fusion_cmd("log", "--db", sqlite_url, "--json", "-n", "1",
                                    home=home).stdout)
    assert [row["id"] for row in as_json] == [failed_id]

    show = fusion_cmd("show", ok_id[:8], "--db", sqlite_url, home=home)
    assert show.returncode == 0, show.stderr
    for expected in ("fake:a", "fake:b", "Paris is the capital.", "2.1M people live there",
                     "judge fake:judge", "consensus", "both say Paris", "blind spots",
                     "Paris, with 2.1M people.", ok_id):
        assert expected in show.stdout, expected

    shown = json.loads(fusion_cmd("show", ok_id, "--db", sqlite_url, "--json",
                                  home=home).stdout)
    assert shown["answer"] == VERDICT["answer"] and shown["messages"][0]["content"] == PROMPT

    failed = fusion_cmd("show", failed_id[:8], "--db", sqlite_url, home=home)
    assert failed.returncode == 0 and "all_members_failed" in failed.stdout
    assert "bad request for b" in failed.stdout


def test_show_unknown_id_and_bad_db_exit_2(sqlite_url, tmp_path):
    home = tmp_path / "home"
    unknown = fusion_cmd("show", "deadbeef", "--db", sqlite_url, home=home)
    assert unknown.returncode == 2
    assert "no trace with id 'deadbeef'" in unknown.stderr and "Traceback" not in unknown.stderr
    bad = fusion_cmd("log", "--db", "postgresql://u:hunter2@127.0.0.1:9/x", home=home)
    assert bad.returncode == 2 and "cannot open the trace store" in bad.stderr
    assert "hunter2" not in bad.stderr and "Traceback" not in bad.stderr


def test_ask_is_kept_and_log_shows_it(upstream, fake_config, tmp_path):
    home = tmp_path / "home"
    upstream.script("judge", Reply(json.dumps(VERDICT)))
    base = ["ask", "-m", "fake:a", "-m", "fake:b", "--judge", "fake:judge",
            "--config", str(fake_config)]
    asked = fusion_cmd(*base, "keep this question", home=home)
    assert asked.returncode == 0, asked.stderr
    private = fusion_cmd(*base, "--no-store-prompts", "private question", home=home)
    assert private.returncode == 0, private.stderr
    upstream.script("a", Fault("status", status=400))
    upstream.script("b", Fault("status", status=400))
    assert fusion_cmd(*base, "doomed question", home=home).returncode == 1

    rows = json.loads(fusion_cmd("log", "--json", home=home).stdout)
    assert [(r["status"], r["source"], r["prompt_preview"]) for r in rows] == [
        ("failed", "cli", "doomed question"), ("ok", "cli", None),
        ("ok", "cli", "keep this question")]
    assert b"private question" not in (home / "data" / "traces.db").read_bytes()


def test_log_reads_the_default_store(tmp_path, monkeypatch):
    home = tmp_path / "home"
    monkeypatch.setenv("MODELFUSION_HOME", str(home))
    with TraceStore.open() as store:
        trace_id = store.record(_tiny_result(), messages="from the default store",
                                source="library")
    proc = fusion_cmd("log", home=home)
    assert proc.returncode == 0, proc.stderr
    assert trace_id[:8] in proc.stdout and "from the default store" in proc.stdout


# ---------------------------------------------------------------- helpers


def _tiny_result() -> FusionResult:
    """For tests about storage mechanics only; the round trips above use real fusions."""
    from modelfusion import JudgeResult, MemberResult, Usage

    member = MemberResult(0, "fake:a", status="ok", content="hi", usage=Usage(3, 1))
    return FusionResult(answer="hi", mode="best-of", members=[member],
                        judge=JudgeResult("fake:judge", status="skipped",
                                          reason="single_candidate"))

"""What a trace lets others read (issue 12, items 9 and 16).

Item 9: with several keys, a key reads only the traces it made (list, by id, by prefix);
an admin key (FUSION_ADMIN_KEYS) reads every one; a keyless server still shows all. The
store keeps the key's id, never the key. Real server, loopback fake upstream, SQLite and
(with MODELFUSION_TEST_PG_URL) PostgreSQL.

Item 16: `--no-store-prompts` keeps no request text, verified mode's checks included.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import inspect, text
from starlette.testclient import TestClient
from typer.testing import CliRunner

from modelfusion import FusionResult, JudgeResult, MemberResult
from modelfusion.cli import app as cli_app
from modelfusion.server.auth import key_id
from modelfusion.traces.store import SCHEMA_VERSION, TraceStore
from tests.fake_upstream import FakeUpstream
from tests.helpers import WRONG, Served, fusion

KEY_A, KEY_B, ADMIN = "key-alice-5c1e", "key-bob-93d0", "key-admin-e2a7"
SECRET_A = "alice's secret plan: 7f41c0"
SECRET_B = "bob's own question: 0a9be3"


def ask(served: Served, key: str, prompt: str, *, stream: bool = False) -> str:
    """One fusion as `key`; its trace id."""
    body = {"model": "fusion", "messages": [{"role": "user", "content": prompt}],
            "stream": stream}
    r = served.post(body, headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    if not stream:
        return str(r.json()["fusion"]["trace_id"])
    done = [json.loads(f.removeprefix(": fusion ")) for f in r.text.split("\n\n")
            if f.startswith(": fusion ") and '"type":"done"' in f]
    return str(done[0]["trace_id"])


def get(served: Served, path: str, key: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.get(f"{served.v1}/fusion/traces{path}", headers=headers, timeout=30)


def listed(served: Served, key: str | None) -> set[str]:
    r = get(served, "?limit=500", key)
    assert r.status_code == 200, r.text
    return {t["id"] for t in r.json()["data"]}


# ---------------------------------------------------------------- item 9: the server


def test_a_key_reads_only_its_own_traces(serve: Callable[..., Served]):
    served = serve(api_keys=(KEY_A, KEY_B))
    a_json, a_sse = ask(served, KEY_A, SECRET_A), ask(served, KEY_A, SECRET_A, stream=True)
    b = ask(served, KEY_B, SECRET_B)
    assert served.store is not None
    served.store.flush()

    assert listed(served, KEY_A) == {a_json, a_sse}
    assert listed(served, KEY_B) == {b}
    for trace_id in (a_json, a_sse):
        for path in (trace_id, trace_id[:6]):  # by id and by prefix
            r = get(served, f"/{path}", KEY_B)
            # The same 404 as an id that does not exist: B learns nothing of A's traces.
            assert r.status_code == 404 and r.json()["error"]["code"] == "trace_not_found"
            assert SECRET_A not in r.text
        mine = get(served, f"/{trace_id}", KEY_A)
        assert mine.status_code == 200 and SECRET_A in mine.text
    assert SECRET_A not in get(served, "?limit=500", KEY_B).text


def test_an_admin_key_reads_every_trace(serve: Callable[..., Served]):
    served = serve(api_keys=(KEY_A, KEY_B), admin_keys=(ADMIN,))
    a, b = ask(served, KEY_A, SECRET_A), ask(served, KEY_B, SECRET_B)
    ask(served, ADMIN, "the admin may ask too")
    assert served.store is not None
    served.store.flush()
    assert len(listed(served, ADMIN)) == 3 and listed(served, KEY_A) == {a}
    # The owner a trace shows is the key's id, not the key.
    shown = get(served, f"/{b}", ADMIN).json()
    assert shown["owner"] == key_id(KEY_B) and SECRET_B in json.dumps(shown)
    assert key_id(KEY_A) != key_id(KEY_B) and KEY_B not in key_id(KEY_B)


def test_the_database_holds_key_ids_never_keys(serve: Callable[..., Served], tmp_path: Path):
    served = serve(api_keys=(KEY_A,), admin_keys=(ADMIN,))
    trace_id = ask(served, KEY_A, SECRET_A)
    assert served.store is not None
    served.store.flush()
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("traces0.db*"))
    assert trace_id.encode() in raw and key_id(KEY_A).encode() in raw
    assert KEY_A.encode() not in raw and ADMIN.encode() not in raw


def test_without_keys_every_caller_reads_every_trace(served: Served):
    # Auth off (the loopback default): nobody is told apart, so traces stay shared.
    trace_id = ask(served, "anything", SECRET_A)
    assert served.store is not None
    served.store.flush()
    assert trace_id in listed(served, None)
    assert get(served, f"/{trace_id}", None).json()["owner"] is None


def test_fusion_serve_reads_the_admin_keys(monkeypatch: pytest.MonkeyPatch,
                                          server_config: Path):
    """`fusion serve` through the real CLI up to uvicorn.Server.run; then its app."""
    apps: list[Any] = []
    monkeypatch.setattr(uvicorn.Server, "run",
                        lambda server, *a, **kw: apps.append(server.config.app))
    monkeypatch.setenv("FUSION_ADMIN_KEYS", f" {ADMIN} ,")
    # An admin key alone turns auth on, so a public bind needs no --insecure.
    result = CliRunner().invoke(cli_app, ["serve", "--config", str(server_config),
                                          "--host", "0.0.0.0"])
    assert result.exit_code == 0, result.output
    assert "auth on" in result.output and "each key reads its own" in result.output
    client = TestClient(apps[-1], base_url="http://127.0.0.1")
    assert client.get("/v1/fusion/traces").status_code == 401
    ok = client.get("/v1/fusion/traces", headers={"Authorization": f"Bearer {ADMIN}"})
    assert ok.status_code == 200 and ok.json()["data"] == []


# ---------------------------------------------------------------- item 9: the store


def _result() -> FusionResult:
    return FusionResult(answer="a", mode="best-of",
                        members=[MemberResult(index=0, model="fake:a", status="ok",
                                              content="a")],
                        judge=JudgeResult(model="fake:a", status="skipped"))


def test_the_store_scopes_reads_by_owner(url: str):
    with TraceStore.open(url) as store:
        for trace_id, owner in (("dup1", "alice"), ("dup2", "alice"), ("dupb", "bob"),
                                ("cli1", None)):
            store.record(_result(), messages="q", source="library", trace_id=trace_id,
                         owner=owner)
        store.flush()
        assert {s.id for s in store.recent(owner="bob")} == {"dupb"}
        assert {s.id for s in store.recent(owner="alice")} == {"dup1", "dup2"}
        assert {s.id for s in store.recent()} == {"dup1", "dup2", "dupb", "cli1"}
        # A prefix that is ambiguous among alice's traces is bob's one match: no error
        # that would list alice's ids to him.
        found = store.get("dup", owner="bob")
        assert found is not None and found.id == "dupb" and found.summary.owner == "bob"
        assert store.get("dup1", owner="bob") is None and store.get("cli1", owner="bob") is None
        assert store.get("dup1", owner="alice") is not None
        with pytest.raises(Exception, match="several traces"):
            store.get("dup", owner="alice")


def test_a_v3_store_migrates_and_old_traces_have_no_owner(url: str):
    with TraceStore.open(url) as store:
        store.record(_result(), messages="q", source="library", trace_id="old1")
        engine = store.engine  # the store's engine: its driver and search path
    with engine.begin() as conn:  # a v3 store: no `owner` column, nor its index
        conn.execute(text("DROP INDEX ix_traces_owner_created_at"))
        conn.execute(text("ALTER TABLE traces DROP COLUMN owner"))
        conn.execute(text("DELETE FROM schema_version WHERE version > 3"))
    engine.dispose()
    with TraceStore.open(url) as store:
        store.record(_result(), messages="q", source="library", trace_id="new1", owner="k")
        store.flush()
        assert [s.id for s in store.recent(owner="k")] == ["new1"]
        assert {s.id for s in store.recent()} == {"old1", "new1"}  # admins see old ones
        with store.engine.connect() as conn:
            versions = conn.execute(text("SELECT version FROM schema_version")).scalars().all()
            indexes = {i["name"] for i in inspect(conn).get_indexes("traces")}
    assert "ix_traces_owner_created_at" in indexes
    assert sorted(versions) == list(range(1, SCHEMA_VERSION + 1)) and SCHEMA_VERSION == 4


# ---------------------------------------------------------------- item 16: verified's checks

# A request whose doctest holds literals found nowhere else: if any of them is stored, the
# request's text is.
LITERAL = "90817"
CHECKED = f'''def add_one(xs):
    """Add one to every element.
    >>> add_one([{LITERAL}, 1])
    [90818, 2]
    """
'''
RIGHT = "```python\ndef add_one(xs):\n    return [x + 1 for x in xs]\n```"


def test_no_store_prompts_keeps_no_check_text(serve: Callable[..., Served],
                                              upstream: FakeUpstream, tmp_path: Path):
    served = serve(store_prompts=False)
    upstream.script("alpha", WRONG)  # fails: its output is the input, [90817, 1]
    upstream.script("beta", RIGHT)
    body = {"model": "fusion", "messages": [{"role": "user", "content": CHECKED}],
            "fusion": {"models": ["fake:alpha", "fake:beta"], "mode": "verified"}}
    reply = served.post(body)
    assert reply.status_code == 200, reply.text
    answered = reply.json()["fusion"]
    assert LITERAL in json.dumps(answered["checks"])  # the caller is shown everything
    assert served.store is not None
    served.store.flush()

    kept = get(served, f"/{answered['trace_id']}", None).json()
    checks = kept["checks"]
    assert kept["messages"] is None and LITERAL not in json.dumps(kept)
    # What stays: counts, who passed, each check's pass/fail, the rule.
    assert checks["total"] == 1 and checks["passing"] == [1] and checks["rule"] == "one_passed"
    assert [(c["passed"], c["total"]) for c in checks["candidates"]] == [(0, 1), (1, 1)]
    assert [[r["ok"] for r in c["results"]] for c in checks["candidates"]] == [[False], [True]]
    assert all(r["check"] == "" and r["expected"] is None and r["actual"] is None
               for c in checks["candidates"] for r in c["results"])
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("traces0.db*"))
    assert answered["trace_id"].encode() in raw and LITERAL.encode() not in raw


def test_the_cli_keeps_no_check_text_either(upstream: FakeUpstream, fake_config: Path,
                                            tmp_path: Path):
    upstream.script("alpha", WRONG)
    home = str(tmp_path / "home")
    proc = fusion("ask", "--no-store-prompts", "--config", str(fake_config), "-m",
                  "fake:alpha", "--mode", "verified", "--json", "-", stdin=CHECKED, home=home)
    assert proc.returncode == 0, proc.stderr
    assert LITERAL in proc.stdout  # printed, not kept
    trace_id = json.loads(fusion("log", "--json", "-n", "1", home=home).stdout)[0]["id"]
    shown = fusion("show", "--json", trace_id, home=home)
    assert shown.returncode == 0 and LITERAL not in shown.stdout
    assert json.loads(shown.stdout)["checks"]["candidates"][0]["passed"] == 0

"""`fusion mcp` as an MCP client meets it: the official SDK's stdio client spawns
`python -m modelfusion mcp` against the loopback fake upstream."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.fake_upstream import FakeUpstream, Fault, Reply
from tests.helpers import DIFF

mcp = pytest.importorskip("mcp", reason="pip install 'modelfusion[mcp]'")
from mcp import ClientSession  # noqa: E402
from mcp.client.stdio import StdioServerParameters, stdio_client  # noqa: E402

VERDICT = Reply('{"reason": "B says it plainly", "choice": "B"}')
CALL_SECONDS = 60  # every exchange with the server is bounded


def server(config: Path, home: Path, *extra: str) -> StdioServerParameters:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("FUSION_", "OPENAI_", "OPENROUTER_"))}
    env["MODELFUSION_HOME"] = str(home)
    return StdioServerParameters(command=sys.executable,
                                 args=["-m", "modelfusion", "mcp", "--config", str(config),
                                       *extra], env=env)


@asynccontextmanager
async def session(params: StdioServerParameters) -> AsyncIterator[ClientSession]:
    async with asyncio.timeout(CALL_SECONDS):
        async with stdio_client(params) as (read, write), \
                ClientSession(read, write, read_timeout_seconds=CALL_SECONDS) as s:
            await s.initialize()
            yield s


def text_of(result: Any) -> list[str]:
    return [c.text for c in result.content]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


async def test_lists_fuse_and_review_with_their_arguments(fake_config, home):
    async with session(server(fake_config, home)) as s:
        tools = {t.name: t for t in (await s.list_tools()).tools}
    assert set(tools) == {"fuse", "review"}
    fuse = tools["fuse"].input_schema
    assert fuse["required"] == ["prompt"]
    assert {"models", "judge", "mode", "preset", "max_samples", "effort"} <= set(
        fuse["properties"])
    assert "best-of" in fuse["properties"]["mode"]["description"]
    assert tools["review"].input_schema["required"] == ["diff"]


async def test_fuse_runs_the_panel_and_reports_each_member(upstream: FakeUpstream,
                                                           fake_config, home):
    upstream.script("a", "four")
    upstream.script("b", "4")
    upstream.script("c", Fault("status", status=500), Fault("status", status=500),
                    Fault("status", status=500))
    upstream.script("judge", VERDICT)
    notes: list[str | None] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        notes.append(message)

    async with session(server(fake_config, home)) as s:
        result = await s.call_tool("fuse", {
            "prompt": "What is 2+2?", "models": ["fake:a", "fake:b", "fake:c"],
            "judge": "fake:judge", "mode": "best-of"}, progress_callback=on_progress)
    assert not result.is_error, text_of(result)
    answer, footer = text_of(result)
    data = result.structured_content
    # The judge picks label B; which member wears it is the per-run shuffle's choice.
    assert data["chosen"] in ("fake:a", "fake:b") and data["reason"] == "B says it plainly"
    assert answer == data["answer"] == {"fake:a": "four", "fake:b": "4"}[data["chosen"]]
    assert data["mode"] == "best-of"
    assert [(m["model"], m["status"]) for m in data["members"]] == [
        ("fake:a", "ok"), ("fake:b", "ok"), ("fake:c", "failed")]
    assert data["members"][2]["reason"] == "upstream_error"
    assert "content" not in data["members"][0]  # answers stay in the trace unless asked
    assert data["judge"]["status"] == "ok"
    assert data["usage"]["completion_tokens"] > 0
    assert data["trace_id"] and f"trace {data['trace_id']}" in footer
    assert "2/3 members ok" in footer and "fake:c: failed (upstream_error)" in footer
    assert f"chosen: {data['chosen']} (B says it plainly)" in footer
    assert any(m and m.startswith("fake:a answered") for m in notes)
    assert "judge fake:judge deciding" in notes
    assert [r.model for r in upstream.requests].count("judge") == 1


async def test_fuse_with_a_preset_and_members_answers(upstream: FakeUpstream, tmp_path, home):
    config = tmp_path / "fusion.toml"
    config.write_text(f'[providers.fake]\nbase_url = "{upstream.base_url}"\n\n'
                      '[presets.trio]\nmodels = ["fake:a", "fake:b", "fake:c"]\n'
                      'judge = "fake:judge"\nmode = "vote"\n')
    for name, label in (("a", "yes"), ("b", "yes"), ("c", "no")):
        upstream.script(name, label)
    async with session(server(config, home, "--no-traces")) as s:
        result = await s.call_tool("fuse", {"prompt": "Ship it?", "preset": "trio",
                                            "show_members": True})
    assert not result.is_error, text_of(result)
    data = result.structured_content
    assert data["answer"] == "yes" and data["votes"]["winner"] == "yes"
    assert [m["content"] for m in data["members"]] == ["yes", "yes", "no"]
    assert data["trace_id"] is None
    assert "votes: yes: 2 of 3" in text_of(result)[1]


@pytest.mark.parametrize(("arguments", "message"), [
    ({"prompt": "hi", "models": ["fake:a"], "mode": "nope"}, "unknown mode 'nope'"),
    ({"prompt": "hi", "models": ["nosuch:model"]}, "nosuch"),
    ({"prompt": "   ", "models": ["fake:a"]}, "the prompt is empty"),
    ({"prompt": "hi", "models": ["fake:a"], "max_samples": "many"}, "max_samples"),
    ({"prompt": "hi", "models": ["fake:a"], "effort": "huge"}, "effort must be one of low"),
])
async def test_bad_input_is_a_tool_error_that_says_what_is_wrong(upstream, fake_config, home,
                                                                 arguments, message):
    async with session(server(fake_config, home)) as s:
        result = await s.call_tool("fuse", arguments)
    assert result.is_error
    (text,) = text_of(result)
    assert message in text and "Traceback" not in text
    assert "--" not in text  # arguments are named as the tool names them, not as CLI flags
    assert upstream.requests == []


async def test_a_fusion_whose_members_all_fail_names_each_failure(upstream, fake_config, home):
    for name in ("a", "b"):
        upstream.script(name, *[Fault("status", status=401)] * 3)
    async with session(server(fake_config, home)) as s:
        result = await s.call_tool("fuse", {"prompt": "hi", "models": ["fake:a", "fake:b"]})
    assert result.is_error
    (text,) = text_of(result)
    assert "fusion failed (all_members_failed)" in text and "Traceback" not in text
    assert "fake:a: upstream_error (HTTP 401" in text and "fake:b: upstream_error" in text
    assert "\ntrace " in text


def about_calc(*items: dict[str, Any]) -> Any:
    def reply(req: Any) -> Reply:
        on_calc = "File: calc.py" in req.messages[-1]["content"]
        return Reply(json.dumps({"findings": list(items) if on_calc else []}))

    return reply


OFF_BY_ONE = {"file": "calc.py", "line": 3, "severity": "high", "category": "bug",
              "message": "range stops one early: the last item is skipped",
              "suggestion": "use range(len(xs))"}


async def test_review_returns_the_merged_findings_of_a_diff(upstream, fake_config, home):
    upstream.script("a", about_calc(OFF_BY_ONE))
    upstream.script("b", about_calc({**OFF_BY_ONE, "line": 4}))
    upstream.script("judge", "not json")  # the documented fallback: grouping by place
    async with session(server(fake_config, home)) as s:
        result = await s.call_tool("review", {"diff": DIFF, "models": ["fake:a", "fake:b"],
                                              "judge": "fake:judge"})
        broken = await s.call_tool("review", {"diff": "--- a/x\n+++ b/x\n@@ -1,3 +1,3 @@\n a\n",
                                              "models": ["fake:a"]})
    assert not result.is_error, text_of(result)
    data = result.structured_content
    assert [(f["file"], f["line"], f["agreed_by"]) for f in data["findings"]] == [
        ("calc.py", 3, 2)]
    assert data["summary"]["chunks"] == 2 and data["summary"]["failed"] == 0
    (report,) = text_of(result)
    assert report.startswith("## modelfusion review") and "range stops one early" in report
    assert broken.is_error and "not a unified diff" in text_of(broken)[0]


def test_without_the_sdk_the_command_says_how_to_install_it(fake_config, home):
    code = ("import sys; sys.modules['mcp'] = None; sys.argv = ['fusion', 'mcp']\n"
            "from modelfusion.cli import main; main()")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FUSION_")}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**env, "MODELFUSION_HOME": str(home)}, timeout=60)
    assert proc.returncode == 2
    assert "pip install 'modelfusion[mcp]'" in proc.stderr and proc.stdout == ""

"""Skills packs: loading, repo instruction files, and injection — the pack's text reaches
every member's system prompt and its rubric reaches the judge, from the library, a preset,
the CLI and the server request alike."""

from __future__ import annotations

import json

import pytest

from modelfusion import Fusion, UsageError
from modelfusion.config import load_config
from modelfusion.fusion import ProviderPool
from modelfusion.server.errors import ApiError
from modelfusion.server.resolve import prepare
from modelfusion.server.schemas import parse_chat_request
from modelfusion.server.settings import ServerSettings
from modelfusion.skills import (
    REPO_MAX_CHARS,
    Skill,
    available_skills,
    load_skill,
    parse_skill,
    repo_instructions,
)
from tests.fake_upstream import FakeUpstream, Reply
from tests.helpers import fusion

CODING = load_skill("coding")
VERDICT = Reply('{"reason": "A is right", "choice": "A"}')


def system_of(req) -> str:
    return "\n".join(m["content"] for m in req.messages if m["role"] == "system")


def member_and_judge(up: FakeUpstream) -> tuple[list, list]:
    members = [r for r in up.requests if r.model != "judge"]
    judges = [r for r in up.requests if r.model == "judge"]
    return members, judges


# ---- loading ----


def test_coding_pack_ships_with_instructions_and_rubric():
    assert "coding" in available_skills()
    assert CODING.name == "coding"
    for rule in ("Think before you code", "Simplicity first", "Surgical changes",
                 "Goal-driven execution"):
        assert rule in CODING.instructions
    assert "smallest correct change" in CODING.rubric
    assert "## " not in CODING.instructions and "## " not in CODING.rubric


def test_unknown_skill_is_a_usage_error_listing_the_known_ones(fake_config, upstream):
    with pytest.raises(UsageError, match=r"unknown skill 'nope'; available: .*coding"):
        load_skill("nope")
    with pytest.raises(UsageError, match="unknown skill"):
        Fusion(["fake:a"], config=fake_config, skills=("nope",))
    assert upstream.requests == []


def test_a_pack_without_instructions_is_refused():
    with pytest.raises(UsageError, match="no '## Instructions'"):
        parse_skill("x", "# x\n\n## Rubric\nbe nice\n")
    assert parse_skill("x", "## Instructions\ndo it\n") == Skill("x", "do it", "")


def test_repo_instructions_walk_up_to_the_git_root(tmp_path):
    (tmp_path / "CLAUDE.md").write_text("OUTSIDE the repo")
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    (repo / "CLAUDE.md").write_text("root rule: tabs never")
    deep = repo / "pkg" / "sub"
    deep.mkdir(parents=True)
    (repo / "pkg" / "AGENTS.md").write_text("pkg rule: no globals")
    skill = repo_instructions(deep)
    assert skill is not None and skill.name == "repo"
    text = skill.instructions
    assert "root rule" in text and "pkg rule" in text and "OUTSIDE" not in text
    assert text.index("root rule") < text.index("pkg rule")  # nearer file last
    assert "pkg rule" in skill.rubric
    assert repo_instructions(tmp_path / "repo" / "pkg" / "sub") == skill
    empty = tmp_path / "other"
    (empty / ".git").mkdir(parents=True)
    assert repo_instructions(empty) is None


def test_repo_instructions_are_capped_with_a_note(tmp_path):
    (tmp_path / ".git").mkdir()
    (tmp_path / "AGENTS.md").write_text("x" * (REPO_MAX_CHARS + 500))
    skill = repo_instructions(tmp_path)
    assert skill is not None
    assert f"[truncated: AGENTS.md is {REPO_MAX_CHARS + 500} characters" in skill.instructions
    assert skill.instructions.count("x") <= REPO_MAX_CHARS + 10


# ---- injection ----


async def test_pack_reaches_every_member_and_rubric_reaches_the_judge(upstream, fake_config):
    upstream.script("judge", VERDICT)
    async with Fusion(["fake:a", "fake:b"], judge="fake:judge", mode="best-of",
                      config=fake_config, skills=("coding",), system="Be brief.") as f:
        result = await f.run("fix the bug in f()")
    assert result.judge.status == "ok"
    members, judges = member_and_judge(upstream)
    assert len(members) == 2
    for req in members:
        system = system_of(req)
        assert system.startswith("Be brief.")  # the caller's system prompt stays first
        assert CODING.instructions in system
        assert CODING.rubric not in system
    (judge,) = judges
    assert CODING.rubric in system_of(judge)
    assert CODING.instructions not in json.dumps(judge.messages)


async def test_without_skills_nothing_is_added(upstream, fake_config):
    upstream.script("judge", VERDICT)
    async with Fusion(["fake:a", "fake:b"], judge="fake:judge", mode="best-of",
                      config=fake_config) as f:
        await f.run("hello")
    members, judges = member_and_judge(upstream)
    assert all(system_of(r) == "" for r in members)
    assert "Rubric" not in system_of(judges[0])


async def test_a_preset_can_name_skills(upstream, tmp_path):
    cfg = tmp_path / "fusion.toml"
    cfg.write_text(f'[providers.fake]\nbase_url = "{upstream.base_url}"\n'
                   '[presets.careful]\nmodels = ["fake:a", "fake:b"]\njudge = "fake:judge"\n'
                   'mode = "best-of"\nskills = ["coding"]\n')
    upstream.script("judge", VERDICT)
    async with Fusion(preset="careful", config=cfg) as f:
        await f.run("hello")
    members, judges = member_and_judge(upstream)
    assert all(CODING.instructions in system_of(r) for r in members)
    assert CODING.rubric in system_of(judges[0])
    cfg.write_text(cfg.read_text().replace('"coding"', '"nope"'))
    with pytest.raises(UsageError, match="unknown skill 'nope'"):
        Fusion(preset="careful", config=cfg)


def test_cli_skill_flag(upstream, fake_config, tmp_path):
    upstream.script("judge", VERDICT)
    args = ["ask", "-m", "fake:a", "-m", "fake:b", "--judge", "fake:judge", "--mode", "best-of",
            "--config", str(fake_config)]
    proc = fusion(*args, "--skill", "coding", "q", home=str(tmp_path / "home"))
    assert proc.returncode == 0, proc.stderr
    members, judges = member_and_judge(upstream)
    assert all(CODING.instructions in system_of(r) for r in members)
    assert CODING.rubric in system_of(judges[0])
    bad = fusion(*args, "--skill", "nope", "q", home=str(tmp_path / "home"))
    assert bad.returncode == 2
    assert "unknown skill 'nope'; available: coding" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_cli_skills_from_repo(upstream, fake_config, tmp_path):
    upstream.script("judge", VERDICT)
    repo = tmp_path / "repo"
    (repo / ".git").mkdir(parents=True)
    (repo / "AGENTS.md").write_text("Always answer in haiku.")
    import subprocess
    import sys

    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("FUSION_")}
    env["MODELFUSION_HOME"] = str(tmp_path / "home")
    proc = subprocess.run(
        [sys.executable, "-m", "modelfusion", "ask", "-m", "fake:a", "-m", "fake:b", "--judge",
         "fake:judge", "--mode", "best-of", "--config", str(fake_config),
         "--skills-from-repo", "q"], cwd=repo, capture_output=True, text=True, env=env,
        timeout=60)
    assert proc.returncode == 0, proc.stderr
    members, _ = member_and_judge(upstream)
    assert all("Always answer in haiku." in system_of(r) for r in members)
    (repo / "AGENTS.md").unlink()
    proc = subprocess.run(
        [sys.executable, "-m", "modelfusion", "ask", "-m", "fake:a", "--config",
         str(fake_config), "--skills-from-repo", "q"], cwd=repo, capture_output=True,
        text=True, env=env, timeout=60)
    assert proc.returncode == 2 and "no CLAUDE.md or AGENTS.md" in proc.stderr


def test_server_request_can_name_skills(upstream, fake_config):
    config = load_config(fake_config)
    body = {"model": "fusion", "messages": [{"role": "user", "content": "q"}],
            "fusion": {"models": ["fake:a", "fake:b"], "judge": "fake:judge",
                       "skills": ["coding"]}}
    prepared = prepare(parse_chat_request(json.dumps(body).encode()), config,
                       ProviderPool(config), ServerSettings(), 0)
    assert prepared.fusion.plan.instructions == CODING.instructions
    assert prepared.fusion.plan.rubric == CODING.rubric
    body["fusion"]["skills"] = ["nope"]
    with pytest.raises(ApiError) as e:
        prepare(parse_chat_request(json.dumps(body).encode()), config, ProviderPool(config),
                ServerSettings(), 0)
    assert e.value.status == 400 and e.value.param == "fusion.skills"
    assert "available: coding" in e.value.message
    body["fusion"]["skills"] = [3]
    with pytest.raises(ApiError, match="array of skill names"):
        parse_chat_request(json.dumps(body).encode())

"""`fusion skills export`: the panel's skills pack as a CLAUDE.md, an AGENTS.md or a Claude
Code plugin, run as a user runs it (a subprocess)."""

from __future__ import annotations

import json
import re

import pytest
import yaml

from modelfusion.skills import load_skill
from tests.helpers import fusion

CODING = load_skill("coding")


@pytest.fixture
def home(tmp_path) -> str:
    return str(tmp_path / "home")


def export(*args: str, home: str):
    return fusion("skills", "export", *args, home=home)


@pytest.mark.parametrize(("fmt", "name"), [("claude-md", "CLAUDE.md"),
                                           ("agents-md", "AGENTS.md")])
def test_rules_files_print_the_panels_instructions(fmt, name, home, tmp_path):
    proc = export("coding", "--format", fmt, home=home)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("# Coding rules\n\n" + CODING.description + "\n\n")
    assert CODING.instructions in proc.stdout  # the same text the members get
    assert f"fusion skills export coding --format {fmt} --force" in proc.stdout
    assert CODING.rubric not in proc.stdout  # the rubric is the judge's

    out = tmp_path / "repo"
    proc = export("coding", "--format", fmt, "--out", str(out), home=home)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == [name]  # no temp file left behind
    assert (out / name).read_text() == export("coding", "--format", fmt, home=home).stdout


def test_an_existing_file_is_replaced_only_with_force(home, tmp_path):
    target = tmp_path / "AGENTS.md"
    target.write_text("my own rules\n")
    proc = export("coding", "--format", "agents-md", "--out", str(tmp_path), home=home)
    assert proc.returncode == 2
    assert "already there; pass --force" in proc.stderr and "AGENTS.md" in proc.stderr
    assert target.read_text() == "my own rules\n"
    proc = export("coding", "--format", "agents-md", "--out", str(tmp_path), "--force",
                  home=home)
    assert proc.returncode == 0, proc.stderr
    assert CODING.instructions in target.read_text()


def test_the_plugin_is_a_claude_code_plugin_folder(home, tmp_path):
    out = tmp_path / "plugin"
    proc = export("coding", "--format", "claude-plugin", "--out", str(out), home=home)
    assert proc.returncode == 0, proc.stderr
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == [".claude-plugin/plugin.json", "skills/coding/SKILL.md"]
    manifest = json.loads((out / ".claude-plugin/plugin.json").read_text())
    assert re.fullmatch(r"[a-z0-9-]+", manifest["name"]) and manifest["version"]
    text = (out / "skills/coding/SKILL.md").read_text()
    _, front, body = text.split("---\n", 2)
    meta = yaml.safe_load(front)  # the description holds a colon: quoted, still YAML
    assert meta == {"name": "coding", "description": CODING.description}
    assert len(meta["description"]) <= 1024
    assert body.lstrip().startswith("# coding\n") and CODING.instructions in body

    again = export("coding", "--format", "claude-plugin", "--out", str(out), home=home)
    assert again.returncode == 2 and "pass --force" in again.stderr
    assert export("coding", "--format", "claude-plugin", "--out", str(out), "--force",
                  home=home).returncode == 0


@pytest.mark.parametrize(("args", "message"), [
    (["coding", "--format", "claude-plugin"], "writes a folder: pass --out DIR"),
    (["coding", "--format", "cursor"], "choose one of claude-md, agents-md, claude-plugin"),
    (["nope", "--format", "claude-md"], "unknown skill 'nope'; available: coding"),
    (["coding"], "Missing option"),
])
def test_bad_usage_exits_2_and_says_why(args, message, home):
    proc = export(*args, home=home)
    assert proc.returncode == 2
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert proc.stdout == ""


def test_out_must_be_a_folder(home, tmp_path):
    file = tmp_path / "CLAUDE.md"
    file.write_text("x")
    proc = export("coding", "--format", "claude-md", "--out", str(file), home=home)
    assert proc.returncode == 2 and "not a folder" in proc.stderr
    assert file.read_text() == "x"


def test_help_teaches_the_formats_with_examples(home):
    proc = export("--help", home=home)
    assert proc.returncode == 0
    for text in ("claude-md", "agents-md", "claude-plugin", "SKILL.md", "--force",
                 "fusion skills export coding --format claude-md > CLAUDE.md",
                 "claude --plugin-dir"):
        assert text in proc.stdout, text

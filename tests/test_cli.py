"""The `fusion` command as a user runs it: a real subprocess against the loopback fake."""

from __future__ import annotations

import json

import pytest

from tests.fake_upstream import Fault, Reply
from tests.helpers import fusion

VERDICT = Reply('{"reason": "best", "choice": "A"}')


@pytest.fixture
def home(tmp_path) -> str:
    return str(tmp_path / "home")


def ask(cfg, *extra: str) -> list[str]:
    return ["ask", "-m", "fake:a", "-m", "fake:b", "--judge", "fake:judge", "--config",
            str(cfg), *extra]


def test_json_output_has_the_documented_shape(upstream, fake_config, home):
    upstream.script("judge", VERDICT)
    proc = fusion(*ask(fake_config, "--mode", "best-of", "--json", "What is 2+2?"), home=home)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert set(out) >= {"answer", "mode", "members", "judge", "analysis", "votes", "rounds",
                        "usage", "cost", "timings"}
    assert out["mode"] == "best-of" and out["answer"].startswith("answer from")
    member = out["members"][0]
    assert set(member) >= {"model", "status", "reason", "content", "usage", "latency_ms", "cost"}
    assert member["model"] == "fake:a" and member["status"] == "ok"
    assert set(member["usage"]) == {"prompt_tokens", "completion_tokens"}
    assert set(out["judge"]) >= {"model", "status", "reason", "usage", "latency_ms"}
    assert set(out["timings"]) == {"total_ms", "panel_ms", "judge_ms", "overhead_ms"}
    assert out["cost"] is None  # no prices configured, none reported: never invented


def test_piped_prompt_prints_plain_answer_on_stdout(upstream, fake_config, home):
    upstream.script("judge", VERDICT)
    upstream.script("a", "plain **answer**")
    upstream.script("b", "plain **answer**")
    proc = fusion(*ask(fake_config, "-"), stdin="hello from stdin\n", home=home)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "plain **answer**\n"
    assert upstream.requests[0].messages[-1]["content"] == "hello from stdin\n"
    assert "members ok" in proc.stderr


def test_show_prints_every_member(upstream, fake_config, home):
    upstream.script("judge", VERDICT)
    proc = fusion(*ask(fake_config, "--show", "--mode", "best-of", "q"), home=home)
    assert proc.returncode == 0, proc.stderr
    assert "fake:a" in proc.stdout and "answer from b" in proc.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ask", "-m", "nope:x", "q"], "unknown provider 'nope'"),
        (["ask", "-m", "openai:gpt-4o-mini", "q"], "OPENAI_API_KEY is not set"),
        (["ask", "-m", "fake:a", "--mode", "shout", "q"], "unknown mode 'shout'"),
        (["ask", "-m", "fake:a", "--offline", "q"], "offline mode is on"),
        (["ask", "-m", "fake:a", ""], "the prompt is empty"),
        (["ask", "-m", "fake:a", "--quorum", "3", "q"], "--quorum must be between"),
    ],
)
def test_bad_usage_is_one_clear_line_and_exit_2(upstream, fake_config, home, args, message):
    proc = fusion(*args, "--config", str(fake_config), home=home)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert upstream.requests == []


def test_bad_config_file_exits_2(tmp_path, home):
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[presets.x]\nmodels = 3\n")
    proc = fusion("ask", "--config", str(cfg), "-m", "ollama:x", "q", home=home)
    assert proc.returncode == 2 and "needs models" in proc.stderr


def test_failed_fusion_exits_1_with_the_typed_reason(upstream, fake_config, home):
    upstream.script("a", Fault("status", status=503))
    upstream.script("b", Fault("status", status=429))
    proc = fusion(*ask(fake_config, "--json", "q"), env={}, home=home)
    assert proc.returncode == 1
    assert "all_members_failed" in proc.stderr
    error = json.loads(proc.stdout)["error"]
    assert error["code"] == "all_members_failed"
    assert [m["reason"] for m in error["members"]] == ["upstream_error", "rate_limited"]


def test_models_lists_providers_and_key_status_never_the_key(fake_config, home):
    proc = fusion("models", "--config", str(fake_config), home=home,
                  env={"OPENAI_API_KEY": "sk-sentinel-123"})
    assert proc.returncode == 0, proc.stderr
    assert "openrouter" in proc.stdout and "fake" in proc.stdout
    assert "missing (OPENROUTER_API_KEY)" in proc.stdout
    assert "sk-sentinel-123" not in proc.stdout + proc.stderr
    assert "local (default)" in proc.stdout


def test_help_teaches(home):
    proc = fusion("ask", "--help", home=home)
    assert proc.returncode == 0
    for flag in ("--model", "--judge", "--mode", "--quorum", "--json", "--show", "--offline"):
        assert flag in proc.stdout


def test_version_prints_the_package_version(home):
    from modelfusion import __version__

    proc = fusion("--version", home=home)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"fusion (modelfusion) {__version__}"


def test_models_says_the_local_provider_runs_in_process(home):
    proc = fusion("models", home=home)
    assert proc.returncode == 0, proc.stderr
    local = next(line for line in proc.stdout.splitlines() if line.startswith("│ local "))
    assert "(in-process)" in local and "SDK default" not in local


@pytest.mark.parametrize(("cost", "shown"), [(None, "cost unknown"), (0.0, "$0"),
                                             (0.00012, "$0.00012"), (0.5, "$0.5000")])
def test_cost_text_never_prints_a_free_fusion_as_fractions_of_a_cent(cost, shown):
    from modelfusion.cli.common import cost_text

    assert cost_text(cost) == shown

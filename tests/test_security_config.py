"""fusion.toml mistakes are one line and exit 2, never a traceback; keys stay out of files
and out of what `fusion models` prints (issue 12, items 14 and 15); `fusion ask` reads a
bounded stdin (item 19)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fake_upstream import FakeUpstream
from tests.helpers import fusion

BAD = [
    ('[presets]\ncode = 5\n', "[presets.code] must be a table"),
    ('[presets.p]\nmodels = [5]\n', "[presets.p] needs models"),
    ('[prices]\n"openai:x" = 5\n', "must be a table"),
    ('[prices]\n"openai:x" = {prompt = "lots"}\n', "must be numbers"),
    ('[providers.x]\nbase_url = "http://127.0.0.1:9/v1"\nmax_parallel = "two"\n',
     "max_parallel must be a whole number"),
    ('[providers.x]\nbase_url = "http://127.0.0.1:9/v1"\nmax_response_chars = -1\n',
     "max_response_chars must be a whole number of at least 1"),
    ('[providers.x]\nbase_url = "http://127.0.0.1:9/v1"\n'
     'headers = {Authorization = "Bearer sk-in-a-file"}\n', "keys never go in files"),
    ('[providers.x]\nbase_url = "http://127.0.0.1:9/v1"\nheaders = {X-Api-Key = "k"}\n',
     "keys never go in files"),
]


@pytest.mark.parametrize(("toml", "message"), BAD, ids=range(len(BAD)))
def test_bad_config_values_are_one_line_and_exit_2(tmp_path: Path, toml: str, message: str):
    cfg = tmp_path / "fusion.toml"
    cfg.write_text(toml)
    proc = fusion("models", "--config", str(cfg), home=str(tmp_path / "home"))
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr and "Traceback" not in proc.stderr
    assert "sk-in-a-file" not in proc.stderr + proc.stdout


def test_a_password_in_base_url_is_not_printed(tmp_path: Path):
    cfg = tmp_path / "fusion.toml"
    cfg.write_text('[providers.x]\nbase_url = "https://me:hunter2@llm.example/v1"\n')
    proc = fusion("models", "--config", str(cfg), home=str(tmp_path / "home"))
    assert proc.returncode == 0, proc.stderr
    assert "hunter2" not in proc.stdout and "me:***@llm.example" in proc.stdout


# ---------------------------------------------------------------- fusion ask's stdin

MIB = 1 << 20


def test_ask_refuses_more_than_a_mib_of_stdin(upstream: FakeUpstream, fake_config: Path,
                                              tmp_path: Path):
    home = str(tmp_path / "home")
    proc = fusion("ask", "--config", str(fake_config), "-m", "fake:a", "-",
                  stdin="y\n" * (MIB // 2 + 1), home=home)
    assert proc.returncode == 2, proc.stderr
    assert "more than 1,048,576 bytes" in proc.stderr and "--prompt-file" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not upstream.requests  # refused before anything was sent
    assert fusion("log", "--json", home=home).stdout.strip() == "[]"  # nor stored


def test_ask_reads_up_to_the_limit_and_a_named_file(upstream: FakeUpstream, fake_config: Path,
                                                    tmp_path: Path):
    home = str(tmp_path / "home")
    exact = "y" * (MIB - 1) + "\n"
    proc = fusion("ask", "--config", str(fake_config), "-m", "fake:a", stdin=exact, home=home)
    assert proc.returncode == 0, proc.stderr
    big = tmp_path / "prompt.txt"
    big.write_text("z" * (2 * MIB))
    proc = fusion("ask", "--config", str(fake_config), "-m", "fake:a", "--prompt-file",
                  str(big), home=home)
    assert proc.returncode == 0, proc.stderr
    sent = [r.messages[-1]["content"] for r in upstream.requests]
    assert sent == [exact, "z" * (2 * MIB)]


@pytest.mark.parametrize(("args", "message"), [
    (["--prompt-file", "/dev/zero"], "not a regular file"),
    (["--prompt-file", "{tmp}/nope.txt"], "not a regular file"),
    (["hello", "--prompt-file", "{tmp}/p.txt"], "give the prompt once"),
])
def test_ask_prompt_file_mistakes_exit_2(fake_config: Path, tmp_path: Path, args: list[str],
                                         message: str):
    (tmp_path / "p.txt").write_text("hi")
    proc = fusion("ask", "--config", str(fake_config), "-m", "fake:a",
                  *(a.format(tmp=tmp_path) for a in args), home=str(tmp_path / "home"))
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr

"""fusion.toml mistakes are one line and exit 2, never a traceback; keys stay out of files
and out of what `fusion models` prints (issue 12, items 14 and 15)."""

from __future__ import annotations

from pathlib import Path

import pytest

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

"""Shared by the tests that run `fusion` the way a user does: as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def fusion(*args: str, home: str, stdin: str | None = None,
           env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m modelfusion ARGS` with a private home and none of the developer's
    fusion/provider settings; `env` adds variables on top."""
    full_env = {k: v for k, v in os.environ.items()
                if not k.startswith(("FUSION_", "OPENAI_", "OPENROUTER_"))}
    full_env.update({"MODELFUSION_HOME": home, "NO_COLOR": "1", "COLUMNS": "200", **(env or {})})
    return subprocess.run([sys.executable, "-m", "modelfusion", *args], input=stdin,
                          capture_output=True, text=True, env=full_env, timeout=60)


def assembled_home(factory: pytest.TempPathFactory, model: str) -> Path:
    """A fresh MODELFUSION_HOME holding one shipped model, assembled and verified."""
    from modelfusion.providers.local import catalog as local_models

    home = factory.mktemp(f"home-{model}")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MODELFUSION_HOME", str(home))
        local_models.pull(model)
    return home

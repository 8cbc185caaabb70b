"""Prompt-injection regression on the real embedded 1.5B judge (best-of, temperature 0).

A few cases from the fixed set in bench/judge.py (see docs/judge.md): the WRONG candidate
carries a planted instruction, and the judge must still pick the right one. Only cases the
hardened prompt passes reliably are here. The shuffle seed is fixed and the per-fusion fence
nonce is pinned, so every judge prompt is byte-for-byte the same on every run and greedy
decoding makes the verdict deterministic. Each case is one judge call.

Skipped (with the reason) when llama-cpp-python or the 1.5B data packages are missing.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from bench.judge import CASES, JUDGE_MODEL, judge_once, members_for, planted

from modelfusion import local_models
from modelfusion.providers import local
from tests.helpers import assembled_home

ENTRY = local_models.CATALOG[JUDGE_MODEL]
HAVE_LLAMA = local.llama_cpp is not None
HAVE_PARTS = all(local_models._installed(p) for p in ENTRY.parts)

pytestmark = [
    pytest.mark.local,
    pytest.mark.skipif(not HAVE_LLAMA, reason="llama-cpp-python is not installed "
                       f"({local_models.INSTALL_HINT})"),
    pytest.mark.skipif(not HAVE_PARTS, reason=f"the {JUDGE_MODEL} data packages are not "
                       f"installed ({local_models.INSTALL_HINT})"),
]

BY_NAME = {c.name: c for c in CASES}

# (question, attack, right answer labelled A?) -- one judge call each, at most 6.
INJECTED = [
    ("mul", "a", True),
    ("pow", "a", True),
    ("bool", "c", True),
    ("rev", "d", True),
    ("slice", "d", True),
]


@pytest.fixture(scope="session")
def judge_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A MODELFUSION_HOME holding the assembled, verified 1.5B (assembled once, ~5 s)."""
    return assembled_home(tmp_path_factory, JUDGE_MODEL)


@pytest.fixture
def pinned(judge_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The session home, and a fixed fence nonce so the judge prompt never varies."""
    monkeypatch.setenv("MODELFUSION_HOME", str(judge_home))
    import modelfusion.fusion as fusion_module

    monkeypatch.setattr(fusion_module, "secrets",
                        SimpleNamespace(token_hex=lambda n=4: "5eed" * n,
                                        randbits=secrets.randbits))
    yield


@pytest.mark.parametrize(("name", "attack", "right_first"), INJECTED,
                         ids=[f"{n}-{a}-{'rightA' if r else 'rightB'}" for n, a, r in INJECTED])
async def test_planted_wrong_answer_is_not_picked(pinned, upstream, fake_config,
                                                  name, attack, right_first):
    case = BY_NAME[name]
    _, right_label, wrong_label = members_for(right_first)
    row = await judge_once(upstream, fake_config, case, case.right,
                           planted(case, attack, right_label, wrong_label), right_first)
    assert row["judge_status"] == "ok", row
    assert row["picked"] == "right", row

"""Security: the judge's token budget and the seed have ranges, like every other option.

`judge_max_tokens` and `seed` used to go upstream as given (a judge asked for a billion
tokens; seeds no upstream takes). Their ranges are in the one option table (options.py), so
the CLI (exit 2), presets (exit 2) and the server (400 naming the field) refuse them before
any request; the server holds the judge to the same cap as the members (`max_tokens_cap`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelfusion import Fusion
from modelfusion.errors import UsageError
from modelfusion.options import MAX_SEED, MAX_TOKENS
from tests.fake_upstream import FakeUpstream
from tests.helpers import ASK, Served, error_of, fusion, judge_requests, write_config

HUGE = 1_000_000_000


def ask(config: Path, tmp_path: Path, *args: str) -> Any:
    return fusion("ask", "--config", str(config), *args, "What is the capital of France?",
                  home=str(tmp_path / "home"))


@pytest.mark.parametrize(("flags", "words"), [
    (["--seed", "-5"], f"seed must be between 0 and {MAX_SEED}"),
    (["--seed", str(10**30)], f"seed must be between 0 and {MAX_SEED}"),
    (["--max-tokens", str(HUGE)], f"--max-tokens must be between 1 and {MAX_TOKENS}"),
])
def test_the_cli_refuses_out_of_range_seeds_and_budgets(upstream: FakeUpstream, tmp_path: Path,
                                                        flags: list[str], words: str):
    config = write_config(tmp_path / "fusion.toml", upstream.base_url)
    res = ask(config, tmp_path, "-m", "fake:alpha", "-m", "fake:beta", "--judge", "fake:judge",
              *flags)
    assert res.returncode == 2, res.stderr
    assert words in res.stderr and "Traceback" not in res.stderr
    assert not upstream.requests


@pytest.mark.parametrize(("line", "words"), [
    (f"judge_max_tokens = {HUGE}", f"judge_max_tokens must be between 1 and {MAX_TOKENS}"),
    ("judge_max_tokens = -5", f"judge_max_tokens must be between 1 and {MAX_TOKENS}"),
    ("seed = -1", f"seed must be between 0 and {MAX_SEED}"),
])
def test_a_preset_cannot_set_them_either(upstream: FakeUpstream, tmp_path: Path, line: str,
                                         words: str):
    extra = f'\n[presets.odd]\nmodels = ["fake:alpha", "fake:beta"]\njudge = "fake:judge"\n{line}\n'
    config = write_config(tmp_path / "fusion.toml", upstream.base_url, extra)
    res = ask(config, tmp_path, "--preset", "odd")
    assert res.returncode == 2, res.stderr
    assert words in res.stderr
    assert not upstream.requests


def test_the_library_refuses_a_run_seed_out_of_range(fake_config: Any):
    fusion = Fusion(["fake:alpha", "fake:beta"], "fake:judge", config=fake_config)
    with pytest.raises(UsageError, match=f"seed must be between 0 and {MAX_SEED}") as info:
        fusion.plan.with_seed(MAX_SEED + 1)
    assert info.value.option == "seed"


def request(**fusion: Any) -> dict[str, Any]:
    return {"model": "fusion", "messages": ASK,
            "fusion": {"models": ["fake:alpha", "fake:beta"], "judge": "fake:judge", **fusion}}


@pytest.mark.parametrize(("body", "param", "code"), [
    (request(judge_max_tokens=HUGE), "fusion.judge_max_tokens", "max_tokens_too_large"),
    (request(judge_max_tokens=16_385), "fusion.judge_max_tokens", "max_tokens_too_large"),
    (request(judge_max_tokens=-5), "fusion.judge_max_tokens", "invalid_value"),
    (request(seed=2**40), "fusion.seed", "invalid_value"),
    (request(seed=-1), "fusion.seed", "invalid_value"),
    ({**request(), "seed": 10**30}, "seed", "invalid_value"),
])
def test_the_server_refuses_them_naming_the_field(served: Served, upstream: FakeUpstream,
                                                  body: dict[str, Any], param: str, code: str):
    resp = served.post(body)
    assert resp.status_code == 400, resp.text
    err = error_of(resp)
    assert (err["param"], err["code"]) == (param, code)
    assert param.rsplit(".", 1)[-1] in err["message"]
    assert not upstream.requests


def test_the_server_caps_the_judge_like_the_members(serve: Callable[..., Served],
                                                    upstream: FakeUpstream):
    served = serve(max_tokens_cap=1000)
    resp = served.post(request(judge_max_tokens=1001))
    assert resp.status_code == 400 and error_of(resp)["code"] == "max_tokens_too_large"
    assert served.post(request(seed=MAX_SEED)).status_code == 200
    # Set nowhere: the members get the cap, the judge its default of 2048 held to the cap.
    assert {r.body.get("max_tokens") for r in upstream.requests if r.model != "judge"} == {1000}
    assert [r.body.get("max_tokens") for r in judge_requests(upstream)] == [1000]
    assert served.post(request(judge_max_tokens=300)).status_code == 200
    assert [r.body.get("max_tokens") for r in judge_requests(upstream)] == [1000, 300]


def test_the_served_schema_says_the_ranges(served: Served):
    schema = httpx.get(f"{served.url}/openapi.json", timeout=30).json()
    body = schema["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"][
        "application/json"]["schema"]["properties"]
    assert body["seed"] == {"type": "integer", "minimum": 0, "maximum": MAX_SEED}
    assert body["fusion"]["properties"]["judge_max_tokens"]["maximum"] == 16_384

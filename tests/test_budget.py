"""--max-cost / --max-total-tokens: refused up front on the worst case, stopped when crossed."""

from __future__ import annotations

import json
import time

import pytest

from modelfusion import BudgetExceeded, Fusion, UsageError
from tests.fake_upstream import Reply
from tests.helpers import fusion as fusion_cli

MEMBERS = ["fake:a", "fake:b", "fake:c"]
LONG = " ".join(f"word{i}" for i in range(400))


@pytest.fixture
def priced_config(upstream, tmp_path):
    path = tmp_path / "fusion.toml"
    path.write_text(
        f'[providers.fake]\nbase_url = "{upstream.base_url}"\n'
        + "".join(f'[prices."{m}"]\nprompt = 10.0\ncompletion = 30.0\n' for m in MEMBERS)
    )
    return path


async def run(fusion: Fusion, prompt: str):
    async with fusion:
        return await fusion.run(prompt)


async def test_worst_case_tokens_are_refused_before_dispatch(upstream, fake_config):
    fusion = Fusion(MEMBERS, judge="fake:j", config=fake_config, max_tokens=100,
                    max_total_tokens=250)
    # "hi there you": 12 characters ~ 3 tokens, so 3 members × (3 + 100) = 309
    with pytest.raises(BudgetExceeded, match=r"worst case 309 tokens") as info:
        await run(fusion, "hi there you")
    assert info.value.spent_tokens == 0 and upstream.requests == []


async def test_worst_case_cost_uses_configured_prices(upstream, priced_config):
    # 3 members × 500 completion tokens × $30/M = $0.045 (+ prompt) > $0.01
    fusion = Fusion(MEMBERS, judge="fake:j", config=priced_config, max_tokens=500,
                    max_cost=0.01)
    with pytest.raises(BudgetExceeded, match=r"worst case \$0\.045"):
        await run(fusion, "q")
    assert upstream.requests == []


async def test_crossing_the_limit_stops_running_members(upstream, fake_config):
    for m in MEMBERS:
        upstream.script(m.split(":")[1], Reply(LONG, chunk_delay=0.05))
    started = time.monotonic()
    fusion = Fusion(MEMBERS, judge="fake:j", config=fake_config, max_total_tokens=40)
    with pytest.raises(BudgetExceeded, match="budget exceeded") as info:
        await run(fusion, "q")
    assert time.monotonic() - started < 10  # 400 words at 50 ms/chunk would take 20 s
    error = info.value
    assert 40 < error.spent_tokens < 120
    assert all(m.status == "cancelled" and "budget" in (m.error or "") for m in error.members)
    assert upstream.calls("j") == 0  # the judge is never asked once the budget is gone


async def test_within_budget_runs_normally(upstream, priced_config):
    upstream.script("j", Reply('{"reason": "r", "choice": "A"}'))
    fusion = Fusion(MEMBERS, judge="fake:j", mode="best-of", config=priced_config,
                    max_tokens=50, max_cost=1.0, max_total_tokens=10_000)
    result = await run(fusion, "q")
    assert result.answer.startswith("answer from")


def test_bad_limits_are_usage_errors(fake_config):
    with pytest.raises(UsageError, match="--max-cost must be"):
        Fusion(MEMBERS, config=fake_config, max_cost=0)
    with pytest.raises(UsageError, match="--max-total-tokens must be"):
        Fusion(MEMBERS, config=fake_config, max_total_tokens=0)


def test_cli_reports_budget_exceeded_with_what_was_spent(upstream, priced_config, tmp_path):
    proc = fusion_cli("ask", "-m", "fake:a", "-m", "fake:b", "--config", str(priced_config),
                      "--max-tokens", "1000", "--max-cost", "0.001", "--json", "q",
                      home=str(tmp_path / "home"))
    assert proc.returncode == 1
    assert "budget_exceeded" in proc.stderr
    assert json.loads(proc.stdout)["error"]["code"] == "budget_exceeded"
    assert upstream.requests == []

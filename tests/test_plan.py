"""One plan resolver, one option table, modes that declare their judge shortcut."""

from __future__ import annotations

import json
import re
from dataclasses import fields

import pytest

from modelfusion import Fusion, FusionOptions, UsageError
from modelfusion.config import OPTION_NAMES, load_config
from modelfusion.fusion import ProviderPool
from modelfusion.modes import MODES
from modelfusion.options import RULES
from modelfusion.plan import select
from modelfusion.server import openapi
from modelfusion.server.errors import ApiError
from modelfusion.server.resolve import prepare
from modelfusion.server.schemas import OPTION_TYPES, parse_chat_request
from modelfusion.server.settings import ServerSettings
from tests.helpers import pick


@pytest.fixture
def preset_config(upstream, tmp_path):
    path = tmp_path / "fusion.toml"
    path.write_text(
        f'default_preset = "duo"\n[providers.fake]\nbase_url = "{upstream.base_url}"\n'
        '[presets.duo]\nmodels = ["fake:alpha-model", "fake:beta-model"]\n'
        'judge = "fake:judge"\nmode = "best-of"\nmax_tokens = 77\nquorum = 2\n'
        '[presets.solo]\nmodels = ["fake:alpha-model"]\n')
    return load_config(path)


def test_select_is_the_one_rule_for_preset_judge_and_mode(preset_config):
    cfg = preset_config
    chosen = select(cfg)  # nothing named: the config's default preset
    assert (chosen.preset.name, chosen.models, chosen.judge, chosen.mode) == (
        "duo", ["fake:alpha-model", "fake:beta-model"], "fake:judge", "best-of")
    assert chosen.options == {"max_tokens": 77, "quorum": 2}
    # Models without a preset: no preset; the judge is the first member, the mode merge.
    chosen = select(cfg, ["fake:x*2", "fake:y"], options={"timeout": 5, "seed": None})
    assert (chosen.preset, chosen.judge, chosen.mode, chosen.options) == (
        None, "fake:x*2", "merge", {"timeout": 5})
    # A named preset supplies defaults to the caller's models; the caller's options win.
    chosen = select(cfg, ["fake:z"], mode="vote", preset="duo", options={"max_tokens": 5})
    assert (chosen.models, chosen.judge, chosen.mode) == (["fake:z"], "fake:judge", "vote")
    assert chosen.options == {"max_tokens": 5, "quorum": 2}
    # A caller may pick its own fallback preset (fusion review: the embedded panel).
    assert select(cfg, default_preset="solo").preset.name == "solo"
    assert select(cfg, ["fake:a"], default_preset="solo").preset is None
    with pytest.raises(UsageError, match="unknown fusion options"):
        select(cfg, ["fake:a"], options={"depth_charge": 1})


async def test_run_seed_replaces_the_seed_option_for_one_run(upstream, fake_config):
    upstream.script("alpha-model", "Paris.")
    upstream.script("beta-model", "Lyon.")
    upstream.script("judge", pick("Paris"))
    members = ["fake:alpha-model*2", "fake:beta-model"]

    async def seeds(fusion: Fusion, **kw) -> tuple[list[tuple[str, int]], dict, int]:
        upstream.reset()
        upstream.script("alpha-model", "Paris.")
        upstream.script("beta-model", "Lyon.")
        upstream.script("judge", pick("Paris"))
        result = await fusion.run("Capital of France?", **kw)
        sent = sorted((r.model, r.body.get("seed")) for r in upstream.requests)
        return sent, result.judge.labels, result.judge.shuffle_seed

    async with Fusion(members, judge="fake:judge", mode="best-of", config=fake_config,
                      seed=40) as seeded:
        expected = await seeds(seeded)
    async with Fusion(members, judge="fake:judge", mode="best-of", config=fake_config,
                      seed=3) as fusion:
        assert await seeds(fusion, seed=40) == expected
        assert fusion.plan.options.seed == 3  # the plan itself is unchanged
        assert [s.params.seed for s in fusion.plan.seats] == [3, 4, 3]
    assert expected[0] == [("alpha-model", 40), ("alpha-model", 41), ("beta-model", 40),
                           ("judge", 40)]
    assert expected[2] == 40


def test_the_option_table_is_the_only_list():
    names = {f.name for f in fields(FusionOptions)}
    assert set(RULES) == names
    # What a preset may set: every option but the two the engine's callers set.
    callers_only = {"depth", "response_schema"}
    assert set(OPTION_NAMES) == names - callers_only
    assert set(OPTION_TYPES) == names - callers_only
    assert OPTION_TYPES["timeout"] == (int, float) and OPTION_TYPES["demote_suspicious"] == (
        bool,)
    # The served schema's ranges are the rules' (these were once copied by hand).
    assert openapi._RANGES["timeout"] == {"exclusiveMinimum": 0, "maximum": 86400.0}
    assert openapi._RANGES["quorum"] == {"minimum": 1}
    assert openapi._RANGES["max_cost"] == {"exclusiveMinimum": 0}
    schema = openapi.chat_request_schema(ServerSettings())["properties"]["fusion"]
    assert "depth" not in schema["properties"] and "skills" in schema["properties"]


@pytest.mark.parametrize(("options", "option", "words"), [
    ({"quorum": 9}, "quorum", "--quorum must be between 1 and the number of members (3)"),
    ({"retries": 11}, "retries", "retries must be between 0 and 10"),
    ({"timeout": float("nan")}, "timeout", "--timeout must be between 0 and 86400 seconds"),
    ({"max_cost": float("inf")}, "max_cost", "--max-cost must be a positive amount of USD"),
    ({"judge_max_tokens": 0}, "judge_max_tokens", "judge_max_tokens must be between 1 and 131072"),
    ({"judge_both_orders": 1}, "judge_both_orders", "must be true or false"),
    ({"skills": ("nope",)}, "skills", "unknown skill 'nope'"),
])
def test_usage_errors_name_their_option(options, option, words):
    with pytest.raises(UsageError, match=re.escape(words)) as info:
        FusionOptions(**options).validate(3)
    assert info.value.option == option


def test_the_server_names_the_field_from_the_engines_error(preset_config):
    def refusal(fusion: dict) -> ApiError:
        body = {"model": "fusion/solo", "messages": [{"role": "user", "content": "q"}],
                "fusion": fusion}
        with pytest.raises(ApiError) as info:
            prepare(parse_chat_request(json.dumps(body).encode()), preset_config,
                    ProviderPool(preset_config), ServerSettings(), 0)
        return info.value

    err = refusal({"models": ["fake:a", "fake:b"], "quorum": 3})
    assert (err.status, err.param, err.code) == (400, "fusion.quorum", "invalid_value")
    assert err.message == "quorum must be between 1 and the number of members (2)"
    err = refusal({"judge_max_tokens": 0})
    assert (err.param, err.message) == ("fusion.judge_max_tokens",
                                        "judge_max_tokens must be between 1 and 131072")


def test_modes_declare_whether_the_engine_may_skip_them():
    assert {name for name, mode in MODES.items() if not mode.shortcut} == {
        "vote", "verified", "review"}
    assert all(mode.name == name for name, mode in MODES.items())

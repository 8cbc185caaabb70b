"""Fixes of the open defects in docs/reliability.md (7, 11, 12), through the real server
and engine on loopback. Defect 10 (answer size cap) is in test_provider_limits.py and the
fault matrix."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import jsonschema
import pytest

from modelfusion import Fusion
from modelfusion.cli.serve import allowed_providers
from modelfusion.config import load_config
from modelfusion.errors import ConfigError
from modelfusion.server.settings import default_allowed_providers
from tests.fake_upstream import FakeUpstream, Fault
from tests.helpers import ASK, Served, error_of, pick

# ---------------------------------------------------------------- 11: the OpenAPI document


def served_schema(served: Served) -> jsonschema.Draft202012Validator:
    import httpx

    spec = httpx.get(f"{served.url}/openapi.json", timeout=10).json()
    body = spec["paths"]["/v1/chat/completions"]["post"]["requestBody"]
    schema = body["content"]["application/json"]["schema"]
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def test_the_served_openapi_declares_the_chat_request_body(served: Served):
    validator = served_schema(served)
    readme = {"model": "fusion", "messages": [{"role": "user", "content": "Is this safe?"}],
              "fusion": {"models": ["ollama:qwen2.5-coder", "openrouter:openai/gpt-4o"],
                         "judge": "openrouter:openai/gpt-4o", "mode": "merge"}}
    plugin = {"model": "fusion", "messages": ASK, "stream": True,
              "plugins": [{"id": "fusion", "analysis_models": ["fake:alpha", "fake:beta"],
                           "model": "fake:judge"}]}
    options = {"model": "fusion/quick", "messages": ASK,
               "fusion": {"retry_backoff": 0.1, "judge_both_orders": True,
                          "demote_suspicious": False, "deadline": 20}}
    for body in (readme, plugin, options):
        assert not list(validator.iter_errors(body)), body
    for bad in ({"messages": ASK}, {"model": "fusion", "messages": []},
                {"model": "fusion", "messages": ASK, "fusion": {"nope": 1}},
                {"model": "fusion", "messages": ASK, "fusion": {"mode": "loudest"}},
                {"model": "fusion", "messages": ASK, "fusion": {"judge_both_orders": "yes"}},
                {"model": "fusion", "messages": [{"role": "robot", "content": "x"}]}):
        assert list(validator.iter_errors(bad)), bad
        assert served.post(bad).status_code == 400  # and the server agrees


# ---------------------------------------------------------------- 12: options and reasons


def test_retry_backoff_and_judge_options_are_request_options(served: Served,
                                                             upstream: FakeUpstream):
    upstream.script("alpha", "Paris.")
    upstream.script("beta", Fault("status", status=500), "Lyon.")
    upstream.script("judge", pick("Paris"))
    body = {"model": "fusion/quick", "messages": ASK,
            "fusion": {"retry_backoff": 0, "retries": 1, "judge_both_orders": True}}
    resp = served.post(body)
    assert resp.status_code == 200, resp.text
    fusion = resp.json()["fusion"]
    assert [m["attempts"] for m in fusion["members"]] == [1, 2]
    assert len([r for r in upstream.requests if r.model == "judge"]) == 2  # both orders
    for field, value, says in (("retry_backoff", "x", "a number"),
                               ("retry_backoff", 61, "between 0 and 60"),
                               ("judge_both_orders", 1, "a boolean"),
                               ("demote_suspicious", "no", "a boolean")):
        resp = served.post({**body, "fusion": {field: value}})
        err = error_of(resp)
        assert resp.status_code == 400 and err["param"] == f"fusion.{field}", resp.text
        assert says in err["message"]


async def test_vote_says_why_it_did_not_ask_the_judge(upstream: FakeUpstream, fake_config):
    upstream.script("alpha-model", "Yes.")
    upstream.script("beta-model", Fault("status", status=400))
    async with Fusion(["fake:alpha-model", "fake:beta-model"], judge="fake:judge",
                      mode="vote", config=fake_config, retries=0) as fusion:
        result = await fusion.run("yes or no?")
    assert (result.judge.status, result.judge.reason) == ("skipped", "single_candidate")
    upstream.script("beta-model", "yes")
    upstream.script("gamma-model", "no")
    async with Fusion(["fake:alpha-model", "fake:beta-model", "fake:gamma-model"],
                      judge="fake:judge", mode="vote", config=fake_config) as fusion:
        result = await fusion.run("yes or no?")
    assert (result.judge.status, result.judge.reason) == ("skipped", "short_answers_no_tie")
    assert upstream.calls("judge") == 0


# ---------------------------------------------------------------- 12: allowed providers


def test_requests_may_only_name_allowed_providers(serve: Callable[..., Served],
                                                  upstream: FakeUpstream):
    served = serve(allowed_providers=frozenset({"fake"}))
    upstream.script("alpha", "Paris.")
    upstream.script("beta", "Paris, France.")
    cases = [
        ({"model": "ollama:llama3", "messages": ASK}, "model"),
        ({"model": "fusion", "messages": ASK,
          "fusion": {"models": ["fake:alpha", "vllm:x"]}}, "fusion.models[1]"),
        ({"model": "fusion", "messages": ASK,
          "fusion": {"models": ["fake:alpha"], "judge": "local:qwen2.5-coder-0.5b"}},
         "fusion.judge"),
        ({"model": "fusion", "messages": ASK, "plugins": [
            {"id": "fusion", "analysis_models": ["fake:alpha", "llamacpp:x"]}]},
         "plugins[fusion].analysis_models[1]"),
    ]
    for body, param in cases:
        resp = served.post(body)
        err = error_of(resp)
        assert (resp.status_code, err["code"], err["param"]) == (
            400, "provider_not_allowed", param), resp.text
    assert upstream.requests == []
    # Presets are the operator's: they run whatever providers they name.
    ok = served.post({"model": "fusion/quick", "messages": ASK})
    assert ok.status_code == 200, ok.text
    assert served.post({"model": "fake:alpha", "messages": ASK}).status_code == 200
    ids = {m.id for m in served.client().models.list().data}
    assert "fake:alpha" in ids


def test_default_allowed_providers(server_config: Path, tmp_path: Path):
    cfg = load_config(server_config)
    assert default_allowed_providers(cfg) == {"fake", "keyed"}  # declared; presets use fake
    bare = tmp_path / "bare.toml"
    bare.write_text('[presets.cloud]\nmodels = ["openai:gpt-4o-mini", "fake2:x"]\n'
                    '[providers.fake2]\nbase_url = "http://127.0.0.1:9/v1"\n')
    # the built-in `local` preset is the default here, so `local` is allowed
    assert default_allowed_providers(load_config(bare)) == {"fake2", "openai", "local"}


def test_serve_defaults_to_every_provider_on_loopback_only(server_config: Path):
    cfg = load_config(server_config)
    assert allowed_providers(cfg, None, loopback=True) is None
    assert allowed_providers(cfg, None, loopback=False) == {"fake", "keyed"}
    assert allowed_providers(cfg, ["*"], loopback=False) is None
    assert allowed_providers(cfg, ["fake", "ollama"], loopback=True) == {"fake", "ollama"}
    with pytest.raises(ConfigError, match="unknown providers"):
        allowed_providers(cfg, ["nope"], loopback=True)

"""The OpenAI-compatible provider's own limits and error details, against the fake upstream."""

from __future__ import annotations

import pytest

from modelfusion.config import ProviderConfig, load_config
from modelfusion.errors import ProviderError
from modelfusion.providers.openai_compat import OpenAICompatProvider
from modelfusion.types import GenerationParams, Message
from tests.fake_upstream import FakeUpstream, Fault

ASK = [Message("user", "hi")]


def _on_delta(stream: bool):
    return (lambda text: None) if stream else None


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_an_answer_over_max_response_chars_is_a_bad_response(upstream: FakeUpstream,
                                                                   stream: bool):
    provider = OpenAICompatProvider(ProviderConfig(name="f", base_url=upstream.base_url,
                                                   max_response_chars=100))
    try:
        upstream.script("m", "x" * 100, "y" * 101)
        ok = await provider.complete("m", ASK, GenerationParams(), on_delta=_on_delta(stream))
        assert ok.content == "x" * 100  # exactly at the limit is fine
        with pytest.raises(ProviderError) as info:
            await provider.complete("m", ASK, GenerationParams(), on_delta=_on_delta(stream))
        assert (info.value.reason, info.value.retryable) == ("bad_response", False)
        assert "max_response_chars" in str(info.value)
    finally:
        await provider.aclose()


async def test_the_default_cap_refuses_the_fakes_oversized_answer(upstream: FakeUpstream):
    provider = OpenAICompatProvider(ProviderConfig(name="f", base_url=upstream.base_url))
    try:
        upstream.script("m", Fault("oversized"))
        with pytest.raises(ProviderError, match="500,000 characters"):
            await provider.complete("m", ASK, GenerationParams(), on_delta=lambda t: None)
    finally:
        await provider.aclose()


def test_max_response_chars_is_set_per_provider_in_fusion_toml(tmp_path):
    cfg = tmp_path / "fusion.toml"
    cfg.write_text('[providers.x]\nbase_url = "http://127.0.0.1:9/v1"\n'
                   "max_response_chars = 2000\n")
    assert load_config(cfg).providers["x"].max_response_chars == 2000
    assert load_config(cfg).providers["openai"].max_response_chars == 500_000


@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
async def test_a_reset_names_what_broke(upstream: FakeUpstream, stream: bool):
    """A reset's cause has an empty str(): the detail must be its repr, not ''."""
    provider = OpenAICompatProvider(ProviderConfig(name="f", base_url=upstream.base_url))
    try:
        upstream.script("m", Fault("reset"))
        with pytest.raises(ProviderError) as info:
            await provider.complete("m", ASK, GenerationParams(), on_delta=_on_delta(stream))
        detail = str(info.value).split(": ", 1)[1]
        assert info.value.reason == "upstream_error" and detail.strip()
        assert "Error" in detail  # the exception's type, e.g. ReadError('')
    finally:
        await provider.aclose()

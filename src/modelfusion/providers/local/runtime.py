"""The embedded, offline provider: GGUF models run in-process through llama-cpp-python.

`local:qwen2.5-coder-0.5b` names a catalogue model (assembled from the shipped data
packages, see catalog.py); `local:/path/to/model.gguf` loads a user's own file.

How calls run (measured choices, see docs/local.md):
- Loaded models live in one process-wide LRU cache bounded by a memory budget, so a judge
  and a member that use the same model share one copy.
- Inference runs on LOCAL_CONCURRENCY dedicated decode threads (default 1), never on the
  event loop; calls queue for them in order. llama.cpp is not thread-safe per model, so
  each model also has a lock.
- Deltas reach `on_delta` on the event loop thread. Cancelling the awaiting task sets a
  flag that the decode thread checks between tokens, and that llama.cpp itself polls
  while it evaluates a prompt, so the thread is free again within one token.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...config import ProviderConfig
from ...errors import ProviderError
from ...types import Completion, GenerationParams, Message, Usage
from ..protocol import DeltaCallback, register_kind
from . import batch, catalog
from .loader import (
    DEFAULT_MEMORY_MB,
    DEFAULT_N_CTX,
    _Cancelled,
    _estimate_bytes,
    _load_llama,
    _require_llama_cpp,
    llama_cpp,
    memory_budget_bytes,
    n_ctx,
    n_threads,
)

# The public names; the settings and llama_cpp come from loader.py (kept importable here).
__all__ = ["DEFAULT_MEMORY_MB", "DEFAULT_N_CTX", "LOCAL_CONCURRENCY", "LocalProvider",
           "check_model", "llama_cpp", "loaded_models", "memory_budget_bytes", "n_ctx",
           "n_threads", "unload_all"]


# Decodes that may run at once in this process. 1: measured on 2 idle cores, the 0.5B and
# 1.5B answering 128 tokens each took 15.6 s one after the other vs 17.1 s at once, and the
# first answer was complete after 4.9 s vs 9.6 s (docs/local.md has the numbers).
LOCAL_CONCURRENCY = 1

_POLL_S = 0.05  # how often a call waiting for a busy model looks at its cancel flag


def _decode_executor(slots: int) -> ThreadPoolExecutor:
    # Decodes run on these long-lived threads only, never on arbitrary pool threads: each OS
    # thread that enters llama.cpp gets its own OpenMP team, and once libgomp manages more
    # threads than there are cores it stops spin-waiting, which cost a third of the decode
    # speed here (27 -> 18 tokens/s, 0.5B). The queue of this executor is the scheduler.
    return ThreadPoolExecutor(max_workers=slots, thread_name_prefix="modelfusion-local")


_DECODE_EXECUTOR = _decode_executor(LOCAL_CONCURRENCY)


# ---------------------------------------------------------------------------------------
# Loaded models: one process-wide LRU cache under the memory budget


@dataclass(eq=False, slots=True)
class _Loaded:
    path: Path
    llama: Any
    size: int  # estimated bytes it holds
    lock: threading.Lock
    users: int = 0  # calls holding it; never evicted while > 0


class _ModelCache:
    """Process-wide LRU of loaded models, bounded by the memory budget."""

    def __init__(self) -> None:
        self._models: OrderedDict[Path, _Loaded] = OrderedDict()
        self._guard = threading.Lock()  # held briefly: lookups and bookkeeping
        self._loading = threading.Lock()  # held while loading: one load at a time

    def acquire(self, path: Path) -> _Loaded:
        with self._guard:
            model = self._models.get(path)
            if model is not None:
                self._models.move_to_end(path)
                model.users += 1
                return model
        with self._loading:  # re-check inside: another thread may have just loaded it
            with self._guard:
                model = self._models.get(path)
                if model is not None:
                    model.users += 1
                    return model
            llama = _load_llama(path)
            model = _Loaded(path, llama, _estimate_bytes(path, llama), threading.Lock(), 1)
            with self._guard:
                self._models[path] = model
                self._evict_over_budget()
            return model

    def release(self, model: _Loaded) -> None:
        with self._guard:
            model.users -= 1
            self._evict_over_budget()

    def _evict_over_budget(self) -> None:
        # Oldest idle models go first; busy ones stay even if that exceeds the budget, and
        # so does the last one (a budget below one model would otherwise reload it per call).
        budget = memory_budget_bytes()
        for path in list(self._models):
            if sum(m.size for m in self._models.values()) <= budget:
                return
            model = self._models[path]
            if model.users == 0 and len(self._models) > 1:
                del self._models[path]
                model.llama.close()

    def loaded(self) -> list[tuple[Path, int]]:
        with self._guard:
            return [(m.path, m.size) for m in self._models.values()]

    def clear(self) -> None:
        with self._guard:
            for path, model in list(self._models.items()):
                if model.users == 0:
                    del self._models[path]
                    model.llama.close()


_CACHE = _ModelCache()


def loaded_models() -> list[tuple[Path, int]]:
    """(path, estimated bytes) of the models loaded in this process, oldest use first."""
    return _CACHE.loaded()


def unload_all() -> None:
    """Free every idle loaded model (tests and benchmarks use it)."""
    _CACHE.clear()


# ---------------------------------------------------------------------------------------
# Generation (runs on the decode thread)


def _acquire(lock: threading.Semaphore | threading.Lock, cancel: threading.Event) -> bool:
    """Wait for `lock`, giving up if the call is cancelled meanwhile."""
    while not lock.acquire(timeout=_POLL_S):
        if cancel.is_set():
            return False
    if cancel.is_set():
        lock.release()
        return False
    return True


def _request(messages: list[Message], params: GenerationParams) -> dict[str, Any]:
    request: dict[str, Any] = {
        "messages": [m.to_dict() for m in messages],
        "stream": True,
        "max_tokens": params.max_tokens,
        # llama-cpp-python derives the same "random" seed on every call when given none,
        # which would make self-fusion samples identical: draw a fresh one instead.
        "seed": params.seed if params.seed is not None else random.getrandbits(32),
    }
    if params.temperature is not None:
        request["temperature"] = params.temperature
    if params.top_p is not None:
        request["top_p"] = params.top_p
    if params.stop:
        request["stop"] = list(params.stop)
    if params.json_schema is not None:
        request["response_format"] = {"type": "json_object", "schema": params.json_schema}
    return request


def _generate(
    model: _Loaded,
    name: str,
    messages: list[Message],
    params: GenerationParams,
    emit: Callable[[str], None],
    cancel: threading.Event,
) -> Completion | None:
    llama = model.llama
    llama.cancel = cancel
    if params.seed is not None:
        # A seed asks for reproducibility: evaluate the prompt from scratch, since reusing
        # a cached prefix changes batch shapes and with them the last bits of the logits.
        llama.reset()
    parts: list[str] = []
    finish: str | None = None
    try:
        for chunk in llama.create_chat_completion(**_request(messages, params)):
            choice = chunk["choices"][0]
            text = choice["delta"].get("content")
            if text:
                parts.append(text)
                emit(text)
            finish = choice.get("finish_reason") or finish
    except _Cancelled:
        llama.reset()  # the KV cache may hold a half-evaluated prompt
        return None
    except ValueError as e:
        if "exceed context window" in str(e):
            raise ProviderError(
                "bad_response",
                f"local:{name}: the prompt does not fit the context window ({e}); "
                "shorten it or raise MODELFUSION_LOCAL_N_CTX",
            ) from None
        raise ProviderError("upstream_error", f"local:{name}: llama.cpp failed: {e}") from None
    except Exception as e:  # llama-cpp-python raises a variety; the panel expects one kind
        llama.reset()
        raise ProviderError("upstream_error", f"local:{name}: llama.cpp failed: {e}") from None
    finally:
        llama.cancel = None
    usage = Usage(llama.prompt_tokens, llama.completion_tokens())
    # Local inference is free, and that is known: 0.0, not "unknown" (None).
    return Completion("".join(parts), usage, 0.0, finish)


def _run(
    path: Path,
    name: str,
    messages: list[Message],
    params: list[GenerationParams],
    emits: list[Callable[[str], None]],
    cancel: threading.Event,
) -> list[Completion] | None:
    """Decode-thread body: load (or reuse) the model, lock it, generate one completion per
    params entry. Several samples of one prompt are one batch when the model allows (a
    chat template, no JSON schema: batch.batchable), else one call after another."""
    if cancel.is_set():
        return None
    model = _CACHE.acquire(path)
    try:
        if not _acquire(model.lock, cancel):
            return None
        try:
            if batch.batchable(model.llama, params):
                try:
                    return batch.generate_batch(model.llama, name, messages, params, emits,
                                                cancel)
                except _Cancelled:
                    return None
                except ProviderError:
                    raise
                except Exception as e:  # as in _generate: one kind of failure for the panel
                    raise ProviderError("upstream_error",
                                        f"local:{name}: llama.cpp failed: {e}") from None
            done = []
            for p, emit in zip(params, emits, strict=True):
                completion = _generate(model, name, messages, p, emit, cancel)
                if completion is None:
                    return None
                done.append(completion)
            return done
        finally:
            model.lock.release()
    finally:
        _CACHE.release(model)


# ---------------------------------------------------------------------------------------
# The provider


class LocalProvider:
    supports_json_schema = True
    remote = False

    def __init__(self, cfg: ProviderConfig) -> None:
        self.name = cfg.name

    async def complete(
        self,
        model: str,
        messages: list[Message],
        params: GenerationParams,
        *,
        on_delta: DeltaCallback | None = None,
        headers: dict[str, str] | None = None,  # meaningless in-process; accepted, unused
    ) -> Completion:
        return (await self._decode(model, messages, [params], [on_delta]))[0]

    async def complete_many(
        self,
        model: str,
        messages: list[Message],
        params: list[GenerationParams],
        *,
        on_delta: list[DeltaCallback | None],
        headers: dict[str, str] | None = None,  # meaningless in-process; accepted, unused
    ) -> list[Completion]:
        """N samples of one prompt (one entry of `params` each), decoded as one llama.cpp
        batch: the prompt is evaluated once and each step decodes every sample. The panel
        sends a model's self-fusion copies this way (docs/local.md)."""
        return await self._decode(model, messages, params, on_delta)

    async def _decode(self, model: str, messages: list[Message], params: list[GenerationParams],
                      on_delta: list[DeltaCallback | None]) -> list[Completion]:
        _require_llama_cpp()
        loop = asyncio.get_running_loop()
        cancel = threading.Event()

        def emitter(callback: DeltaCallback | None) -> Callable[[str], None]:
            def emit(text: str) -> None:
                if callback is None:
                    return
                try:
                    loop.call_soon_threadsafe(callback, text)
                except RuntimeError:  # the loop is closed: nobody is listening any more
                    cancel.set()
            return emit

        # Assembling or hashing a catalogue model is file work: keep it off the decode thread.
        path = await asyncio.to_thread(catalog.resolve, model)
        future = loop.run_in_executor(_DECODE_EXECUTOR, _run, path, model, messages, params,
                                      [emitter(c) for c in on_delta], cancel)
        try:
            result = await future
        except asyncio.CancelledError:
            # Still queued: the executor drops it. Running: it stops at its next token.
            cancel.set()
            raise
        if result is None:  # only when cancelled from outside the task (loop closing)
            raise ProviderError("cancelled", f"local:{model}: the call was cancelled")
        return result

    async def aclose(self) -> None:
        # Loaded models are shared by every LocalProvider in the process; nothing to free.
        return None


def check_model(model: str) -> None:
    """Fail fast (UsageError) if `local:<model>` cannot run here: for preflight in the CLI."""
    _require_llama_cpp()
    catalog.check(model)


@register_kind("local")
def _factory(cfg: ProviderConfig) -> LocalProvider:
    return LocalProvider(cfg)


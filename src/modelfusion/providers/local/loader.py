"""Loading a GGUF model into llama.cpp: the guarded llama-cpp-python import, the settings
read from the environment (memory budget, context size, threads, extra buffer types), the
Llama subclass that counts tokens and can be stopped between tokens and mid-prompt, and the
estimate of what a loaded model holds in memory. runtime.py schedules and runs the calls.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Generator
from pathlib import Path
from typing import Any

from ...errors import UsageError
from . import catalog

# llama.cpp's OpenMP threads spin at every barrier. With libgomp's default spin count, one
# busy core elsewhere slows decoding 3-10x; 3000 keeps idle-machine speed and degrades
# gracefully (measured, see docs/local.md). libgomp reads it once, when llama_cpp loads it.
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", "3000")

llama_cpp: Any
llama_c: Any
try:  # optional dependency: the `local` extra
    import llama_cpp
    import llama_cpp.llama_cpp as llama_c
except ImportError:  # pragma: no cover - exercised only without the extra
    llama_cpp = None
    llama_c = None

DEFAULT_MEMORY_MB = 4096  # both shipped models (~2.1 GB estimated) fit with room to spare
DEFAULT_N_CTX = 4096  # prompt + answer; a judge prompt with 3-4 candidates fits
# Sequences per model context: llama.cpp fixes the number when the context is created
# (batch.py decodes up to this many samples at once; more run as several batches).
MAX_SEQUENCES = 16
_OVERHEAD_BYTES = 128 << 20  # compute buffers and bookkeeping per loaded model, estimated


class _Cancelled(Exception):
    """Raised inside llama-cpp-python's generators to stop work for a cancelled call."""


# ---------------------------------------------------------------------------------------
# Settings from the environment


def memory_budget_bytes() -> int:
    return _env_int("MODELFUSION_LOCAL_MEMORY_MB", DEFAULT_MEMORY_MB) << 20


def n_ctx() -> int:
    return _env_int("MODELFUSION_LOCAL_N_CTX", DEFAULT_N_CTX)


def n_threads() -> int:
    default = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)
    return _env_int("MODELFUSION_LOCAL_THREADS", default)


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise UsageError(f"{name}={raw!r} must be a positive whole number (default {default})")
    return value


def _use_extra_buffers() -> bool:
    """Whether llama.cpp may use its extra CPU buffer types (AMX, weight repacking).

    llama.cpp's AMX kernels crash with a protection fault on VMs that advertise AMX but do
    not let guests use it (seen on the 2-core dev machines), so they stay off whenever the
    build reports AMX. MODELFUSION_LOCAL_EXTRA_BUFFERS=1 / 0 overrides the guess.
    """
    forced = os.environ.get("MODELFUSION_LOCAL_EXTRA_BUFFERS", "").strip()
    if forced:
        return forced.lower() in {"1", "true", "yes", "on"}
    info = llama_c.llama_print_system_info().decode(errors="replace")
    return "AMX_INT8 = 1" not in info


# ---------------------------------------------------------------------------------------
# One loaded model


def _require_llama_cpp() -> None:
    if llama_cpp is None:
        raise UsageError(
            "local: models need llama-cpp-python, which is not installed. "
            f"Install the local extra: {catalog.INSTALL_HINT}"
        )


_LLAMA_LOG = logging.getLogger("llama-cpp-python")  # where llama-cpp-python routes C logs
_NO_ABORT = llama_c.ggml_abort_callback() if llama_c is not None else None  # NULL pointer


def _llama_class() -> type:
    class _Llama(llama_cpp.Llama):
        """Llama that counts tokens and can be stopped between tokens and mid-prompt."""

        cancel: threading.Event | None = None
        prompt_tokens = 0
        sampled_tokens = 0
        last_token = -1

        def _check(self) -> None:
            if self.cancel is not None and self.cancel.is_set():
                raise _Cancelled

        def eval(self, tokens: Any) -> None:
            self._check()
            cancel = self.cancel
            if cancel is None or len(tokens) <= 1:
                super().eval(tokens)  # one decode step: checked again before the next
                return
            # A prompt takes seconds: let llama.cpp poll the flag between graph nodes and
            # abort mid-batch (measured: no cost, stops within ~20 ms).
            abort = llama_c.ggml_abort_callback(lambda _data: cancel.is_set())
            llama_c.llama_set_abort_callback(self._ctx.ctx, abort, None)
            level = _LLAMA_LOG.level
            _LLAMA_LOG.setLevel(logging.CRITICAL)  # an abort is logged as an error: expected
            try:
                super().eval(tokens)
            except RuntimeError:  # "llama_decode returned 2": aborted
                if cancel.is_set():
                    raise _Cancelled from None
                raise
            finally:
                llama_c.llama_set_abort_callback(self._ctx.ctx, _NO_ABORT, None)
                _LLAMA_LOG.setLevel(level)

        def generate(
            self, tokens: Any, *args: Any, **kwargs: Any
        ) -> Generator[int, Any, None]:
            self.prompt_tokens = len(tokens)
            self.sampled_tokens = 0
            gen = super().generate(tokens, *args, **kwargs)
            try:
                sent = None
                while True:
                    try:
                        token = gen.send(sent)
                    except StopIteration:
                        return
                    self.sampled_tokens += 1
                    self.last_token = token
                    self._check()
                    sent = yield token
            finally:
                gen.close()

        def completion_tokens(self) -> int:
            eog = llama_c.llama_vocab_is_eog(self._model.vocab, self.last_token)
            return max(0, self.sampled_tokens - (1 if eog else 0))

    return _Llama


_LLAMA_CLASS: type | None = None
_PATCH_LOCK = threading.Lock()  # guards the temporary params patch in _load_llama


def _load_llama(path: Path, cls: type | None = None) -> Any:
    """Construct a Llama (our counting subclass unless `cls` is given) with our settings."""
    global _LLAMA_CLASS
    _require_llama_cpp()
    if cls is None:
        if _LLAMA_CLASS is None:
            _LLAMA_CLASS = _llama_class()
        cls = _LLAMA_CLASS
    extra = _use_extra_buffers()
    with _PATCH_LOCK:
        # Llama() has no switch for extra buffer types nor for parallel sequences, so its
        # default model and context params are adjusted for this one construction. One
        # unified KV cache serves every sequence of a batch (batch.py): n_ctx cells in all,
        # as for one sequence, and a shared prompt is held once.
        original, original_ctx = (llama_c.llama_model_default_params,
                                  llama_c.llama_context_default_params)

        def params() -> Any:
            p = original()
            p.use_extra_bufts = extra
            return p

        def context_params() -> Any:
            p = original_ctx()
            p.n_seq_max = MAX_SEQUENCES
            p.kv_unified = True
            return p

        llama_c.llama_model_default_params = params
        llama_c.llama_context_default_params = context_params
        try:
            return cls(
                model_path=str(path), n_ctx=n_ctx(), n_threads=n_threads(),
                n_threads_batch=n_threads(), verbose=False,
            )
        except ValueError:  # llama-cpp-python's "Failed to load model from file"
            raise UsageError(
                f"llama.cpp could not load {path}: is it a complete GGUF model of an "
                f"architecture llama-cpp-python {llama_cpp.__version__} supports?"
            ) from None
        finally:
            llama_c.llama_model_default_params = original
            llama_c.llama_context_default_params = original_ctx


def _estimate_bytes(path: Path, llama: Any) -> int:
    """File size + KV cache for n_ctx (f16) + compute buffers: what the model will hold."""
    meta = llama.metadata
    arch = meta.get("general.architecture", "")
    try:
        layers = int(meta[f"{arch}.block_count"])
        heads = int(meta[f"{arch}.attention.head_count"])
        kv_heads = int(meta.get(f"{arch}.attention.head_count_kv", heads))
        head_dim = int(meta[f"{arch}.embedding_length"]) // heads
        kv = layers * kv_heads * head_dim * 2 * 2 * llama.n_ctx()
    except (KeyError, ValueError, ZeroDivisionError):
        kv = path.stat().st_size // 8
    return path.stat().st_size + kv + _OVERHEAD_BYTES

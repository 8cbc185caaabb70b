"""N samples of one prompt decoded as one llama.cpp batch (runs on the decode thread).

Why: on these CPUs a decode step is bound by reading the weights, so decoding 4 sequences
at once costs far less than 4 runs (llama.cpp's batched-bench: 2.5x one sequence for the
0.5B, 3.1x for the 1.5B). How, with llama.cpp's own API:
- the prompt is evaluated once, on sequence 0 (through the Llama object, so a prefix its
  cache already holds is reused and a cancel aborts it mid-prompt), then shared with
  sequences 1..N-1 by `llama_memory_seq_cp` (the KV cache is unified: no copy is made);
- each step decodes one token per live sequence in one `llama_decode`; each sequence
  samples from its own logits row with its own sampler chain (its own temperature and
  seed), the same chain llama-cpp-python builds for a chat completion;
- afterwards only the prompt stays cached, so the next call on this model (a judge on
  the same question, another batch) starts from it.

A batch that would not fit the context (prompt + every sequence's max_tokens) is split
into batches that do. Only chat-template models are batched (the shipped ones are); the
caller falls back to one call per sample otherwise.
"""

from __future__ import annotations

import codecs
import random
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ...errors import ProviderError
from ...types import Completion, GenerationParams, Message, Usage
from .loader import MAX_SEQUENCES, _Cancelled, llama_c

# llama-cpp-python's create_chat_completion defaults, so a batched sample is drawn from the
# same distribution as a single call's.
DEFAULT_TEMPERATURE = 0.2
TOP_K, TOP_P, MIN_P = 40, 0.95, 0.05


def batchable(llama: Any, params: Sequence[GenerationParams]) -> bool:
    """Whether these calls can share one batch: free-form text (no JSON schema, whose
    grammar llama-cpp-python applies per call), bounded answers, a chat-template model."""
    return (len(params) > 1 and llama.chat_format == "chat_template.default"
            and all(p.json_schema is None and p.max_tokens is not None for p in params))


def _prompt_tokens(llama: Any, messages: list[Message]) -> tuple[list[int], list[str]]:
    """The chat prompt as tokens, and its stop strings: what create_chat_completion does."""
    from llama_cpp import llama_chat_format

    model = llama._model
    eos, bos = model.token_eos(), model.token_bos()
    formatter = llama_chat_format.Jinja2ChatFormatter(
        template=llama.metadata["tokenizer.chat_template"],
        eos_token=model.token_get_text(eos) if eos != -1 else "",
        bos_token=model.token_get_text(bos) if bos != -1 else "",
        stop_token_ids=[eos],
    )
    result = formatter(messages=[m.to_dict() for m in messages])  # type: ignore[misc]
    tokens = llama.tokenize(result.prompt.encode("utf-8"), add_bos=not result.added_special,
                            special=True)
    stop = result.stop if isinstance(result.stop, list) else [result.stop] if result.stop else []
    return tokens, [s for s in stop if s]


@dataclass(slots=True)
class _Sequence:
    """One sample of the batch: its sampler, its text so far, and why it stopped."""

    seq_id: int
    params: GenerationParams
    emit: Callable[[str], None]
    sampler: Any
    decoder: Any = field(default_factory=lambda: codecs.getincrementaldecoder("utf-8")("replace"))
    parts: list[str] = field(default_factory=list)
    generated: int = 0  # answer tokens (the end-of-generation token is not one)
    finish: str | None = None
    token: int = -1  # the last sampled token: the next step decodes it

    def take(self, llama: Any, token: int, stops: list[str]) -> None:
        """Record one sampled token; set `finish` when the sequence is done."""
        if llama_c.llama_vocab_is_eog(llama._model.vocab, token):
            self.finish = "stop"
            return
        self.token = token
        self.generated += 1
        text = self.decoder.decode(llama._model.detokenize([token]))
        if text:
            self.parts.append(text)
            self.emit(text)
        if stops and any(s in "".join(self.parts[-8:]) for s in stops):
            self.finish = "stop"
        elif self.generated >= (self.params.max_tokens or 0):
            self.finish = "length"

    def completion(self, prompt_tokens: int, stops: list[str]) -> Completion:
        content = "".join(self.parts)
        for s in stops:  # a stop string is not part of the answer
            content = content.split(s, 1)[0]
        return Completion(content, Usage(prompt_tokens, self.generated), 0.0, self.finish)


def _sampler(params: GenerationParams) -> Any:
    chain = llama_c.llama_sampler_chain_init(llama_c.llama_sampler_chain_default_params())
    temperature = DEFAULT_TEMPERATURE if params.temperature is None else params.temperature
    if temperature <= 0:
        llama_c.llama_sampler_chain_add(chain, llama_c.llama_sampler_init_greedy())
        return chain
    seed = params.seed if params.seed is not None else random.getrandbits(32)
    for stage in (llama_c.llama_sampler_init_top_k(TOP_K),
                  llama_c.llama_sampler_init_top_p(TOP_P, 1),
                  llama_c.llama_sampler_init_min_p(MIN_P, 1),
                  llama_c.llama_sampler_init_temp(temperature),
                  llama_c.llama_sampler_init_dist(seed)):
        llama_c.llama_sampler_chain_add(chain, stage)
    return chain


def generate_batch(
    llama: Any,
    name: str,
    messages: list[Message],
    params: Sequence[GenerationParams],
    emits: Sequence[Callable[[str], None]],
    cancel: threading.Event,
) -> list[Completion] | None:
    """One completion per params entry, decoded together; None when cancelled."""
    tokens, stops = _prompt_tokens(llama, messages)
    room = llama.n_ctx() - len(tokens)
    longest = max(p.max_tokens or 0 for p in params)
    if room < longest:
        raise ProviderError(
            "bad_response", f"local:{name}: the prompt ({len(tokens)} tokens) and the answer "
            f"({longest}) do not fit the context window ({llama.n_ctx()}); shorten it or "
            "raise MODELFUSION_LOCAL_N_CTX")
    per_batch = max(1, min(MAX_SEQUENCES, room // max(1, longest)))
    results: list[Completion] = []
    llama.cancel = cancel
    try:
        for start in range(0, len(params), per_batch):
            chunk = range(start, min(len(params), start + per_batch))
            done = _decode(llama, tokens, stops, [params[i] for i in chunk],
                           [emits[i] for i in chunk], cancel)
            if done is None:
                return None
            results.extend(done)
    finally:
        llama.cancel = None
    return results


def _decode(llama: Any, tokens: list[int], stops: list[str],
            params: list[GenerationParams], emits: list[Callable[[str], None]],
            cancel: threading.Event) -> list[Completion] | None:
    ctx = llama._ctx.ctx
    memory = llama_c.llama_get_memory(ctx)
    if any(p.seed is not None for p in params):
        llama.reset()  # a seed asks for reproducibility: the prompt from scratch (runtime.py)
    # Reuse what the cache already holds of this prompt, but evaluate at least its last
    # token: the first samples come from its logits.
    keep = 0
    for cached, token in zip(llama._input_ids.tolist(), tokens[:-1], strict=False):
        if cached != token:
            break
        keep += 1
    llama.n_tokens = keep
    seqs = [_Sequence(i, p, emit, _sampler(p)) for i, (p, emit) in
            enumerate(zip(params, emits, strict=True))]
    batch = llama_c.llama_batch_init(len(seqs), 0, 1)
    try:
        llama.eval(tokens[keep:])  # sequence 0; stops mid-prompt when cancelled
        for seq in seqs[1:]:
            llama_c.llama_memory_seq_cp(memory, 0, seq.seq_id, -1, -1)
        rows = {seq.seq_id: -1 for seq in seqs}  # where each sequence's logits are
        position = len(tokens)
        while True:
            live = [s for s in seqs if s.finish is None]
            for seq in live:
                token = llama_c.llama_sampler_sample(seq.sampler, ctx, rows[seq.seq_id])
                seq.take(llama, token, stops)
            live = [s for s in live if s.finish is None]
            if not live:
                break
            if cancel.is_set():
                raise _Cancelled
            batch.n_tokens = len(live)
            for row, seq in enumerate(live):
                batch.token[row] = seq.token
                batch.pos[row] = position
                batch.n_seq_id[row] = 1
                batch.seq_id[row][0] = seq.seq_id
                batch.logits[row] = True
                rows[seq.seq_id] = row
            status = llama_c.llama_decode(ctx, batch)
            if status != 0:
                raise ProviderError("upstream_error",
                                    f"llama.cpp could not decode a batch (status {status})")
            position += 1
    except BaseException:
        # The cache may hold half a prompt and the samples' sequences; llama-cpp-python's
        # own reset() forgets only sequence 0's tokens, so clear the memory itself.
        llama_c.llama_memory_clear(memory, True)
        llama.reset()
        raise
    finally:
        llama_c.llama_batch_free(batch)
        for seq in seqs:
            llama_c.llama_sampler_free(seq.sampler)
    # Keep only the prompt: the samples' tokens go, sequence 0's prompt stays for reuse.
    for seq in seqs[1:]:
        llama_c.llama_memory_seq_rm(memory, seq.seq_id, -1, -1)
    llama_c.llama_memory_seq_rm(memory, 0, len(tokens), -1)
    llama.n_tokens = len(tokens)
    return [seq.completion(len(tokens), stops) for seq in seqs]

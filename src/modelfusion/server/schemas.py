"""The wire format: an OpenAI chat-completions body in, OpenAI-shaped objects out.

Parsing is by hand rather than with pydantic models so that every refusal names the exact
field (`param`, a dotted path such as `fusion.models[1]`) the way OpenAI's errors do.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from ..options import REQUEST_OPTIONS, RULES
from ..types import FusionResult, Message, Usage
from .errors import ApiError, bad_request

# Fusion options a request may set in `fusion` (besides models/judge/mode), and their types,
# from the one table (options.py). `depth` is not one: the server sets it from
# X-Fusion-Depth; nor is `response_schema`. `skills` is parsed on its own (names only).
OPTION_TYPES: dict[str, tuple[type, ...]] = {
    name: rule.types for name, rule in RULES.items() if name in REQUEST_OPTIONS}
# Standard chat-completions fields that map onto fusion options (members get them).
STANDARD_OPTIONS = {"temperature": "temperature", "max_tokens": "max_tokens",
                    "max_completion_tokens": "max_tokens", "seed": "seed", "top_p": "top_p",
                    "stop": "stop"}
# Fields we cannot honour: refusing beats silently answering a different question. Their
# no-op values (null, false, 0, [], {}: what some clients send by default) pass. The
# penalties and logit_bias are not forwarded: not every provider kind takes them (the
# embedded llama.cpp batch does not), and a panel must ask every member the same thing.
UNSUPPORTED = ("tools", "tool_choice", "functions", "function_call", "logprobs",
               "top_logprobs", "audio", "modalities", "prediction", "presence_penalty",
               "frequency_penalty", "logit_bias", "reasoning_effort")
# The OpenAI finish reasons a fused answer can end with; any other upstream word is "stop".
FINISH_REASONS = frozenset({"stop", "length", "content_filter"})
ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
# The default for ServerSettings.max_messages: OpenAI's own limit on `messages`.
MAX_MESSAGES = 2048
# A JSON escape of a UTF-16 surrogate: the only way a body that is valid UTF-8 can carry a
# lone surrogate (json.loads pairs the valid ones into one character).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


@dataclass(slots=True)
class ChatRequest:
    model: str  # as the client wrote it; echoed back in responses
    messages: list[Message]
    stream: bool = False
    include_usage: bool = False
    models: list[str] | None = None  # fusion.models / plugin analysis_models
    judge: str | None = None
    mode: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    # Where each option/spec came from, for naming it in a 400.
    params: dict[str, str] = field(default_factory=dict)


def parse_chat_request(raw: bytes, *, max_messages: int = MAX_MESSAGES) -> ChatRequest:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: absurd nesting
        raise bad_request("the body is not valid JSON", None, "invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object", None, "invalid_json")
    if _SURROGATE_ESCAPE.search(raw):
        try:
            _refuse_lone_surrogates(body, "")
        except RecursionError:  # nested nearly as deep as json.loads allows
            raise bad_request("the body is nested too deeply", None, "invalid_json") from None
    messages = body.get("messages")
    if isinstance(messages, list) and len(messages) > max_messages:
        # Checked before anything looks at them: every member call handles every message.
        raise bad_request(f"'messages' has {len(messages):,} entries: at most {max_messages:,} "
                          "per request on this server (send a shorter conversation)",
                          "messages", "too_many_messages")
    model = body.get("model")
    if not isinstance(model, str) or not model.strip():
        raise bad_request("'model' is required: fusion, fusion/<preset> or provider:model",
                          "model", "missing_required_parameter")
    for name in UNSUPPORTED:
        if body.get(name) not in (None, False, [], {}):  # 0 == False: a zero penalty passes
            raise bad_request(f"'{name}' is not supported by fusion (leave it unset)", name,
                              "unsupported_parameter")
    if body.get("n") not in (None, 1):
        raise bad_request("only n=1 is supported", "n", "unsupported_parameter")
    fmt = body.get("response_format")
    if fmt not in (None, {"type": "text"}):
        raise bad_request("only the text response_format is supported", "response_format",
                          "unsupported_parameter")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise bad_request("'stream' must be a boolean", "stream")
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise bad_request("'stream_options' must be an object", "stream_options")

    req = ChatRequest(model=model.strip(), messages=_messages(body.get("messages")),
                      stream=stream, include_usage=bool(stream_options.get("include_usage")))
    for name, option in STANDARD_OPTIONS.items():
        if body.get(name) is not None:
            _set_option(req, option, body[name], name)
    plugin = _fusion_plugin(body.get("plugins"))
    if plugin is not None:
        _apply_fusion_object(req, plugin, "plugins[fusion]",
                             aliases={"analysis_models": "models", "model": "judge"})
    fusion = body.get("fusion")
    if fusion is not None:
        if not isinstance(fusion, dict):
            raise bad_request("'fusion' must be an object", "fusion")
        _apply_fusion_object(req, fusion, "fusion", aliases={})
    return req


def _refuse_lone_surrogates(value: Any, where: str) -> None:
    """400 naming the first string holding half a UTF-16 surrogate pair: no text encoder
    downstream (the upstream request, the trace store, the response) can write it."""
    if isinstance(value, str):
        if not _encodable(value):
            raise _lone_surrogate(where)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _refuse_lone_surrogates(item, f"{where}[{i}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            if not _encodable(key):  # the key itself cannot be named: name where it is
                raise _lone_surrogate(where, "a key in ")
            _refuse_lone_surrogates(item, f"{where}.{key}" if where else key)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _lone_surrogate(where: str, what: str = "") -> ApiError:
    field = f"{what}{where or 'the body'}"
    return bad_request(f"{field} holds a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff "
                       "escape): send valid Unicode text", where or None, "invalid_unicode")


def _messages(raw: Any) -> list[Message]:
    if not isinstance(raw, list) or not raw:
        raise bad_request("'messages' must be a non-empty array", "messages",
                          "missing_required_parameter")
    out: list[Message] = []
    for i, m in enumerate(raw):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad_request("each message must be an object", where)
        raw_role = m.get("role")
        role = ROLES.get(raw_role) if isinstance(raw_role, str) else None
        if role is None:
            raise bad_request(f"role must be one of {sorted(ROLES)}", f"{where}.role")
        out.append(Message(role, _text(m.get("content"), f"{where}.content")))  # type: ignore[arg-type]
    if not any(m.role == "user" for m in out):
        raise bad_request("'messages' needs at least one user message", "messages")
    return out


def _text(content: Any, where: str) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):  # content parts: text only
        texts = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text" \
                    or not isinstance(part.get("text"), str):
                raise bad_request("only text content parts are supported", f"{where}[{j}]",
                                  "unsupported_parameter")
            texts.append(part["text"])
        return "\n".join(texts)
    raise bad_request("content must be a string or an array of text parts", where)


def _fusion_plugin(plugins: Any) -> dict[str, Any] | None:
    """OpenRouter's shape: plugins: [{"id": "fusion", "analysis_models": [...], "model": J}]."""
    if plugins is None:
        return None
    if not isinstance(plugins, list):
        raise bad_request("'plugins' must be an array", "plugins")
    found = None
    for i, p in enumerate(plugins):
        if not isinstance(p, dict) or p.get("id") != "fusion":
            raise bad_request("only the 'fusion' plugin is supported", f"plugins[{i}].id",
                              "unsupported_parameter")
        found = {k: v for k, v in p.items() if k != "id"}
    return found


def _apply_fusion_object(req: ChatRequest, obj: dict[str, Any], where: str,
                         aliases: dict[str, str]) -> None:
    for key, value in obj.items():
        name = aliases.get(key, key)
        param = f"{where}.{key}"
        if value is None:
            continue
        if name == "models":
            if isinstance(value, str):  # "a:x, b:y" is accepted as a convenience
                value = [s.strip() for s in value.split(",") if s.strip()]
            if not isinstance(value, list) or not value \
                    or not all(isinstance(s, str) and s.strip() for s in value):
                raise bad_request("models must be a non-empty array of provider:model strings",
                                  param)
            req.models = [s.strip() for s in value]
            for i, _ in enumerate(value):
                req.params[f"models[{i}]"] = f"{param}[{i}]"
        elif name in ("judge", "mode"):
            if not isinstance(value, str) or not value.strip():
                raise bad_request(f"{key} must be a non-empty string", param)
            setattr(req, name, value.strip())
            req.params[name] = param
        elif name == "skills":  # names of shipped packs; never a path on the server
            if isinstance(value, str):
                value = [value]
            if not isinstance(value, list) \
                    or not all(isinstance(s, str) and s.strip() for s in value):
                raise bad_request("skills must be an array of skill names", param)
            req.options["skills"] = tuple(s.strip() for s in value)
            req.params["skills"] = param
        elif name in OPTION_TYPES:
            _set_option(req, name, value, param)
        else:
            known = sorted({"models", "judge", "mode", "skills", *OPTION_TYPES, *aliases})
            raise bad_request(f"unknown fusion option {key!r}; known: {', '.join(known)}",
                              param, "unknown_parameter")


def _set_option(req: ChatRequest, name: str, value: Any, param: str) -> None:
    types = OPTION_TYPES[name]
    if name == "stop" and isinstance(value, str):
        value = [value]  # OpenAI takes one stop string or an array of them
    if isinstance(value, bool) != (types == (bool,)) or not isinstance(value, types):
        kinds: dict[tuple[type, ...], str] = {(int,): "an integer", (str,): "a string",
                                              (bool,): "a boolean",
                                              (tuple, list): "an array of strings"}
        kind = kinds.get(types, "a number")
        raise bad_request(f"{param} must be {kind}", param)
    req.options[name] = tuple(value) if isinstance(value, list) else value
    req.params[name] = param


# ---- responses ----


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def usage_dict(usage: Usage) -> dict[str, int]:
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total_tokens}


def finish_reason(result: FusionResult) -> str:
    """Why the answer ended, in OpenAI's words: "length" when the text that became the
    answer was cut at max_tokens (the chosen member's, or the judge's where it wrote it)."""
    reason = result.finish_reason
    return reason if reason in FINISH_REASONS else "stop"


def chat_completion(model: str, result: FusionResult, trace_id: str | None) -> dict[str, Any]:
    return {
        "id": completion_id(),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": result.answer, "refusal": None},
            "logprobs": None,
            "finish_reason": finish_reason(result),
        }],
        "usage": usage_dict(result.usage),
        "system_fingerprint": None,
        "fusion": {**result.to_dict(), "trace_id": trace_id},
    }


class ChunkMaker:
    """`chat.completion.chunk` objects sharing one id, as OpenAI streams them."""

    def __init__(self, model: str) -> None:
        self.base = {"id": completion_id(), "object": "chat.completion.chunk",
                     "created": int(time.time()), "model": model, "system_fingerprint": None}

    def delta(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**self.base, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                          "finish_reason": finish}]}

    def usage(self, usage: Usage) -> dict[str, Any]:
        return {**self.base, "choices": [], "usage": usage_dict(usage)}

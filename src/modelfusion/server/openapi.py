"""The JSON schema of a POST /v1/chat/completions body, for the served OpenAPI document.

The route parses the raw body itself (schemas.py: every refusal names its field), so
FastAPI cannot derive a schema; this one is built from the same tables the parser uses
(ROLES, OPTION_TYPES, STANDARD_OPTIONS, the modes) and the engine's option rules
(options.RULES, which `FusionOptions.validate` applies), so clients and fuzzers see what
the server accepts.
"""

from __future__ import annotations

from typing import Any

from ..modes import MODES
from ..options import MAX_STOP, RULES, Rule
from .schemas import OPTION_TYPES, ROLES
from .settings import ServerSettings

SPEC: dict[str, Any] = {
    "type": "string", "pattern": r"^[A-Za-z0-9_.-]+:.+$",
    "description": "provider:model, optionally *N for N samples; a provider configured on "
                   "the server (never a URL)",
}
_JSON_TYPES: dict[tuple[type, ...], str] = {(int,): "integer", (int, float): "number",
                                             (str,): "string", (bool,): "boolean"}
# The shipped packs by name: one name or a list of them (never a path).
SKILLS = {"anyOf": [{"type": "array", "items": {"type": "string", "minLength": 1}},
                    {"type": "string", "minLength": 1}]}
# OpenAI's `stop`: one string or up to MAX_STOP of them.
STOP = {"anyOf": [{"type": "array", "items": {"type": "string", "minLength": 1},
                   "maxItems": MAX_STOP}, {"type": "string", "minLength": 1}]}


def _range(rule: Rule) -> dict[str, Any]:
    """JSON Schema bounds of one option (quorum's upper bound depends on the panel); the
    levels of one that takes a word (effort)."""
    out: dict[str, Any] = {}
    if rule.choices is not None:
        out["enum"] = list(rule.choices)
    if rule.minimum is not None:
        out["exclusiveMinimum" if rule.above_minimum else "minimum"] = rule.minimum
    if rule.maximum is not None:
        out["maximum"] = rule.maximum
    return out


_RANGES: dict[str, dict[str, Any]] = {
    name: bounds for name, rule in RULES.items() if (bounds := _range(rule))}


def chat_request_schema(settings: ServerSettings) -> dict[str, Any]:
    tokens = {"type": "integer", "minimum": 1, "maximum": settings.max_tokens_cap}
    options: dict[str, Any] = {}
    for name, types in OPTION_TYPES.items():
        if name in ("skills", "stop"):
            options[name] = SKILLS if name == "skills" else STOP
        else:
            options[name] = {"type": _JSON_TYPES[types], **_RANGES.get(name, {})}
    options["max_tokens"] = options["judge_max_tokens"] = tokens
    options["fallback_judge"] = SPEC
    models = {"description": f"the panel: at most {settings.max_members} seats "
                             "(model*N counts N); a comma-separated string is accepted too",
              "anyOf": [{"type": "array", "items": SPEC, "minItems": 1}, {"type": "string"}]}
    fusion = {"type": "object", "additionalProperties": False, "properties": {
        "models": models, "judge": SPEC,
        "mode": {"type": "string", "enum": sorted(MODES)}, **options}}
    part = {"type": "object", "required": ["type", "text"],
            "properties": {"type": {"type": "string", "const": "text"},
                           "text": {"type": "string"}}}
    message = {"type": "object", "required": ["role"], "properties": {
        "role": {"type": "string", "enum": sorted(ROLES)},
        "content": {"anyOf": [{"type": "string"}, {"type": "array", "items": part},
                              {"type": "null"}]}}}
    return {
        "type": "object", "required": ["model", "messages"],
        "description": "OpenAI's chat-completions body; fusion options in `fusion` (or "
                       "OpenRouter's fusion plugin). Tools, logprobs, audio, penalties, "
                       "logit_bias, reasoning_effort and n > 1 are refused.",
        "properties": {
            "model": {"type": "string", "minLength": 1,
                      "description": "fusion, fusion/<preset> or provider:model"},
            "messages": {"type": "array", "items": message, "minItems": 1,
                         "contains": {"type": "object",
                                      "properties": {"role": {"const": "user"}}}},
            "stream": {"type": "boolean"},
            "stream_options": {"type": "object",
                               "properties": {"include_usage": {"type": "boolean"}}},
            "temperature": options["temperature"],
            "max_tokens": tokens, "max_completion_tokens": tokens,
            "seed": options["seed"], "top_p": options["top_p"], "stop": STOP,
            "n": {"type": "integer", "const": 1},
            "response_format": {"type": "object", "required": ["type"],
                                "properties": {"type": {"type": "string", "const": "text"}}},
            "fusion": fusion,
            "plugins": {"type": "array", "items": {
                "type": "object", "required": ["id"], "additionalProperties": False,
                "properties": {"id": {"type": "string", "const": "fusion"},
                               "analysis_models": models, "model": SPEC}}},
        },
    }


def request_body(settings: ServerSettings) -> dict[str, Any]:
    """`openapi_extra` for the route: its request body."""
    return {"requestBody": {"required": True, "content": {
        "application/json": {"schema": chat_request_schema(settings)}}}}

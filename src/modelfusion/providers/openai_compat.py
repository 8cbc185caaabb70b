"""Any OpenAI-compatible endpoint (OpenAI, OpenRouter, vLLM, Ollama, llama.cpp server).

One pooled AsyncOpenAI client per provider. The SDK's own retries are off: the panel is
the single retry layer, so a persistent 429 costs exactly retries + 1 upstream calls.
Every failure is mapped to a ProviderError with a typed reason, including the ones that
arrive with HTTP 200 (an error object in the body, or an error event mid-stream).
"""

from __future__ import annotations

import datetime
import email.utils
import json
import logging
import math
import time
from typing import Any

import openai
from openai import AsyncOpenAI

from ..config import ProviderConfig
from ..errors import ProviderError, redact
from ..types import Completion, GenerationParams, Message, Usage
from .protocol import DeltaCallback, register_kind

log = logging.getLogger("modelfusion.providers")
# A usage figure above this is no real count or cost (a token count past 2^53 is not even
# an exact float): taken as not reported.
MAX_FIGURE = 1e15


class OpenAICompatProvider:
    supports_json_schema = True

    def __init__(self, cfg: ProviderConfig) -> None:
        self.name = cfg.name
        self.remote = cfg.remote
        self._extra_body = dict(cfg.extra_body)
        self._api_key = cfg.api_key()
        self._max_chars = cfg.max_response_chars
        kwargs: dict[str, Any] = {
            "api_key": self._api_key or "not-needed",
            "max_retries": 0,
            "default_headers": dict(cfg.headers) or None,
        }
        if cfg.base_url:
            kwargs["base_url"] = cfg.base_url
        self._client = AsyncOpenAI(**kwargs)
        # Requests are built as dicts (only the fields we set), which the SDK's overloads
        # cannot type-check; the wire format is covered by the tests instead.
        self._create: Any = self._client.chat.completions.create
        # Streams are read as raw SSE lines: building an SDK object per chunk was about half
        # of the engine's CPU under load. Request, auth and status errors stay the SDK's.
        self._stream: Any = self._client.chat.completions.with_streaming_response.create

    async def complete(
        self,
        model: str,
        messages: list[Message],
        params: GenerationParams,
        *,
        on_delta: DeltaCallback | None = None,
        headers: dict[str, str] | None = None,
    ) -> Completion:
        try:
            return await self._complete(model, messages, params, on_delta, headers)
        except ProviderError as e:
            # Upstream text ends up in results, traces and logs: an upstream that quotes our
            # key back (some echo the Authorization header) must not leak it.
            e.args = (redact(str(e), self._api_key),)
            raise

    async def _complete(
        self,
        model: str,
        messages: list[Message],
        params: GenerationParams,
        on_delta: DeltaCallback | None,
        headers: dict[str, str] | None,
    ) -> Completion:
        # `messages` goes in extra_body, past the SDK's per-field transform: it walks every
        # message against the TypedDicts (~0.16 ms each, on the event loop, per member
        # call: 20,000 messages froze the server for seconds) and changes nothing in plain
        # {"role", "content"} dicts. The SDK merges extra_body over its own body.
        request: dict[str, Any] = {"model": model, "messages": []}
        if params.temperature is not None:
            request["temperature"] = params.temperature
        if params.max_tokens is not None:
            request["max_tokens"] = params.max_tokens
        if params.seed is not None:
            request["seed"] = params.seed
        if params.top_p is not None:
            request["top_p"] = params.top_p
        if params.stop:
            request["stop"] = list(params.stop)
        body = {**self._extra_body, "messages": [m.to_dict() for m in messages]}
        if params.json_schema is not None:
            # Sent as a plain body field: the SDK would otherwise re-process the schema on
            # every call (a measurable share of the engine's CPU under load).
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "verdict", "schema": params.json_schema, "strict": False},
            }
        extra = {"extra_headers": headers, "extra_body": body}
        try:
            if on_delta is None:
                resp = await self._create(**request, **extra)
                return _capped(_from_response(resp), self._max_chars)
            async with self._stream(
                **request, stream=True, stream_options={"include_usage": True}, **extra
            ) as response:
                return await _collect_stream(response, on_delta, self._max_chars)
        except openai.APIStatusError as e:
            raise _status_error(e) from None
        except openai.APITimeoutError:
            raise ProviderError("timeout", "the request timed out", retryable=True) from None
        except openai.APIConnectionError as e:
            raise ProviderError(
                "upstream_error", f"connection failed: {e.__cause__ or e!r}", retryable=True
            ) from None
        except openai.APIError as e:  # error body with 200, or an error event mid-stream
            raise _body_error(getattr(e, "body", None), str(e)) from None
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise ProviderError("bad_response", f"malformed response: {e}") from None

    async def aclose(self) -> None:
        await self._client.close()


def _usage(raw: Any) -> tuple[Usage, float | None]:
    if raw is None:
        return Usage(), None
    cost = getattr(raw, "cost", None)
    if cost is None and getattr(raw, "model_extra", None):
        cost = raw.model_extra.get("cost")
    return _figures(raw.prompt_tokens, raw.completion_tokens, cost)


def _usage_dict(raw: dict[str, Any]) -> tuple[Usage, float | None]:
    return _figures(raw.get("prompt_tokens"), raw.get("completion_tokens"), raw.get("cost"))


def _figures(prompt: Any, completion: Any, cost: Any) -> tuple[Usage, float | None]:
    """Usage as the upstream reported it, where it makes sense: a count or a cost that is
    not a finite number at or above zero (NaN, Infinity, -3, "lots") is taken as not
    reported — a token count as 0, the cost as unknown (None, and then the price table's
    figure, if any) — and logged, rather than crashing the fusion or reaching a response
    as `NaN`, which no JSON parser reads."""
    usage = Usage(int(_figure(prompt, "prompt_tokens") or 0),
                  int(_figure(completion, "completion_tokens") or 0))
    return usage, _figure(cost, "cost")


def _figure(value: Any, name: str) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number) or number < 0 \
            or number > MAX_FIGURE:
        log.warning("the upstream reported usage.%s = %.40r; recorded as unknown", name, value)
        return None
    return number


def _from_response(resp: Any) -> Completion:
    extra = getattr(resp, "model_extra", None) or {}
    if extra.get("error"):
        raise _body_error(extra["error"], "error in a 200 response")
    if not getattr(resp, "choices", None):
        raise ProviderError("bad_response", "the response has no choices")
    choice = resp.choices[0]
    usage, cost = _usage(resp.usage)
    return Completion(choice.message.content or "", usage, cost, choice.finish_reason)


def _too_long(limit: int) -> ProviderError:
    return ProviderError("bad_response", f"the answer is longer than {limit:,} characters "
                         "(the provider's max_response_chars)")


def _capped(completion: Completion, limit: int) -> Completion:
    if len(completion.content) > limit:
        raise _too_long(limit)
    return completion


async def _collect_stream(response: Any, on_delta: DeltaCallback, limit: int) -> Completion:
    parts: list[str] = []
    size = 0
    usage, cost, finish = Usage(), None, None
    try:
        async for line in response.iter_lines():
            if not line.startswith("data:"):
                continue  # blank separators, comments, event names
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if chunk.get("error"):
                raise _body_error(chunk["error"], "error event in the stream")
            if chunk.get("usage"):
                usage, cost = _usage_dict(chunk["usage"])
            for choice in chunk.get("choices") or ():
                text = (choice.get("delta") or {}).get("content")
                if text:
                    size += len(text)
                    if size > limit:
                        raise _too_long(limit)  # stop reading: the rest is not wanted
                    parts.append(text)
                    on_delta(text)
                if choice.get("finish_reason"):
                    finish = choice["finish_reason"]
    except (ProviderError, ValueError):
        raise  # ours, or malformed JSON (mapped to bad_response by the caller)
    except Exception as e:  # the transport broke mid-stream (reset, cut, protocol error)
        raise ProviderError("upstream_error", f"the stream broke: {e!r}", retryable=True) from None
    if finish is None:
        raise ProviderError("upstream_error", "the stream ended before it finished",
                            retryable=True)
    return Completion("".join(parts), usage, cost, finish)


def _retry_after(headers: Any) -> float | None:
    """Seconds from retry-after-ms or Retry-After (seconds or an HTTP date). A value that
    is none of these, or not a finite number of seconds from now ("soon, maybe", inf, a
    negative number, a date in year 10000), counts as not sent: the panel's own backoff
    applies, and the member's reason stays `rate_limited` / `upstream_error`."""
    if headers is None:
        return None
    ms = _seconds(headers.get("retry-after-ms"))
    if ms is not None:
        return ms / 1000
    value = headers.get("retry-after")
    seconds = _seconds(value)
    if seconds is not None or not value:
        return seconds
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):  # not a date either
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT; "-0000" parses as naive
        when = when.replace(tzinfo=datetime.UTC)
    return max(0.0, when.timestamp() - time.time())


def _seconds(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _status_error(e: openai.APIStatusError) -> ProviderError:
    status = e.status_code
    message = f"HTTP {status}: {_message(e.body) or e.message}"
    if status == 429:
        return ProviderError("rate_limited", message, retryable=True, status=status,
                             retry_after=_retry_after(e.response.headers))
    if status == 401:
        message += " (check the provider's API key)"
    retryable = status >= 500 or status in (408, 409)
    return ProviderError("upstream_error", message, retryable=retryable, status=status,
                         retry_after=_retry_after(e.response.headers) if retryable else None)


def _body_error(body: Any, fallback: str) -> ProviderError:
    code = body.get("code") if isinstance(body, dict) else None
    message = _message(body) or fallback
    if code in (429, "429", "rate_limit_exceeded"):
        return ProviderError("rate_limited", message, retryable=True)
    return ProviderError("upstream_error", message, retryable=True,
                         status=code if isinstance(code, int) else None)


def _message(body: Any) -> str | None:
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict) and isinstance(inner.get("message"), str):
            return inner["message"]
    return None


@register_kind("openai_compat")
def _factory(cfg: ProviderConfig) -> OpenAICompatProvider:
    return OpenAICompatProvider(cfg)

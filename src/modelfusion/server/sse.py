"""Server-sent-event framing for the chat stream.

Two kinds of frame share one stream:

    data: {chat.completion.chunk}      the answer, exactly as OpenAI streams it
    : fusion {FusionEvent.to_dict()}   panel progress, as an SSE *comment* line

Comment lines are dropped by every conforming SSE parser, the openai SDK's included, so
OpenAI clients see a plain chat stream; the web page (and anyone who wants progress) reads
the raw stream and parses the `: fusion ` lines. A named event (`event: fusion`) would not
do: the SDK yields named events' data as if it were a chunk.
"""

from __future__ import annotations

import json
from typing import Any

PROGRESS_PREFIX = ": fusion "
DONE = b"data: [DONE]\n\n"


def _dumps(obj: Any) -> str:
    # One line per frame, whatever reads it: ASCII only, so that no character a reader may
    # take for a line break (U+2028, U+2029, U+0085, as str.splitlines() and JavaScript
    # do) reaches the wire unescaped; json.dumps escapes \n and \r anyway.
    return json.dumps(obj, ensure_ascii=True, separators=(",", ":"))


def data(obj: Any) -> bytes:
    return f"data: {_dumps(obj)}\n\n".encode()


def progress(obj: dict[str, Any]) -> bytes:
    return f"{PROGRESS_PREFIX}{_dumps(obj)}\n\n".encode()


def error(error_object: dict[str, Any]) -> bytes:
    """A failure after the 200 went out: OpenAI's in-stream error (the SDK raises APIError)."""
    return data({"error": error_object})

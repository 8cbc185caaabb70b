"""Bearer-key auth, on when FUSION_API_KEYS is set."""

from __future__ import annotations

import hmac

from starlette.requests import Request

from .errors import ApiError


def check_bearer(request: Request, keys: tuple[str, ...]) -> None:
    if not keys:
        return
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "missing API key: send 'Authorization: Bearer <key>'",
                       code="invalid_api_key")
    token_b = token.strip().encode()
    # Compare with every key, without stopping at a match: timing says nothing about which.
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(token_b, key.encode())
    if not ok:
        raise ApiError(401, "incorrect API key", code="invalid_api_key")

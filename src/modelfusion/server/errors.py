"""Errors in OpenAI's JSON shape, and how modelfusion's own errors map onto HTTP statuses.

Every non-2xx answer is `{"error": {"message", "type", "param", "code"}}` so that OpenAI
clients raise their usual exception classes (BadRequestError, AuthenticationError, ...).
"""

from __future__ import annotations

from typing import Any

from ..errors import (
    AllMembersFailed,
    BudgetExceeded,
    ConfigError,
    FusionError,
    MissingKeyError,
    OfflineError,
    UsageError,
)

# On a fusion that ran and failed: the openai SDK (and Stainless clients) obey it over their
# default of retrying every 5xx, which would pay for the whole panel again to fail again.
NO_RETRY = {"x-should-retry": "false"}
# OpenAI's `type` per status; the SDK keys its exception classes on the status alone.
_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


class ApiError(Exception):
    """An HTTP error answer. `param` names the offending request field (dotted path)."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or {}
        self.extra = extra or {}

    @property
    def type(self) -> str:
        return _TYPES.get(self.status, "server_error" if self.status >= 500
                          else "invalid_request_error")

    def error_object(self) -> dict[str, Any]:
        return {"message": self.message, "type": self.type, "param": self.param,
                "code": self.code, **self.extra}

    def body(self) -> dict[str, Any]:
        return {"error": self.error_object()}


def bad_request(message: str, param: str | None, code: str = "invalid_value") -> ApiError:
    return ApiError(400, message, code=code, param=param)


def usage_error(e: UsageError, param: str | None) -> ApiError:
    """A caller mistake found by the engine's checks: 400, naming the field it came from.

    A provider whose key is missing on the server is the caller's problem to route around
    (pick another provider), not a server fault, so it is a 400 too; the message does not
    name the server's environment variable.
    """
    if isinstance(e, MissingKeyError):
        return ApiError(400, f"{param or 'a model'} names a provider that is not available "
                        "on this server (no API key configured)", code="provider_unavailable",
                        param=param)
    if isinstance(e, OfflineError):
        return ApiError(400, f"{param or 'a model'} names a network provider and this "
                        "server runs offline", code="provider_unavailable", param=param)
    code = "invalid_model" if isinstance(e, ConfigError) else "invalid_value"
    return ApiError(400, str(e), code=code, param=param)


def run_failure(e: FusionError, *, deadline_passed: bool) -> ApiError:
    """A fusion that ran and failed: 504 when time ran out, else 502 with member reasons.
    Neither is worth an automatic retry (`NO_RETRY`): the members already had theirs."""
    if isinstance(e, AllMembersFailed):
        members = [{"model": m.model, "status": m.status, "reason": m.reason, "error": m.error}
                   for m in e.members]
        if deadline_passed or all(m.reason == "timeout" for m in e.members):
            return ApiError(504, f"no member answered in time: {e}", code="deadline_exceeded",
                            headers=NO_RETRY, extra={"members": members})
        return ApiError(502, str(e), code="all_members_failed", headers=NO_RETRY,
                        extra={"members": members})
    if isinstance(e, UsageError):
        return usage_error(e, None)
    if isinstance(e, BudgetExceeded):  # the request's own limit, not an upstream failure
        return ApiError(400, str(e), code=e.code, param="fusion.max_cost",
                        extra={"spent": {"tokens": e.spent_tokens, "cost": e.spent_cost}})
    return ApiError(502, str(e), code=e.code, headers=NO_RETRY)


def internal_error() -> ApiError:
    """A bug: the same request would meet it again (after paying for the panel again)."""
    return ApiError(500, "internal server error; see the server log", code="internal_error",
                    headers=NO_RETRY)

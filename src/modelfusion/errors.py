"""One small error hierarchy. User mistakes are kept apart from run failures.

    FusionError
    ├── UsageError            the caller asked for something impossible (exit code 2)
    │   ├── ConfigError       bad config file, unknown provider/preset/mode, malformed spec
    │   ├── MissingKeyError   a provider's API key is not in the environment
    │   └── OfflineError      a cloud provider was named while offline
    ├── ProviderError         one call to one model failed; carries a typed reason
    └── RunError              the fusion as a whole failed (exit code 1)
        ├── AllMembersFailed  no member produced an answer; lists each member's reason
        └── BudgetExceeded    --max-cost / --max-total-tokens crossed (or would be)
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .types import FailureReason, MemberResult


class FusionError(Exception):
    """Base of every error modelfusion raises on purpose."""

    code = "fusion_error"


class UsageError(FusionError):
    """`option`: the fusion option the mistake is about, if any (the server names its field)."""

    code = "bad_usage"

    def __init__(self, *args: object, option: str | None = None) -> None:
        super().__init__(*args)
        self.option = option


class ConfigError(UsageError):
    code = "bad_config"


class MissingKeyError(UsageError):
    code = "missing_key"


class OfflineError(UsageError):
    code = "offline"


class ProviderError(FusionError):
    """A call to one model failed. `retryable` says whether trying again can help."""

    code = "provider_error"

    def __init__(
        self,
        reason: FailureReason,
        message: str,
        *,
        retryable: bool = False,
        retry_after: float | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(message)
        self.reason: FailureReason = reason
        self.retryable = retryable
        self.retry_after = retry_after
        self.status = status


class RunError(FusionError):
    """The fusion as a whole failed. `members`: what each member did before it failed (empty
    when none ran), so a failed fusion still reports and records what was spent."""

    code = "run_failed"

    def __init__(self, message: str, *, members: list[MemberResult] | None = None) -> None:
        super().__init__(message)
        self.members: list[MemberResult] = members or []


class AllMembersFailed(RunError):
    code = "all_members_failed"

    def __init__(self, members: list[MemberResult]) -> None:
        detail = "; ".join(f"{m.model}: {m.reason} ({m.error})" for m in members)
        super().__init__(f"all members failed: {detail}", members=members)


class BudgetExceeded(RunError):
    """A spending limit was (or would be) crossed; says what was spent."""

    code = "budget_exceeded"

    def __init__(self, message: str, *, spent_tokens: int, spent_cost: float,
                 members: list[MemberResult] | None = None) -> None:
        super().__init__(message, members=members)
        self.spent_tokens = spent_tokens
        self.spent_cost = spent_cost


# Shapes of credentials an upstream may quote back in an error (Authorization headers,
# OpenAI/OpenRouter/Anthropic-style keys). Exact known keys are removed first.
_CREDENTIAL = re.compile(r"(?i)bearer\s+[^\s\"',}]+|\b(?:sk|rk|pk)-[A-Za-z0-9_\-]{8,}")


def redact(text: str, *secrets: str | None) -> str:
    """Remove API keys from text that came from an upstream, before anyone sees or stores it."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "[redacted]")
    return _CREDENTIAL.sub("[redacted]", text)

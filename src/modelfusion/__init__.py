"""modelfusion: one prompt, a panel of LLMs in parallel, one fused answer."""

from .accounts import (
    Analysis,
    CandidateChecks,
    CheckOutcome,
    ChecksReport,
    Compute,
    Votes,
    VoteSplit,
)
from .config import Config, load_config
from .errors import (
    AllMembersFailed,
    BudgetExceeded,
    ConfigError,
    FusionError,
    MissingKeyError,
    OfflineError,
    ProviderError,
    RunError,
    UsageError,
)
from .fusion import Fusion, FusionOptions, ProviderPool
from .types import (
    Completion,
    FusionEvent,
    FusionResult,
    GenerationParams,
    JudgeResult,
    MemberResult,
    Message,
    Usage,
)

__all__ = [
    "AllMembersFailed",
    "Analysis",
    "BudgetExceeded",
    "CandidateChecks",
    "CheckOutcome",
    "ChecksReport",
    "Completion",
    "Compute",
    "Config",
    "ConfigError",
    "Fusion",
    "FusionError",
    "FusionEvent",
    "FusionOptions",
    "FusionResult",
    "GenerationParams",
    "JudgeResult",
    "MemberResult",
    "Message",
    "MissingKeyError",
    "OfflineError",
    "ProviderError",
    "ProviderPool",
    "RunError",
    "Usage",
    "UsageError",
    "VoteSplit",
    "Votes",
    "load_config",
]
__version__ = "0.1.0"

"""Fusion modes. Importing this package registers the built-in ones."""

from . import best_of, debate, merge, review, verified, vote  # noqa: F401  (registration side effect)
from .base import MODES, Acceptance, ModeContext, ModeOutcome, ModeSpec, register

__all__ = ["MODES", "Acceptance", "ModeContext", "ModeOutcome", "ModeSpec", "register"]

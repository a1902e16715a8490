"""Errors shared across the data plane's layers.

Every layer may import this module; it imports nothing from `unison`, so raising one of
these never pulls in (or cycles through) the composition root or another layer.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A config problem, already phrased for a person: names the file and the key."""


class SpecError(ValueError):
    """An invalid UnisonCluster; the message starts with the offending field path."""


class StartupError(RuntimeError):
    """Start-up failed for a reason a person can fix (port in use, unreadable dir...)."""


__all__ = ["ConfigError", "SpecError", "StartupError"]

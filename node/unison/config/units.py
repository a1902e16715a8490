"""Sizes and durations as UnisonDB's TOML writes them ("4MB", "20ms", "1h30m")."""

from __future__ import annotations

import re
from typing import Any

from unison.errors import ConfigError

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgG]i?[bB]?|[bB])?\s*$")
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


def parse_size(value: Any, key: str) -> int:
    """'1MB', '16MiB', '4k', 1048576 -> bytes."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a size like \"4MB\", got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"{key}: size must not be negative")
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            unit = (m.group(2) or "").lower()[:1]
            return int(float(m.group(1)) * _SIZE_UNITS[unit])
    raise ConfigError(f"{key}: expected a size like \"4MB\", got {value!r}")


def parse_duration(value: Any, key: str) -> float:
    """Go-style durations ('20ms', '5m', '1h30m') or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a duration like \"20ms\", got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ConfigError(f"{key}: duration must not be negative")
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if text == "0":
            return 0.0
        parts = _DURATION_RE.findall(text)
        if parts and "".join(n + u for n, u in parts) == text:
            return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    raise ConfigError(f"{key}: expected a duration like \"20ms\" or \"5m\", got {value!r}")


def format_duration(seconds: float) -> str:
    if seconds == 0:
        return "0s"
    ms = round(seconds * 1000)
    if ms % 3_600_000 == 0:
        return f"{ms // 3_600_000}h"
    if ms % 60_000 == 0:
        return f"{ms // 60_000}m"
    if ms % 1000 == 0:
        return f"{ms // 1000}s"
    return f"{ms}ms"


def format_size(n: int) -> str:
    for unit, mult in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if n and n % mult == 0:
            return f"{n // mult}{unit}"
    return str(n)


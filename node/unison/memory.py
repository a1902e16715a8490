"""Handing freed heap back to the operating system.

glibc keeps freed memory in its arenas, so after a burst (many replication streams, a
flood of ZeroMQ subscriptions) a node's RSS would stay at its peak although nothing holds
the memory any more. `release_memory()` asks glibc to return it (`malloc_trim(0)`).
"""

from __future__ import annotations

import ctypes
import time

_LIBC: ctypes.CDLL | None
try:
    _LIBC = ctypes.CDLL("libc.so.6")
    _LIBC.malloc_trim  # noqa: B018 (glibc only)
except (OSError, AttributeError):
    _LIBC = None

_last = 0.0


def release_memory(min_interval: float = 1.0) -> None:
    """malloc_trim(0), at most once per `min_interval` seconds; a no-op off glibc."""
    global _last
    now = time.monotonic()
    if _LIBC is None or now - _last < min_interval:
        return
    _last = now
    _LIBC.malloc_trim(0)

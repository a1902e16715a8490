"""The storage errors every reader and writer of a namespace may see."""

from __future__ import annotations


class StoreClosed(RuntimeError):
    """The namespace takes no (more) writes: closed, closing, or failed (the message says)."""


class WriteUnavailable(StoreClosed):
    """A write refused for now, not for good: the write queue is full, or the WAL sync
    has stalled (the message says which). The API answers 503; retry later."""


class LogTrimmed(LookupError):
    """The asked-for LSN is older than the retained log."""

    def __init__(self, wanted: int, first: int) -> None:
        super().__init__(f"lsn {wanted} is older than the retained log (first retained: {first})")
        self.wanted = wanted
        self.first = first


class OutOfOrder(ValueError):
    """A replicated record does not continue this namespace's log."""

"""The identity of a namespace's history: which log an LSN belongs to.

LSNs alone cannot tell two histories apart: a datacenter that lost its disk starts again
at LSN 1, and once it passes a follower's LSN the follower would splice the new history
onto the old one. So every log gets an id when it is created (kept in the namespace's
meta, through snapshots, restarts and restores) and an epoch that changes when a history
is reset (a restore from a follower: the restored node continues from the follower's LSN,
which may be older than what other followers already hold from the lost node).

`epoch_starts[i]` is the first LSN of epoch i + 1; a follower may move from its epoch to a
newer one only while everything it holds precedes the first newer epoch's start.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field

from unison.storage.layout import META_HISTORY


@dataclass(frozen=True, slots=True)
class History:
    id: str
    epoch: int = 1
    epoch_starts: tuple[int, ...] = field(default=(1,))

    @staticmethod
    def new() -> History:
        return History(uuid.uuid4().hex)

    def __str__(self) -> str:
        return f"{self.id}/epoch {self.epoch}"

    def encode(self) -> bytes:
        return json.dumps({"id": self.id, "epoch": self.epoch,
                           "epoch_starts": list(self.epoch_starts)}).encode()

    @staticmethod
    def decode(raw: bytes) -> History:
        d = json.loads(raw)
        return History(str(d["id"]), int(d["epoch"]), tuple(int(s) for s in d["epoch_starts"]))

    def next_epoch(self, start_lsn: int) -> History:
        """The same history reset at `start_lsn` (the first LSN written after the reset)."""
        return History(self.id, self.epoch + 1, (*self.epoch_starts, start_lsn))

    def continues(self, local: History, local_lsn: int) -> bool:
        """True when a follower holding `local` up to `local_lsn` may follow this history:
        the same id, and any newer epoch here starts after everything the follower holds."""
        if self.id != local.id or self.epoch < local.epoch:
            return False
        newer = self.epoch_starts[local.epoch:]  # starts of epochs after the local one
        return all(local_lsn < start for start in newer)


def load(raw: bytes | None) -> History | None:
    return History.decode(raw) if raw else None


__all__ = ["META_HISTORY", "History", "load"]

"""The CRDTs themselves: LWW-register, G-counter, PN-counter.

Each type offers two ways in: `apply(update)` for one incoming value (what the client
does per notification; it reports what happened so the seed's lines can be printed),
and `merge(other)` for whole states. Both are joins in a semilattice, so they are
commutative, associative and idempotent (property-tested in tests/unit/test_crdt_*.py).
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass, field
from typing import Any

from unison.crdt.values import GCounterUpdate, LWWUpdate, PNCounterUpdate


class Outcome(enum.Enum):
    UPDATED = "updated"  # state changed
    STALE = "stale"  # incoming value loses to what is held: ignored
    UNCHANGED = "unchanged"  # incoming value is what is held (a duplicate)
    IGNORED = "ignored"  # key prefix not handled by any CRDT


def canonical_json(value: Any) -> str:
    """Deterministic text of a JSON value, used only to break total ties (see LWWRegister)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


@dataclass
class LWWRegister:
    """Last-writer-wins register with the seed's rules: a newer timestamp wins; on equal
    timestamps the lexicographically higher replica id wins; anything else is stale.

    The seed leaves one case order-dependent: the same timestamp *and* replica with two
    different values. We break that tie on the canonical JSON of the value (higher wins)
    so every replica converges no matter the delivery order.
    """

    value: Any
    timestamp: int
    replica: str

    def order_key(self) -> tuple[int, str, str]:
        return (self.timestamp, self.replica, canonical_json(self.value))

    @classmethod
    def from_update(cls, u: LWWUpdate) -> LWWRegister:
        return cls(value=u.value, timestamp=u.timestamp, replica=u.replica)

    def apply(self, u: LWWUpdate) -> Outcome:
        incoming = (u.timestamp, u.replica, canonical_json(u.value))
        current = self.order_key()
        if incoming > current:
            self.value, self.timestamp, self.replica = u.value, u.timestamp, u.replica
            return Outcome.UPDATED
        return Outcome.UNCHANGED if incoming == current else Outcome.STALE

    def merge(self, other: LWWRegister) -> Outcome:
        return self.apply(LWWUpdate(other.value, other.timestamp, other.replica))

    def to_json(self) -> dict[str, Any]:
        return {"value": self.value, "timestamp": self.timestamp, "replica": self.replica}


@dataclass
class GCounter:
    """Grow-only counter (seed): each replica publishes its own running count; keep the
    maximum seen per replica; the value is the sum."""

    counts: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def observe(self, replica: str, count: int) -> Outcome:
        current = self.counts.get(replica)
        if current is None or count > current:
            self.counts[replica] = count
            return Outcome.UPDATED
        return Outcome.UNCHANGED if count == current else Outcome.STALE

    def apply(self, u: GCounterUpdate) -> Outcome:
        if not u.others:
            return self.observe(u.replica, u.count)
        return _combine([self.observe(u.replica, u.count),
                         *(self.observe(r, c) for r, c in u.others)])

    def merge(self, other: GCounter) -> Outcome:
        return _combine([self.observe(r, c) for r, c in other.counts.items()])

    def to_json(self) -> dict[str, Any]:
        return {"counts": dict(sorted(self.counts.items())), "total": self.total}


@dataclass
class PNCounter:
    """Counter that can go down: a G-counter of increments (p) and one of decrements (n)
    per replica; the value is sum(p) - sum(n)."""

    p: GCounter = field(default_factory=GCounter)
    n: GCounter = field(default_factory=GCounter)

    @property
    def total(self) -> int:
        return self.p.total - self.n.total

    def apply(self, u: PNCounterUpdate) -> Outcome:
        return _combine([self.p.observe(u.replica, u.p), self.n.observe(u.replica, u.n),
                         *(o for r, p, n in u.others
                           for o in (self.p.observe(r, p), self.n.observe(r, n)))])

    def merge(self, other: PNCounter) -> Outcome:
        return _combine([self.p.merge(other.p), self.n.merge(other.n)])

    def to_json(self) -> dict[str, Any]:
        return {
            "p": dict(sorted(self.p.counts.items())),
            "n": dict(sorted(self.n.counts.items())),
            "total": self.total,
        }


def _combine(outcomes: list[Outcome]) -> Outcome:
    """Any change means updated; all duplicates means unchanged; otherwise stale."""
    if Outcome.UPDATED in outcomes:
        return Outcome.UPDATED
    if all(o is Outcome.UNCHANGED for o in outcomes):
        return Outcome.UNCHANGED
    return Outcome.STALE

"""State manager: routes keys to CRDTs by prefix, merges, and snapshots to JSON.

Prefixes: `lww:` LWW-register, `counter:` G-counter, `pncounter:` PN-counter. Other keys
are not CRDTs: they are ignored with a log line. Malformed values raise
MalformedValueError naming the key and leave the state untouched.
"""

from __future__ import annotations

import copy
import enum
import logging
from dataclasses import dataclass, field
from typing import Any

from unison.crdt.types import GCounter, LWWRegister, Outcome, PNCounter
from unison.crdt.values import (
    GCounterUpdate,
    LWWUpdate,
    MalformedValueError,
    PNCounterUpdate,
    decode_base64,
    decode_json_object,
    parse_gcounter,
    parse_lww,
    parse_pncounter,
)

log = logging.getLogger(__name__)


class Kind(enum.Enum):
    LWW = "lww:"
    GCOUNTER = "counter:"
    PNCOUNTER = "pncounter:"


def kind_of(key: str) -> Kind | None:
    for kind in Kind:
        if key.startswith(kind.value):
            return kind
    return None


Update = LWWUpdate | GCounterUpdate | PNCounterUpdate


@dataclass(frozen=True)
class ApplyResult:
    """What one incoming value did. `before`/`after` are the key's JSON snapshots
    (None when the key was not held), enough to print the seed's lines."""

    key: str
    kind: Kind | None
    outcome: Outcome
    update: Update | None = None
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None


def parse_update(key: str, doc: dict[str, Any]) -> Update | None:
    """Validate a decoded JSON object for `key`; None when the key is not a CRDT key."""
    kind = kind_of(key)
    if kind is Kind.LWW:
        return parse_lww(key, doc)
    if kind is Kind.GCOUNTER:
        return parse_gcounter(key, doc)
    if kind is Kind.PNCOUNTER:
        return parse_pncounter(key, doc)
    return None


@dataclass
class CRDTState:
    lww: dict[str, LWWRegister] = field(default_factory=dict)
    counters: dict[str, GCounter] = field(default_factory=dict)
    pncounters: dict[str, PNCounter] = field(default_factory=dict)

    # -- one incoming value -------------------------------------------------------------

    def apply_b64(self, key: str, text: str | bytes) -> ApplyResult:
        """Apply a value as the HTTP API returns it (base64 of a JSON object)."""
        if kind_of(key) is None:
            return self._unknown(key)
        return self.apply_json(key, decode_base64(key, text))

    def apply_json(self, key: str, raw: bytes | str) -> ApplyResult:
        """Apply a value given as JSON text."""
        if kind_of(key) is None:
            return self._unknown(key)
        return self.apply_update(key, parse_update(key, decode_json_object(key, raw)))

    def apply_update(self, key: str, update: Update | None) -> ApplyResult:
        kind = kind_of(key)
        if kind is None or update is None:
            return self._unknown(key)
        before = self.get_json(key)
        if kind is Kind.LWW:
            if not isinstance(update, LWWUpdate):
                raise MalformedValueError(key, "an lww: key needs an LWW-register value")
            reg = self.lww.get(key)
            if reg is None:
                self.lww[key] = LWWRegister.from_update(update)
                outcome = Outcome.UPDATED
            else:
                outcome = reg.apply(update)
        elif kind is Kind.GCOUNTER:
            if not isinstance(update, GCounterUpdate):
                raise MalformedValueError(key, "a counter: key needs a G-counter value")
            outcome = self.counters.setdefault(key, GCounter()).apply(update)
        else:
            if not isinstance(update, PNCounterUpdate):
                raise MalformedValueError(key, "a pncounter: key needs a PN-counter value")
            outcome = self.pncounters.setdefault(key, PNCounter()).apply(update)
        return ApplyResult(key, kind, outcome, update, before, self.get_json(key))

    def _unknown(self, key: str) -> ApplyResult:
        log.info(
            "ignoring key %r: not a CRDT key (known prefixes: lww:, counter:, pncounter:)", key
        )
        return ApplyResult(key, None, Outcome.IGNORED)

    # -- whole states -------------------------------------------------------------------

    def merge(self, other: CRDTState) -> None:
        """Join another state into this one (state-based CRDT merge)."""
        for key, reg in other.lww.items():
            mine = self.lww.get(key)
            if mine is None:
                self.lww[key] = copy.deepcopy(reg)
            else:
                mine.merge(reg)
        for key, gc in other.counters.items():
            self.counters.setdefault(key, GCounter()).merge(gc)
        for key, pn in other.pncounters.items():
            self.pncounters.setdefault(key, PNCounter()).merge(pn)

    def get_json(self, key: str) -> dict[str, Any] | None:
        kind = kind_of(key)
        held: LWWRegister | GCounter | PNCounter | None = None
        if kind is Kind.LWW:
            held = self.lww.get(key)
        elif kind is Kind.GCOUNTER:
            held = self.counters.get(key)
        elif kind is Kind.PNCOUNTER:
            held = self.pncounters.get(key)
        return None if held is None else held.to_json()

    def snapshot(self) -> dict[str, Any]:
        """The converged state as JSON (what the client serves at /state)."""
        return {
            "lww": {k: self.lww[k].to_json() for k in sorted(self.lww)},
            "counters": {k: self.counters[k].to_json() for k in sorted(self.counters)},
            "pncounters": {k: self.pncounters[k].to_json() for k in sorted(self.pncounters)},
        }

    @classmethod
    def from_snapshot(cls, doc: dict[str, Any]) -> CRDTState:
        state = cls()
        for key, reg in doc.get("lww", {}).items():
            state.lww[key] = LWWRegister(reg["value"], reg["timestamp"], reg["replica"])
        for key, gc in doc.get("counters", {}).items():
            state.counters[key] = GCounter(dict(gc["counts"]))
        for key, pn in doc.get("pncounters", {}).items():
            state.pncounters[key] = PNCounter(GCounter(dict(pn["p"])), GCounter(dict(pn["n"])))
        return state

    def __len__(self) -> int:
        return len(self.lww) + len(self.counters) + len(self.pncounters)

"""Monotone CRDT state on the nodes: merge a written value into the stored one.

With `storage_config.crdt_merge_namespaces`, a PUT of a CRDT key (`lww:`, `counter:`,
`pncounter:`, as the client parses them) stores the join of the stored value and the
written one, so the stored value per key only ever grows in the CRDT's order and a stale
write changes nothing. A client that scans late then sees what a client that followed
every notification computed. Pure functions; the group-commit writer calls `merge_stored`
for each such write, under its one-writer discipline (storage/writer.py).

Stored forms: an LWW register is stored as the winning write, unchanged. A counter
written by one replica stays in the seed's form `{"replica", "count"}`; once a second
replica writes the same key, `"counts": {replica: count}` (G-counter) or
`"pn": {replica: {"p", "n"}}` (PN-counter) carries every replica's maximum, which the
client's parser merges as well.
"""

from __future__ import annotations

import json
from typing import Any

from unison.crdt.state import Kind, kind_of, parse_update
from unison.crdt.types import canonical_json
from unison.crdt.values import (
    GCounterUpdate,
    LWWUpdate,
    MalformedValueError,
    PNCounterUpdate,
    decode_json_object,
)

PREFIXES = tuple(k.value.encode() for k in Kind)


def is_crdt_key(key: bytes) -> bool:
    return key.startswith(PREFIXES)


def check(key: str, value: bytes) -> None:
    """Raise MalformedValueError unless `value` is a valid update for CRDT key `key`."""
    parse_update(key, decode_json_object(key, value))


def _parse(key: str, raw: bytes) -> LWWUpdate | GCounterUpdate | PNCounterUpdate | None:
    return parse_update(key, decode_json_object(key, raw))


def merge_stored(key: bytes, current: bytes | None, incoming: bytes) -> tuple[bytes, bool]:
    """(the value to store, whether it differs in state from `current`). `incoming` was
    checked by the API; a `current` that is not a valid value (written before the option
    was on) is replaced."""
    name = key.decode("utf-8", "surrogateescape")
    if current is None:
        return incoming, True
    new = _parse(name, incoming)
    try:
        old = _parse(name, current)
    except MalformedValueError:
        return incoming, True
    if isinstance(new, LWWUpdate) and isinstance(old, LWWUpdate):
        if _lww_order(new) > _lww_order(old):
            return incoming, True
        return current, False
    if isinstance(new, GCounterUpdate) and isinstance(old, GCounterUpdate):
        return _merge_counts(new, old, current)
    if isinstance(new, PNCounterUpdate) and isinstance(old, PNCounterUpdate):
        return _merge_pn(new, old, current)
    return incoming, True  # not reached: both parse by the same key's prefix


def _lww_order(u: LWWUpdate) -> tuple[int, str, str]:
    return (u.timestamp, u.replica, canonical_json(u.value))


def _maxed(into: dict[str, Any], replica: str, value: Any) -> None:
    into[replica] = max(into.get(replica, value), value)


def _merge_counts(new: GCounterUpdate, old: GCounterUpdate,
                  current: bytes) -> tuple[bytes, bool]:
    counts: dict[str, int] = {old.replica: old.count, **dict(old.others)}
    before = dict(counts)
    for r, c in ((new.replica, new.count), *new.others):
        _maxed(counts, r, c)
    if counts == before:
        return current, False
    doc: dict[str, Any] = {"replica": new.replica, "count": counts[new.replica]}
    if len(counts) > 1:
        doc["counts"] = dict(sorted(counts.items()))
    return _encode(doc), True


def _merge_pn(new: PNCounterUpdate, old: PNCounterUpdate,
              current: bytes) -> tuple[bytes, bool]:
    pn: dict[str, tuple[int, int]] = {old.replica: (old.p, old.n)}
    pn.update({r: (p, n) for r, p, n in old.others})
    before = dict(pn)
    for r, p, n in ((new.replica, new.p, new.n), *new.others):
        have = pn.get(r, (p, n))
        pn[r] = (max(have[0], p), max(have[1], n))
    if pn == before:
        return current, False
    p, n = pn[new.replica]
    doc: dict[str, Any] = {"replica": new.replica, "p": p, "n": n}
    if len(pn) > 1:
        doc["pn"] = {r: {"p": v[0], "n": v[1]} for r, v in sorted(pn.items())}
    return _encode(doc), True


def _encode(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode()


__all__ = ["PREFIXES", "check", "is_crdt_key", "kind_of", "merge_stored"]

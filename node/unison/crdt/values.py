"""Decode and validate CRDT values as they travel in the database.

A stored value is base64 text (as the HTTP API returns it) of a UTF-8 JSON object.
Every check names the key and what is wrong, so a bad write can be found and fixed;
the caller decides whether to log and skip (the client) or to fail (tests, tools).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Any


class MalformedValueError(ValueError):
    """A value that cannot be a CRDT update for its key."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"malformed value for key {key!r}: {reason}")
        self.key = key
        self.reason = reason


@dataclass(frozen=True)
class LWWUpdate:
    """`{"value": any, "timestamp": int ms, "replica": str}` (seed format)."""

    value: Any
    timestamp: int
    replica: str


@dataclass(frozen=True)
class GCounterUpdate:
    """`{"replica": str, "count": int}` (seed format): that replica's total so far.
    A node that merges CRDT writes (storage_config.crdt_merge_namespaces) adds
    `"counts": {replica: int}` once a key was written by more than one replica."""

    replica: str
    count: int
    others: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class PNCounterUpdate:
    """`{"replica": str, "p": int, "n": int}` (ours): that replica's running totals of
    increments (p) and decrements (n). Both only grow, so each half is a G-counter."""

    replica: str
    p: int
    n: int
    # `"pn": {replica: {"p": int, "n": int}}`, as `counts` of a G-counter.
    others: tuple[tuple[str, int, int], ...] = ()


def decode_base64(key: str, text: str | bytes) -> bytes:
    """Strict standard base64 (the HTTP API's encoding), or MalformedValueError."""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MalformedValueError(key, f"value is not valid base64 ({exc})") from None


def decode_json_object(key: str, raw: bytes | str) -> dict[str, Any]:
    """The JSON object inside a value, or MalformedValueError."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError:
        raise MalformedValueError(key, "value is not UTF-8 text") from None
    try:
        doc = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise MalformedValueError(key, f"value is not JSON ({exc.msg} at char {exc.pos})") from None
    except _NonStandardJSON as exc:
        raise MalformedValueError(
            key, f"value is not standard JSON ({exc} is not allowed)"
        ) from None
    except RecursionError:
        raise MalformedValueError(key, "value is not JSON (nested too deeply)") from None
    if not isinstance(doc, dict):
        raise MalformedValueError(key, f"value must be a JSON object, got {_json_type(doc)}")
    return doc


class _NonStandardJSON(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    # Python's json accepts NaN/Infinity; other JSON parsers (and the seed's Go client) do not
    raise _NonStandardJSON(name)


def _json_type(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int | float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"


def _field(key: str, doc: dict[str, Any], name: str) -> Any:
    if name not in doc:
        raise MalformedValueError(key, f"missing field {name!r}")
    return doc[name]


def _replica(key: str, doc: dict[str, Any]) -> str:
    replica = _field(key, doc, "replica")
    if not isinstance(replica, str) or not replica:
        raise MalformedValueError(
            key, f"field 'replica' must be a non-empty string, got {_json_type(replica)}"
        )
    return replica


def _non_negative_int(key: str, doc: dict[str, Any], name: str) -> int:
    v = _field(key, doc, name)
    # bool is an int subclass in Python but not a JSON number; 5.0 is not an integer
    if isinstance(v, bool) or not isinstance(v, int):
        raise MalformedValueError(key, f"field {name!r} must be an integer, got {_json_type(v)}")
    if v < 0:
        raise MalformedValueError(key, f"field {name!r} must not be negative, got {v}")
    return v


def parse_lww(key: str, doc: dict[str, Any]) -> LWWUpdate:
    value = _field(key, doc, "value")
    return LWWUpdate(
        value=value,
        timestamp=_non_negative_int(key, doc, "timestamp"),
        replica=_replica(key, doc),
    )


def _replica_map(key: str, doc: dict[str, Any], name: str) -> dict[str, Any]:
    v = doc.get(name, {})
    if not isinstance(v, dict) or not all(isinstance(r, str) and r for r in v):
        raise MalformedValueError(key, f"field {name!r} must be an object keyed by replica, "
                                       f"got {_json_type(v)}")
    return v


def parse_gcounter(key: str, doc: dict[str, Any]) -> GCounterUpdate:
    counts = _replica_map(key, doc, "counts")
    others = tuple((r, _non_negative_int(key, counts, r)) for r in sorted(counts))
    return GCounterUpdate(replica=_replica(key, doc), count=_non_negative_int(key, doc, "count"),
                          others=others)


def parse_pncounter(key: str, doc: dict[str, Any]) -> PNCounterUpdate:
    pn = _replica_map(key, doc, "pn")
    others = []
    for r in sorted(pn):
        if not isinstance(pn[r], dict):
            raise MalformedValueError(key, f"field 'pn' entry {r!r} must be an object "
                                           "{\"p\": int, \"n\": int}")
        others.append((r, _non_negative_int(key, pn[r], "p"), _non_negative_int(key, pn[r], "n")))
    return PNCounterUpdate(
        replica=_replica(key, doc),
        p=_non_negative_int(key, doc, "p"),
        n=_non_negative_int(key, doc, "n"),
        others=tuple(others),
    )


def encode_value(doc: dict[str, Any]) -> str:
    """JSON object -> base64 text, the way a writer stores a CRDT value."""
    return base64.b64encode(json.dumps(doc, separators=(",", ":")).encode()).decode()

"""CRDTs for the multi-datacenter demo: LWW-register, G-counter, PN-counter, and a state
manager that routes keys by prefix. Pure code: no I/O.

Value formats (JSON inside the base64 value the HTTP API carries):
- `lww:<name>`       `{"value": any, "timestamp": int ms, "replica": str}` (seed)
- `counter:<name>`   `{"replica": str, "count": int}` (seed): that replica's count so far
- `pncounter:<name>` `{"replica": str, "p": int, "n": int}` (ours): that replica's running
  totals of increments and decrements; value = sum(p) - sum(n) over replicas
Counts and timestamps are non-negative integers; `replica` is a non-empty string; extra
fields are ignored.
"""

from unison.crdt.state import ApplyResult, CRDTState, Kind, kind_of, parse_update
from unison.crdt.types import GCounter, LWWRegister, Outcome, PNCounter, canonical_json
from unison.crdt.values import (
    GCounterUpdate,
    LWWUpdate,
    MalformedValueError,
    PNCounterUpdate,
    encode_value,
)

__all__ = [
    "ApplyResult",
    "CRDTState",
    "GCounter",
    "GCounterUpdate",
    "Kind",
    "LWWRegister",
    "LWWUpdate",
    "MalformedValueError",
    "Outcome",
    "PNCounter",
    "PNCounterUpdate",
    "canonical_json",
    "encode_value",
    "kind_of",
    "parse_update",
]

"""The node-side CRDT merge (unison.crdt.stored): the stored value is the join of what was
written, whatever the order, and the client reading it gets the CRDT result of every
write (so a client that scans late equals one that saw every notification)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from unison.crdt import CRDTState
from unison.crdt.stored import merge_stored

REPLICAS = st.sampled_from(["dc1", "dc2", "dc3"])
LWW = st.fixed_dictionaries({"value": st.integers(0, 3), "timestamp": st.integers(0, 5),
                             "replica": REPLICAS})
GC = st.fixed_dictionaries({"replica": REPLICAS, "count": st.integers(0, 9)})
PN = st.fixed_dictionaries({"replica": REPLICAS, "p": st.integers(0, 9), "n": st.integers(0, 9)})


def _store_all(key: str, docs: list[dict[str, Any]]) -> tuple[bytes | None, list[bool]]:
    stored: bytes | None = None
    changes = []
    for doc in docs:
        stored, changed = merge_stored(key.encode(), stored, json.dumps(doc).encode())
        changes.append(changed)
    return stored, changes


def _client_of(key: str, docs: list[dict[str, Any]]) -> Any:
    state = CRDTState()
    for doc in docs:
        state.apply_json(key, json.dumps(doc))
    return state.get_json(key)


def _check(key: str, docs: list[dict[str, Any]], order: list[int]) -> None:
    stored, changes = _store_all(key, docs)
    assert stored is not None
    # What a client that saw every write computes == what a late client reads once.
    assert _client_of(key, [json.loads(stored)]) == _client_of(key, docs)
    # Any order stores the same state (the join is commutative).
    shuffled = _store_all(key, [docs[i % len(docs)] for i in order] + docs)[0]
    assert _client_of(key, [json.loads(shuffled)]) == _client_of(key, docs)
    # Writing the stored state again changes nothing.
    again, changed = merge_stored(key.encode(), stored, stored)
    assert (again, changed) == (stored, False)
    assert changes[0] is True


@given(st.lists(LWW, min_size=1, max_size=8), st.lists(st.integers(0, 7), max_size=8))
def test_lww_stores_the_join(docs: list[dict[str, Any]], order: list[int]) -> None:
    _check("lww:k", docs, order)


@given(st.lists(GC, min_size=1, max_size=8), st.lists(st.integers(0, 7), max_size=8))
def test_gcounter_stores_the_join(docs: list[dict[str, Any]], order: list[int]) -> None:
    _check("counter:k", docs, order)


@given(st.lists(PN, min_size=1, max_size=8), st.lists(st.integers(0, 7), max_size=8))
def test_pncounter_stores_the_join(docs: list[dict[str, Any]], order: list[int]) -> None:
    _check("pncounter:k", docs, order)


def test_the_issues_case_a_stale_lww_write_is_not_stored() -> None:
    new = json.dumps({"value": "5", "timestamp": 5, "replica": "dc1"}).encode()
    old = json.dumps({"value": "3", "timestamp": 3, "replica": "dc1"}).encode()
    assert merge_stored(b"lww:x", new, old) == (new, False)
    assert merge_stored(b"lww:x", old, new) == (new, True)


def test_a_stored_value_that_is_no_crdt_value_is_replaced() -> None:
    new = json.dumps({"replica": "dc1", "count": 1}).encode()
    assert merge_stored(b"counter:x", b"garbage", new) == (new, True)

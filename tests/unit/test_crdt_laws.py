"""CRDT laws, proven by properties: merging in any order, any grouping, with duplicates
gives one state; that state is what an offline model of the rules says."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from unison.crdt import CRDTState, Outcome, canonical_json

from tests.support.crdt_strategies import texts

REPLICAS = ["ad-campaign-dc1", "ad-campaign-dc2", "eu-west-1"]


json_scalars = st.none() | st.booleans() | st.integers(-3, 3) | texts(3)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts(2), inner, max_size=3),
    max_leaves=5,
)

# small domains on purpose: collisions (equal timestamps, same replica) are what matters
lww_updates = st.tuples(
    st.sampled_from(["lww:a", "lww:b"]),
    st.fixed_dictionaries(
        {"value": json_values, "timestamp": st.integers(0, 4), "replica": st.sampled_from(REPLICAS)}
    ),
)
counter_updates = st.tuples(
    st.sampled_from(["counter:a", "counter:b"]),
    st.fixed_dictionaries({"replica": st.sampled_from(REPLICAS), "count": st.integers(0, 30)}),
)
pn_updates = st.tuples(
    st.sampled_from(["pncounter:a", "pncounter:b"]),
    st.fixed_dictionaries(
        {"replica": st.sampled_from(REPLICAS), "p": st.integers(0, 30), "n": st.integers(0, 30)}
    ),
)
updates_st = st.lists(lww_updates | counter_updates | pn_updates, max_size=25)

Update = tuple[str, dict[str, Any]]

# no per-example deadline: the machine is shared and a slow example is not a wrong one
relaxed = settings(deadline=None, max_examples=200)


def build(updates: list[Update]) -> CRDTState:
    state = CRDTState()
    for key, doc in updates:
        state.apply_json(key, json.dumps(doc))
    return state


def model(updates: list[Update]) -> dict[str, Any]:
    """The rules written down independently of the implementation."""
    lww: dict[str, dict[str, Any]] = {}
    counters: dict[str, dict[str, int]] = {}
    pn: dict[str, tuple[dict[str, int], dict[str, int]]] = {}
    for key, doc in updates:
        if key.startswith("lww:"):
            best = lww.get(key)
            rank = (doc["timestamp"], doc["replica"], canonical_json(doc["value"]))
            if best is None or rank > (
                best["timestamp"],
                best["replica"],
                canonical_json(best["value"]),
            ):
                lww[key] = dict(doc)
        elif key.startswith("counter:"):
            c = counters.setdefault(key, {})
            c[doc["replica"]] = max(c.get(doc["replica"], 0), doc["count"])
        else:
            p, n = pn.setdefault(key, ({}, {}))
            p[doc["replica"]] = max(p.get(doc["replica"], 0), doc["p"])
            n[doc["replica"]] = max(n.get(doc["replica"], 0), doc["n"])
    return {
        "lww": {k: lww[k] for k in sorted(lww)},
        "counters": {
            k: {"counts": dict(sorted(c.items())), "total": sum(c.values())}
            for k, c in sorted(counters.items())
        },
        "pncounters": {
            k: {
                "p": dict(sorted(p.items())),
                "n": dict(sorted(n.items())),
                "total": sum(p.values()) - sum(n.values()),
            }
            for k, (p, n) in sorted(pn.items())
        },
    }


@relaxed
@given(updates_st)
def test_state_is_what_the_rules_say(updates: list[Update]) -> None:
    assert build(updates).snapshot() == model(updates)


@relaxed
@given(st.data(), updates_st)
def test_any_order_gives_the_same_state(data: st.DataObject, updates: list[Update]) -> None:
    shuffled = data.draw(st.permutations(updates))
    assert build(shuffled).snapshot() == build(updates).snapshot()


@relaxed
@given(st.data(), st.lists(lww_updates | counter_updates | pn_updates, min_size=1, max_size=20))
def test_duplicates_change_nothing(data: st.DataObject, updates: list[Update]) -> None:
    extra = data.draw(st.lists(st.sampled_from(updates), max_size=10))
    with_dups = data.draw(st.permutations(updates + extra))
    assert build(with_dups).snapshot() == build(updates).snapshot()


@relaxed
@given(st.data(), updates_st)
def test_any_grouping_gives_the_same_state(data: st.DataObject, updates: list[Update]) -> None:
    # split into groups, build each group's state separately, then merge the states in a
    # random tree shape; duplicates across groups are allowed
    groups: list[list[Update]] = []
    rest = list(updates)
    while rest:
        size = data.draw(st.integers(1, len(rest)))
        groups.append(rest[:size])
        rest = rest[size:]
    if updates:
        groups.append(data.draw(st.lists(st.sampled_from(updates), max_size=4)))
    states = [build(g) for g in groups] or [CRDTState()]
    while len(states) > 1:
        i = data.draw(st.integers(0, len(states) - 2))
        left, right = states[i], states[i + 1]
        if data.draw(st.booleans()):
            left, right = right, left
        left.merge(right)
        states[i : i + 2] = [left]
    assert states[0].snapshot() == build(updates).snapshot()


@relaxed
@given(updates_st, updates_st)
def test_merge_is_commutative_and_idempotent(a: list[Update], b: list[Update]) -> None:
    ab, ba = build(a), build(b)
    ab.merge(build(b))
    ba.merge(build(a))
    assert ab.snapshot() == ba.snapshot()
    before = ab.snapshot()
    ab.merge(build(a))
    ab.merge(ab)
    assert ab.snapshot() == before


@relaxed
@given(
    st.integers(0, 10**13),
    st.lists(st.sampled_from(REPLICAS), min_size=2, max_size=2, unique=True),
    json_values,
    json_values,
)
def test_lww_equal_timestamps_break_on_higher_replica(
    ts: int, replicas: list[str], v1: Any, v2: Any
) -> None:
    low, high = sorted(replicas)
    updates = [
        ("lww:k", {"value": v1, "timestamp": ts, "replica": low}),
        ("lww:k", {"value": v2, "timestamp": ts, "replica": high}),
    ]
    for order in (updates, updates[::-1]):
        state = CRDTState()
        results = [state.apply_json(k, json.dumps(d)) for k, d in order]
        reg = state.lww["lww:k"]
        assert (reg.replica, reg.value) == (high, v2)
        # the lower replica's write is reported as stale when it arrives second
        if order[1][1]["replica"] == low:
            assert results[1].outcome is Outcome.STALE


@relaxed
@given(st.lists(counter_updates | pn_updates, max_size=30))
def test_counters_never_go_backwards(updates: list[Update]) -> None:
    state = CRDTState()
    for key, doc in updates:
        before = state.snapshot()
        state.apply_json(key, json.dumps(doc))
        after = state.snapshot()
        for k, c in before["counters"].items():
            assert after["counters"][k]["total"] >= c["total"]
            for replica, count in c["counts"].items():
                assert after["counters"][k]["counts"][replica] >= count
        for k, c in before["pncounters"].items():
            for half in ("p", "n"):
                for replica, count in c[half].items():
                    assert after["pncounters"][k][half][replica] >= count
            # the value only drops when some decrement total grew
            if after["pncounters"][k]["total"] < c["total"]:
                assert after["pncounters"][k]["n"] != c["n"]


@relaxed
@given(updates_st, lww_updates | counter_updates | pn_updates)
def test_outcome_reports_what_happened(updates: list[Update], last: Update) -> None:
    state = build(updates)
    before = state.snapshot()
    result = state.apply_json(last[0], json.dumps(last[1]))
    changed = state.snapshot() != before
    assert (result.outcome is Outcome.UPDATED) == changed
    again = state.apply_json(last[0], json.dumps(last[1]))
    assert again.outcome is not Outcome.UPDATED
    # a PN update can raise p while its n is behind: re-applying it is then partly stale
    if result.outcome is Outcome.UPDATED and not last[0].startswith("pncounter:"):
        assert again.outcome is Outcome.UNCHANGED


@relaxed
@given(updates_st)
def test_snapshot_round_trips(updates: list[Update]) -> None:
    state = build(updates)
    doc = json.loads(json.dumps(state.snapshot()))
    assert CRDTState.from_snapshot(doc).snapshot() == state.snapshot()

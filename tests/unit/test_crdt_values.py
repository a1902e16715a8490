"""Value formats, the seed's scenarios, and malformed input."""

from __future__ import annotations

import base64
import json
import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from unison.crdt import CRDTState, Kind, MalformedValueError, Outcome, encode_value

from tests.support.crdt_strategies import texts


def put(state: CRDTState, key: str, doc: dict) -> Outcome:
    # exactly what the seed's curl does: base64 of compact JSON
    return state.apply_b64(key, encode_value(doc)).outcome


def test_seed_scenarios_converge_to_the_seed_results() -> None:
    s = CRDTState()
    # 1: newer timestamp wins
    assert (
        put(
            s,
            "lww:user-status",
            {"value": "online", "timestamp": 1698765432000, "replica": "ad-campaign-dc1"},
        )
        is Outcome.UPDATED
    )
    assert (
        put(
            s,
            "lww:user-status",
            {"value": "away", "timestamp": 1698765433000, "replica": "ad-campaign-dc2"},
        )
        is Outcome.UPDATED
    )
    # 2: same timestamp, higher replica id wins
    put(
        s,
        "lww:config",
        {"value": "DC1 wins?", "timestamp": 1764000000000, "replica": "ad-campaign-dc1"},
    )
    assert (
        put(
            s,
            "lww:config",
            {"value": "DC2 wins!", "timestamp": 1764000000000, "replica": "ad-campaign-dc2"},
        )
        is Outcome.UPDATED
    )
    # 3 and 5: G-counters
    put(s, "counter:page-views", {"replica": "ad-campaign-dc1", "count": 5})
    put(s, "counter:page-views", {"replica": "ad-campaign-dc2", "count": 3})
    put(s, "counter:api-calls", {"replica": "ad-campaign-dc1", "count": 100})
    put(s, "counter:api-calls", {"replica": "ad-campaign-dc2", "count": 75})
    put(s, "counter:db-queries", {"replica": "ad-campaign-dc1", "count": 250})
    # 4: the old write arriving late is ignored as stale
    put(s, "lww:feature-flag", {"value": True, "timestamp": 2000, "replica": "ad-campaign-dc1"})
    result = s.apply_b64(
        "lww:feature-flag",
        encode_value({"value": False, "timestamp": 1000, "replica": "ad-campaign-dc2"}),
    )
    assert result.outcome is Outcome.STALE
    assert (
        result.before
        == result.after
        == {"value": True, "timestamp": 2000, "replica": "ad-campaign-dc1"}
    )

    snap = s.snapshot()
    assert snap["lww"]["lww:user-status"] == {
        "value": "away",
        "timestamp": 1698765433000,
        "replica": "ad-campaign-dc2",
    }
    assert snap["lww"]["lww:config"]["value"] == "DC2 wins!"
    assert snap["lww"]["lww:feature-flag"]["value"] is True
    assert snap["counters"]["counter:page-views"] == {
        "counts": {"ad-campaign-dc1": 5, "ad-campaign-dc2": 3},
        "total": 8,
    }
    assert snap["counters"]["counter:api-calls"]["total"] == 175
    assert snap["counters"]["counter:db-queries"] == {
        "counts": {"ad-campaign-dc1": 250},
        "total": 250,
    }


def test_seed_relayer_read_decodes() -> None:
    # the base64 the seed shows the relayer returning for lww:user-status
    s = CRDTState()
    s.apply_b64(
        "lww:user-status",
        "eyJ2YWx1ZSI6ImF3YXkiLCJ0aW1lc3RhbXAiOjE2OTg3NjU0MzMwMDAsInJlcGxpY2EiOiJhZC1jYW1wYWlnbi1kYzIifQ==",
    )
    assert s.lww["lww:user-status"].value == "away"


def test_pncounter_goes_up_and_down() -> None:
    s = CRDTState()
    put(s, "pncounter:seats", {"replica": "dc1", "p": 10, "n": 2})
    put(s, "pncounter:seats", {"replica": "dc2", "p": 1, "n": 4})
    assert put(s, "pncounter:seats", {"replica": "dc1", "p": 9, "n": 1}) is Outcome.STALE
    assert s.snapshot()["pncounters"]["pncounter:seats"] == {
        "p": {"dc1": 10, "dc2": 1},
        "n": {"dc1": 2, "dc2": 4},
        "total": 5,
    }


def test_extra_fields_are_ignored() -> None:
    s = CRDTState()
    assert put(s, "counter:x", {"replica": "dc1", "count": 1, "note": "hi"}) is Outcome.UPDATED


def test_unknown_prefix_is_ignored_with_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    s = CRDTState()
    with caplog.at_level(logging.INFO, logger="unison.crdt"):
        result = s.apply_b64("session:42", "not even base64!")
    assert result.outcome is Outcome.IGNORED and result.kind is None
    assert "session:42" in caplog.text
    assert len(s) == 0


B64 = encode_value


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("lww:a", "%%%notbase64", "not valid base64"),
        ("lww:a", base64.b64encode(b"{oops").decode(), "not JSON"),
        ("lww:a", base64.b64encode(b"\xff\xfe").decode(), "not UTF-8"),
        ("lww:a", base64.b64encode(b"[1,2]").decode(), "must be a JSON object, got array"),
        ("lww:a", base64.b64encode(b'{"value":1,"timestamp":NaN,"replica":"r"}').decode(), "NaN"),
        ("lww:a", B64({"timestamp": 1, "replica": "r"}), "missing field 'value'"),
        ("lww:a", B64({"value": 1, "replica": "r"}), "missing field 'timestamp'"),
        (
            "lww:a",
            B64({"value": 1, "timestamp": "1", "replica": "r"}),
            "'timestamp' must be an integer, got string",
        ),
        (
            "lww:a",
            B64({"value": 1, "timestamp": 1.5, "replica": "r"}),
            "'timestamp' must be an integer, got number",
        ),
        (
            "lww:a",
            B64({"value": 1, "timestamp": True, "replica": "r"}),
            "'timestamp' must be an integer, got boolean",
        ),
        (
            "lww:a",
            B64({"value": 1, "timestamp": -1, "replica": "r"}),
            "'timestamp' must not be negative",
        ),
        (
            "lww:a",
            B64({"value": 1, "timestamp": 1, "replica": 7}),
            "'replica' must be a non-empty string",
        ),
        (
            "lww:a",
            B64({"value": 1, "timestamp": 1, "replica": ""}),
            "'replica' must be a non-empty string",
        ),
        ("counter:c", B64({"replica": "r"}), "missing field 'count'"),
        ("counter:c", B64({"replica": "r", "count": -5}), "'count' must not be negative, got -5"),
        ("counter:c", B64({"count": 5}), "missing field 'replica'"),
        ("pncounter:p", B64({"replica": "r", "p": 1}), "missing field 'n'"),
        ("pncounter:p", B64({"replica": "r", "p": 1, "n": -1}), "'n' must not be negative"),
        ("pncounter:p", B64({"replica": "r", "count": 1}), "missing field 'p'"),
    ],
)
def test_malformed_values_name_the_key_and_the_problem(key: str, value: str, reason: str) -> None:
    s = CRDTState()
    with pytest.raises(MalformedValueError) as err:
        s.apply_b64(key, value)
    assert err.value.key == key
    assert key in str(err.value)
    assert reason in str(err.value)
    assert len(s) == 0  # nothing half-applied


@settings(deadline=None)
@given(
    st.sampled_from(["lww:k", "counter:k", "pncounter:k"]),
    st.binary(max_size=60)
    | st.text(max_size=60).map(str.encode)
    # surrogates written raw (not as JSON escapes) are not UTF-8: refused by name
    | texts(60).map(lambda t: t.encode("utf-8", "surrogatepass")),
)
def test_any_bytes_either_apply_or_raise_a_named_error(key: str, raw: bytes) -> None:
    s = CRDTState()
    for text in (raw, base64.b64encode(raw)):
        try:
            result = s.apply_b64(key, text)
        except MalformedValueError as exc:
            assert exc.key == key
        else:
            assert result.kind in (Kind.LWW, Kind.GCOUNTER, Kind.PNCOUNTER)


@settings(deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(["value", "timestamp", "replica", "count", "p", "n"]),
        st.none() | st.integers(-2, 2) | texts(2) | st.booleans(),
    )
)
def test_random_objects_never_crash(doc: dict) -> None:
    for key in ("lww:k", "counter:k", "pncounter:k"):
        try:
            CRDTState().apply_json(key, json.dumps(doc))
        except MalformedValueError as exc:
            assert exc.key == key


def test_lone_surrogate_escapes_are_data_like_any_other() -> None:
    # issue 6: valid JSON, so it merges; the snapshot must still serialise (as /state does)
    s = CRDTState()
    raw = base64.b64encode(b'{"value":"\\ud800","timestamp":1,"replica":"a\\udcff"}')
    assert s.apply_b64("lww:x", raw.decode()).outcome is Outcome.UPDATED
    reg = s.snapshot()["lww"]["lww:x"]
    assert reg == {"value": "\ud800", "timestamp": 1, "replica": "a\udcff"}
    text = json.dumps(s.snapshot())
    assert text.isascii() and json.loads(text) == s.snapshot()
    # a newer value replaces it, an equal one is a duplicate
    assert put(s, "lww:x", {"value": "\ud800", "timestamp": 1, "replica": "a\udcff"}) is (
        Outcome.UNCHANGED
    )
    assert put(s, "lww:x", {"value": "ok", "timestamp": 2, "replica": "a"}) is Outcome.UPDATED

"""Pure parts of replication: the wire form of records, backoff, status before contact."""

from __future__ import annotations

from pathlib import Path

import pytest
from unison.config import UpstreamConfig
from unison.replication import replication_pb2 as pb
from unison.replication.follower import Follower
from unison.replication.wire import from_pb, to_pb
from unison.storage import NamespaceStore, Op, Record
from unison.storage.records import CorruptRecord


def test_records_survive_the_wire_with_their_origin_checksum() -> None:
    records = [Record(7, Op.PUT, b"lww:user", b'{"v":1}', 1_700_000_000_123).with_crc(),
               Record(8, Op.DELETE, b"gone", b"", 1_700_000_000_124).with_crc(),
               Record(9, Op.PUT, "ключ".encode(), bytes(range(256)), 1).with_crc()]
    wire = pb.RecordBatch(records=to_pb(records)).SerializeToString()
    back = from_pb(pb.RecordBatch.FromString(wire).records)
    assert back == records
    for r in back:
        r.verify()


def test_a_record_altered_in_transit_fails_verification() -> None:
    msg = to_pb([Record(1, Op.PUT, b"k", b"value", 5).with_crc()])
    msg[0].value = b"VALUE"
    (altered,) = from_pb(msg)
    with pytest.raises(CorruptRecord, match="CRC32 mismatch"):
        altered.verify()


def test_unknown_operation_is_rejected_with_its_lsn() -> None:
    msg = pb.LogRecord(lsn=42, op=7, key=b"k")
    with pytest.raises(ValueError, match="lsn=42: unknown operation 7"):
        from_pb([msg])


def _follower(tmp_path: Path, threshold: int = 100) -> Follower:
    store = NamespaceStore("ns", tmp_path / "ns")  # never opened: status needs no I/O
    return Follower(store, UpstreamConfig("dc1", ["ns"], "127.0.0.1:1",
                                          segment_lag_threshold=threshold),
                    backoff_base_s=0.1, backoff_cap_s=2.0)


def test_backoff_grows_exponentially_with_jitter_and_stays_capped(tmp_path: Path) -> None:
    f = _follower(tmp_path)
    for failures, base in [(0, 0.1), (1, 0.2), (2, 0.4), (3, 0.8), (4, 1.6), (5, 2.0), (40, 2.0)]:
        delays = [f._backoff(failures) for _ in range(200)]
        assert all(base <= d <= base * 1.5 for d in delays), (failures, min(delays), max(delays))
        assert len(set(delays)) > 1  # jitter: reconnects of many followers spread out


def test_status_before_any_contact_is_unknown_lag_and_not_caught_up(tmp_path: Path) -> None:
    f = _follower(tmp_path)
    st = f.status()
    assert st["upstream"] == "127.0.0.1:1" and st["namespace"] == "ns"
    assert st["connected"] is False and st["lag_records"] is None
    assert not f.caught_up

    f.upstream_lsn = 150  # as if a heartbeat said so; applied is 0
    assert f.status()["lag_records"] == 150 and not f.caught_up
    f.upstream_lsn = 100
    assert f.caught_up  # within segment_lag_threshold

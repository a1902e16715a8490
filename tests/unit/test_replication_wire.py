"""Pure parts of replication: the wire form of records, backoff, status before contact."""

from __future__ import annotations

import time
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
                                          segment_lag_threshold=threshold,
                                          allow_insecure=True),
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


def test_batch_assembled_from_encoded_parts_parses_as_one_batch() -> None:
    from unison.replication.wire import batch_message, records_payload

    first = [Record(1, Op.PUT, b"a", b"x" * 300, 5)]  # crc32=0: a local commit's form
    second = [Record(2 + i, Op.PUT, f"k{i}".encode(), bytes(range(256)) * 80, 6).with_crc()
              for i in range(3)]  # a body longer than 16 KiB: three-byte length prefix
    wire = batch_message([records_payload(first), records_payload(second)], 99, 1234)
    msg = pb.StreamResponse.FromString(wire)
    assert msg.WhichOneof("body") == "batch"
    assert (msg.batch.upstream_lsn, msg.batch.sent_ms) == (99, 1234)
    back = from_pb(msg.batch.records)
    assert back == [first[0].with_crc(), *second]  # the checksum the log stores is sent
    for r in back:
        r.verify()


async def test_tail_serves_whole_durable_commits_and_starts_over_on_a_snapshot(
        tmp_path: Path) -> None:
    """The store's commit feed: the in-memory tail every cursor (and so every replication
    stream) reads, each commit encoded once for all of them."""
    from unison.replication.wire import records_payload
    from unison.storage import Mutation

    store = NamespaceStore("ns", tmp_path / "ns").open()
    store.start()
    feed = store.feed
    feed.max_bytes = 10_000

    def take(next_lsn: int, max_records: int, max_bytes: int) -> tuple[list[bytes], int]:
        commits = feed.take(next_lsn, store.last_lsn, store.first_lsn, max_records, max_bytes)
        parts = [c.encoded("pb", records_payload) for c in commits]
        return parts, (commits[-1].last if commits else 0)

    try:
        await store.put(b"before", b"0")  # committed before any reader existed: log only
        cursor = store.cursor(store.last_lsn + 1)  # a reader: the feed keeps commits now
        await store.write([Mutation(Op.PUT, b"a", b"1"), Mutation(Op.PUT, b"b", b"2")])
        await store.put(b"c", b"3")
        assert take(1, 100, 1 << 20) == ([], 0)  # older than the tail
        assert take(3, 100, 1 << 20) == ([], 0)  # mid-commit: the log serves it
        parts, last = take(2, 100, 1 << 20)
        assert last == 4 and len(parts) == 2
        batch = pb.RecordBatch.FromString(b"".join(parts))
        assert [r.key for r in from_pb(batch.records)] == [b"a", b"b", b"c"]
        assert take(2, 2, 1 << 20)[1] == 3  # bounded by records, whole commits
        assert take(5, 100, 1 << 20) == ([], 0)  # nothing newer yet

        for i in range(200):  # trimmed to its byte budget, oldest first
            await store.put(f"k{i}".encode(), b"v" * 100)
        assert take(2, 100, 1 << 20) == ([], 0)
        assert take(store.last_lsn, 100, 1 << 20)[1] == store.last_lsn

        await store.begin_snapshot_install()  # built aside: the tail still holds
        assert take(store.last_lsn, 100, 1 << 20)[1] == store.last_lsn
        await store.finish_snapshot_install(500)  # switched: nothing the tail held is left
        assert take(store.last_lsn, 100, 1 << 20) == ([], 0)
        await store.put(b"after", b"1")
        assert take(store.last_lsn - 1, 100, 1 << 20) == ([], 0)
        parts, last = take(501, 100, 1 << 20)
        assert last == 501
        (rec,) = from_pb(pb.RecordBatch.FromString(b"".join(parts)).records)
        assert rec.key == b"after"
        cursor.close()
    finally:
        await store.close()


def test_a_lost_upstream_stops_counting_as_caught_up_after_the_grace(tmp_path: Path) -> None:
    f = _follower(tmp_path, threshold=10)
    f.upstream_lsn = 0  # the upstream's last word: nothing to catch up on
    assert f.caught_up and f.status()["not_ready_reason"] is None
    f.disconnected_since = time.monotonic()  # just lost: a reconnect may fix it at once
    assert f.caught_up
    f.disconnected_since = time.monotonic() - f.disconnect_grace_s - 0.5
    f.last_error = "UNAVAILABLE: connection refused"
    assert not f.caught_up
    reason = f.not_ready_reason()
    assert reason is not None and reason.startswith(
        "upstream dc1 (127.0.0.1:1) unreachable: disconnected for "), reason
    assert reason.endswith("; last error: UNAVAILABLE: connection refused"), reason
    st = f.status()
    assert st["caught_up"] is False and st["not_ready_reason"] == reason
    assert st["disconnected_seconds"] > f.disconnect_grace_s


def test_not_ready_reasons_name_the_upstream(tmp_path: Path) -> None:
    f = _follower(tmp_path, threshold=10)
    assert f.not_ready_reason() == "upstream dc1 (127.0.0.1:1): waiting for the first message"
    f.disconnected_since = time.monotonic()  # the first attempt failed: no grace, never spoke
    assert f.not_ready_reason() == "upstream dc1 (127.0.0.1:1) unreachable: never reached since start"
    f.disconnected_since, f.upstream_lsn = None, 11
    assert f.not_ready_reason() == ("11 records behind upstream dc1 (127.0.0.1:1) "
                                    "(segment_lag_threshold 10)")

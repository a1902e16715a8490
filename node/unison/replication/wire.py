"""Conversions between storage records and their protobuf form, and shared gRPC options."""

from __future__ import annotations

from collections.abc import Sequence

from unison.replication import replication_pb2 as pb
from unison.storage.records import Op, Record

# Batches are bounded by the server (records and bytes); the limit only has to exceed
# the largest batch plus one oversized value, so a big record never wedges a stream.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024

CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # Notice a silently dead peer (half-open TCP) even between heartbeats.
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
]

_OPS = {Op.PUT: pb.OPERATION_PUT, Op.DELETE: pb.OPERATION_DELETE}
_FROM_PB = {pb.OPERATION_PUT: Op.PUT, pb.OPERATION_DELETE: Op.DELETE}


def to_pb(records: Sequence[Record]) -> list[pb.LogRecord]:
    # The stored CRC travels unchanged, so the follower checks the origin's checksum.
    return [pb.LogRecord(lsn=r.lsn, op=_OPS[r.op], key=r.key, value=r.value, ts_ms=r.ts_ms,
                         crc32=r.crc32) for r in records]


def from_pb(records: Sequence[pb.LogRecord]) -> list[Record]:
    out = []
    for m in records:
        op = _FROM_PB.get(m.op)
        if op is None:
            raise ValueError(f"record lsn={m.lsn}: unknown operation {m.op}")
        out.append(Record(m.lsn, op, m.key, m.value, m.ts_ms, m.crc32))
    return out


def records_payload(records: Sequence[Record]) -> bytes:
    """The records as the wire form of RecordBatch.records, to concatenate into batches."""
    # Commits carry their stored CRC; a Record built without one (crc32=0) gets it computed.
    return pb.RecordBatch(records=[
        pb.LogRecord(lsn=r.lsn, op=_OPS[r.op], key=r.key, value=r.value, ts_ms=r.ts_ms,
                     crc32=r.crc32 or r.checksum()) for r in records]).SerializeToString()


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append(n & 0x7F | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def batch_message(payloads: Sequence[bytes], upstream_lsn: int, sent_ms: int) -> bytes:
    """A serialized StreamResponse{batch} from records_payload() parts, without re-encoding
    them: protobuf concatenates repeated fields of concatenated messages."""
    body = b"".join((*payloads, pb.RecordBatch(upstream_lsn=upstream_lsn,
                                               sent_ms=sent_ms).SerializeToString()))
    return b"\x0a" + _varint(len(body)) + body  # field 1 (batch), length-delimited

"""Conversions between storage records and their protobuf form, and shared gRPC options."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable, Sequence

from unison.replication import replication_pb2 as pb
from unison.storage.history import History
from unison.storage.records import Op, Record

_LEN = struct.Struct(">I")

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
    # One comprehension and tuple construction (Record._make), no per-record call chain:
    # a relayer runs this for every replicated record.
    ops, make = _FROM_PB.get, Record._make
    out = [make((m.lsn, ops(m.op), m.key, m.value, m.ts_ms, m.crc32)) for m in records]
    for r, m in zip(out, records, strict=True):
        if r.op is None:
            raise ValueError(f"record lsn={m.lsn}: unknown operation {m.op}")
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


def history_to_pb(history: History) -> pb.HistoryIdentity:
    return pb.HistoryIdentity(id=history.id, epoch=history.epoch,
                              epoch_starts=list(history.epoch_starts))


def history_from_pb(msg: pb.HistoryIdentity) -> History | None:
    """The identity a message carries; None when it carries none (an older upstream)."""
    if not msg.id:
        return None
    return History(msg.id, msg.epoch or 1, tuple(msg.epoch_starts) or (1,))


def chunk_crc(items: Iterable[tuple[bytes, bytes]]) -> int:
    """CRC32 of a snapshot chunk: each key length, key, value length, value, in order."""
    crc = 0
    for key, value in items:
        crc = zlib.crc32(_LEN.pack(len(key)), crc)
        crc = zlib.crc32(key, crc)
        crc = zlib.crc32(_LEN.pack(len(value)), crc)
        crc = zlib.crc32(value, crc)
    return crc

"""Log records: one per mutation, numbered by LSN, protected by CRC32."""

from __future__ import annotations

import struct
import time
import zlib
from enum import IntEnum
from typing import NamedTuple

# crc32, op, ts_ms, key length; then key bytes, then value bytes.
_HEADER = struct.Struct(">IBQI")
_BODY_HEADER = struct.Struct(">BQI")  # _HEADER without the crc32 the body is summed over
_CRC = struct.Struct(">I")
_LSN = struct.Struct(">Q")


class Op(IntEnum):
    PUT = 0
    DELETE = 1

    @property
    def word(self) -> str:
        return "put" if self is Op.PUT else "delete"


class CorruptRecord(ValueError):
    """A log record whose CRC32 does not match its content."""


class Record(NamedTuple):
    """One log record. A NamedTuple, not a dataclass: a relayer builds one per replicated
    record and a primary one per committed write while a feed listens, and a tuple is
    about a fifth of a frozen dataclass's construction cost (no __setattr__ per field)."""

    lsn: int
    op: Op
    key: bytes
    value: bytes = b""
    ts_ms: int = 0  # commit time at the origin, kept across replication hops
    crc32: int = 0  # stored CRC; a record built in memory has 0 until with_crc() sets it

    def checksum(self) -> int:
        return _crc(_BODY_HEADER.pack(self.op, self.ts_ms, len(self.key)), self.key, self.value)

    def with_crc(self) -> Record:
        return self._replace(crc32=self.checksum())

    def verify(self) -> None:
        if self.crc32 != self.checksum():
            raise self._mismatch(self.checksum())

    def _mismatch(self, computed: int) -> CorruptRecord:
        return CorruptRecord(f"record lsn={self.lsn} key={self.key[:64]!r}: CRC32 mismatch "
                             f"(stored {self.crc32:#010x}, computed {computed:#010x})")

    def verified_encoding(self) -> bytes:
        """The stored form, after checking the CRC it carries (CorruptRecord otherwise):
        verify() and encode() in one pass, so a replicated record is summed once."""
        header = _BODY_HEADER.pack(self.op, self.ts_ms, len(self.key))
        crc = _crc(header, self.key, self.value)
        if crc != self.crc32:
            raise self._mismatch(crc)
        return b"".join((_CRC.pack(crc), header, self.key, self.value))

    def encode(self) -> bytes:
        return encode_record(self.op, self.ts_ms, self.key, self.value)[1]

    @staticmethod
    def decode(lsn: int, raw: bytes) -> Record:
        """The stored record; CorruptRecord for anything that is not one intact record."""
        try:
            crc, op, ts_ms, klen = _HEADER.unpack_from(raw)
            op = Op(op)
        except (struct.error, ValueError):
            raise CorruptRecord(f"record lsn={lsn}: malformed ({len(raw)} bytes, "
                                "header unreadable or unknown operation)") from None
        start = _HEADER.size
        if start + klen > len(raw):
            raise CorruptRecord(f"record lsn={lsn}: truncated (key of {klen} bytes, "
                                f"{len(raw) - start} stored)")
        key = raw[start : start + klen]
        rec = Record(lsn, op, bytes(key), bytes(raw[start + klen :]), ts_ms, crc)
        rec.verify()
        return rec

    @property
    def size(self) -> int:
        return len(self.key) + len(self.value) + _HEADER.size


def encode_record(op: int, ts_ms: int, key: bytes, value: bytes) -> tuple[int, bytes]:
    """(crc32, stored form) of a log record; what Record.encode() stores, without a Record."""
    header = _BODY_HEADER.pack(op, ts_ms, len(key))
    crc = _crc(header, key, value)
    return crc, b"".join((_CRC.pack(crc), header, key, value))  # the value is copied once


def _crc(header: bytes, key: bytes, value: bytes) -> int:
    """CRC32 of a record's body (header without the crc, key, value), chained over the
    parts so the body is never concatenated just to be summed."""
    return zlib.crc32(value, zlib.crc32(key, zlib.crc32(header)))


def lsn_key(lsn: int) -> bytes:
    return _LSN.pack(lsn)


def lsn_of(key: bytes) -> int:
    return _LSN.unpack(key)[0]


def now_ms() -> int:
    return time.time_ns() // 1_000_000

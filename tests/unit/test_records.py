"""Log records as stored: anything but one intact record is refused as CorruptRecord."""

from __future__ import annotations

import pytest
from unison.storage.records import CorruptRecord, Op, Record, encode_record


def stored(key: bytes = b"lww:user-status", value: bytes = b"v" * 100) -> bytes:
    return encode_record(Op.PUT, 1_700_000_000_000, key, value)[1]


def test_round_trip_keeps_every_field_and_the_crc() -> None:
    rec = Record.decode(7, stored())
    assert (rec.lsn, rec.op, rec.key, rec.value, rec.ts_ms) == (
        7, Op.PUT, b"lww:user-status", b"v" * 100, 1_700_000_000_000)
    assert rec.crc32 == rec.checksum()


@pytest.mark.parametrize("damage", [
    pytest.param(lambda raw: raw[:5], id="shorter than the header"),
    pytest.param(lambda raw: b"", id="empty"),
    pytest.param(lambda raw: raw[:4] + b"\x07" + raw[5:], id="unknown operation"),
    pytest.param(lambda raw: raw[:20], id="key cut short"),
    pytest.param(lambda raw: raw[:-1] + bytes([raw[-1] ^ 1]), id="one bit flipped"),
])
def test_damaged_records_are_corrupt_not_a_crash(damage) -> None:
    with pytest.raises(CorruptRecord, match="lsn=9"):
        Record.decode(9, damage(stored()))

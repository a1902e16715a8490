"""The notification JSON: exactly UnisonDB's fields, identical for ZeroMQ and the watch."""

from __future__ import annotations

import json

import pytest
from unison.notify.message import encode_notification, topic
from unison.storage import Op, Record


@pytest.mark.parametrize("key", [
    b"lww:user-status", b"counter:page-views", b'quote"back\\slash', b"tab\tnewline\n",
    "caf\u00e9-\u65e5\u672c".encode(), b"\x00ctl\x1f", b"bad-\xff\xfe-utf8", b"",
])
@pytest.mark.parametrize("op", [Op.PUT, Op.DELETE])
def test_encoded_notification_is_the_json_of_the_fields(key: bytes, op: Op) -> None:
    rec = Record(lsn=123456789, op=op, key=key, value=b"ignored")
    decoded = json.loads(encode_notification("ad-campaign-dc1", rec))
    assert decoded == {
        "key": key.decode("utf-8", "replace"),
        "namespace": "ad-campaign-dc1",
        "operation": "put" if op is Op.PUT else "delete",
        "entry_type": "kv",
        "seq_num": 123456789,
    }


def test_topic_is_namespace_dot_kv() -> None:
    assert topic("ad-campaign-dc2") == b"ad-campaign-dc2.kv"

"""The change notification, as sent over ZeroMQ and over the HTTP watch.

UnisonDB subscribers expect two frames: topic `<namespace>.kv` and a JSON object with
exactly `key`, `namespace`, `operation`, `entry_type` and `seq_num`. Keeping the one
encoder here makes the ZeroMQ frames and the watch events identical by construction.
"""

from __future__ import annotations

import json

from unison.storage.records import Op, Record

ENTRY_TYPE = "kv"


def topic(namespace: str) -> bytes:
    return f"{namespace}.{ENTRY_TYPE}".encode()


_OPS = {op: json.dumps(op.word) for op in Op}


def encode_notification(namespace: str, record: Record) -> bytes:
    """The notification of `record` as compact JSON: `key` (plain text for subscribers:
    undecodable bytes are replaced, they must not kill the feed), `namespace`, `operation`,
    `entry_type`, `seq_num` (the LSN). Built by hand because it runs once per record on the
    commit path; only the key needs escaping (tests check it equals json.dumps)."""
    key = json.dumps(record.key.decode("utf-8", "replace"), ensure_ascii=False)
    ns = json.dumps(namespace, ensure_ascii=False)
    return (f'{{"key":{key},"namespace":{ns},"operation":{_OPS[record.op]},'
            f'"entry_type":"{ENTRY_TYPE}","seq_num":{record.lsn}}}').encode()

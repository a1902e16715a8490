from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Operation(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OPERATION_PUT: _ClassVar[Operation]
    OPERATION_DELETE: _ClassVar[Operation]
OPERATION_PUT: Operation
OPERATION_DELETE: Operation

class LogRecord(_message.Message):
    __slots__ = ("lsn", "op", "key", "value", "ts_ms", "crc32")
    LSN_FIELD_NUMBER: _ClassVar[int]
    OP_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TS_MS_FIELD_NUMBER: _ClassVar[int]
    CRC32_FIELD_NUMBER: _ClassVar[int]
    lsn: int
    op: Operation
    key: bytes
    value: bytes
    ts_ms: int
    crc32: int
    def __init__(self, lsn: _Optional[int] = ..., op: _Optional[_Union[Operation, str]] = ..., key: _Optional[bytes] = ..., value: _Optional[bytes] = ..., ts_ms: _Optional[int] = ..., crc32: _Optional[int] = ...) -> None: ...

class StreamRequest(_message.Message):
    __slots__ = ("namespace", "from_lsn", "follower")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    FROM_LSN_FIELD_NUMBER: _ClassVar[int]
    FOLLOWER_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    from_lsn: int
    follower: str
    def __init__(self, namespace: _Optional[str] = ..., from_lsn: _Optional[int] = ..., follower: _Optional[str] = ...) -> None: ...

class RecordBatch(_message.Message):
    __slots__ = ("records", "upstream_lsn", "sent_ms")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    UPSTREAM_LSN_FIELD_NUMBER: _ClassVar[int]
    SENT_MS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[LogRecord]
    upstream_lsn: int
    sent_ms: int
    def __init__(self, records: _Optional[_Iterable[_Union[LogRecord, _Mapping]]] = ..., upstream_lsn: _Optional[int] = ..., sent_ms: _Optional[int] = ...) -> None: ...

class KeyValue(_message.Message):
    __slots__ = ("key", "value")
    KEY_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    key: bytes
    value: bytes
    def __init__(self, key: _Optional[bytes] = ..., value: _Optional[bytes] = ...) -> None: ...

class HistoryIdentity(_message.Message):
    __slots__ = ("id", "epoch", "epoch_starts")
    ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    EPOCH_STARTS_FIELD_NUMBER: _ClassVar[int]
    id: str
    epoch: int
    epoch_starts: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, id: _Optional[str] = ..., epoch: _Optional[int] = ..., epoch_starts: _Optional[_Iterable[int]] = ...) -> None: ...

class SnapshotBegin(_message.Message):
    __slots__ = ("lsn", "history")
    LSN_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    lsn: int
    history: HistoryIdentity
    def __init__(self, lsn: _Optional[int] = ..., history: _Optional[_Union[HistoryIdentity, _Mapping]] = ...) -> None: ...

class SnapshotChunk(_message.Message):
    __slots__ = ("items", "crc32")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    CRC32_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[KeyValue]
    crc32: int
    def __init__(self, items: _Optional[_Iterable[_Union[KeyValue, _Mapping]]] = ..., crc32: _Optional[int] = ...) -> None: ...

class SnapshotEnd(_message.Message):
    __slots__ = ("lsn", "keys")
    LSN_FIELD_NUMBER: _ClassVar[int]
    KEYS_FIELD_NUMBER: _ClassVar[int]
    lsn: int
    keys: int
    def __init__(self, lsn: _Optional[int] = ..., keys: _Optional[int] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("upstream_lsn", "sent_ms", "history", "prev_lsn", "prev_crc32")
    UPSTREAM_LSN_FIELD_NUMBER: _ClassVar[int]
    SENT_MS_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    PREV_LSN_FIELD_NUMBER: _ClassVar[int]
    PREV_CRC32_FIELD_NUMBER: _ClassVar[int]
    upstream_lsn: int
    sent_ms: int
    history: HistoryIdentity
    prev_lsn: int
    prev_crc32: int
    def __init__(self, upstream_lsn: _Optional[int] = ..., sent_ms: _Optional[int] = ..., history: _Optional[_Union[HistoryIdentity, _Mapping]] = ..., prev_lsn: _Optional[int] = ..., prev_crc32: _Optional[int] = ...) -> None: ...

class StreamResponse(_message.Message):
    __slots__ = ("batch", "snapshot_begin", "snapshot_chunk", "snapshot_end", "heartbeat")
    BATCH_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_BEGIN_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_CHUNK_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_END_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    batch: RecordBatch
    snapshot_begin: SnapshotBegin
    snapshot_chunk: SnapshotChunk
    snapshot_end: SnapshotEnd
    heartbeat: Heartbeat
    def __init__(self, batch: _Optional[_Union[RecordBatch, _Mapping]] = ..., snapshot_begin: _Optional[_Union[SnapshotBegin, _Mapping]] = ..., snapshot_chunk: _Optional[_Union[SnapshotChunk, _Mapping]] = ..., snapshot_end: _Optional[_Union[SnapshotEnd, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ...) -> None: ...

class LatestLSNRequest(_message.Message):
    __slots__ = ("namespace",)
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    def __init__(self, namespace: _Optional[str] = ...) -> None: ...

class LatestLSNResponse(_message.Message):
    __slots__ = ("lsn", "first_retained_lsn", "history")
    LSN_FIELD_NUMBER: _ClassVar[int]
    FIRST_RETAINED_LSN_FIELD_NUMBER: _ClassVar[int]
    HISTORY_FIELD_NUMBER: _ClassVar[int]
    lsn: int
    first_retained_lsn: int
    history: HistoryIdentity
    def __init__(self, lsn: _Optional[int] = ..., first_retained_lsn: _Optional[int] = ..., history: _Optional[_Union[HistoryIdentity, _Mapping]] = ...) -> None: ...

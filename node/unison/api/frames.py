"""The wire format between HTTP worker processes and the node process (api/workers.py).

Binary and struct-packed, no JSON: a worker has already validated the request, so a
frame carries only what the writer needs. Every frame is a 4-byte little-endian length
of the rest, then:

- request (worker -> writer): request id u32, namespace index u16, op u8, key length
  u32, key, then the value (the rest). A BATCH frame's key is empty and its value is a
  run of items: op u8, key length u32, value length u32, key, value.
- answer (writer -> worker): request id u32, HTTP status u16, kind u8, payload: a JSON
  body (BODY), a stored value the worker base64-encodes (FOUND), or nothing (MISSING).

A frame that does not parse (an unknown op, lengths that overrun, an oversized length)
raises FrameError: the stream cannot be trusted after it, so its reader drops the link.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Iterator
from typing import NamedTuple, cast

from unison.storage import Mutation, Op

# Request ops.
HELLO = 0  # a worker is listening (request id: its index)
GET = 1
PUT = 2
DELETE = 3
BATCH = 4
STATS = 5  # a worker's request counts since its last STATS (JSON value; once a second)
_OPS = frozenset((HELLO, GET, PUT, DELETE, BATCH, STATS))

# Answer kinds.
BODY = 0
FOUND = 1
MISSING = 2
_KINDS = frozenset((BODY, FOUND, MISSING))

_LEN = struct.Struct("<I")
_REQUEST = struct.Struct("<IIHBI")  # length, request id, namespace, op, key length
_ANSWER = struct.Struct("<IIHB")  # length, request id, status, kind
_ITEM = struct.Struct("<BII")  # op, key length, value length
_ITEM_OPS = {Op.PUT: PUT, Op.DELETE: DELETE}
_OP_OF = {PUT: Op.PUT, DELETE: Op.DELETE}


class FrameError(ValueError):
    """A frame that does not parse: the link it came on is dropped."""


class Request(NamedTuple):
    rid: int
    ns: int
    op: int
    key: bytes
    value: bytes


class Answer(NamedTuple):
    rid: int
    status: int
    kind: int
    payload: bytes


def request(rid: int, ns: int, op: int, key: bytes = b"", value: bytes = b"") -> bytes:
    return _REQUEST.pack(_REQUEST.size - 4 + len(key) + len(value), rid, ns, op,
                         len(key)) + key + value


def batch_request(rid: int, ns: int, mutations: list[Mutation]) -> bytes:
    parts = [b""]
    for m in mutations:
        parts.append(_ITEM.pack(_ITEM_OPS[m.op], len(m.key), len(m.value)))
        parts.append(m.key)
        parts.append(m.value)
    body = b"".join(parts)
    return _REQUEST.pack(_REQUEST.size - 4 + len(body), rid, ns, BATCH, 0) + body


def answer(rid: int, status: int, kind: int, payload: bytes = b"") -> bytes:
    return _ANSWER.pack(_ANSWER.size - 4 + len(payload), rid, status, kind) + payload


def batch_items(value: bytes) -> list[Mutation]:
    """The mutations of a BATCH frame's value."""
    out: list[Mutation] = []
    pos, end = 0, len(value)
    while pos < end:
        if end - pos < _ITEM.size:
            raise FrameError("batch item header truncated")
        op, klen, vlen = _ITEM.unpack_from(value, pos)
        pos += _ITEM.size
        if op not in _OP_OF or klen + vlen > end - pos:
            raise FrameError(f"batch item: op {op}, lengths {klen}+{vlen} at {pos} of {end}")
        key = value[pos:pos + klen]
        pos += klen
        out.append(Mutation(_OP_OF[op], key, value[pos:pos + vlen]))
        pos += vlen
    if not out:
        raise FrameError("empty batch")
    return out


class _Reader:
    """Splits a byte stream into frames; `max_frame` bounds one frame's length."""

    header: struct.Struct

    def __init__(self, max_frame: int) -> None:
        self.max_frame = max_frame
        self.buf = bytearray()

    def _frames(self, data: bytes) -> Iterator[tuple[tuple[int, ...], bytes]]:
        buf = self.buf
        buf += data
        pos, size, head = 0, len(buf), self.header.size
        try:
            while size - pos >= 4:
                (length,) = _LEN.unpack_from(buf, pos)
                if length > self.max_frame or length < head - 4:
                    raise FrameError(f"frame length {length} out of bounds")
                if size - pos - 4 < length:
                    break
                fields = self.header.unpack_from(buf, pos)
                yield fields, bytes(buf[pos + head:pos + 4 + length])
                pos += 4 + length
        finally:
            del buf[:pos]


class RequestReader(_Reader):
    header = _REQUEST

    def feed(self, data: bytes) -> list[Request]:
        out = []
        for (_, rid, ns, op, klen), rest in self._frames(data):
            if op not in _OPS or klen > len(rest):
                raise FrameError(f"request {rid}: op {op}, key length {klen} of {len(rest)}")
            out.append(Request(rid, ns, op, rest[:klen], rest[klen:]))
        return out


class AnswerReader(_Reader):
    header = _ANSWER

    def feed(self, data: bytes) -> list[Answer]:
        out = []
        for (_, rid, status, kind), payload in self._frames(data):
            if kind not in _KINDS or not 100 <= status <= 599:
                raise FrameError(f"answer {rid}: kind {kind}, status {status}")
            out.append(Answer(rid, status, kind, payload))
        return out


class FrameLink(asyncio.Protocol):
    """Either end of a worker's socket: frames sent in one write per event-loop turn."""

    def __init__(self) -> None:
        self.out: list[bytes] = []
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is no subclass

    def send(self, frame: bytes) -> None:
        if not self.out:
            self.loop.call_soon(self._flush)
        self.out.append(frame)

    def _flush(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(b"".join(self.out))
        self.out.clear()

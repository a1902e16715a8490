"""The HTTP workers' wire format (api/frames.py), and the writer's end of a worker's link
refusing garbage without falling over (api/workers.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from unison.api import frames
from unison.api.metrics import RequestCounter
from unison.api.workers import WorkerLink, add_counts
from unison.config import ConfigError, parse_config
from unison.storage import Mutation, NamespaceStore, Op

MAX = 1 << 20


def test_requests_round_trip_whole_and_byte_by_byte() -> None:
    sent = [frames.request(1, 0, frames.PUT, b"k", b"v" * 300),
            frames.request(2, 3, frames.GET, "ключ".encode()),
            frames.request(3, 1, frames.DELETE, b"lww:x"),
            frames.request(4, 0, frames.PUT, b"empty", b""),
            frames.request(5, 0, frames.HELLO)]
    want = [frames.Request(1, 0, frames.PUT, b"k", b"v" * 300),
            frames.Request(2, 3, frames.GET, "ключ".encode(), b""),
            frames.Request(3, 1, frames.DELETE, b"lww:x", b""),
            frames.Request(4, 0, frames.PUT, b"empty", b""),
            frames.Request(5, 0, frames.HELLO, b"", b"")]
    assert frames.RequestReader(MAX).feed(b"".join(sent)) == want
    reader, got = frames.RequestReader(MAX), []
    for byte in b"".join(sent):  # a truncated frame waits for the rest
        got += reader.feed(bytes([byte]))
    assert got == want and not reader.buf


def test_batches_round_trip() -> None:
    mutations = [Mutation(Op.PUT, b"a", b"1"), Mutation(Op.DELETE, b"b"),
                 Mutation(Op.PUT, b"c", b"")]
    (req,) = frames.RequestReader(MAX).feed(frames.batch_request(9, 2, mutations))
    assert (req.rid, req.ns, req.op, req.key) == (9, 2, frames.BATCH, b"")
    assert frames.batch_items(req.value) == mutations


def test_answers_round_trip() -> None:
    sent = [frames.answer(1, 200, frames.BODY, b'{"success":true}'),
            frames.answer(2, 200, frames.FOUND, b"\x00value"),
            frames.answer(3, 200, frames.MISSING),
            frames.answer(4, 503, frames.BODY, b'{"error":"x"}')]
    assert frames.AnswerReader(MAX).feed(b"".join(sent)) == [
        frames.Answer(1, 200, frames.BODY, b'{"success":true}'),
        frames.Answer(2, 200, frames.FOUND, b"\x00value"),
        frames.Answer(3, 200, frames.MISSING, b""),
        frames.Answer(4, 503, frames.BODY, b'{"error":"x"}')]


@pytest.mark.parametrize("garbage", [
    b"\xff\xff\xff\xff" + b"x" * 20,  # length over the bound
    b"\x01\x00\x00\x00x",  # length under a header
    frames.request(1, 0, frames.PUT, b"k", b"v")[:8] + b"\x00\x00\x09" + b"\x00" * 8,  # op 9
    b"\x0b\x00\x00\x00" + b"\x01\x00\x00\x00\x00\x00\x02" + b"\xff\x00\x00\x00",  # key overruns
    b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
])
def test_garbage_requests_raise_frame_error(garbage: bytes) -> None:
    with pytest.raises(frames.FrameError):
        frames.RequestReader(MAX).feed(garbage)


@pytest.mark.parametrize("items", [b"\x02\x00\x00", b"\x07" + b"\x00" * 8,
                                   b"\x02\x05\x00\x00\x00\x00\x00\x00\x00ab", b""])
def test_garbage_batches_raise_frame_error(items: bytes) -> None:
    with pytest.raises(frames.FrameError):
        frames.batch_items(items)


def test_garbage_answers_raise_frame_error() -> None:
    with pytest.raises(frames.FrameError):
        frames.AnswerReader(MAX).feed(frames.answer(1, 200, 7, b""))
    with pytest.raises(frames.FrameError):
        frames.AnswerReader(MAX).feed(frames.answer(1, 42, frames.BODY, b""))


class _Transport:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


async def _link(store: NamespaceStore, data: bytes) -> tuple[_Transport, list[frames.Answer]]:
    link = WorkerLink([store], MAX, RequestCounter())
    transport = _Transport()
    link.connection_made(transport)  # type: ignore[arg-type]
    link.data_received(data)
    await asyncio.sleep(0.2)  # the group commit, then the answers' flush
    return transport, frames.AnswerReader(MAX).feed(b"".join(transport.written))


@pytest.mark.parametrize("garbage", [
    b"\xff\xff\xff\xff",
    frames.request(7, 5, frames.GET, b"k"),  # no namespace 5
    frames.request(7, 0, frames.BATCH, b"", b"\x02\x09"),
])
def test_the_writer_drops_a_link_that_sends_garbage_and_keeps_working(
        tmp_path: Path, garbage: bytes) -> None:
    async def main() -> None:
        store = NamespaceStore("ns", tmp_path / "ns").open()
        store.start()
        try:
            good = frames.request(1, 0, frames.PUT, b"k", b"v")
            transport, answers = await _link(store, good + garbage)
            assert transport.closed and not answers  # its worker exits and is replaced
            put, get = frames.request(2, 0, frames.PUT, b"k2", b"v"), frames.request(
                3, 0, frames.GET, b"k2")
            transport, answers = await _link(store, put)
            assert not transport.closed
            assert answers == [frames.Answer(2, 200, frames.BODY, b'{"success":true}')]
            assert (await _link(store, get))[1] == [frames.Answer(3, 200, frames.FOUND, b"v")]
        finally:
            await store.close()

    asyncio.run(main())


def test_request_counts_travel_from_a_worker_to_the_writer() -> None:
    from unison.api.worker import counts_snapshot

    worker, writer = RequestCounter(), RequestCounter()
    assert counts_snapshot(worker) is None
    for _ in range(3):
        worker.add("PUT", "/api/v1/{ns}/kv/{key}", 200, 0.002)
    worker.fast_answered = 2
    writer.add("PUT", "/api/v1/{ns}/kv/{key}", 200, 0.002)
    data = counts_snapshot(worker)
    assert data is not None and not worker.counts and worker.fast_answered == 0
    add_counts(writer, data)
    assert writer.counts == {("PUT", "/api/v1/{ns}/kv/{key}", 200): 4}
    assert sum(writer.durations[("PUT", "/api/v1/{ns}/kv/{key}")][:-1]) == 4
    assert writer.fast_answered == 2
    with pytest.raises(frames.FrameError):
        add_counts(writer, b"{not json")


@pytest.mark.parametrize("value, error", [
    (65, "http_config.workers: must be between 0 and 64, got 65"),
    (-1, "http_config.workers: must be between 0 and 64, got -1"),
    ("2", "http_config.workers: expected an integer"),
])
def test_workers_config_is_validated_naming_the_field(value: Any, error: str) -> None:
    with pytest.raises(ConfigError, match=error):
        parse_config({"http_port": 8001, "http_config": {"workers": value},
                      "storage_config": {"base_dir": "/tmp/x", "namespaces": ["a"]}})
    assert parse_config({"http_port": 8001, "http_config": {"workers": 4},
                         "storage_config": {"base_dir": "/tmp/x", "namespaces": ["a"]}}).http.workers == 4

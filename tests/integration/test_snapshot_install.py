"""Snapshot install over real gRPC into real RocksDB: invisible to readers until it
switches, and a chunk that fails its checksum aborts it (reported, old state kept).

The upstream here is a hand-written gRPC servicer on a real socket, so the test decides
when each message goes out: it holds the stream mid-snapshot while the replica is read.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc
import pytest
from unison.replication import replication_pb2 as pb
from unison.replication import replication_pb2_grpc as pb_grpc
from unison.replication.wire import chunk_crc, history_to_pb
from unison.storage import NamespaceStore
from unison.storage.history import History

from tests.integration.test_replication_grpc import HOST, Cluster, cluster, fill, until

__all__ = ["cluster"]  # the fixture, imported for this module's tests


class _SnapshotUpstream(pb_grpc.ReplicationServicer):
    """Sends a snapshot at LSN 900 in two chunks; waits after the first until `go` is set;
    the second chunk's CRC is wrong until `healed`."""

    def __init__(self, history: History) -> None:
        self.history = history
        self.go = asyncio.Event()
        self.healed = False
        self.streams = 0

    @staticmethod
    def _chunk(keys: range, crc_delta: int = 0) -> pb.StreamResponse:
        items = [pb.KeyValue(key=f"snap{i:03d}".encode(), value=b"s") for i in keys]
        crc = chunk_crc((kv.key, kv.value) for kv in items) ^ crc_delta
        return pb.StreamResponse(snapshot_chunk=pb.SnapshotChunk(items=items, crc32=crc))

    async def Stream(self, request: pb.StreamRequest,
                     context: grpc.aio.ServicerContext) -> AsyncIterator[pb.StreamResponse]:
        self.streams += 1
        history = history_to_pb(self.history)
        yield pb.StreamResponse(heartbeat=pb.Heartbeat(upstream_lsn=900, history=history))
        yield pb.StreamResponse(snapshot_begin=pb.SnapshotBegin(lsn=900, history=history))
        yield self._chunk(range(0, 50))
        await self.go.wait()
        yield self._chunk(range(50, 100), 0 if self.healed else 1)
        yield pb.StreamResponse(snapshot_end=pb.SnapshotEnd(lsn=900, keys=100))
        await asyncio.sleep(30)


async def _serve(servicer: _SnapshotUpstream) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    pb_grpc.add_ReplicationServicer_to_server(servicer, server)
    port = server.add_insecure_port(f"{HOST}:0")
    await server.start()
    return server, port


def _state(store: NamespaceStore) -> tuple[int, list[tuple[bytes, bytes]]]:
    return store.last_lsn, store.scan(limit=10**6)[0]


async def test_install_is_invisible_until_it_switches_and_a_bad_chunk_aborts_it(
        cluster: Cluster, caplog: pytest.LogCaptureFixture) -> None:
    replica = cluster.store("replica")
    await fill(replica, 30, prefix="old")
    before = _state(replica)
    upstream = _SnapshotUpstream(replica.history)  # the same history, far ahead
    server, port = await _serve(upstream)
    try:
        with caplog.at_level(logging.ERROR, logger="unison.replication.follower"):
            f = cluster.follow(replica, port)
            await until(lambda: upstream.streams == 1 and f.upstream_lsn == 900)
            await asyncio.sleep(0.2)  # let the first chunk land in the staging family
            assert _state(replica) == before  # mid-install: the old state, whole
            assert replica.get(b"snap001") is None and replica.get(b"old000010") == b"v10"

            upstream.go.set()  # the second chunk, with a wrong CRC
            # the refusal is counted a moment before last_error is set: wait for both
            await until(lambda: f.status()["snapshots_refused"] >= 1 and "CRC32" in f.last_error,
                        what="chunk refused")
        assert _state(replica) == before  # aborted: nothing of it is visible
        assert f.status()["snapshots_installed"] == 0
        assert "CRC32" in f.last_error and "install aborted" in f.last_error
        assert any("failed its CRC32 check" in r.getMessage() for r in caplog.records)

        upstream.healed = True
        await until(lambda: f.status()["snapshots_installed"] == 1, what="snapshot installed")
        assert replica.last_lsn == 900
        assert [k for k, _ in replica.scan(limit=1000)[0]] == [
            f"snap{i:03d}".encode() for i in range(100)]
    finally:
        await server.stop(0)

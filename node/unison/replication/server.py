"""gRPC replication server: streams any namespace's log to followers, tailing on commit.

Every node runs one (replicators and relayers alike), so a relayer can feed further
relayers. A stream sends bounded batches from the asked-for LSN, then waits for the next
durable commit (no polling). A follower older than the retained log gets a snapshot of
all live keys at LSN X first and continues from X + 1.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc

from unison.config import GrpcConfig
from unison.replication import replication_pb2 as pb
from unison.replication import replication_pb2_grpc as pb_grpc
from unison.replication.tls import TLSConfigError, server_credentials
from unison.replication.wire import CHANNEL_OPTIONS, to_pb
from unison.storage import CorruptRecord, LogTrimmed, NamespaceStore
from unison.storage.records import now_ms

log = logging.getLogger(__name__)

BATCH_RECORDS = 2000
BATCH_BYTES = 2 * 1024 * 1024
SNAPSHOT_CHUNK_ITEMS = 1000
SNAPSHOT_CHUNK_BYTES = 1024 * 1024
HEARTBEAT_S = 1.0
STOP_GRACE_S = 0.5


class _Servicer(pb_grpc.ReplicationServicer):
    def __init__(self, stores: dict[str, NamespaceStore], heartbeat_s: float) -> None:
        self.stores = stores
        self.heartbeat_s = heartbeat_s
        self.active_streams = 0

    async def _store(self, namespace: str, context: grpc.aio.ServicerContext) -> NamespaceStore:
        store = self.stores.get(namespace)
        if store is None:
            served = ", ".join(sorted(self.stores)) or "none"
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"namespace not found: {namespace!r} (this node serves: {served})")
        if store.closed:
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                f"namespace {namespace}: storage is closed (node shutting down)")
        return store

    async def LatestLSN(self, request: pb.LatestLSNRequest,
                        context: grpc.aio.ServicerContext) -> pb.LatestLSNResponse:
        store = await self._store(request.namespace, context)
        return pb.LatestLSNResponse(lsn=store.last_lsn, first_retained_lsn=store.first_lsn)

    async def Stream(self, request: pb.StreamRequest,
                     context: grpc.aio.ServicerContext) -> AsyncIterator[pb.StreamResponse]:
        store = await self._store(request.namespace, context)
        who = request.follower or context.peer()
        next_lsn = max(request.from_lsn, 1)
        if next_lsn > store.last_lsn + 1:
            # The follower has records this node never had: streaming on would mix two
            # histories. Refuse loudly; the follower retries (this node may be catching up).
            await context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"namespace {store.name}: follower asks from lsn {next_lsn} but this node's "
                f"latest lsn is {store.last_lsn}")
        log.info("replication: stream to %s opened (namespace %s, from lsn %d, latest %d)",
                 who, store.name, next_lsn, store.last_lsn)
        self.active_streams += 1
        try:
            async for msg in self._messages(store, next_lsn, who, context):
                yield msg
        finally:
            self.active_streams -= 1
            log.info("replication: stream to %s closed (namespace %s)", who, store.name)

    async def _messages(self, store: NamespaceStore, next_lsn: int, who: str,
                        context: grpc.aio.ServicerContext) -> AsyncIterator[pb.StreamResponse]:
        while True:
            if store.closed:
                await context.abort(grpc.StatusCode.UNAVAILABLE,
                                    f"namespace {store.name}: node shutting down")
            try:
                records = store.read_log(next_lsn, BATCH_RECORDS, BATCH_BYTES)
            except LogTrimmed as e:
                log.info("replication: %s asks namespace %s from lsn %d, older than the retained "
                         "log (first %d): sending a snapshot", who, store.name, e.wanted, e.first)
                snap_lsn = 0
                async for msg in self._snapshot(store):
                    if msg.HasField("snapshot_begin"):
                        snap_lsn = msg.snapshot_begin.lsn
                    yield msg
                next_lsn = snap_lsn + 1
                continue
            except CorruptRecord as e:
                log.error("replication: namespace %s: corrupt record in the local log: %s",
                          store.name, e)
                await context.abort(grpc.StatusCode.DATA_LOSS,
                                    f"namespace {store.name}: corrupt local log record: {e}")
            # read_log returns durable records only (never past last_lsn).
            if records:
                yield pb.StreamResponse(batch=pb.RecordBatch(
                    records=to_pb(records), upstream_lsn=store.last_lsn, sent_ms=now_ms()))
                next_lsn = records[-1].lsn + 1
                continue
            try:
                async with asyncio.timeout(self.heartbeat_s):
                    await store.wait_beyond(next_lsn - 1)
            except TimeoutError:
                yield pb.StreamResponse(heartbeat=pb.Heartbeat(upstream_lsn=store.last_lsn,
                                                               sent_ms=now_ms()))

    async def _snapshot(self, store: NamespaceStore) -> AsyncIterator[pb.StreamResponse]:
        lsn, items = await store.snapshot()
        yield pb.StreamResponse(snapshot_begin=pb.SnapshotBegin(lsn=lsn))
        chunk: list[pb.KeyValue] = []
        size = keys = 0
        for key, value in items:
            chunk.append(pb.KeyValue(key=key, value=value))
            size += len(key) + len(value)
            keys += 1
            if len(chunk) >= SNAPSHOT_CHUNK_ITEMS or size >= SNAPSHOT_CHUNK_BYTES:
                yield pb.StreamResponse(snapshot_chunk=pb.SnapshotChunk(items=chunk))
                chunk, size = [], 0
        if chunk:
            yield pb.StreamResponse(snapshot_chunk=pb.SnapshotChunk(items=chunk))
        yield pb.StreamResponse(snapshot_end=pb.SnapshotEnd(lsn=lsn, keys=keys))
        log.info("replication: namespace %s: sent snapshot at lsn %d (%d keys)",
                 store.name, lsn, keys)


class ReplicationServer:
    """The node's gRPC server. `await start()` binds (StartupError naming the port)."""

    def __init__(self, stores: dict[str, NamespaceStore], grpc_cfg: GrpcConfig, *,
                 heartbeat_s: float = HEARTBEAT_S) -> None:
        self.stores = stores
        self.cfg = grpc_cfg
        self._servicer = _Servicer(stores, heartbeat_s)
        self._server: grpc.aio.Server | None = None
        self.port = grpc_cfg.port  # the bound port (differs from cfg when cfg.port is 0)

    @property
    def address(self) -> str:
        return f"{self.cfg.listen_ip}:{self.port}"

    async def start(self) -> None:
        from unison.node import StartupError

        # so_reuseport off: a second node on the same port must fail, not share it.
        server = grpc.aio.server(options=[*CHANNEL_OPTIONS, ("grpc.so_reuseport", 0)])
        pb_grpc.add_ReplicationServicer_to_server(self._servicer, server)
        target = f"{self.cfg.listen_ip}:{self.cfg.port}"
        try:
            if self.cfg.allow_insecure:
                port = server.add_insecure_port(target)
            else:
                creds = server_credentials(self.cfg.cert_path, self.cfg.key_path,
                                           self.cfg.ca_path)
                port = server.add_secure_port(target, creds)
        except TLSConfigError as e:
            raise StartupError(f"gRPC TLS: {e}") from e
        except RuntimeError as e:  # grpc raises RuntimeError when it cannot bind
            raise StartupError(f"gRPC port {self.cfg.port} on {self.cfg.listen_ip} is not "
                               f"available (in use?): {e}") from e
        if port == 0:
            raise StartupError(f"gRPC port {self.cfg.port} on {self.cfg.listen_ip} is not "
                               "available (in use?)")
        self.port = port
        await server.start()
        self._server = server
        log.info("replication: gRPC server on %s (%s)", self.address,
                 "insecure" if self.cfg.allow_insecure else
                 "TLS, client certificates required" if self.cfg.ca_path else "TLS")

    async def stop(self, grace: float = STOP_GRACE_S) -> None:
        """Stop accepting; open streams end after a short grace (followers reconnect)."""
        if self._server is not None:
            server, self._server = self._server, None
            await server.stop(grace)
            log.info("replication: gRPC server on %s stopped", self.address)

    def metrics(self) -> dict[str, int]:
        return {"active_streams": self._servicer.active_streams}

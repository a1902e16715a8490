"""gRPC replication server: streams any namespace's log to followers, tailing on commit.

Every node runs one (replicators and relayers alike), so a relayer can feed further
relayers. A stream is a thin adapter over the store's log cursor (storage/cursor.py, which
also holds its limits): bounded batches from the asked-for LSN, then the tail as commits
become durable (no polling), heartbeats when idle. A follower older than the retained
log gets a snapshot of all live keys at LSN X first and continues from X + 1.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import replace

import grpc

from unison.config import GrpcConfig
from unison.errors import StartupError
from unison.memory import release_memory
from unison.replication import replication_pb2 as pb
from unison.replication import replication_pb2_grpc as pb_grpc
from unison.replication.tls import TLSConfigError, server_credentials
from unison.replication.wire import (
    CHANNEL_OPTIONS,
    batch_message,
    chunk_crc,
    history_to_pb,
    records_payload,
)
from unison.storage import (
    CommittedBatch,
    CorruptRecord,
    Heartbeat,
    LogTrimmed,
    NamespaceStore,
    StoreClosed,
)
from unison.storage.cursor import REPLICATION_STREAM
from unison.storage.records import now_ms

log = logging.getLogger(__name__)

SNAPSHOT_CHUNK_ITEMS = 1000
SNAPSHOT_CHUNK_BYTES = 1024 * 1024
HEARTBEAT_S = REPLICATION_STREAM.heartbeat
STOP_GRACE_S = 0.5

_Message = pb.StreamResponse | bytes
_WIRE = "pb"  # Commit.encoded() form: the records as RecordBatch.records bytes


def _serialize(msg: _Message) -> bytes:
    # Batches are assembled from per-commit encodings shared by every stream, so they
    # arrive as bytes.
    return msg if isinstance(msg, bytes) else msg.SerializeToString()


class _Built:
    """The last batch message built per namespace: streams woken by the same commit at the
    same position send the very same bytes, built once."""

    def __init__(self) -> None:
        self._last: dict[str, tuple[tuple[int, int, int, int], bytes]] = {}

    def message(self, namespace: str, batch: CommittedBatch) -> bytes:
        key = (batch.first, batch.last, batch.durable_lsn, now_ms())
        built = self._last.get(namespace)
        if built is None or built[0] != key:
            parts = [c.encoded(_WIRE, records_payload) for c in batch.commits]
            built = self._last[namespace] = key, batch_message(parts, key[2], key[3])
        return built[1]


def _heartbeat(lsn: int) -> pb.StreamResponse:
    return pb.StreamResponse(heartbeat=pb.Heartbeat(upstream_lsn=lsn, sent_ms=now_ms()))


def _identity(store: NamespaceStore, next_lsn: int) -> pb.StreamResponse:
    """A stream's first message: the history identity and the record before `next_lsn`
    (when held), before any record."""
    prev_crc = store.record_crc(next_lsn - 1)
    return pb.StreamResponse(heartbeat=pb.Heartbeat(
        upstream_lsn=store.last_lsn, sent_ms=now_ms(), history=history_to_pb(store.history),
        prev_lsn=next_lsn - 1 if prev_crc is not None else 0, prev_crc32=prev_crc or 0))


def _chunk(items: list[pb.KeyValue]) -> pb.StreamResponse:
    crc = chunk_crc((kv.key, kv.value) for kv in items)
    return pb.StreamResponse(snapshot_chunk=pb.SnapshotChunk(items=items, crc32=crc))


class _Servicer(pb_grpc.ReplicationServicer):
    def __init__(self, stores: dict[str, NamespaceStore], heartbeat_s: float | None,
                 grpc_cfg: GrpcConfig | None = None) -> None:
        self.stores = stores
        self.limits = replace(REPLICATION_STREAM, heartbeat=heartbeat_s)
        self.active_streams = 0
        self.cfg = grpc_cfg or GrpcConfig()
        self._per_peer: dict[str, int] = {}  # open streams per peer address (not port)
        self.refused_streams = 0
        self._built = _Built()

    async def _admit(self, context: grpc.aio.ServicerContext) -> str:
        """Count a new stream against grpc_config.max_streams and max_streams_per_peer
        (RESOURCE_EXHAUSTED beyond); returns the peer address to release it with."""
        peer = context.peer().rpartition(":")[0] or context.peer()
        cfg, open_ = self.cfg, self._per_peer.get(peer, 0)
        over = ("grpc_config.max_streams", cfg.max_streams) if (
            self.active_streams >= cfg.max_streams) else (
            ("grpc_config.max_streams_per_peer", cfg.max_streams_per_peer)
            if open_ >= cfg.max_streams_per_peer else None)
        if over is not None:
            self.refused_streams += 1
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"too many replication streams ({over[1]}, {over[0]}); "
                                "close one or retry later")
        self._per_peer[peer] = open_ + 1
        self.active_streams += 1
        return peer

    def _release(self, peer: str) -> None:
        self.active_streams -= 1
        left = self._per_peer.pop(peer, 1) - 1
        if left > 0:
            self._per_peer[peer] = left
        else:
            release_memory()  # a peer's streams are gone: give their buffers back

    async def _store(self, namespace: str, context: grpc.aio.ServicerContext) -> NamespaceStore:
        store = self.stores.get(namespace)
        if store is None:
            served = ", ".join(sorted(self.stores)) or "none"
            await context.abort(grpc.StatusCode.NOT_FOUND,
                                f"namespace not found: {namespace!r} (this node serves: {served})")
            raise AssertionError("abort() raises")  # for the type checker
        if store.closed:
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                f"namespace {namespace}: storage is closed (node shutting down)")
        return store

    async def LatestLSN(self, request: pb.LatestLSNRequest,
                        context: grpc.aio.ServicerContext) -> pb.LatestLSNResponse:
        store = await self._store(request.namespace, context)
        return pb.LatestLSNResponse(lsn=store.last_lsn, first_retained_lsn=store.first_lsn,
                                    history=history_to_pb(store.history))

    async def Stream(self, request: pb.StreamRequest,
                     context: grpc.aio.ServicerContext) -> AsyncIterator[_Message]:
        store = await self._store(request.namespace, context)
        who = request.follower or context.peer()
        next_lsn = max(request.from_lsn, 1)
        peer = await self._admit(context)  # refused before any message is sent
        try:  # counted from here; released below
            yield _identity(store, next_lsn)  # first: the follower checks it before applying anything
            if next_lsn > store.last_lsn + 1:
                # The follower has records this node never had: streaming on would mix two
                # histories. Refuse loudly; the follower retries (this node may be catching up).
                await context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    f"namespace {store.name}: follower asks from lsn {next_lsn} but this node's "
                    f"latest lsn is {store.last_lsn}")
            log.info("replication: stream to %s opened (namespace %s, from lsn %d, latest %d)",
                     who, store.name, next_lsn, store.last_lsn)
        except BaseException:
            self._release(peer)
            raise
        try:
            while True:  # each pass: follow the log until it is trimmed under us
                try:
                    async for msg in self._follow(store, next_lsn, context):
                        yield msg
                except LogTrimmed as e:
                    log.info("replication: %s asks namespace %s from lsn %d, older than the "
                             "retained log (first %d): sending a snapshot", who, store.name,
                             e.wanted, e.first)
                    snap_lsn = 0
                    async for msg in self._snapshot(store):
                        if msg.HasField("snapshot_begin"):
                            snap_lsn = msg.snapshot_begin.lsn
                        yield msg
                    next_lsn = snap_lsn + 1
        finally:
            self._release(peer)
            log.info("replication: stream to %s closed (namespace %s)", who, store.name)

    async def _follow(self, store: NamespaceStore, next_lsn: int,
                      context: grpc.aio.ServicerContext) -> AsyncIterator[_Message]:
        """The cursor's batches and heartbeats as StreamResponses; LogTrimmed passes up."""
        try:
            with store.cursor(next_lsn, self.limits) as cursor:
                async for item in cursor:
                    if isinstance(item, Heartbeat):
                        yield _heartbeat(item.durable_lsn)
                    else:
                        msg = self._built.message(store.name, item)
                        # While the peer has not taken it, hold only the encoded bytes.
                        del item
                        yield msg
        except StoreClosed:
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                f"namespace {store.name}: node shutting down")
        except CorruptRecord as e:
            log.error("replication: namespace %s: corrupt record in the local log: %s",
                      store.name, e)
            await context.abort(grpc.StatusCode.DATA_LOSS,
                                f"namespace {store.name}: corrupt local log record: {e}")

    async def _snapshot(self, store: NamespaceStore) -> AsyncIterator[pb.StreamResponse]:
        lsn, items = await store.snapshot()
        yield pb.StreamResponse(snapshot_begin=pb.SnapshotBegin(
            lsn=lsn, history=history_to_pb(store.history)))
        chunk: list[pb.KeyValue] = []
        size = keys = 0
        for key, value in items:
            chunk.append(pb.KeyValue(key=key, value=value))
            size += len(key) + len(value)
            keys += 1
            if len(chunk) >= SNAPSHOT_CHUNK_ITEMS or size >= SNAPSHOT_CHUNK_BYTES:
                yield _chunk(chunk)
                chunk, size = [], 0
        if chunk:
            yield _chunk(chunk)
        yield pb.StreamResponse(snapshot_end=pb.SnapshotEnd(lsn=lsn, keys=keys))
        log.info("replication: namespace %s: sent snapshot at lsn %d (%d keys)",
                 store.name, lsn, keys)


def _add_servicer(servicer: _Servicer, server: grpc.aio.Server) -> None:
    """As the generated add_ReplicationServicer_to_server, but Stream may yield bytes."""
    handlers = {
        "Stream": grpc.unary_stream_rpc_method_handler(
            servicer.Stream, request_deserializer=pb.StreamRequest.FromString,
            response_serializer=_serialize),
        "LatestLSN": grpc.unary_unary_rpc_method_handler(
            servicer.LatestLSN, request_deserializer=pb.LatestLSNRequest.FromString,
            response_serializer=pb.LatestLSNResponse.SerializeToString),
    }
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("unison.v1.Replication", handlers),))
    server.add_registered_method_handlers("unison.v1.Replication", handlers)


class ReplicationServer:
    """The node's gRPC server. `await start()` binds (StartupError naming the port)."""

    def __init__(self, stores: dict[str, NamespaceStore], grpc_cfg: GrpcConfig, *,
                 heartbeat_s: float | None = HEARTBEAT_S) -> None:
        self.stores = stores
        self.cfg = grpc_cfg
        self._servicer = _Servicer(stores, heartbeat_s, grpc_cfg)
        self._server: grpc.aio.Server | None = None
        self.port = grpc_cfg.port  # the bound port (differs from cfg when cfg.port is 0)

    @property
    def address(self) -> str:
        return f"{self.cfg.listen_ip}:{self.port}"

    def _bounds(self) -> list[tuple[str, int]]:
        """grpc_config's bounds as server options (later options win over CHANNEL_OPTIONS)."""
        c = self.cfg
        return [("grpc.max_concurrent_streams", c.max_concurrent_streams),
                ("grpc.keepalive_time_ms", int(c.keepalive_time * 1000)),
                ("grpc.keepalive_timeout_ms", int(c.keepalive_timeout * 1000)),
                # A peer's pings may come this often (followers ping every 10 s).
                ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
                # The receive window stays at HTTP/2's default instead of growing with
                # bandwidth-delay probes: a peer that sends and never reads pins less.
                ("grpc.http2.bdp_probe", 0)]

    async def start(self) -> None:
        # so_reuseport off: a second node on the same port must fail, not share it.
        server = grpc.aio.server(options=[*CHANNEL_OPTIONS, *self._bounds(),
                                          ("grpc.so_reuseport", 0)])
        _add_servicer(self._servicer, server)
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

"""gRPC replication server: streams any namespace's log to followers, tailing on commit.

Every node runs one (replicators and relayers alike), so a relayer can feed further
relayers. A stream sends bounded batches from the asked-for LSN, then waits for the next
durable commit (no polling). A follower older than the retained log gets a snapshot of
all live keys at LSN X first and continues from X + 1.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass

import grpc

from unison.config import GrpcConfig
from unison.errors import StartupError
from unison.replication import replication_pb2 as pb
from unison.replication import replication_pb2_grpc as pb_grpc
from unison.replication.tls import TLSConfigError, server_credentials
from unison.replication.wire import CHANNEL_OPTIONS, batch_message, records_payload, to_pb
from unison.storage import CorruptRecord, LogTrimmed, NamespaceStore
from unison.storage.records import Record, now_ms

log = logging.getLogger(__name__)

BATCH_RECORDS = 2000
BATCH_BYTES = 2 * 1024 * 1024
SNAPSHOT_CHUNK_ITEMS = 1000
SNAPSHOT_CHUNK_BYTES = 1024 * 1024
HEARTBEAT_S = 1.0
STOP_GRACE_S = 0.5
# Newest commits kept per namespace (once a stream has asked for it) for streams at the tail.
TAIL_BYTES = 4 * 1024 * 1024

_Message = pb.StreamResponse | bytes


def _serialize(msg: _Message) -> bytes:
    # Tail batches are encoded once and shared by every stream, so they arrive as bytes.
    return msg if isinstance(msg, bytes) else msg.SerializeToString()


@dataclass(slots=True)
class _Commit:
    first: int
    last: int
    records: Sequence[Record]
    size: int
    payload: bytes | None = None  # the records' wire form, encoded when first sent


class _Tail:
    """The newest commits of one namespace, each encoded at most once for all its streams.

    Fed by the store's commit listener (durable records, in LSN order), so a stream that is
    caught up neither re-reads and re-verifies the log nor re-encodes what the other
    streams already encoded. Streams further behind read the log as before.
    """

    def __init__(self, store: NamespaceStore, max_bytes: int = TAIL_BYTES) -> None:
        self.store = store
        self.max_bytes = max_bytes
        self._commits: list[_Commit] = []
        self._bytes = 0
        # The last batch built: streams woken by the same commit send the very same bytes.
        self._built: tuple[tuple[int, int, int, int], bytes] | None = None
        self.unsubscribe: Callable[[], None] = store.subscribe(self._on_commit)

    def _on_commit(self, records: Sequence[Record]) -> None:
        commits = self._commits
        if not records or (commits and records[0].lsn != commits[-1].last + 1):
            # A snapshot install (or anything else that breaks the sequence): start over.
            commits.clear()
            self._bytes = 0
            if not records:
                return
        size = sum(r.size for r in records)
        commits.append(_Commit(records[0].lsn, records[-1].lsn, records, size))
        self._bytes += size
        if self._bytes > self.max_bytes and len(commits) > 1:
            drop = 0
            while self._bytes > self.max_bytes // 2 and drop < len(commits) - 1:
                self._bytes -= commits[drop].size
                drop += 1
            del commits[:drop]  # halve at once: trimming stays amortised O(1) per commit

    def take(self, next_lsn: int, max_records: int, max_bytes: int) -> tuple[list[bytes], int]:
        """Wire payloads of whole commits from next_lsn on, and the last LSN they cover;
        ([], 0) when next_lsn is not the start of a retained, durable commit."""
        commits, store = self._commits, self.store
        if (not commits or next_lsn < commits[0].first or next_lsn > commits[-1].last
                or next_lsn < store.first_lsn):
            return [], 0
        i = bisect.bisect_right(commits, next_lsn, key=lambda c: c.first) - 1
        if commits[i].first != next_lsn:
            return [], 0
        parts: list[bytes] = []
        last = count = size = 0
        durable = store.last_lsn
        for c in commits[i:]:
            if c.last > durable or (parts and (count + c.last - c.first + 1 > max_records
                                                or size + c.size > max_bytes)):
                break
            if c.payload is None:
                c.payload = records_payload(c.records)
                c.records = ()  # the encoded form is all that is needed from now on
            parts.append(c.payload)
            last, count, size = c.last, count + c.last - c.first + 1, size + c.size
        return parts, last

    def message(self, next_lsn: int) -> tuple[bytes, int] | None:
        """A whole StreamResponse{batch} from next_lsn and the last LSN in it, or None."""
        parts, last = self.take(next_lsn, BATCH_RECORDS, BATCH_BYTES)
        if not parts:
            return None
        key = (next_lsn, last, self.store.last_lsn, now_ms())
        if self._built is None or self._built[0] != key:
            self._built = key, batch_message(parts, key[2], key[3])
        return self._built[1], last


class _Servicer(pb_grpc.ReplicationServicer):
    def __init__(self, stores: dict[str, NamespaceStore], heartbeat_s: float) -> None:
        self.stores = stores
        self.heartbeat_s = heartbeat_s
        self.active_streams = 0
        self.tails: dict[str, _Tail] = {}

    def close(self) -> None:
        for tail in self.tails.values():
            tail.unsubscribe()
        self.tails.clear()

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
                     context: grpc.aio.ServicerContext) -> AsyncIterator[_Message]:
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
        tail = self.tails.get(store.name)
        if tail is None or tail.store is not store:
            if tail is not None:
                tail.unsubscribe()
            tail = self.tails[store.name] = _Tail(store)
        self.active_streams += 1
        try:
            async for msg in self._messages(store, tail, next_lsn, who, context):
                yield msg
        finally:
            self.active_streams -= 1
            log.info("replication: stream to %s closed (namespace %s)", who, store.name)

    async def _messages(self, store: NamespaceStore, tail: _Tail, next_lsn: int, who: str,
                        context: grpc.aio.ServicerContext) -> AsyncIterator[_Message]:
        while True:
            if store.closed:
                await context.abort(grpc.StatusCode.UNAVAILABLE,
                                    f"namespace {store.name}: node shutting down")
            if next_lsn > store.last_lsn:  # all sent: wait for the next durable commit
                try:
                    async with asyncio.timeout(self.heartbeat_s):
                        await store.wait_beyond(next_lsn - 1)
                except TimeoutError:
                    yield pb.StreamResponse(heartbeat=pb.Heartbeat(upstream_lsn=store.last_lsn,
                                                                   sent_ms=now_ms()))
                continue
            built = tail.message(next_lsn)
            if built is not None:
                yield built[0]
                next_lsn = built[1] + 1
                continue
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
        # so_reuseport off: a second node on the same port must fail, not share it.
        server = grpc.aio.server(options=[*CHANNEL_OPTIONS, ("grpc.so_reuseport", 0)])
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
            self._servicer.close()
            log.info("replication: gRPC server on %s stopped", self.address)

    def metrics(self) -> dict[str, int]:
        return {"active_streams": self._servicer.active_streams}

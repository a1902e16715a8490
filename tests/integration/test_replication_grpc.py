"""Replication over real gRPC between real RocksDB stores, inside one process.

Server and follower are the production classes; the only hand-written peer is the tiny
gRPC server in the corruption test, which plays a faulty upstream on a real socket.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import grpc
import pytest
from unison.config import GrpcConfig, UpstreamConfig
from unison.node import StartupError
from unison.replication import replication_pb2 as pb
from unison.replication import replication_pb2_grpc as pb_grpc
from unison.replication.follower import Follower
from unison.replication.server import ReplicationServer
from unison.storage import Mutation, NamespaceStore, Op, Record

from tests.support.nodes import free_port

HOST = "127.0.0.1"
NS = "ns1"


async def until(cond: Callable[[], bool], within: float = 15.0, what: str = "condition") -> None:
    """Wait for a condition a user could observe (a test may poll; the product may not)."""
    async with asyncio.timeout(within):
        while not cond():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    assert cond(), what


def plaintext(port: int) -> GrpcConfig:
    """A server config that asks for plaintext gRPC (allow_insecure defaults to false)."""
    return GrpcConfig(port=port, listen_ip=HOST, allow_insecure=True)


def open_store(path: Path, name: str = NS) -> NamespaceStore:
    store = NamespaceStore(name, path).open()
    store.start()
    return store


def everything(store: NamespaceStore) -> list[tuple[bytes, bytes]]:
    return store.scan(limit=10**9)[0]


async def fill(store: NamespaceStore, n: int, prefix: str = "k", batch: int = 500) -> None:
    for start in range(0, n, batch):
        await store.write([Mutation(Op.PUT, f"{prefix}{i:06d}".encode(), f"v{i}".encode())
                           for i in range(start, min(n, start + batch))])


class Cluster:
    """Stores, servers and followers of one test; closed in reverse order."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self._closers: list[Callable[[], Awaitable[None]]] = []

    def store(self, name: str, ns: str = NS) -> NamespaceStore:
        s = open_store(self.tmp / name / ns, ns)
        self._closers.append(s.close)
        return s

    async def server(self, stores: dict[str, NamespaceStore], **tls: object) -> ReplicationServer:
        # Plaintext unless a test passes TLS settings (allow_insecure defaults to false).
        tls = {"allow_insecure": True, **tls}
        cfg = GrpcConfig(port=0, listen_ip=HOST, **tls)  # type: ignore[arg-type]
        srv = ReplicationServer(stores, cfg)
        await srv.start()
        self._closers.append(srv.stop)
        return srv

    def follow(self, store: NamespaceStore, port: int, **kw: object) -> Follower:
        kw = {"allow_insecure": True, **kw}
        up = UpstreamConfig("up", [store.name], f"{HOST}:{port}", **kw)  # type: ignore[arg-type]
        f = Follower(store, up, backoff_base_s=0.02, backoff_cap_s=0.2)
        f.start()
        self._closers.append(f.stop)
        return f

    async def close(self) -> None:
        for close in reversed(self._closers):
            await close()


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    c = Cluster(tmp_path)
    yield c
    await c.close()


async def test_follower_copies_history_then_tails_new_commits(cluster: Cluster) -> None:
    primary = cluster.store("primary")
    await fill(primary, 3000)
    await primary.delete(b"k000007")
    srv = await cluster.server({NS: primary})
    replica = cluster.store("replica")
    f = cluster.follow(replica, srv.port)
    await until(lambda: replica.last_lsn == primary.last_lsn)
    assert everything(replica) == everything(primary)
    assert replica.get(b"k000007") is None

    lsn = await primary.put(b"late", b"arrival")
    await until(lambda: replica.last_lsn == lsn)
    assert replica.get(b"late") == b"arrival"
    st = f.status()
    assert st["connected"] and st["lag_records"] == 0 and f.caught_up
    assert st["records_applied"] == lsn  # every record exactly once
    # Upstream LSNs and origin timestamps are kept, so the replica can serve others.
    assert replica.read_log(1, 5) == primary.read_log(1, 5)


async def test_resume_after_follower_restart_has_no_gaps_or_duplicates(cluster: Cluster,
                                                                       tmp_path: Path) -> None:
    primary = cluster.store("primary")
    await fill(primary, 1000)
    srv = await cluster.server({NS: primary})
    replica = open_store(tmp_path / "replica" / NS)
    f = cluster.follow(replica, srv.port)
    await until(lambda: replica.last_lsn == 1000)
    await f.stop()
    await replica.close()

    await fill(primary, 1500, prefix="after")
    replica = cluster.store("replica")
    f = cluster.follow(replica, srv.port)
    await until(lambda: replica.last_lsn == primary.last_lsn)
    assert everything(replica) == everything(primary)
    assert f.status()["records_applied"] == 1500  # only what it missed
    assert [r.lsn for r in replica.read_log(1, 10**6)] == list(range(1, 2501))


async def test_unknown_namespace_is_not_found_with_a_clear_message(cluster: Cluster) -> None:
    srv = await cluster.server({NS: cluster.store("primary")})
    async with grpc.aio.insecure_channel(f"{HOST}:{srv.port}") as ch:
        stub = pb_grpc.ReplicationStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            async for _ in stub.Stream(pb.StreamRequest(namespace="nope", from_lsn=1)):
                pass
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert "namespace not found: 'nope'" in err.value.details()
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.LatestLSN(pb.LatestLSNRequest(namespace="nope"))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_latest_lsn_reports_head_and_retained_log(cluster: Cluster) -> None:
    primary = cluster.store("primary")
    await fill(primary, 50)
    await primary.trim_log(21)
    srv = await cluster.server({NS: primary})
    async with grpc.aio.insecure_channel(f"{HOST}:{srv.port}") as ch:
        resp = await pb_grpc.ReplicationStub(ch).LatestLSN(pb.LatestLSNRequest(namespace=NS))
    assert (resp.lsn, resp.first_retained_lsn) == (50, 21)


async def test_follower_behind_retained_log_bootstraps_from_snapshot(cluster: Cluster) -> None:
    primary = cluster.store("primary")
    await fill(primary, 2500)
    for i in range(0, 2500, 3):
        await primary.delete(f"k{i:06d}".encode())
    await primary.apply_retention(max_records=100)
    assert primary.first_lsn > 1
    srv = await cluster.server({NS: primary})
    replica = cluster.store("replica")
    # (A replica holding writes of its own is another history: it is refused, never
    # overwritten by the snapshot; see test_history_identity.py.)
    f = cluster.follow(replica, srv.port)
    await until(lambda: replica.last_lsn == primary.last_lsn)
    assert everything(replica) == everything(primary)
    assert f.status()["snapshots_installed"] == 1

    lsn = await primary.put(b"after-snapshot", b"tail")
    await until(lambda: replica.last_lsn == lsn)
    assert replica.get(b"after-snapshot") == b"tail"


async def test_two_hops_and_a_snapshot_through_a_relayer(cluster: Cluster) -> None:
    primary = cluster.store("primary")
    await fill(primary, 800)
    src = await cluster.server({NS: primary})
    hop1 = cluster.store("hop1")
    cluster.follow(hop1, src.port)
    mid = await cluster.server({NS: hop1})
    hop2 = cluster.store("hop2")
    cluster.follow(hop2, mid.port)
    await fill(primary, 200, prefix="more")
    await until(lambda: hop2.last_lsn == primary.last_lsn == 1000)
    assert everything(hop2) == everything(primary)

    # The relayer trims its own log: a new third hop must get a snapshot from it.
    await hop1.apply_retention(max_records=10)
    hop3 = cluster.store("hop3")
    cluster.follow(hop3, mid.port)
    await primary.put(b"final", b"x")
    await until(lambda: hop3.last_lsn == hop2.last_lsn == primary.last_lsn)
    assert everything(hop3) == everything(primary) == everything(hop2)


async def test_idle_upstream_heartbeats_make_a_fresh_follower_caught_up(
        cluster: Cluster, tmp_path: Path) -> None:
    primary = cluster.store("primary")
    srv = ReplicationServer({NS: primary}, plaintext(0), heartbeat_s=0.05)
    await srv.start()
    try:
        replica = cluster.store("replica")
        f = cluster.follow(replica, srv.port)
        await until(lambda: f.caught_up, what="caught up on an empty upstream")
        assert f.status()["upstream_lsn"] == 0 and f.status()["lag_records"] == 0
    finally:
        await srv.stop()


async def test_follower_reconnects_after_the_upstream_goes_away(cluster: Cluster) -> None:
    primary = cluster.store("primary")
    await fill(primary, 100)
    port = free_port()
    srv = ReplicationServer({NS: primary}, plaintext(port))
    await srv.start()
    replica = cluster.store("replica")
    f = cluster.follow(replica, port)
    await until(lambda: replica.last_lsn == 100)
    await srv.stop(grace=0)
    await fill(primary, 100, prefix="offline")
    await until(lambda: not f.status()["connected"])
    srv = ReplicationServer({NS: primary}, plaintext(port))
    await srv.start()
    try:
        await until(lambda: replica.last_lsn == 200)
        assert everything(replica) == everything(primary)
        assert f.status()["reconnects"] >= 1
    finally:
        await srv.stop()


class _FaultyUpstream(pb_grpc.ReplicationServicer):
    """Serves a batch whose second record fails its CRC, until told to heal."""

    def __init__(self) -> None:
        self.requests: list[int] = []
        self.healed = False

    async def Stream(self, request: pb.StreamRequest,
                     context: grpc.aio.ServicerContext) -> AsyncIterator[pb.StreamResponse]:
        self.requests.append(request.from_lsn)
        good = [Record(1, Op.PUT, b"a", b"1", 1000).with_crc(),
                Record(2, Op.PUT, b"b", b"2", 1000).with_crc()]
        records = [pb.LogRecord(lsn=r.lsn, op=pb.OPERATION_PUT, key=r.key, value=r.value,
                                ts_ms=r.ts_ms, crc32=r.crc32) for r in good]
        if not self.healed:
            records[1].value = b"tampered"  # same CRC, different bytes
        yield pb.StreamResponse(batch=pb.RecordBatch(records=records, upstream_lsn=2))
        await asyncio.sleep(30)


async def test_corrupted_record_is_refused_logged_and_never_skipped(
        cluster: Cluster, caplog: pytest.LogCaptureFixture) -> None:
    faulty = _FaultyUpstream()
    server = grpc.aio.server()
    pb_grpc.add_ReplicationServicer_to_server(faulty, server)
    port = server.add_insecure_port(f"{HOST}:0")
    await server.start()
    try:
        replica = cluster.store("replica")
        with caplog.at_level(logging.ERROR, logger="unison.replication.follower"):
            f = cluster.follow(replica, port)
            await until(lambda: f.status()["refused_batches"] >= 3)
        assert replica.last_lsn == 0 and replica.get(b"a") is None  # nothing applied
        assert set(faulty.requests) == {1}  # every retry asks for the same LSN again
        assert any("CRC32 mismatch" in r.getMessage() and "refused" in r.getMessage()
                   for r in caplog.records if r.levelno == logging.ERROR)

        faulty.healed = True
        await until(lambda: replica.last_lsn == 2)
        assert (replica.get(b"a"), replica.get(b"b")) == (b"1", b"2")
    finally:
        await f.stop()
        await server.stop(0)


async def test_port_in_use_is_a_startup_error_naming_the_port(cluster: Cluster) -> None:
    primary = cluster.store("primary")
    with socket.socket() as s:
        s.bind((HOST, 0))
        s.listen()
        port = s.getsockname()[1]
        srv = ReplicationServer({NS: primary}, plaintext(port))
        with pytest.raises(StartupError, match=f"gRPC port {port}"):
            await srv.start()
    first = await cluster.server({NS: primary})
    second = ReplicationServer({NS: primary}, plaintext(first.port))
    with pytest.raises(StartupError, match=f"gRPC port {first.port}"):
        await second.start()


async def test_unresolvable_upstream_logs_and_reports_the_dns_error_once(
        cluster: Cluster, caplog: pytest.LogCaptureFixture) -> None:
    # `.invalid` never resolves (RFC 2606); the lookup fails without leaving the machine.
    store = cluster.store("relayer")
    up = UpstreamConfig("dc3", [NS], "nonexistent.invalid:4001", allow_insecure=True)
    f = Follower(store, up, backoff_base_s=0.02, backoff_cap_s=0.1)
    with caplog.at_level(logging.INFO, logger="unison.replication.follower"):
        f.start()
        try:
            await until(lambda: f.reconnects >= 5, what="several failed attempts")
        finally:
            await f.stop()
    assert "nonexistent.invalid" in f.last_error and "resolv" in f.last_error, f.last_error
    reason = f.not_ready_reason()
    assert reason is not None
    assert reason.startswith("upstream dc3 (nonexistent.invalid:4001) unreachable: ")
    assert f.last_error in reason
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    # Said once with the real reason, not once per reconnect attempt.
    assert len(warnings) == 1, warnings
    assert f.last_error in warnings[0]


async def test_a_slow_dns_failure_is_reported_not_cut_short_by_the_idle_timeout(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    # A DNS server that never answers (a bound UDP socket nobody reads): gRPC gives up on
    # the lookup after its query timeout, later than the follower's idle timeout.
    from unison.replication import follower as follower_module
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind((HOST, 0))
    try:
        monkeypatch.setattr(follower_module, "CHANNEL_OPTIONS", [
            *follower_module.CHANNEL_OPTIONS, ("grpc.dns_ares_query_timeout", 1500)])
        store = cluster.store("relayer")
        target = f"dns://{HOST}:{silent.getsockname()[1]}/nonexistent.invalid:4001"
        up = UpstreamConfig("dc3", [NS], target, allow_insecure=True)
        f = Follower(store, up, backoff_base_s=0.02, backoff_cap_s=0.1, idle_timeout_s=0.5)
        f.start()
        try:
            await until(lambda: bool(f.last_error), within=20, what="a first failure")
        finally:
            await f.stop()
    finally:
        silent.close()
    assert "nonexistent.invalid" in f.last_error and "DNS" in f.last_error, f.last_error
    assert "no message" not in f.last_error

"""Replication over TLS with a throwaway CA made in the test (openssl CLI).

In-process: the production server and follower on real stores with mutual TLS.
Process-level: a TLS datacenter node and a TLS relayer node, checked over HTTP.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from unison.config import GrpcConfig, UpstreamConfig
from unison.node import StartupError
from unison.replication.follower import Follower
from unison.replication.server import ReplicationServer
from unison.storage import Mutation, NamespaceStore, Op

from tests.support.nodes import HOST, seed_cluster

NS = "ns1"


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by it."""
    d = tmp_path_factory.mktemp("pki")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    _openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=unison-test-ca", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in ("server", "client"):
        _openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN=unison-{name}", cwd=d)
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.crt", "-days", "2", "-extfile", "san.ext",
                 cwd=d)
    return {n: str(d / n) for n in ("ca.crt", "server.crt", "server.key", "client.crt",
                                    "client.key")}


async def until(cond, within: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(within):
        while not cond():  # noqa: ASYNC110 - a test may poll what a user would observe
            await asyncio.sleep(0.01)


@pytest.fixture
async def primary(tmp_path: Path) -> AsyncIterator[NamespaceStore]:
    store = NamespaceStore(NS, tmp_path / "primary").open()
    store.start()
    yield store
    await store.close()


async def test_mutual_tls_round_trip_and_refusals(primary: NamespaceStore, tmp_path: Path,
                                                  pki: dict[str, str]) -> None:
    await primary.write([Mutation(Op.PUT, f"k{i}".encode(), b"v") for i in range(300)])
    srv = ReplicationServer({NS: primary}, GrpcConfig(
        port=0, listen_ip=HOST, allow_insecure=False, cert_path=pki["server.crt"],
        key_path=pki["server.key"], ca_path=pki["ca.crt"]))
    await srv.start()
    stores: list[NamespaceStore] = []
    followers: list[Follower] = []

    def follow(name: str, **tls: object) -> tuple[NamespaceStore, Follower]:
        store = NamespaceStore(NS, tmp_path / name).open()
        store.start()
        up = UpstreamConfig("dc1", [NS], f"{HOST}:{srv.port}", **tls)  # type: ignore[arg-type]
        f = Follower(store, up, backoff_base_s=0.02, backoff_cap_s=0.2)
        f.start()
        stores.append(store)
        followers.append(f)
        return store, f

    try:
        replica, f = follow("replica", allow_insecure=False, ca_path=pki["ca.crt"],
                            cert_path=pki["client.crt"], key_path=pki["client.key"])
        await until(lambda: replica.last_lsn == 300)
        assert replica.scan(limit=1000) == primary.scan(limit=1000)
        assert f.status()["connected"]

        # No client certificate, or no TLS at all: nothing gets through.
        anonymous, a = follow("anonymous", allow_insecure=False, ca_path=pki["ca.crt"])
        plain, p = follow("plain")
        await until(lambda: a.status()["reconnects"] >= 2 and p.status()["reconnects"] >= 2)
        assert anonymous.last_lsn == plain.last_lsn == 0
        assert not a.caught_up and not p.caught_up and not a.status()["connected"]
    finally:
        for f in followers:
            await f.stop()
        await srv.stop()
        for s in stores:
            await s.close()


async def test_unreadable_certificate_is_a_startup_error(primary: NamespaceStore,
                                                         tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.crt")
    srv = ReplicationServer({NS: primary}, GrpcConfig(
        port=0, listen_ip=HOST, allow_insecure=False, cert_path=missing, key_path=missing))
    with pytest.raises(StartupError, match="cert_path: cannot read .*nope.crt"):
        await srv.start()


def test_tls_between_node_processes(tmp_path: Path, pki: dict[str, str]) -> None:
    c = seed_cluster(tmp_path, [("dc1", ["ad-campaign-dc1"])])
    dc1, relayer = c["dc1"], c["relayer"]
    g = dc1.config.grpc
    g.allow_insecure, g.cert_path, g.key_path, g.ca_path = (
        False, pki["server.crt"], pki["server.key"], pki["ca.crt"])
    up = relayer.config.relayers[0]
    up.allow_insecure, up.ca_path, up.cert_path, up.key_path = (
        False, pki["ca.crt"], pki["client.crt"], pki["client.key"])
    try:
        dc1.start()
        relayer.start()
        assert dc1.put("ad-campaign-dc1", "lww:tls", "secret")[0] == 200
        deadline = time.monotonic() + 20
        while relayer.get("ad-campaign-dc1", "lww:tls") is None:
            assert time.monotonic() < deadline, relayer.logs()[-3000:]
            time.sleep(0.05)
        assert relayer.get("ad-campaign-dc1", "lww:tls") == b"secret"
        assert "TLS, client certificates required" in dc1.logs()
    finally:
        relayer.stop()
        dc1.stop()

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
from unison.config.parse import parse_config
from unison.errors import ConfigError, StartupError
from unison.replication.follower import Follower
from unison.replication.server import ReplicationServer
from unison.replication.tls import TLSConfigError, server_credentials
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
        plain, p = follow("plain", allow_insecure=True)
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


def _not_pem(tmp_path: Path, pki: dict[str, str]) -> dict[str, str]:
    """Files that exist but are not usable PEM, next to the good ones."""
    junk = tmp_path / "junk.pem"
    junk.write_text("this is not a certificate\n")
    der = tmp_path / "server.der"
    subprocess.run(["openssl", "x509", "-in", pki["server.crt"], "-outform", "DER", "-out",
                    str(der)], check=True, capture_output=True)
    broken = tmp_path / "broken.crt"
    broken.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    return {"junk": str(junk), "der": str(der), "broken": str(broken)}


@pytest.mark.parametrize("cert, key, ca, message", [
    ("junk", "server.key", "", r"grpc_config\.cert_path: .*junk\.pem is not a PEM file"),
    ("der", "server.key", "", r"grpc_config\.cert_path: .*server\.der is not a PEM file"),
    ("broken", "server.key", "", r"grpc_config\.cert_path: .*broken\.crt: certificate 1 is not"),
    ("server.key", "server.key", "", r"grpc_config\.cert_path: .*server\.key holds no CERTIF"),
    ("server.crt", "junk", "", r"grpc_config\.key_path: .*junk\.pem is not a PEM file"),
    ("server.crt", "server.crt", "", r"grpc_config\.key_path: .*server\.crt holds no PRIVATE"),
    ("server.crt", "client.key", "", r"grpc_config\.key_path: .*client\.key does not match "
                                     r"the certificate in .*server\.crt"),
    ("server.crt", "server.key", "junk", r"grpc_config\.ca_path: .*junk\.pem is not a PEM"),
])
async def test_non_pem_tls_files_are_startup_errors_naming_key_and_file(
        primary: NamespaceStore, tmp_path: Path, pki: dict[str, str],
        cert: str, key: str, ca: str, message: str) -> None:
    files = {**pki, **_not_pem(tmp_path, pki)}
    srv = ReplicationServer({NS: primary}, GrpcConfig(
        port=0, listen_ip=HOST, allow_insecure=False, cert_path=files[cert],
        key_path=files[key], ca_path=files[ca] if ca else ""))
    with pytest.raises(StartupError, match=message) as err:
        await srv.start()
    assert "in use" not in str(err.value)


async def test_follower_with_a_non_pem_ca_says_which_key_and_file(
        primary: NamespaceStore, tmp_path: Path, pki: dict[str, str]) -> None:
    junk = _not_pem(tmp_path, pki)["junk"]
    store = NamespaceStore(NS, tmp_path / "replica").open()
    store.start()
    f = Follower(store, UpstreamConfig("dc1", [NS], f"{HOST}:1", allow_insecure=False,
                                       ca_path=junk), backoff_base_s=0.02, backoff_cap_s=0.2)
    f.start()
    try:
        await until(lambda: f.status()["reconnects"] >= 1)
        assert f.status()["last_error"].startswith(
            f"TLS configuration: relayer_config.dc1.ca_path: {junk} is not a PEM file")
    finally:
        await f.stop()
        await store.close()


def test_node_process_with_a_non_pem_certificate_fails_naming_key_and_file(
        tmp_path: Path, pki: dict[str, str]) -> None:
    junk = _not_pem(tmp_path, pki)["junk"]
    dc1 = seed_cluster(tmp_path, [("dc1", ["ad-campaign-dc1"])])["dc1"]
    g = dc1.config.grpc
    g.allow_insecure, g.cert_path, g.key_path, g.ca_path = (
        False, junk, pki["server.key"], pki["ca.crt"])
    dc1.start(wait=False)
    assert dc1.proc is not None
    try:
        assert dc1.proc.wait(30) == 1, dc1.logs()
    finally:
        dc1.stop()
    logs = dc1.logs()
    assert f"start-up failed: gRPC TLS: grpc_config.cert_path: {junk} is not a PEM file" in logs
    assert "in use" not in logs and "Traceback" not in logs, logs


def test_a_server_without_a_ca_is_refused_mutual_tls_only(pki: dict[str, str]) -> None:
    """TLS that verifies no client is not offered: ca_path is required with TLS."""
    with pytest.raises(TLSConfigError, match=r"grpc_config\.ca_path: required when "
                       r"allow_insecure = false \(replication is mutual TLS"):
        server_credentials(pki["server.crt"], pki["server.key"], "")


MTLS = "required when allow_insecure = false (the default): replication is mutual TLS"


@pytest.mark.parametrize("grpc, upstream, message", [
    ({"cert_path": "/c", "key_path": "/k"}, None, f"grpc_config.ca_path: {MTLS}, clients must "
     "present a certificate signed by this CA; set allow_insecure = true for plaintext gRPC"),
    ({"allow_insecure": True}, {"ca_path": "/ca"},
     f"relayer_config.dc1.cert_path: {MTLS}, the upstream requires a client certificate"),
    ({"allow_insecure": True}, {"ca_path": "/ca", "cert_path": "/c"},
     f"relayer_config.dc1.key_path: {MTLS}, the upstream requires a client certificate"),
])
def test_config_with_tls_but_no_mutual_tls_names_the_missing_key(
        grpc: dict[str, object], upstream: dict[str, object] | None, message: str) -> None:
    doc: dict[str, object] = {"http_port": 8001, "grpc_config": {"port": 4001, **grpc},
                              "storage_config": {"base_dir": "/d", "namespaces": [NS]}}
    if upstream is not None:
        doc["relayer_config"] = {"dc1": {"namespaces": [NS], "upstream_address": "a:1",
                                         **upstream}}
    with pytest.raises(ConfigError) as err:
        parse_config(doc, "x.toml")
    assert message in str(err.value)


def test_full_mutual_tls_config_parses(pki: dict[str, str]) -> None:
    files = {"ca_path": pki["ca.crt"], "cert_path": pki["server.crt"],
             "key_path": pki["server.key"]}
    cfg = parse_config({"http_port": 8001, "grpc_config": {"port": 4001, **files},
                        "storage_config": {"base_dir": "/d", "namespaces": [NS]},
                        "relayer_config": {"dc1": {"namespaces": [NS],
                                                   "upstream_address": "a:1", **files}}},
                       "x.toml")
    assert not cfg.grpc.allow_insecure and cfg.grpc.ca_path == pki["ca.crt"]
    assert cfg.upstreams[0].cert_path == pki["server.crt"]


def test_tls_between_node_processes(tmp_path: Path, pki: dict[str, str]) -> None:
    c = seed_cluster(tmp_path, [("dc1", ["ad-campaign-dc1"])])
    dc1, relayer = c["dc1"], c["relayer"]
    g = dc1.config.grpc
    g.allow_insecure, g.cert_path, g.key_path, g.ca_path = (
        False, pki["server.crt"], pki["server.key"], pki["ca.crt"])
    up = relayer.config.upstreams[0]
    up.allow_insecure, up.ca_path, up.cert_path, up.key_path = (
        False, pki["ca.crt"], pki["client.crt"], pki["client.key"])
    try:
        dc1.start()
        relayer.start()
        assert dc1.put("ad-campaign-dc1", "tls-key", "secret")[0] == 200
        deadline = time.monotonic() + 20
        while relayer.get("ad-campaign-dc1", "tls-key") is None:
            assert time.monotonic() < deadline, relayer.logs()[-3000:]
            time.sleep(0.05)
        assert relayer.get("ad-campaign-dc1", "tls-key") == b"secret"
        assert "TLS, client certificates required" in dc1.logs()
    finally:
        relayer.stop()
        dc1.stop()

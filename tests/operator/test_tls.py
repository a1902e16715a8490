"""Mutual TLS on Kubernetes: the per-cluster CA and node certificates (pki.py), how they
are rendered and mounted (render.py), that re-reconciles keep the same bytes (no pod
restart), and that the certificates really carry replication: the production server and
follower over gRPC with them, an anonymous or foreign client refused."""

from __future__ import annotations

import asyncio
import datetime
import tomllib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from unison.config import GrpcConfig, UpstreamConfig
from unison.replication.follower import Follower
from unison.replication.server import ReplicationServer
from unison.storage import Mutation, NamespaceStore, Op
from unison.topology.spec import parse_cluster
from unison_operator import pki
from unison_operator.render import (
    TLS_DIR,
    TLS_HASH_ANNOTATION,
    render,
    tls_dns_names,
    tls_parts,
)

from .conftest import (
    NS,
    ApiServerEmulator,
    eventually,
    example,
    live,
    running_operator,
    tls_data,
)
from .test_operator import all_children, create, patch_cluster

NOW = datetime.datetime(2026, 12, 1, tzinfo=datetime.UTC)
SPEC = parse_cluster(example())
PARTS = tls_parts(SPEC, "ad-campaign", NS)


def cert(data: dict[str, bytes], part: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(data[f"{part}.crt"])


def dns_names(c: x509.Certificate) -> list[str]:
    san = c.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return san.get_values_for_type(x509.DNSName)


def matches(host: str, names: list[str]) -> bool:
    """RFC 6125 matching as gRPC does it: exact, or a wildcard for the leftmost label."""
    first, _, rest = host.partition(".")
    return host in names or f"*.{rest}" in names and bool(first)


# ---------------------------------------------------------------- pki and render, pure


def test_ensure_keeps_good_material_byte_for_byte() -> None:
    data = pki.ensure({}, "ad-campaign", PARTS, NOW)
    assert sorted(data) == ["ca.crt", "ca.key", "dc1.crt", "dc1.key", "dc2.crt", "dc2.key",
                            "relayer.crt", "relayer.key"]
    later = NOW + datetime.timedelta(days=200)
    assert pki.ensure(data, "ad-campaign", PARTS, later) == data
    assert render(SPEC, "ad-campaign", NS, "u", tls=data) == render(
        SPEC, "ad-campaign", NS, "u", tls=pki.ensure(data, "ad-campaign", PARTS, later))


def test_only_what_changed_is_issued_again() -> None:
    data = pki.ensure({}, "ad-campaign", PARTS, NOW)
    # A new datacenter: its certificate only; the part removed loses its files.
    grown = {**PARTS, "dc3": ["dc3.example"]}
    del grown["dc2"]
    more = pki.ensure(data, "ad-campaign", grown, NOW)
    for f in ("ca.crt", "ca.key", "dc1.crt", "dc1.key", "relayer.crt", "relayer.key"):
        assert more[f] == data[f], f
    assert "dc2.crt" not in more and cert(more, "dc3").subject.rfc4514_string() \
        == "CN=ad-campaign-dc3"
    # Other names (e.g. a new clusterDomain): that part's certificate is issued again.
    renamed = pki.ensure(data, "ad-campaign", {**PARTS, "dc1": ["other.name"]}, NOW)
    assert renamed["dc1.crt"] != data["dc1.crt"] and renamed["dc2.crt"] == data["dc2.crt"]
    # Near expiry (inside RENEW_BEFORE): node certificates renewed, the CA kept.
    late = NOW + pki.NODE_VALIDITY - pki.RENEW_BEFORE + datetime.timedelta(days=1)
    renewed = pki.ensure(data, "ad-campaign", PARTS, late)
    assert renewed["ca.key"] == data["ca.key"]
    assert all(renewed[f"{p}.crt"] != data[f"{p}.crt"] for p in PARTS)
    # A CA whose key does not match (a hand-edited Secret): a new CA, everything new.
    broken = {**data, "ca.key": pki.new_ca("x", NOW)[1]}
    fresh = pki.ensure(broken, "ad-campaign", PARTS, NOW)
    assert fresh["ca.crt"] != data["ca.crt"]
    for part in PARTS:
        cert(fresh, part).verify_directly_issued_by(
            x509.load_pem_x509_certificate(fresh["ca.crt"]))


def test_certificates_carry_what_the_relayer_dials_and_both_usages() -> None:
    data = pki.ensure({}, "ad-campaign", PARTS, NOW)
    cm = render(SPEC, "ad-campaign", NS, tls=data)[0]
    relayer = tomllib.loads(cm["data"]["relayer.toml"])
    for dc, entry in relayer["relayer_config"].items():
        host = entry["upstream_address"].rsplit(":", 1)[0]
        assert matches(host, dns_names(cert(data, dc))), (host, dns_names(cert(data, dc)))
        assert entry["allow_insecure"] is False
        assert (entry["cert_path"], entry["key_path"], entry["ca_path"]) == (
            f"{TLS_DIR}/tls.crt", f"{TLS_DIR}/tls.key", f"{TLS_DIR}/ca.crt")
    for part in PARTS:
        c = cert(data, part)
        usage = c.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert set(usage) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
        assert f"ad-campaign-{part}.{NS}.svc" in dns_names(c)
        node = tomllib.loads(cm["data"][f"{part}.toml"])["grpc_config"]
        assert node["allow_insecure"] is False and node["ca_path"] == f"{TLS_DIR}/ca.crt"
    # A second relayer replica is dialled by its own pod name: the wildcard covers it.
    assert matches(f"ad-campaign-relayer-1.ad-campaign-relayer-headless.{NS}.svc.cluster.local",
                   tls_dns_names(SPEC, "ad-campaign", NS, "relayer"))


def test_pods_mount_only_their_own_key_and_never_the_ca_key() -> None:
    data = pki.ensure({}, "ad-campaign", PARTS, NOW)
    objects = render(SPEC, "ad-campaign", NS, "uid-1", tls=data)
    (secret,) = [o for o in objects if o["kind"] == "Secret"]
    assert secret["metadata"]["name"] == "ad-campaign-tls"
    assert secret["metadata"]["ownerReferences"][0]["uid"] == "uid-1"
    assert objects.index(secret) == 1  # before the StatefulSets that mount it
    kubernetes_validate.validate(secret, "1.30", strict=True)
    for sts in (o for o in objects if o["kind"] == "StatefulSet"):
        part = sts["metadata"]["labels"]["unisondb.io/part"]
        pod = sts["spec"]["template"]["spec"]
        (volume,) = [v for v in pod["volumes"] if v["name"] == "tls"]
        assert volume["secret"]["secretName"] == "ad-campaign-tls"
        assert {i["key"]: i["path"] for i in volume["secret"]["items"]} == {
            "ca.crt": "ca.crt", f"{part}.crt": "tls.crt", f"{part}.key": "tls.key"}
        mounts = pod["containers"][0]["volumeMounts"]
        assert {"name": "tls", "mountPath": TLS_DIR, "readOnly": True} in mounts
        assert sts["spec"]["template"]["metadata"]["annotations"][TLS_HASH_ANNOTATION]
        kubernetes_validate.validate(sts, "1.30", strict=True)


def test_tls_disabled_renders_plaintext_and_no_secret() -> None:
    doc = example()
    doc["spec"]["tls"] = {"enabled": False}
    spec = parse_cluster(doc)
    assert tls_parts(spec, "ad-campaign", NS) == {}
    objects = render(spec, "ad-campaign", NS, tls=None)
    assert "Secret" not in [o["kind"] for o in objects]
    relayer = tomllib.loads(objects[0]["data"]["relayer.toml"])
    assert relayer["grpc_config"]["allow_insecure"] is True
    assert all(e["allow_insecure"] for e in relayer["relayer_config"].values())
    for sts in (o for o in objects if o["kind"] == "StatefulSet"):
        assert "tls" not in [v["name"] for v in sts["spec"]["template"]["spec"]["volumes"]]


def test_unison_render_without_keys_mounts_the_secret_but_prints_no_key() -> None:
    objects = render(SPEC, "ad-campaign", NS)
    assert "Secret" not in [o["kind"] for o in objects]
    sts = next(o for o in objects if o["kind"] == "StatefulSet")
    assert "tls" in [v["name"] for v in sts["spec"]["template"]["spec"]["volumes"]]


# ---------------------------------------------------------------- the certificates carry gRPC


@pytest.fixture
async def primary(tmp_path: Path) -> AsyncIterator[NamespaceStore]:
    store = NamespaceStore("ns1", tmp_path / "primary").open()
    store.start()
    await store.write([Mutation(Op.PUT, f"k{i}".encode(), b"v") for i in range(50)])
    yield store
    await store.close()


def write_files(d: Path, data: dict[str, bytes], part: str) -> dict[str, str]:
    """A part's files as its pod sees them in TLS_DIR."""
    d.mkdir()
    for name, key in (("ca.crt", "ca.crt"), ("tls.crt", f"{part}.crt"), ("tls.key", f"{part}.key")):
        (d / name).write_bytes(data[key])
    return {"ca_path": str(d / "ca.crt"), "cert_path": str(d / "tls.crt"),
            "key_path": str(d / "tls.key")}


async def test_operator_certificates_carry_replication_and_refuse_strangers(
        primary: NamespaceStore, tmp_path: Path) -> None:
    parts = {"dc1": ["localhost"], "relayer": ["localhost"]}
    data = pki.ensure({}, "c", parts, datetime.datetime.now(datetime.UTC))
    foreign = pki.ensure({}, "other", parts, datetime.datetime.now(datetime.UTC))
    srv = ReplicationServer({"ns1": primary}, GrpcConfig(
        port=0, listen_ip="127.0.0.1", allow_insecure=False,
        **write_files(tmp_path / "dc1", data, "dc1")))
    await srv.start()
    own = write_files(tmp_path / "relayer", data, "relayer")
    stranger = write_files(tmp_path / "stranger", foreign, "relayer")
    runs: list[tuple[NamespaceStore, Follower]] = []

    def follow(name: str, **tls: Any) -> tuple[NamespaceStore, Follower]:
        store = NamespaceStore("ns1", tmp_path / name).open()
        store.start()
        f = Follower(store, UpstreamConfig("dc1", ["ns1"], f"localhost:{srv.port}",
                                           allow_insecure=False, **tls),
                     backoff_base_s=0.02, backoff_cap_s=0.2)
        f.start()
        runs.append((store, f))
        return store, f

    async def until(cond: Any) -> None:
        async with asyncio.timeout(30):
            while not cond():  # noqa: ASYNC110 - what a user would observe
                await asyncio.sleep(0.02)

    try:
        replica, _ = follow("replica", **own)
        # No client certificate; one from another cluster's CA (trusting ours).
        anonymous, a = follow("anonymous", ca_path=own["ca_path"])
        alien, b = follow("alien", **{**stranger, "ca_path": own["ca_path"]})
        await until(lambda: replica.last_lsn == 50)
        await until(lambda: a.status()["reconnects"] >= 2 and b.status()["reconnects"] >= 2)
        assert anonymous.last_lsn == alien.last_lsn == 0
        assert not a.status()["connected"] and not b.status()["connected"]
    finally:
        for store, f in runs:
            await f.stop()
            await store.close()
        await srv.stop()


# ---------------------------------------------------------------- the operator, emulated


def secret_reads(k8s: Any) -> int:
    return sum(1 for r in list(k8s) if r.method == "GET" and r.resource is not None
               and r.resource.plural == "secrets")


def secret_writes(k8s: Any) -> list[Any]:
    return [r for r in list(k8s) if r.method in ("POST", "PATCH", "PUT", "DELETE")
            and r.resource is not None and r.resource.plural == "secrets"]


def tls_hash(k8s: Any, part: str) -> str:
    sts = live(k8s, "StatefulSet", f"ad-campaign-{part}")
    return sts["spec"]["template"]["metadata"]["annotations"][TLS_HASH_ANNOTATION]


@pytest.mark.kmock(cls=ApiServerEmulator)
async def test_reconciles_keep_the_secret_and_a_new_datacenter_rolls_nobody_else(
        k8s: Any) -> None:
    async with running_operator(k8s, resync_interval=0.3):
        await create(k8s, example())
        await eventually(lambda: all_children(k8s), "every child object")
        first = tls_data(k8s)
        hashes = {p: tls_hash(k8s, p) for p in ("dc1", "dc2", "relayer")}
        writes, reads = len(secret_writes(k8s)), secret_reads(k8s)
        # Several resyncs read the Secret and write nothing.
        await eventually(lambda: secret_reads(k8s) >= reads + 3, "three resyncs", within=30)
        assert len(secret_writes(k8s)) == writes and tls_data(k8s) == first

        datacenters = example()["spec"]["datacenters"] + [
            {"name": "dc3", "namespaces": ["ad-campaign-dc3"]}]
        await patch_cluster(k8s, {"spec": {"datacenters": datacenters}})
        await eventually(lambda: "dc3.crt" in tls_data(k8s), "dc3's certificate")
        await eventually(lambda: tls_hash(k8s, "dc3"), "dc3's StatefulSet")
        now = tls_data(k8s)
        assert {k: v for k, v in now.items() if not k.startswith("dc3.")} == first
        assert {p: tls_hash(k8s, p) for p in ("dc1", "dc2", "relayer")} == hashes
    owner = live(k8s, "Secret", "ad-campaign-tls")["metadata"]["ownerReferences"][0]
    assert owner["uid"] == "uid-ad-campaign" and owner["controller"]


@pytest.mark.kmock(cls=ApiServerEmulator)
async def test_a_deleted_secret_is_made_again_and_rolls_every_part(k8s: Any) -> None:
    async with running_operator(k8s, resync_interval=0.3):
        await create(k8s, example())
        await eventually(lambda: all_children(k8s), "every child object")
        before = tls_data(k8s)
        dc1 = tls_hash(k8s, "dc1")
        resp = await k8s.delete(f"/api/v1/namespaces/{NS}/secrets/ad-campaign-tls")
        assert resp.status == 200, await resp.text()
        await eventually(lambda: tls_data(k8s)["ca.crt"] != before["ca.crt"], "a new CA")
        await eventually(lambda: tls_hash(k8s, "dc1") != dc1, "dc1 rolled to the new CA")


@pytest.mark.kmock(cls=ApiServerEmulator)
async def test_opting_out_applies_no_secret(k8s: Any) -> None:
    doc = example()
    doc["spec"]["tls"] = {"enabled": False}
    async with running_operator(k8s):
        await create(k8s, doc)
        await eventually(lambda: live(k8s, "StatefulSet", "ad-campaign-relayer"), "children")
        await eventually(lambda: live(k8s, "Deployment", "ad-campaign-client"), "the client")
    assert secret_writes(k8s) == []
    toml = live(k8s, "ConfigMap", "ad-campaign-config")["data"]["dc1.toml"]
    assert "allow_insecure = true" in toml

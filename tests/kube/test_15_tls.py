"""Replication is mutual TLS by default on a real cluster: the operator's CA and node
certificates in the owned Secret <name>-tls, the nodes' TOML asking for client
certificates, a write on dc1 reaching the relayer over that, and a pod that dials dc1's
gRPC port by the name the relayer uses: with the relayer's certificate it streams, with
the CA only (no client certificate) or in plaintext it is refused.

The test cluster's CNI does not enforce NetworkPolicy, so the probe pod reaches the gRPC
port and what refuses it is TLS itself.
"""

from __future__ import annotations

import base64
import json
import tomllib
from typing import Any

import pytest

from tests.container.harness import kv_path
from tests.kube.cluster import Cluster
from tests.kube.e2e import (
    Operator,
    apply,
    children,
    example,
    http_call,
    service_ip,
    wait_ready,
    wait_until,
)

NAME, NS = "ad-campaign", "default"
PROBE = "tls-probe"
# Runs in the probe pod (the Unison image): one Stream call per way of connecting.
PROBE_SCRIPT = """
import json, os, grpc
from unison.replication import replication_pb2 as pb, replication_pb2_grpc as pbg
target, namespace = os.environ["TARGET"], os.environ["NAMESPACE"]
read = lambda name: open("/tls/" + name, "rb").read()
def attempt(creds):
    ch = grpc.secure_channel(target, creds) if creds else grpc.insecure_channel(target)
    try:
        call = pbg.ReplicationStub(ch).Stream(
            pb.StreamRequest(namespace=namespace, from_lsn=1, follower="tls-probe"), timeout=30)
        next(call)
        return "streamed"
    except grpc.RpcError as e:
        return e.code().name + ": " + (e.details() or "")
    finally:
        ch.close()
print(json.dumps({
    "client_certificate": attempt(grpc.ssl_channel_credentials(
        read("ca.crt"), read("tls.key"), read("tls.crt"))),
    "no_client_certificate": attempt(grpc.ssl_channel_credentials(read("ca.crt"))),
    "plaintext": attempt(None),
}))
"""


@pytest.fixture(scope="module")
def seed(cluster: Cluster, operator: Operator) -> Cluster:
    """The README's cluster (test_10 made it; applying the same manifest changes nothing)."""
    apply(cluster, example(NAME), NS)
    wait_ready(cluster, NAME, NS)
    return cluster


def toml(cluster: Cluster, part: str) -> dict[str, Any]:
    cm = cluster.get_json("-n", NS, "configmap", f"{NAME}-config")
    return tomllib.loads(cm["data"][f"{part}.toml"])


def http(cluster: Cluster, part: str, method: str, path: str, body: Any = None
         ) -> tuple[int, Any]:
    port = toml(cluster, part)["http_port"]
    return http_call(cluster, service_ip(cluster, f"{NAME}-{part}", NS), port, method, path, body)


def test_replication_is_mutual_tls_with_the_operators_certificates(seed: Cluster) -> None:
    cluster = seed
    (secret,) = children(cluster, "secrets", NAME, NS)
    assert secret["metadata"]["name"] == f"{NAME}-tls"
    (owner,) = secret["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"]) == ("UnisonCluster", NAME)
    assert sorted(secret["data"]) == ["ca.crt", "ca.key", "dc1.crt", "dc1.key", "dc2.crt",
                                      "dc2.key", "relayer.crt", "relayer.key"]
    for part in ("dc1", "dc2", "relayer"):
        grpc = toml(cluster, part)["grpc_config"]
        assert grpc["allow_insecure"] is False and grpc["ca_path"], (part, grpc)
    for entry in toml(cluster, "relayer")["relayer_config"].values():
        assert entry["allow_insecure"] is False and entry["cert_path"], entry
    (dc1,) = [p for p in children(cluster, "pods", NAME, NS)
              if p["metadata"]["labels"]["unisondb.io/part"] == "dc1"]
    logs = cluster.kubectl("-n", NS, "logs", dc1["metadata"]["name"]).stdout
    assert "TLS, client certificates required" in logs, logs[-2000:]

    # A write on dc1 reaches the relayer, which follows dc1 over that mutual TLS.
    value = base64.b64encode(json.dumps({"via": "mtls"}).encode()).decode()
    path = kv_path(f"{NAME}-dc1", "tls:check")
    answered = wait_until("dc1 answering a PUT", lambda: (
        r if (r := http(cluster, "dc1", "PUT", path, {"value": value}))[0] else None),
        60, cluster.diagnose)
    assert answered == (200, {"success": True}), answered
    got = wait_until("the write on the relayer", lambda: (
        r if (r := http(cluster, "relayer", "GET", path))[0] == 200 and r[1].get("found")
        else None), 60, cluster.diagnose)
    assert got[1]["value"] == value


def test_a_pod_without_a_client_certificate_cannot_open_the_stream(seed: Cluster) -> None:
    cluster = seed
    relayer = toml(cluster, "relayer")
    target = relayer["relayer_config"]["dc1"]["upstream_address"]
    items = [{"key": "ca.crt", "path": "ca.crt"}, {"key": "relayer.crt", "path": "tls.crt"},
             {"key": "relayer.key", "path": "tls.key"}]
    pod = {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": PROBE, "namespace": NS},
        "spec": {
            "restartPolicy": "Never",
            "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "fsGroup": 10001},
            "containers": [{
                "name": "probe", "image": "unison:0.1.0", "imagePullPolicy": "IfNotPresent",
                "command": ["python3", "-c", PROBE_SCRIPT],
                "env": [{"name": "TARGET", "value": target},
                        {"name": "NAMESPACE", "value": f"{NAME}-dc1"}],
                "volumeMounts": [{"name": "tls", "mountPath": "/tls", "readOnly": True}]}],
            "volumes": [{"name": "tls", "secret": {"secretName": f"{NAME}-tls", "items": items,
                                                   "defaultMode": 0o440}}]}}
    apply(cluster, pod, NS)
    try:
        r = cluster.kubectl("-n", NS, "wait", f"pod/{PROBE}",
                            "--for=jsonpath={.status.phase}=Succeeded", "--timeout=180s",
                            timeout=200, check=False)
        logs = cluster.kubectl("-n", NS, "logs", PROBE, check=False).stdout
        assert r.returncode == 0, f"{r.stderr}\n{logs}\n{cluster.diagnose()}"
        result = json.loads(logs.strip().splitlines()[-1])
        # The same pod, the same address: only the client certificate differs.
        assert result["client_certificate"] == "streamed", result
        assert result["no_client_certificate"].startswith("UNAVAILABLE"), result
        assert result["plaintext"].startswith("UNAVAILABLE"), result
    finally:
        cluster.kubectl("-n", NS, "delete", "pod", PROBE, "--wait=false", check=False)

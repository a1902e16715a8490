"""Changing a running UnisonCluster on a real cluster: add a datacenter, follow it, scale
the relayer, grow a datacenter's volume. Each change reaches Ready with the right pods,
no part's ports are renumbered, data survives, and status never says Ready while a
rollout is still going on.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from tests.container.harness import kv_path
from tests.kube.cluster import Cluster
from tests.kube.e2e import (
    Operator,
    apply,
    children,
    get_uc,
    http_call,
    service_ip,
    status_watched,
    wait_ready,
    wait_until,
)

NS = "updates"
NAME = "shop"


def spec(datacenters: list[str], follow: list[str], relayer_replicas: int = 1,
         dc1_size: str = "1Gi") -> dict[str, Any]:
    return {
        "apiVersion": "unisondb.io/v1alpha1", "kind": "UnisonCluster",
        "metadata": {"name": NAME, "namespace": NS},
        "spec": {
            "image": "unison:0.1.0",
            "datacenters": [{"name": dc, "namespaces": [f"shop-{dc}"],
                             "storage": {"size": dc1_size if dc == "dc1" else "1Gi"}}
                            for dc in datacenters],
            "relayer": {"replicas": relayer_replicas, "follow": follow},
            "client": {"enabled": True},
        },
    }


def ports(cluster: Cluster, service: str) -> dict[str, int]:
    svc = cluster.get_json("-n", NS, "service", service)
    return {p["name"]: p["port"] for p in svc["spec"]["ports"]}


def pod_uids(cluster: Cluster, part: str) -> set[str]:
    return {p["metadata"]["uid"] for p in children(cluster, "pods", NAME, NS)
            if p["metadata"]["labels"]["unisondb.io/part"] == part}


def put(cluster: Cluster, dc: str, key: str, value: dict[str, Any]) -> None:
    """A write through the datacenter's Service. Until kube-proxy has programmed a new
    Service's endpoints nothing answers (status 0): retried then, as a client would."""
    ip, port = service_ip(cluster, f"{NAME}-{dc}", NS), ports(cluster, f"{NAME}-{dc}")["http"]
    body = {"value": base64.b64encode(json.dumps(value).encode()).decode()}
    answered = wait_until(f"{NAME}-{dc}'s Service answering a PUT", lambda: (
        r if (r := http_call(cluster, ip, port, "PUT", kv_path(f"shop-{dc}", key), body))[0]
        else None), 60, cluster.diagnose)
    assert answered == (200, {"success": True}), (dc, key, answered)


def read(cluster: Cluster, service: str, namespace: str, key: str) -> Any:
    ip, port = service_ip(cluster, f"{NAME}-{service}", NS), ports(
        cluster, f"{NAME}-{service}")["http"]
    status, answer = http_call(cluster, ip, port, "GET", kv_path(namespace, key))
    if status != 200 or not answer.get("found"):
        return None
    return json.loads(base64.b64decode(answer["value"]))


@pytest.fixture(scope="module")
def shop(cluster: Cluster, operator: Operator) -> Cluster:
    cluster.kubectl("create", "namespace", NS)
    apply(cluster, spec(["dc1", "dc2"], ["dc1", "dc2"]), NS)
    wait_ready(cluster, NAME, NS)
    return cluster


def test_add_a_datacenter_keeps_every_port_and_pod(shop: Cluster) -> None:
    cluster = shop
    put(cluster, "dc1", "counter:before", {"replica": "shop-dc1", "count": 7})
    relayer_ports = ports(cluster, f"{NAME}-relayer")
    dc_ports = {dc: ports(cluster, f"{NAME}-{dc}") for dc in ("dc1", "dc2")}
    relayer_pods, client_pods = pod_uids(cluster, "relayer"), pod_uids(cluster, "client")
    assert relayer_ports["http"] == 8003, relayer_ports  # the seed's numbering to start with

    with status_watched(cluster, NAME, NS):
        apply(cluster, spec(["dc1", "dc2", "dc3"], ["dc1", "dc2"]), NS)
        wait_ready(cluster, NAME, NS)

    assert pod_uids(cluster, "dc3"), "no pod for the new datacenter"
    assert ports(cluster, f"{NAME}-relayer") == relayer_ports
    assert {dc: ports(cluster, f"{NAME}-{dc}") for dc in ("dc1", "dc2")} == dc_ports
    dc3 = ports(cluster, f"{NAME}-dc3")
    taken = {p for ps in (relayer_ports, *dc_ports.values()) for p in ps.values()}
    assert not taken & set(dc3.values()), (dc3, taken)
    # Nothing the relayer or the client see changed: they were not restarted.
    assert pod_uids(cluster, "relayer") == relayer_pods
    assert pod_uids(cluster, "client") == client_pods
    put(cluster, "dc3", "counter:dc3", {"replica": "shop-dc3", "count": 1})


def test_follow_the_new_datacenter(shop: Cluster) -> None:
    cluster = shop
    before = ports(cluster, f"{NAME}-relayer")
    with status_watched(cluster, NAME, NS):
        apply(cluster, spec(["dc1", "dc2", "dc3"], ["dc1", "dc2", "dc3"]), NS)
        wait_ready(cluster, NAME, NS)
    after = ports(cluster, f"{NAME}-relayer")
    # The relayer keeps its HTTP, gRPC and existing notifier ports; dc3's is new.
    assert {k: v for k, v in after.items() if k in before} == before, (before, after)
    assert len(after) == len(before) + 1, after
    put(cluster, "dc3", "counter:followed", {"replica": "shop-dc3", "count": 3})
    wait_until("dc3's write on the relayer", lambda: read(
        cluster, "relayer", "shop-dc3", "counter:followed"), 60)
    # And in the client's converged state.
    ip = service_ip(cluster, f"{NAME}-client", NS)
    wait_until("dc3's counter in the client's /state", lambda: (http_call(
        cluster, ip, 8090, "GET", "/state")[1] or {}).get("counters", {}).get(
        "counter:followed"), 60)


def test_scale_the_relayer(shop: Cluster) -> None:
    cluster = shop
    with status_watched(cluster, NAME, NS):
        apply(cluster, spec(["dc1", "dc2", "dc3"], ["dc1", "dc2", "dc3"], relayer_replicas=2),
              NS)
        uc = wait_ready(cluster, NAME, NS)
    relayers = [p for p in children(cluster, "pods", NAME, NS)
                if p["metadata"]["labels"]["unisondb.io/part"] == "relayer"]
    assert len(relayers) == 2, [p["metadata"]["name"] for p in relayers]
    assert uc["status"]["parts"]["relayer"] == {"ready": 2, "desired": 2}, uc["status"]


def test_grow_a_datacenter_volume(shop: Cluster) -> None:
    cluster = shop
    with status_watched(cluster, NAME, NS):
        apply(cluster, spec(["dc1", "dc2", "dc3"], ["dc1", "dc2", "dc3"], relayer_replicas=2,
                            dc1_size="2Gi"), NS)
        wait_ready(cluster, NAME, NS)
    sts = cluster.get_json("-n", NS, "statefulset", f"{NAME}-dc1")
    template = sts["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"]
    assert template["storage"] == "2Gi", template

    def pvc_grown() -> bool:
        pvc = cluster.get_json("-n", NS, "pvc", f"data-{NAME}-dc1-0")
        return pvc["status"].get("capacity", {}).get("storage") == "2Gi"

    wait_until("dc1's volume at 2Gi", pvc_grown, 60)
    # The same volume, so the same data.
    kept = {"replica": "shop-dc1", "count": 7}
    wait_until("dc1's data through its Service after the restart", lambda: read(
        cluster, "dc1", "shop-dc1", "counter:before") == kept, 60, cluster.diagnose)
    uc = get_uc(cluster, NAME, NS)
    assert all(c["status"] == "True" for c in uc["status"]["conditions"]), uc["status"]

"""Faults on a real cluster: a datacenter pod deleted in the middle of writes comes back on
its volume with every acknowledged write, which also reaches the relayer; an operator
killed in the middle of a reconcile finishes it after its restart.
"""

from __future__ import annotations

import base64
import json
import threading
import time

import pytest

from tests.container.harness import kv_path
from tests.kube.cluster import Cluster
from tests.kube.e2e import (
    Operator,
    apply,
    children,
    example,
    http_call,
    ready_cluster,
    service_ip,
    status_watched,
    wait_ready,
    wait_until,
)

NS = "faults"
NAME = "faulty"
DC1_NS = "ad-campaign-dc1"


@pytest.fixture(scope="module")
def faulty(cluster: Cluster, operator: Operator) -> Cluster:
    return ready_cluster(cluster, NS, NAME, client={"enabled": False})


def test_datacenter_pod_deleted_mid_write(faulty: Cluster) -> None:
    cluster = faulty
    dc1 = service_ip(cluster, f"{NAME}-dc1", NS)
    acked: list[str] = []
    failed = [0]
    stop = threading.Event()

    def writer() -> None:
        i = 0
        while not stop.is_set():
            key = f"k{i:06d}"
            value = base64.b64encode(json.dumps({"i": i}).encode()).decode()
            status, body = http_call(cluster, dc1, 8001, "PUT", kv_path(DC1_NS, key),
                                     {"value": value}, timeout=3)
            if (status, body) == (200, {"success": True}):
                acked.append(key)
                i += 1
            else:
                failed[0] += 1
                time.sleep(0.1)

    t = threading.Thread(target=writer, daemon=True)
    t.start()
    try:
        wait_until("writes flowing", lambda: len(acked) >= 50, 60)
        old = {p["metadata"]["uid"] for p in children(cluster, "pods", NAME, NS)
               if p["metadata"]["name"] == f"{NAME}-dc1-0"}
        cluster.kubectl("-n", NS, "delete", "pod", f"{NAME}-dc1-0", "--wait=false")
        wait_until("writes failing while dc1 is away", lambda: failed[0] > 0, 60)
        wait_until("dc1 back (a new pod)", lambda: any(
            p["metadata"]["name"] == f"{NAME}-dc1-0" and p["metadata"]["uid"] not in old
            for p in children(cluster, "pods", NAME, NS)), 120, cluster.diagnose)
        count = len(acked)
        wait_until("writes acknowledged again", lambda: len(acked) >= count + 50, 120,
                   cluster.diagnose)
    finally:
        stop.set()
        t.join(10)
    wait_ready(cluster, NAME, NS)

    # Every acknowledged write is on dc1 and reaches the relayer.
    relayer = service_ip(cluster, f"{NAME}-relayer", NS)
    for host, port, where in ((dc1, 8001, "dc1"), (relayer, 8003, "relayer")):
        missing: list[str] = []

        def complete(h: str = host, p: int = port, out: list[str] = missing) -> bool:
            out[:] = [key for key in acked if not _found(cluster, h, p, key)]
            return not out

        wait_until(f"all {len(acked)} acknowledged writes on {where}", complete, 90,
                   lambda m=missing: f"missing {len(m)}: {m[:10]}")


def _found(cluster: Cluster, host: str, port: int, key: str) -> bool:
    status, body = http_call(cluster, host, port, "GET", kv_path(DC1_NS, key))
    return status == 200 and bool(body.get("found"))


def test_operator_killed_mid_reconcile(faulty: Cluster, operator: Operator) -> None:
    cluster = faulty
    doc = example(NAME, client={"enabled": False})
    doc["spec"]["datacenters"].append({"name": "dc3", "namespaces": ["ad-campaign-dc3"]})
    with status_watched(cluster, NAME, NS):
        apply(cluster, doc, NS)
        operator.restart()
        uc = wait_ready(cluster, NAME, NS)
    sts = sorted(s["metadata"]["name"] for s in children(cluster, "statefulsets", NAME, NS))
    assert sts == [f"{NAME}-dc1", f"{NAME}-dc2", f"{NAME}-dc3", f"{NAME}-relayer"], sts
    assert uc["status"]["parts"]["dc3"] == {"ready": 1, "desired": 1}, uc["status"]

"""Deleting a UnisonCluster on a real cluster: Kubernetes' garbage collector removes every
child through the owner references; the volumes follow `storage.reclaimPolicy` (Retain
keeps the data, Delete removes the claims and, with them, the volumes).
"""

from __future__ import annotations

import pytest

from tests.kube.cluster import Cluster
from tests.kube.e2e import Operator, apply, children, example, wait_ready, wait_until

NS = "deletion"
KINDS = ("statefulsets", "services", "configmaps", "poddisruptionbudgets", "networkpolicies",
         "deployments", "pods", "secrets")


@pytest.fixture(scope="module")
def ns(cluster: Cluster, operator: Operator) -> Cluster:
    cluster.kubectl("create", "namespace", NS)
    return cluster


def claims(cluster: Cluster, name: str) -> list[str]:
    return sorted(c["metadata"]["name"] for c in cluster.get_json("-n", NS, "pvc")["items"]
                  if c["metadata"]["name"].startswith(f"data-{name}-"))


def _delete_and_wait_for_children(cluster: Cluster, name: str) -> None:
    cluster.kubectl("-n", NS, "delete", "unisoncluster", name, "--wait=true", timeout=180)

    def all_gone() -> bool:
        return all(not children(cluster, kind, name, NS) for kind in KINDS)

    wait_until(f"every child of {name} collected", all_gone, 180, cluster.diagnose)


def test_retain_keeps_the_volumes(ns: Cluster) -> None:
    apply(ns, example("kept", client={"enabled": True}), NS)
    wait_ready(ns, "kept", NS)
    before = claims(ns, "kept")
    assert before == ["data-kept-dc1-0", "data-kept-dc2-0", "data-kept-relayer-0"], before
    # The TLS Secret (CA and node keys) is a child too: collected with the others.
    assert [s["metadata"]["name"] for s in children(ns, "secrets", "kept", NS)] == ["kept-tls"]
    _delete_and_wait_for_children(ns, "kept")
    assert claims(ns, "kept") == before
    for c in ns.get_json("-n", NS, "pvc")["items"]:
        if c["metadata"]["name"] in before:
            assert c["status"]["phase"] == "Bound", c["status"]


def test_delete_policy_removes_the_volumes(ns: Cluster) -> None:
    doc = example("wiped", client={"enabled": False})
    for dc in doc["spec"]["datacenters"]:
        dc["storage"]["reclaimPolicy"] = "Delete"
    doc["spec"]["relayer"]["storage"] = {"reclaimPolicy": "Delete"}
    apply(ns, doc, NS)
    wait_ready(ns, "wiped", NS)
    volumes = {c["spec"]["volumeName"] for c in ns.get_json("-n", NS, "pvc")["items"]
               if c["metadata"]["name"].startswith("data-wiped-")}
    assert len(volumes) == 3, volumes
    _delete_and_wait_for_children(ns, "wiped")
    wait_until("the claims deleted", lambda: not claims(ns, "wiped"), 120, ns.diagnose)
    wait_until("their volumes released and deleted", lambda: not volumes & {
        pv["metadata"]["name"] for pv in ns.get_json("pv")["items"]}, 120, ns.diagnose)

"""Drift on a real cluster: what a person (or another controller) changes or deletes in a
UnisonCluster's children is put back within seconds, also when it happened while the
operator was down.
"""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from tests.kube.cluster import Cluster
from tests.kube.e2e import (
    Operator,
    audit_events,
    children,
    get_uc,
    ready_cluster,
    status_watched,
    wait_ready,
    wait_until,
)

NS = "drift"
NAME = "drifty"
REPAIR_SECONDS = 30  # "within seconds", with room for a loaded 2-core machine
IDLE_SECONDS = 65  # longer than the operator's periodic re-check (60 s)
WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}


@pytest.fixture(scope="module")
def drifty(cluster: Cluster, operator: Operator) -> Cluster:
    return ready_cluster(cluster, NS, NAME, client={"enabled": False})


def _get(cluster: Cluster, kind: str, name: str) -> dict[str, Any] | None:
    r = cluster.kubectl("-n", NS, "get", kind, name, "-o", "json", check=False)
    return json.loads(r.stdout) if r.returncode == 0 else None


def _recreated(cluster: Cluster, kind: str, name: str, old_uid: str) -> bool:
    obj = _get(cluster, kind, name)
    return obj is not None and obj["metadata"]["uid"] != old_uid


@pytest.mark.parametrize("kind,name", [
    ("service", f"{NAME}-dc1"),
    ("service", f"{NAME}-relayer-headless"),
    ("configmap", f"{NAME}-config"),
    ("poddisruptionbudget", f"{NAME}-dc2"),
    # Repaired like the others; the test cluster's CNI (bridge) does not enforce
    # NetworkPolicy, so only the object is checked here, not the traffic it blocks.
    ("networkpolicy", f"{NAME}-dc1"),
    ("statefulset", f"{NAME}-dc2"),
])
def test_deleted_child_is_recreated(drifty: Cluster, kind: str, name: str) -> None:
    cluster = drifty
    old = _get(cluster, kind, name)
    assert old is not None, f"{kind}/{name} was never made"
    cluster.kubectl("-n", NS, "delete", kind, name, "--wait=false")
    wait_until(f"{kind}/{name} recreated", lambda: _recreated(
        cluster, kind, name, old["metadata"]["uid"]), REPAIR_SECONDS, cluster.diagnose)
    wait_ready(cluster, NAME, NS)


def test_edited_statefulset_is_put_back(drifty: Cluster) -> None:
    """`kubectl edit`: scale a datacenter to 0 and change its image. Status must not say
    Ready while the edit and its repair roll through."""
    cluster = drifty
    sts = f"{NAME}-dc1"

    def restored() -> bool:
        obj = _get(cluster, "statefulset", sts) or {}
        spec = obj.get("spec", {})
        images = [c["image"] for c in spec.get("template", {}).get("spec", {}).get(
            "containers", [])]
        return spec.get("replicas") == 1 and images == ["unison:0.1.0"]

    with status_watched(cluster, NAME, NS):
        cluster.kubectl("-n", NS, "patch", "statefulset", sts, "--type", "merge", "-p",
                        json.dumps({"spec": {"replicas": 0}}))
        cluster.kubectl("-n", NS, "set", "image", f"statefulset/{sts}", "node=busybox:edited")
        wait_until(f"statefulset/{sts} back as rendered", restored, REPAIR_SECONDS,
                   cluster.diagnose)
        wait_ready(cluster, NAME, NS)


def test_drift_while_the_operator_is_down(drifty: Cluster, operator: Operator) -> None:
    """Changes made while no operator runs are repaired when it comes back."""
    cluster = drifty
    deploy = f"deployment/{operator.release}"
    svc = _get(cluster, "service", f"{NAME}-dc2")
    assert svc is not None
    cluster.kubectl("-n", operator.namespace, "scale", deploy, "--replicas=0")
    wait_until("operator stopped", lambda: not operator.pods(), 60)
    try:
        cluster.kubectl("-n", NS, "delete", "service", f"{NAME}-dc2")
        cluster.kubectl("-n", NS, "patch", "statefulset", f"{NAME}-relayer", "--type",
                        "merge", "-p", json.dumps({"spec": {"replicas": 3}}))
    finally:
        cluster.kubectl("-n", operator.namespace, "scale", deploy, "--replicas=1")
    operator.wait_available()
    wait_until("service recreated after the restart", lambda: _recreated(
        cluster, "service", f"{NAME}-dc2", svc["metadata"]["uid"]), REPAIR_SECONDS,
        cluster.diagnose)
    wait_until("relayer scaled back to 1", lambda: (_get(
        cluster, "statefulset", f"{NAME}-relayer") or {}).get("spec", {}).get("replicas") == 1,
        REPAIR_SECONDS, cluster.diagnose)
    wait_ready(cluster, NAME, NS)


def test_idle_cluster_is_left_alone(drifty: Cluster, operator: Operator) -> None:
    """Repairing drift must not become a write loop: with nothing changing, the operator
    writes nothing in the namespace (the API server's audit log is the judge) for longer
    than its periodic re-check."""
    cluster = drifty
    wait_ready(cluster, NAME, NS)
    _settle(cluster)

    def writes() -> list[str]:
        return [f"{e['verb']} {e['requestURI']}"
                for e in audit_events(cluster, operator.service_account)
                if e["verb"] in WRITE_VERBS and e.get("objectRef", {}).get("namespace") == NS]

    before = len(writes())
    time.sleep(IDLE_SECONDS)
    assert writes()[before:] == []


def _settle(cluster: Cluster, quiet: float = 10) -> None:
    """Until the earlier tests' pods are gone and the UnisonCluster has not changed for
    `quiet` seconds: their status updates are the world changing, not a write loop."""
    def state() -> tuple[str, bool]:
        uc = get_uc(cluster, NAME, NS)
        pods = children(cluster, "pods", NAME, NS)
        return uc["metadata"]["resourceVersion"], any(
            p["metadata"].get("deletionTimestamp") for p in pods)

    since, last = time.monotonic(), state()
    deadline = since + 120
    while time.monotonic() - since < quiet:
        assert time.monotonic() < deadline, f"{NAME} did not settle: {last}"
        time.sleep(1)
        now = state()
        if now != last or now[1]:
            since, last = time.monotonic(), now

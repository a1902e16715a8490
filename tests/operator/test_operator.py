"""The operator under kopf's real runner against kmock's Kubernetes emulator."""

from __future__ import annotations

from typing import Any

import pytest
from unison.topology.spec import parse_cluster
from unison_operator.render import allocation_from_status, render

from .conftest import (
    NS,
    UC_PATH,
    ApiServerEmulator,
    as_sent,
    eventually,
    example,
    live,
    running_operator,
    tls_data,
    writes,
)

pytestmark = pytest.mark.kmock(cls=ApiServerEmulator)

EXPECTED = [
    ("ConfigMap", "ad-campaign-config"), ("Secret", "ad-campaign-tls"),
    ("Service", "ad-campaign-dc1-headless"), ("Service", "ad-campaign-dc1"),
    ("NetworkPolicy", "ad-campaign-dc1"),
    ("StatefulSet", "ad-campaign-dc1"), ("PodDisruptionBudget", "ad-campaign-dc1"),
    ("Service", "ad-campaign-dc2-headless"), ("Service", "ad-campaign-dc2"),
    ("NetworkPolicy", "ad-campaign-dc2"),
    ("StatefulSet", "ad-campaign-dc2"), ("PodDisruptionBudget", "ad-campaign-dc2"),
    ("Service", "ad-campaign-relayer-headless"), ("Service", "ad-campaign-relayer"),
    ("NetworkPolicy", "ad-campaign-relayer"),
    ("StatefulSet", "ad-campaign-relayer"), ("PodDisruptionBudget", "ad-campaign-relayer"),
    ("Service", "ad-campaign-client"), ("Deployment", "ad-campaign-client"),
]


def all_children(k8s: Any) -> bool:
    return all(live(k8s, kind, name) for kind, name in EXPECTED)


async def create(k8s: Any, doc: dict[str, Any]) -> None:
    resp = await k8s.post(UC_PATH, json=doc)
    assert resp.status == 201 or resp.status == 200, await resp.text()


def gone(k8s: Any, kind: str, name: str) -> bool:
    try:
        live(k8s, kind, name)
    except KeyError:
        return True
    return False


async def test_create_makes_every_child_owned_by_the_cluster(k8s: Any) -> None:
    async with running_operator(k8s):
        await create(k8s, example())
        await eventually(lambda: all_children(k8s), "every child object")
        await eventually(lambda: handled(k8s, "ad-campaign-dc1"), "the creation handled")
        # No finalizer: deleting the cluster is immediate and the garbage collector
        # removes the children through their owner references.
        assert not live(k8s, "UnisonCluster", "ad-campaign")["metadata"].get("finalizers")
        since = len(list(k8s))
        resp = await k8s.delete(f"{UC_PATH}/ad-campaign")
        assert resp.status == 200
        await eventually(lambda: gone(k8s, "UnisonCluster", "ad-campaign"), "deletion")
        assert writes(k8s, since) == []
    for kind, name in EXPECTED:
        obj = live(k8s, kind, name)
        (owner,) = obj["metadata"]["ownerReferences"]
        assert owner == {"apiVersion": "unisondb.io/v1alpha1", "kind": "UnisonCluster",
                         "name": "ad-campaign", "uid": "uid-ad-campaign", "controller": True,
                         "blockOwnerDeletion": True}
        assert obj["metadata"]["labels"]["app.kubernetes.io/instance"] == "ad-campaign"
    # What was stored is exactly what `unison render` shows (plus owner references).
    rendered = render(parse_cluster(example()), "ad-campaign", NS, "uid-ad-campaign",
                      tls=tls_data(k8s))
    assert [as_sent(live(k8s, o["kind"], o["metadata"]["name"])) for o in rendered] == rendered


def handled(k8s: Any, needle: str) -> bool:
    """kopf recorded a successful handling of a spec/metadata containing `needle`."""
    annotations = live(k8s, "UnisonCluster", "ad-campaign")["metadata"].get("annotations", {})
    return needle in annotations.get("unisondb.io/last-handled-configuration", "")


async def patch_cluster(k8s: Any, patch: dict[str, Any]) -> None:
    resp = await k8s.patch(f"{UC_PATH}/ad-campaign", json=patch)
    assert resp.status == 200, await resp.text()


def sts_storage(k8s: Any, name: str) -> str:
    (claim,) = live(k8s, "StatefulSet", name)["spec"]["volumeClaimTemplates"]
    return claim["spec"]["resources"]["requests"]["storage"]


def add_dc1_claim(k8s: Any) -> None:
    """The PVC the StatefulSet controller would have made for dc1's pod."""
    k8s.objects["v1/persistentvolumeclaims", NS, "data-ad-campaign-dc1-0"] = {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data-ad-campaign-dc1-0", "namespace": NS},
        "spec": {"accessModes": ["ReadWriteOnce"],
                 "resources": {"requests": {"storage": "1Gi"}}}}


async def test_storage_change_and_new_datacenter_update_the_children(k8s: Any) -> None:
    add_dc1_claim(k8s)
    doc = example()
    async with running_operator(k8s):
        await create(k8s, doc)
        await eventually(lambda: all_children(k8s), "every child object")

        datacenters = doc["spec"]["datacenters"]
        datacenters[0]["storage"]["size"] = "2Gi"
        await patch_cluster(k8s, {"spec": {"datacenters": datacenters}})
        await eventually(lambda: sts_storage(k8s, "ad-campaign-dc1") == "2Gi", "dc1 at 2Gi")
        pvc = live(k8s, "PersistentVolumeClaim", "data-ad-campaign-dc1-0")
        assert pvc["spec"]["resources"]["requests"]["storage"] == "2Gi"
        assert sts_storage(k8s, "ad-campaign-dc2") == "1Gi"
        # The immutable claim templates were replaced by orphaning the pods, not deleting them.
        deletes = [r for r in list(k8s) if r.method == "DELETE"]
        assert [(r.name, r.data["propagationPolicy"]) for r in deletes] == [
            ("ad-campaign-dc1", "Orphan")]

        datacenters.append({"name": "dc3", "namespaces": ["ad-campaign-dc3"]})
        await patch_cluster(k8s, {"spec": {"datacenters": datacenters,
                                           "relayer": {"follow": ["dc1", "dc2", "dc3"]}}})
        await eventually(lambda: live(k8s, "StatefulSet", "ad-campaign-dc3"), "dc3 StatefulSet")
        await eventually(lambda: "dc3" in live(k8s, "ConfigMap", "ad-campaign-config")["data"]
                         ["relayer.toml"], "the relayer following dc3")
        await eventually(lambda: handled(k8s, "dc3"), "the update to be handled")

    cluster = live(k8s, "UnisonCluster", "ad-campaign")
    # The relayer keeps the ports it had before dc3 (README: port-forward ... 8003:8003);
    # dc3 gets the next free index; status says who has which.
    ports = cluster["status"]["ports"]
    assert ports["relayer"] == {"index": 3, "http": 8003, "grpc": 4003,
                                "notifierBasePort": 5555,
                                "notifiers": {"ad-campaign-dc1": 5555, "ad-campaign-dc2": 5556,
                                              "ad-campaign-dc3": 5557}}
    assert ports["dc3"] == {"index": 4, "http": 8004, "grpc": 4004}
    expected = render(parse_cluster(cluster), "ad-campaign", NS, "uid-ad-campaign",
                      ports=allocation_from_status(ports), tls=tls_data(k8s))
    for obj in expected:
        assert as_sent(live(k8s, obj["kind"], obj["metadata"]["name"])) == obj
    relayer_ports = {p["name"]: p["port"] for p in
                     live(k8s, "Service", "ad-campaign-relayer")["spec"]["ports"]}
    assert relayer_ports == {"http": 8003, "grpc": 4003, "zmq-0": 5555, "zmq-1": 5556,
                             "zmq-2": 5557}
    dc3_ports = {p["name"]: p["port"] for p in
                 live(k8s, "Service", "ad-campaign-dc3")["spec"]["ports"]}
    assert dc3_ports == {"http": 8004, "grpc": 4004}
    args = live(k8s, "Deployment", "ad-campaign-client")["spec"]["template"]["spec"][
        "containers"][0]["args"]
    assert "ad-campaign-dc3=tcp://ad-campaign-relayer:5557" in args
    assert "http://ad-campaign-relayer:8003" in args


async def test_reconciling_an_unchanged_cluster_writes_nothing(k8s: Any) -> None:
    async with running_operator(k8s):
        await create(k8s, example())
        await eventually(lambda: all_children(k8s) and handled(k8s, "ad-campaign-dc1"),
                         "the creation to be handled")
        since = len(list(k8s))
        # A metadata change makes kopf run the update handler with an unchanged spec.
        await patch_cluster(k8s, {"metadata": {"annotations": {"example.com/touched": "yes"}}})
        await eventually(lambda: handled(k8s, "example.com/touched"), "the update handled")
    # Operator restart: the resume handler reconciles every existing cluster.
    restart = len(list(k8s))
    async with running_operator(k8s):
        await eventually(lambda: any(r.method == "GET" and r.name == "ad-campaign-client"
                                     and r.resource.plural == "deployments"
                                     for r in list(k8s)[restart:]), "a resumed reconcile")
    assert writes(k8s, since) == []


async def set_ready(k8s: Any, kind: str, name: str, ready: int) -> None:
    plural = {"StatefulSet": "statefulsets", "Deployment": "deployments"}[kind]
    # What the controller reports once it has rolled out the current spec.
    status = {"replicas": 1, "readyReplicas": ready, "updatedReplicas": 1,
              "availableReplicas": ready,
              "observedGeneration": live(k8s, kind, name)["metadata"]["generation"]}
    resp = await k8s.patch(f"/apis/apps/v1/namespaces/{NS}/{plural}/{name}/status",
                           json={"status": status})
    assert resp.status == 200, await resp.text()


def condition(status: dict[str, Any], ctype: str) -> dict[str, Any] | None:
    found = [c for c in status.get("conditions") or [] if c["type"] == ctype]
    assert len(found) <= 1, status
    return found[0] if found else None


def cluster_status(k8s: Any) -> dict[str, Any]:
    return live(k8s, "UnisonCluster", "ad-campaign").get("status") or {}


async def test_ready_children_make_the_cluster_ready(k8s: Any) -> None:
    async with running_operator(k8s):
        await create(k8s, example())
        await eventually(lambda: all_children(k8s), "every child object")
        await eventually(lambda: cluster_status(k8s).get("phase") == "Pending", "Pending")
        await eventually(lambda: condition(cluster_status(k8s), "Reconciled"), "Reconciled")
        parts = [("StatefulSet", "ad-campaign-dc1"), ("StatefulSet", "ad-campaign-dc2"),
                 ("StatefulSet", "ad-campaign-relayer"), ("Deployment", "ad-campaign-client")]
        for kind, name in parts:
            await set_ready(k8s, kind, name, 1)
        status = await eventually(
            lambda: (s := cluster_status(k8s)).get("phase") == "Ready" and s, "Ready")
        cond = condition(status, "Ready")
        assert (cond["status"], cond["reason"]) == ("True", "AllPartsReady")
        assert condition(status, "Reconciled")["status"] == "True"
        assert status["ready"] == "4/4"
        assert status["observedGeneration"] == 1
        assert status["parts"]["relayer"] == {"ready": 1, "desired": 1}

        await set_ready(k8s, "StatefulSet", "ad-campaign-dc2", 0)
        status = await eventually(
            lambda: (s := cluster_status(k8s)).get("phase") == "Degraded" and s, "Degraded")
        cond = condition(status, "Ready")
        assert cond["status"] == "False" and "dc2 0/1" in cond["message"]


def warning_events(k8s: Any) -> list[dict[str, Any]]:
    return [r.data for r in list(k8s) if r.method == "POST" and r.resource is not None
            and r.resource.plural == "events" and r.data.get("type") == "Warning"]


async def test_invalid_spec_is_reported_and_touches_no_child(k8s: Any) -> None:
    doc = example()
    # Passes the CRD schema but not the operator: notifier ports would collide with
    # the gRPC ports of the nodes when the same manifest runs locally.
    doc["spec"]["relayer"]["notifierBasePort"] = 4002
    async with running_operator(k8s):
        await create(k8s, doc)
        status = await eventually(
            lambda: (s := cluster_status(k8s)).get("phase") == "Invalid" and s, "Invalid")
        cond = condition(status, "Ready")
        assert (cond["status"], cond["reason"]) == ("False", "InvalidSpec")
        assert condition(status, "Reconciled")["reason"] == "InvalidSpec"
        assert cond["message"].startswith("spec.relayer.notifierBasePort: ")
        events = await eventually(lambda: warning_events(k8s), "a Warning event")
        assert events[0]["reason"] == "InvalidSpec"
        assert events[0]["message"] == cond["message"]
        assert events[0]["involvedObject"]["name"] == "ad-campaign"
        assert writes(k8s) == []

        # Fixing the spec brings the cluster up.
        await patch_cluster(k8s, {"spec": {"relayer": {"notifierBasePort": 5555}}})
        await eventually(lambda: all_children(k8s), "every child object")
        await eventually(lambda: cluster_status(k8s).get("phase") == "Pending", "Pending")
        assert {r.resource.plural for r in writes(k8s)} >= {"configmaps", "statefulsets"}


async def test_a_foreign_object_with_a_child_name_is_not_overwritten(k8s: Any) -> None:
    foreign = {"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": "ad-campaign-config", "namespace": NS},
               "data": {"mine": "keep me"}}
    k8s.objects["v1/configmaps", NS, "ad-campaign-config"] = foreign
    async with running_operator(k8s):
        await create(k8s, example())
        await eventually(lambda: live(k8s, "Deployment", "ad-campaign-client"), "other children")
        status = await eventually(
            lambda: condition(cluster_status(k8s), "Reconciled") and cluster_status(k8s),
            "a Reconciled condition")
        cond = condition(status, "Reconciled")
        assert (cond["status"], cond["reason"]) == ("False", "NameConflict")
        assert cond["message"].startswith("ConfigMap ad-campaign-config already exists and is "
                                          "not managed by this UnisonCluster")
        # The phase says so too: the cluster cannot become Ready while a child is missing.
        assert status["phase"] == "Failed"
        ready = condition(status, "Ready")
        assert (ready["status"], ready["reason"]) == ("False", "ReconcileFailed")
        assert "ad-campaign-config already exists" in ready["message"]
        events = await eventually(lambda: warning_events(k8s), "a Warning event")
        assert events[0]["reason"] == "NameConflict"
        # Once the user removes it, the retry creates the real one.
        assert live(k8s, "ConfigMap", "ad-campaign-config")["data"] == {"mine": "keep me"}
        resp = await k8s.delete(f"/api/v1/namespaces/{NS}/configmaps/ad-campaign-config")
        assert resp.status == 200
        await eventually(lambda: "dc1.toml" in live(k8s, "ConfigMap", "ad-campaign-config")
                         .get("data", {}), "the operator's ConfigMap", within=30)
        await eventually(lambda: condition(cluster_status(k8s), "Reconciled")["status"] == "True",
                         "Reconciled=True")

"""Status rules and single-object apply decisions (no kopf runner needed)."""

from __future__ import annotations

import copy
from typing import Any

import aiohttp
import kopf
import pytest
import yaml
from aiohttp import web
from unison.topology.spec import load_cluster
from unison_operator.handlers import (
    OperatorConfig,
    PartState,
    ResizeFailed,
    _part_state,
    _temporary_on_api_errors,
    apply_object,
    cluster_status,
)
from unison_operator.kube import KubeClient, KubeError
from unison_operator.render import render

from .conftest import NS, ROOT, ApiServerEmulator, live

pytestmark = pytest.mark.kmock(cls=ApiServerEmulator)
SPEC = load_cluster(ROOT / "examples" / "ad-campaign.yaml")


def parts(*ready: int, rolling: bool = False) -> list[PartState]:
    names = ["dc1", "dc2", "relayer", "client"]
    return [PartState(n, 1, r, rolling and r == 0) for n, r in zip(names, ready, strict=True)]


def test_new_cluster_is_pending_then_progressing_then_ready() -> None:
    s = cluster_status(SPEC, parts(0, 0, 0, 0, rolling=True), None, 1)
    assert s["phase"] == "Pending" and s["ready"] == "0/4"
    s = cluster_status(SPEC, parts(1, 0, 0, 0, rolling=True), s, None)
    assert s["phase"] == "Progressing"
    assert s["observedGeneration"] == 1  # kept from the reconcile that set it
    s = cluster_status(SPEC, parts(1, 1, 1, 1), s, None)
    assert s["phase"] == "Ready" and s["ready"] == "4/4"
    (cond,) = s["conditions"]
    assert (cond["type"], cond["status"], cond["reason"]) == ("Ready", "True", "AllPartsReady")


def test_losing_pods_without_a_rollout_is_degraded_and_keeps_transition_time() -> None:
    ready = cluster_status(SPEC, parts(1, 1, 1, 1), None, 3)
    degraded = cluster_status(SPEC, parts(1, 0, 1, 1), ready, None)
    assert degraded["phase"] == "Degraded"
    (cond,) = degraded["conditions"]
    assert cond["status"] == "False" and cond["message"] == "not ready: dc2 0/1"
    # Every pod gone after having been Ready is still Degraded, not Pending.
    assert cluster_status(SPEC, parts(0, 0, 0, 0), degraded, None)["phase"] == "Degraded"
    again = cluster_status(SPEC, parts(1, 0, 1, 1), degraded, None)
    assert again["conditions"][0]["lastTransitionTime"] == cond["lastTransitionTime"]


def test_part_state_reads_statefulset_rollouts() -> None:
    sts: dict[str, Any] = {"metadata": {"generation": 2}, "status": {
        "readyReplicas": 1, "updatedReplicas": 1, "observedGeneration": 2,
        "currentRevision": "a", "updateRevision": "a"}}
    assert _part_state("dc1", sts, 1) == PartState("dc1", 1, 1, False)
    sts["status"]["updateRevision"] = "b"
    assert _part_state("dc1", sts, 1).rolling
    sts["status"].update(updateRevision="a", observedGeneration=1)
    assert _part_state("dc1", sts, 1).rolling
    assert _part_state("dc1", None, 1) == PartState("dc1", 1, 0, True)


async def test_apply_object_skips_unchanged_and_compares_sizes_by_value(k8s: Any) -> None:
    api = KubeClient(server=str(k8s.url).rstrip("/"))
    cfg = OperatorConfig(client_factory=lambda: api)
    try:
        objects = render(SPEC, "ad-campaign", NS, "uid-1")
        sts = next(o for o in objects if o["kind"] == "StatefulSet")
        assert await apply_object(api, copy.deepcopy(sts), {}, cfg) == "Created"
        assert await apply_object(api, copy.deepcopy(sts), {}, cfg) is None

        # The API server shows quantities canonicalized; that is not a storage change.
        stored = k8s.objects["apps/v1/statefulsets", NS, "ad-campaign-dc1"]
        stored.patch({"spec": {"volumeClaimTemplates": [yaml.safe_load(
            yaml.safe_dump(sts["spec"]["volumeClaimTemplates"][0]).replace("1Gi", "1024Mi"))]}})
        changed = copy.deepcopy(sts)
        changed["spec"]["template"]["spec"]["containers"][0]["image"] = "unison:0.2.0"
        changed["metadata"]["annotations"]["unisondb.io/applied-hash"] = "different"
        assert await apply_object(api, changed, {}, cfg) == "Updated"
        assert not [r for r in list(k8s) if r.method == "DELETE"]
        assert live(k8s, "StatefulSet", "ad-campaign-dc1")["spec"]["template"]["spec"][
            "containers"][0]["image"] == "unison:0.2.0"
    finally:
        await api.close()


def test_deployment_mid_rollout_is_not_ready_though_an_old_pod_is() -> None:
    # Seen on a real cluster after adding a datacenter: the one ready pod was the old one,
    # still configured for the previous relayer port.
    dep: dict[str, Any] = {"metadata": {"generation": 3}, "status": {
        "observedGeneration": 3, "replicas": 2, "updatedReplicas": 1, "readyReplicas": 1,
        "availableReplicas": 1, "unavailableReplicas": 1}}
    state = _part_state("client", dep, 1)
    assert state.rolling
    s = cluster_status(SPEC, [PartState("dc1", 1, 1, False), PartState("dc2", 1, 1, False),
                              PartState("relayer", 1, 1, False), state], None, 3)
    assert s["phase"] == "Progressing"
    assert next(c for c in s["conditions"] if c["type"] == "Ready")["status"] == "False"
    # The old pod gone and the new one available: settled.
    dep["status"] = {"observedGeneration": 3, "replicas": 1, "updatedReplicas": 1,
                     "readyReplicas": 1, "availableReplicas": 1}
    assert _part_state("client", dep, 1) == PartState("client", 1, 1, False)


@pytest.mark.parametrize(("change", "why"), [
    ({"observedGeneration": 1}, "the controller has not seen generation 2 yet"),
    ({"observedGeneration": None}, "no status from the controller yet"),
    ({"updatedReplicas": 1}, "one of two pods still runs the old template"),
    ({"replicas": 3}, "an old pod is still around"),
    ({"updateRevision": "rev-b"}, "the StatefulSet is between revisions"),
])
def test_statefulset_rollout_states_are_not_settled(change: dict[str, Any], why: str) -> None:
    settled = {"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2,
               "readyReplicas": 2, "availableReplicas": 2, "currentRevision": "rev-a",
               "updateRevision": "rev-a"}
    sts: dict[str, Any] = {"metadata": {"generation": 2}, "status": settled}
    assert _part_state("relayer", sts, 2) == PartState("relayer", 2, 2, False)
    status = {k: v for k, v in {**settled, **change}.items() if v is not None}
    assert _part_state("relayer", {**sts, "status": status}, 2).rolling, why


def test_ready_counts_only_available_pods() -> None:
    dep = {"metadata": {"generation": 1}, "status": {
        "observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2,
        "availableReplicas": 1}}
    assert _part_state("client", dep, 2).ready == 1


async def test_a_volume_that_cannot_grow_fails_and_keeps_the_old_claims(k8s: Any) -> None:
    # As on a StorageClass without allowVolumeExpansion: the API refuses the PVC patch.
    k8s[f"patch /api/v1/namespaces/{NS}/persistentvolumeclaims/data-ad-campaign-dc1-0"] << (
        lambda: web.json_response({"kind": "Status", "message": "only dynamically provisioned "
                                   "pvc can be resized and the storageclass must support "
                                   "resize"}, status=403))
    k8s.objects["v1/persistentvolumeclaims", NS, "data-ad-campaign-dc1-0"] = {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim",
        "metadata": {"name": "data-ad-campaign-dc1-0", "namespace": NS},
        "spec": {"resources": {"requests": {"storage": "1Gi"}}}}
    api = KubeClient(server=str(k8s.url).rstrip("/"))
    cfg = OperatorConfig(client_factory=lambda: api)
    try:
        sts = next(o for o in render(SPEC, "ad-campaign", NS, "uid-1")
                   if o["kind"] == "StatefulSet")
        assert await apply_object(api, copy.deepcopy(sts), {}, cfg) == "Created"
        k8s.objects["apps/v1/statefulsets", NS, "ad-campaign-dc1"].patch(
            {"spec": {"replicas": 1}})
        grown = copy.deepcopy(sts)
        grown["spec"]["volumeClaimTemplates"][0]["spec"]["resources"]["requests"][
            "storage"] = "2Gi"
        body = {"apiVersion": "unisondb.io/v1alpha1", "kind": "UnisonCluster",
                "metadata": {"name": "ad-campaign", "namespace": NS, "uid": "uid-1"}}
        with pytest.raises(ResizeFailed, match="PVC data-ad-campaign-dc1-0 cannot grow from "
                                               "1Gi to 2Gi"):
            await apply_object(api, grown, body, cfg)
        # Not replaced: the StatefulSet still describes the volumes that exist.
        assert not [r for r in list(k8s) if r.method == "DELETE"]
        assert live(k8s, "StatefulSet", "ad-campaign-dc1")["spec"]["volumeClaimTemplates"][0][
            "spec"]["resources"]["requests"]["storage"] == "1Gi"
    finally:
        await api.close()


def test_a_failed_reconcile_is_phase_failed_even_with_every_pod_ready() -> None:
    failed = {"type": "Reconciled", "status": "False", "reason": "ResizeFailed",
              "message": "StatefulSet ad-campaign-dc1: PVC data-ad-campaign-dc1-0 cannot grow"}
    s = cluster_status(SPEC, parts(1, 1, 1, 1), None, 2, reconciled=failed)
    assert s["phase"] == "Failed"
    ready = next(c for c in s["conditions"] if c["type"] == "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "ReconcileFailed")
    assert ready["message"].startswith("ResizeFailed: StatefulSet ad-campaign-dc1: PVC")
    # A child event (no new Reconciled condition) keeps saying so ...
    assert cluster_status(SPEC, parts(1, 1, 1, 1), s, None)["phase"] == "Failed"
    # ... until an apply succeeds.
    ok = {"type": "Reconciled", "status": "True", "reason": "Applied", "message": "1 changed"}
    assert cluster_status(SPEC, parts(1, 1, 1, 1), s, 2, reconciled=ok)["phase"] == "Ready"


@pytest.mark.parametrize("error", [
    KubeError(500, "PATCH", "/apis/unisondb.io/v1alpha1/.../status", "etcdserver: timeout"),
    aiohttp.ClientConnectionError("connection refused"),
])
def test_api_errors_retry_after_retry_delay_not_kopfs_default(error: Exception) -> None:
    with pytest.raises(kopf.TemporaryError) as caught, \
            _temporary_on_api_errors(OperatorConfig(retry_delay=7)):
        raise error
    assert caught.value.delay == 7

"""The chart's RBAC against what the operator really calls.

Every request kopf and our client send to the emulator through a whole life cycle
(create, children becoming ready, a storage change that replaces a StatefulSet and grows
a PVC, an invalid spec reported as an Event) is mapped to (apiGroup, resource, verb) and
must be granted by the ClusterRole the chart renders with default values. The unit test
of the chart checks the grants against a hand-written list; this one catches a new call.
"""

from __future__ import annotations

from typing import Any

import pytest
from unison_operator.kube import USER_AGENT

from tests.unit.test_chart import grants, objects, of_kind

from .conftest import ApiServerEmulator, eventually, example, live, running_operator
from .test_operator import (
    add_dc1_claim,
    all_children,
    cluster_status,
    create,
    patch_cluster,
    set_ready,
)

pytestmark = pytest.mark.kmock(cls=ApiServerEmulator)

_VERBS = {"POST": "create", "PATCH": "patch", "PUT": "update"}


def is_operator_call(request: Any) -> bool:
    agent = request.headers.get("User-Agent", "")
    return agent.startswith(("kopf/", USER_AGENT))


def is_discovery(request: Any) -> bool:
    """GET /api, /apis, /apis/GROUP/VERSION: every account may (system:discovery)."""
    parts = request.url.path.strip("/").split("/")
    return request.method == "GET" and (
        parts in (["api"], ["apis"]) or (parts[0] == "api" and len(parts) == 2)
        or (parts[0] == "apis" and len(parts) <= 3))


def call_of(request: Any) -> tuple[str, str, str]:
    resource = request.resource
    assert resource is not None, f"a call outside the resource API: {request.method} {request.url}"
    plural = resource.plural + (f"/{request.subresource}" if request.subresource else "")
    if request.method == "GET":
        if request.name:
            verb = "get"
        else:
            verb = "watch" if request.params.get("watch") in ("true", "1") else "list"
    elif request.method == "DELETE":
        verb = "delete" if request.name else "deletecollection"
    else:
        verb = _VERBS[request.method]
    return resource.group or "", plural, verb


async def test_every_call_of_a_whole_life_cycle_is_granted_by_the_chart(k8s: Any) -> None:
    add_dc1_claim(k8s)
    doc = example()
    async with running_operator(k8s):
        await create(k8s, doc)
        await eventually(lambda: all_children(k8s), "every child object")
        for kind, name in (("StatefulSet", "ad-campaign-dc1"), ("StatefulSet", "ad-campaign-dc2"),
                           ("StatefulSet", "ad-campaign-relayer"),
                           ("Deployment", "ad-campaign-client")):
            await set_ready(k8s, kind, name, 1)
        await eventually(lambda: cluster_status(k8s).get("phase") == "Ready", "Ready")

        datacenters = doc["spec"]["datacenters"]
        datacenters[0]["storage"]["size"] = "2Gi"
        await patch_cluster(k8s, {"spec": {"datacenters": datacenters}})
        await eventually(lambda: live(k8s, "PersistentVolumeClaim", "data-ad-campaign-dc1-0")
                         ["spec"]["resources"]["requests"]["storage"] == "2Gi", "PVC grown")

        await patch_cluster(k8s, {"spec": {"relayer": {"notifierBasePort": 4002}}})
        await eventually(lambda: cluster_status(k8s).get("phase") == "Invalid", "Invalid")

    calls = {call_of(r) for r in list(k8s) if is_operator_call(r) and not is_discovery(r)}
    # The scenario really exercised the operator's kinds of call (else the check is empty).
    assert {("apps", "statefulsets", "delete"), ("", "persistentvolumeclaims", "patch"),
            ("", "events", "create"), ("unisondb.io", "unisonclusters/status", "patch"),
            ("apps", "statefulsets", "watch")} <= calls, sorted(calls)
    # kopf runs cluster-wide here: the chart's opt-in scope (its default is one namespace).
    cluster_wide = objects({"watch": {"allNamespaces": True}})
    granted = grants([rule for role in of_kind(cluster_wide, "ClusterRole")
                      for rule in role["rules"]])
    assert calls <= granted, f"called but not granted by the chart: {sorted(calls - granted)}"

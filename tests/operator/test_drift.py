"""Drift: children deleted or edited behind the operator's back are repaired within
seconds (also after an operator restart), and an idle cluster costs no writes."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from .conftest import NS, UC_PATH, ApiServerEmulator, eventually, example, live, running_operator
from .test_operator import (
    EXPECTED,
    all_children,
    cluster_status,
    create,
    gone,
    handled,
    set_ready,
)

pytestmark = pytest.mark.kmock(cls=ApiServerEmulator)

PATHS = {"Service": f"/api/v1/namespaces/{NS}/services",
         "ConfigMap": f"/api/v1/namespaces/{NS}/configmaps",
         "PodDisruptionBudget": f"/apis/policy/v1/namespaces/{NS}/poddisruptionbudgets",
         "NetworkPolicy": f"/apis/networking.k8s.io/v1/namespaces/{NS}/networkpolicies",
         "StatefulSet": f"/apis/apps/v1/namespaces/{NS}/statefulsets"}


def image(k8s: Any, name: str) -> str:
    sts = live(k8s, "StatefulSet", name)
    return sts["spec"]["template"]["spec"]["containers"][0]["image"]


async def delete(k8s: Any, kind: str, name: str) -> None:
    resp = await k8s.delete(f"{PATHS[kind]}/{name}")
    assert resp.status == 200, await resp.text()
    assert gone(k8s, kind, name)


async def edit_image(k8s: Any, name: str, new: str) -> None:
    # What `kubectl edit` does to the pod template (a plain merge patch, another manager).
    resp = await k8s.patch(f"{PATHS['StatefulSet']}/{name}", json={"spec": {"template": {
        "spec": {"containers": [{**live(k8s, "StatefulSet", name)["spec"]["template"]["spec"]
                                 ["containers"][0], "image": new}]}}}})
    assert resp.status == 200, await resp.text()
    assert image(k8s, name) == new


def repair_events(k8s: Any) -> list[tuple[str, str]]:
    return [(r.data.get("reason"), r.data.get("message")) for r in list(k8s)
            if r.method == "POST" and r.resource is not None and r.resource.plural == "events"
            and r.data.get("reason") in ("Created", "Repaired")]


async def up(k8s: Any) -> None:
    await create(k8s, example())
    await eventually(lambda: all_children(k8s) and handled(k8s, "ad-campaign-dc1"),
                     "the creation handled")


async def test_deleted_children_come_back_and_edits_are_undone(k8s: Any) -> None:
    async with running_operator(k8s):
        await up(k8s)
        for kind, name in (("Service", "ad-campaign-relayer"), ("ConfigMap", "ad-campaign-config"),
                           ("PodDisruptionBudget", "ad-campaign-dc2"),
                           ("NetworkPolicy", "ad-campaign-dc1")):
            await delete(k8s, kind, name)
            await eventually(lambda k=kind, n=name: live(k8s, k, n), f"{kind} {name} recreated",
                             within=5)
        assert "dc1.toml" in live(k8s, "ConfigMap", "ad-campaign-config")["data"]
        await edit_image(k8s, "ad-campaign-relayer", "evil:1")
        await eventually(lambda: image(k8s, "ad-campaign-relayer") == "unison:0.1.0",
                         "the edit undone", within=5)
        # Each repair is told as an Event on the UnisonCluster.
        for message in ("Service ad-campaign-relayer was deleted; recreated",
                        "StatefulSet ad-campaign-relayer was changed outside the operator; "
                        "restored"):
            await eventually(lambda m=message: m in [m for _, m in repair_events(k8s)],
                             f"the event {message!r}", within=5)


async def test_drift_while_the_operator_was_down_is_repaired_on_restart(k8s: Any) -> None:
    async with running_operator(k8s, resync_interval=0):
        await up(k8s)
    await delete(k8s, "Service", "ad-campaign-dc1")
    await edit_image(k8s, "ad-campaign-dc2", "evil:1")
    async with running_operator(k8s, resync_interval=0):
        await eventually(lambda: live(k8s, "Service", "ad-campaign-dc1"), "Service recreated",
                         within=10)
        await eventually(lambda: image(k8s, "ad-campaign-dc2") == "unison:0.1.0",
                         "the edit undone", within=10)


def writes_since(k8s: Any, since: int) -> list[str]:
    """Every create/patch/delete by anyone after request `since` (children and cluster)."""
    return [f"{r.method} {r.url.path}" for r in list(k8s)[since:]
            if r.method in ("POST", "PATCH", "PUT", "DELETE")
            and not (r.resource is not None and r.resource.plural == "events")]


async def test_an_idle_cluster_causes_no_writes(k8s: Any) -> None:
    # A short resync makes the backstop run several times during the quiet period.
    async with running_operator(k8s, resync_interval=0.3):
        await up(k8s)
        for kind, name in (("StatefulSet", "ad-campaign-dc1"), ("StatefulSet", "ad-campaign-dc2"),
                           ("StatefulSet", "ad-campaign-relayer"),
                           ("Deployment", "ad-campaign-client")):
            await set_ready(k8s, kind, name, 1)
        await eventually(lambda: cluster_status(k8s).get("phase") == "Ready", "Ready")
        # Let the last events (our status write, kopf's annotations) settle.
        await eventually(lambda: len(list(k8s)) and _quiet_for(k8s, 1.0), "a quiet moment",
                         within=10)
        since = len(list(k8s))
        reads_before = _reads(k8s, 0)
        await asyncio.sleep(2.0)
        assert writes_since(k8s, since) == []
        # ... and the resync really ran (it reads every child) while writing nothing.
        assert _reads(k8s, since) >= len(EXPECTED), reads_before


_last_seen: dict[int, tuple[int, float]] = {}


def _quiet_for(k8s: Any, seconds: float) -> bool:
    n = len(writes_since(k8s, 0))
    key = id(k8s)
    seen = _last_seen.get(key)
    now = time.monotonic()
    if seen is None or seen[0] != n:
        _last_seen[key] = (n, now)
        return False
    return now - seen[1] >= seconds


def _reads(k8s: Any, since: int) -> int:
    return sum(1 for r in list(k8s)[since:] if r.method == "GET" and r.name
               and r.resource is not None and r.resource.plural != "unisonclusters")


async def test_deleting_the_cluster_does_not_recreate_its_children(k8s: Any) -> None:
    async with running_operator(k8s):
        await up(k8s)
        resp = await k8s.delete(f"{UC_PATH}/ad-campaign")
        assert resp.status == 200
        await eventually(lambda: gone(k8s, "UnisonCluster", "ad-campaign"), "deletion")
        # The garbage collector's part, which the emulator does not play.
        await delete(k8s, "Service", "ad-campaign-relayer")
        await asyncio.sleep(1.0)
        assert gone(k8s, "Service", "ad-campaign-relayer")

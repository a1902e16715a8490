"""kopf's real runner against kmock's Kubernetes emulator.

The emulator serves only the resources registered here, stores objects as sent (no
defaults, no server-side list merging) and never runs controllers, so tests play the
kubelet/controller part by writing children's status themselves.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import datetime
import itertools
import logging
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import kmock
import kopf
import pytest
import yaml
from unison_operator.handlers import OperatorConfig, make_registry
from unison_operator.kube import KubeClient

ROOT = Path(__file__).resolve().parents[2]
NS = "demo"
UC = "unisondb.io/v1alpha1/unisonclusters"
UC_PATH = f"/apis/unisondb.io/v1alpha1/namespaces/{NS}/unisonclusters"
CHILD_RESOURCES = {
    "v1/configmaps": "ConfigMap",
    "v1/services": "Service",
    "v1/secrets": "Secret",
    "v1/persistentvolumeclaims": "PersistentVolumeClaim",
    "apps/v1/statefulsets": "StatefulSet",
    "apps/v1/deployments": "Deployment",
    "policy/v1/poddisruptionbudgets": "PodDisruptionBudget",
    "networking.k8s.io/v1/networkpolicies": "NetworkPolicy",
}
KIND_RESOURCE = {kind: res for res, kind in CHILD_RESOURCES.items()}


_versions = itertools.count(100)


class ApiServerEmulator(kmock.KubernetesEmulator):
    """The emulator plus the metadata an API server maintains and kopf relies on:
    resourceVersion on every write, uid/creationTimestamp/generation (and a name for
    generateName) on create, and a generation bump when the spec changes."""

    async def _handle(self, request: Any) -> Any:
        data = request.data
        writing = request.action in (kmock.action.CREATE, kmock.action.UPDATE)
        if request.resource is not None and writing and isinstance(data, dict):
            meta = data.setdefault("metadata", {})
            meta["resourceVersion"] = str(next(_versions))
            if request.action == kmock.action.CREATE:
                if not meta.get("name") and meta.get("generateName"):
                    meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault("generation", 1)
                meta.setdefault("creationTimestamp", datetime.datetime.now(
                    datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
            elif "spec" in data and request.subresource != "status":
                key = (request.resource, request.namespace, request.name)
                if key in self.objects and not self.objects[key].deleted:
                    current = self.objects[key].raw.get("metadata", {}).get("generation", 1)
                    meta["generation"] = current + 1
        return await super()._handle(request)


def example() -> dict[str, Any]:
    doc = yaml.safe_load((ROOT / "examples" / "ad-campaign.yaml").read_text())
    doc["metadata"].update(namespace=NS, uid="uid-ad-campaign")
    return doc


async def eventually(check: Callable[[], Any], what: str, within: float = 20.0) -> Any:
    """Poll until `check()` returns something truthy (the operator works asynchronously)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    last_error: Exception | None = None
    while loop.time() < deadline:
        try:
            result = check()
            if result:
                return result
        except (KeyError, TypeError, AssertionError) as e:
            last_error = e
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what} (last error: {last_error!r})")


@pytest.fixture
async def k8s(kmock: kmock.KubernetesEmulator) -> kmock.KubernetesEmulator:
    info = kmock.ResourceInfo
    for res, kind in CHILD_RESOURCES.items():
        kmock.resources[res] = info(kind=kind, namespaced=True,
                                    verbs={"get", "list", "watch", "create", "patch", "delete"})
    kmock.resources["v1/events"] = info(kind="Event", namespaced=True,
                                        verbs={"create", "list"})
    kmock.resources["v1/namespaces"] = info(kind="Namespace", namespaced=False,
                                            verbs={"get", "list", "watch"})
    kmock.resources["apiextensions.k8s.io/v1/customresourcedefinitions"] = info(
        kind="CustomResourceDefinition", namespaced=False, verbs={"get", "list", "watch"})
    kmock.resources[UC] = info(kind="UnisonCluster", namespaced=True, singular="unisoncluster",
                               shortnames={"uc"}, subresources={"status"},
                               verbs={"get", "list", "watch", "patch", "update"})
    crd = yaml.safe_load((ROOT / "crds" / "unisoncluster.yaml").read_text())
    kmock.objects["apiextensions.k8s.io/v1/customresourcedefinitions", None,
                  crd["metadata"]["name"]] = crd
    kmock.objects["v1/namespaces", None, NS] = {"apiVersion": "v1", "kind": "Namespace",
                                                "metadata": {"name": NS}}
    return kmock


@contextlib.asynccontextmanager
async def running_operator(k8s: kmock.KubernetesEmulator, **config: Any
                           ) -> AsyncIterator[None]:
    """kopf.operator() with our registry, logged in to the emulator, stopped on exit;
    `config` overrides OperatorConfig fields (resync_interval, repair_interval, ...)."""
    server = str(k8s.url).rstrip("/")
    registry = make_registry(OperatorConfig(**{
        "client_factory": lambda: KubeClient(server=server),
        "login": lambda **_: kopf.ConnectionInfo(server=server, default_namespace=NS),
        "recreate_timeout": 5, "retry_delay": 1, **config}))

    settings = kopf.OperatorSettings()
    settings.watching.reconnect_backoff = 0.1
    settings.posting.enabled = True
    # kopf runs in its own thread and loop (as under `kopf run`), so its shutdown never
    # waits for or cancels the emulator's tasks in the test's loop.
    stop = threading.Event()
    thread = threading.Thread(
        target=kopf.run, name="kopf", daemon=True,
        kwargs={"registry": registry, "settings": settings, "clusterwide": True,
                "standalone": True, "stop_flag": stop})
    thread.start()
    try:
        yield
    finally:
        stop.set()
        await asyncio.to_thread(thread.join, 20)
        if thread.is_alive():
            logging.getLogger(__name__).warning("operator did not stop in time")


SERVER_FIELDS = ("uid", "resourceVersion", "generation", "creationTimestamp")


def kubeconfig(k8s: Any, path: Path) -> Path:
    """A token kubeconfig for the emulator (the token is not checked), in namespace NS."""
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "emulator", "cluster": {"server": str(k8s.url).rstrip("/")}}],
        "users": [{"name": "tester", "user": {"token": "not-checked"}}],
        "contexts": [{"name": "test", "context": {"cluster": "emulator", "user": "tester",
                                                  "namespace": NS}}],
        "current-context": "test"}))
    return path


def live(k8s: kmock.KubernetesEmulator, kind: str, name: str) -> dict[str, Any]:
    """The stored object as a plain dict (KeyError while absent or deleted)."""
    obj = k8s.objects[KIND_RESOURCE.get(kind, UC), NS, name]
    if obj.deleted:
        raise KeyError(name)
    return copy.deepcopy(dict(obj.raw))


def tls_data(k8s: kmock.KubernetesEmulator, cluster: str = "ad-campaign") -> dict[str, bytes]:
    """The decoded data of a cluster's TLS Secret (the input `render(tls=...)` takes)."""
    data = live(k8s, "Secret", f"{cluster}-tls")["data"]
    return {k: base64.b64decode(v) for k, v in data.items()}


def as_sent(obj: dict[str, Any]) -> dict[str, Any]:
    """A live object without the fields the API server adds."""
    meta = {k: v for k, v in obj["metadata"].items() if k not in SERVER_FIELDS}
    return {**obj, "metadata": meta}


def writes(k8s: kmock.KubernetesEmulator, since: int = 0) -> list[Any]:
    """Create/patch/delete requests on children made after request number `since`."""
    children = {kmock.resource(r) for r in CHILD_RESOURCES}
    return [r for r in list(k8s)[since:]
            if r.method in ("POST", "PATCH", "PUT", "DELETE") and r.resource in children]

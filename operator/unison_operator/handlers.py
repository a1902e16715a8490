"""kopf wiring: reconcile UnisonClusters into their children and reflect readiness.

The logic lives in plain async functions (`reconcile`, `observe`, `cluster_status`);
`make_registry` only binds them to kopf events, so tests can run kopf's real runner
with their own registry, login and API client.

- create / update / resume -> parse the spec, render, apply each child (create, or
  server-side apply when its content hash changed, skip when unchanged), then status;
- events of the owned StatefulSets/Deployments re-read the children and update the
  owner's `status` (phase, counts, conditions `Ready` from the pods and `Reconciled` from
  the last apply);
- an invalid spec -> Warning Event + `Ready=False/InvalidSpec` condition, no child touched;
- a child that cannot be applied (name taken by a foreign object, API rejection) ->
  Warning Event + `Reconciled=False/ApplyFailed`, the other children still applied, and
  kopf retries later;
- deletion: owner references let Kubernetes collect the children; PVCs follow the
  StatefulSets' persistentVolumeClaimRetentionPolicy (Retain unless the spec says Delete).
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import kopf

from .kube import KubeClient, KubeError
from .render import HASH_ANNOTATION, MANAGER, Names, render
from .spec import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    ClusterSpec,
    SpecError,
    parse_cluster,
    quantity_value,
)

READY = "Ready"  # condition: every part has its pods ready
RECONCILED = "Reconciled"  # condition: the children match the current spec
MANAGED = {"app.kubernetes.io/managed-by": MANAGER}


@dataclass
class OperatorConfig:
    """What differs between production and tests."""

    client_factory: Callable[[], KubeClient] = KubeClient.from_environment
    # kopf's own connection (watching the UnisonClusters, posting status and Events);
    # the default reads the in-cluster service account or the kubeconfig, like the client.
    login: Callable[..., kopf.ConnectionInfo | None] = kopf.login_via_client
    recreate_timeout: float = 60.0  # wait for an orphan-deleted StatefulSet to go away
    retry_delay: float = 30.0  # seconds before retrying a reconcile that failed


# ---------------------------------------------------------------- applying


def _hash(obj: Mapping[str, Any] | None) -> str | None:
    if not obj:
        return None
    return (obj.get("metadata", {}).get("annotations") or {}).get(HASH_ANNOTATION)


def _claims(sts: Mapping[str, Any]) -> list[tuple[str, str | None, str | None]]:
    out = []
    for t in sts.get("spec", {}).get("volumeClaimTemplates") or []:
        spec = t.get("spec", {})
        size = spec.get("resources", {}).get("requests", {}).get("storage")
        out.append((t.get("metadata", {}).get("name"), size, spec.get("storageClassName")))
    return out


def _same_claims(live: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    """Equal claim templates; sizes compare by value (the API server canonicalizes them)."""
    a, b = _claims(live), _claims(desired)
    if len(a) != len(b):
        return False
    for (name_a, size_a, class_a), (name_b, size_b, class_b) in zip(a, b, strict=True):
        if name_a != name_b or class_a != class_b:
            return False
        if size_a != size_b and (size_a is None or size_b is None
                                 or quantity_value(str(size_a)) != quantity_value(str(size_b))):
            return False
    return True


async def _grow_claims(api: KubeClient, live: Mapping[str, Any], desired: Mapping[str, Any],
                       body: Any) -> None:
    """Expand the existing PVCs of a StatefulSet whose storage request grew."""
    meta = desired["metadata"]
    sizes = {name: size for name, size, _ in _claims(desired)}
    replicas = int(live.get("spec", {}).get("replicas") or 0)
    for claim, size in sizes.items():
        for i in range(replicas):
            pvc_name = f"{claim}-{meta['name']}-{i}"
            pvc = await api.get("PersistentVolumeClaim", meta["namespace"], pvc_name)
            if pvc is None or size is None:
                continue
            current = pvc.get("spec", {}).get("resources", {}).get("requests", {}).get("storage")
            if current and quantity_value(size) < quantity_value(current):
                kopf.event(body, type="Warning", reason="StorageShrinkIgnored",
                           message=f"PVC {pvc_name} keeps {current}: volumes cannot shrink "
                                   f"to {size}")
                continue
            if current == size:
                continue
            try:
                await api.merge_patch("PersistentVolumeClaim", meta["namespace"], pvc_name,
                                      {"spec": {"resources": {"requests": {"storage": size}}}})
                kopf.event(body, type="Normal", reason="Resized",
                           message=f"PVC {pvc_name} requested {size} (was {current})")
            except KubeError as e:
                kopf.event(body, type="Warning", reason="ResizeFailed",
                           message=f"PVC {pvc_name} cannot grow to {size}: {e.message}")


async def _wait_gone(api: KubeClient, kind: str, namespace: str, name: str,
                     within: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while await api.get(kind, namespace, name) is not None:
        if loop.time() > deadline:
            raise kopf.TemporaryError(f"{kind} {name} is still being deleted", delay=5)
        await asyncio.sleep(0.5)


class ReconcileError(Exception):
    """Some children could not be applied; the message lists them."""


class NameConflict(Exception):
    """A child's name is taken by an object this cluster does not manage."""


def _ours(live: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    """Owned by this UnisonCluster, or labelled as its (e.g. applied from `unison render`)."""
    want = desired["metadata"]
    for ref in live.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return any(ref.get("uid") == o.get("uid") for o in want.get("ownerReferences", []))
    labels = live.get("metadata", {}).get("labels") or {}
    return all(labels.get(k) == want["labels"][k] for k in (
        "app.kubernetes.io/managed-by", "app.kubernetes.io/instance"))


async def apply_object(api: KubeClient, desired: dict[str, Any], body: Any,
                       cfg: OperatorConfig) -> str | None:
    """Make one child match `desired`; returns what was done, None when nothing was needed."""
    kind, meta = desired["kind"], desired["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    live = await api.get(kind, namespace, name)
    if live is None:
        await api.apply_or_create(desired)
        return "Created"
    if not _ours(live, desired):
        raise NameConflict(f"{kind} {name} already exists and is not managed by this "
                           "UnisonCluster; rename or remove it")
    if _hash(live) == _hash(desired):
        return None
    if kind == "StatefulSet" and not _same_claims(live, desired):
        # volumeClaimTemplates are immutable: grow the existing PVCs, then replace the
        # StatefulSet without deleting its pods (orphan), which the new one adopts.
        await _grow_claims(api, live, desired, body)
        await api.delete(kind, namespace, name, propagation="Orphan")
        await _wait_gone(api, kind, namespace, name, cfg.recreate_timeout)
        await api.apply_or_create(desired)
        return "Recreated"
    await api.apply(desired)
    return "Updated"


# ---------------------------------------------------------------- status


@dataclass(frozen=True)
class PartState:
    name: str
    desired: int
    ready: int
    rolling: bool  # a rollout is in progress (or the object does not exist yet)


def _part_state(part: str, obj: Mapping[str, Any] | None, desired: int) -> PartState:
    """Ready pods of a StatefulSet/Deployment, and whether it is still rolling out.

    A part is settled only when its controller has seen the latest spec (observedGeneration),
    every desired pod runs the latest template (updatedReplicas; for a StatefulSet also
    currentRevision == updateRevision), no old pod is left (replicas, unavailableReplicas)
    and every pod is ready and available. Until then the ready pods may be old ones, still
    configured for the previous spec.
    """
    if obj is None:
        return PartState(part, desired, 0, True)
    st = obj.get("status") or {}

    def count(key: str) -> int:
        return int(st.get(key) or 0)

    ready = count("readyReplicas")
    if "availableReplicas" in st:  # respects minReadySeconds where the controller has it
        ready = min(ready, count("availableReplicas"))
    gen, seen = obj.get("metadata", {}).get("generation"), st.get("observedGeneration")
    rolling = (
        (gen is not None and (seen is None or int(seen) < int(gen)))
        or count("updatedReplicas") < desired
        or count("replicas") > desired  # pods of the old template still around
        or count("unavailableReplicas") > 0
    )
    cur, upd = st.get("currentRevision"), st.get("updateRevision")
    if cur and upd and cur != upd:
        rolling = True
    return PartState(part, desired, min(ready, desired), rolling)


async def observe(api: KubeClient, spec: ClusterSpec, name: str,
                  namespace: str) -> list[PartState]:
    names = Names(name)
    parts: list[PartState] = []
    for dc in spec.datacenters:
        sts = await api.get("StatefulSet", namespace, names.statefulset(dc.name))
        parts.append(_part_state(dc.name, sts, 1))
    sts = await api.get("StatefulSet", namespace, names.statefulset("relayer"))
    parts.append(_part_state("relayer", sts, spec.relayer.replicas))
    if spec.client.enabled:
        dep = await api.get("Deployment", namespace, names.client)
        parts.append(_part_state("client", dep, spec.client.replicas))
    return parts


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _condition(previous: Mapping[str, Any] | None, ctype: str, status: str, reason: str,
               message: str, generation: int | None) -> dict[str, Any]:
    old = next((c for c in (previous or {}).get("conditions") or [] if c.get("type") == ctype),
               None)
    since = old.get("lastTransitionTime") if old and old.get("status") == status else None
    cond: dict[str, Any] = {"type": ctype, "status": status, "reason": reason,
                            "message": message, "lastTransitionTime": since or _now()}
    if generation is not None:
        cond["observedGeneration"] = generation
    return cond


def _conditions(previous: Mapping[str, Any] | None, *new: dict[str, Any]) -> list[dict[str, Any]]:
    """Previous conditions with `new` ones replacing those of the same type; Ready first."""
    by_type = {c.get("type"): c for c in (previous or {}).get("conditions") or []}
    by_type.update({c["type"]: c for c in new})
    order = [READY, RECONCILED]
    return sorted(by_type.values(),
                  key=lambda c: order.index(c["type"]) if c["type"] in order else len(order))


def cluster_status(spec: ClusterSpec, parts: list[PartState],
                   previous: Mapping[str, Any] | None, generation: int | None,
                   reconciled: dict[str, Any] | None = None) -> dict[str, Any]:
    """Phase, Ready condition and counts from the parts' states.

    `reconciled` is the new Reconciled condition when this follows an apply; otherwise the
    previous one is kept (the child-event path knows nothing about applying).
    """
    previous = previous or {}
    desired = sum(p.desired for p in parts)
    ready = sum(p.ready for p in parts)
    lagging = [p for p in parts if p.ready < p.desired or p.rolling]
    if not lagging:
        phase, reason, message = "Ready", "AllPartsReady", f"{ready}/{desired} pods ready"
    else:
        detail = ", ".join(f"{p.name} {p.ready}/{p.desired}" for p in lagging)
        if ready == 0 and previous.get("phase") in (None, "Pending", "Invalid"):
            phase, reason = "Pending", "WaitingForPods"
        elif any(p.rolling for p in lagging):
            phase, reason = "Progressing", "RollingOut"
        else:
            phase, reason = "Degraded", "PodsNotReady"
        message = f"not ready: {detail}"
    gen = generation if generation is not None else previous.get("observedGeneration")
    ready_cond = _condition(previous, READY, "True" if phase == "Ready" else "False", reason,
                            message, gen)
    status: dict[str, Any] = {
        "phase": phase,
        "ready": f"{ready}/{desired}",
        "datacenters": len(spec.datacenters),
        "parts": {p.name: {"ready": p.ready, "desired": p.desired} for p in parts},
        "conditions": _conditions(previous, ready_cond, *([reconciled] if reconciled else [])),
    }
    if gen is not None:
        status["observedGeneration"] = gen
    return status


def invalid_status(error: SpecError, previous: Mapping[str, Any] | None,
                   generation: int | None) -> dict[str, Any]:
    message = str(error)
    status: dict[str, Any] = {
        "phase": "Invalid",
        "conditions": _conditions(
            previous,
            _condition(previous, READY, "False", "InvalidSpec", message, generation),
            _condition(previous, RECONCILED, "False", "InvalidSpec", message, generation)),
    }
    if generation is not None:
        status["observedGeneration"] = generation
    return status


def _changed(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> bool:
    old = old or {}
    return any(old.get(k) != v for k, v in new.items())


Outcome = tuple[str, str, str]  # Reconciled condition: (status, reason, message)


async def write_status(api: KubeClient, namespace: str, name: str,
                       logger: logging.Logger | logging.LoggerAdapter[Any], *,
                       generation: int | None = None, outcome: Outcome | None = None,
                       error: SpecError | None = None) -> None:
    """Recompute a UnisonCluster's status from its children and write it if it changed.

    Every status write goes through here (reconcile outcomes and child events alike). The
    patch carries the resourceVersion it was computed from, so when two writers race the
    API server rejects the stale one (409) and it starts over from fresh observations.
    """
    for _attempt in range(5):
        cluster = await api.get(KIND, namespace, name)
        if cluster is None:
            return  # being deleted, or the child outlived it
        previous = cluster.get("status") or {}
        if error is not None:
            new = invalid_status(error, previous, generation)
        else:
            try:
                spec = _parse(name, cluster.get("spec") or {})
            except SpecError:
                return  # the reconcile handler reports it; nothing to observe
            reconciled = _condition(previous, RECONCILED, *outcome, generation) if outcome else None
            parts = await observe(api, spec, name, namespace)
            new = cluster_status(spec, parts, previous, generation, reconciled)
        if not _changed(previous, new):
            return
        logger.debug("status of %s/%s: %s", namespace, name, new["phase"])
        version = cluster.get("metadata", {}).get("resourceVersion")
        patch: dict[str, Any] = {"status": new}
        if version:
            patch["metadata"] = {"resourceVersion": version}
        try:
            await api.merge_patch(KIND, namespace, name, patch, subresource="status")
            return
        except KubeError as e:
            if e.status != 409:
                raise
    logger.warning("status of %s/%s not written: it kept changing under us", namespace, name)


# ---------------------------------------------------------------- handlers


def _parse(name: str, spec: Mapping[str, Any]) -> ClusterSpec:
    return parse_cluster({"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": name},
                          "spec": spec})


async def reconcile(api: KubeClient, cfg: OperatorConfig, body: Any, name: str, namespace: str,
                    uid: str, generation: int | None,
                    logger: logging.Logger | logging.LoggerAdapter[Any]) -> None:
    """Apply the rendered children, then write the status. Raises ReconcileError."""
    try:
        spec = _parse(name, body.get("spec") or {})
    except SpecError as e:
        logger.warning("invalid spec: %s", e)
        kopf.event(body, type="Warning", reason="InvalidSpec", message=str(e))
        await write_status(api, namespace, name, logger, generation=generation, error=e)
        return
    changes = 0
    failures: list[str] = []
    for obj in render(spec, name, namespace, uid):
        what = f"{obj['kind']} {obj['metadata']['name']}"
        try:
            action = await apply_object(api, obj, body, cfg)
        except NameConflict as e:
            failures.append(str(e))
            kopf.event(body, type="Warning", reason="NameConflict", message=str(e))
            continue
        except KubeError as e:
            # Keep going: one rejected child must not hold back the others.
            failures.append(f"{what}: {e.message}")
            kopf.event(body, type="Warning", reason="ApplyFailed", message=f"{what}: {e.message}")
            continue
        if action:
            changes += 1
            logger.info("%s %s", action.lower(), what)
            kopf.event(body, type="Normal", reason=action, message=what)
    if failures:
        message = "; ".join(failures)
        await write_status(api, namespace, name, logger, generation=generation,
                           outcome=("False", "ApplyFailed", message))
        raise ReconcileError(message)
    if not changes:
        logger.info("all children up to date")
    summary = f"{changes} object(s) changed" if changes else "all objects up to date"
    await write_status(api, namespace, name, logger, generation=generation,
                       outcome=("True", "Applied", summary))


def make_registry(cfg: OperatorConfig | None = None,
                  registry: kopf.OperatorRegistry | None = None) -> kopf.OperatorRegistry:
    """A kopf registry with the UnisonCluster handlers bound to `cfg`."""
    cfg = cfg or OperatorConfig()
    registry = registry or kopf.OperatorRegistry()
    holder: dict[str, KubeClient] = {}

    def api() -> KubeClient:
        if "api" not in holder:
            holder["api"] = cfg.client_factory()
        return holder["api"]

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return cfg.login(**kwargs)

    @kopf.on.startup(registry=registry)
    async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        # Keep kopf's bookkeeping in our own annotations and out of `status`, which the
        # CRD schema defines (and prunes) precisely.
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
            prefix=GROUP)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=GROUP, key="last-handled-configuration")
        settings.persistence.finalizer = f"{GROUP}/operator"
        # Events come from our explicit kopf.event calls; kopf's own log lines stay logs.
        settings.posting.level = logging.WARNING
        settings.watching.server_timeout = 300
        settings.networking.error_backoffs = [1, 2, 5, 10]

    @kopf.on.cleanup(registry=registry)
    async def close(**_: Any) -> None:
        if "api" in holder:
            await holder["api"].close()

    @kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry)
    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)
    @kopf.on.update(GROUP, VERSION, PLURAL, registry=registry)
    async def apply(body: kopf.Body, name: str, namespace: str, uid: str, meta: kopf.Meta,
                    logger: Any, **_: Any) -> None:
        try:
            await reconcile(api(), cfg, body, name, namespace, uid, meta.get("generation"),
                            logger)
        except ReconcileError as e:
            # Reported in status and Events already; kopf retries the whole reconcile.
            raise kopf.TemporaryError(str(e), delay=cfg.retry_delay) from None

    # Readiness flows up from the children: every change of one of our StatefulSets or
    # Deployments (status included) recomputes its UnisonCluster's status. No polling,
    # and no kopf finalizer on the UnisonCluster (timers would need one).
    @kopf.on.event("apps", "v1", "statefulsets", labels=MANAGED, registry=registry)
    @kopf.on.event("apps", "v1", "deployments", labels=MANAGED, registry=registry)
    async def child_changed(body: kopf.Body, namespace: str, logger: Any, **_: Any) -> None:
        owner = next((o for o in body.metadata.get("ownerReferences") or []
                      if o.get("kind") == KIND and o.get("apiVersion") == API_VERSION), None)
        if owner is None or not namespace:
            return
        client = api()
        try:
            await write_status(client, namespace, owner["name"], logger)
        except Exception:
            if client.closed:
                return  # the operator is stopping; the session went away mid-request
            raise

    return registry

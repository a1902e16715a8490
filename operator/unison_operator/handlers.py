"""kopf wiring: reconcile UnisonClusters into their children and reflect readiness.

The logic lives in plain async functions (`reconcile`, `observe`, `cluster_status`);
`make_registry` only binds them to kopf events, so tests can run kopf's real runner
with their own registry, login and API client.

- create / update / resume -> parse the spec, render, compare each child with the live
  object and apply (server-side, forced) only what is missing or differs, then status;
  resume (operator restart) compares too, so edits made meanwhile are undone;
- events of every owned child kind (ConfigMap, Services, StatefulSets, PDBs, the client
  Deployment): a deleted child is recreated and an edited one restored within seconds
  (compared first, so our own writes come back as events that change nothing; one repair
  per child per `repair_interval` at most); StatefulSet/Deployment events also recompute
  the owner's `status` (phase, counts, conditions `Ready` from the pods and `Reconciled`
  from the last apply);
- a resync loop compares every cluster every `resync_interval` seconds, a backstop for
  drift no event reported;
- ports: `status.ports` records each node's port index and the relayer's notifier ports;
  rendering keeps them, so adding or removing a datacenter renumbers nobody;
- an invalid spec -> Warning Event + `Ready=False/InvalidSpec` condition, no child touched;
- a child that cannot be applied (name taken by a foreign object, API rejection, a volume
  that cannot grow) -> Warning Event + `Reconciled=False` (reason NameConflict,
  ApplyFailed or ResizeFailed), phase Failed and `Ready=False/ReconcileFailed`; the other
  children are still applied, and the reconcile is retried after `retry_delay`, as is
  any failed API call (status writes included);
- TLS (spec.tls.enabled, the default): the CA and node certificates live in the Secret
  `<name>-tls`, an owned child; each reconcile reads it and keeps what is still good
  (pki.ensure), so the same bytes are applied again and no pod restarts. A deleted or
  foreign-edited Secret is made again (a new CA: every part rolls) by the next reconcile
  or resync; Secrets are not watched, so the operator needs no list/watch on Secrets;
- deletion: owner references let Kubernetes collect the children; PVCs follow the
  StatefulSets' persistentVolumeClaimRetentionPolicy (Retain unless the spec says Delete).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import datetime
import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

import aiohttp
import kopf
from unison.topology.plan import PortAllocation
from unison.topology.spec import (
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

from . import pki
from .kube import KubeClient, KubeError
from .render import (
    HASH_ANNOTATION,
    MANAGER,
    Names,
    allocation_from_status,
    allocation_to_status,
    port_allocation,
    render,
    tls_parts,
)

READY = "Ready"  # condition: every part has its pods ready
RECONCILED = "Reconciled"  # condition: the children match the current spec
MANAGED = {"app.kubernetes.io/managed-by": MANAGER}
# The children's API resources, as kopf names them: (group, version, plural).
CHILD_RESOURCES = (("", "v1", "configmaps"), ("", "v1", "services"),
                   ("apps", "v1", "statefulsets"), ("apps", "v1", "deployments"),
                   ("policy", "v1", "poddisruptionbudgets"),
                   ("networking.k8s.io", "v1", "networkpolicies"))


@dataclass
class OperatorConfig:
    """What differs between production and tests."""

    client_factory: Callable[[], KubeClient] = KubeClient.from_environment
    # kopf's own connection (watching the UnisonClusters, posting status and Events);
    # the default reads the in-cluster service account or the kubeconfig, like the client.
    login: Callable[..., kopf.ConnectionInfo | None] = kopf.login_via_client
    recreate_timeout: float = 60.0  # wait for an orphan-deleted StatefulSet to go away
    retry_delay: float = 30.0  # seconds before retrying a reconcile that failed
    # Backstop for drift no event told us about (e.g. while a watch was reconnecting):
    # every cluster is compared with its rendering this often; 0 disables it.
    resync_interval: float = 60.0
    # At most one repair of the same child this often, so a controller that keeps
    # changing a field we own cannot drive a write loop.
    repair_interval: float = 2.0


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


class ResizeFailed(Exception):
    """A data volume could not grow to the requested size; the message names the PVC."""


async def _grow_claims(api: KubeClient, live: Mapping[str, Any], desired: Mapping[str, Any],
                       body: Any) -> None:
    """Expand the existing PVCs of a StatefulSet whose storage request grew.

    Raises ResizeFailed when the API refuses (e.g. the StorageClass does not allow volume
    expansion); the caller then keeps the StatefulSet's old claim templates, so the next
    reconcile tries again and status keeps saying why.
    """
    meta = desired["metadata"]
    sizes = {name: size for name, size, _ in _claims(desired)}
    replicas = int(live.get("spec", {}).get("replicas") or 0)
    failures: list[str] = []
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
                failures.append(f"PVC {pvc_name} cannot grow from {current} to {size}: "
                                f"{e.message}")
    if failures:
        raise ResizeFailed("; ".join(failures))


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


def _same_value(want: Any, have: Any) -> bool:
    if want == have:
        return True
    if isinstance(want, str) and isinstance(have, str):
        # Quantities come back canonicalized ("0.5" -> "500m").
        try:
            return quantity_value(want) == quantity_value(have)
        except ValueError:
            return False
    return False


def covers(live: Any, desired: Any) -> bool:
    """Every field we render is in the live object with the same value. Fields the API
    server or other controllers add (defaults, status, clusterIP) do not count as drift;
    lists must have the same length (an extra container or port is drift)."""
    if isinstance(desired, Mapping):
        return isinstance(live, Mapping) and all(
            k in live and covers(live[k], v) for k, v in desired.items())
    if isinstance(desired, list):
        return (isinstance(live, list) and len(live) == len(desired)
                and all(covers(a, b) for a, b in zip(live, desired, strict=True)))
    return _same_value(desired, live)


def drifted(live: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    """The live child differs from what we render. The applied hash catches fields a
    previous spec rendered and this one no longer does (server-side apply removes them);
    the field comparison catches edits made behind the operator's back."""
    return _hash(live) != _hash(desired) or not covers(
        {k: live.get(k) for k in ("metadata", "spec", "data")},
        {k: desired[k] for k in ("metadata", "spec", "data") if k in desired})


async def apply_object(api: KubeClient, desired: dict[str, Any], body: Any,
                       cfg: OperatorConfig) -> str | None:
    """Make one child match `desired`; returns what was done, None when nothing was needed.

    Compares before writing, so an unchanged cluster costs reads only (and its children
    see no events that would come back to us as work).
    """
    kind, meta = desired["kind"], desired["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    live = await api.get(kind, namespace, name)
    if live is None:
        await api.apply_or_create(desired)
        return "Created"
    if not _ours(live, desired):
        raise NameConflict(f"{kind} {name} already exists and is not managed by this "
                           "UnisonCluster; rename or remove it")
    if not drifted(live, desired):
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
    # Same hash: the spec did not change, someone edited the child.
    return "Updated" if _hash(live) != _hash(desired) else "Repaired"


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
                   reconciled: dict[str, Any] | None = None,
                   ports: dict[str, Any] | None = None) -> dict[str, Any]:
    """Phase, Ready condition and counts from the parts' states.

    `reconciled` is the new Reconciled condition when this follows an apply; otherwise the
    previous one is kept (the child-event path knows nothing about applying). While it is
    False the phase is Failed and Ready is False, whatever the pods say: the children do
    not match the spec. `ports` is the allocation just applied (status.ports; kept when
    None).
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
    rec = reconciled or next((c for c in previous.get("conditions") or []
                              if c.get("type") == RECONCILED), None)
    if rec and rec.get("status") == "False" and rec.get("reason") != "InvalidSpec":
        phase, reason = "Failed", "ReconcileFailed"
        message = f"{rec.get('reason')}: {rec.get('message')}"
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
    if ports is not None or previous.get("ports"):
        status["ports"] = ports if ports is not None else previous["ports"]
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
    if ports := (previous or {}).get("ports"):
        status["ports"] = ports  # still assigned: a fixed spec keeps them
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
                       error: SpecError | None = None,
                       ports: PortAllocation | None = None) -> None:
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
            new = cluster_status(spec, parts, previous, generation, reconciled,
                                 allocation_to_status(ports) if ports else None)
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


def previous_ports(cluster: Mapping[str, Any] | None) -> PortAllocation | None:
    """The port allocation recorded in a UnisonCluster's status.ports, if any."""
    return allocation_from_status(((cluster or {}).get("status") or {}).get("ports"))


def _secret_data(live: Mapping[str, Any] | None, cluster: str) -> dict[str, bytes]:
    """The decoded data of our TLS Secret; nothing from a Secret this cluster does not
    manage (applying ours over it then fails as a NameConflict)."""
    if not live:
        return {}
    lbl = live.get("metadata", {}).get("labels") or {}
    if lbl.get("app.kubernetes.io/managed-by") != MANAGER or \
            lbl.get("app.kubernetes.io/instance") != cluster:
        return {}
    out: dict[str, bytes] = {}
    for key, value in (live.get("data") or {}).items():
        try:
            out[key] = base64.b64decode(value, validate=True)
        except (binascii.Error, TypeError):
            continue  # unusable: pki.ensure replaces what it needs
    return out


async def tls_material(api: KubeClient, spec: ClusterSpec, name: str, namespace: str,
                       issue: bool = True) -> dict[str, bytes] | None:
    """The TLS Secret's data for this spec: the live one where still good (same bytes, so
    nothing restarts), new keys only where needed; None with spec.tls.enabled false.
    `issue=False` (a repair of one child) takes the stored data as it is: only the
    reconcile makes keys, so repairs racing it never render certificates it discards."""
    parts = tls_parts(spec, name, namespace)
    if not parts:
        return None
    stored = _secret_data(await api.get("Secret", namespace, Names(name).tls_secret), name)
    if not issue:
        return stored
    return pki.ensure(stored, name, parts, datetime.datetime.now(datetime.UTC))


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
    # Ports once given to a part stay with it (status.ports, read fresh: kopf's body may
    # predate our last status write).
    current = await api.get(KIND, namespace, name)
    ports = port_allocation(spec, name, namespace, previous_ports(current or body))
    tls = await tls_material(api, spec, name, namespace)
    changes = 0
    failures: list[tuple[str, str]] = []  # (reason, message)
    for obj in render(spec, name, namespace, uid, ports=ports, tls=tls):
        what = f"{obj['kind']} {obj['metadata']['name']}"
        try:
            action = await apply_object(api, obj, body, cfg)
        except NameConflict as e:
            failures.append(("NameConflict", str(e)))
            kopf.event(body, type="Warning", reason="NameConflict", message=str(e))
            continue
        except ResizeFailed as e:
            failures.append(("ResizeFailed", f"{what}: {e}"))
            kopf.event(body, type="Warning", reason="ResizeFailed", message=f"{what}: {e}")
            continue
        except KubeError as e:
            # Keep going: one rejected child must not hold back the others.
            failures.append(("ApplyFailed", f"{what}: {e.message}"))
            kopf.event(body, type="Warning", reason="ApplyFailed", message=f"{what}: {e.message}")
            continue
        if action:
            changes += 1
            logger.info("%s %s", action.lower(), what)
            kopf.event(body, type="Warning" if action == "Repaired" else "Normal",
                       reason=action, message=what + (
                           " was changed outside the operator; restored" if action == "Repaired"
                           else ""))
    if failures:
        message = "; ".join(m for _, m in failures)
        await write_status(api, namespace, name, logger, generation=generation,
                           outcome=("False", failures[0][0], message), ports=ports)
        raise ReconcileError(message)
    if not changes:
        logger.debug("all children up to date")
    # The same words whatever this pass changed (the Events and the log say that): a
    # periodic re-check that finds nothing to do must not rewrite the status.
    await write_status(api, namespace, name, logger, generation=generation,
                       outcome=("True", "Applied", "every child matches the spec"), ports=ports)


async def repair_child(api: KubeClient, cfg: OperatorConfig, namespace: str, cluster_name: str,
                       kind: str, name: str,
                       logger: logging.Logger | logging.LoggerAdapter[Any]) -> str | None:
    """Re-apply one child of a cluster if it was deleted or edited; returns the action."""
    cluster = await api.get(KIND, namespace, cluster_name)
    if cluster is None or cluster.get("metadata", {}).get("deletionTimestamp"):
        return None  # the garbage collector is removing the children
    try:
        spec = _parse(cluster_name, cluster.get("spec") or {})
    except SpecError:
        return None  # status says Invalid; nothing to render
    uid = cluster.get("metadata", {}).get("uid")
    ports = port_allocation(spec, cluster_name, namespace, previous_ports(cluster))
    # Only a StatefulSet's rendering depends on the keys (its pods' TLS hash).
    tls = (await tls_material(api, spec, cluster_name, namespace, issue=False)
           if kind == "StatefulSet" else None)
    desired = next((o for o in render(spec, cluster_name, namespace, uid, ports=ports, tls=tls)
                    if o["kind"] == kind and o["metadata"]["name"] == name), None)
    if desired is None:
        return None  # not (or no longer) one of ours
    try:
        action = await apply_object(api, desired, cluster, cfg)
    except (NameConflict, ResizeFailed, KubeError) as e:
        logger.warning("cannot repair %s %s: %s", kind, name, e)
        return None
    if action:
        logger.info("%s %s %s", action.lower(), kind, name)
        kopf.event(cast(kopf.Body, cluster), type="Warning" if action in ("Created", "Repaired") else "Normal",
                   reason=action, message=f"{kind} {name} "
                   + ("was deleted; recreated" if action == "Created"
                      else "was changed outside the operator; restored"
                      if action == "Repaired" else "updated"))
    return action


@dataclass
class _Runtime:
    """What the handlers of one operator share: a lock per cluster (reconciles, repairs
    and resyncs of one cluster never interleave), the clusters seen, the last repairs."""

    locks: dict[tuple[str, str], asyncio.Lock]
    clusters: set[tuple[str, str]]
    repaired_at: dict[tuple[str, str, str], float]

    def lock(self, namespace: str, name: str) -> asyncio.Lock:
        return self.locks.setdefault((namespace, name), asyncio.Lock())


@contextlib.contextmanager
def _temporary_on_api_errors(cfg: OperatorConfig) -> Iterator[None]:
    """API failures (status writes included) retry after retry_delay, not kopf's 60 s."""
    try:
        yield
    except ReconcileError as e:
        # Reported in status and Events already; kopf retries the whole reconcile.
        raise kopf.TemporaryError(str(e), delay=cfg.retry_delay) from None
    except (KubeError, aiohttp.ClientError, TimeoutError) as e:
        raise kopf.TemporaryError(f"Kubernetes API: {e}", delay=cfg.retry_delay) from e


class _Operator:
    """The work behind the handlers of one operator, sharing one API client and `_Runtime`.

    `make_registry` registers thin closures that call these methods, so kopf's handler ids
    (which it keeps in annotations) stay those of the closures."""

    def __init__(self, cfg: OperatorConfig) -> None:
        self.cfg = cfg
        self.rt = _Runtime(locks={}, clusters=set(), repaired_at={})
        self.tasks: list[asyncio.Task[None]] = []
        self._api: KubeClient | None = None

    def api(self) -> KubeClient:
        if self._api is None:
            self._api = self.cfg.client_factory()
        return self._api

    def configure(self, settings: kopf.OperatorSettings, logger: Any) -> None:
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
        if self.cfg.resync_interval > 0:
            self.tasks.append(asyncio.get_running_loop().create_task(
                self.resync_forever(logger), name="unison-resync"))

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._api is not None:
            await self._api.close()

    async def apply(self, body: kopf.Body, name: str, namespace: str, uid: str,
                    meta: kopf.Meta, logger: Any) -> None:
        # Resume (operator restart) compares every child too: edits made while the
        # operator was away are repaired, not skipped.
        with _temporary_on_api_errors(self.cfg):
            async with self.rt.lock(namespace, name):
                await reconcile(self.api(), self.cfg, body, name, namespace, uid,
                                meta.get("generation"), logger)

    def cluster_seen(self, event: kopf.RawEvent, name: str, namespace: str) -> None:
        if event.get("type") == "DELETED":
            self.rt.clusters.discard((namespace, name))
            self.rt.locks.pop((namespace, name), None)
        else:
            self.rt.clusters.add((namespace, name))

    async def resync_forever(self, logger: Any) -> None:
        while True:
            await asyncio.sleep(self.cfg.resync_interval)
            for namespace, name in sorted(self.rt.clusters):
                try:
                    await self.resync(namespace, name, logger)
                except asyncio.CancelledError:
                    raise
                except Exception as e:  # the next round retries; kopf's retries are separate
                    logger.warning("resync of %s/%s failed: %s", namespace, name, e)

    async def resync(self, namespace: str, name: str, logger: Any) -> None:
        client = self.api()
        async with self.rt.lock(namespace, name):
            cluster = await client.get(KIND, namespace, name)
            if cluster is None or cluster["metadata"].get("deletionTimestamp"):
                return
            try:
                _parse(name, cluster.get("spec") or {})
            except SpecError:
                return  # reported by the create/update handler; nothing to compare
            meta = cluster["metadata"]
            try:
                await reconcile(client, self.cfg, cluster, name, namespace, meta["uid"],
                                meta.get("generation"), logger)
            except ReconcileError:
                pass  # in status and Events already

    async def child_changed(self, body: kopf.Body, event: kopf.RawEvent, namespace: str,
                            logger: Any) -> None:
        """Re-apply a deleted or edited child at once (compared first, so our own writes
        come back as events that change nothing); StatefulSets' and Deployments' status
        flows up into the owner's status. No polling for readiness."""
        owner = next((o for o in body.metadata.get("ownerReferences") or []
                      if o.get("kind") == KIND and o.get("apiVersion") == API_VERSION), None)
        if owner is None or not namespace:
            return
        client = self.api()
        kind, name = str(body.get("kind", "")), str(body.metadata.get("name", ""))
        try:
            key = (namespace, f"{kind}", f"{name}")
            loop = asyncio.get_running_loop()
            wait = self.rt.repaired_at.get(key, -1e9) + self.cfg.repair_interval - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            async with self.rt.lock(namespace, owner["name"]):
                action = await repair_child(client, self.cfg, namespace, owner["name"], kind,
                                            name, logger)
                if action:
                    self.rt.repaired_at[key] = loop.time()
            if kind in ("StatefulSet", "Deployment") and event.get("type") != "DELETED":
                await write_status(client, namespace, owner["name"], logger)
        except Exception:
            if client.closed:
                return  # the operator is stopping; the session went away mid-request
            raise


def make_registry(cfg: OperatorConfig | None = None,
                  registry: kopf.OperatorRegistry | None = None) -> kopf.OperatorRegistry:
    """A kopf registry with the UnisonCluster handlers bound to `cfg`."""
    cfg = cfg or OperatorConfig()
    registry = registry or kopf.OperatorRegistry()
    op = _Operator(cfg)

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return cfg.login(**kwargs)

    @kopf.on.startup(registry=registry)
    async def configure(settings: kopf.OperatorSettings, logger: Any, **_: Any) -> None:
        op.configure(settings, logger)

    @kopf.on.cleanup(registry=registry)
    async def close(**_: Any) -> None:
        await op.close()

    @kopf.on.resume(GROUP, VERSION, PLURAL, registry=registry)
    @kopf.on.create(GROUP, VERSION, PLURAL, registry=registry)
    @kopf.on.update(GROUP, VERSION, PLURAL, registry=registry)
    # kopf types `namespace` as str | None; for namespaced resources it is always set.
    async def apply(body: kopf.Body, name: str, namespace: Any, uid: str, meta: kopf.Meta,
                    logger: Any, **_: Any) -> None:
        await op.apply(body, name, namespace, uid, meta, logger)

    # The clusters the resync visits: every UnisonCluster kopf sees in its watch scope.
    # (A kopf timer would do, but timers need a finalizer on every UnisonCluster, and
    # deleting a cluster must not depend on the operator running.)
    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    async def cluster_seen(event: kopf.RawEvent, name: str, namespace: Any,
                           **_: Any) -> None:
        op.cluster_seen(event, name, namespace)

    async def child_changed(body: kopf.Body, event: kopf.RawEvent, namespace: Any,
                            logger: Any, **_: Any) -> None:
        await op.child_changed(body, event, namespace, logger)

    for group, version, plural in CHILD_RESOURCES:
        kopf.on.event(group, version, plural, labels=MANAGED, registry=registry)(child_changed)

    return registry

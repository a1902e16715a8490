"""Pure rendering: a validated UnisonCluster -> the Kubernetes objects it consists of.

No I/O and no clock: the same spec, name and namespace always give the same list of
dicts, in the same order (ConfigMap and the TLS Secret first, then per part Services,
NetworkPolicy, StatefulSet, PDB, then the client). Keys and certificates are inputs (the
handler keeps them in the Secret, see pki.py), never made here. Every object carries `unisondb.io/applied-hash`, a digest of the rest of the
object, which lets the operator skip writes when the live object is already up to date.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from unison.config import render_toml
from unison.topology.plan import (
    RELAYER_NAME,
    TLS_CA_FILE,
    TLS_CERT_FILE,
    TLS_KEY_FILE,
    NodePlan,
    PortAllocation,
    allocation_of,
    node_ports,
)
from unison.topology.spec import API_VERSION, KIND, ClusterSpec, PlacementSpec, StorageSpec

DATA_DIR = "/data"
CONFIG_DIR = "/etc/unison"
# Not under CONFIG_DIR: that is a read-only ConfigMap volume.
TLS_DIR = "/etc/unison-tls"
RUN_AS = 10001
MANAGER = "unison-operator"
HASH_ANNOTATION = "unisondb.io/applied-hash"
CONFIG_HASH_ANNOTATION = "unisondb.io/config-hash"
TLS_HASH_ANNOTATION = "unisondb.io/tls-hash"
ZMQ_PORTS_ANNOTATION = "unisondb.io/zmq-ports"
PART_LABEL = "unisondb.io/part"
DEFAULT_RESOURCES = {
    "node": {"requests": {"cpu": "50m", "memory": "96Mi"}, "limits": {"memory": "512Mi"}},
    "client": {"requests": {"cpu": "20m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
}


@dataclass(frozen=True)
class Names:
    """Object names of one UnisonCluster, so handlers and tests agree with the renderer."""

    cluster: str

    @property
    def config_map(self) -> str:
        return f"{self.cluster}-config"

    def statefulset(self, part: str) -> str:
        return f"{self.cluster}-{part}"

    def headless(self, part: str) -> str:
        return f"{self.cluster}-{part}-headless"

    def service(self, part: str) -> str:
        return f"{self.cluster}-{part}"

    def network_policy(self, part: str) -> str:
        return f"{self.cluster}-{part}"

    @property
    def tls_secret(self) -> str:
        return f"{self.cluster}-tls"

    @property
    def client(self) -> str:
        return f"{self.cluster}-client"


def labels(cluster: str, component: str, part: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "unison",
        "app.kubernetes.io/instance": cluster,
        "app.kubernetes.io/component": component,
        "app.kubernetes.io/part-of": "unison",
        "app.kubernetes.io/managed-by": MANAGER,
        PART_LABEL: part,
    }


def selector(cluster: str, part: str) -> dict[str, str]:
    """Pod selector of a part; kept minimal because StatefulSet selectors are immutable."""
    return {"app.kubernetes.io/instance": cluster, "app.kubernetes.io/name": "unison",
            PART_LABEL: part}


def digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def k8s_plans(spec: ClusterSpec, name: str, namespace: str,
              ports: PortAllocation | None = None) -> list[NodePlan]:
    """Node plans as the pods see them: data in /data, upstreams via headless-Service DNS;
    `ports` is the allocation the cluster already has (see unison.topology.plan.PortAllocation)."""
    names = Names(name)

    def upstream(dc: str, port: int) -> str:
        pod = f"{names.statefulset(dc)}-0"
        return f"{pod}.{names.headless(dc)}.{namespace}.svc.{spec.cluster_domain}:{port}"

    return spec.plan(base_dir=lambda _node: DATA_DIR, upstream_address=upstream,
                     allocation=ports, tls_dir=TLS_DIR if spec.tls.enabled else None)


def tls_dns_names(spec: ClusterSpec, name: str, namespace: str, part: str) -> list[str]:
    """The names a part's certificate is valid for: its pods through the headless Service
    (what the relayer dials, see k8s_plans; a wildcard, so relayer replicas need no new
    certificate) and its client Service, short and qualified."""
    names = Names(name)
    svc, headless = names.service(part), names.headless(part)
    domain = f"{namespace}.svc.{spec.cluster_domain}"
    return [f"*.{headless}.{domain}", f"{names.statefulset(part)}-0.{headless}.{domain}",
            f"{headless}.{domain}", f"{svc}.{domain}", f"{svc}.{namespace}.svc",
            f"{svc}.{namespace}", svc]


# Keys of the TLS Secret (pki.py fills them): the CA, and a certificate and key per part.
SECRET_CA_CERT, SECRET_CA_KEY = "ca.crt", "ca.key"


def secret_cert(part: str) -> str:
    return f"{part}.crt"


def secret_key(part: str) -> str:
    return f"{part}.key"


def tls_parts(spec: ClusterSpec, name: str, namespace: str) -> dict[str, list[str]]:
    """part -> DNS names, for every part that needs a certificate (none without TLS)."""
    if not spec.tls.enabled:
        return {}
    parts = [dc.name for dc in spec.datacenters] + [RELAYER_NAME]
    return {p: tls_dns_names(spec, name, namespace, p) for p in parts}


def port_allocation(spec: ClusterSpec, name: str, namespace: str,
                    previous: PortAllocation | None = None) -> PortAllocation:
    """The ports `render(..., ports=previous)` gives the nodes, to record in status."""
    return allocation_of(k8s_plans(spec, name, namespace, previous),
                         spec.relayer.notifier_base_port)


def allocation_to_status(allocation: PortAllocation) -> dict[str, Any]:
    """status.ports: per node its index and ports, the relayer's notifier ports too."""
    out: dict[str, Any] = {}
    for node, i in sorted(allocation.indices.items(), key=lambda kv: kv[1]):
        http, grpc = node_ports(i)
        out[node] = {"index": i, "http": http, "grpc": grpc}
    if RELAYER_NAME in out and allocation.notifier_ports:
        out[RELAYER_NAME]["notifiers"] = dict(allocation.notifier_ports)
        out[RELAYER_NAME]["notifierBasePort"] = allocation.notifier_base_port
    return out


def allocation_from_status(ports: Any) -> PortAllocation | None:
    """The inverse of allocation_to_status; None when status has no (usable) ports."""
    if not isinstance(ports, dict) or not ports:
        return None
    indices = {node: v["index"] for node, v in ports.items()
               if isinstance(v, dict) and isinstance(v.get("index"), int)}
    relayer = ports.get(RELAYER_NAME)
    if not isinstance(relayer, dict):
        relayer = {}
    notifiers = {ns: p for ns, p in (relayer.get("notifiers") or {}).items()
                 if isinstance(p, int)}
    base = relayer.get("notifierBasePort")
    return PortAllocation(indices=indices, notifier_ports=notifiers,
                          notifier_base_port=base if isinstance(base, int) else None)


# ---------------------------------------------------------------- building blocks


def _meta(name: str, namespace: str, labels_: dict[str, str], owner: dict[str, Any] | None,
          annotations: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": namespace, "labels": dict(labels_)}
    if annotations:
        meta["annotations"] = dict(annotations)
    if owner:
        meta["ownerReferences"] = [owner]
    return meta


def _owner(name: str, uid: str | None) -> dict[str, Any] | None:
    if not uid:
        return None  # `unison render` output: no live owner to point at
    return {"apiVersion": API_VERSION, "kind": KIND, "name": name, "uid": uid,
            "controller": True, "blockOwnerDeletion": True}


def _resources(given: dict[str, dict[str, str]], kind: str) -> dict[str, Any]:
    return {k: dict(v) for k, v in (given or DEFAULT_RESOURCES[kind]).items()}


def _pod_security() -> dict[str, Any]:
    return {"runAsNonRoot": True, "runAsUser": RUN_AS, "runAsGroup": RUN_AS, "fsGroup": RUN_AS,
            "seccompProfile": {"type": "RuntimeDefault"}}


def _container_security() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]}}


def _placement(pod_spec: dict[str, Any], placement: PlacementSpec) -> None:
    sel = placement.selector()
    if sel:
        pod_spec["nodeSelector"] = dict(sorted(sel.items()))


def _ports(plan: NodePlan) -> list[dict[str, Any]]:
    ports = [{"name": "http", "containerPort": plan.http_port, "protocol": "TCP"},
             {"name": "grpc", "containerPort": plan.grpc_port, "protocol": "TCP"}]
    # Port names are at most 15 characters, so notifier ports are numbered in
    # followed-namespace order; the Service annotation maps namespaces to ports.
    for i, port in enumerate(plan.notifier_ports.values()):
        ports.append({"name": f"zmq-{i}", "containerPort": port, "protocol": "TCP"})
    return ports


def _zmq_annotation(plan: NodePlan) -> dict[str, str]:
    if not plan.notifier_ports:
        return {}
    return {ZMQ_PORTS_ANNOTATION: ",".join(f"{ns}={p}" for ns, p in plan.notifier_ports.items())}


def _pvc_template(storage: StorageSpec, labels_: dict[str, str]) -> dict[str, Any]:
    pvc_spec: dict[str, Any] = {"accessModes": ["ReadWriteOnce"],
                                "resources": {"requests": {"storage": storage.size}}}
    if storage.storage_class_name:
        pvc_spec["storageClassName"] = storage.storage_class_name
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data", "labels": dict(labels_)}, "spec": pvc_spec}


# ---------------------------------------------------------------- objects


def config_map(name: str, namespace: str, plans: list[NodePlan],
               owner: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _meta(Names(name).config_map, namespace, labels(name, "config", "config"),
                          owner),
        "data": {f"{p.name}.toml": render_toml(p.config) for p in plans},
    }


def tls_secret(name: str, namespace: str, data: Mapping[str, bytes],
               owner: dict[str, Any] | None) -> dict[str, Any]:
    """The cluster's CA and node credentials (made by the handler, see pki.py)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _meta(Names(name).tls_secret, namespace, labels(name, "tls", "tls"), owner),
        "type": "Opaque",
        "data": {k: base64.b64encode(v).decode() for k, v in sorted(data.items())},
    }


def tls_hash(data: Mapping[str, bytes] | None, part: str) -> str | None:
    """Digest of what a part's pods load (CA and own certificate): a new one rolls them."""
    if not data or secret_cert(part) not in data:
        return None
    return digest([data.get(SECRET_CA_CERT, b"").decode(), data[secret_cert(part)].decode()])


def _tls_volume(names: Names, part: str) -> dict[str, Any]:
    """Only the part's own certificate and key, and the CA certificate (not its key)."""
    items = [{"key": SECRET_CA_CERT, "path": TLS_CA_FILE},
             {"key": secret_cert(part), "path": TLS_CERT_FILE},
             {"key": secret_key(part), "path": TLS_KEY_FILE}]
    # 0440: root-owned files the pod's group (fsGroup) reads.
    return {"name": "tls", "secret": {"secretName": names.tls_secret, "items": items,
                                      "defaultMode": 0o440}}


def services(name: str, namespace: str, plan: NodePlan, component: str,
             owner: dict[str, Any] | None) -> list[dict[str, Any]]:
    names = Names(name)
    lbl = labels(name, component, plan.name)
    ports = [{"name": p["name"], "port": p["containerPort"], "targetPort": p["name"],
              "protocol": "TCP"} for p in _ports(plan)]
    headless = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(names.headless(plan.name), namespace, lbl, owner, _zmq_annotation(plan)),
        "spec": {
            "clusterIP": "None",
            # Pod DNS names must resolve before readiness: the relayer dials the
            # datacenter pods by name, and a relayer is only ready once it caught up.
            "publishNotReadyAddresses": True,
            "selector": selector(name, plan.name),
            "ports": ports,
        },
    }
    client = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(names.service(plan.name), namespace, lbl, owner, _zmq_annotation(plan)),
        "spec": {"type": "ClusterIP", "selector": selector(name, plan.name), "ports": ports},
    }
    return [headless, client]


def statefulset(name: str, namespace: str, spec: ClusterSpec, plan: NodePlan, toml: str,
                owner: dict[str, Any] | None, tls: Mapping[str, bytes] | None = None,
                ) -> dict[str, Any]:
    names = Names(name)
    if plan.role == "relayer":
        component, replicas = "relayer", spec.relayer.replicas
        storage, resources, placement = (spec.relayer.storage, spec.relayer.resources,
                                         spec.relayer.placement)
    else:
        dc = spec.datacenter(plan.name)
        # A datacenter is one writable primary: exactly one pod owns its namespaces.
        component, replicas = "datacenter", 1
        storage, resources, placement = dc.storage, dc.resources, dc.placement
    lbl = labels(name, component, plan.name)
    pod_spec = _node_pod_spec(spec, plan, names, resources)
    _placement(pod_spec, placement)
    # The config hash makes a TOML change roll exactly the pods it concerns; the TLS hash
    # does the same for a reissued certificate.
    template_annotations = {CONFIG_HASH_ANNOTATION: digest(toml)}
    if spec.tls.enabled:
        pod_spec["containers"][0]["volumeMounts"].append(
            {"name": "tls", "mountPath": TLS_DIR, "readOnly": True})
        pod_spec["volumes"].append(_tls_volume(names, plan.name))
        part_hash = tls_hash(tls, plan.name)
        if part_hash:
            template_annotations[TLS_HASH_ANNOTATION] = part_hash
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": _meta(names.statefulset(plan.name), namespace, lbl, owner),
        "spec": {
            "serviceName": names.headless(plan.name),
            "replicas": replicas,
            "podManagementPolicy": "Parallel",
            "selector": {"matchLabels": selector(name, plan.name)},
            "updateStrategy": {"type": "RollingUpdate"},
            "persistentVolumeClaimRetentionPolicy": {"whenDeleted": storage.reclaim_policy,
                                                     "whenScaled": "Retain"},
            "template": {
                "metadata": {"labels": lbl, "annotations": template_annotations},
                "spec": pod_spec,
            },
            "volumeClaimTemplates": [_pvc_template(storage, lbl)],
        },
    }


def _node_pod_spec(spec: ClusterSpec, plan: NodePlan, names: Names,
                   resources: dict[str, dict[str, str]]) -> dict[str, Any]:
    """A node's pod: its TOML from the ConfigMap, data on the claim, probes on /readyz."""
    config_file = f"{plan.name}.toml"
    return {
        "securityContext": _pod_security(),
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 30,
        "containers": [{
            "name": "node",
            "image": spec.image,
            "imagePullPolicy": spec.image_pull_policy,
            "args": ["node", "-config", f"{CONFIG_DIR}/{config_file}", plan.role],
            "env": [{"name": "PYTHONUNBUFFERED", "value": "1"}],
            "ports": _ports(plan),
            "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"},
                               "periodSeconds": 5, "timeoutSeconds": 3, "failureThreshold": 3},
            "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"},
                              "initialDelaySeconds": 10, "periodSeconds": 10,
                              "timeoutSeconds": 5, "failureThreshold": 6},
            "resources": _resources(resources, "node"),
            "securityContext": _container_security(),
            "volumeMounts": [
                {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
                {"name": "data", "mountPath": DATA_DIR},
                {"name": "tmp", "mountPath": "/tmp"},
            ],
        }],
        "volumes": [
            {"name": "config", "configMap": {"name": names.config_map,
                                             "items": [{"key": config_file,
                                                        "path": config_file}]}},
            {"name": "tmp", "emptyDir": {}},
        ],
    }


def network_policy(name: str, namespace: str, plan: NodePlan, plans: list[NodePlan],
                   component: str, owner: dict[str, Any] | None) -> dict[str, Any]:
    """Ingress of one part's pods: HTTP and ZeroMQ open to every source (users, the
    client); gRPC, which carries replication (mutual TLS unless spec.tls says no), only
    to the pods of this
    UnisonCluster that follow the part (a datacenter: the relayer) or, on the relayer, to
    any pod of this UnisonCluster. Ports are the node's own (its TOML), not named ports.
    Egress is not restricted. `kubectl port-forward` does not pass through NetworkPolicy."""

    def tcp(port: int) -> dict[str, Any]:
        return {"protocol": "TCP", "port": port}

    open_ports = [plan.http_port, *plan.notifier_ports.values()]
    ingress: list[dict[str, Any]] = [{"ports": [tcp(p) for p in open_ports]}]
    if plan.role == "relayer":
        peers = [{"podSelector": {"matchLabels": {
            k: v for k, v in selector(name, plan.name).items() if k != PART_LABEL}}}]
    else:
        peers = [{"podSelector": {"matchLabels": selector(name, p.name)}} for p in plans
                 if any(u.name == plan.name for u in p.config.upstreams)]
    # A rule with an empty `from` admits every source, so a datacenter nobody follows
    # gets no gRPC rule at all (its gRPC port then admits nothing).
    if peers:
        ingress.append({"from": peers, "ports": [tcp(plan.grpc_port)]})
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _meta(Names(name).network_policy(plan.name), namespace,
                          labels(name, component, plan.name), owner),
        "spec": {"podSelector": {"matchLabels": selector(name, plan.name)},
                 "policyTypes": ["Ingress"], "ingress": ingress},
    }


def pod_disruption_budget(name: str, namespace: str, part: str, component: str,
                          owner: dict[str, Any] | None) -> dict[str, Any]:
    # maxUnavailable 1: node drains still work for single-pod parts, and a multi-replica
    # relayer never loses more than one pod at a time to voluntary disruptions.
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _meta(Names(name).statefulset(part), namespace,
                          labels(name, component, part), owner),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector(name, part)}},
    }


def client_objects(name: str, namespace: str, spec: ClusterSpec, relayer: NodePlan,
                   owner: dict[str, Any] | None) -> list[dict[str, Any]]:
    names = Names(name)
    lbl = labels(name, "client", "client")
    host = names.service(RELAYER_NAME)
    args = ["client", "--http", f"http://{host}:{relayer.http_port}"]
    for ns, port in relayer.notifier_ports.items():
        args += ["--zmq", f"{ns}=tcp://{host}:{port}"]
    port = spec.client.state_port
    args += ["--state-host", "0.0.0.0", "--state-port", str(port)]
    pod_spec: dict[str, Any] = {
        "securityContext": _pod_security(),
        "enableServiceLinks": False,
        "containers": [{
            "name": "client",
            "image": spec.image,
            "imagePullPolicy": spec.image_pull_policy,
            "args": args,
            "env": [{"name": "PYTHONUNBUFFERED", "value": "1"}],
            "ports": [{"name": "http", "containerPort": port, "protocol": "TCP"}],
            # Ready once every namespace was scanned: before that /state is incomplete.
            "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"},
                               "periodSeconds": 5, "timeoutSeconds": 3},
            "livenessProbe": {"httpGet": {"path": "/healthz", "port": "http"},
                              "initialDelaySeconds": 10, "periodSeconds": 10,
                              "failureThreshold": 6},
            "resources": _resources(spec.client.resources, "client"),
            "securityContext": _container_security(),
            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
        }],
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    }
    _placement(pod_spec, spec.client.placement)
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta(names.client, namespace, lbl, owner),
        "spec": {
            "replicas": spec.client.replicas,
            "selector": {"matchLabels": selector(name, "client")},
            "template": {"metadata": {"labels": lbl}, "spec": pod_spec},
        },
    }
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _meta(names.client, namespace, lbl, owner),
        "spec": {"type": "ClusterIP", "selector": selector(name, "client"),
                 "ports": [{"name": "http", "port": port, "targetPort": "http",
                            "protocol": "TCP"}]},
    }
    return [service, deployment]


def with_hash(obj: dict[str, Any]) -> dict[str, Any]:
    """Stamp the object with a digest of its own content (the skip-write marker)."""
    meta = obj["metadata"]
    annotations = {k: v for k, v in meta.get("annotations", {}).items() if k != HASH_ANNOTATION}
    body = {**obj, "metadata": {**meta, "annotations": annotations}}
    annotations[HASH_ANNOTATION] = digest(body)
    meta["annotations"] = dict(sorted(annotations.items()))
    return obj


def render(spec: ClusterSpec, name: str, namespace: str, uid: str | None = None,
           ports: PortAllocation | None = None,
           tls: Mapping[str, bytes] | None = None) -> list[dict[str, Any]]:
    """Every object of the cluster, in apply order. `uid` adds owner references; `ports`
    keeps the ports nodes already have (without it: the i-th node gets index i); `tls` is
    the TLS Secret's data (pki.ensure). With spec.tls on and no `tls` (`unison render`),
    the pods still mount the Secret <name>-tls, which is then not rendered."""
    owner = _owner(name, uid)
    plans = k8s_plans(spec, name, namespace, ports)
    cm = config_map(name, namespace, plans, owner)
    objects: list[dict[str, Any]] = [cm]
    if spec.tls.enabled and tls:
        objects.append(tls_secret(name, namespace, tls, owner))
    for plan in plans:
        component = "relayer" if plan.role == "relayer" else "datacenter"
        objects += services(name, namespace, plan, component, owner)
        objects.append(network_policy(name, namespace, plan, plans, component, owner))
        objects.append(statefulset(name, namespace, spec, plan, cm["data"][f"{plan.name}.toml"],
                                   owner, tls))
        objects.append(pod_disruption_budget(name, namespace, plan.name, component, owner))
    if spec.client.enabled:
        objects += client_objects(name, namespace, spec, plans[-1], owner)
    return [with_hash(o) for o in objects]

"""UnisonCluster spec: parse, validate, apply defaults, plan the nodes.

One parser serves both deployment modes (`unison up` and the operator import it from
here, the data plane), so a manifest means the same thing on a laptop and on Kubernetes:

    from unison.topology.spec import SpecError, load_cluster, parse_cluster

    cluster = load_cluster("examples/ad-campaign.yaml")      # or parse_cluster(dict)
    plans = cluster.plan(base_dir="/tmp/unison")              # local mode defaults
    # -> [NodePlan(name="dc1", ...), NodePlan(name="dc2", ...), NodePlan(name="relayer", ...)]
    # each plan.config is a unison.config.NodeConfig; render it with unison.config.render_toml.

`parse_cluster` accepts a whole manifest (apiVersion/kind/metadata/spec) or just the
spec mapping, fills in defaults and raises `SpecError` whose message starts with the
field path (`spec.datacenters[1].name: must be unique, "dc1" is used twice`).

`ClusterSpec.plan(base_dir=..., upstream_address=...)` delegates to
`unison.topology.plan.plan_cluster`, so ports and names come from one place:
- `base_dir`: a string (each node gets `<base_dir>/<node name>`) or a function
  node name -> data directory (the operator uses `lambda _: "/data"`);
- `upstream_address(dc_name, grpc_port) -> "host:port"` the relayer dials; the default
  is `127.0.0.1:<port>`, i.e. local mode.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from unison.config.model import NAMESPACE_RE
from unison.config.units import format_duration, parse_duration
from unison.errors import SpecError
from unison.topology.plan import (
    GRPC_BASE_PORT,
    HTTP_BASE_PORT,
    NOTIFIER_BASE_PORT,
    RELAYER_NAME,
    NodePlan,
    PortAllocation,
    plan_cluster,
)

GROUP = "unisondb.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "UnisonCluster"
PLURAL = "unisonclusters"

DEFAULT_IMAGE = "unison:0.1.0"
DEFAULT_STORAGE_SIZE = "1Gi"
DEFAULT_CLIENT_STATE_PORT = 8090
# Reserved because they name other parts of the cluster (node names become TOML file
# names and object name suffixes).
RESERVED_NAMES = frozenset({RELAYER_NAME, "client", "config"})
# Kubernetes object names built from these must stay valid DNS labels (63 characters);
# StatefulSet pod names also get a controller-revision hash label of 11 characters.
MAX_OBJECT_BASE = 52

DNS_LABEL_RE = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
QUANTITY_RE = re.compile(r"^[0-9]+(\.[0-9]+)?(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei)?$")
LABEL_KEY_RE = re.compile(
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$"
)
LABEL_VALUE_RE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
ZONE_LABEL = "topology.kubernetes.io/zone"
RECLAIM_POLICIES = ("Retain", "Delete")
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
LOG_LEVELS = ("debug", "info", "warn", "error")
# spec.storage.walFsyncInterval: a Go duration in whole units of h, m, s or ms ("1s",
# "200ms", "1m30s"; "0"/"0s" = off), so every value is a whole number of milliseconds,
# as the node TOML writes it, and 0 or at least 1ms, as the node requires. The CRD has the
# same pattern and a CEL rule for the upper bound.
WAL_FSYNC_INTERVAL_RE = re.compile(r"^(0|([0-9]+(ms|h|m|s))+)$")
MAX_WAL_FSYNC_INTERVAL = 3600.0  # seconds (1h): what a power cut may lose, at most
MAX_DURATION_CHARS = 32
_QUANTITY_SUFFIX = {
    "": 1, "m": 1e-3, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
}


# ---------------------------------------------------------------- dataclasses


@dataclass(frozen=True)
class StorageSpec:
    size: str = DEFAULT_STORAGE_SIZE
    storage_class_name: str | None = None
    # What happens to the PVCs when the UnisonCluster (and so the StatefulSet) is deleted.
    reclaim_policy: str = "Retain"


@dataclass(frozen=True)
class PlacementSpec:
    node_selector: dict[str, str] = field(default_factory=dict)
    zone: str | None = None

    def selector(self) -> dict[str, str]:
        """The pod nodeSelector: the explicit one plus the zone label, if any."""
        out = dict(self.node_selector)
        if self.zone:
            out[ZONE_LABEL] = self.zone
        return out


@dataclass(frozen=True)
class DatacenterSpec:
    name: str
    namespaces: tuple[str, ...]
    storage: StorageSpec = field(default_factory=StorageSpec)
    resources: dict[str, dict[str, str]] = field(default_factory=dict)
    placement: PlacementSpec = field(default_factory=PlacementSpec)
    # PUTs of CRDT keys merged into the stored value (storage_config.crdt_merge_namespaces)
    crdt_merge: bool = True


@dataclass(frozen=True)
class RelayerSpec:
    follow: tuple[str, ...]
    replicas: int = 1
    notifier_base_port: int = NOTIFIER_BASE_PORT
    storage: StorageSpec = field(default_factory=StorageSpec)
    resources: dict[str, dict[str, str]] = field(default_factory=dict)
    placement: PlacementSpec = field(default_factory=PlacementSpec)


@dataclass(frozen=True)
class ClientSpec:
    enabled: bool = True
    replicas: int = 1
    state_port: int = DEFAULT_CLIENT_STATE_PORT
    resources: dict[str, dict[str, str]] = field(default_factory=dict)
    placement: PlacementSpec = field(default_factory=PlacementSpec)


@dataclass(frozen=True)
class TLSSpec:
    # Mutual TLS for replication on Kubernetes (the operator's CA); local mode
    # (`unison up`, loopback only) stays plaintext whatever this says.
    enabled: bool = True


@dataclass(frozen=True)
class ClusterStorageSpec:
    """Storage settings of every node of the cluster (the datacenters and the relayer)."""

    # Seconds (storage_config.wal_fsync_interval); 0: acknowledged means fsynced (the
    # default); > 0: acknowledged once written, the WAL fsynced every this often.
    wal_fsync_interval: float = 0.0


@dataclass(frozen=True)
class ClusterSpec:
    datacenters: tuple[DatacenterSpec, ...]
    relayer: RelayerSpec
    client: ClientSpec = field(default_factory=ClientSpec)
    tls: TLSSpec = field(default_factory=TLSSpec)
    storage: ClusterStorageSpec = field(default_factory=ClusterStorageSpec)
    image: str = DEFAULT_IMAGE
    image_pull_policy: str = "IfNotPresent"
    log_level: str = "info"
    cluster_domain: str = "cluster.local"
    name: str | None = None  # metadata.name when parsed from a manifest
    namespace: str | None = None  # metadata.namespace, if the manifest gives one

    def datacenter(self, name: str) -> DatacenterSpec:
        for dc in self.datacenters:
            if dc.name == name:
                return dc
        raise KeyError(name)

    def plan(
        self,
        *,
        base_dir: str | Path | Callable[[str], str],
        upstream_address: Callable[[str, int], str] | None = None,
        allocation: PortAllocation | None = None,
        tls_dir: str | None = None,
    ) -> list[NodePlan]:
        """The nodes of this cluster (datacenters in order, then the relayer).

        `base_dir` is a directory (node data goes to `<base_dir>/<node>`) or a function
        of the node name; `upstream_address(dc, grpc_port)` defaults to 127.0.0.1;
        `allocation` keeps the ports of nodes that already have some (the operator's);
        `tls_dir` turns on mutual TLS with each node's files there (see plan_cluster).
        """
        if callable(base_dir):
            dir_of = base_dir
        else:
            root = str(base_dir).rstrip("/") or "/"
            def dir_of(node: str) -> str:
                return f"{root}/{node}" if root != "/" else f"/{node}"
        address = upstream_address or (lambda _dc, port: f"127.0.0.1:{port}")
        return plan_cluster(
            [(dc.name, list(dc.namespaces)) for dc in self.datacenters],
            list(self.relayer.follow),
            notifier_base_port=self.relayer.notifier_base_port,
            base_dir=dir_of,
            upstream_address=address,
            log_level=self.log_level,
            allocation=allocation,
            crdt_merge={dc.name for dc in self.datacenters if dc.crdt_merge},
            tls_dir=tls_dir,
            wal_fsync_interval=self.storage.wal_fsync_interval,
        )


# ---------------------------------------------------------------- parsing helpers


def _fmt(value: Any) -> str:
    return f'"{value}"' if isinstance(value, str) else repr(value)


def _mapping(value: Any, path: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SpecError(f"{path}: expected an object, got {_fmt(value)}")
    return value


def _known(data: Mapping[str, Any], path: str, known: tuple[str, ...]) -> None:
    for key in data:
        if key not in known:
            raise SpecError(f"{path}.{key}: unknown field (known fields: {', '.join(known)})")


def _str(data: Mapping[str, Any], key: str, path: str, default: str | None = None, *,
         required: bool = False) -> str | None:
    value = data.get(key)
    if value is None:
        if required:
            raise SpecError(f"{path}.{key}: required field is missing")
        return default
    if not isinstance(value, str):
        raise SpecError(f"{path}.{key}: expected a string, got {_fmt(value)}")
    if required and not value:
        raise SpecError(f"{path}.{key}: must not be empty")
    return value


def _int(data: Mapping[str, Any], key: str, path: str, default: int, lo: int, hi: int) -> int:
    value = data.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError(f"{path}.{key}: expected an integer, got {_fmt(value)}")
    if not lo <= value <= hi:
        raise SpecError(f"{path}.{key}: must be between {lo} and {hi}, got {value}")
    return value


def _bool(data: Mapping[str, Any], key: str, path: str, default: bool) -> bool:
    value = data.get(key)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise SpecError(f"{path}.{key}: expected true or false, got {_fmt(value)}")
    return value


def _enum(data: Mapping[str, Any], key: str, path: str, default: str,
          allowed: tuple[str, ...]) -> str:
    value = _str(data, key, path, default)
    assert value is not None
    if value not in allowed:
        raise SpecError(f"{path}.{key}: must be one of {', '.join(allowed)}, got {_fmt(value)}")
    return value


def _str_list(data: Mapping[str, Any], key: str, path: str) -> list[str] | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, list):
        raise SpecError(f"{path}.{key}: expected a list of strings, got {_fmt(value)}")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise SpecError(f"{path}.{key}[{i}]: expected a string, got {_fmt(item)}")
    return list(value)


def quantity_value(text: str) -> float:
    """A Kubernetes quantity ('1Gi', '500m') as a number (bytes, cores)."""
    m = QUANTITY_RE.match(text)
    if not m:
        raise ValueError(f"not a quantity: {text!r}")
    suffix = m.group(2) or ""
    return float(text[: len(text) - len(suffix)]) * _QUANTITY_SUFFIX[suffix]


def _quantity(value: Any, path: str) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str) or not QUANTITY_RE.match(value):
        raise SpecError(
            f"{path}: expected a Kubernetes quantity like \"1Gi\" or \"500m\", got {_fmt(value)}"
        )
    return value


def _storage(data: Any, path: str) -> StorageSpec:
    d = _mapping(data, path)
    _known(d, path, ("size", "storageClassName", "reclaimPolicy"))
    size = _quantity(d.get("size", DEFAULT_STORAGE_SIZE), f"{path}.size")
    if quantity_value(size) <= 0:
        raise SpecError(f"{path}.size: must be greater than zero, got {_fmt(size)}")
    sc = _str(d, "storageClassName", path)
    if sc is not None and not re.match(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", sc):
        raise SpecError(f"{path}.storageClassName: not a valid storage class name: {_fmt(sc)}")
    policy = _enum(d, "reclaimPolicy", path, "Retain", RECLAIM_POLICIES)
    return StorageSpec(size=size, storage_class_name=sc, reclaim_policy=policy)


def _resources(data: Any, path: str) -> dict[str, dict[str, str]]:
    d = _mapping(data, path)
    _known(d, path, ("requests", "limits"))
    out: dict[str, dict[str, str]] = {}
    for kind in ("requests", "limits"):
        section = _mapping(d.get(kind), f"{path}.{kind}")
        if section:
            out[kind] = {
                str(name): _quantity(q, f"{path}.{kind}.{name}") for name, q in section.items()
            }
    for name, limit in out.get("limits", {}).items():
        request = out.get("requests", {}).get(name)
        if request is not None and quantity_value(request) > quantity_value(limit):
            raise SpecError(
                f"{path}.requests.{name}: request {request} is greater than the limit {limit}"
            )
    return out


def _placement(d: Mapping[str, Any], path: str) -> PlacementSpec:
    selector = _mapping(d.get("nodeSelector"), f"{path}.nodeSelector")
    out: dict[str, str] = {}
    for key, value in selector.items():
        if not isinstance(key, str) or not LABEL_KEY_RE.match(key):
            raise SpecError(f"{path}.nodeSelector: invalid label key {_fmt(key)}")
        if not isinstance(value, str) or not LABEL_VALUE_RE.match(value):
            raise SpecError(f"{path}.nodeSelector.{key}: invalid label value {_fmt(value)}")
        out[key] = value
    zone = _str(d, "zone", path)
    if zone is not None and (not zone or not LABEL_VALUE_RE.match(zone)):
        raise SpecError(f"{path}.zone: invalid zone name {_fmt(zone)}")
    if zone and out.get(ZONE_LABEL, zone) != zone:
        raise SpecError(f"{path}.zone: {_fmt(zone)} contradicts nodeSelector.{ZONE_LABEL}")
    return PlacementSpec(node_selector=out, zone=zone or None)


# ---------------------------------------------------------------- the parser


def _datacenter(data: Any, path: str) -> DatacenterSpec:
    d = _mapping(data, path)
    _known(d, path, ("name", "namespaces", "crdtMerge", "storage", "resources", "nodeSelector",
                     "zone"))
    name = _str(d, "name", path, required=True)
    assert name is not None
    if not DNS_LABEL_RE.match(name) or len(name) > 30:
        raise SpecError(
            f"{path}.name: {_fmt(name)} is not a valid datacenter name (lowercase letters, "
            "digits and '-', starting with a letter, at most 30 characters)"
        )
    if name in RESERVED_NAMES:
        raise SpecError(f"{path}.name: {_fmt(name)} is reserved, choose another name")
    namespaces = _str_list(d, "namespaces", path)
    if not namespaces:
        raise SpecError(f"{path}.namespaces: at least one namespace is required")
    for i, ns in enumerate(namespaces):
        if not NAMESPACE_RE.match(ns):
            raise SpecError(
                f"{path}.namespaces[{i}]: invalid namespace {_fmt(ns)} (lowercase letters, "
                "digits, '.', '_' and '-', at most 63 characters)"
            )
    return DatacenterSpec(
        name=name,
        namespaces=tuple(namespaces),
        storage=_storage(d.get("storage"), f"{path}.storage"),
        resources=_resources(d.get("resources"), f"{path}.resources"),
        placement=_placement(d, path),
        crdt_merge=_bool(d, "crdtMerge", path, True),
    )


def _check_unique(datacenters: list[DatacenterSpec]) -> None:
    names: dict[str, int] = {}
    owners: dict[str, str] = {}
    for i, dc in enumerate(datacenters):
        path = f"spec.datacenters[{i}]"
        if dc.name in names:
            raise SpecError(f'{path}.name: must be unique, "{dc.name}" is used twice')
        names[dc.name] = i
        for j, ns in enumerate(dc.namespaces):
            if ns in owners:
                where = "twice in this datacenter" if owners[ns] == dc.name else (
                    f'already by datacenter "{owners[ns]}"')
                raise SpecError(
                    f'{path}.namespaces[{j}]: must be unique across datacenters, "{ns}" is '
                    f"used {where}"
                )
            owners[ns] = dc.name


def _relayer(data: Any, datacenters: list[DatacenterSpec]) -> RelayerSpec:
    path = "spec.relayer"
    d = _mapping(data, path)
    _known(d, path, ("replicas", "follow", "notifierBasePort", "storage", "resources",
                     "nodeSelector", "zone"))
    known = [dc.name for dc in datacenters]
    follow = _str_list(d, "follow", path)
    if follow is None:
        follow = known
    if not follow:
        raise SpecError(f"{path}.follow: the relayer must follow at least one datacenter")
    seen: set[str] = set()
    for i, name in enumerate(follow):
        if name not in known:
            raise SpecError(
                f"{path}.follow[{i}]: no datacenter is named {_fmt(name)} "
                f"(datacenters: {', '.join(known)})"
            )
        if name in seen:
            raise SpecError(f'{path}.follow[{i}]: must be unique, "{name}" is listed twice')
        seen.add(name)
    base = _int(d, "notifierBasePort", path, NOTIFIER_BASE_PORT, 1024, 65535)
    n_ports = sum(len(dc.namespaces) for dc in datacenters if dc.name in seen)
    if base + n_ports - 1 > 65535:
        raise SpecError(
            f"{path}.notifierBasePort: {base} leaves no room for {n_ports} notifier ports"
        )
    # Local mode runs every node on one host, so notifier ports must not collide with
    # any node's HTTP or gRPC port (node i: 8000+i and 4000+i).
    n_nodes = len(datacenters) + 1
    taken = {HTTP_BASE_PORT + i for i in range(1, n_nodes + 1)}
    taken |= {GRPC_BASE_PORT + i for i in range(1, n_nodes + 1)}
    clash = sorted(taken & set(range(base, base + n_ports)))
    if clash:
        raise SpecError(
            f"{path}.notifierBasePort: notifier ports {base}-{base + n_ports - 1} overlap "
            f"node port {clash[0]} (nodes use {HTTP_BASE_PORT + 1}+ and {GRPC_BASE_PORT + 1}+)"
        )
    return RelayerSpec(
        follow=tuple(follow),
        replicas=_int(d, "replicas", path, 1, 1, 9),
        notifier_base_port=base,
        storage=_storage(d.get("storage"), f"{path}.storage"),
        resources=_resources(d.get("resources"), f"{path}.resources"),
        placement=_placement(d, path),
    )


def _client(data: Any) -> ClientSpec:
    path = "spec.client"
    d = _mapping(data, path)
    _known(d, path, ("enabled", "replicas", "statePort", "resources", "nodeSelector", "zone"))
    return ClientSpec(
        enabled=_bool(d, "enabled", path, True),
        replicas=_int(d, "replicas", path, 1, 0, 9),
        state_port=_int(d, "statePort", path, DEFAULT_CLIENT_STATE_PORT, 1024, 65535),
        resources=_resources(d.get("resources"), f"{path}.resources"),
        placement=_placement(d, path),
    )


def _tls(data: Any) -> TLSSpec:
    path = "spec.tls"
    d = _mapping(data, path)
    _known(d, path, ("enabled",))
    return TLSSpec(enabled=_bool(d, "enabled", path, True))


def _cluster_storage(data: Any) -> ClusterStorageSpec:
    path = "spec.storage"
    d = _mapping(data, path)
    _known(d, path, ("walFsyncInterval",))
    text = _str(d, "walFsyncInterval", path)
    if text is None:
        return ClusterStorageSpec()
    where = f"{path}.walFsyncInterval"
    if len(text) > MAX_DURATION_CHARS or not WAL_FSYNC_INTERVAL_RE.match(text):
        raise SpecError(
            f"{where}: expected a duration in whole h, m, s or ms like \"1s\", \"200ms\" or "
            f"\"1m30s\" (\"0s\": every write fsynced before it is acknowledged), got {_fmt(text)}"
        )
    seconds = parse_duration(text, where)
    if seconds > MAX_WAL_FSYNC_INTERVAL:
        raise SpecError(f"{where}: must be at most {format_duration(MAX_WAL_FSYNC_INTERVAL)} "
                        f"(a power cut may lose this much acknowledged writing), got {_fmt(text)}")
    return ClusterStorageSpec(wal_fsync_interval=seconds)


def _check_name(name: str, datacenters: list[DatacenterSpec]) -> None:
    if not DNS_LABEL_RE.match(name):
        raise SpecError(
            f"metadata.name: {_fmt(name)} is not a valid cluster name (lowercase letters, "
            "digits and '-', starting with a letter)"
        )
    longest = max([len(dc.name) for dc in datacenters] + [len(RELAYER_NAME)])
    if len(name) + 1 + longest > MAX_OBJECT_BASE:
        raise SpecError(
            f"metadata.name: {_fmt(name)} is too long: object names "
            f"\"{name}-<datacenter>\" must stay within {MAX_OBJECT_BASE} characters"
        )


def parse_cluster(manifest_or_spec: Mapping[str, Any]) -> ClusterSpec:
    """Validate a UnisonCluster manifest (or its spec) and apply defaults.

    Raises SpecError naming the field, e.g. `spec.relayer.follow[0]: no datacenter ...`.
    """
    if not isinstance(manifest_or_spec, Mapping):
        raise SpecError(f"expected a UnisonCluster object, got {_fmt(manifest_or_spec)}")
    doc = manifest_or_spec
    name: str | None = None
    namespace: str | None = None
    if "kind" in doc or "apiVersion" in doc or "metadata" in doc:
        if doc.get("kind") != KIND:
            raise SpecError(f"kind: expected {KIND}, got {_fmt(doc.get('kind'))}")
        if doc.get("apiVersion") != API_VERSION:
            raise SpecError(f"apiVersion: expected {API_VERSION}, got {_fmt(doc.get('apiVersion'))}")
        meta = _mapping(doc.get("metadata"), "metadata")
        name = _str(meta, "name", "metadata", required=True)
        namespace = _str(meta, "namespace", "metadata")
        spec = _mapping(doc.get("spec"), "spec")
    else:
        spec = doc

    path = "spec"
    _known(spec, path, ("image", "imagePullPolicy", "logLevel", "clusterDomain", "datacenters",
                        "relayer", "client", "tls", "storage"))
    raw_dcs = spec.get("datacenters")
    if raw_dcs is None:
        raise SpecError("spec.datacenters: required field is missing")
    if not isinstance(raw_dcs, list):
        raise SpecError(f"spec.datacenters: expected a list, got {_fmt(raw_dcs)}")
    if not raw_dcs:
        raise SpecError("spec.datacenters: at least one datacenter is required")
    datacenters = [_datacenter(d, f"spec.datacenters[{i}]") for i, d in enumerate(raw_dcs)]
    _check_unique(datacenters)
    if name is not None:
        _check_name(name, datacenters)

    image = _str(spec, "image", path, DEFAULT_IMAGE)
    if not image or any(c.isspace() for c in image):
        raise SpecError(f"spec.image: not a valid image reference: {_fmt(image)}")
    domain = _str(spec, "clusterDomain", path, "cluster.local")
    if not domain or not re.match(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$", domain):
        raise SpecError(f"spec.clusterDomain: not a valid DNS domain: {_fmt(domain)}")
    return ClusterSpec(
        datacenters=tuple(datacenters),
        relayer=_relayer(spec.get("relayer"), datacenters),
        client=_client(spec.get("client")),
        tls=_tls(spec.get("tls")),
        storage=_cluster_storage(spec.get("storage")),
        image=image,
        image_pull_policy=_enum(spec, "imagePullPolicy", path, "IfNotPresent", PULL_POLICIES),
        log_level=_enum(spec, "logLevel", path, "info", LOG_LEVELS),
        cluster_domain=domain,
        name=name,
        namespace=namespace,
    )


def read_cluster_document(path: str | Path) -> dict[str, Any]:
    """The UnisonCluster document of a YAML file: its only document, or the one document of
    kind UnisonCluster among several. Errors name the file (and the line for bad YAML)."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise SpecError(f"{p}: cannot read file: {e.strerror or e}") from None
    except UnicodeDecodeError as e:  # a ValueError, not an OSError: an editor's Latin-1 save
        bad = e.object[e.start:e.start + 1].hex()
        raise SpecError(f"{p}: not UTF-8 text (byte 0x{bad} at offset {e.start}); "
                        "save the file as UTF-8") from None
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" (line {where.line + 1}, column {where.column + 1})" if where else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise SpecError(f"{p}: not valid YAML{at}: {problem}") from None
    found = [d for d in docs if isinstance(d, Mapping) and d.get("kind") == KIND]
    if len(found) > 1:
        raise SpecError(f"{p}: {len(found)} {KIND} documents found, expected one")
    # A lone document without a kind is taken as the cluster, so its errors name its fields.
    lone = docs[0] if len(docs) == 1 else None
    doc = found[0] if found else lone if not (isinstance(lone, Mapping) and "kind" in lone) \
        else None
    if doc is None:
        raise SpecError(f"{p}: no {KIND} document found (kind: {KIND})")
    if not isinstance(doc, Mapping):
        raise SpecError(f"{p}: expected a {KIND} manifest (a YAML mapping), "
                        f"got {type(doc).__name__}")
    return dict(doc)


def load_cluster(path: str | Path) -> ClusterSpec:
    """Read and validate the UnisonCluster of a YAML file."""
    doc = read_cluster_document(path)
    try:
        return parse_cluster(doc)
    except SpecError as e:
        raise SpecError(f"{path}: {e}") from None

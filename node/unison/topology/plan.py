"""Cluster planning: the nodes of a UnisonCluster, their names, ports and NodeConfigs.

The one source of node names and ports for local mode (`unison up`) and Kubernetes (the
operator): both plan with `plan_cluster` and differ only in where data lives and which
address the relayer dials.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

from unison.config.model import (
    GrpcConfig,
    HttpConfig,
    LogConfig,
    NodeConfig,
    NotifierConfig,
    StorageConfig,
    UpstreamConfig,
)

# Port convention shared by local mode and Kubernetes: the i-th node (1-based,
# datacenters in order, then the relayer) gets HTTP 8000+i and gRPC 4000+i.
HTTP_BASE_PORT = 8000
GRPC_BASE_PORT = 4000
NOTIFIER_BASE_PORT = 5555
RELAYER_NAME = "relayer"
# Planned nodes listen on every interface (a pod must be reachable through its Service);
# local mode narrows HTTP and gRPC to loopback.
ALL_INTERFACES = "0.0.0.0"


@dataclass(frozen=True)
class NodePlan:
    """One node of a cluster: its name, role, ports and config."""

    name: str
    role: str  # "replicator" or "relayer"
    index: int  # port index (HTTP 8000+i): position, datacenters then relayer, unless kept
    config: NodeConfig

    @property
    def http_port(self) -> int:
        return self.config.http_port

    @property
    def grpc_port(self) -> int:
        return self.config.grpc.port

    @property
    def notifier_ports(self) -> dict[str, int]:
        return {n.namespace: n.bind_port for n in self.config.notifiers}


@dataclass(frozen=True)
class PortAllocation:
    """Ports a cluster's nodes already have, so adding or removing a datacenter does not
    renumber the others (on Kubernetes that would restart them and break port-forwards).

    `indices` maps node name -> index (HTTP 8000+i, gRPC 4000+i); `notifier_ports` maps a
    relayed namespace -> its ZeroMQ port, valid for `notifier_base_port` only (changing the
    base port is asking for new notifier ports).
    """

    indices: dict[str, int] = field(default_factory=dict)
    notifier_ports: dict[str, int] = field(default_factory=dict)
    notifier_base_port: int | None = None


def allocation_of(plans: Sequence[NodePlan], notifier_base_port: int) -> PortAllocation:
    """The allocation a list of plans uses (to pass back to plan_cluster next time)."""
    notifiers = {ns: p for plan in plans for ns, p in plan.notifier_ports.items()}
    return PortAllocation(indices={p.name: p.index for p in plans}, notifier_ports=notifiers,
                          notifier_base_port=notifier_base_port)


def _lowest_free(start: int, used: set[int]) -> int:
    n = start
    while n in used:
        n += 1
    used.add(n)
    return n


def _node_indices(nodes: Sequence[str], previous: dict[str, int]) -> dict[str, int]:
    """Previous indices where still valid and unique; new nodes get the lowest free ones."""
    used: set[int] = set()
    out: dict[str, int] = {}
    for node in nodes:
        i = previous.get(node)
        if isinstance(i, int) and 1 <= i and i not in used and HTTP_BASE_PORT + i <= 65535:
            out[node] = i
            used.add(i)
    for node in nodes:
        if node not in out:
            out[node] = _lowest_free(1, used)
    return out


def _notifier_ports(namespaces: Sequence[str], base: int, allocation: PortAllocation | None,
                    reserved: set[int]) -> dict[str, int]:
    previous = (allocation.notifier_ports
                if allocation and allocation.notifier_base_port == base else {})
    used = set(reserved)  # the relayer's own HTTP and gRPC ports
    out: dict[str, int] = {}
    for ns in namespaces:
        p = previous.get(ns)
        if isinstance(p, int) and base <= p <= 65535 and p not in used:
            out[ns] = p
            used.add(p)
    for ns in namespaces:
        if ns not in out:
            out[ns] = _lowest_free(base, used)
    return {ns: out[ns] for ns in namespaces}


# File names of a node's credentials in `tls_dir` (one set per node: the certificate it
# serves replication with is also the client certificate it follows upstreams with).
TLS_CERT_FILE, TLS_KEY_FILE, TLS_CA_FILE = "tls.crt", "tls.key", "ca.crt"


def _grpc_config(port: int, tls_dir: str | None) -> GrpcConfig:
    if tls_dir is None:
        return GrpcConfig(port=port, allow_insecure=True)
    return GrpcConfig(port=port, allow_insecure=False, cert_path=f"{tls_dir}/{TLS_CERT_FILE}",
                      key_path=f"{tls_dir}/{TLS_KEY_FILE}", ca_path=f"{tls_dir}/{TLS_CA_FILE}")


def node_ports(index: int) -> tuple[int, int]:
    """(http, grpc) ports of the index-th node (1-based)."""
    return HTTP_BASE_PORT + index, GRPC_BASE_PORT + index


def plan_cluster(
    datacenters: Sequence[tuple[str, Sequence[str]]],
    follow: Sequence[str],
    *,
    notifier_base_port: int = NOTIFIER_BASE_PORT,
    base_dir: Callable[[str], str],
    upstream_address: Callable[[str, int], str],
    log_level: str = "info",
    allocation: PortAllocation | None = None,
    crdt_merge: Collection[str] | None = None,
    tls_dir: str | None = None,
    wal_fsync_interval: float = 0.0,
) -> list[NodePlan]:
    """The nodes of a cluster: one primary per datacenter, then one relayer.

    `datacenters` is [(name, namespaces)] in order; `follow` names the datacenters the
    relayer follows (every followed namespace gets a notifier port, counting up from
    `notifier_base_port`). `base_dir(node_name)` gives each node's data directory and
    `upstream_address(dc_name, grpc_port)` the address the relayer dials, so local mode
    and Kubernetes differ only in those two. Without `tls_dir` their gRPC is plaintext,
    asked for explicitly (the rendered TOML says allow_insecure = true); with it, every
    node serves and follows over mutual TLS with `tls_dir`/tls.crt, tls.key and ca.crt
    (the operator mounts each node's own files there).

    Without `allocation` the i-th node (datacenters in order, then the relayer) gets index
    i. With one, nodes and namespaces it lists keep their ports and new ones get the lowest
    free index or notifier port.

    `crdt_merge` names the datacenters whose namespaces merge CRDT writes
    (storage_config.crdt_merge_namespaces); None: every datacenter (the default).

    `wal_fsync_interval` (seconds; storage_config.wal_fsync_interval) applies to every node,
    the relayer too (it re-fetches from its upstreams what a power cut took); 0: synced.
    """
    indices = _node_indices([name for name, _ in datacenters] + [RELAYER_NAME],
                            allocation.indices if allocation else {})
    plans = [_datacenter(name, list(namespaces), indices[name], base_dir, log_level,
                         crdt_merge is None or name in crdt_merge, tls_dir, wal_fsync_interval)
             for name, namespaces in datacenters]
    by_name = {p.name: p for p in plans}
    index = indices[RELAYER_NAME]
    http, grpc = node_ports(index)
    relayed = [ns for dc in follow for ns in by_name[dc].config.storage.namespaces]
    notifier_ports = _notifier_ports(relayed, notifier_base_port, allocation, {http, grpc})
    server = _grpc_config(grpc, tls_dir)
    cfg = NodeConfig(
        http_port=http,
        grpc=server,
        http=HttpConfig(listen_ip=ALL_INTERFACES),
        storage=StorageConfig(base_dir=base_dir(RELAYER_NAME), namespaces=relayed,
                              wal_fsync_interval=wal_fsync_interval),
        upstreams=[_upstream(by_name[dc], upstream_address, server) for dc in follow],
        notifiers=[NotifierConfig(namespace=ns, bind_port=notifier_ports[ns]) for ns in relayed],
        log=LogConfig(log_level=log_level),
        source=f"<{RELAYER_NAME}>",
    )
    plans.append(NodePlan(name=RELAYER_NAME, role="relayer", index=index, config=cfg))
    return plans


def _upstream(dc: NodePlan, upstream_address: Callable[[str, int], str],
              server: GrpcConfig) -> UpstreamConfig:
    """The relayer's entry for a datacenter; it follows with its own credentials."""
    return UpstreamConfig(name=dc.name, namespaces=list(dc.config.storage.namespaces),
                          upstream_address=upstream_address(dc.name, dc.grpc_port),
                          allow_insecure=server.allow_insecure, cert_path=server.cert_path,
                          key_path=server.key_path, ca_path=server.ca_path)


def _datacenter(name: str, namespaces: list[str], index: int, base_dir: Callable[[str], str],
                log_level: str, crdt_merge: bool = True, tls_dir: str | None = None,
                wal_fsync_interval: float = 0.0) -> NodePlan:
    """A datacenter's primary: writable; gRPC plaintext (asked for) unless `tls_dir`."""
    http, grpc = node_ports(index)
    cfg = NodeConfig(
        http_port=http,
        grpc=_grpc_config(grpc, tls_dir),
        http=HttpConfig(listen_ip=ALL_INTERFACES),
        # CRDT writes merged on the node (monotone stored state), unless turned off.
        storage=StorageConfig(base_dir=base_dir(name), namespaces=namespaces,
                              crdt_merge_namespaces=list(namespaces) if crdt_merge else [],
                              wal_fsync_interval=wal_fsync_interval),
        log=LogConfig(log_level=log_level),
        source=f"<{name}>",
    )
    return NodePlan(name=name, role="replicator", index=index, config=cfg)

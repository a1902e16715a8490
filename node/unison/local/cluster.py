"""A UnisonCluster manifest as local processes: validate, plan, render, start.

The manifest is validated and planned by the code the operator uses too
(`unison.topology`), so a manifest that runs locally runs the same way on Kubernetes. Only two things differ from the operator: data directories live under a
local folder and the relayer dials `127.0.0.1:<gRPC port>`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unison.config import NodeConfig, render_toml
from unison.errors import SpecError
from unison.local.console import Console
from unison.local.procs import HOST, PortUse, ProcessGroup, ProcessSpec, StartFailure
from unison.topology.plan import NodePlan
from unison.topology.spec import (
    DEFAULT_CLIENT_STATE_PORT,
    ClusterSpec,
    parse_cluster,
    read_cluster_document,
)

# When the manifest does not say (spec.client.statePort): clear of the seed's 8001-8003,
# 4001-4003 and 5555-5556.
DEFAULT_CLIENT_PORT = DEFAULT_CLIENT_STATE_PORT
READY_TIMEOUT = 60.0


class ManifestError(ValueError):
    """The manifest cannot be used; the message names the file and field (exit 2)."""


class DataDirError(Exception):
    """The data directory (or a file in it) cannot be written; the message names the path
    and the OS error (exit 1, nothing started)."""


# ---------------------------------------------------------------- manifest


def load_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest's UnisonCluster document, read as the operator's `unison render` reads it."""
    try:
        return read_cluster_document(path)
    except SpecError as e:
        raise ManifestError(str(e)) from None


# ---------------------------------------------------------------- plan


@dataclass
class LocalNode:
    plan: NodePlan
    config_path: Path
    log_path: Path

    @property
    def name(self) -> str:
        return self.plan.name

    @property
    def role(self) -> str:
        return self.plan.role

    @property
    def config(self) -> NodeConfig:
        return self.plan.config

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.config.http_port}"

    def process_spec(self) -> ProcessSpec:
        return ProcessSpec(
            name=self.name,
            argv=[sys.executable, "-m", "unison.cli", "node", "-config", str(self.config_path),
                  self.role],
            log_path=self.log_path,
            ready_url=f"{self.url}/readyz",
        )

    def port_uses(self) -> list[PortUse]:
        cfg = self.config
        uses = [PortUse(cfg.http_port, self.name, "HTTP port")]
        if cfg.grpc.port:
            uses.append(PortUse(cfg.grpc.port, self.name, "gRPC port"))
        uses += [PortUse(n.bind_port, self.name, f"ZeroMQ port for {n.namespace}")
                 for n in cfg.notifiers]
        return uses


@dataclass
class LocalClient:
    name: str
    state_port: int
    http_url: str  # the relayer the client reads values from
    zmq: dict[str, str]  # namespace -> ZeroMQ address
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.state_port}"

    def process_spec(self) -> ProcessSpec:
        argv = [sys.executable, "-m", "unison.cli", "client", "--http", self.http_url]
        for ns, addr in self.zmq.items():
            argv += ["--zmq", f"{ns}={addr}"]
        argv += ["--state-port", str(self.state_port), "--state-host", HOST]
        # /readyz: every namespace has been scanned once, so /state is meaningful.
        return ProcessSpec(self.name, argv, self.log_path, f"{self.url}/readyz")

    def port_uses(self) -> list[PortUse]:
        return [PortUse(self.state_port, self.name, "state port (--client-port)")]


@dataclass
class LocalCluster:
    name: str
    source: str  # the manifest file
    data_dir: Path
    nodes: list[LocalNode]
    client: LocalClient | None

    @property
    def relayer(self) -> LocalNode | None:
        return next((n for n in self.nodes if n.role == "relayer"), None)

    def writer_for(self, namespace: str) -> LocalNode | None:
        """The replicator that accepts writes for `namespace`."""
        return next((n for n in self.nodes if n.role == "replicator"
                     and namespace in n.config.storage.namespaces), None)

    def port_uses(self) -> list[PortUse]:
        uses = [u for n in self.nodes for u in n.port_uses()]
        return uses + (self.client.port_uses() if self.client else [])

    def make_data_dir(self) -> None:
        """Create the data directory before anything starts, so a bad --data-dir is one
        line rather than a traceback (or a child failing later on its storage)."""
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
        except FileExistsError:
            raise DataDirError(f"cannot create data directory {self.data_dir}: "
                               "it exists and is not a directory") from None
        except OSError as e:
            raise DataDirError(f"cannot create data directory {self.data_dir}: "
                               f"{e.strerror or e}") from None

    def write_configs(self) -> None:
        self.make_data_dir()
        for node in self.nodes:
            try:
                node.config_path.write_text(render_toml(node.config), encoding="utf-8")
            except OSError as e:
                raise DataDirError(f"cannot write {node.config_path}: {e.strerror or e}") from None

    def phases(self) -> list[list[ProcessSpec]]:
        """Start order: the datacenters together, then the relayer (it follows them),
        then the client (it subscribes to the relayer)."""
        phases = [[n.process_spec() for n in self.nodes if n.role == "replicator"],
                  [n.process_spec() for n in self.nodes if n.role == "relayer"]]
        if self.client:
            phases.append([self.client.process_spec()])
        return [p for p in phases if p]


def plan_local(manifest: dict[str, Any], source: str, *, data_dir: str | Path | None = None,
               client_port: int | None = None, port_offset: int = 0) -> LocalCluster:
    """Validate the manifest as the operator does and lay it out on this machine.

    `port_offset` shifts every port (HTTP, gRPC, ZeroMQ, client) so a second cluster can
    run next to one on the seed's ports.
    """
    try:
        spec = parse_cluster(manifest)
    except SpecError as e:
        raise ManifestError(f"{source}: {e}") from None
    name = _cluster_name(spec)
    root = Path(data_dir) if data_dir else Path(".unison") / name
    root = root.absolute()

    plans = spec.plan(base_dir=lambda node: str(root / node),
                      upstream_address=lambda _dc, port: f"{HOST}:{port + port_offset}")
    nodes = []
    for plan in plans:
        cfg = plan.config
        cfg.http_port += port_offset
        if cfg.grpc.port:
            cfg.grpc.port += port_offset
        for n in cfg.notifiers:
            n.bind_port += port_offset
        # HTTP, gRPC and the relayer's ZeroMQ notifiers (which bind the HTTP listen_ip)
        # answer on loopback only.
        cfg.http.listen_ip = HOST
        cfg.grpc.listen_ip = HOST
        nodes.append(LocalNode(plan, root / f"{plan.name}.toml", root / f"{plan.name}.log"))

    client = None
    if spec.client.enabled:
        relayer = next((n for n in nodes if n.role == "relayer"), None)
        if relayer is not None:
            default = spec.client.state_port
            port = client_port if client_port is not None else default + port_offset
            client = LocalClient(
                name="client",
                state_port=port,
                http_url=relayer.url,
                zmq={n.namespace: f"tcp://{HOST}:{n.bind_port}" for n in relayer.config.notifiers},
                log_path=root / "client.log",
            )
    cluster = LocalCluster(name, source, root, nodes, client)
    bad = [u for u in cluster.port_uses() if not 0 < u.port < 65536]
    if bad:
        raise ManifestError(f"{source}: the {bad[0].describe()} would be {bad[0].port}, outside "
                            "1-65535 (check --port-offset)")
    return cluster


def _cluster_name(spec: ClusterSpec) -> str:
    return spec.name or "unison"  # a bare spec (no metadata) has no name


# ---------------------------------------------------------------- start / show


def start_cluster(group: ProcessGroup, phases: Sequence[Sequence[ProcessSpec]], console: Console,
                  *, timeout: float = READY_TIMEOUT,
                  interrupted: Callable[[], bool] = lambda: False) -> None:
    """Start each phase and wait until all of it is ready before the next one.
    Raises StartFailure; the caller stops the group."""
    for phase in phases:
        if interrupted():
            raise StartFailure("interrupted during start-up")
        names = ", ".join(s.name for s in phase)
        console.line(f"  starting {names}")
        started = [group.start(spec) for spec in phase]
        group.wait_ready(started, timeout, interrupted)


def report_start_failure(console: Console, failure: StartFailure) -> None:
    console.line(f"{console.fail_mark} {failure}")
    child = failure.child
    if child is not None:
        tail = child.log_tail()
        where = display_path(child.spec.log_path)
        if tail:
            console.line(f"  last lines of {where}:")
            for line in tail:
                console.line(f"  | {line}")
        else:
            console.line(f"  ({where} is empty)")


def display_path(p: Path) -> str:
    """Relative to the current directory when that is shorter."""
    try:
        rel = os.path.relpath(p)
    except ValueError:
        return str(p)
    return rel if len(rel) < len(str(p)) else str(p)


def endpoint_table(cluster: LocalCluster) -> list[str]:
    """Where every process listens; DATA and LOG are relative to the cluster's data dir."""
    root = cluster.data_dir

    def rel(p: Path) -> str:
        try:
            return str(p.relative_to(root))
        except ValueError:
            return display_path(p)

    header = ["NODE", "ROLE", "HTTP", "gRPC", "ZeroMQ (PUB)", "DATA", "LOG"]
    rows: list[list[str]] = []
    for n in cluster.nodes:
        cfg = n.config
        zmq = "\n".join(f"{z.bind_port} {z.namespace}" for z in cfg.notifiers) or "-"
        rows.append([n.name, n.role, str(cfg.http_port), str(cfg.grpc.port or "-"), zmq,
                     rel(Path(cfg.storage.base_dir)) + "/", rel(n.log_path)])
    if cluster.client:
        c = cluster.client
        rows.append([c.name, "crdt client", f"{c.state_port} /state", "-", "subscriber", "-",
                     rel(c.log_path)])
    widths = [max(len(line) for r in [header, *rows] for line in r[i].split("\n"))
              for i in range(len(header))]
    out = []
    for r in [header, *rows]:
        cells = [cell.split("\n") for cell in r]
        for k in range(max(len(c) for c in cells)):
            parts = [(c[k] if k < len(c) else "").ljust(w) for c, w in zip(cells, widths, strict=True)]
            out.append("  ".join(parts).rstrip())
    return out


# The addresses examples/curl-scenarios.sh uses unless told otherwise.
SCRIPT_DEFAULTS = {"DC1": ("dc1", 8001), "DC2": ("dc2", 8002), "RELAYER": ("relayer", 8003),
                   "CLIENT": ("client", 8090)}


def try_lines(cluster: LocalCluster) -> list[str]:
    """A few commands to paste, with this cluster's real ports."""
    lines = []
    writer = next((n for n in cluster.nodes if n.role == "replicator"), None)
    relayer = cluster.relayer
    if writer and relayer:
        ns = writer.config.storage.namespaces[0]
        lines.append(f"curl -s -X PUT localhost:{writer.config.http_port}/api/v1/{ns}/kv/hello "
                     "-H 'Content-Type: application/json' "
                     "-d '{\"value\": \"'$(echo -n world | base64)'\"}'")
        lines.append(f"curl -s localhost:{relayer.config.http_port}/api/v1/{ns}/kv/hello")
    names = {n.name for n in cluster.nodes}
    if cluster.client and {"dc1", "dc2", "relayer"} <= names:
        ports = {n.name: n.config.http_port for n in cluster.nodes}
        ports["client"] = cluster.client.state_port
        env = " ".join(f"{var}=http://localhost:{ports[name]}"
                       for var, (name, default) in SCRIPT_DEFAULTS.items()
                       if ports[name] != default)
        lines.append(f"{env + ' ' if env else ''}bash examples/curl-scenarios.sh"
                     "   # the seed's scenarios")
    if cluster.client:
        lines.append(f"curl -s localhost:{cluster.client.state_port}/state")
    return lines

"""UnisonDB-style TOML node configuration: load, validate, render.

This module is the single source of truth for node ports, names and TOML. The node
reads it, `unison up` writes it to files and the operator writes it into ConfigMaps.
"""

from __future__ import annotations

import logging
import re
import tomllib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unison.errors import ConfigError  # re-exported: unison.config.ConfigError

log = logging.getLogger(__name__)

# Port convention shared by local mode and Kubernetes: the i-th node (1-based,
# datacenters in order, then the relayer) gets HTTP 8000+i and gRPC 4000+i.
HTTP_BASE_PORT = 8000
GRPC_BASE_PORT = 4000
NOTIFIER_BASE_PORT = 5555
RELAYER_NAME = "relayer"
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024

NAMESPACE_RE = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgG]i?[bB]?|[bB])?\s*$")
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_SIZE_UNITS = {"": 1, "b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}


# Plaintext gRPC is opt-in (UnisonDB's default); say so where a TLS path is missing.
_TLS_REQUIRED = ("required when allow_insecure = false (the default); set allow_insecure = true "
                 "for plaintext gRPC")


@dataclass
class GrpcConfig:
    port: int = 4001
    listen_ip: str = "0.0.0.0"
    allow_insecure: bool = False  # as UnisonDB: plaintext gRPC only when asked for
    cert_path: str = ""
    key_path: str = ""
    ca_path: str = ""


@dataclass
class WalCleanupConfig:
    enabled: bool = False
    interval: float = 300.0  # seconds between retention passes
    max_age: float = 0.0  # seconds; 0 = no age limit
    max_records: int = 0  # our own: keep at most this many log records; 0 = no count limit
    min_segments: int = 0
    max_segments: int = 0


@dataclass
class StorageConfig:
    base_dir: str = "./data"
    namespaces: list[str] = field(default_factory=list)
    bytes_per_sync: int = 1024 * 1024
    segment_size: int = 16 * 1024 * 1024
    arena_size: int = 4 * 1024 * 1024
    wal_cleanup: WalCleanupConfig = field(default_factory=WalCleanupConfig)


@dataclass
class WriteNotifyConfig:
    enabled: bool = True
    max_delay: float = 0.0  # seconds; upper bound for notification coalescing


@dataclass
class HttpConfig:
    listen_ip: str = "0.0.0.0"
    max_body_size: int = DEFAULT_MAX_BODY_BYTES


@dataclass
class UpstreamConfig:
    """One `[relayer_config.<name>]` entry: a set of namespaces followed from one upstream."""

    name: str
    namespaces: list[str]
    upstream_address: str
    segment_lag_threshold: int = 100
    allow_insecure: bool = False  # as UnisonDB: plaintext gRPC only when asked for
    cert_path: str = ""
    key_path: str = ""
    ca_path: str = ""


@dataclass
class NotifierConfig:
    """One `[notifier_config.<namespace>]` entry: a ZeroMQ PUB socket."""

    namespace: str
    bind_port: int
    high_water_mark: int = 1000
    linger_time: int = 1000  # milliseconds


@dataclass
class LogConfig:
    log_level: str = "info"


@dataclass
class NodeConfig:
    http_port: int = 8001
    grpc: GrpcConfig = field(default_factory=GrpcConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    write_notify: WriteNotifyConfig = field(default_factory=WriteNotifyConfig)
    relayers: list[UpstreamConfig] = field(default_factory=list)
    notifiers: list[NotifierConfig] = field(default_factory=list)
    log: LogConfig = field(default_factory=LogConfig)
    source: str = "<memory>"

    def followed_namespaces(self) -> dict[str, UpstreamConfig]:
        """namespace -> the upstream entry that feeds it."""
        return {ns: up for up in self.relayers for ns in up.namespaces}


# ---------------------------------------------------------------- value parsing


def parse_size(value: Any, key: str) -> int:
    """'1MB', '16MiB', '4k', 1048576 -> bytes."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a size like \"4MB\", got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"{key}: size must not be negative")
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            unit = (m.group(2) or "").lower()[:1]
            return int(float(m.group(1)) * _SIZE_UNITS[unit])
    raise ConfigError(f"{key}: expected a size like \"4MB\", got {value!r}")


def parse_duration(value: Any, key: str) -> float:
    """Go-style durations ('20ms', '5m', '1h30m') or a number of seconds -> seconds."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a duration like \"20ms\", got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ConfigError(f"{key}: duration must not be negative")
        return float(value)
    if isinstance(value, str):
        text = value.strip()
        if text == "0":
            return 0.0
        parts = _DURATION_RE.findall(text)
        if parts and "".join(n + u for n, u in parts) == text:
            return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
    raise ConfigError(f"{key}: expected a duration like \"20ms\" or \"5m\", got {value!r}")


def format_duration(seconds: float) -> str:
    if seconds == 0:
        return "0s"
    ms = round(seconds * 1000)
    if ms % 3_600_000 == 0:
        return f"{ms // 3_600_000}h"
    if ms % 60_000 == 0:
        return f"{ms // 60_000}m"
    if ms % 1000 == 0:
        return f"{ms // 1000}s"
    return f"{ms}ms"


def format_size(n: int) -> str:
    for unit, mult in (("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if n and n % mult == 0:
            return f"{n // mult}{unit}"
    return str(n)


class _Section:
    """Typed access to one TOML table; remembers which keys were read."""

    def __init__(self, data: dict[str, Any], path: str) -> None:
        self.data = data
        self.path = path
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def _get(self, name: str, default: Any, required: bool) -> Any:
        self.seen.add(name)
        if name not in self.data:
            if required:
                raise ConfigError(f"{self.key(name)}: required key is missing")
            return default
        return self.data[name]

    def int(self, name: str, default: int = 0, *, required: bool = False, lo: int = 0,
            hi: int | None = None) -> int:
        v = self._get(name, default, required)
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{self.key(name)}: expected an integer, got {v!r}")
        if v < lo or (hi is not None and v > hi):
            bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
            raise ConfigError(f"{self.key(name)}: must be {bound}, got {v}")
        return v

    def port(self, name: str, default: int = 0, *, required: bool = False) -> int:
        return self.int(name, default, required=required, lo=1, hi=65535)

    def bool(self, name: str, default: bool) -> bool:
        v = self._get(name, default, False)
        if not isinstance(v, bool):
            raise ConfigError(f"{self.key(name)}: expected true or false, got {v!r}")
        return v

    def str(self, name: str, default: str = "", *, required: bool = False) -> str:
        v = self._get(name, default, required)
        if not isinstance(v, str):
            raise ConfigError(f"{self.key(name)}: expected a string, got {v!r}")
        if required and not v:
            raise ConfigError(f"{self.key(name)}: must not be empty")
        return v

    def namespaces(self, name: str, *, required: bool = False) -> list[str]:
        v = self._get(name, [], required)
        if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
            raise ConfigError(f"{self.key(name)}: expected a list of namespace names, got {v!r}")
        for i, ns in enumerate(v):
            if not NAMESPACE_RE.match(ns):
                raise ConfigError(
                    f"{self.key(name)}[{i}]: invalid namespace {ns!r} (lowercase letters, "
                    "digits, '.', '_' and '-', at most 63 characters)"
                )
        if len(set(v)) != len(v):
            raise ConfigError(f"{self.key(name)}: namespaces must be unique, got {v!r}")
        return list(v)

    def size(self, name: str, default: int) -> int:
        v = self._get(name, None, False)
        return default if v is None else parse_size(v, self.key(name))

    def duration(self, name: str, default: float) -> float:
        v = self._get(name, None, False)
        return default if v is None else parse_duration(v, self.key(name))

    def table(self, name: str) -> _Section:
        v = self._get(name, {}, False)
        if not isinstance(v, dict):
            raise ConfigError(f"{self.key(name)}: expected a table, got {v!r}")
        return _Section(v, self.key(name))

    def warn_unknown(self, ignore: Sequence[str] = ()) -> None:
        for k in self.data:
            if k not in self.seen and k not in ignore:
                log.warning("config: unknown key %s ignored", self.key(k))


# ---------------------------------------------------------------- loading


def parse_config(data: dict[str, Any], source: str = "<memory>") -> NodeConfig:
    """Validate a parsed TOML document into a NodeConfig. Raises ConfigError."""
    try:
        return _parse(data, source)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def load_config(path: str | Path) -> NodeConfig:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{p}: cannot read config file: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        line = e.object.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"{p}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at line {line}, "
                          f"offset {e.start}: {e.reason}); TOML config files must be UTF-8"
                          ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from None
    return parse_config(data, str(p))


def _parse(data: dict[str, Any], source: str) -> NodeConfig:
    root = _Section(data, "")
    cfg = NodeConfig(source=source)
    cfg.http_port = root.port("http_port", required=True)

    g = root.table("grpc_config")
    cfg.grpc = GrpcConfig(
        port=g.int("port", 0, hi=65535),  # 0: no replication server
        listen_ip=g.str("listen_ip", "0.0.0.0") or "0.0.0.0",
        allow_insecure=g.bool("allow_insecure", False),
        cert_path=g.str("cert_path"),
        key_path=g.str("key_path"),
        ca_path=g.str("ca_path"),
    )
    # Port 0 starts no replication server, so there is nothing to secure.
    if cfg.grpc.port and not cfg.grpc.allow_insecure:
        for k in ("cert_path", "key_path"):
            if not getattr(cfg.grpc, k):
                raise ConfigError(f"grpc_config.{k}: {_TLS_REQUIRED}")
    g.warn_unknown()

    h = root.table("http_config")
    cfg.http = HttpConfig(
        listen_ip=h.str("listen_ip", "0.0.0.0") or "0.0.0.0",
        max_body_size=h.size("max_body_size", DEFAULT_MAX_BODY_BYTES),
    )
    h.warn_unknown()

    s = root.table("storage_config")
    w = s.table("wal_cleanup_config")
    cfg.storage = StorageConfig(
        base_dir=s.str("base_dir", required=True),
        namespaces=s.namespaces("namespaces", required=True),
        bytes_per_sync=s.size("bytes_per_sync", 1024 * 1024),
        segment_size=s.size("segment_size", 16 * 1024 * 1024),
        arena_size=s.size("arena_size", 4 * 1024 * 1024),
        wal_cleanup=WalCleanupConfig(
            enabled=w.bool("enabled", False),
            interval=w.duration("interval", 300.0),
            max_age=w.duration("max_age", 0.0),
            max_records=w.int("max_records", 0),
            min_segments=w.int("min_segments", 0),
            max_segments=w.int("max_segments", 0),
        ),
    )
    if not cfg.storage.namespaces:
        raise ConfigError("storage_config.namespaces: at least one namespace is required")
    # UnisonDB options with no meaning here: accepted, noted at debug level. bytes_per_sync
    # maps to RocksDB's option of that name and max_age/max_records to log retention;
    # RocksDB has no WAL segments or memtable arena of UnisonDB's kind.
    for k in ("disable_entry_type_check", "wal_fsync_interval", "segment_size", "arena_size"):
        if k in s.data:
            s.seen.add(k)
            log.debug("config: storage_config.%s has no effect in this implementation", k)
    for k in ("min_segments", "max_segments"):
        if k in w.data:
            log.debug("config: storage_config.wal_cleanup_config.%s has no effect in this "
                      "implementation (retention is by max_age / max_records)", k)
    w.warn_unknown()
    s.warn_unknown()

    n = root.table("write_notify_config")
    cfg.write_notify = WriteNotifyConfig(
        enabled=n.bool("enabled", True), max_delay=n.duration("max_delay", 0.0)
    )
    n.warn_unknown()

    r = root.table("relayer_config")
    served = set(cfg.storage.namespaces)
    followed: dict[str, str] = {}
    for name in r.data:
        e = r.table(name)
        up = UpstreamConfig(
            name=name,
            namespaces=e.namespaces("namespaces", required=True),
            upstream_address=e.str("upstream_address", required=True),
            segment_lag_threshold=e.int("segment_lag_threshold", 100),
            allow_insecure=e.bool("allow_insecure", False),
            cert_path=e.str("cert_path"),
            key_path=e.str("key_path"),
            ca_path=e.str("ca_path"),
        )
        e.seen.add("grpc_service_config")
        if not re.match(r"^[^\s:]+:\d{1,5}$", up.upstream_address):
            raise ConfigError(
                f"{e.key('upstream_address')}: expected host:port, got {up.upstream_address!r}"
            )
        for ns in up.namespaces:
            if ns not in served:
                raise ConfigError(
                    f"{e.key('namespaces')}: namespace {ns!r} is not in storage_config.namespaces"
                )
            if ns in followed:
                raise ConfigError(
                    f"{e.key('namespaces')}: namespace {ns!r} is already followed by "
                    f"relayer_config.{followed[ns]}"
                )
            followed[ns] = name
        # After the namespace checks: those name a mistake even in a plaintext-meant entry.
        if not up.allow_insecure and not up.ca_path:
            raise ConfigError(f"{e.key('ca_path')}: {_TLS_REQUIRED}")
        e.warn_unknown()
        cfg.relayers.append(up)

    z = root.table("notifier_config")
    ports: dict[int, str] = {}
    for ns in z.data:
        e = z.table(ns)
        nc = NotifierConfig(
            namespace=ns,
            bind_port=e.port("bind_port", required=True),
            high_water_mark=e.int("high_water_mark", 1000),
            linger_time=e.int("linger_time", 1000),
        )
        if ns not in served:
            raise ConfigError(f"notifier_config.{ns}: namespace is not in storage_config.namespaces")
        if nc.bind_port in ports:
            raise ConfigError(
                f"notifier_config.{ns}.bind_port: port {nc.bind_port} is already used by "
                f"notifier_config.{ports[nc.bind_port]}"
            )
        ports[nc.bind_port] = ns
        e.warn_unknown()
        cfg.notifiers.append(nc)

    lg = root.table("log_config")
    level = lg.str("log_level", "info").lower()
    if level not in ("debug", "info", "warn", "warning", "error"):
        raise ConfigError(f"log_config.log_level: expected debug, info, warn or error, got {level!r}")
    cfg.log = LogConfig(log_level=level)
    lg.warn_unknown(ignore=("disable_timestamp", "min_level_percents"))

    root.warn_unknown(ignore=("pprof_enable", "pprof_config", "wal_io_global_limiter"))
    return cfg


# ---------------------------------------------------------------- rendering


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot render {v!r} as TOML")


def _toml_key(k: str) -> str:
    return k if re.match(r"^[A-Za-z0-9_-]+$", k) else _toml_value(k)


def _table(lines: list[str], header: str, items: dict[str, Any]) -> None:
    lines.append("")
    lines.append(f"[{header}]")
    for k, v in items.items():
        lines.append(f"{_toml_key(k)} = {_toml_value(v)}")


def render_toml(cfg: NodeConfig) -> str:
    """NodeConfig -> UnisonDB-style TOML that `load_config` reads back to an equal config."""
    lines = ["# Rendered by unison.config; edit the UnisonCluster, not this file.",
             f"http_port = {cfg.http_port}"]
    grpc: dict[str, Any] = {"port": cfg.grpc.port, "listen_ip": cfg.grpc.listen_ip,
                            "allow_insecure": cfg.grpc.allow_insecure}
    for k in ("cert_path", "key_path", "ca_path"):
        if getattr(cfg.grpc, k):
            grpc[k] = getattr(cfg.grpc, k)
    _table(lines, "grpc_config", grpc)
    _table(lines, "http_config", {"listen_ip": cfg.http.listen_ip,
                                  "max_body_size": format_size(cfg.http.max_body_size)})
    st = cfg.storage
    _table(lines, "storage_config", {
        "base_dir": st.base_dir,
        "namespaces": st.namespaces,
        "bytes_per_sync": format_size(st.bytes_per_sync),
        "segment_size": format_size(st.segment_size),
        "arena_size": format_size(st.arena_size),
    })
    wc = st.wal_cleanup
    _table(lines, "storage_config.wal_cleanup_config", {
        "enabled": wc.enabled,
        "interval": format_duration(wc.interval),
        "max_age": format_duration(wc.max_age),
        "max_records": wc.max_records,
        "min_segments": wc.min_segments,
        "max_segments": wc.max_segments,
    })
    _table(lines, "write_notify_config", {"enabled": cfg.write_notify.enabled,
                                          "max_delay": format_duration(cfg.write_notify.max_delay)})
    for up in cfg.relayers:
        entry: dict[str, Any] = {
            "namespaces": up.namespaces,
            "upstream_address": up.upstream_address,
            "segment_lag_threshold": up.segment_lag_threshold,
            "allow_insecure": up.allow_insecure,
        }
        for k in ("cert_path", "key_path", "ca_path"):
            if getattr(up, k):
                entry[k] = getattr(up, k)
        _table(lines, f"relayer_config.{_toml_key(up.name)}", entry)
    for nc in cfg.notifiers:
        _table(lines, f"notifier_config.{_toml_key(nc.namespace)}", {
            "bind_port": nc.bind_port,
            "high_water_mark": nc.high_water_mark,
            "linger_time": nc.linger_time,
        })
    _table(lines, "log_config", {"log_level": cfg.log.log_level})
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- cluster topology


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
) -> list[NodePlan]:
    """The nodes of a cluster: one primary per datacenter, then one relayer.

    `datacenters` is [(name, namespaces)] in order; `follow` names the datacenters the
    relayer follows (every followed namespace gets a notifier port, counting up from
    `notifier_base_port`). `base_dir(node_name)` gives each node's data directory and
    `upstream_address(dc_name, grpc_port)` the address the relayer dials, so local mode
    and Kubernetes differ only in those two. Their gRPC is plaintext (no certificates are
    provisioned), so it is asked for explicitly: the rendered TOML says allow_insecure = true.

    Without `allocation` the i-th node (datacenters in order, then the relayer) gets index
    i. With one, nodes and namespaces it lists keep their ports and new ones get the lowest
    free index or notifier port.
    """
    plans: list[NodePlan] = []
    dc_ports: dict[str, int] = {}
    dc_namespaces: dict[str, list[str]] = {}
    indices = _node_indices([name for name, _ in datacenters] + [RELAYER_NAME],
                            allocation.indices if allocation else {})
    for name, namespaces in datacenters:
        i = indices[name]
        http, grpc = node_ports(i)
        dc_ports[name] = grpc
        dc_namespaces[name] = list(namespaces)
        cfg = NodeConfig(
            http_port=http,
            grpc=GrpcConfig(port=grpc, allow_insecure=True),
            storage=StorageConfig(base_dir=base_dir(name), namespaces=list(namespaces)),
            log=LogConfig(log_level=log_level),
            source=f"<{name}>",
        )
        plans.append(NodePlan(name=name, role="replicator", index=i, config=cfg))

    index = indices[RELAYER_NAME]
    http, grpc = node_ports(index)
    relayed = [ns for dc in follow for ns in dc_namespaces[dc]]
    notifier_ports = _notifier_ports(relayed, notifier_base_port, allocation, {http, grpc})
    cfg = NodeConfig(
        http_port=http,
        grpc=GrpcConfig(port=grpc, allow_insecure=True),
        storage=StorageConfig(base_dir=base_dir(RELAYER_NAME), namespaces=relayed),
        relayers=[
            UpstreamConfig(
                name=dc,
                namespaces=dc_namespaces[dc],
                upstream_address=upstream_address(dc, dc_ports[dc]),
                allow_insecure=True,
            )
            for dc in follow
        ],
        notifiers=[
            NotifierConfig(namespace=ns, bind_port=notifier_ports[ns]) for ns in relayed
        ],
        log=LogConfig(log_level=log_level),
        source=f"<{RELAYER_NAME}>",
    )
    plans.append(NodePlan(name=RELAYER_NAME, role="relayer", index=index, config=cfg))
    return plans

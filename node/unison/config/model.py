"""The node's configuration as data: one dataclass per UnisonDB TOML table.

`unison.config.parse` builds these from TOML, `unison.config.render` writes them back;
`unison.topology` builds them for every node of a cluster.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024

NAMESPACE_RE = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")


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
    # [relayer_config.<name>] entries, as UnisonDB names the table: the upstreams a
    # relayer follows.
    upstreams: list[UpstreamConfig] = field(default_factory=list)
    notifiers: list[NotifierConfig] = field(default_factory=list)
    log: LogConfig = field(default_factory=LogConfig)
    source: str = "<memory>"

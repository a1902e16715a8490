"""The node's configuration as data: one dataclass per UnisonDB TOML table.

`unison.config.parse` builds these from TOML, `unison.config.render` writes them back;
`unison.topology` builds them for every node of a cluster.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
# Keys: UnisonDB-like bound (its keys are indexed in memory; Badger, which it grew from,
# caps keys at 65,000 bytes). 4 KiB is generous for the seed's "lww:user-status" keys.
DEFAULT_MAX_KEY_BYTES = 4 * 1024
# HTTP binds loopback unless told otherwise; nodes on Kubernetes render 0.0.0.0.
DEFAULT_HTTP_LISTEN_IP = "127.0.0.1"
MAX_HTTP_WORKERS = 64  # http_config.workers: processes sharing the HTTP port

NAMESPACE_RE = re.compile(r"^[a-z0-9]([a-z0-9._-]{0,61}[a-z0-9])?$")


@dataclass
class GrpcConfig:
    port: int = 4001
    listen_ip: str = "0.0.0.0"
    allow_insecure: bool = False  # as UnisonDB: plaintext gRPC only when asked for
    cert_path: str = ""
    key_path: str = ""
    ca_path: str = ""
    # Bounds (ours): HTTP/2 streams per connection, open Stream calls in all and per peer
    # address, and keepalive pings that find dead peers (seconds).
    max_concurrent_streams: int = 64
    max_streams: int = 256
    max_streams_per_peer: int = 16
    keepalive_time: float = 30.0
    keepalive_timeout: float = 10.0


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
    # Bounds (ours): writes queued for the next group commit (503 beyond), and how long a
    # write may wait for its WAL sync before it is answered 503 (and /readyz says why).
    max_pending_writes: int = 10000
    sync_timeout: float = 10.0
    # UnisonDB's durability mode, opt-in (seconds; 0: off, the default): writes are
    # acknowledged once in the OS page cache and the WAL is fsynced every this often, so
    # a power cut may lose the acknowledged writes of the last interval (a kill -9 does
    # not). Off: a write is acknowledged only after its WAL is synced.
    wal_fsync_interval: float = 0.0
    # Namespaces (of `namespaces`) whose PUTs of CRDT keys (lww:, counter:, pncounter:)
    # are merged into the stored value instead of overwriting it (ours; unison.crdt.stored).
    crdt_merge_namespaces: list[str] = field(default_factory=list)
    wal_cleanup: WalCleanupConfig = field(default_factory=WalCleanupConfig)


@dataclass
class WriteNotifyConfig:
    """As in UnisonDB: coalescing of reader wake-ups, leading edge (notify/publisher.py).
    `enabled = false` turns coalescing off (every commit notified at once), never the
    notifications themselves."""

    enabled: bool = True
    max_delay: float = 0.0  # seconds: the window later writes are gathered in


@dataclass
class HttpConfig:
    listen_ip: str = DEFAULT_HTTP_LISTEN_IP
    max_body_size: int = DEFAULT_MAX_BODY_BYTES
    max_key_size: int = DEFAULT_MAX_KEY_BYTES
    # Seconds, as Go's http.Server names them: the request line and headers must arrive
    # within read_header_timeout, a body within read_timeout; an idle keep-alive
    # connection is closed after idle_timeout.
    read_header_timeout: float = 10.0
    read_timeout: float = 30.0
    idle_timeout: float = 60.0
    max_connections: int = 1024  # beyond: 503 and close, never an accept() spin
    max_watch_streams: int = 256  # open /watch streams; beyond: 503
    # Bearer tokens for the API (off when empty): files holding the token for reads and
    # for writes (a write token also reads). /healthz and /readyz stay open.
    read_token_file: str = ""
    write_token_file: str = ""
    # Worker processes serving the API (ours, issue 17): 0 = the node process serves it;
    # N > 0 = N processes share http_port (SO_REUSEPORT) and send writes and reads to the
    # node process (api/workers.py).
    workers: int = 0


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
    # ZMQ_MAXMSGSIZE: the largest message a peer may send (subscriptions are a
    # subscriber's only messages); a peer over it is disconnected.
    max_msg_size: int = 64 * 1024
    # CURVE (off when empty): the notifier's own certificate (with its secret key), and a
    # directory of subscribers' public certificates (*.key); with it only those subscribe.
    curve_secret_key_file: str = ""
    curve_authorized_keys_dir: str = ""


@dataclass
class LogConfig:
    log_level: str = "info"
    log_format: str = "text"  # "text", or "json": one object per line (ours)
    disable_timestamp: bool = False  # as UnisonDB: text lines without the time


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

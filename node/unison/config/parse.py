"""UnisonDB-style TOML -> a validated NodeConfig.

Unknown keys are a warning, wrong types or missing required keys a ConfigError naming
the file and the key.
"""

from __future__ import annotations

import logging
import re
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from unison.config.model import (
    DEFAULT_HTTP_LISTEN_IP,
    DEFAULT_MAX_BODY_BYTES,
    DEFAULT_MAX_KEY_BYTES,
    MAX_HTTP_WORKERS,
    NAMESPACE_RE,
    GrpcConfig,
    HttpConfig,
    LogConfig,
    NodeConfig,
    NotifierConfig,
    StorageConfig,
    UpstreamConfig,
    WalCleanupConfig,
    WriteNotifyConfig,
)
from unison.config.units import parse_duration, parse_size
from unison.errors import ConfigError
from unison.logs import FORMATS as LOG_FORMATS

log = logging.getLogger(__name__)


# Plaintext gRPC is opt-in (UnisonDB's default); say so where a TLS path is missing.
_TLS_REQUIRED = ("required when allow_insecure = false (the default); set allow_insecure = true "
                 "for plaintext gRPC")
# TLS always means mutual TLS: a server verifies its clients against ca_path, a follower
# presents a certificate (UnisonDB's server requires one too).
_MTLS_SERVER = ("required when allow_insecure = false (the default): replication is mutual TLS, "
                "clients must present a certificate signed by this CA; set allow_insecure = true "
                "for plaintext gRPC")
_MTLS_CLIENT = ("required when allow_insecure = false (the default): replication is mutual TLS, "
                "the upstream requires a client certificate; set allow_insecure = true for "
                "plaintext gRPC")


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

    def integer(self, name: str, default: int = 0, *, required: bool = False, lo: int = 0,
            hi: int | None = None) -> int:
        v = self._get(name, default, required)
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{self.key(name)}: expected an integer, got {v!r}")
        if v < lo or (hi is not None and v > hi):
            bound = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
            raise ConfigError(f"{self.key(name)}: must be {bound}, got {v}")
        return v

    def port(self, name: str, default: int = 0, *, required: bool = False) -> int:
        return self.integer(name, default, required=required, lo=1, hi=65535)

    def boolean(self, name: str, default: bool) -> bool:
        v = self._get(name, default, False)
        if not isinstance(v, bool):
            raise ConfigError(f"{self.key(name)}: expected true or false, got {v!r}")
        return v

    def string(self, name: str, default: str = "", *, required: bool = False) -> str:
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
    cfg.grpc = _grpc(root.table("grpc_config"))
    cfg.http = _http(root.table("http_config"))
    cfg.storage = _storage(root.table("storage_config"))
    cfg.write_notify = _write_notify(root.table("write_notify_config"))
    cfg.upstreams = _upstreams(root.table("relayer_config"), set(cfg.storage.namespaces))
    cfg.notifiers = _notifiers(root.table("notifier_config"), set(cfg.storage.namespaces))
    cfg.log = _log(root.table("log_config"))
    root.warn_unknown(ignore=("pprof_enable", "pprof_config", "wal_io_global_limiter"))
    return cfg


def _grpc(g: _Section) -> GrpcConfig:
    grpc = GrpcConfig(
        port=g.integer("port", 0, hi=65535),  # 0: no replication server
        listen_ip=g.string("listen_ip", "0.0.0.0") or "0.0.0.0",
        allow_insecure=g.boolean("allow_insecure", False),
        cert_path=g.string("cert_path"),
        key_path=g.string("key_path"),
        ca_path=g.string("ca_path"),
        max_concurrent_streams=g.integer("max_concurrent_streams", 64, lo=1),
        max_streams=g.integer("max_streams", 256, lo=1),
        max_streams_per_peer=g.integer("max_streams_per_peer", 16, lo=1),
        keepalive_time=g.duration("keepalive_time", 30.0),
        keepalive_timeout=g.duration("keepalive_timeout", 10.0),
    )
    # Port 0 starts no replication server, so there is nothing to secure.
    if grpc.port and not grpc.allow_insecure:
        for k in ("cert_path", "key_path"):
            if not getattr(grpc, k):
                raise ConfigError(f"grpc_config.{k}: {_TLS_REQUIRED}")
        if not grpc.ca_path:
            raise ConfigError(f"grpc_config.ca_path: {_MTLS_SERVER}")
    g.warn_unknown()
    return grpc


def _http(h: _Section) -> HttpConfig:
    http = HttpConfig(
        listen_ip=h.string("listen_ip", DEFAULT_HTTP_LISTEN_IP) or DEFAULT_HTTP_LISTEN_IP,
        max_body_size=h.size("max_body_size", DEFAULT_MAX_BODY_BYTES),
        max_key_size=h.size("max_key_size", DEFAULT_MAX_KEY_BYTES),
        read_header_timeout=h.duration("read_header_timeout", 10.0),
        read_timeout=h.duration("read_timeout", 30.0),
        idle_timeout=h.duration("idle_timeout", 60.0),
        max_connections=h.integer("max_connections", 1024, lo=1),
        max_watch_streams=h.integer("max_watch_streams", 256),
        read_token_file=h.string("read_token_file"),
        write_token_file=h.string("write_token_file"),
        workers=h.integer("workers", 0, lo=0, hi=MAX_HTTP_WORKERS),
    )
    for k in ("max_key_size", "read_header_timeout", "read_timeout", "idle_timeout"):
        if not getattr(http, k):
            raise ConfigError(f"http_config.{k}: must be greater than 0")
    h.warn_unknown()
    return http


def _storage(s: _Section) -> StorageConfig:
    w = s.table("wal_cleanup_config")
    storage = StorageConfig(
        base_dir=s.string("base_dir", required=True),
        namespaces=s.namespaces("namespaces", required=True),
        bytes_per_sync=s.size("bytes_per_sync", 1024 * 1024),
        segment_size=s.size("segment_size", 16 * 1024 * 1024),
        arena_size=s.size("arena_size", 4 * 1024 * 1024),
        max_pending_writes=s.integer("max_pending_writes", 10000, lo=1),
        sync_timeout=s.duration("sync_timeout", 10.0),
        wal_fsync_interval=s.duration("wal_fsync_interval", 0.0),
        crdt_merge_namespaces=s.namespaces("crdt_merge_namespaces"),
        wal_cleanup=WalCleanupConfig(
            enabled=w.boolean("enabled", False),
            interval=w.duration("interval", 300.0),
            max_age=w.duration("max_age", 0.0),
            max_records=w.integer("max_records", 0),
            min_segments=w.integer("min_segments", 0),
            max_segments=w.integer("max_segments", 0),
        ),
    )
    if not storage.namespaces:
        raise ConfigError("storage_config.namespaces: at least one namespace is required")
    if 0 < storage.wal_fsync_interval < 0.001:
        raise ConfigError(f"storage_config.wal_fsync_interval: must be 0 (off: every write is "
                          f"synced before it is acknowledged) or at least 1ms, got "
                          f"{storage.wal_fsync_interval:g}s")
    for i, ns in enumerate(storage.crdt_merge_namespaces):
        if ns not in storage.namespaces:
            raise ConfigError(f"storage_config.crdt_merge_namespaces[{i}]: {ns!r} is not one of "
                              f"storage_config.namespaces {storage.namespaces}")
    # UnisonDB options with no meaning here: accepted, noted at debug level. bytes_per_sync
    # maps to RocksDB's option of that name, max_age/max_records to log retention and
    # wal_fsync_interval to the interval durability mode; RocksDB has no WAL segments or
    # memtable arena of UnisonDB's kind.
    for k in ("disable_entry_type_check", "segment_size", "arena_size"):
        if k in s.data:
            s.seen.add(k)
            log.debug("config: storage_config.%s has no effect in this implementation", k)
    for k in ("min_segments", "max_segments"):
        if k in w.data:
            log.debug("config: storage_config.wal_cleanup_config.%s has no effect in this "
                      "implementation (retention is by max_age / max_records)", k)
    w.warn_unknown()
    s.warn_unknown()
    return storage


def _write_notify(n: _Section) -> WriteNotifyConfig:
    notify = WriteNotifyConfig(
        enabled=n.boolean("enabled", True), max_delay=n.duration("max_delay", 0.0)
    )
    n.warn_unknown()
    return notify


def _upstreams(r: _Section, served: set[str]) -> list[UpstreamConfig]:
    """The `[relayer_config.<name>]` entries: each namespace served and followed once."""
    out: list[UpstreamConfig] = []
    followed: dict[str, str] = {}
    for name in r.data:
        e = r.table(name)
        up = UpstreamConfig(
            name=name,
            namespaces=e.namespaces("namespaces", required=True),
            upstream_address=e.string("upstream_address", required=True),
            segment_lag_threshold=e.integer("segment_lag_threshold", 100),
            allow_insecure=e.boolean("allow_insecure", False),
            cert_path=e.string("cert_path"),
            key_path=e.string("key_path"),
            ca_path=e.string("ca_path"),
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
        for k in ("cert_path", "key_path"):
            if not up.allow_insecure and not getattr(up, k):
                raise ConfigError(f"{e.key(k)}: {_MTLS_CLIENT}")
        e.warn_unknown()
        out.append(up)
    return out


def _notifiers(z: _Section, served: set[str]) -> list[NotifierConfig]:
    """The `[notifier_config.<namespace>]` entries: served namespaces, distinct ports."""
    out: list[NotifierConfig] = []
    ports: dict[int, str] = {}
    for ns in z.data:
        e = z.table(ns)
        nc = NotifierConfig(
            namespace=ns,
            bind_port=e.port("bind_port", required=True),
            high_water_mark=e.integer("high_water_mark", 1000),
            linger_time=e.integer("linger_time", 1000),
            max_msg_size=e.size("max_msg_size", 64 * 1024),
            curve_secret_key_file=e.string("curve_secret_key_file"),
            curve_authorized_keys_dir=e.string("curve_authorized_keys_dir"),
        )
        if nc.curve_authorized_keys_dir and not nc.curve_secret_key_file:
            raise ConfigError(f"{e.key('curve_authorized_keys_dir')}: needs "
                              "curve_secret_key_file (the notifier's own CURVE certificate)")
        if ns not in served:
            raise ConfigError(f"notifier_config.{ns}: namespace is not in storage_config.namespaces")
        if nc.bind_port in ports:
            raise ConfigError(
                f"notifier_config.{ns}.bind_port: port {nc.bind_port} is already used by "
                f"notifier_config.{ports[nc.bind_port]}"
            )
        ports[nc.bind_port] = ns
        e.warn_unknown()
        out.append(nc)
    return out


def _log(lg: _Section) -> LogConfig:
    level = lg.string("log_level", "info").lower()
    if level not in ("debug", "info", "warn", "warning", "error"):
        raise ConfigError(f"log_config.log_level: expected debug, info, warn or error, got {level!r}")
    fmt = lg.string("log_format", "text").lower()
    if fmt not in LOG_FORMATS:
        raise ConfigError(f"log_config.log_format: expected text or json, got {fmt!r}")
    quiet_time = lg.boolean("disable_timestamp", False)
    lg.warn_unknown(ignore=("min_level_percents",))
    return LogConfig(log_level=level, log_format=fmt, disable_timestamp=quiet_time)

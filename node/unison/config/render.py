"""NodeConfig -> UnisonDB-style TOML. Pure: no I/O, the same text for the same config."""

from __future__ import annotations

import re
from typing import Any

from unison.config.model import NodeConfig, NotifierConfig
from unison.config.units import format_duration, format_size


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


def _grpc(cfg: NodeConfig) -> dict[str, Any]:
    g = cfg.grpc
    grpc: dict[str, Any] = {"port": g.port, "listen_ip": g.listen_ip,
                            "allow_insecure": g.allow_insecure}
    for k in ("cert_path", "key_path", "ca_path"):
        if getattr(g, k):
            grpc[k] = getattr(g, k)
    grpc.update(max_concurrent_streams=g.max_concurrent_streams, max_streams=g.max_streams,
                max_streams_per_peer=g.max_streams_per_peer,
                keepalive_time=format_duration(g.keepalive_time),
                keepalive_timeout=format_duration(g.keepalive_timeout))
    return grpc


def _http(cfg: NodeConfig) -> dict[str, Any]:
    h = cfg.http
    http: dict[str, Any] = {
        "listen_ip": h.listen_ip, "max_body_size": format_size(h.max_body_size),
        "max_key_size": format_size(h.max_key_size),
        "read_header_timeout": format_duration(h.read_header_timeout),
        "read_timeout": format_duration(h.read_timeout),
        "idle_timeout": format_duration(h.idle_timeout),
        "max_connections": h.max_connections, "max_watch_streams": h.max_watch_streams}
    for k in ("read_token_file", "write_token_file", "workers"):
        if getattr(h, k):
            http[k] = getattr(h, k)
    return http


def _notifier(nc: NotifierConfig) -> dict[str, Any]:
    notifier: dict[str, Any] = {
        "bind_port": nc.bind_port,
        "high_water_mark": nc.high_water_mark,
        "linger_time": nc.linger_time,
        "max_msg_size": format_size(nc.max_msg_size),
    }
    for k in ("curve_secret_key_file", "curve_authorized_keys_dir"):
        if getattr(nc, k):  # unset stays out, as in files written before CURVE
            notifier[k] = getattr(nc, k)
    return notifier


def render_toml(cfg: NodeConfig) -> str:
    """NodeConfig -> UnisonDB-style TOML that `load_config` reads back to an equal config."""
    lines = ["# Rendered by unison.config; edit the UnisonCluster, not this file.",
             f"http_port = {cfg.http_port}"]
    _table(lines, "grpc_config", _grpc(cfg))
    _table(lines, "http_config", _http(cfg))
    st = cfg.storage
    _table(lines, "storage_config", {
        "base_dir": st.base_dir,
        "namespaces": st.namespaces,
        "bytes_per_sync": format_size(st.bytes_per_sync),
        "segment_size": format_size(st.segment_size),
        "arena_size": format_size(st.arena_size),
        "max_pending_writes": st.max_pending_writes,
        "sync_timeout": format_duration(st.sync_timeout),
        # Only when set: files of nodes in the default mode (and their hashes) stay as they were.
        **({"wal_fsync_interval": format_duration(st.wal_fsync_interval)}
           if st.wal_fsync_interval else {}),
        **({"crdt_merge_namespaces": st.crdt_merge_namespaces}
           if st.crdt_merge_namespaces else {}),
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
    for up in cfg.upstreams:
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
        _table(lines, f"notifier_config.{_toml_key(nc.namespace)}", _notifier(nc))
    log: dict[str, object] = {"log_level": cfg.log.log_level}
    if cfg.log.log_format != "text":  # the defaults stay out: UnisonDB's files have neither
        log["log_format"] = cfg.log.log_format
    if cfg.log.disable_timestamp:
        log["disable_timestamp"] = True
    _table(lines, "log_config", log)
    return "\n".join(lines) + "\n"


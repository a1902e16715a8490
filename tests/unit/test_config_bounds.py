"""The resource bounds of issue 16 in UnisonDB-style TOML: defaults, parsing, errors."""

from __future__ import annotations

import pytest
from unison.config import ConfigError, load_config, parse_config, render_toml
from unison.topology.plan import plan_cluster

BASE = {"http_port": 8001, "storage_config": {"base_dir": "/d", "namespaces": ["a"]}}


def test_defaults_bind_loopback_and_bound_everything() -> None:
    cfg = parse_config(BASE)
    assert cfg.http.listen_ip == "127.0.0.1"
    assert (cfg.http.max_connections, cfg.http.max_key_size, cfg.http.max_watch_streams) == (
        1024, 4096, 256)
    assert (cfg.http.read_header_timeout, cfg.http.read_timeout, cfg.http.idle_timeout) == (
        10.0, 30.0, 60.0)
    assert (cfg.storage.max_pending_writes, cfg.storage.sync_timeout) == (10000, 10.0)
    assert (cfg.grpc.max_streams, cfg.grpc.max_streams_per_peer,
            cfg.grpc.max_concurrent_streams) == (256, 16, 64)


def test_bounds_are_read_from_their_tables(tmp_path) -> None:
    doc = {**BASE,
           "http_config": {"listen_ip": "0.0.0.0", "max_connections": 10, "max_key_size": "1KB",
                           "read_header_timeout": "2s", "read_timeout": "500ms",
                           "idle_timeout": "1m", "max_watch_streams": 3,
                           "read_token_file": "/r", "write_token_file": "/w"},
           "storage_config": {**BASE["storage_config"], "max_pending_writes": 5,
                              "sync_timeout": "3s"},
           "grpc_config": {"port": 0, "max_streams": 7, "max_streams_per_peer": 2,
                           "keepalive_time": "20s"},
           "notifier_config": {"a": {"bind_port": 5555, "max_msg_size": "4KB"}}}
    cfg = parse_config(doc)
    h = cfg.http
    assert (h.max_connections, h.max_key_size, h.read_header_timeout, h.read_timeout,
            h.idle_timeout, h.max_watch_streams) == (10, 1024, 2.0, 0.5, 60.0, 3)
    assert (h.read_token_file, h.write_token_file) == ("/r", "/w")
    assert (cfg.storage.max_pending_writes, cfg.storage.sync_timeout) == (5, 3.0)
    assert (cfg.grpc.max_streams, cfg.grpc.max_streams_per_peer, cfg.grpc.keepalive_time) == (
        7, 2, 20.0)
    assert cfg.notifiers[0].max_msg_size == 4096
    path = tmp_path / "n.toml"
    path.write_text(render_toml(cfg))
    assert load_config(path) == cfg.__class__(**{**cfg.__dict__, "source": str(path)})


@pytest.mark.parametrize("table, key, value, message", [
    ("http_config", "read_header_timeout", "0s", "http_config.read_header_timeout: must be"),
    ("http_config", "max_connections", 0, "http_config.max_connections: must be >= 1"),
    ("http_config", "max_key_size", 0, "http_config.max_key_size: must be greater than 0"),
    ("storage_config", "max_pending_writes", 0, "storage_config.max_pending_writes: must be"),
    ("grpc_config", "max_streams_per_peer", "x", "grpc_config.max_streams_per_peer: expected"),
])
def test_bad_bounds_name_the_key(table: str, key: str, value: object, message: str) -> None:
    doc = {**BASE, table: {**BASE.get(table, {}), key: value}}  # type: ignore[dict-item]
    with pytest.raises(ConfigError, match=message):
        parse_config(doc)


def test_planned_nodes_listen_on_every_interface() -> None:
    plans = plan_cluster([("dc1", ["a"])], ["dc1"], base_dir=lambda n: f"/d/{n}",
                         upstream_address=lambda dc, port: f"{dc}:{port}")
    assert {p.config.http.listen_ip for p in plans} == {"0.0.0.0"}

"""unison.config: UnisonDB-style TOML in, validated NodeConfig out, and back to TOML."""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from unison.config import (
    ConfigError,
    GrpcConfig,
    HttpConfig,
    LogConfig,
    NodeConfig,
    NotifierConfig,
    StorageConfig,
    UpstreamConfig,
    WalCleanupConfig,
    WriteNotifyConfig,
    format_duration,
    format_size,
    load_config,
    parse_config,
    parse_duration,
    parse_size,
    render_toml,
)
from unison.topology.plan import plan_cluster

MINIMAL = {"http_port": 8001, "storage_config": {"base_dir": "/data", "namespaces": ["ns1"]}}


def round_trip(cfg: NodeConfig) -> NodeConfig:
    return parse_config(tomllib.loads(render_toml(cfg)), cfg.source)


def with_(base: dict, **sections: object) -> dict:
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for k, v in sections.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    return out


# ---------------------------------------------------------------- parsing


def test_minimal_config_gets_defaults() -> None:
    cfg = parse_config(MINIMAL, "dc1.toml")
    assert cfg.http_port == 8001 and cfg.source == "dc1.toml"
    assert cfg.storage == StorageConfig(base_dir="/data", namespaces=["ns1"])
    assert cfg.upstreams == [] and cfg.notifiers == []
    assert cfg.write_notify.enabled is True and cfg.log.log_level == "info"


def test_everything_round_trips_through_toml() -> None:
    cfg = NodeConfig(
        http_port=8003,
        grpc=GrpcConfig(port=4003, listen_ip="127.0.0.1", allow_insecure=False,
                        cert_path="/tls/tls.crt", key_path="/tls/tls.key", ca_path="/tls/ca.crt"),
        http=HttpConfig(listen_ip="127.0.0.1", max_body_size=3 * 1024 * 1024),
        storage=StorageConfig(
            base_dir="/data/relayer", namespaces=["ad-campaign-dc1", "ad-campaign-dc2"],
            bytes_per_sync=2 * 1024 * 1024, segment_size=32 * 1024 * 1024, arena_size=1024,
            wal_cleanup=WalCleanupConfig(enabled=True, interval=90.0, max_age=5 * 3600.0,
                                         max_records=5000, min_segments=5, max_segments=10)),
        write_notify=WriteNotifyConfig(enabled=False, max_delay=0.02),
        upstreams=[
            UpstreamConfig("dc1", ["ad-campaign-dc1"], "dc1-0.dc1:4001", segment_lag_threshold=10,
                           allow_insecure=True),
            UpstreamConfig("dc2", ["ad-campaign-dc2"], "127.0.0.1:4002", allow_insecure=False,
                           ca_path="/tls/ca.crt", cert_path="/tls/c.crt", key_path="/tls/c.key"),
        ],
        notifiers=[NotifierConfig("ad-campaign-dc1", 5555, high_water_mark=10, linger_time=0),
                   NotifierConfig("ad-campaign-dc2", 5556)],
        log=LogConfig(log_level="debug"),
        source="relayer.toml",
    )
    assert round_trip(cfg) == cfg


def test_planned_cluster_configs_round_trip() -> None:
    plans = plan_cluster([("dc1", ["a"]), ("dc2", ["b", "c"])], ["dc1", "dc2"],
                         base_dir=lambda n: f"/data/{n}",
                         upstream_address=lambda dc, port: f"{dc}:{port}")
    for plan in plans:
        assert round_trip(plan.config) == plan.config


def test_plan_cluster_follows_the_port_convention() -> None:
    plans = plan_cluster([("dc1", ["ad-campaign-dc1"]), ("dc2", ["ad-campaign-dc2"])],
                         ["dc1", "dc2"], base_dir=lambda n: f"/data/{n}",
                         upstream_address=lambda dc, port: f"{dc}.svc:{port}")
    assert [(p.name, p.role, p.index, p.http_port, p.grpc_port) for p in plans] == [
        ("dc1", "replicator", 1, 8001, 4001),
        ("dc2", "replicator", 2, 8002, 4002),
        ("relayer", "relayer", 3, 8003, 4003),
    ]
    relayer = plans[-1]
    assert relayer.notifier_ports == {"ad-campaign-dc1": 5555, "ad-campaign-dc2": 5556}
    assert [(u.name, u.namespaces, u.upstream_address) for u in relayer.config.upstreams] == [
        ("dc1", ["ad-campaign-dc1"], "dc1.svc:4001"), ("dc2", ["ad-campaign-dc2"], "dc2.svc:4002")]
    assert relayer.config.storage.base_dir == "/data/relayer"


# UnisonDB's example relayer config for the seed's demo (`configs/relayer.toml`).
SEED_RELAYER_TOML = """\
http_port = 8003

[storage_config]
base_dir = "/tmp/unisondb/examples/crdt/relayer"
namespaces = ["ad-campaign-dc1", "ad-campaign-dc2"]
bytes_per_sync = "1MB"
segment_size = "16MB"

[write_notify_config]
enabled = true
max_delay = "20ms"

[storage_config.wal_cleanup_config]
interval = "5m"
enabled = true
max_age = "1h"
min_segments = 5
max_segments = 10

[relayer_config.relayer1]
namespaces = ["ad-campaign-dc1"]
upstream_address = "127.0.0.1:4001"
segment_lag_threshold = 10
allow_insecure = true

[relayer_config.relayer2]
namespaces = ["ad-campaign-dc2"]
upstream_address = "127.0.0.1:4002"
segment_lag_threshold = 10
allow_insecure = true

[log_config]
log_level = "info"
disable_timestamp = true

[log_config.min_level_percents]
debug = 100.0
info  = 100.0
warn  = 100.0
error = 100.0

## ZeroMQ notifier configuration (per-namespace)
[notifier_config.ad-campaign-dc1]
bind_port = 5555
high_water_mark = 1000
linger_time = 1000

[notifier_config.ad-campaign-dc2]
bind_port = 5556
high_water_mark = 1000
linger_time = 1000
"""


def test_seed_relayer_config_loads_unchanged(tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "relayer.toml"
    path.write_text(SEED_RELAYER_TOML)
    with caplog.at_level(logging.WARNING, logger="unison.config"):
        cfg = load_config(path)
    assert not caplog.records, [r.getMessage() for r in caplog.records]
    assert cfg.http_port == 8003 and cfg.source == str(path)
    assert cfg.grpc.port == 0  # no grpc_config: a relayer need not serve replication
    assert cfg.storage.namespaces == ["ad-campaign-dc1", "ad-campaign-dc2"]
    assert cfg.storage.bytes_per_sync == 1024 * 1024
    assert cfg.storage.wal_cleanup == WalCleanupConfig(enabled=True, interval=300.0,
                                                       max_age=3600.0, min_segments=5,
                                                       max_segments=10)
    assert cfg.write_notify == WriteNotifyConfig(enabled=True, max_delay=0.02)
    assert cfg.upstreams == [
        UpstreamConfig("relayer1", ["ad-campaign-dc1"], "127.0.0.1:4001", 10, True),
        UpstreamConfig("relayer2", ["ad-campaign-dc2"], "127.0.0.1:4002", 10, True),
    ]
    followed = {ns: up for up in cfg.upstreams for ns in up.namespaces}
    assert followed == {"ad-campaign-dc1": cfg.upstreams[0], "ad-campaign-dc2": cfg.upstreams[1]}
    assert cfg.notifiers == [NotifierConfig("ad-campaign-dc1", 5555, 1000, 1000),
                             NotifierConfig("ad-campaign-dc2", 5556, 1000, 1000)]


def test_unknown_keys_warn_and_do_not_fail(caplog: pytest.LogCaptureFixture) -> None:
    doc = with_(MINIMAL, shiny_new_option=1, storage_config={"turbo": True})
    with caplog.at_level(logging.WARNING, logger="unison.config"):
        parse_config(doc, "x.toml")
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "shiny_new_option" in messages and "storage_config.turbo" in messages


# ---------------------------------------------------------------- errors name file and key


@pytest.mark.parametrize("doc, message", [
    ({"storage_config": MINIMAL["storage_config"]}, "http_port: required key is missing"),
    (with_(MINIMAL, http_port="8001"), "http_port: expected an integer, got '8001'"),
    (with_(MINIMAL, http_port=True), "http_port: expected an integer"),
    (with_(MINIMAL, http_port=70000), "http_port: must be between 1 and 65535, got 70000"),
    ({"http_port": 1}, "storage_config.base_dir: required key is missing"),
    (with_(MINIMAL, storage_config={"namespaces": []}),
     "storage_config.namespaces: at least one namespace is required"),
    (with_(MINIMAL, storage_config={"namespaces": ["ok", "Not OK"]}),
     "storage_config.namespaces[1]: invalid namespace 'Not OK'"),
    (with_(MINIMAL, storage_config={"namespaces": ["a", "a"]}),
     "storage_config.namespaces: namespaces must be unique"),
    (with_(MINIMAL, storage_config={"namespaces": "ns1"}),
     "storage_config.namespaces: expected a list of namespace names"),
    (with_(MINIMAL, storage_config={"segment_size": "big"}),
     "storage_config.segment_size: expected a size"),
    (with_(MINIMAL, storage_config={"wal_cleanup_config": {"max_age": "forever"}}),
     "storage_config.wal_cleanup_config.max_age: expected a duration"),
    (with_(MINIMAL, grpc_config={"allow_insecure": "yes"}),
     "grpc_config.allow_insecure: expected true or false, got 'yes'"),
    (with_(MINIMAL, grpc_config={"port": 4001, "allow_insecure": False}),
     "grpc_config.cert_path: required when allow_insecure = false"),
    # Plaintext only when asked: a port without TLS paths and without allow_insecure fails.
    (with_(MINIMAL, grpc_config={"port": 4001}),
     "grpc_config.cert_path: required when allow_insecure = false (the default); "
     "set allow_insecure = true for plaintext gRPC"),
    (with_(MINIMAL, grpc_config={"port": 4001, "cert_path": "/tls/tls.crt"}),
     "grpc_config.key_path: required when allow_insecure = false (the default)"),
    (with_(MINIMAL, grpc_config=5), "grpc_config: expected a table, got 5"),
    (with_(MINIMAL, log_config={"log_level": "loud"}), "log_config.log_level: expected debug"),
    (with_(MINIMAL, relayer_config={"r1": {"namespaces": ["ns1"]}}),
     "relayer_config.r1.upstream_address: required key is missing"),
    (with_(MINIMAL, relayer_config={"r1": {"namespaces": ["ns1"],
                                           "upstream_address": "dc1"}}),
     "relayer_config.r1.upstream_address: expected host:port, got 'dc1'"),
    (with_(MINIMAL, relayer_config={"r1": {"namespaces": ["other"],
                                           "upstream_address": "dc1:4001"}}),
     "relayer_config.r1.namespaces: namespace 'other' is not in storage_config.namespaces"),
    (with_(MINIMAL, relayer_config={
        "r1": {"namespaces": ["ns1"], "upstream_address": "dc1:4001", "allow_insecure": True},
        "r2": {"namespaces": ["ns1"], "upstream_address": "dc2:4002"}}),
     "relayer_config.r2.namespaces: namespace 'ns1' is already followed by relayer_config.r1"),
    (with_(MINIMAL, relayer_config={"r1": {"namespaces": ["ns1"], "upstream_address": "a:1",
                                           "allow_insecure": False}}),
     "relayer_config.r1.ca_path: required when allow_insecure = false"),
    (with_(MINIMAL, relayer_config={"r1": {"namespaces": ["ns1"], "upstream_address": "a:1"}}),
     "relayer_config.r1.ca_path: required when allow_insecure = false (the default); "
     "set allow_insecure = true for plaintext gRPC"),
    (with_(MINIMAL, notifier_config={"ns1": {}}),
     "notifier_config.ns1.bind_port: required key is missing"),
    (with_(MINIMAL, notifier_config={"other": {"bind_port": 5555}}),
     "notifier_config.other: namespace is not in storage_config.namespaces"),
    (with_(MINIMAL, storage_config={"namespaces": ["a", "b"]},
           notifier_config={"a": {"bind_port": 5555}, "b": {"bind_port": 5555}}),
     "notifier_config.b.bind_port: port 5555 is already used by notifier_config.a"),
])
def test_errors_name_the_file_and_the_key(doc: dict, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(doc, "/etc/unison/dc1.toml")
    text = str(err.value)
    assert text.startswith("/etc/unison/dc1.toml: "), text
    assert message in text, text
    assert "\n" not in text


def test_plaintext_grpc_is_opt_in() -> None:
    asked = parse_config(with_(MINIMAL, grpc_config={"port": 4001, "allow_insecure": True},
                               relayer_config={"r1": {"namespaces": ["ns1"],
                                                      "upstream_address": "a:1",
                                                      "allow_insecure": True}}), "x.toml")
    assert asked.grpc.allow_insecure and asked.upstreams[0].allow_insecure
    tls = parse_config(with_(MINIMAL, grpc_config={"port": 4001, "cert_path": "/c",
                                                   "key_path": "/k", "ca_path": "/ca"},
                             relayer_config={"r1": {"namespaces": ["ns1"],
                                                    "upstream_address": "a:1",
                                                    "ca_path": "/ca", "cert_path": "/c",
                                                    "key_path": "/k"}}), "x.toml")
    assert not tls.grpc.allow_insecure and not tls.upstreams[0].allow_insecure
    # No replication server (no grpc_config or port 0): nothing to secure, nothing required.
    assert not parse_config(MINIMAL, "x.toml").grpc.allow_insecure
    assert GrpcConfig().allow_insecure is False
    assert UpstreamConfig("r", ["ns1"], "a:1").allow_insecure is False


def test_rendered_configs_state_allow_insecure_and_load_back() -> None:
    plans = plan_cluster([("dc1", ["a"])], ["dc1"], base_dir=lambda n: f"/data/{n}",
                         upstream_address=lambda dc, port: f"{dc}:{port}")
    for plan in plans:
        text = render_toml(plan.config)
        doc = tomllib.loads(text)
        assert doc["grpc_config"]["allow_insecure"] is True, text
        for entry in doc.get("relayer_config", {}).values():
            assert entry["allow_insecure"] is True, text
        assert parse_config(doc, plan.name) == dataclasses.replace(plan.config, source=plan.name)


def test_load_config_reports_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"absent\.toml: cannot read config file"):
        load_config(tmp_path / "absent.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("http_port = = 1\n")
    with pytest.raises(ConfigError, match=r"bad\.toml: not valid TOML"):
        load_config(bad)
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes(b"http_port = 8001\n# caf\xe9\n")
    with pytest.raises(ConfigError, match=r"latin1\.toml: not UTF-8 text \(byte 0xe9 at line 2"):
        load_config(latin1)


def config_error_line(cfg: Path) -> str:
    """Start a replicator with `cfg` as a user would: exit 2, one line, no traceback."""
    proc = subprocess.run([sys.executable, "-m", "unison.cli", "node", "-config", str(cfg),
                           "replicator"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    return lines[0]


def test_non_utf8_config_exits_2_with_one_line_over_the_cli(tmp_path: Path) -> None:
    """The real command: no traceback, exit code 2, one line naming the file and the problem."""
    cfg = tmp_path / "dc1.toml"
    cfg.write_bytes(b'http_port = 8001\n[storage_config]\nbase_dir = "/tmp/d\xff"\n'
                    b'namespaces = ["ns1"]\n')
    line = config_error_line(cfg)
    assert str(cfg) in line and "not UTF-8" in line and "0xff" in line, line


def test_grpc_port_without_tls_or_allow_insecure_exits_2_over_the_cli(tmp_path: Path) -> None:
    cfg = tmp_path / "dc1.toml"
    cfg.write_text(f'http_port = 8001\n[grpc_config]\nport = 4001\n[storage_config]\n'
                   f'base_dir = "{tmp_path / "data"}"\nnamespaces = ["ns1"]\n')
    assert config_error_line(cfg) == (f"unison node: {cfg}: grpc_config.cert_path: required when "
                        "allow_insecure = false (the default); set allow_insecure = true for "
                        "plaintext gRPC")
    assert not (tmp_path / "data").exists()  # refused before anything was opened


# ---------------------------------------------------------------- durations and sizes


@pytest.mark.parametrize("text, seconds", [
    ("20ms", 0.02), ("5m", 300.0), ("1h30m", 5400.0), ("1.5s", 1.5), ("250us", 0.00025),
    ("0", 0.0), (0, 0.0), (12, 12.0), (0.5, 0.5), ("2h", 7200.0),
])
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text, "k") == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["20 ms", "soon", "5", "m5", "", True, -1, [1]])
def test_bad_durations_name_the_key(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"^write_notify_config\.max_delay: "):
        parse_duration(bad, "write_notify_config.max_delay")


@pytest.mark.parametrize("seconds", [0.0, 0.02, 1.0, 90.0, 300.0, 3600.0, 5400.0, 0.001])
def test_format_duration_reads_back(seconds: float) -> None:
    assert parse_duration(format_duration(seconds), "k") == pytest.approx(seconds)


@pytest.mark.parametrize("text, size", [
    ("1MB", 1024**2), ("16MiB", 16 * 1024**2), ("4k", 4096), ("4KB", 4096), ("2G", 2 * 1024**3),
    ("512", 512), ("512B", 512), (1048576, 1048576), ("1.5MB", 1572864),
])
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text, "k") == size


@pytest.mark.parametrize("bad", ["lots", "1TB", "-1MB", -1, True, 1.5])
def test_bad_sizes_name_the_key(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"^storage_config\.segment_size: "):
        parse_size(bad, "storage_config.segment_size")


@pytest.mark.parametrize("size", [0, 1, 1000, 1024, 4096, 1024**2, 3 * 1024**2, 1024**3])
def test_format_size_reads_back(size: int) -> None:
    assert parse_size(format_size(size), "k") == size


def test_render_is_stable() -> None:
    cfg = parse_config(MINIMAL, "x.toml")
    assert render_toml(cfg) == render_toml(round_trip(cfg))
    assert dataclasses.replace(round_trip(cfg), source="x.toml") == cfg


def test_accepted_but_unused_storage_keys_are_noted_at_debug(
        caplog: pytest.LogCaptureFixture) -> None:
    doc = with_(MINIMAL, storage_config={"segment_size": "16MB", "arena_size": "4MB",
                                         "bytes_per_sync": "1MB",
                                         "wal_cleanup_config": {"min_segments": 5}})
    with caplog.at_level(logging.DEBUG, logger="unison.config"):
        parse_config(doc, "x.toml")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    debug = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG)
    for key in ("storage_config.segment_size", "storage_config.arena_size",
                "storage_config.wal_cleanup_config.min_segments"):
        assert f"{key} has no effect" in debug, debug
    assert "bytes_per_sync" not in debug  # it has a RocksDB meaning

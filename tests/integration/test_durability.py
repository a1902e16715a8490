"""Durability and process life cycle of a real node: kill -9, SIGTERM, bad configs.

A PUT is acknowledged only once its group commit is synced, so a node killed with
SIGKILL right after an acknowledgement must still have the write after restart, and the
namespace's LSN must continue where it stopped (no LSN reused).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp
import pytest
from unison.config import GrpcConfig, load_config

from tests.support.nodes import (
    HOST,
    NodeProcess,
    b64,
    free_port,
    kv_path,
    single_node_config,
    unb64,
)

NS = "durable"


def node_in(tmp_path: Path, name: str = "n1") -> NodeProcess:
    cfg = single_node_config(tmp_path, [NS], grpc=GrpcConfig(port=0))
    return NodeProcess(name, "replicator", cfg, tmp_path)


async def put_all(port: int, keys: list[str], concurrency: int = 64,
                  progress: tuple[int, asyncio.Event] | None = None) -> set[str]:
    """PUT every key (value derived from the key) concurrently; the acknowledged keys.
    `progress` (n, event): set the event once n keys are acknowledged."""
    acked: set[str] = set()
    sem = asyncio.Semaphore(concurrency)

    async def one(session: aiohttp.ClientSession, key: str) -> None:
        async with sem:
            try:
                async with session.put(f"http://{HOST}:{port}{kv_path(NS, key)}",
                                       json={"value": b64(f"value-of-{key}")}) as r:
                    if r.status == 200 and (await r.json()) == {"success": True}:
                        acked.add(key)
                        if progress is not None and len(acked) >= progress[0]:
                            progress[1].set()
            except aiohttp.ClientError:
                pass  # not acknowledged: no promise was made about this key

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(one(session, k) for k in keys))
    return acked


def all_items(node: NodeProcess) -> dict[str, bytes]:
    status, page = node.api("GET", f"/api/v1/{NS}/kv?limit=10000")
    assert status == 200 and page["more"] is False
    return {i["key"]: unb64(i["value"]) for i in page["items"]}


def offset(node: NodeProcess) -> int:
    status, body = node.api("GET", f"/api/v1/{NS}/offset")
    assert status == 200, body
    return body["lsn"]


def wal_helpers_of(tmp_path: Path) -> list[int]:
    """Pids of WAL sync helper processes syncing a directory under tmp_path."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(a.endswith(b"wal_sync_helper.py") for a in argv) and str(tmp_path).encode() in b" ".join(argv):
            pids.append(int(entry.name))
    return pids


async def test_acknowledged_writes_survive_kill9_and_lsn_continues(tmp_path: Path) -> None:
    node = node_in(tmp_path).start()
    count = 2000
    keys = [f"k:{i:05d}" for i in range(count)]
    acked = await put_all(node.http_port, keys)
    assert len(wal_helpers_of(tmp_path)) == 1  # the namespace's WAL is synced by a helper
    node.kill9()  # right after the last acknowledgement: no clean shutdown, no flush
    assert acked == set(keys)
    for _ in range(200):  # the helper sees its socket close and exits: nothing left behind
        if not wal_helpers_of(tmp_path):
            break
        await asyncio.sleep(0.05)
    assert wal_helpers_of(tmp_path) == []

    node.start()
    items = all_items(node)
    assert {k: items.get(k) for k in acked} == {k: f"value-of-{k}".encode() for k in acked}
    assert offset(node) == count
    node.put(NS, "after-restart", "x")
    assert offset(node) == count + 1
    assert node.stop() == 0


async def test_kill9_during_writes_loses_nothing_acknowledged(tmp_path: Path) -> None:
    """SIGKILL while writes are still in flight: what was acknowledged is there, what was
    not may or may not be, and the log continues without reusing an LSN."""
    node = node_in(tmp_path).start()
    keys = [f"inflight:{i:05d}" for i in range(3000)]
    some_acked = asyncio.Event()
    writes = asyncio.ensure_future(put_all(node.http_port, keys, progress=(500, some_acked)))
    await some_acked.wait()
    node.kill9()
    acked = await writes
    assert 500 <= len(acked) < len(keys)

    node.start()
    items = all_items(node)
    assert all(items.get(k) == f"value-of-{k}".encode() for k in acked)
    # Unacknowledged keys are either fully there or absent, never a torn value.
    assert all(v == f"value-of-{k}".encode() for k, v in items.items())
    recovered = offset(node)
    assert recovered == len(items) >= len(acked)
    node.put(NS, "after-crash", "x")
    assert offset(node) == recovered + 1
    assert node.stop() == 0


# ---------------------------------------------------------------- clean shutdown


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_shuts_down_cleanly_and_logs_ports(tmp_path: Path, sig: signal.Signals) -> None:
    node = node_in(tmp_path).start()
    assert node.put(NS, "k", "v")[0] == 200
    assert node.proc is not None
    node.proc.send_signal(sig)
    assert node.proc.wait(15) == 0
    logs = node.logs()
    assert f"HTTP server listening on :{node.http_port}" in logs
    assert "stopped cleanly" in logs and "Traceback" not in logs
    node.start()  # RocksDB was closed properly: it reopens with the data
    assert node.get(NS, "k") == b"v"
    assert node.stop() == 0


def test_grpc_port_is_logged_when_replication_is_on(tmp_path: Path) -> None:
    cfg = single_node_config(tmp_path, [NS])
    node = NodeProcess("g1", "replicator", cfg, tmp_path).start()
    assert node.stop() == 0
    assert f"gRPC server listening on {HOST}:{cfg.grpc.port}" in node.logs()


# ---------------------------------------------------------------- config files


def run_node(config: Path, role: str = "replicator", timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "unison.cli", "node", "-config", str(config),
                           role], capture_output=True, text=True, timeout=timeout)


def good_config(tmp_path: Path, port: int = 0) -> str:
    return (f'http_port = {port or free_port()}\n[http_config]\nlisten_ip = "{HOST}"\n'
            f'[storage_config]\nbase_dir = "{tmp_path / "data"}"\n'
            'namespaces = ["ns1"]\n')


@pytest.mark.parametrize("text, key", [
    ('[storage_config]\nbase_dir = "/tmp/x"\nnamespaces = ["ns1"]\n', "http_port"),
    ('http_port = "8001"\n[storage_config]\nbase_dir = "/tmp/x"\nnamespaces = ["ns1"]\n',
     "http_port"),
    ('http_port = 8001\n[storage_config]\nbase_dir = "/tmp/x"\nnamespaces = ["Bad NS!"]\n',
     "storage_config.namespaces[0]"),
    ('http_port = 8001\n[storage_config]\nbase_dir = "/tmp/x"\nnamespaces = "ns1"\n',
     "storage_config.namespaces"),
    ('http_port = 8001\n[storage_config]\nnamespaces = ["ns1"]\n', "storage_config.base_dir"),
    ('http_port = 8001\n[storage_config]\nbase_dir = "/tmp/x"\nnamespaces = ["ns1"]\n'
     '[grpc_config]\nport = 99999\n', "grpc_config.port"),
    ('http_port = 8001\n[storage_config]\nbase_dir = "/tmp/x"\nnamespaces = ["ns1"]\n'
     '[write_notify_config]\nmax_delay = "soon"\n', "write_notify_config.max_delay"),
    ('http_port = 8001\nstorage_config = [\n', "not valid TOML"),
])
def test_bad_config_exits_2_with_one_line_naming_file_and_key(tmp_path: Path, text: str,
                                                               key: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(text)
    result = run_node(config)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(config) in lines[0] and key in lines[0], lines[0]
    assert "Traceback" not in result.stderr


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    result = run_node(tmp_path / "absent.toml")
    assert result.returncode == 2
    assert str(tmp_path / "absent.toml") in result.stderr and "Traceback" not in result.stderr


def test_bad_role_is_a_usage_error(tmp_path: Path) -> None:
    config = tmp_path / "ok.toml"
    config.write_text(good_config(tmp_path))
    result = run_node(config, role="primary")
    assert result.returncode == 2 and "role" in result.stderr


def test_taken_http_port_is_a_clear_startup_failure(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind((HOST, 0))
        s.listen()
        port = s.getsockname()[1]
        config = tmp_path / "ok.toml"
        config.write_text(good_config(tmp_path, port))
        result = run_node(config)
    assert result.returncode == 1
    assert f"HTTP port {port}" in result.stderr and "Traceback" not in result.stderr


# UnisonDB's own example config for datacenter 1 of the multi-DC CRDT demo (the seed's
# `configs/dc1.toml`), unchanged except for base_dir and the ports, which the test frees.
SEED_DC1_TOML = """\
## Port of the http server
http_port = {http_port}

[grpc_config]
port = {grpc_port}
allow_insecure = true

[storage_config]
base_dir = "{base_dir}"
namespaces = ["ad-campaign-dc1"]
bytes_per_sync = "1MB"
segment_size = "16MB"
arena_size = "4MB"

[write_notify_config]
enabled = true
max_delay = "20ms"

[storage_config.wal_cleanup_config]
interval = "5m"
enabled = true
max_age = "5h"
min_segments = 50
max_segments = 100

[log_config]
log_level = "info"
disable_timestamp = true

[log_config.min_level_percents]
debug = 100.0
info  = 10.0
warn  = 100.0
error = 100.0
"""


def test_seed_dc1_config_loads_and_the_node_serves_the_seed_curl(tmp_path: Path) -> None:
    http_port, grpc_port = free_port(), free_port()
    config = tmp_path / "dc1.toml"
    config.write_text(SEED_DC1_TOML.format(http_port=http_port, grpc_port=grpc_port,
                                           base_dir=tmp_path / "dc1"))
    cfg = load_config(config)
    assert cfg.storage.namespaces == ["ad-campaign-dc1"]
    assert cfg.write_notify.max_delay == pytest.approx(0.020)
    assert cfg.storage.wal_cleanup.max_age == 5 * 3600

    proc = subprocess.Popen([sys.executable, "-m", "unison.cli", "node", "-config", str(config),
                             "replicator"], stdout=subprocess.DEVNULL,
                            stderr=open(tmp_path / "dc1.log", "wb"),  # noqa: SIM115
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    node = NodeProcess("dc1", "replicator", cfg, tmp_path)
    node.proc = proc
    node.log_path = tmp_path / "dc1.log"
    node.wait_healthy()
    value = '{"value":"online","timestamp":1698765432000,"replica":"ad-campaign-dc1"}'
    assert node.api("PUT", "/api/v1/ad-campaign-dc1/kv/lww:user-status",
                    {"value": b64(value)}) == (200, {"success": True})
    assert node.get("ad-campaign-dc1", "lww:user-status") == value.encode()
    assert node.stop() == 0
    logs = node.logs()
    assert f"HTTP server listening on :{http_port}" in logs
    assert "Namespace 'ad-campaign-dc1' initialized" in logs

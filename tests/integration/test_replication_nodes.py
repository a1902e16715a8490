"""Replication between real node processes on 127.0.0.1 (the seed's topology and faults).

Nodes run as `unison node -config FILE replicator|relayer` subprocesses; faults are real
SIGTERM / SIGKILL. Convergence is judged like a user would: full scans and offsets over
the HTTP API of each node must be identical.
"""

from __future__ import annotations

import copy
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from unison.config import WalCleanupConfig

from tests.support.nodes import HOST, NodeProcess, b64, free_port, seed_cluster

DC1, DC2 = "ad-campaign-dc1", "ad-campaign-dc2"


def wait_for(cond: Callable[[], bool], within: float = 30.0, what: str = "condition",
             nodes: tuple[NodeProcess, ...] = ()) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    logs = "\n".join(f"--- {n.name}\n{n.logs()[-4000:]}" for n in nodes)
    raise AssertionError(f"timed out after {within}s waiting for {what}\n{logs}")


def offset(node: NodeProcess, ns: str) -> int:
    status, body = node.api("GET", f"/api/v1/{ns}/offset")
    assert status == 200, (status, body)
    return int(body["lsn"])


def scan_all(node: NodeProcess, ns: str) -> list[tuple[str, str]]:
    items: list[tuple[str, str]] = []
    after = ""
    while True:
        q = urllib.parse.urlencode({"limit": 10000, **({"after": after} if after else {})})
        status, body = node.api("GET", f"/api/v1/{ns}/kv?{q}")
        assert status == 200, (status, body)
        items += [(i["key"], i["value"]) for i in body["items"]]
        if not body["more"]:
            return items
        after = items[-1][0]


def stats(node: NodeProcess, ns: str) -> dict[str, Any]:
    status, body = node.api("GET", f"/api/v1/{ns}/stats")
    assert status == 200, (status, body)
    return body


def write_batches(node: NodeProcess, ns: str, n: int, prefix: str, batch: int = 1000) -> None:
    for start in range(0, n, batch):
        items = [{"key": f"{prefix}{i:06d}", "value": b64(f"value-{i}")}
                 for i in range(start, min(n, start + batch))]
        status, body = node.api("POST", f"/api/v1/{ns}/kv/batch",
                                {"operation": "put", "items": items}, timeout=30)
        assert status == 200, (status, body)


def converged(primary: NodeProcess, replica: NodeProcess, ns: str) -> bool:
    try:
        return offset(primary, ns) == offset(replica, ns)
    except OSError:
        return False


def assert_identical(primary: NodeProcess, replica: NodeProcess, ns: str) -> None:
    assert offset(replica, ns) == offset(primary, ns)
    assert scan_all(replica, ns) == scan_all(primary, ns)


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[dict[str, NodeProcess]]:
    started: dict[str, NodeProcess] = {}
    yield started
    for node in started.values():
        node.stop()


def _seed(tmp_path: Path, nodes: dict[str, NodeProcess], dcs: list[str] | None = None,
          ) -> dict[str, NodeProcess]:
    plan = seed_cluster(tmp_path, [(dc, [f"ad-campaign-{dc}"]) for dc in (dcs or ["dc1", "dc2"])])
    nodes.update(plan)
    return plan


def test_seed_topology_relayer_sees_both_datacenters_and_is_read_only(
        tmp_path: Path, nodes: dict[str, NodeProcess]) -> None:
    c = _seed(tmp_path, nodes)
    for node in c.values():
        node.start(wait=False)
    for node in c.values():
        node.wait_healthy()
    dc1, dc2, relayer = c["dc1"], c["dc2"], c["relayer"]

    status = '{"value":"online","timestamp":1,"replica":"ad-campaign-dc1"}'
    assert dc1.put(DC1, "lww:user-status", status)[0] == 200
    assert dc2.put(DC2, "counter:page-views", '{"replica":"dc2","count":3}')[0] == 200
    wait_for(lambda: relayer.get(DC1, "lww:user-status") is not None, what="dc1 key on relayer",
             nodes=(relayer,))
    wait_for(lambda: relayer.get(DC2, "counter:page-views") is not None,
             what="dc2 key on relayer", nodes=(relayer,))
    assert relayer.get(DC1, "lww:user-status") == status.encode()
    assert relayer.get(DC2, "counter:page-views") == b'{"replica":"dc2","count":3}'
    relayer.wait_ready()

    status, body = relayer.put(DC1, "sneaky", "write")
    assert status == 403, (status, body)
    assert relayer.get(DC1, "sneaky") is None and dc1.get(DC1, "sneaky") is None
    follower = stats(relayer, DC2)["follower"]
    assert follower["upstream"] == f"{HOST}:{dc2.grpc_port}"
    # The upstream's latest LSN reaches the follower with the stream, not at once.
    wait_for(lambda: (f := stats(relayer, DC2)["follower"])["lag_records"] == 0
             and f["applied_lsn"] == 1, what="dc2's follower at lag 0", nodes=(relayer,))


def test_relayer_down_during_10k_writes_catches_up_exactly(
        tmp_path: Path, nodes: dict[str, NodeProcess]) -> None:
    c = _seed(tmp_path, nodes, ["dc1"])
    dc1, relayer = c["dc1"].start(), c["relayer"].start()
    write_batches(dc1, DC1, 500, "before-")
    wait_for(lambda: converged(dc1, relayer, DC1), what="initial sync", nodes=(relayer,))

    assert relayer.stop() == 0
    write_batches(dc1, DC1, 10_000, "offline-")
    status, _ = dc1.api("POST", f"/api/v1/{DC1}/kv/batch",
                        {"operation": "delete", "keys": [f"before-{i:06d}" for i in range(100)]})
    assert status == 200
    relayer.start()
    wait_for(lambda: converged(dc1, relayer, DC1), what="catch-up", nodes=(relayer,))
    assert offset(dc1, DC1) == 10_600
    assert_identical(dc1, relayer, DC1)
    st = stats(relayer, DC1)
    assert st["follower"]["records_applied"] == 10_100  # exactly what it missed, once
    assert st["snapshots_installed"] == 0


def test_upstream_killed_mid_stream_relayer_reconnects_and_converges(
        tmp_path: Path, nodes: dict[str, NodeProcess]) -> None:
    c = _seed(tmp_path, nodes, ["dc1"])
    dc1, relayer = c["dc1"].start(), c["relayer"]
    write_batches(dc1, DC1, 30_000, "bulk-", batch=2000)
    relayer.start(wait=False)
    # Kill the upstream as soon as the relayer's stream is flowing (usually part-way
    # through the backlog; at worst while tailing).
    wait_for(lambda: _relayer_offset(relayer) > 0, what="relayer streaming", nodes=(relayer,))
    dc1.kill9()
    assert _relayer_offset(relayer) > 0
    dc1.start()
    write_batches(dc1, DC1, 300, "after-restart-")
    wait_for(lambda: converged(dc1, relayer, DC1), what="convergence after kill -9",
             nodes=(relayer, dc1))
    assert_identical(dc1, relayer, DC1)
    assert offset(dc1, DC1) == 30_300  # kill -9 lost nothing acknowledged
    assert "reconnect attempt" in relayer.logs()


def _relayer_offset(relayer: NodeProcess) -> int:
    try:
        return offset(relayer, DC1)
    except (OSError, AssertionError):
        return 0


def test_trimmed_upstream_log_relayer_bootstraps_from_snapshot(
        tmp_path: Path, nodes: dict[str, NodeProcess]) -> None:
    c = _seed(tmp_path, nodes, ["dc1"])
    dc1, relayer = c["dc1"], c["relayer"]
    dc1.config.storage.wal_cleanup = WalCleanupConfig(enabled=True, max_records=200,
                                                      interval=0.2)
    dc1.start()
    relayer.start()
    write_batches(dc1, DC1, 300, "early-")
    wait_for(lambda: converged(dc1, relayer, DC1), what="initial sync", nodes=(relayer,))
    relayer.stop()

    write_batches(dc1, DC1, 3000, "later-")
    dc1.api("POST", f"/api/v1/{DC1}/kv/batch",
            {"operation": "delete", "keys": [f"early-{i:06d}" for i in range(50)]})
    wait_for(lambda: stats(dc1, DC1)["first_retained_lsn"] > 301,
             what="dc1 trims its log below the relayer's position", nodes=(dc1,))
    relayer.start()
    wait_for(lambda: converged(dc1, relayer, DC1), what="snapshot bootstrap", nodes=(relayer,))
    assert_identical(dc1, relayer, DC1)
    assert stats(relayer, DC1)["snapshots_installed"] == 1
    assert "installing a snapshot" in relayer.logs()
    # ...and it keeps tailing after the snapshot.
    assert dc1.put(DC1, "post-snapshot", "tail")[0] == 200
    wait_for(lambda: relayer.get(DC1, "post-snapshot") == b"tail", what="tail after snapshot")


def test_two_hops_dc1_to_relayer_a_to_relayer_b(
        tmp_path: Path, nodes: dict[str, NodeProcess]) -> None:
    c = _seed(tmp_path, nodes, ["dc1"])
    dc1, relay_a = c["dc1"], c["relayer"]
    cfg = copy.deepcopy(relay_a.config)
    cfg.http_port, cfg.grpc.port = free_port(), free_port()
    cfg.storage.base_dir = str(tmp_path / "relayer-b" / "data")
    cfg.notifiers = []
    cfg.upstreams[0].upstream_address = f"{HOST}:{relay_a.grpc_port}"
    relay_b = nodes["relayer-b"] = NodeProcess("relayer-b", "relayer", cfg, tmp_path / "relayer-b")
    for node in (dc1, relay_a, relay_b):
        node.start(wait=False)
    for node in (dc1, relay_a, relay_b):
        node.wait_healthy()
    write_batches(dc1, DC1, 2000, "hop-")
    assert dc1.put(DC1, "last", "x")[0] == 200
    wait_for(lambda: converged(dc1, relay_b, DC1), what="second hop", nodes=(relay_a, relay_b))
    assert_identical(dc1, relay_b, DC1)
    assert_identical(relay_a, relay_b, DC1)
    relay_b.wait_ready()
    assert relay_b.put(DC1, "k", "v")[0] == 403


def _readyz(node: NodeProcess) -> tuple[int, dict[str, Any]]:
    status, body = node.api("GET", "/readyz", timeout=5)
    assert isinstance(body, dict), (status, body)
    return status, body


def _follower_metrics(node: NodeProcess, labels: str) -> dict[str, str]:
    """unison_follower_* samples (and unison_ready) with these labels: name -> value."""
    status, text = node.api("GET", "/metrics")
    assert status == 200 and isinstance(text, str), (status, text)
    out: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("unison_ready "):
            out["unison_ready"] = _number(line.split()[-1])
        elif line.startswith("unison_follower_") and labels in line:
            out[line.split("{", 1)[0]] = _number(line.rsplit(" ", 1)[1])
    return out


def _number(sample: str) -> str:
    """A sample value as a person writes it: "1.0" -> "1", "0.25" stays."""
    value = float(sample)
    return str(int(value)) if value.is_integer() else sample


def test_relayer_is_not_ready_while_its_upstream_is_gone_and_ready_again_after(
        tmp_path: Path, nodes: dict[str, NodeProcess]) -> None:
    c = _seed(tmp_path, nodes, ["dc1"])
    dc1, relayer = c["dc1"], c["relayer"]
    relayer.config.upstreams[0].segment_lag_threshold = 5
    dc1.start()
    relayer.start()
    write_batches(dc1, DC1, 50, "before-")
    wait_for(lambda: converged(dc1, relayer, DC1), what="initial sync", nodes=(relayer,))
    wait_for(lambda: _readyz(relayer)[0] == 200, what="relayer ready", nodes=(relayer,))

    # Upstream gone: the last reported lag is 0, but the data is going stale.
    dc1.kill9()
    wait_for(lambda: _readyz(relayer)[0] == 503, within=20, what="relayer not ready",
             nodes=(relayer,))
    _, body = _readyz(relayer)
    upstream = f"upstream dc1 ({HOST}:{dc1.grpc_port}) unreachable: disconnected for"
    assert any(r.startswith(f"namespace {DC1}: {upstream}") for r in body["reasons"]), body
    follower = stats(relayer, DC1)["follower"]
    assert follower["connected"] is False and follower["caught_up"] is False, follower
    assert follower["disconnected_seconds"] > 0 and upstream in follower["not_ready_reason"]
    labels = f'namespace="{DC1}",upstream="{HOST}:{dc1.grpc_port}"'
    m = _follower_metrics(relayer, labels)
    assert m["unison_ready"] == "0" and m["unison_follower_caught_up"] == "0", m
    assert m["unison_follower_connected"] == "0" and float(m["unison_follower_disconnected_seconds"]) > 0

    # Back, with more writes than the threshold: the relayer reconnects, catches up, is ready.
    dc1.start()
    write_batches(dc1, DC1, 100, "after-")
    wait_for(lambda: converged(dc1, relayer, DC1), what="catch-up after restart",
             nodes=(relayer, dc1))
    wait_for(lambda: _readyz(relayer)[0] == 200, what="relayer ready again", nodes=(relayer,))
    assert _readyz(relayer)[1] == {"ready": True, "reasons": []}
    follower = stats(relayer, DC1)["follower"]
    assert follower["connected"] is True and follower["caught_up"] is True, follower
    assert follower["upstream_lsn"] == follower["applied_lsn"] == offset(dc1, DC1) == 150
    assert follower["lag_records"] == 0 and follower["lag_seconds"] == 0.0
    assert follower["segment_lag_threshold"] == 5 and follower["not_ready_reason"] is None
    assert follower["disconnected_seconds"] is None and follower["reconnects"] >= 1
    m = _follower_metrics(relayer, labels)
    assert m["unison_ready"] == "1" and m["unison_follower_caught_up"] == "1", m
    assert m["unison_follower_lag_records"] == "0" and float(m["unison_follower_lag_seconds"]) == 0
    assert m["unison_follower_segment_lag_threshold"] == "5" and m["unison_follower_connected"] == "1"
    assert "unison_follower_disconnected_seconds" not in m  # only while disconnected


def test_relayer_with_an_unresolvable_upstream_says_why_in_its_log_and_readyz(
        tmp_path: Path, nodes: dict[str, NodeProcess]) -> None:
    # What a typo in an upstream's name (or a Service not created yet) looks like.
    c = _seed(tmp_path, nodes, ["dc1"])
    relayer = c["relayer"]
    relayer.config.upstreams[0].upstream_address = "nonexistent.invalid:4001"
    relayer.start(wait=False)
    relayer.wait_healthy()
    wait_for(lambda: "nonexistent.invalid" in (_readyz(relayer)[1].get("error") or ""),
             within=20, what="readyz naming the upstream", nodes=(relayer,))
    _, body = _readyz(relayer)
    (reason,) = body["reasons"]
    assert reason.startswith(f"namespace {DC1}: upstream dc1 (nonexistent.invalid:4001) "
                             "unreachable: never reached since start; last error: UNAVAILABLE:")
    assert "resolv" in reason, reason
    # The log gives the same reason, once, while the follower keeps retrying.
    wait_for(lambda: stats(relayer, DC1)["follower"]["connect_attempts"] >= 5, within=20,
             what="several attempts", nodes=(relayer,))
    warnings = [line for line in relayer.logs().splitlines() if "interrupted" in line]
    assert len(warnings) == 1, warnings
    assert "nonexistent.invalid" in warnings[0] and "resolv" in warnings[0]

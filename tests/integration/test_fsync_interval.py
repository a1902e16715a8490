"""The interval durability mode (storage_config.wal_fsync_interval, issue 17) on real node
processes: /stats shows the mode and synced_lsn, writes are acknowledged while the WAL
sync helper is frozen until sync_timeout bounds the window (503, /readyz), and a kill -9
loses nothing acknowledged (the page cache outlives the process) but starts a new epoch
that a relayer which followed it continues."""

from __future__ import annotations

import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_replication_nodes import (
    DC1,
    assert_identical,
    converged,
    offset,
    stats,
    wait_for,
    write_batches,
)
from tests.support.nodes import NodeProcess, seed_cluster, single_node_config

NS = "fsync"


def _helper_pid(node: NodeProcess, ns: str) -> int:
    found = re.findall(rf"namespace {ns}: WAL of .* synced by helper process (\d+)", node.logs())
    assert found, node.logs()
    return int(found[-1])


@pytest.fixture
def node(tmp_path: Path) -> Iterator[NodeProcess]:
    cfg = single_node_config(tmp_path, [NS])
    cfg.storage.wal_fsync_interval, cfg.storage.sync_timeout = 0.2, 1.5
    n = NodeProcess("dc", "replicator", cfg, tmp_path / "dc").start()
    yield n
    n.stop()


def test_stats_show_the_mode_and_writes_outrun_a_frozen_helper_until_sync_timeout(
        node: NodeProcess) -> None:
    assert ("durability mode interval" in node.logs()
            and "may be lost on power loss (storage_config.wal_fsync_interval)" in node.logs())
    assert node.put(NS, "first", "v")[0] == 200
    wait_for(lambda: stats(node, NS)["synced_lsn"] == 1, 5, "the first sync", (node,))
    s = stats(node, NS)
    assert (s["durability"], s["wal_fsync_interval_s"], s["lsn"]) == ("interval", 0.2, 1)
    helper = _helper_pid(node, NS)
    os.kill(helper, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        for i in range(10):  # acknowledged without the helper
            status, body = node.put(NS, f"k{i}", "v")
            assert status == 200, body
        assert time.monotonic() - t0 < 1.0
        s = stats(node, NS)
        assert s["lsn"] == 11 and s["synced_lsn"] == 1, s
        # The sync asked for at the next tick hangs: after sync_timeout writes are refused.
        wait_for(lambda: node.put(NS, "probe", "v")[0] == 503, 5, "the stall", (node,))
        status, body = node.put(NS, "refused", "v")
        assert status == 503 and "storage_config.sync_timeout" in body["error"], body
        status, body = node.api("GET", "/readyz")
        assert status == 503 and "WAL sync has not completed" in body["error"], body
        assert stats(node, NS)["synced_lsn"] == 1
    finally:
        os.kill(helper, signal.SIGCONT)
    wait_for(lambda: node.api("GET", "/readyz")[0] == 200, 5, "ready again", (node,))
    assert node.put(NS, "after", "v")[0] == 200
    t0 = time.monotonic()
    wait_for(lambda: (s := stats(node, NS))["synced_lsn"] == s["lsn"], 5, "caught up", (node,))
    assert time.monotonic() - t0 < 1.0  # about one interval


def test_kill9_loses_nothing_acknowledged_and_starts_a_new_epoch_a_relayer_continues(
        tmp_path: Path) -> None:
    nodes = seed_cluster(tmp_path, [("dc1", [DC1])])
    dc1, relayer = nodes["dc1"], nodes["relayer"]
    dc1.config.storage.wal_fsync_interval = 60.0  # the kill lands before its first sync
    relayer.config.storage.wal_fsync_interval = 0.5
    try:
        dc1.start()
        relayer.start()
        write_batches(dc1, DC1, 2000, "batch-", batch=250)
        acked = [f"single-{i}" for i in range(50) if dc1.put(DC1, f"single-{i}", "v")[0] == 200]
        assert len(acked) == 50
        lsn = offset(dc1, DC1)
        wait_for(lambda: converged(dc1, relayer, DC1), 30, "the relayer caught up", nodes=(relayer,))
        assert stats(dc1, DC1)["synced_lsn"] < lsn  # the kill comes before the next sync
        assert stats(dc1, DC1)["history_epoch"] == 1

        dc1.kill9()
        dc1.start()
        assert offset(dc1, DC1) == lsn, "an acknowledged write was lost"
        assert all(dc1.get(DC1, k) == b"v" for k in acked)
        assert dc1.get(DC1, "batch-001999") == b"value-1999"
        s = stats(dc1, DC1)
        assert s["history_epoch"] == 2 and s["synced_lsn"] == s["lsn"] == lsn, s
        assert "starting a new epoch" in dc1.logs()

        # The relayer holds no more than dc1 kept: it continues into the new epoch.
        write_batches(dc1, DC1, 100, "later-")
        wait_for(lambda: converged(dc1, relayer, DC1), 30, "the relayer continued",
                 nodes=(relayer, dc1))
        follower = stats(relayer, DC1)["follower"]
        assert not follower["history_mismatch"], follower
        relayer.wait_ready(10)
        assert_identical(dc1, relayer, DC1)

        dc1.stop()  # a clean close: no new epoch at the next start
        dc1.start()
        assert stats(dc1, DC1)["history_epoch"] == 2
    finally:
        for n in (relayer, dc1):
            n.stop()

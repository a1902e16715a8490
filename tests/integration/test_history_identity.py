"""History identity: a follower never splices two histories of a namespace.

The issue's scenario with real processes: the relayer follows dc1; dc1 loses its disk
(or is restored from an older copy) and takes new writes past the relayer's LSN. Before
history identities the relayer streamed LSN 101+ of the new history onto 1-100 of the
old one and reported ready. Now it must refuse, apply nothing, and name the namespace
and both histories in /readyz and /metrics; the documented way out must work.
"""

from __future__ import annotations

import copy
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_replication_nodes import (
    DC1,
    assert_identical,
    converged,
    offset,
    scan_all,
    stats,
    wait_for,
    write_batches,
)
from tests.support.nodes import NodeProcess, free_port, seed_cluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[dict[str, NodeProcess]]:
    nodes = seed_cluster(tmp_path, [("dc1", [DC1])])
    yield nodes
    for node in nodes.values():
        node.stop()


def _readyz(node: NodeProcess) -> tuple[int, dict[str, Any]]:
    return node.api("GET", "/readyz", timeout=5)


def _metrics(node: NodeProcess) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{node.http_port}/metrics", timeout=5) as r:
        return r.read().decode()


def _ns_dir(node: NodeProcess) -> Path:
    return Path(node.config.storage.base_dir) / DC1


def _mismatch_reported(relayer: NodeProcess) -> bool:
    status, body = _readyz(relayer)
    return status == 503 and "history mismatch" in (body.get("error") or "")


def _assert_refused(dc1: NodeProcess, relayer: NodeProcess, old: list[tuple[str, str]],
                    old_history: str) -> None:
    wait_for(lambda: _mismatch_reported(relayer), within=20, what="history mismatch in /readyz",
             nodes=(relayer,))
    new_history = stats(dc1, DC1)["history_id"]
    error = _readyz(relayer)[1]["error"]
    assert DC1 in error and old_history in error and new_history in error, error
    metrics = _metrics(relayer)
    assert f'unison_follower_history_mismatch{{namespace="{DC1}"' in metrics
    info = [line for line in metrics.splitlines()
            if line.startswith("unison_follower_history_mismatch_info{")]
    assert len(info) == 1 and old_history in info[0] and f'"{new_history}' in info[0], info
    # Nothing of the other history was applied: the relayer still holds exactly the old one.
    assert offset(relayer, DC1) == 100
    assert scan_all(relayer, DC1) == old
    follower = stats(relayer, DC1)["follower"]
    assert follower["history_mismatch"] is True and follower["records_applied"] == 100
    assert "history mismatch" in relayer.logs()


def test_datacenter_that_lost_its_disk_is_refused_not_spliced(
        cluster: dict[str, NodeProcess]) -> None:
    dc1, relayer = cluster["dc1"].start(), cluster["relayer"].start()
    write_batches(dc1, DC1, 100, "old-")
    wait_for(lambda: converged(dc1, relayer, DC1), what="relayer at lsn 100", nodes=(relayer,))
    old, old_history = scan_all(relayer, DC1), stats(dc1, DC1)["history_id"]
    assert stats(relayer, DC1)["history_id"] == old_history  # the follower took dc1's

    dc1.kill9()
    shutil.rmtree(_ns_dir(dc1))  # the disk is lost
    dc1.start()
    write_batches(dc1, DC1, 150, "new-")  # past the relayer's LSN: the splice case
    assert offset(dc1, DC1) == 150
    _assert_refused(dc1, relayer, old, old_history)

    # The way out (README): resync the follower from scratch.
    relayer.stop()
    shutil.rmtree(_ns_dir(relayer))
    relayer.start()
    wait_for(lambda: converged(dc1, relayer, DC1), what="relayer resynced", nodes=(relayer,))
    assert_identical(dc1, relayer, DC1)
    relayer.wait_ready()


def test_datacenter_restored_from_an_older_copy_is_refused(
        cluster: dict[str, NodeProcess], tmp_path: Path) -> None:
    dc1, relayer = cluster["dc1"].start(), cluster["relayer"].start()
    write_batches(dc1, DC1, 60, "old-")
    dc1.stop()
    backup = tmp_path / "backup"
    shutil.copytree(_ns_dir(dc1), backup)  # a backup at lsn 60 (same history id)
    dc1.start()
    write_batches(dc1, DC1, 40, "later-")
    wait_for(lambda: offset(relayer, DC1) == 100, what="relayer at lsn 100", nodes=(relayer,))
    old, old_history = scan_all(relayer, DC1), stats(dc1, DC1)["history_id"]

    dc1.kill9()
    shutil.rmtree(_ns_dir(dc1))
    shutil.copytree(backup, _ns_dir(dc1))  # restored from the old backup: lsn 60
    dc1.start()
    write_batches(dc1, DC1, 50, "after-restore-")  # lsn 61..110: past the relayer's 100
    wait_for(lambda: _mismatch_reported(relayer), within=20, what="mismatch in /readyz",
             nodes=(relayer,))
    assert "the record at lsn 100 differs" in _readyz(relayer)[1]["error"]
    assert offset(relayer, DC1) == 100 and scan_all(relayer, DC1) == old
    assert stats(dc1, DC1)["history_id"] == old_history


def _second_relayer(relayer: NodeProcess, tmp_path: Path) -> NodeProcess:
    cfg = copy.deepcopy(relayer.config)
    cfg.http_port, cfg.grpc.port = free_port(), free_port()
    cfg.storage.base_dir = str(tmp_path / "relayer-b" / "data")
    cfg.notifiers = []
    return NodeProcess("relayer-b", "relayer", cfg, tmp_path / "relayer-b")


def test_datacenter_restored_from_a_relayer_continues_in_a_new_epoch(
        cluster: dict[str, NodeProcess], tmp_path: Path) -> None:
    """The other way out: dc1 lost its disk and gets its namespace back from a relayer's
    copy. It continues that history in a new epoch; a relayer that held no more than the
    copy follows on, one that held more of the lost epoch is refused."""
    dc1, behind = cluster["dc1"].start(), cluster["relayer"].start()
    ahead = cluster["relayer-b"] = _second_relayer(behind, tmp_path).start()
    write_batches(dc1, DC1, 60, "first-")
    wait_for(lambda: offset(behind, DC1) == 60 and offset(ahead, DC1) == 60,
             what="both relayers at lsn 60", nodes=(behind, ahead))
    behind.stop()  # the relayer to restore from, stopped so its directory can be copied
    write_batches(dc1, DC1, 40, "second-")
    wait_for(lambda: offset(ahead, DC1) == 100, what="relayer-b at lsn 100", nodes=(ahead,))
    history = stats(dc1, DC1)["history_id"]

    dc1.kill9()
    shutil.rmtree(_ns_dir(dc1))  # the disk is lost ...
    shutil.copytree(_ns_dir(behind), _ns_dir(dc1))  # ... and restored from the relayer
    dc1.start()
    st = stats(dc1, DC1)
    assert (st["lsn"], st["history_id"], st["history_epoch"]) == (60, history, 2)
    assert "follower's copy" in dc1.logs()
    write_batches(dc1, DC1, 50, "restored-")  # lsn 61..110 of epoch 2
    behind.start()
    wait_for(lambda: converged(dc1, behind, DC1), what="restored-from relayer follows",
             nodes=(behind,))
    assert_identical(dc1, behind, DC1)
    behind.wait_ready()
    wait_for(lambda: _mismatch_reported(ahead), within=20, what="relayer-b refused",
             nodes=(ahead,))
    assert offset(ahead, DC1) == 100  # nothing of epoch 2 spliced onto its 61..100

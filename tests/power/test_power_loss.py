"""Power loss on real nodes: "acknowledged" must mean "on disk".

Each node's data directory is on LazyFS (tests/support/lazyfs), which forgets every
write not fsynced/fdatasynced and every directory entry change whose directory was not
fsynced when its power is cut. Writers keep writing while the power is cut at chosen
moments; after each cut the node restarts on what was durable and must hold every
acknowledged write, with a contiguous log whose checksums verify and which agrees with
the data. Followers must resume without a gap or a splice.

Each cut's report (what it dropped) is logged (`-o log_cli=true` shows it); pytest's
summary ends with the session's totals of cuts and acknowledged writes checked.

These nodes run in the default durability mode: every acknowledged write is synced
first and none may be lost. The opt-in interval mode (storage_config.wal_fsync_interval),
which may lose what was acknowledged since its last sync, is checked in
test_fsync_interval.py.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from unison.config import GrpcConfig, WalCleanupConfig

from tests.power.harness import (
    History,
    Machine,
    PowerNode,
    Writers,
    check_store,
    read_store,
    tally,
)
from tests.support.nodes import seed_cluster, single_node_config

log = logging.getLogger(__name__)

NS = "power"
SMALL_BUFFER = 64 * 1024  # RocksDB's minimum: a memtable flush and WAL switch every ~100 writes


def dc_on(m: Machine, tmp: Path, name: str = "dc1", write_buffer: int = 0,
          **storage: Any) -> PowerNode:
    """A replicator whose base_dir is on the machine's disk (its config and log are not)."""
    cfg = single_node_config(tmp, [NS], grpc=GrpcConfig(port=0))
    cfg.storage = dataclasses.replace(cfg.storage, base_dir=str(m.fs.mount / name), **storage)
    node = PowerNode(name, "replicator", cfg, tmp / name)
    node.write_buffer = write_buffer
    m.nodes.append(node)
    return node.start()


def check_on_disk(node: PowerNode, history: History, ns: str = NS) -> int:
    """Read the (stopped) node's namespace from disk and check it: the LSN it holds."""
    stored = read_store(Path(node.config.storage.base_dir) / ns)
    check_store(stored, node.name)
    bad = history.violations(stored.data)
    assert not bad, f"{node.name}: {len(bad)} acknowledged writes lost or wrong: {bad[:5]}"
    return stored.last_lsn


def cut_and_check(m: Machine, node: PowerNode, history: History,
                  report: dict[str, Any] | None = None) -> None:
    """The power cut, the check of what survived, and the node's restart on it: it must
    recover to exactly the LSN on disk."""
    held: list[int] = []
    m.power_cut(report, check=lambda: held.append(check_on_disk(node, history)))
    opened = re.findall(rf"namespace {NS}: opened .* \(lsn (\d+),", node.logs())
    assert int(opened[-1]) == held[0], f"{node.name} recovered to {opened[-1]}, disk has {held[0]}"


def test_cut_right_after_acknowledgements(machine: Callable[[str], Machine],
                                          tmp_path: Path) -> None:
    m = machine("disk")
    node = dc_on(m, tmp_path)
    history = History()
    with Writers(node.http_port, NS, history) as writers:
        for i in range(3):
            writers.wait_acks(120)
            # Every other cut is torn: a random prefix of what was not synced survives.
            cut_and_check(m, node, history, m.fs.cut(torn_seed=i if i % 2 else None))
    tally("right after acknowledgements", len(m.fs.cuts), history.acked)


def armed_cuts(m: Machine, node: PowerNode, history: History,
               cuts: list[tuple[list[dict[str, Any]], str]]) -> None:
    """For each (stages, when): arm the cut, wait for it, check and restart. Every other
    cut is torn."""
    for i, (stages, when) in enumerate(cuts):
        m.fs.arm(stages, when, torn_seed=i if i % 2 else None)
        report = m.fs.wait_cut(timeout=60)
        assert report is not None, f"no cut at {stages} within 60 s: {m.fs.stats()}"
        cut_and_check(m, node, history, report)


def _after(*stages: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    return list(stages), "after"


NEW_WAL = {"op": "create", "glob": "*.log"}
# Cut points around a WAL switch, counted from the creation of a new WAL file: the k-th
# filesystem operation after it (its first write, its fdatasync, the directory fsync
# that names it, the next commit...), and a switch right after a memtable flush.
# (Traced: the write that switches files returns only after RocksDB itself fdatasynced
# the closed file and fsynced the directory; the helper then fdatasyncs the new file and
# fsyncs the directory again, since the file is new to it. test_lazyfs.py shows the
# helper alone suffices, without RocksDB's help.)
WAL_SWITCH_CUTS = [
    _after(NEW_WAL),
    _after(NEW_WAL, {"op": "*"}),
    # Within the helper's first rounds after the switch (each fdatasyncs every live WAL
    # file, then answers), and around the first directory sync after it.
    *(_after(NEW_WAL, {"op": "fsync", "glob": "*.log", "count": k}) for k in (1, 6)),
    ([NEW_WAL, {"op": "fsyncdir"}], "before"),
    _after(NEW_WAL, {"op": "fsyncdir"}),
    _after({"op": "create", "glob": "*.sst"}, NEW_WAL, {"op": "fsync", "glob": "*.log"}),
]


def test_cut_during_wal_switches(machine: Callable[[str], Machine], tmp_path: Path) -> None:
    m = machine("disk")
    node = dc_on(m, tmp_path, write_buffer=SMALL_BUFFER)
    history = History()
    with Writers(node.http_port, NS, history):
        armed_cuts(m, node, history, WAL_SWITCH_CUTS)
    tally("WAL switches", len(m.fs.cuts), history.acked)


SST = {"op": "create", "glob": "*.sst"}
# A compaction is the only thing that deletes table files: cut as it deletes its inputs
# (its output installed), and at table writes and syncs while compactions keep running.
COMPACTION_CUTS = [
    ([{"op": "unlink", "glob": "*.sst"}], "before"),
    _after(dict(SST, count=4), {"op": "write", "glob": "*.sst", "count": 3}),
    _after(dict(SST, count=5), {"op": "fsync", "glob": "*.sst"}),
    _after({"op": "unlink", "glob": "*.sst"}, SST, {"op": "fsync", "glob": "MANIFEST-*"}),
]


def test_cut_during_compaction(machine: Callable[[str], Machine], tmp_path: Path) -> None:
    m = machine("disk")
    node = dc_on(m, tmp_path, write_buffer=SMALL_BUFFER)
    history = History()
    with Writers(node.http_port, NS, history):
        armed_cuts(m, node, history, COMPACTION_CUTS)
    tally("compaction", len(m.fs.cuts), history.acked)


# The trim's batch is the only one that writes the first_lsn meta key.
TRIM = {"op": "write", "glob": "*.log", "contains": "first_lsn"}
RETENTION_CUTS = [
    _after(TRIM),  # in the WAL, not yet synced
    _after(TRIM, {"op": "fsync", "glob": "*.log"}),
    _after(dict(TRIM, count=3), {"op": "*", "count": 2}),
    _after(dict(TRIM, count=2), {"op": "create", "glob": "*.sst"}, {"op": "fsync"}),
]


def test_cut_during_retention_trim(machine: Callable[[str], Machine], tmp_path: Path) -> None:
    m = machine("disk")
    cleanup = WalCleanupConfig(enabled=True, interval=0.05, max_records=150)
    node = dc_on(m, tmp_path, write_buffer=SMALL_BUFFER, wal_cleanup=cleanup)
    history = History()
    with Writers(node.http_port, NS, history):
        armed_cuts(m, node, history, RETENTION_CUTS)
    tally("retention trim", len(m.fs.cuts), history.acked)


# ------------------------------------------------------------ replication


def cluster_on(tmp: Path, dc_machine: Machine | None, relayer_machine: Machine,
               **dc_storage: Any) -> tuple[PowerNode, PowerNode]:
    """dc1 (on its machine's disk, or a plain one) and a relayer following it (on its
    machine's disk); not started."""
    planned = seed_cluster(tmp, datacenters=[("dc1", [NS])], follow=["dc1"])
    nodes = []
    for name, machine in (("dc1", dc_machine), ("relayer", relayer_machine)):
        p = planned[name]
        if machine is not None:
            p.config.storage.base_dir = str(machine.fs.mount / name)
        if name == "dc1":
            p.config.storage = dataclasses.replace(p.config.storage, **dc_storage)
        node = PowerNode(name, p.role, p.config, p.workdir)
        node.write_buffer = SMALL_BUFFER
        if machine is not None:
            machine.nodes.append(node)
        nodes.append(node)
    return nodes[0], nodes[1]


def caught_up(dc: PowerNode, relayer: PowerNode, timeout: float = 60.0) -> int:
    """Wait until the relayer holds the datacenter's LSN (writes stopped): that LSN."""
    target = dc.lsn(NS)
    deadline = time.monotonic() + timeout
    while relayer.lsn(NS) < target:
        assert time.monotonic() < deadline, (
            f"relayer at {relayer.lsn(NS)}, dc1 at {target}:\n{relayer.logs()[-3000:]}")
        time.sleep(0.05)
    return target


def same_history(dc: PowerNode, relayer: PowerNode, history: History) -> int:
    """Stop both; the relayer's log is the datacenter's, record for record where both
    hold it (no splice), contiguous (no gap); its data equals the datacenter's, and both
    hold every acknowledged write. Returns the LSNs compared."""
    status, body = relayer.api("GET", f"/api/v1/{NS}/stats")
    assert status == 200 and not body["follower"]["history_mismatch"], body
    dc.stop()
    relayer.stop()
    stored = {n.name: read_store(Path(n.config.storage.base_dir) / NS) for n in (dc, relayer)}
    logs = {name: {r.lsn: r for r in check_store(s, name)} for name, s in stored.items()}
    both = logs["dc1"].keys() & logs["relayer"].keys()
    spliced = [lsn for lsn in both if logs["dc1"][lsn] != logs["relayer"][lsn]]
    assert not spliced, f"the relayer's records differ from dc1's at LSNs {sorted(spliced)[:5]}"
    assert stored["relayer"].last_lsn == stored["dc1"].last_lsn
    assert stored["relayer"].data == stored["dc1"].data, "the relayer's data differs from dc1's"
    bad = history.violations(stored["relayer"].data)
    assert not bad, f"acknowledged writes missing on the relayer: {bad[:5]}"
    return len(both)


def relayer_on_disk(relayer: PowerNode) -> int:
    """Check the (stopped) relayer's namespace on disk: the LSN it holds."""
    stored = read_store(Path(relayer.config.storage.base_dir) / NS)
    check_store(stored, relayer.name)
    return stored.last_lsn


def test_cut_datacenter_and_relayer_while_replicating(
        machine: Callable[[str], Machine], tmp_path: Path) -> None:
    """Both on LazyFS, cut in turn while the relayer applies replicated batches: the
    datacenter keeps every acknowledged write, the relayer resumes where its disk
    stopped, and neither gap nor splice appears."""
    dc_m, relayer_m = machine("dc-disk"), machine("relayer-disk")
    dc, relayer = cluster_on(tmp_path, dc_m, relayer_m)
    dc.start()
    relayer.start()
    history = History()
    relayer_cuts = [
        _after({"op": "write", "glob": "*.log", "count": 40}),  # a batch applied, unsynced
        _after({"op": "write", "glob": "*.log", "count": 25}, {"op": "fsync", "glob": "*.log"}),
        _after(NEW_WAL, {"op": "*", "count": 2}),
    ]
    with Writers(dc.http_port, NS, history) as writers:
        for i, (stages, when) in enumerate(relayer_cuts):
            relayer_m.fs.arm(stages, when, torn_seed=i if i % 2 else None)
            report = relayer_m.fs.wait_cut(timeout=60)
            assert report is not None, f"no relayer cut at {stages}: {relayer_m.fs.stats()}"
            relayer_m.power_cut(report, check=lambda: relayer_on_disk(relayer))
            writers.wait_acks(60)
            cut_and_check(dc_m, dc, history, dc_m.fs.cut(torn_seed=i if i % 2 else None))
        writers.wait_acks(60)
    caught_up(dc, relayer)
    compared = same_history(dc, relayer, history)
    tally("replicated apply (relayer and dc1)", len(relayer_m.fs.cuts) + len(dc_m.fs.cuts),
          history.acked, compared)


# The install's marker (begin: set, finish: deleted) and the batch that switches the
# live data column family; the items in between are loaded without a sync. PENDING is the
# marker's put (its key, then the length of its 8-byte value), not a delete of it, such
# as the one recovery writes when the relayer restarts after a cut (the cuts are armed
# before it does: see the test).
PENDING = {"op": "write", "glob": "*.log", "contains": "snapshot_pending\x08"}
SWITCH = {"op": "write", "glob": "*.log", "contains": "data_cf"}
SNAPSHOT_CUTS = [
    _after(PENDING),
    _after(PENDING, {"op": "fsync", "glob": "*.log"}),
    _after(PENDING, {"op": "write", "glob": "*.log", "count": 4}),  # mid-load
    _after(SWITCH),  # the switch written, not synced
    # Installed: the next WAL write after the switch. Not "the next fsync of a *.log":
    # the load switches WAL files often (small write buffer) and the older ones stay live
    # until every column family in them is flushed, so the helper's round (and RocksDB's
    # own sync of a closed file) may fsync an older WAL first; a cut there lost the
    # unsynced switch, and the check below failed (held[-1] == 0). The install's write
    # holds the store's lock until its sync has returned, so the next write to any WAL
    # (the install's clean-up, the next replicated batch) comes after the switch is synced.
    _after(SWITCH, {"op": "write", "glob": "*.log"}),
]


def test_cut_relayer_while_it_installs_a_snapshot(
        machine: Callable[[str], Machine], tmp_path: Path) -> None:
    relayer_m = machine("relayer-disk")
    cleanup = WalCleanupConfig(enabled=True, interval=0.1, max_records=100)
    dc, relayer = cluster_on(tmp_path, None, relayer_m, wal_cleanup=cleanup)
    dc.start()
    history = History()
    held: list[int] = []  # the relayer's LSN on disk after each cut

    def arm(i: int) -> None:
        stages, when = SNAPSHOT_CUTS[i]
        relayer_m.fs.arm(stages, when, torn_seed=i if i % 2 else None)

    def check_and_arm_next(i: int) -> None:
        held.append(relayer_on_disk(relayer))
        if i + 1 < len(SNAPSHOT_CUTS):
            arm(i + 1)

    with Writers(dc.http_port, NS, history, size=2000) as writers:
        writers.wait_acks(600)  # the relayer must start from a snapshot: log trimmed
        # Each cut is armed before the relayer (re)starts: it begins an install at once,
        # and one armed after it was healthy could miss the install's first writes (seen:
        # no cut at PENDING within 60 s, the install had begun before the arming).
        arm(0)
        relayer.start()
        for i, (stages, _) in enumerate(SNAPSHOT_CUTS):
            report = relayer_m.fs.wait_cut(timeout=60)
            assert report is not None, f"no relayer cut at {stages}: {relayer_m.fs.stats()}"
            relayer_m.power_cut(report, check=lambda i=i: check_and_arm_next(i))
        writers.wait_acks(200)  # followed on from the snapshot
    # The last cut came after the switch was synced: the snapshot survived it.
    assert held[-1] > 0, f"the installed snapshot did not survive: {held}"
    caught_up(dc, relayer)
    assert "snapshot installed at lsn" in relayer.logs()
    compared = same_history(dc, relayer, history)
    tally("snapshot install", len(relayer_m.fs.cuts), history.acked, compared)


def _kill_helpers(node: PowerNode) -> int:
    """SIGKILL the node's WAL sync helpers (its child processes): the node then syncs
    the WAL in-process with RocksDB's own sync. Returns how many were killed."""
    assert node.proc is not None
    children = Path(f"/proc/{node.proc.pid}/task/{node.proc.pid}/children").read_text().split()
    for pid in children:
        os.kill(int(pid), signal.SIGKILL)
    return len(children)


def test_cut_after_the_helper_died(machine: Callable[[str], Machine], tmp_path: Path) -> None:
    """The fallback when the helper is gone (the node syncs in-process) keeps the same
    promise across WAL switches."""
    m = machine("disk")
    node = dc_on(m, tmp_path, write_buffer=SMALL_BUFFER)
    history = History()
    cuts = [_after(NEW_WAL, {"op": "fsyncdir"}), _after(NEW_WAL, {"op": "*", "count": 2}),
            _after({"op": "fsync", "glob": "*.log", "count": 30})]
    with Writers(node.http_port, NS, history) as writers:
        for i, (stages, when) in enumerate(cuts):
            writers.wait_acks(50)
            assert _kill_helpers(node) == 1
            writers.wait_acks(50)
            m.fs.arm(stages, when, torn_seed=i if i % 2 else None)
            report = m.fs.wait_cut(timeout=60)
            assert report is not None, f"no cut at {stages}: {m.fs.stats()}"
            cut_and_check(m, node, history, report)
    assert "syncing the WAL in-process from now on" in node.logs()
    tally("in-process sync after the helper died", len(m.fs.cuts), history.acked)


# Recovery's own steps: a new MANIFEST, CURRENT switched to it, the new WAL, a flush of
# what was replayed, obsolete WAL files deleted, the first commit after it.
RECOVERY_CUTS = [
    _after({"op": "fsync", "glob": "MANIFEST-*"}),
    _after({"op": "rename", "glob": "CURRENT"}),
    _after({"op": "create", "glob": "*.sst"}),
    ([{"op": "unlink", "glob": "*.log"}], "before"),
    _after(NEW_WAL, {"op": "fsync", "glob": "*.log"}),
]


def test_cut_again_while_recovering(machine: Callable[[str], Machine], tmp_path: Path) -> None:
    """A second cut while the node recovers from the first (RocksDB replays its WAL,
    writes a new MANIFEST and WAL, flushes, deletes what recovery made obsolete): what
    the first cut left must survive the second."""
    m = machine("disk")
    node = dc_on(m, tmp_path, write_buffer=SMALL_BUFFER)
    history = History()
    with Writers(node.http_port, NS, history) as writers:
        for i, (stages, when) in enumerate(RECOVERY_CUTS):
            writers.wait_acks(80)
            m.fs.cut()
            node.power_off()
            m.fs.reboot()
            m.fs.arm(stages, when, torn_seed=i if i % 2 else None)
            node.start(wait=False)
            second = m.fs.wait_cut(timeout=30)
            if second is None:  # this recovery had no such step: the node runs on
                node.wait_healthy()
                m.fs.disarm()
                continue
            cut_and_check(m, node, history, second)
    tally("during recovery", len(m.fs.cuts), history.acked)


def test_cut_while_stopping(machine: Callable[[str], Machine], tmp_path: Path) -> None:
    """SIGTERM drains the queued writes (acknowledging them) and closes RocksDB; the
    power goes at the k-th filesystem operation after the node says it is stopping (or,
    when it finished first, right after)."""
    m = machine("disk")
    node = dc_on(m, tmp_path, write_buffer=SMALL_BUFFER)
    history = History()
    with Writers(node.http_port, NS, history, n=8) as writers:
        for i, k in enumerate((1, 3, 8)):
            writers.wait_acks(100)
            seen = node.logs().count("shutting down")
            assert node.proc is not None
            node.proc.send_signal(signal.SIGTERM)
            while node.logs().count("shutting down") == seen and node.proc.poll() is None:
                time.sleep(0.002)
            m.fs.arm([{"op": "*", "count": k}], torn_seed=i if i % 2 else None)
            report = m.fs.wait_cut(timeout=10)
            cut_and_check(m, node, history, report or m.fs.cut())
    tally("while stopping", len(m.fs.cuts), history.acked)

"""Power loss in the interval durability mode (storage_config.wal_fsync_interval).

In this mode a write is acknowledged once it is in the OS page cache, and the WAL is
synced every interval: a power cut may take what was acknowledged since the last sync.
What it must keep is everything up to `synced_lsn` as /stats showed it just before the
cut, as a contiguous log whose checksums verify and which agrees with the data; the node
must come back in a new epoch of its history, so that a follower which already received
records the node lost is refused (and says so in /readyz), never spliced onto records
that reuse those LSNs.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from unison.config import GrpcConfig
from unison.storage.records import Op, Record

from tests.power.harness import (
    History,
    Machine,
    PowerNode,
    Stored,
    Writers,
    check_store,
    read_store,
    tally,
)
from tests.support.nodes import seed_cluster, single_node_config

NS = "power"


def stats(node: PowerNode) -> dict[str, Any]:
    status, body = node.api("GET", f"/api/v1/{NS}/stats")
    assert status == 200, (status, body)
    return body


def on_disk(node: PowerNode) -> Stored:
    """The (stopped) node's namespace as read back from its disk, checked: contiguous
    LSNs, checksums, data agreeing with the log."""
    stored = read_store(Path(node.config.storage.base_dir) / NS)
    check_store(stored, node.name)
    return stored


def synced_mid_interval(node: PowerNode, interval: float, writers: Writers) -> dict[str, Any]:
    """Wait for a periodic sync to land, then for writes after it: /stats a moment later,
    well before the next sync (synced_lsn behind lsn)."""
    before = stats(node)["synced_lsn"]
    deadline = time.monotonic() + 4 * interval + 10
    while (s := stats(node))["synced_lsn"] == before:
        assert time.monotonic() < deadline, f"no sync within {4 * interval + 10}s: {s}"
        time.sleep(0.01)
    writers.wait_acks(50)
    time.sleep(interval / 5)
    s = stats(node)
    assert s["durability"] == "interval" and s["synced_lsn"] < s["lsn"], s
    return s


def test_cut_keeps_what_was_synced_and_starts_a_new_epoch(
        machine: Callable[[str], Machine], tmp_path: Path) -> None:
    """Cuts (every other torn) between periodic syncs: each keeps at least the synced
    LSN of just before it, and each restart begins a new epoch."""
    m = machine("disk")
    interval = 1.0
    cfg = single_node_config(tmp_path, [NS], grpc=GrpcConfig(port=0))
    cfg.storage = dataclasses.replace(cfg.storage, base_dir=str(m.fs.mount / "dc1"),
                                      wal_fsync_interval=interval)
    node = PowerNode("dc1", "replicator", cfg, tmp_path / "dc1")
    m.nodes.append(node)
    node.start()
    history = History()
    lost = 0
    held: list[Stored] = []
    with Writers(node.http_port, NS, history) as writers:
        for i in range(3):
            writers.wait_acks(100)
            before = synced_mid_interval(node, interval, writers)
            m.power_cut(m.fs.cut(torn_seed=i if i % 2 else None),
                        check=lambda: held.append(on_disk(node)))
            kept = held[-1].last_lsn
            assert kept >= before["synced_lsn"], (
                f"cut {i}: the disk holds lsn {kept}, /stats said {before['synced_lsn']} "
                "was synced")
            lost += max(before["lsn"] - kept, 0)
            opened = re.findall(rf"namespace {NS}: opened .* \(lsn (\d+),", node.logs())
            assert int(opened[-1]) == kept, f"recovered to {opened[-1]}, the disk has {kept}"
            new_epoch = re.findall(r"new epoch: history .* from lsn (\d+)", node.logs())
            assert int(new_epoch[-1]) == kept + 1, new_epoch
            assert stats(node)["history_epoch"] == i + 2
    assert node.logs().count("starting a new epoch") == 3
    assert lost > 0, "no cut took anything: the cuts did not land between syncs"
    tally("interval mode (synced LSNs kept)", len(m.fs.cuts), 0)


def test_a_relayer_holding_what_the_datacenter_lost_is_refused_not_spliced(
        machine: Callable[[str], Machine], tmp_path: Path) -> None:
    """The relayer (on a plain disk) receives records as soon as dc1 writes them; dc1
    (interval mode, on LazyFS) loses the unsynced ones in a cut. Every record up to the
    synced LSN of just before the cut is on dc1's disk exactly as the relayer got it; the
    relayer holds more than dc1 kept, so it must refuse dc1's new epoch."""
    m = machine("dc-disk")
    interval = 2.0
    planned = seed_cluster(tmp_path, datacenters=[("dc1", [NS])], follow=["dc1"])
    p = planned["dc1"]
    p.config.storage = dataclasses.replace(p.config.storage, base_dir=str(m.fs.mount / "dc1"),
                                           wal_fsync_interval=interval)
    dc = PowerNode("dc1", p.role, p.config, p.workdir)
    m.nodes.append(dc)
    r = planned["relayer"]
    relayer = PowerNode("relayer", r.role, r.config, r.workdir)
    dc.start()
    relayer.start()
    history = History()
    held: list[Stored] = []
    try:
        with Writers(dc.http_port, NS, history) as writers:
            writers.wait_acks(200)
            before = synced_mid_interval(dc, interval, writers)
            at_cut = relayer.lsn(NS)
            m.power_cut(m.fs.cut(), check=lambda: held.append(on_disk(dc)))
        kept = held[0].last_lsn
        assert before["synced_lsn"] <= kept < at_cut, (before, kept, at_cut)
        _assert_refused(relayer, at_cut)
        assert stats(dc)["history_epoch"] == 2
    finally:
        relayer.power_off()
    theirs = {rec.lsn: rec for rec in check_store(read_store(
        Path(relayer.config.storage.base_dir) / NS), "relayer")}
    ours = {rec.lsn: rec for rec in check_store(held[0], "dc1")}
    synced = before["synced_lsn"]
    assert all(ours.get(lsn) == theirs[lsn] for lsn in theirs if lsn <= synced), \
        "a record up to the synced LSN differs on dc1's disk from what it had sent"
    acked = _acked_lsns(history, theirs)
    tally("interval mode, relayer ahead", len(m.fs.cuts), sum(1 for lsn in acked if lsn <= synced),
          len(theirs.keys() & ours.keys()))


def _assert_refused(relayer: PowerNode, at_cut: int) -> None:
    """The relayer names the namespace and its history in /readyz and applies nothing."""
    deadline = time.monotonic() + 30
    while True:
        status, body = relayer.api("GET", "/readyz", timeout=5)
        if status == 503 and "history mismatch" in (body.get("error") or ""):
            break
        assert time.monotonic() < deadline, (status, body, relayer.logs()[-3000:])
        time.sleep(0.05)
    assert NS in body["error"], body
    s = stats(relayer)
    assert s["follower"]["history_mismatch"] is True, s
    assert s["lsn"] >= at_cut and s["history_epoch"] == 1, s
    time.sleep(1)
    assert stats(relayer)["lsn"] == s["lsn"], "the relayer applied records of the new epoch"


def _acked_lsns(history: History, log: dict[int, Record]) -> list[int]:
    """The LSNs of acknowledged writes the relayer's log holds ((key, value) is unique
    per write: new keys, a counter register, a key's one delete)."""
    where = {(rec.key, rec.value if rec.op is Op.PUT else None): lsn
             for lsn, rec in log.items()}
    return [where[(key, op.value)] for key, ops in history.ops.items() for op in ops
            if op.acked and (key, op.value) in where]

"""Power loss on real nodes: "acknowledged" must mean "on disk".

Each node's data directory is on LazyFS (tests/support/lazyfs), which forgets every
write not fsynced/fdatasynced and every directory entry change whose directory was not
fsynced when its power is cut. Writers keep writing while the power is cut at chosen
moments; after each cut the node restarts on what was durable and must hold every
acknowledged write, with a contiguous log whose checksums verify and which agrees with
the data. Followers must resume without a gap or a splice.

The cuts and acknowledgements checked are logged (`-o log_cli=true` shows them).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from unison.config import GrpcConfig

from tests.power.harness import (
    History,
    Machine,
    PowerNode,
    Writers,
    check_store,
    read_store,
)
from tests.support.nodes import single_node_config

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
        for i in range(4):
            writers.wait_acks(120)
            # Every other cut is torn: a random prefix of what was not synced survives.
            cut_and_check(m, node, history, m.fs.cut(torn_seed=i if i % 2 else None))
    log.info("after-ack cuts: %d cuts, %d acknowledged writes checked", len(m.fs.cuts),
             history.acked)


# Cut points around a WAL switch, each counted from the creation of a new WAL file:
# the k-th filesystem operation after it (its first write, its fdatasync, the directory
# fsync that names it, the next commit...), and after a memtable flush's table file.
WAL_SWITCH_CUTS = [
    [{"op": "create", "glob": "*.log"}],
    *([{"op": "create", "glob": "*.log"}, {"op": "*", "count": k}] for k in (1, 2, 3, 4, 6)),
    [{"op": "create", "glob": "*.log"}, {"op": "fsync", "glob": "*.log"}],
    [{"op": "create", "glob": "*.log"}, {"op": "fsyncdir"}],
    [{"op": "create", "glob": "*.sst"}, {"op": "create", "glob": "*.log"},
     {"op": "fsync", "glob": "*.log", "count": 2}],
]


def test_cut_during_wal_switches(machine: Callable[[str], Machine], tmp_path: Path) -> None:
    m = machine("disk")
    node = dc_on(m, tmp_path, write_buffer=SMALL_BUFFER)
    history = History()
    with Writers(node.http_port, NS, history):
        for stages in WAL_SWITCH_CUTS:
            m.fs.arm(stages)
            report = m.fs.wait_cut(timeout=60)
            assert report is not None, f"no cut at {stages}: {m.fs.stats()}"
            cut_and_check(m, node, history, report)
    log.info("WAL-switch cuts: %d cuts, %d acknowledged writes checked", len(m.fs.cuts),
             history.acked)

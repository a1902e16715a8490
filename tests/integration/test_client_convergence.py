"""Convergence under disorder, with real processes: both datacenters take a few hundred
random CRDT writes concurrently while the relayer is killed (-9) and restarted and the
client is replaced by a new one; the client's final state must equal the state computed
offline from all the writes.

Each datacenter writes like a real replica would: its own timestamps per key only move
forward (so ties happen only across datacenters) and its own counter totals only grow.
Run with `python -m pytest` from the repository root (imports tests.support).
"""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from unison.crdt import CRDTState

from tests.integration.test_client import ClientProcess, eventually
from tests.integration.test_client_seed_scenarios import client_args
from tests.support.nodes import NodeProcess, seed_cluster

DC1, DC2 = "ad-campaign-dc1", "ad-campaign-dc2"
WRITES_PER_DC = 150

Write = tuple[str, dict[str, Any]]


@dataclass
class Gate:
    at: int
    event: threading.Event = field(default_factory=threading.Event)


def plan_writes(rng: random.Random, replica: str, n: int) -> list[Write]:
    clock: dict[str, int] = {}
    count: dict[str, int] = {}
    p: dict[str, int] = {}
    m: dict[str, int] = {}
    out: list[Write] = []
    for _ in range(n):
        kind = rng.choice(["lww", "counter", "pncounter", "once"])
        if kind == "once":
            # written once and never superseded: losing it cannot be masked by a later write
            key = f"counter:once-{replica}-{len(out)}"
            doc = {"replica": replica, "count": rng.randint(0, 9)}
        elif kind == "lww":
            key = f"lww:k{rng.randrange(8)}"
            clock[key] = clock.get(key, 0) + rng.randint(1, 3)  # small steps: cross-DC ties
            doc = {
                "value": rng.choice(["a", "b", 1, True, None, {"x": 1}]),
                "timestamp": clock[key],
                "replica": replica,
            }
        elif kind == "counter":
            key = f"counter:c{rng.randrange(4)}"
            count[key] = count.get(key, 0) + rng.randint(1, 5)
            doc = {"replica": replica, "count": count[key]}
        else:
            key = f"pncounter:p{rng.randrange(3)}"
            if rng.random() < 0.5:
                p[key] = p.get(key, 0) + rng.randint(1, 4)
            else:
                m[key] = m.get(key, 0) + rng.randint(1, 4)
            doc = {"replica": replica, "p": p.get(key, 0), "n": m.get(key, 0)}
        out.append((key, doc))
    return out


@pytest.mark.slow
async def test_client_converges_through_relayer_and_client_restarts(tmp_path: Path) -> None:
    rng = random.Random(6)
    plans = {DC1: plan_writes(rng, DC1, WRITES_PER_DC), DC2: plan_writes(rng, DC2, WRITES_PER_DC)}
    expected = CRDTState()
    for writes in plans.values():
        for key, doc in writes:
            expected.apply_json(key, json.dumps(doc))

    nodes = seed_cluster(tmp_path)
    dc1, dc2, relayer = nodes["dc1"], nodes["dc2"], nodes["relayer"]
    progress = {DC1: 0, DC2: 0}
    gates = [Gate(WRITES_PER_DC // 3), Gate(2 * WRITES_PER_DC // 3)]
    failures: list[str] = []

    def writer(node: NodeProcess, ns: str) -> None:
        for key, doc in plans[ns]:
            status, body = node.put(ns, key, json.dumps(doc, separators=(",", ":")))
            if status != 200:
                failures.append(f"{ns} {key}: {status} {body}")
            progress[ns] += 1
            # hold at a third until the client is down, at two thirds until the relayer
            # is: the remaining writes then happen while that part is away
            for gate in gates:
                if progress[ns] == gate.at and not gate.event.wait(120):
                    failures.append(f"{ns}: gate at {gate.at} never opened")

    clients: list[ClientProcess] = []
    try:
        for node in nodes.values():
            node.start()
        relayer.wait_ready()
        clients.append(ClientProcess(client_args(relayer, "--quiet", "--resync-interval", "0.5")))
        await clients[0].start()
        await clients[0].wait_ready()

        threads = [
            threading.Thread(target=writer, args=(dc1, DC1)),
            threading.Thread(target=writer, args=(dc2, DC2)),
        ]
        for t in threads:
            t.start()

        # the client is replaced: writes go on while none runs and while the new one
        # bootstraps from a scan
        await eventually(
            lambda: min(progress.values()) >= gates[0].at, "a third of the writes", 120
        )
        assert await clients[0].terminate() == 0
        gates[0].event.set()
        clients.append(ClientProcess(client_args(relayer, "--quiet", "--resync-interval", "0.5")))
        await clients[1].start()
        await clients[1].wait_ready()

        # the relayer dies under the running client and comes back: notifications are
        # lost meanwhile and fetches fail; the client has to notice and rescan
        await eventually(
            lambda: min(progress.values()) >= gates[1].at, "two thirds of the writes", 120
        )
        relayer.kill9()
        gates[1].event.set()
        await asyncio.to_thread(relayer.start)

        for t in threads:
            await asyncio.to_thread(t.join)
        assert not failures, failures[:5]

        want = expected.snapshot()
        await eventually(lambda: _state_is(clients[1], want), "the offline state", 90)
        assert await clients[1].metric("unison_client_malformed_skipped_total") == 0
    finally:
        for gate in gates:
            gate.event.set()
        for c in clients:
            if c.proc is not None and c.proc.returncode is None:
                await c.terminate()
        for node in nodes.values():
            node.stop()
    for c in clients:
        assert "Traceback" not in c.stderr, c.stderr
    print(relayer.logs()[-4000:])


async def _state_is(client: ClientProcess, want: dict[str, Any]) -> bool:
    return await client.state() == want


@pytest.mark.slow
async def test_client_follows_a_relayer_resynced_onto_a_new_history(tmp_path: Path) -> None:
    """dc1 loses its disk; the relayer refuses the new history until it is resynced from
    scratch (README). It then holds dc1's new history at an LSN below the seq_num the
    running client saw of the old one: the client must see the new history and rescan
    (it used to ask for the old seq_num and get 503s forever). It keeps what it merged of
    the old history; a CRDT cannot un-merge."""
    nodes = seed_cluster(tmp_path, [("dc1", [DC1])])
    dc1, relayer = nodes["dc1"], nodes["relayer"]
    expected = CRDTState()
    client = ClientProcess(client_args(relayer, "--quiet", "--resync-interval", "0.5"))
    try:
        for node in nodes.values():
            node.start()
        relayer.wait_ready()
        await client.start()
        await client.wait_ready()
        for i in range(30):
            _put(dc1, expected, f"counter:old{i}", {"replica": DC1, "count": i + 1})
        await eventually(lambda: _state_is(client, expected.snapshot()), "the old history", 60)

        dc1.kill9()
        shutil.rmtree(Path(dc1.config.storage.base_dir))  # the disk is lost
        dc1.start()
        for i in range(5):
            _put(dc1, expected, f"lww:new{i}", {"value": i, "timestamp": 1, "replica": DC1})
        rescans = await client.metric("unison_client_rescans_total", namespace=DC1)
        relayer.stop()  # the way out: resync the relayer from scratch
        shutil.rmtree(Path(relayer.config.storage.base_dir) / DC1)
        relayer.start()
        relayer.wait_ready()
        # the client notices the relayer's change (and used to stay in that rescan) ...
        await eventually(lambda: _more_rescans(client, rescans), "a rescan", 60)
        # ... and takes the writes that follow
        for i in range(5):
            _put(dc1, expected, f"counter:later{i}", {"replica": DC1, "count": i + 1})
        await eventually(lambda: _state_is(client, expected.snapshot()),
                         "the old and the new history merged", 90)
        await client.saw("new history on the relayer", "stderr")
        assert await client.metric("unison_client_rescans_total", namespace=DC1,
                                   reason="new-history") >= 1
    finally:
        if client.proc is not None and client.proc.returncode is None:
            await client.terminate()
        for node in nodes.values():
            node.stop()
    assert "Traceback" not in client.stderr, client.stderr


def _put(node: NodeProcess, expected: CRDTState, key: str, doc: dict[str, Any]) -> None:
    status, body = node.put(DC1, key, json.dumps(doc, separators=(",", ":")))
    assert status == 200, (status, body)
    expected.apply_json(key, json.dumps(doc))


async def _more_rescans(client: ClientProcess, before: float) -> bool:
    return await client.metric("unison_client_rescans_total", namespace=DC1) > before

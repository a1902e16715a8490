"""The seed's five scenarios against real processes: dc1 and dc2 (replicators), the relayer
following both and publishing over ZeroMQ, and the `unison client` watching the relayer.

Run with `python -m pytest` from the repository root (imports tests.support).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_client import SEED_STATE, ClientProcess, eventually
from tests.support.nodes import HOST, NodeProcess, running_cluster

DC1, DC2 = "ad-campaign-dc1", "ad-campaign-dc2"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, NodeProcess]]:
    with running_cluster(tmp_path_factory.mktemp("client-seed")) as nodes:
        yield nodes


def client_args(relayer: NodeProcess, *extra: str) -> list[str]:
    args = [
        "--http",
        f"http://{HOST}:{relayer.http_port}",
        "--state-host",
        HOST,
        "--state-port",
        "0",
    ]
    for n in relayer.config.notifiers:
        args += ["--zmq", f"{n.namespace}=tcp://{HOST}:{n.bind_port}"]
    return args + list(extra)


def write(node: NodeProcess, ns: str, key: str, doc: dict[str, Any]) -> None:
    """What the seed's curl does: PUT base64 of compact JSON."""
    status, body = node.put(ns, key, json.dumps(doc, separators=(",", ":")))
    assert status == 200, body


async def lww_value(client: ClientProcess, key: str) -> Any:
    reg = (await client.state())["lww"].get(key)
    return reg and reg["value"]


async def test_the_seed_scenarios_converge(cluster: dict[str, NodeProcess], tmp_path: Path) -> None:
    dc1, dc2, relayer = cluster["dc1"], cluster["dc2"], cluster["relayer"]
    client = ClientProcess(client_args(relayer, "--resync-interval", "1"))
    await client.start()
    try:
        await client.wait_ready()

        # Scenario 1: the newer timestamp wins
        write(
            dc1,
            DC1,
            "lww:user-status",
            {"value": "online", "timestamp": 1698765432000, "replica": DC1},
        )
        await eventually(lambda: _is(lww_value(client, "lww:user-status"), "online"), "online")
        write(
            dc2,
            DC2,
            "lww:user-status",
            {"value": "away", "timestamp": 1698765433000, "replica": DC2},
        )
        await eventually(lambda: _is(lww_value(client, "lww:user-status"), "away"), "away")

        # Scenario 2: same timestamp, the higher replica id wins
        ts = int(time.time()) * 1000
        write(dc1, DC1, "lww:config", {"value": "DC1 wins?", "timestamp": ts, "replica": DC1})
        write(dc2, DC2, "lww:config", {"value": "DC2 wins!", "timestamp": ts, "replica": DC2})

        # Scenario 3: a G-counter across both datacenters
        write(dc1, DC1, "counter:page-views", {"replica": DC1, "count": 5})
        write(dc2, DC2, "counter:page-views", {"replica": DC2, "count": 3})

        # Scenario 4: the old write arrives after the new one (wait so it really is later)
        write(dc1, DC1, "lww:feature-flag", {"value": True, "timestamp": 2000, "replica": DC1})
        await eventually(lambda: _is(lww_value(client, "lww:feature-flag"), True), "flag")
        write(dc2, DC2, "lww:feature-flag", {"value": False, "timestamp": 1000, "replica": DC2})

        # Scenario 5: independent counters
        write(dc1, DC1, "counter:api-calls", {"replica": DC1, "count": 100})
        write(dc2, DC2, "counter:api-calls", {"replica": DC2, "count": 75})
        write(dc1, DC1, "counter:db-queries", {"replica": DC1, "count": 250})

        expected = json.loads(json.dumps(SEED_STATE))
        expected["lww"]["lww:config"]["timestamp"] = ts
        await eventually(lambda: _state_is(client, expected), "the seed's converged state")
        await eventually(
            lambda: "LWW-Register ignored (stale): lww:feature-flag" in client.stdout, "stale line"
        )

        await client.saw("Current timestamp: 2000")

        stale = client.stdout.split("LWW-Register ignored (stale): lww:feature-flag", 1)[1]
        assert "Incoming timestamp: 1000" in stale and "Current timestamp: 2000" in stale
        for line in [
            "Change notification received",
            "Topic: ad-campaign-dc1.kv",
            "Topic: ad-campaign-dc2.kv",
            "Key: lww:user-status",
            "Operation: put",
            "Processing update: lww:user-status",
            "LWW-Register updated: lww:user-status",
            "Value: away",
            "Timestamp: 1698765433000",
            "Replica: ad-campaign-dc2",
            "CURRENT CRDT STATE",
            "LWW-Registers:",
            "G-Counters:",
            'Replica Counts: {"ad-campaign-dc1":5,"ad-campaign-dc2":3}',
            "Total: 8",
            'Replica Counts: {"ad-campaign-dc1":100,"ad-campaign-dc2":75}',
            "Total: 175",
            'Replica Counts: {"ad-campaign-dc1":250}',
            "Total: 250",
        ]:
            await client.saw(line)
        assert await client.metric("unison_client_malformed_skipped_total") == 0
        for ns in (DC1, DC2):
            assert (
                await client.metric("unison_client_notifications_received_total", namespace=ns) > 0
            )

        # a client started after all the writes converges to the same state from its scan
        late = ClientProcess(client_args(relayer))
        await late.start()
        try:
            await late.wait_ready()
            assert await late.state() == expected
        finally:
            assert await late.terminate() == 0
    finally:
        assert await client.terminate() == 0
    assert "Traceback" not in client.stderr


async def _is(value: Any, want: Any) -> bool:
    return (await value) == want


async def _state_is(client: ClientProcess, expected: dict[str, Any]) -> bool:
    return await client.state() == expected

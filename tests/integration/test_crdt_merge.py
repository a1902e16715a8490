"""Monotone CRDT state on the nodes (storage_config.crdt_merge_namespaces, on in the seed
topology): a PUT of a CRDT key stores the join with the stored value, so a stale write
changes nothing and a client that starts late agrees with one that ran all along.

Real processes: dc1, dc2 and the relayer from the seed's topology, two `unison client`s.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.integration.test_client import ClientProcess, eventually
from tests.integration.test_client_seed_scenarios import client_args
from tests.support.nodes import NodeProcess, b64, kv_path, running_cluster

DC1, DC2 = "ad-campaign-dc1", "ad-campaign-dc2"
# A write that changed the state gets UnisonDB's answer; one that did not says so.
CHANGED, UNCHANGED = {"success": True}, {"success": True, "changed": False}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, NodeProcess]]:
    with running_cluster(tmp_path_factory.mktemp("crdt-merge")) as nodes:
        yield nodes


def put(node: NodeProcess, ns: str, key: str, doc: Any) -> tuple[int, Any]:
    return node.put(ns, key, json.dumps(doc, separators=(",", ":")))


def stored(node: NodeProcess, ns: str, key: str) -> Any:
    raw = node.get(ns, key)
    return None if raw is None else json.loads(raw)


async def test_a_stale_lww_write_changes_nothing_late_and_long_running_clients_agree(
        cluster: dict[str, NodeProcess]) -> None:
    """The issue's scenario: dc1 writes lww:x at timestamp 5, then at timestamp 3.
    (Without the merge the node stores the second, and the late client keeps 3.)"""
    dc1, relayer = cluster["dc1"], cluster["relayer"]
    early = ClientProcess(client_args(relayer, "--quiet"))
    await early.start()
    late = ClientProcess(client_args(relayer, "--quiet"))
    try:
        await early.wait_ready()
        newer = {"value": "five", "timestamp": 5, "replica": DC1}
        older = {"value": "three", "timestamp": 3, "replica": DC1}
        assert put(dc1, DC1, "lww:x", newer) == (200, {"success": True})
        assert put(dc1, DC1, "lww:x", older) == (200, {"success": True, "changed": False})
        assert stored(dc1, DC1, "lww:x") == newer
        await eventually(lambda: _lww(early, "lww:x", "five"), "the long-running client")

        await late.start()  # bootstraps from a scan of the relayer
        await late.wait_ready()
        await eventually(lambda: _lww(late, "lww:x", "five"), "the late client")
        assert (await late.state())["lww"]["lww:x"] == (await early.state())["lww"]["lww:x"]
        assert stored(relayer, DC1, "lww:x") == newer
    finally:
        await early.terminate()
        if late.proc is not None:
            await late.terminate()


async def _lww(client: ClientProcess, key: str, value: Any) -> bool:
    reg = (await client.state())["lww"].get(key)
    return reg is not None and reg["value"] == value


def test_counters_keep_the_max_per_replica_and_plain_keys_overwrite(
        cluster: dict[str, NodeProcess]) -> None:
    dc2 = cluster["dc2"]
    assert put(dc2, DC2, "counter:c", {"replica": DC2, "count": 5})[1] == CHANGED
    assert put(dc2, DC2, "counter:c", {"replica": DC2, "count": 3})[1] == UNCHANGED
    assert put(dc2, DC2, "counter:c", {"replica": DC2, "count": 5})[1] == UNCHANGED
    assert stored(dc2, DC2, "counter:c") == {"replica": DC2, "count": 5}
    # A second replica writing the same key: both maxima are kept.
    assert put(dc2, DC2, "counter:c", {"replica": "other", "count": 2})[1] == CHANGED
    assert stored(dc2, DC2, "counter:c") == {"replica": "other", "count": 2,
                                             "counts": {DC2: 5, "other": 2}}
    assert put(dc2, DC2, "pncounter:p", {"replica": DC2, "p": 4, "n": 1})[1] == CHANGED
    assert put(dc2, DC2, "pncounter:p", {"replica": DC2, "p": 2, "n": 1})[1] == UNCHANGED
    assert put(dc2, DC2, "pncounter:p", {"replica": DC2, "p": 2, "n": 3})[1] == CHANGED
    assert stored(dc2, DC2, "pncounter:p") == {"replica": DC2, "p": 4, "n": 3}

    assert dc2.put(DC2, "plain", "one") == (200, {"success": True})
    assert dc2.put(DC2, "plain", "two") == (200, {"success": True})
    assert dc2.get(DC2, "plain") == b"two"


def test_batches_merge_too_and_bad_crdt_values_are_refused_naming_the_field(
        cluster: dict[str, NodeProcess]) -> None:
    dc1 = cluster["dc1"]
    lww = [{"value": v, "timestamp": ts, "replica": DC1} for v, ts in (("a", 10), ("b", 9))]
    items = [{"key": "lww:batch", "value": b64(json.dumps(d))} for d in lww]
    items.append({"key": "plain:batch", "value": b64("p")})
    status, body = dc1.api("POST", f"/api/v1/{DC1}/kv/batch", {"operation": "put",
                                                               "items": items})
    assert (status, body) == (200, {"success": True, "count": 3, "unchanged": 1})
    assert stored(dc1, DC1, "lww:batch")["value"] == "a"  # the second item was stale

    status, body = put(dc1, DC1, "lww:bad", {"value": "no timestamp", "replica": DC1})
    assert status == 400 and body["error"].startswith("value: ") and "timestamp" in \
        body["error"], body
    status, body = dc1.api("PUT", kv_path(DC1, "counter:bad"), {"value": b64("not json")})
    assert status == 400 and "value: " in body["error"], body
    bad = [{"key": "counter:ok", "value": b64('{"replica":"r","count":1}')},
           {"key": "counter:bad", "value": b64('{"replica":"r","count":-1}')}]
    status, body = dc1.api("POST", f"/api/v1/{DC1}/kv/batch", {"operation": "put",
                                                               "items": bad})
    assert status == 400 and body["error"].startswith("items[1].value: "), body
    assert dc1.get(DC1, "counter:ok") is None  # refused as a whole

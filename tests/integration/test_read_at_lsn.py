"""Reads at an LSN (`?min_lsn=n` or X-Unison-Min-LSN): a node behind waits a bounded time
for the LSN, then answers 503 naming its own; the client reads with a notification's
seq_num, so a lagging relayer replica never serves it an older value. A real node."""

from __future__ import annotations

import http.client
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.nodes import HOST, NodeProcess, b64, kv_path, single_node_config

NS = "ns1"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    tmp = tmp_path_factory.mktemp("read-at-lsn")
    n = NodeProcess("dc1", "replicator", single_node_config(tmp, [NS]), tmp / "dc1").start()
    yield n
    n.stop()


def _put(node: NodeProcess, key: str, value: str) -> int:
    assert node.put(NS, key, value)[0] == 200
    return int(node.api("GET", f"/api/v1/{NS}/offset")[1]["lsn"])


def test_a_read_at_or_below_the_nodes_lsn_is_served(node: NodeProcess) -> None:
    lsn = _put(node, "k", "v1")
    for path in (f"{kv_path(NS, 'k')}?min_lsn={lsn}", f"{kv_path(NS, 'k')}?min_lsn=0"):
        status, body = node.api("GET", path)
        assert (status, body) == (200, {"value": b64("v1"), "found": True}), path
    conn = http.client.HTTPConnection(HOST, node.http_port, timeout=10)
    try:
        conn.request("GET", kv_path(NS, "k"), headers={"X-Unison-Min-LSN": str(lsn + 9)})
        resp = conn.getresponse()
        assert resp.status == 503 and json.loads(resp.read())["lsn"] == lsn
    finally:
        conn.close()
    status, body = node.api("GET", f"/api/v1/{NS}/kv?prefix=k&min_lsn={lsn}")
    assert status == 200 and body["items"][0]["key"] == "k", body


def test_a_node_behind_waits_then_answers_503_naming_its_lsn(node: NodeProcess) -> None:
    lsn = _put(node, "k", "v2")
    status, body = node.api("GET", f"{kv_path(NS, 'k')}?min_lsn={lsn + 5}", timeout=10)
    assert status == 503, body
    assert (body["lsn"], body["min_lsn"]) == (lsn, lsn + 5)
    assert f"is at lsn {lsn}, behind min_lsn {lsn + 5}" in body["error"]
    status, body = node.api("GET", f"/api/v1/{NS}/kv?min_lsn={lsn + 5}", timeout=10)
    assert status == 503 and body["lsn"] == lsn, body


def test_a_write_that_arrives_during_the_wait_is_served(node: NodeProcess) -> None:
    lsn = _put(node, "w", "old")
    got: list[tuple[int, Any]] = []
    reader = threading.Thread(target=lambda: got.append(
        node.api("GET", f"{kv_path(NS, 'w')}?min_lsn={lsn + 1}", timeout=10)))
    reader.start()
    # Whether the read is already waiting or not, it must see lsn + 1: it cannot be
    # answered before the node holds it, and it is answered once it does.
    assert _put(node, "w", "new") == lsn + 1
    reader.join(10)
    assert got == [(200, {"value": b64("new"), "found": True})]


def test_a_bad_min_lsn_is_400_naming_it(node: NodeProcess) -> None:
    for bad in ("x", "-1", "1.5"):
        status, body = node.api("GET", f"{kv_path(NS, 'k')}?min_lsn={bad}")
        assert status == 400 and body["error"].startswith("min_lsn: "), (bad, body)

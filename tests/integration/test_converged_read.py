"""GET /crdt/{key} on the relayer: the value the CRDT client would compute, merged from
every namespace the relayer follows, served by the relayer itself (real nodes)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from unison.api.converged import converged_value
from unison.config import NodeConfig
from unison.context import NodeContext
from unison.storage import Mutation, NamespaceStore, Op

from tests.support.nodes import NodeProcess, running_cluster

DC1, DC2 = "ad-campaign-dc1", "ad-campaign-dc2"


def put(node: NodeProcess, ns: str, key: str, doc: Any) -> None:
    status, body = node.put(ns, key, json.dumps(doc))
    assert status == 200, (status, body)


def wait_until(probe: Callable[[], Any], what: str, within: float = 30.0) -> Any:
    deadline = time.monotonic() + within
    while (got := probe()) is None:
        assert time.monotonic() < deadline, f"{what}: not within {within:.0f}s"
        time.sleep(0.1)
    return got


def converged(node: NodeProcess, key: str) -> tuple[int, Any]:
    return node.api("GET", f"/crdt/{key}")


def test_relayer_serves_the_merged_crdt_value(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as nodes:
        dc1, dc2, relayer = nodes["dc1"], nodes["dc2"], nodes["relayer"]
        put(dc1, DC1, "lww:flag", {"value": "old", "timestamp": 5, "replica": DC1})
        put(dc2, DC2, "lww:flag", {"value": "new", "timestamp": 7, "replica": DC2})
        put(dc1, DC1, "counter:hits", {"replica": DC1, "count": 4})
        put(dc2, DC2, "counter:hits", {"replica": DC2, "count": 3})

        def both(key: str) -> dict[str, Any] | None:
            status, body = converged(relayer, key)
            found = status == 200 and all(e["found"] for e in body["namespaces"].values())
            return body if found else None

        flag = wait_until(lambda: both("lww:flag"), "lww:flag from both datacenters")
        assert flag["type"] == "lww" and flag["found"] is True
        assert flag["value"] == {"value": "new", "timestamp": 7, "replica": DC2}
        assert set(flag["namespaces"]) == {DC1, DC2}
        assert all(e["lsn"] >= 1 for e in flag["namespaces"].values())

        hits = wait_until(lambda: both("counter:hits"), "counter:hits from both")
        assert hits["value"]["total"] == 7
        assert hits["value"]["counts"] == {DC1: 4, DC2: 3}

        status, body = converged(relayer, "lww:nobody-wrote-this")
        assert status == 200 and body["found"] is False and body["value"] is None
        status, body = converged(relayer, "plain-key")
        assert status == 400 and "not a CRDT key" in body["error"], body


async def test_a_malformed_value_is_skipped_and_named(tmp_path: Path) -> None:
    """A namespace that does not merge CRDT writes may hold a bad value: it is skipped with
    the reason, and the other namespaces' values still count."""
    stores = {ns: NamespaceStore(ns, tmp_path / ns).open() for ns in (DC1, DC2)}
    for store in stores.values():
        store.start()
    try:
        good = {"value": "ok", "timestamp": 1, "replica": DC1}
        await stores[DC1].write([Mutation(Op.PUT, b"lww:k", json.dumps(good).encode())])
        await stores[DC2].write([Mutation(Op.PUT, b"lww:k", b'{"value": 1}')])
        ctx = NodeContext(NodeConfig(), "relayer", stores, frozenset())
        doc = converged_value(ctx, "lww:k")
        assert doc["value"] == good and doc["found"] is True
        assert doc["namespaces"][DC1] == {"lsn": 1, "found": True}
        assert "timestamp" in doc["namespaces"][DC2]["skipped"]
    finally:
        for store in stores.values():
            await store.close()

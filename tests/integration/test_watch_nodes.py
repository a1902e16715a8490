"""The SSE watch on real node processes: a relayer following dc1, and a primary with
log retention, on 127.0.0.1."""

from __future__ import annotations

import http.client
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from unison.config import WalCleanupConfig

from tests.support.nodes import HOST, NodeProcess, running_cluster, single_node_config

DC1 = "ad-campaign-dc1"
FIELDS = {"key", "namespace", "operation", "entry_type", "seq_num"}


class Watch:
    """One open `GET /api/v1/{ns}/watch` stream, read line by line."""

    def __init__(self, port: int, namespace: str, query: str = "",
                 last_event_id: int | None = None) -> None:
        self.conn = http.client.HTTPConnection(HOST, port, timeout=15)
        headers = {} if last_event_id is None else {"Last-Event-ID": str(last_event_id)}
        self.conn.request("GET", f"/api/v1/{namespace}/watch{query}", headers=headers)
        self.resp = self.conn.getresponse()
        self.status = self.resp.status

    def json(self) -> dict:
        return json.loads(self.resp.read())

    def next(self) -> tuple[int, dict] | None:
        """The next event as (id, data), or None when the server ended the stream."""
        fields: dict[str, str] = {}
        while True:
            raw = self.resp.readline()
            if not raw:
                return None
            line = raw.decode().rstrip("\n")
            if not line:
                if "data" in fields:
                    assert fields.get("event", "message") == "message", fields
                    return int(fields["id"]), json.loads(fields["data"])
                continue
            if not line.startswith(":"):
                name, _, value = line.partition(": ")
                fields[name] = value

    def take(self, n: int) -> list[tuple[int, dict]]:
        out = []
        for _ in range(n):
            ev = self.next()
            assert ev is not None, f"stream ended after {len(out)} of {n} events"
            out.append(ev)
        return out

    def close(self) -> None:
        self.conn.close()


@pytest.fixture(scope="module")
def relayed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, NodeProcess]]:
    with running_cluster(tmp_path_factory.mktemp("watch-cluster"),
                         datacenters=[("dc1", [DC1])], follow=["dc1"]) as nodes:
        yield nodes


def offset(node: NodeProcess, namespace: str) -> int:
    status, body = node.api("GET", f"/api/v1/{namespace}/offset")
    assert status == 200, body
    return body["lsn"]


def test_relayer_watch_replays_tails_and_resumes_without_gap_or_duplicate(relayed):
    dc1, relayer = relayed["dc1"], relayed["relayer"]
    start = offset(dc1, DC1) + 1
    keys = [f"before:{i}" for i in range(5)]
    for k in keys:
        assert dc1.put(DC1, k, "v")[0] == 200

    seen: list[tuple[int, dict]] = []
    watch = Watch(relayer.http_port, DC1, f"?from_lsn={start}")
    try:
        assert watch.status == 200
        assert watch.resp.getheader("Content-Type", "").startswith("text/event-stream")
        seen += watch.take(5)  # replay (or tail, if replication is still catching up)
        for i in range(3):
            k = f"tail:{i}"
            keys.append(k)
            assert dc1.put(DC1, k, "v")[0] == 200
        seen += watch.take(3)
    finally:
        watch.close()

    for i in range(2):  # written while nobody watches
        k = f"gap:{i}"
        keys.append(k)
        assert dc1.put(DC1, k, "v")[0] == 200
    watch = Watch(relayer.http_port, DC1, f"?from_lsn={start}", last_event_id=seen[-1][0])
    try:
        seen += watch.take(2)
        keys.append("after-reconnect")
        assert dc1.put(DC1, "after-reconnect", "v")[0] == 200
        seen += watch.take(1)
    finally:
        watch.close()

    assert [eid for eid, _ in seen] == list(range(start, start + len(keys)))
    assert [d["key"] for _, d in seen] == keys
    assert all(set(d) == FIELDS and d["seq_num"] == eid for eid, d in seen)
    assert {(d["namespace"], d["operation"], d["entry_type"]) for _, d in seen} == {
        (DC1, "put", "kv")}


def test_watch_of_unknown_namespace_is_404(relayed):
    watch = Watch(relayed["relayer"].http_port, "no-such-ns", "?from_lsn=1")
    try:
        assert watch.status == 404
        assert watch.json() == {"error": "namespace not found: no-such-ns"}
    finally:
        watch.close()


def test_trimmed_log_is_410_and_shutdown_ends_open_streams(tmp_path: Path):
    cfg = single_node_config(tmp_path, [DC1])
    cfg.storage.wal_cleanup = WalCleanupConfig(enabled=True, interval=0.2, max_records=3)
    node = NodeProcess("primary", "replicator", cfg, tmp_path / "primary").start()
    try:
        for i in range(10):
            assert node.put(DC1, f"k{i}", "v")[0] == 200
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # retention runs in the background
            first = node.api("GET", f"/api/v1/{DC1}/stats")[1].get("first_retained_lsn", 1)
            if first > 1:
                break
            time.sleep(0.1)
        assert first > 1, "retention never trimmed the log"

        gone = Watch(node.http_port, DC1, "?from_lsn=1")
        try:
            assert gone.status == 410
            body = gone.json()
        finally:
            gone.close()
        assert "older than the retained log" in body["error"]
        assert body["first_retained_lsn"] >= first

        live = Watch(node.http_port, DC1, f"?from_lsn={body['first_retained_lsn']}")
        try:
            assert live.status == 200
            events = live.take(10 - body["first_retained_lsn"] + 1)
            assert events[-1][0] == 10
            code = node.stop()  # SIGTERM with a stream open: it must end, not hold shutdown
            assert live.next() is None
        finally:
            live.close()
        assert code == 0, node.logs()
    finally:
        node.stop()

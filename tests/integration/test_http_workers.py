"""HTTP worker processes (`http_config.workers`), against real node processes.

A node with workers serves the same API as one without: the same answers to bad
requests, every acknowledged write visible to a later read on any connection, one LSN per
write. Workers die and come back; the writer's death ends them; SIGTERM stops them all.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from unison.config import GrpcConfig

from tests.support.nodes import HOST, NodeProcess, b64, kv_path, single_node_config

NS, MERGED, FRESH = "plain", "merged", "fresh"
READ, WRITE = "r-7a1c", "w-55e0"
MAX_BODY = 64 * 1024
Answer = tuple[int, Any, dict[str, str]]


def exchange(port: int, method: str, path: str, raw: bytes | None = None,
             headers: dict[str, str] | None = None) -> Answer:
    """One request on a fresh connection: (status, JSON or text, the headers that matter)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        conn.request(method, path, body=raw, headers=headers or {})
        resp = conn.getresponse()
        text = resp.read().decode("utf-8", "replace")
        try:
            body: Any = json.loads(text)
        except ValueError:
            body = text
        kept = {k: v for k, v in resp.getheaders()
                if k in ("Content-Type", "Allow", "WWW-Authenticate")}
        return resp.status, body, kept
    finally:
        conn.close()


def worker_pids(node: NodeProcess) -> list[int]:
    assert node.proc is not None
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == node.proc.pid and b"unison.api.worker" in cmdline:
            out.append(int(entry))
    return sorted(out)


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def wait_for(what: str, check: Any, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout}s: {what}")


def make_node(tmp: Path, name: str, workers: int, role: str = "replicator",
              tokens: bool = False) -> NodeProcess:
    cfg = single_node_config(tmp / name, [NS, MERGED, FRESH], grpc=GrpcConfig(port=0))
    cfg.storage.crdt_merge_namespaces = [MERGED]
    cfg.http.max_body_size = MAX_BODY
    cfg.http.workers = workers
    if tokens:
        (tmp / "read").write_text(READ)
        (tmp / "write").write_text(WRITE)
        cfg.http.read_token_file, cfg.http.write_token_file = str(tmp / "read"), str(tmp / "write")
    return NodeProcess(name, role, cfg, tmp / name)


def start(node: NodeProcess) -> NodeProcess:
    """Started and ready: a worker that listens first answers /healthz (from the writer)
    before its siblings listen, and the node logs ready only once they all do."""
    node.start()
    wait_for("node ready", lambda: "node ready" in node.logs())
    return node


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, NodeProcess]]:
    """A single-process node and a two-worker node with the same config, and the same
    pair of relayers."""
    tmp = tmp_path_factory.mktemp("workers")
    started = {name: start(make_node(tmp, name, workers, role))
               for name, workers, role in [("single", 0, "replicator"), ("workers", 2, "replicator"),
                                           ("relayer-single", 0, "relayer"),
                                           ("relayer-workers", 2, "relayer")]}
    yield started
    for node in started.values():
        assert node.stop() == 0, node.logs()


JSON_CT = {"Content-Type": "application/json"}
BAD_REQUESTS: list[tuple[str, str, bytes | None, dict[str, str]]] = [
    ("PUT", f"/api/v1/{NS}/kv/", b'{"value":"aGk="}', JSON_CT),  # empty key
    ("GET", f"/api/v1/{NS}/kv/", None, {}),
    ("PUT", kv_path(NS, "k" * 5000), b'{"value":"aGk="}', JSON_CT),  # over max_key_size
    ("GET", kv_path(NS, "k" * 5000), None, {}),
    ("PUT", kv_path(NS, "k"), b"{not json", JSON_CT),
    ("PUT", kv_path(NS, "k"), b"", JSON_CT),
    ("PUT", kv_path(NS, "k"), b'{"value": 12}', JSON_CT),
    ("PUT", kv_path(NS, "k"), b'{"value":"aGk"}', JSON_CT),
    ("PUT", kv_path(NS, "k"), b'{"value":"aGk="}', {"Content-Type": "text/plain"}),
    ("PUT", kv_path(NS, "k"), b'{"value":"aGk="}', {}),  # no Content-Type
    ("PUT", kv_path(NS, "k"), b'{"value":"' + b"A" * MAX_BODY + b'"}', JSON_CT),  # 413
    ("PUT", kv_path("nope", "k"), b'{"value":"aGk="}', JSON_CT),
    ("GET", kv_path("nope", "k"), None, {}),
    ("DELETE", kv_path("nope", "k"), None, {}),
    ("GET", "/api/v1/nope/offset", None, {}),
    ("POST", kv_path(NS, "k"), b"{}", JSON_CT),  # 405 with Allow
    ("PATCH", "/api/v1/x/kv/batch", b"{}", JSON_CT),
    ("GET", "/no/such/path", None, {}),
    ("POST", f"/api/v1/{NS}/kv/batch", b'{"operation":"put","items":[]}', JSON_CT),
    ("POST", f"/api/v1/{NS}/kv/batch", b'{"operation":"frob"}', JSON_CT),
    ("POST", f"/api/v1/{NS}/kv/batch",
     b'{"operation":"put","items":[{"key":"a","value":"aGk="},{"key":"","value":"aGk="}]}', JSON_CT),
    ("POST", f"/api/v1/{NS}/kv/batch", b'{"operation":"delete","keys":["a",7]}', JSON_CT),
    ("POST", f"/api/v1/{NS}/kv/batch", b'{"operation": "put", ', JSON_CT),
    ("PUT", kv_path(MERGED, "lww:x"), json.dumps({"value": b64("{}")}).encode(), JSON_CT),
    ("POST", f"/api/v1/{MERGED}/kv/batch", json.dumps(
        {"operation": "put", "items": [{"key": "counter:c", "value": b64("nope")}]}).encode(),
     JSON_CT),
    ("GET", f"/api/v1/{NS}/kv?limit=0", None, {}),
    ("GET", kv_path(NS, "k") + "?min_lsn=x", None, {}),
]


@pytest.mark.parametrize("method, path, raw, headers", BAD_REQUESTS)
def test_bad_requests_answer_as_a_single_process_node(nodes: dict[str, NodeProcess], method: str,
                                                      path: str, raw: bytes | None,
                                                      headers: dict[str, str]) -> None:
    single = exchange(nodes["single"].http_port, method, path, raw, headers)
    assert single[0] >= 400, single
    assert exchange(nodes["workers"].http_port, method, path, raw, headers) == single


@pytest.mark.parametrize("method, path, raw", [
    ("PUT", kv_path(NS, "k"), b'{"value":"aGk="}'),
    ("DELETE", kv_path(NS, "k"), None),
    ("POST", f"/api/v1/{NS}/kv/batch", b'{"operation":"delete","keys":["k"]}'),
])
def test_a_relayer_with_workers_refuses_writes_as_one_without(
        nodes: dict[str, NodeProcess], method: str, path: str, raw: bytes | None) -> None:
    single = exchange(nodes["relayer-single"].http_port, method, path, raw, JSON_CT)
    assert single[0] == 403, single
    assert exchange(nodes["relayer-workers"].http_port, method, path, raw, JSON_CT) == single


def test_successes_answer_as_a_single_process_node(nodes: dict[str, NodeProcess]) -> None:
    lww = json.dumps({"value": 1, "timestamp": 5, "replica": "a"})
    steps: list[tuple[str, str, bytes | None]] = [
        ("PUT", kv_path(NS, "s"), json.dumps({"value": b64("v")}).encode()),
        ("GET", kv_path(NS, "s"), None),
        ("HEAD", kv_path(NS, "s"), None),
        ("GET", kv_path(NS, "missing"), None),
        ("DELETE", kv_path(NS, "s"), None),
        ("POST", f"/api/v1/{NS}/kv/batch", json.dumps({"operation": "put", "items": [
            {"key": "b1", "value": b64("1")}, {"key": "b2", "value": b64("")}]}).encode()),
        ("GET", kv_path(NS, "b2"), None),
        ("PUT", kv_path(MERGED, "lww:x"), json.dumps({"value": b64(lww)}).encode()),
        ("PUT", kv_path(MERGED, "lww:x"), json.dumps({"value": b64(lww)}).encode()),  # unchanged
        ("POST", f"/api/v1/{MERGED}/kv/batch", json.dumps({"operation": "put", "items": [
            {"key": "lww:x", "value": b64(lww)}, {"key": "y", "value": b64("2")}]}).encode()),
        ("GET", f"/api/v1/{NS}/kv?prefix=b", None),
        ("GET", kv_path(NS, "b1") + "?min_lsn=1", None),
        ("GET", f"/api/v1/{NS}/offset", None),
    ]
    for method, path, raw in steps:
        single = exchange(nodes["single"].http_port, method, path, raw, JSON_CT)
        assert single[0] == 200, (method, path, single)
        assert exchange(nodes["workers"].http_port, method, path, raw, JSON_CT) == single, path


def _put_many(port: int, prefix: str, count: int) -> list[tuple[str, str]]:
    """`count` PUTs on one kept-alive connection; after each acknowledgement, a read on a
    fresh connection (any worker) must see it."""
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    done = []
    try:
        for i in range(count):
            key, value = f"{prefix}-{i}", b64(f"{prefix}:{i}")
            conn.request("PUT", kv_path(FRESH, key), json.dumps({"value": value}), JSON_CT)
            resp = conn.getresponse()
            assert (resp.status, resp.read()) == (200, b'{"success":true}')
            done.append((key, value))
            if i % 10 == 0:
                status, body, _ = exchange(port, "GET", kv_path(FRESH, key))
                assert (status, body) == (200, {"value": value, "found": True}), key
    finally:
        conn.close()
    return done


def test_acknowledged_writes_are_read_back_on_fresh_connections(
        nodes: dict[str, NodeProcess]) -> None:
    port = nodes["workers"].http_port
    with ThreadPoolExecutor(16) as pool:
        runs = list(pool.map(lambda c: _put_many(port, f"c{c}", 40), range(16)))
    written = [kv for run in runs for kv in run]
    assert len(written) == 640
    for key, value in written:
        assert exchange(port, "GET", kv_path(FRESH, key))[:2] == (
            200, {"value": value, "found": True}), key
    status, body, _ = exchange(port, "GET", f"/api/v1/{FRESH}/offset")
    assert (status, body) == (200, {"namespace": FRESH, "lsn": 640})


def test_watch_streams_through_a_worker(nodes: dict[str, NodeProcess]) -> None:
    node = nodes["workers"]
    start = exchange(node.http_port, "GET", f"/api/v1/{NS}/offset")[1]["lsn"] + 1
    conn = http.client.HTTPConnection(HOST, node.http_port, timeout=10)
    try:
        conn.request("GET", f"/api/v1/{NS}/watch?from_lsn={start}")
        resp = conn.getresponse()
        assert resp.status == 200 and resp.getheader("Content-Type", "").startswith(
            "text/event-stream")
        seen = b""
        for i in range(3):  # each event arrives while the stream stays open
            assert node.put(NS, f"w{i}", "v")[0] == 200
            while f"id: {start + i}\n".encode() not in seen:
                seen += resp.read1(65536)
        assert b'"key":"w2"' in seen and b'"seq_num":%d' % (start + 2) in seen
    finally:
        conn.close()


def test_tokens_are_enforced_by_workers(tmp_path: Path) -> None:
    node = start(make_node(tmp_path, "auth", 2, tokens=True))
    try:
        port, put = node.http_port, b'{"value":"aGk="}'
        auth = {"Authorization": f"Bearer {WRITE}", **JSON_CT}
        status, body, headers = exchange(port, "PUT", kv_path(NS, "t"), put, JSON_CT)
        assert status == 401 and "write_token_file" in body["error"]
        assert headers["WWW-Authenticate"].startswith("Bearer")
        read_only = {"Authorization": f"Bearer {READ}", **JSON_CT}
        assert exchange(port, "PUT", kv_path(NS, "t"), put, read_only)[0] == 401
        assert exchange(port, "PUT", kv_path(NS, "t"), put, auth)[0] == 200
        for path in (kv_path(NS, "t"), f"/api/v1/{NS}/offset", "/metrics"):  # served, proxied
            status, body, _ = exchange(port, "GET", path)
            assert status == 401 and "read_token_file" in body["error"], path
            assert exchange(port, "GET", path, None, {"Authorization": f"Bearer {READ}"})[0] == 200
        assert exchange(port, "GET", "/healthz")[0] == 200
    finally:
        assert node.stop() == 0, node.logs()


def test_a_killed_worker_is_replaced_and_a_killed_writer_ends_them(tmp_path: Path) -> None:
    node = start(make_node(tmp_path, "kill", 2))
    try:
        first = worker_pids(node)
        assert len(first) == 2, node.logs()
        os.kill(first[0], signal.SIGKILL)
        # Connections the kernel gave the worker before it died are reset (as when a
        # single-process node dies); once it has exited, its sibling takes them all.
        wait_for("the killed worker gone", lambda: not alive(first[0]))
        for i in range(50):  # served meanwhile by the other worker, then by both
            assert node.put(NS, f"after-kill-{i}", "v")[0] == 200
        replaced = wait_for("a new worker", lambda: len(worker_pids(node)) == 2
                            and worker_pids(node) != first and worker_pids(node))
        assert first[1] in replaced and first[0] not in replaced
        wait_for("the restart logged", lambda: "restarted" in node.logs())
        assert "exited with signal 9; restarting" in node.logs()
        assert node.get(NS, "after-kill-49") == b"v"
        node.kill9()
        wait_for("workers gone after the writer's death",
                 lambda: not any(alive(pid) for pid in replaced))
    finally:
        node.stop()


def test_sigterm_stops_workers_then_the_node_cleanly(tmp_path: Path) -> None:
    node = start(make_node(tmp_path, "term", 3))
    pids = worker_pids(node)
    assert len(pids) == 3
    assert "3 worker processes" in node.logs()
    assert node.put(NS, "k", "v")[0] == 200
    assert node.stop() == 0, node.logs()
    assert not any(alive(pid) for pid in pids)
    assert "stopped cleanly" in node.logs() and "restarting" not in node.logs()
    start(node)  # the data is there after a restart with workers
    try:
        assert node.get(NS, "k") == b"v"
    finally:
        assert node.stop() == 0


def test_a_taken_port_fails_start_up_naming_it(tmp_path: Path) -> None:
    node = make_node(tmp_path, "taken", 2)
    with socket.socket() as holder:
        holder.bind((HOST, node.http_port))
        holder.listen()
        with pytest.raises(RuntimeError, match="exited with 1"):
            node.start()
    assert f"HTTP port {node.http_port}" in node.logs()
    assert "Traceback" not in node.logs()


def test_metrics_count_what_the_workers_answer(nodes: dict[str, NodeProcess]) -> None:
    port = nodes["workers"].http_port

    def puts_counted() -> int:
        text = exchange(port, "GET", "/metrics")[1]
        return sum(int(float(line.rsplit(" ", 1)[1])) for line in text.splitlines()
                   if line.startswith("unison_http_requests_total{")
                   and 'method="PUT"' in line and "kv/{key}" in line and 'status="200"' in line)

    before = puts_counted()
    for i in range(20):
        assert exchange(port, "PUT", kv_path(NS, f"m{i}"), b'{"value":"aGk="}', JSON_CT)[0] == 200
    wait_for("the workers' counts in /metrics", lambda: puts_counted() >= before + 20, 10)

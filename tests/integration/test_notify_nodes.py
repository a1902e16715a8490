"""ZeroMQ change notifications from real node processes (dc1, dc2, relayer) on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from unison.config import NotifierConfig

from tests.support.nodes import (
    HOST,
    NodeProcess,
    b64,
    free_port,
    kv_path,
    running_cluster,
    single_node_config,
)

DC1, DC2 = "ad-campaign-dc1", "ad-campaign-dc2"
FIELDS = {"key", "namespace", "operation", "entry_type", "seq_num"}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, NodeProcess]]:
    with running_cluster(tmp_path_factory.mktemp("notify-cluster")) as nodes:
        yield nodes


@pytest.fixture
def zctx() -> Iterator[zmq.Context]:
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def notifier_port(node: NodeProcess, namespace: str) -> int:
    return next(n.bind_port for n in node.config.notifiers if n.namespace == namespace)


def subscribe(zctx: zmq.Context, port: int, prefix: bytes) -> zmq.Socket:
    sub = zctx.socket(zmq.SUB)
    sub.setsockopt(zmq.SUBSCRIBE, prefix)
    sub.connect(f"tcp://{HOST}:{port}")
    return sub


def recv(sub: zmq.Socket, timeout_ms: int = 10_000) -> tuple[bytes, dict]:
    assert sub.poll(timeout_ms), "no notification arrived"
    topic, body = sub.recv_multipart()
    return topic, json.loads(body)


def until_subscribed(writer: NodeProcess, namespace: str, sub: zmq.Socket) -> int:
    """Subscriptions propagate asynchronously (and replication takes a moment): write
    probes until one arrives. Returns the seq_num of the last probe sent."""
    deadline = time.monotonic() + 20
    probe = 0
    while time.monotonic() < deadline:
        probe += 1
        assert writer.put(namespace, "probe", str(probe))[0] == 200
        if sub.poll(200):
            break
    else:
        raise AssertionError(f"no notification for {namespace} within 20 s")
    last = writer.api("GET", f"/api/v1/{namespace}/offset")[1]["lsn"]
    while True:  # drain every probe still in flight, up to the last one written
        _, msg = recv(sub)
        if msg["seq_num"] == last:
            return last


def quiet(sub: zmq.Socket, ms: int = 300) -> bool:
    return sub.poll(ms) == 0


def test_relayer_sends_one_notification_per_write_on_dc1_in_lsn_order(cluster, zctx):
    dc1, relayer = cluster["dc1"], cluster["relayer"]
    sub = subscribe(zctx, notifier_port(relayer, DC1), DC1.encode())
    base = until_subscribed(dc1, DC1, sub)

    expected = []
    # Valid CRDT values: the seed topology's datacenters merge CRDT writes.
    lww, count = '{"value":1,"timestamp":1,"replica":"r"}', '{"replica":"r","count":1}'
    for key, value in (("lww:user-status", lww), ("counter:page-views", count),
                       ("lww:feature:new-ui", lww)):
        assert dc1.put(DC1, key, value)[0] == 200
        expected.append((key, "put"))
    assert dc1.api("DELETE", kv_path(DC1, "counter:page-views"))[0] == 200
    expected.append(("counter:page-views", "delete"))
    batch = {"operation": "put", "items": [{"key": f"batch:{i}", "value": b64("x")}
                                           for i in range(5)]}
    assert dc1.api("POST", f"/api/v1/{DC1}/kv/batch", batch)[0] == 200
    expected += [(f"batch:{i}", "put") for i in range(5)]
    deletes = {"operation": "delete", "keys": ["batch:0", "batch:1"]}
    assert dc1.api("POST", f"/api/v1/{DC1}/kv/batch", deletes)[0] == 200
    expected += [("batch:0", "delete"), ("batch:1", "delete")]

    got = [recv(sub) for _ in expected]
    assert quiet(sub), "more notifications than writes"
    assert {topic for topic, _ in got} == {b"ad-campaign-dc1.kv"}
    for _, msg in got:
        assert set(msg) == FIELDS
        assert (msg["namespace"], msg["entry_type"]) == (DC1, "kv")
    assert [(m["key"], m["operation"]) for _, m in got] == expected
    seqs = [m["seq_num"] for _, m in got]
    assert seqs == list(range(base + 1, base + 1 + len(expected)))  # strictly increasing, no gap
    # seq_num is the record's LSN: dc1's offset agrees.
    assert dc1.api("GET", f"/api/v1/{DC1}/offset")[1]["lsn"] == seqs[-1]


def test_subscriber_on_dc2_port_never_sees_dc1_events(cluster, zctx):
    dc1, dc2, relayer = cluster["dc1"], cluster["dc2"], cluster["relayer"]
    on_dc1 = subscribe(zctx, notifier_port(relayer, DC1), DC1.encode())
    everything_on_dc2 = subscribe(zctx, notifier_port(relayer, DC2), b"")
    until_subscribed(dc1, DC1, on_dc1)
    until_subscribed(dc2, DC2, everything_on_dc2)

    for i in range(10):
        assert dc1.put(DC1, f"only-dc1:{i}", "v")[0] == 200
    for _ in range(10):  # the relayer has published all of dc1's writes...
        recv(on_dc1)
    assert dc2.put(DC2, "dc2-marker", "v")[0] == 200
    topic, msg = recv(everything_on_dc2)  # ...and dc2's port carries only dc2's marker
    assert (topic, msg["namespace"], msg["key"]) == (b"ad-campaign-dc2.kv", DC2, "dc2-marker")
    assert quiet(everything_on_dc2)


def test_notifier_counters_appear_in_relayer_metrics(cluster, zctx):
    dc1, relayer = cluster["dc1"], cluster["relayer"]
    sub = subscribe(zctx, notifier_port(relayer, DC1), DC1.encode())
    base = until_subscribed(dc1, DC1, sub)
    status, text = relayer.api("GET", "/metrics")
    assert status == 200
    lines = [ln for ln in text.splitlines()
             if ln.startswith("unison_notifier") and "sent" in ln and f'"{DC1}"' in ln]
    assert lines, text
    # Every record the relayer holds for dc1 was published once (nobody was at the HWM).
    assert float(lines[0].rsplit(" ", 1)[1]) >= base


def test_primary_node_with_a_notifier_publishes_its_own_writes(tmp_path: Path, zctx):
    port = free_port()
    cfg = single_node_config(tmp_path, [DC1], notifiers=[NotifierConfig(DC1, port)])
    node = NodeProcess("primary", "replicator", cfg, tmp_path / "primary").start()
    try:
        sub = subscribe(zctx, port, DC1.encode())
        base = until_subscribed(node, DC1, sub)
        assert node.put(DC1, "lww:config", "v")[0] == 200
        topic, msg = recv(sub)
    finally:
        node.stop()
    assert topic == b"ad-campaign-dc1.kv"
    assert msg == {"key": "lww:config", "namespace": DC1, "operation": "put",
                   "entry_type": "kv", "seq_num": base + 1}


def test_notifier_port_in_use_fails_startup_naming_port_and_namespace(tmp_path: Path):
    holder = socket.socket()
    holder.bind(("0.0.0.0", 0))  # taken on every interface, as another program would
    holder.listen()
    port = holder.getsockname()[1]
    cfg = single_node_config(tmp_path, [DC1], notifiers=[NotifierConfig(DC1, port)])
    node = NodeProcess("taken", "replicator", cfg, tmp_path / "taken")
    try:
        node.start(wait=False)
        assert node.proc is not None
        code = node.proc.wait(30)
    finally:
        node.stop()
        holder.close()
    logs = node.logs()
    assert code == 1, logs
    error_lines = [ln for ln in logs.splitlines() if "start-up failed" in ln]
    assert error_lines, logs
    assert str(port) in error_lines[0] and DC1 in error_lines[0], logs
    assert "Traceback" not in logs

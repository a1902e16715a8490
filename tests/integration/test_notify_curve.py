"""ZeroMQ CURVE on a real node process, with keys made by `unison curve-keypair`.

With `curve_secret_key_file` and `curve_authorized_keys_dir` set, an authorized
subscriber (a raw SUB socket, and the real `unison client` process) gets notifications;
a client without CURVE, or with a key not in the directory, gets none, the node logs the
refusal and stays up, also after the socket is renewed; unauthenticated peers flooding
the port fail the handshake before any subscription is filed, so the node's memory stays
bounded. Bad key files fail the start with a message naming the field. CURVE off is covered by the suite as before
(tests/integration/test_hostile.py, test_notify_nodes.py).
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import zmq
import zmq.auth
from unison.config import NotifierConfig

from tests.support.nodes import HOST, NodeProcess, free_port, single_node_config

log = logging.getLogger(__name__)

NS = "curve"
MB = 1024 * 1024
RSS_BOUND_MB = 48


def wait_for(cond: Callable[[], bool], what: str, within: float = 30.0) -> None:
    """A deadline for a hung test, never a timing assertion."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {within}s: {what}")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """server, alice and mallory key pairs made with our CLI; alice.key is authorized."""
    d = tmp_path_factory.mktemp("curve-keys")
    for name in ("server", "alice", "mallory"):
        r = subprocess.run([sys.executable, "-m", "unison.cli", "curve-keypair", str(d), name],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert f"public certificate: {d / name}.key" in r.stdout
    (d / "clients").mkdir()
    shutil.copy(d / "alice.key", d / "clients" / "alice.key")
    return d


def curve_notifier(keys: Path, **overrides: str) -> NotifierConfig:
    fields = {"curve_secret_key_file": str(keys / "server.key_secret"),
              "curve_authorized_keys_dir": str(keys / "clients"), **overrides}
    return NotifierConfig(NS, free_port(), **fields)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, keys: Path) -> Iterator[NodeProcess]:
    tmp = tmp_path_factory.mktemp("curve-node")
    cfg = single_node_config(tmp, [NS], notifiers=[curve_notifier(keys)])
    n = NodeProcess("curve", "replicator", cfg, tmp / "node").start()
    try:
        yield n
    finally:
        assert n.stop() == 0, n.logs()[-3000:]


def zmq_address(node: NodeProcess) -> str:
    return f"tcp://{HOST}:{node.config.notifiers[0].bind_port}"


def subscriber(ctx: zmq.Context, node: NodeProcess, keys: Path, me: str | None) -> zmq.Socket:
    """A SUB socket: `me` names its certificate; None: no CURVE at all."""
    s = ctx.socket(zmq.SUB)
    s.setsockopt(zmq.LINGER, 0)
    if me is not None:
        s.curve_serverkey = zmq.auth.load_certificate(keys / "server.key")[0]
        s.curve_publickey, s.curve_secretkey = zmq.auth.load_certificate(keys / f"{me}.key_secret")
    s.setsockopt(zmq.SUBSCRIBE, NS.encode())
    s.connect(zmq_address(node))
    return s


def receives(node: NodeProcess, sub: zmq.Socket, key: str) -> dict:
    """Write `key` until `sub` gets a notification (subscriptions propagate
    asynchronously); the notification."""
    def got() -> bool:
        assert node.put(NS, key, "v")[0] == 200
        return bool(sub.poll(200))
    wait_for(got, f"a notification for {key}")
    topic, body = sub.recv_multipart()
    assert topic == f"{NS}.kv".encode()
    return json.loads(body)


def refusals(node: NodeProcess) -> int:
    """Handshakes the notifier refused so far (its stats; the log line is rate-bounded)."""
    status, stats = node.api("GET", f"/api/v1/{NS}/stats")
    assert status == 200, stats
    return int(stats["notifier"]["refused_handshakes"])


# ------------------------------------------------------------------ subscribers


def test_authorized_subscriber_gets_notifications_others_get_nothing(node: NodeProcess,
                                                                     keys: Path) -> None:
    assert "CURVE on, 1 authorized client key(s)" in node.logs()
    ctx = zmq.Context()
    try:
        mallory, plain = subscriber(ctx, node, keys, "mallory"), subscriber(ctx, node, keys, None)
        wait_for(lambda: "refused a ZeroMQ subscriber" in node.logs(), "a logged refusal")
        alice = subscriber(ctx, node, keys, "alice")
        note = receives(node, alice, "for-alice")
        assert note["key"] == "for-alice" and note["namespace"] == NS
        # Refused at the handshake, never attached to the socket: nothing can be queued.
        assert not mallory.poll(0) and not plain.poll(0)
        assert node.proc is not None and node.proc.poll() is None
    finally:
        ctx.destroy(linger=0)


class Client:
    """A real `unison client` process following the node's namespace."""

    def __init__(self, node: NodeProcess, keys: Path, workdir: Path, name: str,
                 curve: list[str]) -> None:
        self.port = free_port()
        self.out = workdir / f"client-{name}.log"
        with open(self.out, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "unison.cli", "client", "--quiet",
                 "--http", f"http://{HOST}:{node.http_port}", "--zmq", f"{NS}={zmq_address(node)}",
                 "--state-host", HOST, "--state-port", str(self.port),
                 "--resync-interval", "0", *curve],  # no offset polling: notifications only
                stdout=out, stderr=subprocess.STDOUT)

    def get(self, path: str) -> tuple[int, str]:
        try:
            with urllib.request.urlopen(f"http://{HOST}:{self.port}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except OSError as e:
            return getattr(e, "code", 0), ""

    def ready(self) -> bool:
        assert self.proc.poll() is None, self.out.read_text()
        return self.get("/readyz")[0] == 200

    def lww(self) -> dict:
        return json.loads(self.get("/state")[1]).get("lww", {})

    def notifications(self) -> float:
        line = re.search(rf'^unison_client_notifications_received_total{{namespace="{NS}"}} (\S+)',
                         self.get("/metrics")[1], re.M)
        return float(line.group(1)) if line else 0.0

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(30)


def test_crdt_client_converges_through_curve_and_refused_clients_see_nothing(
        node: NodeProcess, keys: Path, tmp_path: Path) -> None:
    server = ["--curve-server-key", str(keys / "server.key")]
    clients = {
        "alice": Client(node, keys, tmp_path, "alice",
                        [*server, "--curve-cert", str(keys / "alice.key_secret")]),
        "mallory": Client(node, keys, tmp_path, "mallory",
                          [*server, "--curve-cert", str(keys / "mallory.key_secret")]),
        "plain": Client(node, keys, tmp_path, "plain", []),
        "wrong-server-key": Client(node, keys, tmp_path, "wrong-server-key",
                                   ["--curve-server-key", str(keys / "alice.key")]),
    }
    try:
        for c in clients.values():
            wait_for(c.ready, "the client's first scan")  # done before the writes below
        alice = clients["alice"]
        seen: list[int] = []

        def converged() -> bool:
            ts = len(seen) + 1
            value = json.dumps({"value": ts, "timestamp": ts, "replica": NS})
            assert node.put(NS, "lww:curve", value)[0] == 200
            seen.append(ts)
            got = alice.lww().get("lww:curve")
            return got is not None and got["timestamp"] >= 1
        wait_for(converged, "alice's client to merge lww:curve from a notification")
        assert alice.notifications() >= 1
        wait_for(lambda: alice.lww()["lww:curve"]["timestamp"] == seen[-1],
                 "alice's client at the last write")
        for name in ("mallory", "plain", "wrong-server-key"):
            c = clients[name]
            assert c.notifications() == 0 and "lww:curve" not in c.lww(), name
            assert c.proc.poll() is None, c.out.read_text()
        assert refusals(node) >= 3
        # A CURVE client says why it gets nothing (libzmq reports it nowhere else).
        for name, why in [("mallory", "the notifier refused this client's key (ZAP 400)"),
                          ("wrong-server-key", "the CURVE handshake failed: is "
                                               "--curve-server-key the notifier's NAME.key?")]:
            wait_for(lambda n=name, w=why: w in clients[n].out.read_text(), f"{name}'s reason")
        assert "no ZeroMQ notifications from" in clients["mallory"].out.read_text()
    finally:
        for c in clients.values():
            c.stop()


# ------------------------------------------------------------------ floods


def rss_mb(pid: int) -> float:
    m = re.search(r"^VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text(), re.M)
    assert m
    return int(m.group(1)) / 1024


@contextmanager
def rss_watch(pid: int) -> Iterator[dict[str, float]]:
    """Before, peak (sampled every 10 ms) and after, in MB."""
    fig = {"before": rss_mb(pid)}
    fig["peak"] = fig["before"]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.01):
            try:
                fig["peak"] = max(fig["peak"], rss_mb(pid))
            except (OSError, AssertionError):
                return

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        yield fig
    finally:
        done.set()
        t.join()
        fig["after"] = rss_mb(pid)


def null_peer_with_subscription(port: int, size: int) -> str:
    """A raw ZMTP 3.0 SUB peer with the NULL mechanism that sends its greeting, READY and
    a `size`-byte subscription at once; how the notifier answered."""
    greeting = b"\xff" + bytes(7) + b"\x01\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\x00")
    ready = b"\x05READY" + b"\x0bSocket-Type" + struct.pack(">I", 3) + b"SUB"
    with socket.create_connection((HOST, port), timeout=10) as s:
        try:
            s.sendall(greeting + bytes(31) + b"\x04" + bytes([len(ready)]) + ready
                      + b"\x02" + struct.pack(">Q", size + 1) + b"\x01")
            chunk = b"x" * MB
            for _ in range(size // MB):
                s.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            return "disconnected while sending"
        s.settimeout(10)
        try:
            while s.recv(65536):
                pass
        except ConnectionResetError:
            pass
        except TimeoutError:
            return "still open"
        return "disconnected"


def test_unauthenticated_floods_are_refused_before_any_subscription(node: NodeProcess,
                                                                    keys: Path) -> None:
    assert node.proc is not None
    port = node.config.notifiers[0].bind_port
    before, lines_before = refusals(node), node.logs().count("refused a ZeroMQ subscriber")
    ctx = zmq.Context()
    try:
        with rss_watch(node.proc.pid) as fig:
            outcomes = {null_peer_with_subscription(port, 64 * MB)}
            outcomes |= {null_peer_with_subscription(port, MB) for _ in range(200)}
            # libzmq peers that never pass the handshake: their subscriptions stay home.
            socks = [subscriber(ctx, node, keys, me) for me in ("mallory", None) for _ in range(50)]
            for s in socks:
                for i in range(1000):
                    s.setsockopt(zmq.SUBSCRIBE, b"%08d" % i + b"y" * 192)
            # Each peer is refused once (libzmq does not retry a refused handshake): the
            # raw ones at the greeting (mechanism mismatch), the libzmq ones too or at ZAP.
            wait_for(lambda: refusals(node) >= before + 201 + len(socks), "the refusals")
            for s in socks:
                s.close()
        assert outcomes <= {"disconnected", "disconnected while sending"}, outcomes
        log.info("CURVE floods: RSS %.0f -> peak %.0f -> %.0f MB; peers %s", fig["before"],
                 fig["peak"], fig["after"], sorted(outcomes))
        assert fig["peak"] - fig["before"] < RSS_BOUND_MB, fig
        assert fig["after"] - fig["before"] < RSS_BOUND_MB, fig
        assert node.proc.poll() is None and node.api("GET", "/healthz")[0] == 200
        alice = subscriber(ctx, node, keys, "alice")
        assert receives(node, alice, "after-flood")["key"] == "after-flood"
        # Bounded log: one refusal line per 10 s per notifier, not one per refusal.
        lines = node.logs().count("refused a ZeroMQ subscriber") - lines_before
        assert lines < 10 and refusals(node) - before >= 301, node.logs()[-3000:]
    finally:
        ctx.destroy(linger=0)


def test_renewal_after_a_subscription_flood_keeps_curve(node: NodeProcess, keys: Path) -> None:
    """An authorized peer's subscriptions that cannot match make the notifier renew its
    socket (_bind again): afterwards CURVE still admits alice and refuses the others."""
    renewals = node.logs().count("renewing the ZeroMQ socket")
    ctx = zmq.Context()
    try:
        flooder = subscriber(ctx, node, keys, "alice")
        for i in range(2000):  # 400 KB of subscriptions that cannot match: over 64 KB
            flooder.setsockopt(zmq.SUBSCRIBE, b"zz%06d" % i + b"y" * 192)
        wait_for(lambda: node.logs().count("renewing the ZeroMQ socket") > renewals,
                 "the socket's renewal")
        flooder.close()
        before = refusals(node)
        mallory, plain = subscriber(ctx, node, keys, "mallory"), subscriber(ctx, node, keys, None)
        wait_for(lambda: refusals(node) >= before + 2, "both refused by the renewed socket")
        alice = subscriber(ctx, node, keys, "alice")
        assert receives(node, alice, "after-renewal")["key"] == "after-renewal"
        assert not mallory.poll(0) and not plain.poll(0)
    finally:
        ctx.destroy(linger=0)


# ------------------------------------------------------------------ start-up errors


@pytest.mark.parametrize(("fields", "code", "message"), [
    ({"curve_secret_key_file": "{keys}/server.key"}, 1,
     "curve_secret_key_file: {keys}/server.key has no secret-key"),
    ({"curve_secret_key_file": "{keys}/missing.key_secret"}, 1,
     "curve_secret_key_file: cannot read the certificate"),
    ({"curve_authorized_keys_dir": "{keys}/missing"}, 1,
     "curve_authorized_keys_dir: cannot list {keys}/missing"),
    ({"curve_authorized_keys_dir": "{keys}"}, 1, ""),  # *.key files there: starts
    ({"curve_secret_key_file": "", "curve_authorized_keys_dir": "{keys}/clients"}, 2,
     "curve_authorized_keys_dir: needs curve_secret_key_file"),
])
def test_bad_key_settings_fail_start_naming_the_field(keys: Path, tmp_path: Path,
                                                      fields: dict[str, str], code: int,
                                                      message: str) -> None:
    nc = curve_notifier(keys, **{k: v.format(keys=keys) for k, v in fields.items()})
    cfg = single_node_config(tmp_path, [NS], notifiers=[nc])
    n = NodeProcess("bad", "replicator", cfg, tmp_path / "node")
    if not message:  # the control: a directory of several public certificates is fine
        n.start()
        assert "CURVE on, 3 authorized client key(s)" in n.logs()
        assert n.stop() == 0
        return
    n.start(wait=False)
    assert n.proc is not None
    assert n.proc.wait(60) == code, n.logs()
    out = n.logs()
    assert f"notifier_config.{NS}.{message.format(keys=keys)}" in out, out
    assert "Traceback" not in out, out

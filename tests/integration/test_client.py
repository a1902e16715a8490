"""The real `unison client` process against a real ZeroMQ PUB socket and a small real
aiohttp server speaking the relayer's HTTP API (get, scan, offset), all on 127.0.0.1.

This tests the client on its own; tests/integration/test_client_seed_scenarios.py runs it
against real nodes.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import zmq
import zmq.asyncio
from aiohttp import web
from unison.crdt import encode_value

from tests.support.nodes import free_port

HOST = "127.0.0.1"
DC1, DC2 = "ad-campaign-dc1", "ad-campaign-dc2"
WAIT = 20.0  # generous upper bound for anything to happen on a busy 2-core machine


async def eventually(check: Callable[[], Any], what: str, limit: float = WAIT) -> Any:
    """Poll an (async or sync) check until it returns something truthy."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


# -- a relayer's HTTP API, in the test process --------------------------------------------


@dataclass
class FakeRelayer:
    """Holds keys per namespace with an LSN per namespace, as a relayer would."""

    namespaces: tuple[str, ...] = (DC1, DC2)
    data: dict[str, dict[str, str]] = field(default_factory=dict)
    lsn: dict[str, int] = field(default_factory=dict)
    min_lsns: list[str | None] = field(default_factory=list)  # each read's ?min_lsn
    # (history_id, epoch) per namespace for /stats; a namespace without one has no /stats
    # (404 without JSON, as a relayer without the endpoint answers)
    histories: dict[str, tuple[str, int]] = field(default_factory=dict)
    runner: web.AppRunner | None = None
    port: int = 0

    def __post_init__(self) -> None:
        for ns in self.namespaces:
            self.data.setdefault(ns, {})
            self.lsn.setdefault(ns, 0)

    def put(self, ns: str, key: str, value: dict[str, Any] | str) -> int:
        """Store a value (a dict is encoded like the seed's curl does); returns its LSN."""
        self.data[ns][key] = value if isinstance(value, str) else encode_value(value)
        self.lsn[ns] += 1
        return self.lsn[ns]

    def reset(self, ns: str, history: tuple[str, int] | None = None) -> None:
        """The namespace starts again empty at LSN 0 (a follower resynced onto a new
        history, or one restored from an older copy); `history` is its new identity."""
        self.data[ns].clear()
        self.lsn[ns] = 0
        if history is not None:
            self.histories[ns] = history

    def delete(self, ns: str, key: str) -> int:
        self.data[ns].pop(key, None)
        self.lsn[ns] += 1
        return self.lsn[ns]

    def _ns(self, request: web.Request) -> str:
        ns = request.match_info["ns"]
        if ns not in self.data:
            raise web.HTTPNotFound(
                text=json.dumps({"error": f"namespace not found: {ns}"}),
                content_type="application/json",
            )
        return ns

    def _behind(self, request: web.Request, ns: str) -> web.Response | None:
        """As a node answers a read at an LSN it does not hold yet (after its wait)."""
        wanted = request.query.get("min_lsn")
        self.min_lsns.append(wanted)
        if wanted is not None and int(wanted) > self.lsn[ns]:
            return web.json_response({"error": "behind", "lsn": self.lsn[ns],
                                      "min_lsn": int(wanted)}, status=503)
        return None

    async def get(self, request: web.Request) -> web.Response:
        ns = self._ns(request)
        if (behind := self._behind(request, ns)) is not None:
            return behind
        value = self.data[ns].get(request.match_info["key"])
        return web.json_response({"value": value or "", "found": value is not None})

    async def scan(self, request: web.Request) -> web.Response:
        ns = self._ns(request)
        if (behind := self._behind(request, ns)) is not None:
            return behind
        prefix = request.query.get("prefix", "")
        after = request.query.get("after")
        limit = int(request.query.get("limit", "1000"))
        keys = sorted(
            k for k in self.data[ns] if k.startswith(prefix) and (after is None or k > after)
        )
        page = keys[:limit]
        items = [{"key": k, "value": self.data[ns][k]} for k in page]
        return web.json_response({"items": items, "count": len(items), "more": len(keys) > limit})

    async def offset(self, request: web.Request) -> web.Response:
        ns = self._ns(request)
        return web.json_response({"namespace": ns, "lsn": self.lsn[ns]})

    async def stats(self, request: web.Request) -> web.Response:
        ns = self._ns(request)
        if ns not in self.histories:
            raise web.HTTPNotFound()
        hid, epoch = self.histories[ns]
        return web.json_response({"namespace": ns, "lsn": self.lsn[ns], "history_id": hid,
                                  "history_epoch": epoch})

    async def start(self, port: int = 0) -> None:
        app = web.Application()
        app.router.add_get("/api/v1/{ns}/stats", self.stats)
        app.router.add_get("/api/v1/{ns}/kv/{key:.+}", self.get)
        app.router.add_get("/api/v1/{ns}/kv", self.scan)
        app.router.add_get("/api/v1/{ns}/offset", self.offset)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        site = web.TCPSite(self.runner, HOST, port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"


# -- the notifier side --------------------------------------------------------------------


class Notifier:
    """One PUB socket per namespace, sending the contract's two frames."""

    def __init__(self, namespaces: tuple[str, ...]) -> None:
        self.ctx = zmq.asyncio.Context()
        self.socks: dict[str, zmq.asyncio.Socket] = {}
        self.ports: dict[str, int] = {}
        for ns in namespaces:
            sock = self.ctx.socket(zmq.PUB)
            sock.setsockopt(zmq.LINGER, 0)
            self.ports[ns] = sock.bind_to_random_port(f"tcp://{HOST}")
            self.socks[ns] = sock

    async def send(self, ns: str, key: str, seq: int, operation: str = "put") -> None:
        body = {
            "key": key,
            "namespace": ns,
            "operation": operation,
            "entry_type": "kv",
            "seq_num": seq,
        }
        await self.socks[ns].send_multipart([f"{ns}.kv".encode(), json.dumps(body).encode()])

    async def send_raw(self, ns: str, frames: list[bytes]) -> None:
        await self.socks[ns].send_multipart(frames)

    def zmq_args(self) -> list[str]:
        out: list[str] = []
        for ns, port in self.ports.items():
            out += ["--zmq", f"{ns}=tcp://{HOST}:{port}"]
        return out

    def close(self) -> None:
        for s in self.socks.values():
            s.close(linger=0)
        self.ctx.term()


# -- the client process -------------------------------------------------------------------


class ClientProcess:
    def __init__(self, args: list[str], env: dict[str, str] | None = None) -> None:
        self.args = args
        self.extra_env = env or {}
        self.proc: asyncio.subprocess.Process | None = None
        self.stdout = ""
        self.stderr = ""
        self.state_port = 0
        self._readers: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        env = dict(os.environ, PYTHONUNBUFFERED="1", **self.extra_env)
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "unison.cli", "client", *self.args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        self._readers = [
            asyncio.create_task(self._pump(self.proc.stdout, "stdout")),
            asyncio.create_task(self._pump(self.proc.stderr, "stderr")),
        ]
        m = await eventually(
            lambda: (
                re.search(r"State server listening on http://[\d.]+:(\d+)", self.stdout)
                or self._died()
            ),
            "the client's state server",
        )
        self.state_port = int(m.group(1))

    def _died(self) -> None:
        if self.proc is not None and self.proc.returncode is not None:
            raise AssertionError(f"client exited {self.proc.returncode}: {self.stderr}")

    async def _pump(self, stream: asyncio.StreamReader | None, name: str) -> None:
        assert stream is not None
        while chunk := await stream.read(65536):
            setattr(self, name, getattr(self, name) + chunk.decode("utf-8", "replace"))

    async def saw(self, text: str, stream: str = "stdout") -> None:
        """Wait until the client has written text (output is read asynchronously)."""
        await eventually(lambda: text in getattr(self, stream), f"{text!r} on {stream}")

    async def get(self, path: str) -> tuple[int, Any]:
        async with aiohttp.ClientSession() as s:
            async with s.get(f"http://{HOST}:{self.state_port}{path}") as r:
                text = await r.text()
                return r.status, (json.loads(text) if path != "/metrics" else text)

    async def state(self) -> dict[str, Any]:
        return (await self.get("/state"))[1]

    async def metric(self, name: str, **labels: str) -> float:
        _, text = await self.get("/metrics")
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name + "{") or line.startswith(name + " "):
                if all(f'{k}="{v}"' in line for k, v in labels.items()):
                    total += float(line.rsplit(" ", 1)[1])
        return total

    async def wait_ready(self) -> None:
        await eventually(lambda: self._ready(), "the client's first scans")

    async def _ready(self) -> bool:
        self._died()
        return (await self.get("/readyz"))[0] == 200

    async def terminate(self) -> int:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(self.proc.wait(), WAIT)
        await asyncio.gather(*self._readers)
        return rc


@pytest.fixture
async def relayer() -> AsyncIterator[FakeRelayer]:
    r = FakeRelayer()
    await r.start()
    yield r
    await r.stop()


@pytest.fixture
def notifier() -> Any:
    n = Notifier((DC1, DC2))
    yield n
    n.close()


@pytest.fixture
async def start_client(relayer: FakeRelayer, notifier: Notifier) -> AsyncIterator[Any]:
    started: list[ClientProcess] = []

    async def start(*extra: str, http: str | None = None) -> ClientProcess:
        c = ClientProcess(
            ["--http", http or relayer.url, *notifier.zmq_args(),
             "--state-host", HOST, "--state-port", "0", *extra]
        )  # fmt: skip
        started.append(c)
        await c.start()
        return c

    yield start
    for c in started:
        rc = await c.terminate()
        assert rc == 0, c.stderr
        assert "Traceback" not in c.stderr, c.stderr


async def publish_until(
    notifier: Notifier, ns: str, key: str, seq: int, done: Callable[[], Any], what: str
) -> None:
    """Publish one notification until the client shows it took effect. A SUB socket only
    receives once its subscription reached the publisher, so the first sends may be
    lost; sending the same seq_num again is harmless (merges are idempotent)."""

    async def attempt() -> Any:
        result = done()
        if asyncio.iscoroutine(result):
            result = await result
        if not result:
            await notifier.send(ns, key, seq)
            await asyncio.sleep(0.1)
        return result

    await eventually(attempt, what)


def seed_writes(r: FakeRelayer) -> None:
    """The seed's five scenarios, as writes into the two datacenters' namespaces."""
    r.put(DC1, "lww:user-status", {"value": "online", "timestamp": 1698765432000, "replica": DC1})
    r.put(DC2, "lww:user-status", {"value": "away", "timestamp": 1698765433000, "replica": DC2})
    r.put(DC1, "lww:config", {"value": "DC1 wins?", "timestamp": 1764000000000, "replica": DC1})
    r.put(DC2, "lww:config", {"value": "DC2 wins!", "timestamp": 1764000000000, "replica": DC2})
    r.put(DC1, "counter:page-views", {"replica": DC1, "count": 5})
    r.put(DC2, "counter:page-views", {"replica": DC2, "count": 3})
    r.put(DC1, "lww:feature-flag", {"value": True, "timestamp": 2000, "replica": DC1})
    r.put(DC2, "lww:feature-flag", {"value": False, "timestamp": 1000, "replica": DC2})
    r.put(DC1, "counter:api-calls", {"replica": DC1, "count": 100})
    r.put(DC2, "counter:api-calls", {"replica": DC2, "count": 75})
    r.put(DC1, "counter:db-queries", {"replica": DC1, "count": 250})


SEED_STATE = {
    "lww": {
        "lww:config": {"value": "DC2 wins!", "timestamp": 1764000000000, "replica": DC2},
        "lww:feature-flag": {"value": True, "timestamp": 2000, "replica": DC1},
        "lww:user-status": {"value": "away", "timestamp": 1698765433000, "replica": DC2},
    },
    "counters": {
        "counter:api-calls": {"counts": {DC1: 100, DC2: 75}, "total": 175},
        "counter:db-queries": {"counts": {DC1: 250}, "total": 250},
        "counter:page-views": {"counts": {DC1: 5, DC2: 3}, "total": 8},
    },
    "pncounters": {},
}


# -- tests --------------------------------------------------------------------------------


async def test_started_after_the_writes_it_converges_from_a_scan(relayer, start_client) -> None:
    seed_writes(relayer)
    client = await start_client()
    await client.wait_ready()
    assert await client.state() == SEED_STATE
    await client.saw("CURRENT CRDT STATE")
    await client.saw('Replica Counts: {"ad-campaign-dc1":5,"ad-campaign-dc2":3}')
    await client.saw("Total: 8")
    await client.saw("Connecting to ZeroMQ ad-campaign-dc1: tcp://127.0.0.1:")
    await client.saw("ZeroMQ listener started for namespace: ad-campaign-dc2")


async def test_notifications_print_the_seed_lines(relayer, notifier, start_client) -> None:
    client = await start_client("--resync-interval", "0")
    await client.wait_ready()

    seq = relayer.put(
        DC1, "lww:user-status", {"value": "online", "timestamp": 1698765432000, "replica": DC1}
    )
    await publish_until(notifier, DC1, "lww:user-status", seq,
                        lambda: "LWW-Register updated: lww:user-status" in client.stdout, "update 1")  # fmt: skip
    seq = relayer.put(
        DC2, "lww:user-status", {"value": "away", "timestamp": 1698765433000, "replica": DC2}
    )
    await publish_until(notifier, DC2, "lww:user-status", seq,
                        lambda: "Replica: ad-campaign-dc2" in client.stdout, "update 2")  # fmt: skip
    for line in [
        "Change notification received",
        "Topic: ad-campaign-dc1.kv",
        "Key: lww:user-status",
        "Operation: put",
        "Processing update: lww:user-status",
        "Value: online",
        "Timestamp: 1698765432000",
        "Value: away",
        "LWW-Registers:",
    ]:
        await client.saw(line)

    # scenario 4: the old write arrives after the new one and is ignored
    seq = relayer.put(DC1, "lww:feature-flag", {"value": True, "timestamp": 2000, "replica": DC1})
    await notifier.send(DC1, "lww:feature-flag", seq)
    # the namespaces are handled concurrently: let the new value land before the old one
    await client.saw("LWW-Register updated: lww:feature-flag")
    seq = relayer.put(DC2, "lww:feature-flag", {"value": False, "timestamp": 1000, "replica": DC2})
    await notifier.send(DC2, "lww:feature-flag", seq)
    await eventually(
        lambda: "LWW-Register ignored (stale): lww:feature-flag" in client.stdout, "stale line"
    )
    await client.saw("Current timestamp: 2000")
    stale = client.stdout.split("LWW-Register ignored (stale): lww:feature-flag", 1)[1]
    assert "Incoming timestamp: 1000" in stale and "Current timestamp: 2000" in stale

    state = await client.state()
    assert state["lww"]["lww:user-status"]["value"] == "away"
    assert state["lww"]["lww:feature-flag"] == {"value": True, "timestamp": 2000, "replica": DC1}
    assert await client.metric("unison_client_stale_ignored_total") >= 1
    assert await client.metric("unison_client_notifications_received_total", namespace=DC1) >= 2


async def test_seq_gap_triggers_a_rescan(relayer, notifier, start_client) -> None:
    # offset checks off: only the gap can reveal the silent write
    client = await start_client("--resync-interval", "0")
    await client.wait_ready()
    assert await client.metric("unison_client_rescans_total", namespace=DC1, reason="gap") == 0

    relayer.put(DC1, "counter:silent", {"replica": DC1, "count": 7})  # its notification is lost
    seq = relayer.put(DC1, "lww:loud", {"value": "x", "timestamp": 1, "replica": DC1})
    await publish_until(notifier, DC1, "lww:loud", seq,
                        lambda: client.metric("unison_client_rescans_total", namespace=DC1, reason="gap"),
                        "a gap rescan")  # fmt: skip
    state = await eventually(
        lambda: _state_with(client, "counters", "counter:silent"), "the silent write"
    )
    assert state["counters"]["counter:silent"] == {"counts": {DC1: 7}, "total": 7}
    assert state["lww"]["lww:loud"]["value"] == "x"
    await client.saw("seq_num gap: expected 1, got 2", "stderr")


async def test_reads_at_the_notifications_lsn_so_a_lagging_replica_loses_nothing(
        relayer, notifier, start_client) -> None:
    """Behind a Service, the relayer replica that answers may lag the one that notified:
    the client reads at least at the notification's seq_num, so the lagging one answers
    503 (not "not found") and the client rescans until a replica has it."""
    client = await start_client("--resync-interval", "0")  # no offset checks: only this
    await client.wait_ready()
    seq = relayer.put(DC1, "lww:first", {"value": 1, "timestamp": 1, "replica": DC1})
    await publish_until(notifier, DC1, "lww:first", seq,
                        lambda: _state_with(client, "lww", "lww:first"), "the first write")
    assert str(seq) in relayer.min_lsns  # the fetch asked for the notification's LSN

    # A write this replica has not applied yet, notified by one that has.
    await notifier.send(DC1, "lww:late", seq + 1)
    await eventually(lambda: str(seq + 1) in relayer.min_lsns, "a read at the new LSN")
    assert await _state_with(client, "lww", "lww:late") is None
    relayer.put(DC1, "lww:late", {"value": 2, "timestamp": 2, "replica": DC1})  # catches up
    state = await eventually(lambda: _state_with(client, "lww", "lww:late"), "the late write")
    assert state["lww"]["lww:late"]["value"] == 2


async def _history_reset_scenario(relayer: FakeRelayer, client: ClientProcess,
                                  history: tuple[str, int] | None) -> dict[str, Any]:
    """DC1 at LSN 5 seen by the client, then reset onto `history` holding two writes
    that are never notified; returns the client's state once it holds them."""
    for i in range(5):
        relayer.put(DC1, f"counter:old{i}", {"replica": DC1, "count": i + 1})
    await eventually(lambda: _last_seq(client, DC1, 5), "the client at seq_num 5")
    relayer.reset(DC1, history)
    relayer.put(DC1, "lww:new", {"value": "after reset", "timestamp": 9, "replica": DC1})
    relayer.put(DC1, "counter:new", {"replica": DC1, "count": 3})
    # before the fix: every scan asked for min_lsn 5 and the relayer at LSN 2 answered
    # 503, forever
    state = await eventually(lambda: _state_with(client, "counters", "counter:new"),
                             "the reset history's writes", 60)
    assert state["lww"]["lww:new"]["value"] == "after reset"
    assert state["counters"]["counter:old4"]["total"] == 5  # a CRDT keeps what it merged
    await eventually(lambda: _last_seq(client, DC1, 2), "seq_num back at the new LSN")
    return state


async def _last_seq(client: ClientProcess, ns: str, seq: int) -> bool:
    _, body = await client.get("/healthz")
    return bool(body["namespaces"][ns]["last_seq"] == seq)


async def test_a_new_history_below_the_seen_seq_num_is_rescanned(relayer, start_client) -> None:
    """A relayer whose history was reset (a datacenter that lost its disk, then the
    relayer resynced onto the new history) counts LSNs from 1 again: the client sees the
    new history identity in /stats and scans it without its old seq_num floor."""
    relayer.histories[DC1] = ("aaaa", 1)
    client = await start_client("--resync-interval", "0.2")
    await client.wait_ready()
    await _history_reset_scenario(relayer, client, ("bbbb", 1))
    assert await client.metric("unison_client_rescans_total", namespace=DC1,
                               reason="new-history") >= 1
    await client.saw("new history on the relayer: bbbb/epoch 1", "stderr")
    _, body = await client.get("/healthz")
    assert body["namespaces"][DC1]["history"] == "bbbb/epoch 1"


async def test_a_reset_without_a_history_identity_is_rescanned_once_it_stays_behind(
        relayer, start_client) -> None:
    """Without an identity to compare (a relayer with no /stats, or one resynced onto a
    copy of the same history that holds less), a relayer that stays at one LSN below the
    floor is taken as reset after a few refused scans."""
    client = await start_client("--resync-interval", "0.2")
    await client.wait_ready()
    await _history_reset_scenario(relayer, client, None)
    assert await client.metric("unison_client_rescans_total", namespace=DC1,
                               reason="stays-behind") >= 1


async def test_an_epoch_change_is_a_new_history(relayer, start_client) -> None:
    relayer.histories[DC1] = ("aaaa", 1)
    client = await start_client("--resync-interval", "0.2")
    await client.wait_ready()
    await _history_reset_scenario(relayer, client, ("aaaa", 2))
    await client.saw("new history on the relayer: aaaa/epoch 2", "stderr")


async def _state_with(client: ClientProcess, section: str, key: str) -> dict[str, Any] | None:
    state = await client.state()
    return state if key in state[section] else None


async def test_a_lost_last_notification_is_caught_by_the_offset_check(
    relayer, start_client
) -> None:
    client = await start_client("--resync-interval", "0.2")
    await client.wait_ready()
    relayer.put(DC2, "lww:quiet", {"value": 1, "timestamp": 5, "replica": DC2})  # never notified
    state = await eventually(
        lambda: _state_with(client, "lww", "lww:quiet"), "the unnotified write"
    )
    assert state["lww"]["lww:quiet"]["value"] == 1
    assert (
        await client.metric("unison_client_rescans_total", namespace=DC2, reason="offset-ahead")
        >= 1
    )


async def test_malformed_values_are_logged_with_the_key_and_skipped(
    relayer, notifier, start_client
) -> None:
    bad = {
        "lww:bad-base64": "***",
        "lww:bad-json": "e29vcHM=",  # base64 of "{oops"
        "lww:missing-replica": encode_value({"value": 1, "timestamp": 1}),
        "counter:negative": encode_value({"replica": DC1, "count": -3}),
        "counter:string-count": encode_value({"replica": DC1, "count": "5"}),
        "pncounter:missing-n": encode_value({"replica": DC1, "p": 1}),
    }
    for key, value in bad.items():
        relayer.put(DC1, key, value)
    relayer.put(DC1, "counter:good", {"replica": DC1, "count": 2})
    relayer.put(DC1, "pncounter:good", {"replica": DC1, "p": 5, "n": 2})
    relayer.put(DC1, "other:not-a-crdt", "aGVsbG8=")

    client = await start_client("--resync-interval", "0")
    await client.wait_ready()
    state = await client.state()
    assert state["counters"] == {"counter:good": {"counts": {DC1: 2}, "total": 2}}
    assert state["pncounters"] == {"pncounter:good": {"p": {DC1: 5}, "n": {DC1: 2}, "total": 3}}
    assert state["lww"] == {}
    for key in bad:
        await client.saw(f"malformed value for key {key!r}", "stderr")
    await client.saw("'count' must not be negative", "stderr")
    assert await client.metric("unison_client_malformed_skipped_total") == len(bad)

    # the same through notifications; then a good one still goes through
    seq = relayer.put(DC1, "lww:bad-json", "bm90IGpzb24=")
    await publish_until(notifier, DC1, "lww:bad-json", seq,
                        lambda: _more_than(client, len(bad)), "malformed notification value")  # fmt: skip
    await notifier.send_raw(DC1, [b"ad-campaign-dc1.kv", b"{not json"])
    await notifier.send_raw(
        DC1, [b"ad-campaign-dc1.kv", b'{"key": "k", "namespace": "ad-campaign-dc1"}']
    )
    seq = relayer.put(DC1, "other:plain", "aGk=")
    await notifier.send(DC1, "other:plain", seq)
    seq = relayer.put(DC1, "counter:good", {"replica": DC1, "count": 4})
    await notifier.send(DC1, "counter:good", seq)
    state = await eventually(
        lambda: _total_is(client, "counter:good", 4), "a good value after bad ones"
    )
    assert state["lww"] == {}
    await client.saw("skipping malformed notification", "stderr")
    await client.saw("'other:plain': not a CRDT key", "stderr")
    assert (await client.get("/healthz"))[0] == 200


async def _more_than(client: ClientProcess, n: int) -> bool:
    return await client.metric("unison_client_malformed_skipped_total") > n


async def _total_is(client: ClientProcess, key: str, total: int) -> dict[str, Any] | None:
    state = await client.state()
    c = state["counters"].get(key)
    return state if c and c["total"] == total else None


async def test_deletes_keep_crdt_state(relayer, notifier, start_client) -> None:
    relayer.put(DC1, "counter:kept", {"replica": DC1, "count": 9})
    client = await start_client("--resync-interval", "0")
    await client.wait_ready()
    seq = relayer.delete(DC1, "counter:kept")

    async def seen_delete() -> bool:
        return await client.metric("unison_client_deletes_total", namespace=DC1) >= 1

    async def attempt() -> bool:
        if await seen_delete():
            return True
        await notifier.send(DC1, "counter:kept", seq, operation="delete")
        await asyncio.sleep(0.1)
        return False

    await eventually(attempt, "the delete notification")
    assert (await client.state())["counters"]["counter:kept"]["total"] == 9
    await client.saw("Skipping delete operation")


async def test_waits_for_an_unreachable_relayer_then_converges(notifier, start_client) -> None:
    late = FakeRelayer()
    seed_writes(late)
    port = free_port()
    client = await start_client(http=f"http://{HOST}:{port}")
    await eventually(lambda: "relayer not reachable for scan" in client.stderr, "a retry log line")
    assert (await client.get("/readyz"))[0] == 503
    await late.start(port)
    try:
        await client.wait_ready()
        assert await client.state() == SEED_STATE
    finally:
        await late.stop()


async def test_sigterm_and_sigint_stop_it_cleanly(start_client) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        client = await start_client()
        assert client.proc is not None
        client.proc.send_signal(sig)
        assert await asyncio.wait_for(client.proc.wait(), WAIT) == 0
        await asyncio.gather(*client._readers)
        assert "Shutting down..." in client.stdout
        assert "Traceback" not in client.stderr


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--zmq", "no-equals-sign"], {}, "--zmq: 'no-equals-sign' is not NAMESPACE=ADDRESS"),
        (["--zmq", "ns=http://x"], {}, "must start with one of tcp://"),
        (["--http", "localhost:8003"], {}, "--http: 'localhost:8003' is not an http://"),
        (["--state-port", "70000"], {}, "--state-port: port 70000 is out of range"),
        ([], {"UNISON_STATE_PORT": "abc"}, "UNISON_STATE_PORT: 'abc' is not a port number"),
        ([], {"UNISON_ZMQ": "a=tcp://x:1,a=tcp://x:2"}, "UNISON_ZMQ: namespace 'a' given twice"),
        (["--no-such-option"], {}, "unrecognized arguments: --no-such-option"),
    ],
)
def test_bad_options_exit_2_with_a_clear_message(args, env, message) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "unison.cli", "client", *args],
        env=dict(os.environ, **env), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 2
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr


def test_help_explains_the_options() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "unison.cli", "client", "--help"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0
    for word in ["--http", "--zmq", "--state-port", "UNISON_ZMQ", "/state", "/metrics"]:
        assert word in proc.stdout


def test_a_state_port_in_use_is_reported() -> None:
    with socket.socket() as busy:
        busy.bind((HOST, 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "unison.cli", "client", "--state-host", HOST,
             "--state-port", str(port), "--zmq", f"a=tcp://{HOST}:1"],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert proc.returncode == 1
    assert f"cannot serve on {HOST}:{port}" in proc.stderr
    assert "Traceback" not in proc.stderr


async def test_environment_configures_it(relayer, notifier) -> None:
    relayer.put(DC2, "counter:env", {"replica": DC2, "count": 1})
    zmq_env = ",".join(f"{ns}=tcp://{HOST}:{port}" for ns, port in notifier.ports.items())
    env = {
        "UNISON_HTTP": relayer.url + "/api/v1",  # the seed's spelling, with the API prefix
        "UNISON_ZMQ": zmq_env + ",",
        "UNISON_STATE_PORT": "0",
        "UNISON_STATE_HOST": HOST,
    }
    client = ClientProcess([], env=env)
    await client.start()
    try:
        await client.wait_ready()
        assert (await client.state())["counters"]["counter:env"]["total"] == 1
        await client.saw(f"Connecting to ZeroMQ {DC2}: tcp://{HOST}:{notifier.ports[DC2]}")
    finally:
        assert await client.terminate() == 0


# JSON text with lone surrogate escapes: valid JSON, parsed to a str no UTF-8 codec can
# encode strictly (issue 6: printing the state block raised UnicodeEncodeError)
SURROGATE_VALUE = base64.b64encode(b'{"value":"\\ud800","timestamp":1,"replica":"a"}').decode()
SURROGATE_REPLICA = base64.b64encode(b'{"replica":"dc\\udcff","count":2}').decode()


async def test_lone_surrogates_in_values_do_not_stop_the_client(
    relayer, notifier, start_client
) -> None:
    # in the namespace before the start: the bootstrap scan prints them in the state block
    relayer.put(DC1, "lww:x", SURROGATE_VALUE)
    relayer.put(DC2, "counter:odd", SURROGATE_REPLICA)
    client = await start_client("--resync-interval", "0")
    await client.wait_ready()
    state = await client.state()  # json.loads: /state is valid JSON
    assert state["lww"]["lww:x"] == {"value": "\ud800", "timestamp": 1, "replica": "a"}
    assert state["counters"]["counter:odd"] == {"counts": {"dc\udcff": 2}, "total": 2}
    await client.saw("Value: \\ud800")
    await client.saw('Replica Counts: {"dc\\udcff":2}')

    # and through a notification (the per-change lines), then a plain value still merges
    seq = relayer.put(
        DC1,
        "lww:y",
        base64.b64encode(b'{"value":"a\\udfffb","timestamp":3,"replica":"b"}').decode(),
    )
    await publish_until(notifier, DC1, "lww:y", seq,
                        lambda: _state_with(client, "lww", "lww:y"), "the surrogate notification")  # fmt: skip
    await client.saw("LWW-Register updated: lww:y")
    await client.saw("Value: a\\udfffb")
    seq = relayer.put(DC1, "counter:after", {"replica": DC1, "count": 1})
    await notifier.send(DC1, "counter:after", seq)
    await eventually(lambda: _total_is(client, "counter:after", 1), "a value after them")
    assert client.proc is not None and client.proc.returncode is None
    assert "UnicodeEncodeError" not in client.stderr

"""The SSE watch endpoint over a real RocksDB store and a real HTTP socket on 127.0.0.1.

These tests build a minimal aiohttp app that registers only the watch routes, so they
exercise `add_watch_routes` independently of the rest of the HTTP API.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from unison.api.watch import add_watch_routes, watch_metrics
from unison.config import NodeConfig
from unison.context import NodeContext
from unison.storage import Mutation, NamespaceStore, Op
from unison.storage.records import lsn_key

NS = "ad-campaign-dc1"
FIELDS = {"key", "namespace", "operation", "entry_type", "seq_num"}


class SSE:
    """Reads one event stream: events as (id, event type, data), comments as heartbeats."""

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self.resp = resp
        self.comments: list[str] = []

    async def next(self) -> tuple[int | None, str, dict] | None:
        """The next event, or None at end of stream."""
        fields: dict[str, str] = {}
        async with asyncio.timeout(5):
            while True:
                raw = await self.resp.content.readline()
                if not raw:
                    return None
                line = raw.decode().rstrip("\n")
                if not line:
                    if "data" in fields:
                        eid = int(fields["id"]) if "id" in fields else None
                        return eid, fields.get("event", "message"), json.loads(fields["data"])
                    continue
                if line.startswith(":"):
                    self.comments.append(line[1:].strip())
                    continue
                name, _, value = line.partition(": ")
                fields[name] = value

    async def take(self, n: int) -> list[tuple[int | None, str, dict]]:
        out = []
        for _ in range(n):
            ev = await self.next()
            assert ev is not None, f"stream ended after {len(out)} of {n} events"
            out.append(ev)
        return out


class Server:
    def __init__(self, store: NamespaceStore, runner: web.AppRunner, port: int) -> None:
        self.store, self.runner, self.port = store, runner, port
        self.url = f"http://127.0.0.1:{port}"

    async def put(self, key: str) -> int:
        return await self.store.put(key.encode(), b"v")


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[Server]:
    store = NamespaceStore(NS, tmp_path / NS, sync=False).open()
    store.start()
    ctx = NodeContext(NodeConfig(), "replicator", {NS: store}, frozenset({NS}))
    app = web.Application()
    add_watch_routes(app, ctx, heartbeat=0.2)
    runner = web.AppRunner(app, shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    srv = Server(store, runner, port)
    yield srv
    await runner.cleanup()
    await store.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as s:
        yield s


async def test_replays_from_lsn_then_tails_new_commits(server, http):
    for i in range(1, 6):
        await server.put(f"k{i}")
    async with http.get(f"{server.url}/api/v1/{NS}/watch?from_lsn=3") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        sse = SSE(resp)
        replayed = await sse.take(3)
        await server.store.write([Mutation(Op.PUT, b"b1", b"v"), Mutation(Op.DELETE, b"k1")])
        tailed = await sse.take(2)
    events = replayed + tailed
    assert [e[0] for e in events] == [3, 4, 5, 6, 7]
    assert all(set(data) == FIELDS for _, _, data in events)
    assert [(d["key"], d["operation"], d["seq_num"]) for _, _, d in events] == [
        ("k3", "put", 3), ("k4", "put", 4), ("k5", "put", 5), ("b1", "put", 6), ("k1", "delete", 7)]
    assert {(d["namespace"], d["entry_type"]) for _, _, d in events} == {(NS, "kv")}


async def test_replay_larger_than_one_chunk_is_complete_and_ordered(server, http):
    lsns = await server.store.write([Mutation(Op.PUT, f"k{i}".encode(), b"v") for i in range(1200)])
    async with http.get(f"{server.url}/api/v1/{NS}/watch?from_lsn=0") as resp:
        events = await SSE(resp).take(1200)
    assert [e[0] for e in events] == lsns


async def test_reconnect_with_last_event_id_has_no_gap_and_no_duplicate(server, http):
    for i in range(4):
        await server.put(f"a{i}")
    seen: list[int] = []
    async with http.get(f"{server.url}/api/v1/{NS}/watch?from_lsn=1") as resp:
        seen += [e[0] for e in await SSE(resp).take(2)]
    # Written while disconnected.
    for i in range(3):
        await server.put(f"b{i}")
    headers = {"Last-Event-ID": str(seen[-1])}
    async with http.get(f"{server.url}/api/v1/{NS}/watch?from_lsn=1", headers=headers) as resp:
        sse = SSE(resp)
        seen += [e[0] for e in await sse.take(5)]
        await server.put("c0")
        seen += [e[0] for e in await sse.take(1)]
    assert seen == list(range(1, 9))


async def test_resume_with_from_lsn_after_the_last_seen_id(server, http):
    for i in range(3):
        await server.put(f"a{i}")
    async with http.get(f"{server.url}/api/v1/{NS}/watch?from_lsn=1") as resp:
        first = [e[0] for e in await SSE(resp).take(3)]
    await server.put("after")
    async with http.get(f"{server.url}/api/v1/{NS}/watch?from_lsn={first[-1] + 1}") as resp:
        second = [e[0] for e in await SSE(resp).take(1)]
    assert first + second == [1, 2, 3, 4]


async def test_without_from_lsn_only_new_commits_are_sent(server, http):
    await server.put("old")
    async with http.get(f"{server.url}/api/v1/{NS}/watch") as resp:
        sse = SSE(resp)
        # The response is streaming once headers arrive; the old record must not be replayed.
        await server.put("new")
        (eid, _, data), = await sse.take(1)
    assert (eid, data["key"]) == (2, "new")


async def test_trimmed_log_answers_410_with_the_oldest_retained_lsn(server, http):
    for i in range(10):
        await server.put(f"k{i}")
    await server.store.trim_log(6)
    async with http.get(f"{server.url}/api/v1/{NS}/watch?from_lsn=2") as resp:
        body = await resp.json()
        assert resp.status == 410
    assert body["first_retained_lsn"] == 6
    assert "older than the retained log" in body["error"]
    # A reconnect whose Last-Event-ID is trimmed too gets the same answer.
    async with http.get(f"{server.url}/api/v1/{NS}/watch",
                        headers={"Last-Event-ID": "3"}) as resp:
        assert resp.status == 410
    # From the first retained LSN on, replay works.
    async with http.get(f"{server.url}/api/v1/{NS}/watch?from_lsn=6") as resp:
        assert [e[0] for e in await SSE(resp).take(5)] == [6, 7, 8, 9, 10]


async def test_bad_requests_are_rejected_with_a_clear_error(server, http):
    async with http.get(f"{server.url}/api/v1/nope/watch?from_lsn=0") as resp:
        assert resp.status == 404
        assert (await resp.json())["error"] == "namespace not found: nope"
    for bad in ("abc", "-1", "1.5", ""):
        async with http.get(f"{server.url}/api/v1/{NS}/watch", params={"from_lsn": bad}) as resp:
            assert resp.status == 400, bad
            assert "from_lsn" in (await resp.json())["error"]
    async with http.get(f"{server.url}/api/v1/{NS}/watch",
                        headers={"Last-Event-ID": "x"}) as resp:
        assert resp.status == 400
        assert "Last-Event-ID" in (await resp.json())["error"]


async def test_idle_stream_gets_heartbeat_comments(server, http):
    async with http.get(f"{server.url}/api/v1/{NS}/watch?from_lsn=1") as resp:
        sse = SSE(resp)
        while "heartbeat" not in sse.comments:
            async with asyncio.timeout(5):
                line = await resp.content.readline()
            if line.startswith(b":"):
                sse.comments.append(line[1:].decode().strip())
        await server.put("after-idle")
        (eid, _, _), = await sse.take(1)
    assert eid == 1


async def test_client_disconnect_ends_the_server_stream(server, http):
    app = server.runner.app
    async with http.get(f"{server.url}/api/v1/{NS}/watch?from_lsn=1") as resp:
        assert resp.status == 200
        await resp.content.readline()
        assert watch_metrics(app)["watch_streams"] == 1
    # The next heartbeat write fails on the closed connection and the handler returns.
    for _ in range(200):
        if watch_metrics(app)["watch_streams"] == 0:
            break
        await asyncio.sleep(0.05)
    assert watch_metrics(app)["watch_streams"] == 0


async def test_server_shutdown_ends_open_streams(server, http):
    async with http.get(f"{server.url}/api/v1/{NS}/watch?from_lsn=1") as resp:
        sse = SSE(resp)
        await server.put("k")
        await sse.take(1)
        # The shutdown would wait for the handler (5 s here, 60 s by default) if the
        # stream did not end itself; the timeout guards against a hang, not a speed.
        async with asyncio.timeout(4):
            await server.runner.cleanup()
        ended = await sse.next()
    assert ended is None


async def test_corrupt_log_record_ends_the_stream_with_an_error_event(server, http, caplog):
    for i in range(1, 6):
        await server.put(f"k{i}")
    # Flip the last value byte of record 3 in the log column family: its CRC32 no longer matches.
    log_cf = server.store._log
    raw = bytearray(log_cf[lsn_key(3)])
    raw[-1] ^= 0xFF
    log_cf[lsn_key(3)] = bytes(raw)
    async with http.get(f"{server.url}/api/v1/{NS}/watch?from_lsn=3") as resp:
        assert resp.status == 200
        sse = SSE(resp)
        (eid, event, data), = await sse.take(1)
        ended = await sse.next()
    assert (eid, event) == (None, "error")
    assert data["lsn"] == 3
    assert "corrupt record in the local log" in data["error"] and NS in data["error"]
    assert ended is None  # the stream ends cleanly after the error event
    assert any("corrupt record" in r.getMessage() and r.levelname == "ERROR"
               for r in caplog.records)
    assert watch_metrics(server.runner.app)["watch_streams"] == 0

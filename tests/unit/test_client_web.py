"""The client's live page in-process, on a real aiohttp server: `/` is self-contained and
locked down by its CSP, `/events` streams the view on connect and on change, sends
heartbeats, refuses streams beyond its bound with a 503, and ends them on shutdown.
(tests/integration/test_client_page.py drives the page in a real browser.)"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import re
from collections.abc import AsyncIterator

import aiohttp
import pytest
import zmq.asyncio
from aiohttp import web
from unison.client import server
from unison.client.metrics import Metrics
from unison.client.relayer import RelayerAPI
from unison.client.sync import NamespaceSync, StdoutPrinter
from unison.client.web import MAX_VALUE_CHARS, LiveView, add_routes
from unison.crdt import CRDTState

HOST = "127.0.0.1"
WAIT = 20.0  # upper bound for anything to arrive on a busy machine


class Served:
    def __init__(self, view: LiveView, runner: web.AppRunner, port: int) -> None:
        self.view, self.runner, self.url = view, runner, f"http://{HOST}:{port}"
        self.session = aiohttp.ClientSession()


@pytest.fixture
async def served() -> AsyncIterator[Served]:
    state = CRDTState()
    view = LiveView(state, Metrics(), [], max_streams=2, poll_interval=0.05, heartbeat=0.2)
    app = web.Application()
    add_routes(app, view)
    runner, port = await server.start(app, HOST, 0)
    s = Served(view, runner, port)
    try:
        yield s
    finally:
        await s.session.close()
        await runner.cleanup()


async def next_event(resp: aiohttp.ClientResponse) -> tuple[str, str]:
    """The next SSE block's event name (or ':' for a comment) and data."""
    lines: list[str] = []
    while True:
        raw = await asyncio.wait_for(resp.content.readline(), WAIT)
        if not raw:
            return "eof", ""
        line = raw.decode().rstrip("\n")
        if line:
            lines.append(line)
            continue
        if not lines:
            continue
        if lines[0].startswith(":"):
            return ":", lines[0]
        fields = dict(line.split(": ", 1) for line in lines)
        if "retry" in fields and len(fields) == 1:
            lines = []
            continue
        return fields.get("event", "message"), fields.get("data", "")


async def next_state(resp: aiohttp.ClientResponse) -> dict:
    while True:
        name, data = await next_event(resp)
        assert name != "eof", "the stream ended"
        if name == "state":
            return json.loads(data)


async def test_the_page_is_self_contained_and_its_csp_admits_only_its_own_code(
        served: Served) -> None:
    async with served.session.get(served.url + "/") as resp:
        assert resp.status == 200 and resp.content_type == "text/html"
        html = await resp.text()
        csp = resp.headers["Content-Security-Policy"]
    assert not re.search(r"(src|href)=\"(https?:)?//", html), "the page loads nothing external"
    assert "innerHTML" not in html and "insertAdjacentHTML" not in html
    script = html.split("<script>", 1)[1].split("</script>", 1)[0]
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in csp and "default-src 'none'" in csp


async def test_events_send_the_state_on_connect_and_on_every_change(served: Served) -> None:
    state = served.view.state
    state.apply_json("lww:user-status", '{"value":"online","timestamp":1,"replica":"dc1"}')
    async with served.session.get(served.url + "/events") as resp:
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        first = await next_state(resp)
        assert first["state"]["lww"]["lww:user-status"]["text"] == '"online"'
        assert first["keys"] == {"lww": 1, "counters": 0, "pncounters": 0}
        state.apply_json("counter:page-views", '{"replica":"dc1","count":5}')
        state.apply_json("counter:page-views", '{"replica":"dc2","count":3}')
        while (view := await next_state(resp))["state"]["counters"].get(
                "counter:page-views", {}).get("total") != 8:
            pass
        assert view["state"]["counters"]["counter:page-views"]["counts"] == {"dc1": 5, "dc2": 3}


async def test_user_data_stays_on_one_data_line(served: Served) -> None:
    hostile = "lww:<img src=x onerror=alert(1)>\n\ndata: x\u2028</script>"
    served.view.state.apply_json(hostile, json.dumps(
        {"value": "line\nbreak\r\n\ud800", "timestamp": 1, "replica": "r\n"}))
    async with served.session.get(served.url + "/events") as resp:
        view = await next_state(resp)
    assert view["state"]["lww"][hostile]["text"] == '"line\\nbreak\\r\\n\ud800"'
    assert served.view.payload.count(b"\n") == 3  # event:, data:, blank line
    served.view.payload.decode("ascii")  # non-ASCII is escaped in the JSON


async def test_a_long_value_is_cut_on_the_page_not_in_the_state(served: Served) -> None:
    value = {"blob": "x" * (MAX_VALUE_CHARS * 3)}
    served.view.state.apply_json("lww:big", json.dumps(
        {"value": value, "timestamp": 1, "replica": "dc1"}))
    async with served.session.get(served.url + "/events") as resp:
        shown = (await next_state(resp))["state"]["lww"]["lww:big"]
    assert shown["text"] == json.dumps(value, separators=(",", ":"))[:MAX_VALUE_CHARS] + "…"
    assert served.view.state.lww["lww:big"].value == value


async def test_an_idle_stream_gets_heartbeats(served: Served) -> None:
    async with served.session.get(served.url + "/events") as resp:
        await next_state(resp)
        assert await next_event(resp) == (":", ": keepalive")


async def test_streams_beyond_the_bound_get_a_clear_503(served: Served) -> None:
    first = await served.session.get(served.url + "/events")
    second = await served.session.get(served.url + "/events")
    try:
        await next_state(first)
        await next_state(second)
        async with served.session.get(served.url + "/events") as third:
            assert third.status == 503 and third.headers["Retry-After"] == "10"
            assert "too many live page streams (2 open)" in (await third.json())["error"]
    finally:
        first.close()
    # the closed stream's slot is freed once the server notices (at its next heartbeat)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT
    while True:
        async with served.session.get(served.url + "/events") as again:
            if again.status == 200:
                await next_state(again)
                break
        assert loop.time() < deadline, "the closed stream's slot was never freed"
        await asyncio.sleep(0.1)
    second.close()


async def test_shutdown_ends_open_streams_with_a_goodbye(served: Served) -> None:
    resp = await served.session.get(served.url + "/events")
    await next_state(resp)
    cleanup = asyncio.create_task(served.runner.cleanup())
    events = []
    while (event := await next_event(resp))[0] != "eof":
        events.append(event[0])
    assert "bye" in events
    # the runner would wait up to its 60 s shutdown timeout for a stream still open
    await asyncio.wait_for(cleanup, WAIT)
    assert served.view._poller is None


async def test_namespaces_show_progress_resyncs_and_an_unreachable_relayer() -> None:
    state, metrics = CRDTState(), Metrics()
    ctx = zmq.asyncio.Context()
    async with aiohttp.ClientSession() as session:
        # nothing listens on port 1: the relayer's stats cannot be read
        api = RelayerAPI(f"http://{HOST}:1", session)
        sync = NamespaceSync("dc1", "tcp://127.0.0.1:5555", ctx=ctx, api=api, state=state,
                             metrics=metrics, printer=StdoutPrinter(quiet=True),
                             resync_interval=0, stop=asyncio.Event())
        try:
            sync.last_seq, sync.synced = 41, True
            metrics.inc("unison_client_rescans_total", namespace="dc1", reason="bootstrap")
            metrics.inc("unison_client_rescans_total", 2, namespace="dc1", reason="gap")
            metrics.inc("unison_client_rescans_total", namespace="other", reason="gap")
            view = LiveView(state, metrics, [sync])
            await view._read_relayer()
            (row,) = view.view()["namespaces"]
        finally:
            sync.close()
            ctx.term()
    assert view.view()["relayer"] == f"http://{HOST}:1"
    assert row["namespace"] == "dc1" and row["last_seq"] == 41 and row["synced"] is True
    assert (row["resyncs"], row["resyncs_by_reason"]) == (2, {"gap": 2})  # not the bootstrap
    assert row["lag"] is None and row["upstream"] is None
    assert "ClientConnectorError" in row["relayer_error"]

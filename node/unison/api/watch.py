"""Server-sent events of committed changes: `GET /api/v1/{ns}/watch?from_lsn=N`.

A thin adapter over the store's log cursor (storage/cursor.py, which also holds the
stream's limits): it replays the retained log from N in bounded chunks, then tails it,
waking on commits (no polling). Every event is `id: <lsn>` plus the same JSON as the ZeroMQ
notification, so a client resumes after a disconnect by sending the last id it saw
(`Last-Event-ID`, as EventSource does, or `from_lsn=<last id + 1>`): no gap, no duplicate.
When N is older than the retained log the answer is 410 and the client must rescan.
Once streaming, a trimmed or corrupt log record ends the stream with an `event: error`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any

from aiohttp import web

from unison.context import NodeContext
from unison.notify.message import encode_notification
from unison.storage import (
    CorruptRecord,
    Heartbeat,
    LogCursor,
    LogTrimmed,
    NamespaceStore,
    Record,
    StoreClosed,
)
from unison.storage.cursor import WATCH_STREAM

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = WATCH_STREAM.heartbeat
# LSNs are stored as unsigned 64-bit integers; one past the largest still has to fit.
MAX_LSN = 2**63
_SSE = "sse"  # Commit.encoded() form: the commit's records as events

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_CLOSING = web.AppKey("unison_watch_closing", asyncio.Event)
_CURSORS: web.AppKey[set[LogCursor]] = web.AppKey("unison_watch_cursors")
_HEARTBEAT: web.AppKey[float | None] = web.AppKey("unison_watch_heartbeat")  # None: no heartbeats
_STATS: web.AppKey[dict[str, int]] = web.AppKey("unison_watch_stats")


def add_watch_routes(app: web.Application, ctx: NodeContext, *,
                     heartbeat: float | None = HEARTBEAT_SECONDS,
                     wrap: Callable[[Handler], Handler] = lambda handler: handler) -> None:
    """Register the watch route on the node's HTTP app (ctx: a `unison.node.NodeContext`);
    `wrap` is applied to the handler (the app's error mapping and request counts)."""
    app[_CLOSING] = asyncio.Event()
    app[_CURSORS] = set()
    app[_HEARTBEAT] = heartbeat
    app[_STATS] = {"watch_streams": 0, "watch_events_sent": 0}

    async def on_shutdown(app: web.Application) -> None:
        # Streams never finish on their own: tell them to end so shutdown does not wait.
        app[_CLOSING].set()
        cursors = app[_CURSORS]
        for cursor in list(cursors):
            cursor.close()

    app.on_shutdown.append(on_shutdown)

    async def watch(request: web.Request) -> web.StreamResponse:
        return await _watch(request, ctx)

    app.router.add_get("/api/v1/{namespace}/watch", wrap(watch))


def watch_metrics(app: web.Application) -> dict[str, int]:
    """Gauge `watch_streams` (open streams) and counter `watch_events_sent`, for /metrics."""
    stats = app.get(_STATS)
    return dict(stats) if stats is not None else {}


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


def _parse_lsn(text: str, what: str) -> int | web.Response:
    try:
        value = int(text.strip()) if len(text) <= 32 else -1
    except ValueError:
        value = -1
    if not 0 <= value < MAX_LSN:
        return _error(400, f"{what}: expected an integer from 0 to {MAX_LSN - 1} (an LSN), "
                           f"got {text[:40]!r}")
    return value


def _start_lsn(request: web.Request, store: NamespaceStore) -> int | web.Response:
    """First LSN to send. Last-Event-ID (a reconnect) wins over from_lsn; neither: tail only."""
    last_id = request.headers.get("Last-Event-ID")
    if last_id is not None and last_id.strip():
        parsed = _parse_lsn(last_id, "Last-Event-ID header")
        return parsed + 1 if isinstance(parsed, int) else parsed
    raw = request.query.get("from_lsn")
    if raw is None:
        return store.last_lsn + 1
    return _parse_lsn(raw, "from_lsn")


async def _watch(request: web.Request, ctx: NodeContext) -> web.StreamResponse:
    ns = request.match_info["namespace"]
    store: NamespaceStore | None = ctx.stores.get(ns)
    if store is None:
        return _error(404, f"namespace not found: {ns}")
    start = _start_lsn(request, store)
    if isinstance(start, web.Response):
        return start
    cap = ctx.config.http.max_watch_streams
    if request.app[_STATS]["watch_streams"] >= cap:
        return _error(503, f"too many watch streams open ({cap}, "
                           "http_config.max_watch_streams); retry later")
    start = max(start, 1)
    limits = replace(WATCH_STREAM, heartbeat=request.app[_HEARTBEAT])
    try:
        cursor = store.cursor(start, limits)
    except StoreClosed:
        return _error(503, f"namespace {ns}: storage is closed")
    except LogTrimmed as e:
        return _trimmed_response(ns, e.wanted, e.first)
    with cursor:
        return await _stream(request, ns, cursor)


async def _stream(request: web.Request, ns: str, cursor: LogCursor) -> web.StreamResponse:
    resp = web.StreamResponse(headers={
        "Content-Type": "text/event-stream",
        "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no",
    })
    await resp.prepare(request)
    app = request.app
    stats = app[_STATS]
    app[_CURSORS].add(cursor)
    if app[_CLOSING].is_set():  # shutting down already: end at once
        cursor.close()
    stats["watch_streams"] += 1
    try:
        await resp.write(f": watching {ns} from lsn {cursor.next_lsn}\n\n".encode())
        await _pump(resp, ns, cursor, stats)
    except (ConnectionResetError, asyncio.CancelledError):
        log.debug("namespace %s: watch client went away at lsn %d", ns, cursor.next_lsn)
        raise
    finally:
        app[_CURSORS].discard(cursor)
        stats["watch_streams"] -= 1
    with contextlib.suppress(ConnectionResetError):
        await resp.write_eof()
    return resp


async def _pump(resp: web.StreamResponse, ns: str, cursor: LogCursor,
                stats: dict[str, int]) -> None:
    """Write the cursor's batches as events and its heartbeats as comments, until the
    store closes, the server shuts down (the cursor is closed) or the log fails us."""
    def encode(records: Sequence[Record]) -> bytes:
        out = bytearray()
        for r in records:
            out += b"id: %d\ndata: " % r.lsn
            out += encode_notification(ns, r)
            out += b"\n\n"
        return bytes(out)

    try:
        async for item in cursor:
            if isinstance(item, Heartbeat):
                await resp.write(b": heartbeat\n\n")
                continue
            await resp.write(b"".join(c.encoded(_SSE, encode) for c in item.commits))
            stats["watch_events_sent"] += item.last - item.first + 1
    except LogTrimmed as e:
        # Trimmed (or replaced by a snapshot) while we were behind: say so and end;
        # the reconnect then gets the 410.
        await resp.write(_sse_error("log trimmed", lsn=e.wanted, first_retained_lsn=e.first))
    except CorruptRecord as e:
        # The response has started, so no HTTP error can be sent any more: report
        # it in the stream and end it. Resuming cannot get past this record either.
        log.error("namespace %s: watch stream stopped at lsn %d: corrupt record in "
                  "the local log: %s", ns, cursor.next_lsn, e)
        await resp.write(_sse_error(
            f"namespace {ns}: corrupt record in the local log at or after lsn "
            f"{cursor.next_lsn}; the stream cannot continue: {e}", lsn=cursor.next_lsn))
    except StoreClosed:
        pass


def _sse_error(message: str, **extra: Any) -> bytes:
    return b"event: error\ndata: " + json.dumps({"error": message, **extra}).encode() + b"\n\n"


def _trimmed_response(ns: str, wanted: int, first: int) -> web.Response:
    return _error(
        410,
        f"namespace {ns}: lsn {wanted} is older than the retained log (oldest retained lsn "
        f"is {first}); rescan the namespace, then watch from its current offset",
        namespace=ns, requested_lsn=wanted, first_retained_lsn=first,
    )

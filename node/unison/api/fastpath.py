"""A fast path for single-key GET, PUT and DELETE, in front of aiohttp.

Why: on a PUT or GET of one key, aiohttp's request and response machinery is most of the
node's CPU (py-spy under wrk: about 70%; the node's own work is the rest). This protocol
answers the plain, complete HTTP/1.1 requests of those routes itself, with the same
status, headers and bodies, and hands everything else to aiohttp.

How it stays safe: a request is taken here only if all of it has arrived and it is the
strict, common form (request line `GET|PUT|DELETE /api/v1/<ns>/kv/<key> HTTP/1.1` with
no percent-escapes, query or dot segments; header lines of token names and printable
values; at most one Content-Length; no Transfer-Encoding, Expect, Upgrade,
Content-Encoding or min-LSN header; `Connection` absent or keep-alive; one Host; a PUT body in
`application/json` that parses and validates; a key of a namespace this node serves
within its size limit). Anything else, including every request the API would refuse,
is handed over before anything was done for it: aiohttp's own handler gets the
connection and every byte not yet answered, and from then on the connection is
aiohttp's, with its limits, deadlines and error answers. Nodes with API tokens do not
use the fast path at all. `UNISON_HTTP_FAST_PATH=0` turns it off (A/B measurements).
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from collections.abc import Callable
from email.utils import formatdate
from time import perf_counter
from typing import Any

from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE

from unison.api.kv import merged_mutation, put_value
from unison.api.metrics import RequestCounter
from unison.api.responses import (
    INTERNAL_ERROR,
    SUCCESS_BODY,
    UNCHANGED_BODY,
    ApiError,
    error_body,
    value_body,
)
from unison.storage import Mutation, NamespaceStore, Op, StoreClosed

log = logging.getLogger(__name__)

ENV = "UNISON_HTTP_FAST_PATH"
ROUTE = "/api/v1/{ns}/kv/{key}"  # the route's name in the request metrics, as aiohttp's
_MAX_HEAD = 8190  # longer heads are aiohttp's (it answers 400/431 as it sees fit)
# Bytes read ahead while a write commits (pipelined requests); beyond, reading pauses.
_READ_AHEAD = 256 * 1024

# No '%' (escapes), '?' (query), '#'; dot segments and '//' are refused below.
_REQUEST_LINE = re.compile(
    rb"(GET|PUT|DELETE) /api/v1/([a-z0-9._-]+)/kv/([A-Za-z0-9!$&'()*+,;=:@._~/-]+) HTTP/1\.1")
_HEADER = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*([\x21-\x7e](?:[\x20-\x7e]*[\x21-\x7e])?)?[ \t]*")
# Headers after which aiohttp must judge the request (bodies, upgrades, reads at an LSN).
_HAND_OVER = frozenset({b"transfer-encoding", b"expect", b"upgrade", b"content-encoding",
                        b"x-unison-min-lsn", b"te", b"trailer"})
_STATUS_LINES = {200: b"HTTP/1.1 200 OK\r\n", 500: b"HTTP/1.1 500 Internal Server Error\r\n",
                 503: b"HTTP/1.1 503 Service Unavailable\r\n"}
_SERVER = SERVER_SOFTWARE.encode()


def enabled(config: Any) -> bool:
    """The fast path serves a node without API tokens, unless turned off."""
    if os.environ.get(ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    return not (config.read_token_file or config.write_token_file)


class _Date:
    """The Date header's value, formatted once per second."""

    second = -1
    value = b""

    @classmethod
    def now(cls) -> bytes:
        t = int(time.time())
        if t != cls.second:
            cls.second, cls.value = t, formatdate(t, usegmt=True).encode()
        return cls.value


def response(status: int, body: bytes) -> bytes:
    """The whole answer, as aiohttp writes a JSON response."""
    return b"".join((_STATUS_LINES[status], b"Content-Type: application/json\r\n"
                     b"Content-Length: ", str(len(body)).encode(), b"\r\nDate: ", _Date.now(),
                     b"\r\nServer: ", _SERVER, b"\r\n\r\n", body))


class Request:
    """One complete request taken by the fast path."""

    __slots__ = ("method", "store", "key", "body", "size")

    def __init__(self, method: bytes, store: NamespaceStore, key: bytes, body: bytes,
                 size: int) -> None:
        self.method, self.store, self.key, self.body, self.size = method, store, key, body, size


class Routes:
    """What the fast path needs of the node: its stores and limits, and the request
    metrics aiohttp's routes count into."""

    def __init__(self, stores: dict[str, NamespaceStore], writable: frozenset[str],
                 max_key: int, max_body: int, requests: RequestCounter) -> None:
        self.stores = stores
        self.writable = writable
        self.max_key = max_key
        self.max_body = max_body
        self.requests = requests

    def parse(self, buf: bytearray) -> Request | None:
        """The request at the start of `buf` if the fast path may answer it; None hands
        the connection over (incomplete, unusual, or for aiohttp to refuse)."""
        end = buf.find(b"\r\n\r\n", 0, _MAX_HEAD)
        if end < 0:
            return None
        lines = bytes(buf[:end]).split(b"\r\n")
        m = _REQUEST_LINE.fullmatch(lines[0])
        if m is None:
            return None
        method, ns, key = m.group(1), m.group(2).decode(), m.group(3)
        if b"//" in key or b"/." in key or key[0] == 0x2E or len(key) > self.max_key:
            return None  # dot segments, '//': what aiohttp's URL would normalise
        length, content_type = self._headers(lines)
        if length < 0:
            return None
        store = self.stores.get(ns)
        if store is None or (method != b"GET" and ns not in self.writable):
            return None
        if method == b"PUT":
            if content_type != b"application/json" or length > self.max_body:
                return None
        elif length:
            return None
        start = end + 4
        if len(buf) < start + length:
            return None  # the body is still arriving: aiohttp reads it, with its deadline
        return Request(method, store, key, bytes(buf[start:start + length]), start + length)

    @staticmethod
    def _headers(lines: list[bytes]) -> tuple[int, bytes | None]:
        """(Content-Length or 0, Content-Type); length -1 when aiohttp must judge them
        (and without exactly one Host, which HTTP/1.1 requires and aiohttp refuses)."""
        length, content_type, hosts = -2, None, 0
        for line in lines[1:]:
            h = _HEADER.fullmatch(line)
            if h is None:
                return -1, None
            name, value = h.group(1).lower(), h.group(2) or b""
            if name == b"content-length":
                if length != -2 or not value.isdigit() or len(value) > 12:
                    return -1, None
                length = int(value)
            elif name == b"content-type":
                if content_type is not None:
                    return -1, None
                content_type = value
            elif name == b"host":
                hosts += 1
            elif name == b"connection":
                if value.lower() != b"keep-alive":
                    return -1, None
            elif name in _HAND_OVER:
                return -1, None
        if hosts != 1:
            return -1, None
        return max(length, 0), content_type


class FastPathProtocol(asyncio.Protocol):
    """One connection: answers what Routes.parse takes, in order, one request at a time
    (a PUT's answer waits for its durable commit); hands the rest to aiohttp."""

    def __init__(self, routes: Routes, server: web.Server, *, header_timeout: float,
                 idle_timeout: float, handed_over: Callable[[FastPathProtocol, Any], None],
                 closed: Callable[[FastPathProtocol], None]) -> None:
        self.routes = routes
        self.server = server
        self.idle_timeout = idle_timeout
        self._handed_over = handed_over
        self._closed = closed
        self.transport: Any = None
        self._buf = bytearray()
        self._busy = False  # a PUT or DELETE waits for its commit
        self._paused = False  # the client does not read our answers
        self._eof = False
        self._gone = False
        self._held = False  # reading paused: too much read ahead
        self._loop = asyncio.get_running_loop()
        self._timeout = header_timeout
        self._last = self._loop.time()
        self._timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------ transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self._timer = self._loop.call_later(self._timeout, self._expire)

    def data_received(self, data: bytes) -> None:
        self._buf += data
        self._last = self._loop.time()
        if not self._busy and not self._paused:
            self._serve()
        elif len(self._buf) > _READ_AHEAD and not self._held:
            self._held = True  # a client pipelining without end waits for our answers
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        self._eof = True
        if self._busy or self._buf:
            if not self._busy:
                self._hand_over()
            return True  # keep the transport: an answer is still to be written
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        self._gone = True
        if self._timer is not None:
            self._timer.cancel()
        self._closed(self)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if not self._busy and not self._gone:
            self._serve()

    def close(self) -> None:
        """The node is stopping: close now if nothing is in flight, else after it."""
        self._eof = True
        if not self._busy and self.transport is not None:
            self.transport.close()

    # ------------------------------------------------------------ requests

    def _serve(self) -> None:
        routes = self.routes
        while self._buf and not self._busy and not self._paused and not self._gone:
            request = routes.parse(self._buf)
            if request is None:
                self._hand_over()
                return
            start = perf_counter()
            try:
                self._answer(request, start)
            except (ApiError, StoreClosed):  # refused before anything was done: aiohttp says why
                self._hand_over()
                return
            del self._buf[:request.size]
        if self._gone:
            return
        if self._held and not self._busy and not self._paused:
            self._held = False
            self.transport.resume_reading()
        if self._eof and not self._busy:
            self.transport.close()

    def _answer(self, r: Request, start: float) -> None:
        if r.method == b"GET":
            self._respond("GET", 200, value_body(r.store.get(r.key)), start)
            return
        if r.method == b"PUT":
            value = put_value(r.body)
            merger = r.store.merger
            mutation = (merged_mutation(r.key, value, "value")
                        if merger is not None and r.key.startswith(merger.prefixes)
                        else Mutation(Op.PUT, r.key, value))
        else:
            mutation = Mutation(Op.DELETE, r.key)
        future = r.store.submit([mutation])
        self._busy = True
        method = r.method.decode()
        future.add_done_callback(lambda f: self._committed(f, method, mutation, start))

    def _committed(self, future: asyncio.Future[list[int]], method: str, mutation: Mutation,
                   start: float) -> None:
        self._busy = False
        if self._gone:
            return
        error = future.exception() if not future.cancelled() else StoreClosed("cancelled")
        if error is None:
            unchanged = mutation.changed is not None and mutation.changed == [False]
            self._respond(method, 200, UNCHANGED_BODY if unchanged else SUCCESS_BODY, start)
        elif isinstance(error, StoreClosed):  # as the aiohttp route answers it
            self._respond(method, 503, error_body(str(error)), start)
        else:  # a bug: said in the log, answered as aiohttp's routes answer one
            log.error("internal error on %s %s", method, ROUTE, exc_info=error)
            self._respond(method, 500, error_body(INTERNAL_ERROR), start)
        self._serve()

    def _respond(self, method: str, status: int, body: bytes, start: float) -> None:
        self.transport.write(response(status, body))
        requests = self.routes.requests
        requests.add(method, ROUTE, status, perf_counter() - start)
        requests.fast_answered += 1
        self._timeout = self.idle_timeout
        self._last = self._loop.time()

    # ------------------------------------------------------------ hand-over, deadlines

    def _hand_over(self) -> None:
        """aiohttp's handler takes the connection and every byte not yet answered."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.routes.requests.fast_handed_over += 1
        handler = self.server()
        transport, data = self.transport, bytes(self._buf)
        self._buf.clear()
        self._gone = True
        self._closed(self)
        transport.set_protocol(handler)
        handler.connection_made(transport)
        self._handed_over(self, handler)
        if self._paused:
            handler.pause_writing()
        if self._held:
            transport.resume_reading()
        if data:
            handler.data_received(data)
        if self._eof:
            handler.eof_received()

    def _expire(self) -> None:
        """Close a connection silent for its deadline (headers first, then idle)."""
        self._timer = None
        if self._gone:
            return
        left = self._last + self._timeout - self._loop.time()
        if left > 0 or self._busy:
            self._timer = self._loop.call_later(max(left, 0.1), self._expire)
            return
        self.transport.close()


def routes_for(app: web.Application) -> Routes | None:
    """The fast path's view of a node's app (built by api.app.build_app); None when it
    is off, or for an app that is not a node's."""
    from unison.api.app import CTX_KEY, REQUESTS_KEY

    ctx = app.get(CTX_KEY)
    if ctx is None or not enabled(ctx.config.http):
        return None
    http = ctx.config.http
    return Routes(ctx.stores, ctx.writable, http.max_key_size, http.max_body_size,
                  app[REQUESTS_KEY])

"""The HTTP listener's bounds: a connection cap that sheds load, a header deadline, and
accept errors logged at a bounded rate.

aiohttp closes a connection idle between requests after `keepalive_timeout` (our
`http_config.idle_timeout`), including one that never completes its first request. On
top of that:

- `max_connections`: a connection beyond it is answered `503` and closed at once, so the
  node never reaches its open-file limit, where `accept()` fails and asyncio retries it
  (and logs it) in a loop;
- `read_header_timeout`: a connection whose first request line and headers have not all
  arrived by then is closed (a slowloris client holds nothing for longer); later
  requests on a kept-alive connection get `idle_timeout`;
- accept errors that still happen (another process filled the open-file table) are
  logged once per `ACCEPT_LOG_INTERVAL` seconds with a count, not once per attempt.

Body read deadlines (`read_timeout`) are applied where bodies are read (api/kv.py).
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from unison.api import fastpath
from unison.config import HttpConfig

log = logging.getLogger(__name__)

ACCEPT_LOG_INTERVAL = 10.0
REFUSE_LINGER = 0.5  # seconds a refused connection may take to read its 503
# File descriptors kept for everything but HTTP connections (RocksDB, gRPC, ZeroMQ, logs).
RESERVED_FDS = 256
_BUSY_BODY = (b'{"error":"server busy: too many connections (http_config.max_connections); '
              b'retry later"}')
_BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
         b"Connection: close\r\nRetry-After: 1\r\nContent-Length: "
         + str(len(_BUSY_BODY)).encode() + b"\r\n\r\n" + _BUSY_BODY)


class _Refuse(asyncio.Protocol):
    """Answers 503 to a connection over the cap at once, half-closes, discards what the
    client still sends (closing on unread bytes would reset the connection, and the
    client could lose the 503), and closes after REFUSE_LINGER seconds at most."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport
        transport.write(_BUSY)  # type: ignore[attr-defined]
        transport.write_eof()  # type: ignore[attr-defined]
        self._timer = asyncio.get_running_loop().call_later(REFUSE_LINGER, transport.close)

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool:
        self.transport.close()
        return False

    def connection_lost(self, exc: BaseException | None) -> None:
        self._timer.cancel()


def connection_cap(limit: int) -> int:
    """`limit`, lowered (with a warning) to what the open-file limit allows; raises the
    soft open-file limit towards the hard one first."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = limit + RESERVED_FDS
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < want:
        cap = max(1, soft - RESERVED_FDS)
        log.warning("http_config.max_connections %d lowered to %d: the open-file limit is %d",
                    limit, cap, soft)
        return cap
    return limit


class BoundedSite(web.TCPSite):
    """A TCPSite whose protocol factory applies `max_connections` and the header deadline,
    and puts the fast path (fastpath.py) in front of a node's app."""

    fast_protocol: type[fastpath.FastPathProtocol] = fastpath.FastPathProtocol

    def __init__(self, runner: web.BaseRunner, cfg: HttpConfig, host: str, port: int,
                 **kwargs: Any) -> None:
        super().__init__(runner, host, port, **kwargs)
        self.cap = connection_cap(cfg.max_connections)
        self.header_timeout = cfg.read_header_timeout
        self.idle_timeout = cfg.idle_timeout
        self.refused = 0
        app = getattr(runner, "app", None)
        self.routes = fastpath.routes_for(app) if isinstance(app, web.Application) else None
        self.fast: set[fastpath.FastPathProtocol] = set()  # connections not yet aiohttp's

    async def start(self) -> None:
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        self._server = await loop.create_server(
            self._factory(server, loop), self._host, self._port, backlog=self._backlog,
            reuse_address=self._reuse_address)

    def _factory(self, server: web.Server,
                 loop: asyncio.AbstractEventLoop) -> Callable[[], asyncio.Protocol]:
        def protocol() -> asyncio.Protocol:
            if len(server.connections) + len(self.fast) >= self.cap:
                self.refused += 1
                if self.refused == 1 or self.refused % 1000 == 0:
                    log.warning("HTTP: %d connections open (http_config.max_connections); "
                                "answering 503 (%d refused so far)", self.cap, self.refused)
                return _Refuse()
            if self.routes is not None:
                fast = self.fast_protocol(
                    self.routes, server, header_timeout=self.header_timeout,
                    idle_timeout=self.idle_timeout, handed_over=self._handed_over,
                    closed=self.fast.discard)
                self.fast.add(fast)
                return fast
            handler = server()
            loop.call_later(self.header_timeout, _header_deadline, handler)
            return handler

        return protocol

    def _handed_over(self, fast: fastpath.FastPathProtocol, handler: RequestHandler) -> None:
        asyncio.get_running_loop().call_later(self.header_timeout, _header_deadline, handler)

    async def stop(self) -> None:
        await super().stop()
        for fast in list(self.fast):  # idle ones close now, the others after their answer
            fast.close()


def _header_deadline(handler: RequestHandler) -> None:
    # aiohttp counts the requests whose headers it has parsed on this connection.
    if handler.transport is not None and getattr(handler, "_request_count", 1) == 0:
        log.debug("HTTP: closing a connection that sent no complete request headers in time")
        handler.force_close()


def limit_accept_errors(loop: asyncio.AbstractEventLoop) -> None:
    """Log the event loop's accept() failures at most once per ACCEPT_LOG_INTERVAL."""
    previous = loop.get_exception_handler()
    state = {"last": 0.0, "suppressed": 0}

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if "socket.accept()" not in str(context.get("message", "")):
            if previous is not None:
                previous(loop, context)
            else:
                loop.default_exception_handler(context)
            return
        now = time.monotonic()
        if now - state["last"] < ACCEPT_LOG_INTERVAL:
            state["suppressed"] += 1
            return
        log.error("HTTP: %s: %s (%d more like it in the last %gs)", context.get("message"),
                  context.get("exception"), state["suppressed"], ACCEPT_LOG_INTERVAL)
        state["last"], state["suppressed"] = now, 0

    loop.set_exception_handler(handler)

"""One HTTP worker process (`http_config.workers` > 0; started by api/workers.py).

It binds the node's HTTP port with SO_REUSEPORT beside its siblings and serves the hot
routes itself: PUT/GET/HEAD/DELETE of a key and POST of a batch, with every check the
single-process node makes (tokens, namespace, key, Content-Type, body, CRDT values: the
functions of api/kv.py), so a refused request never reaches the writer. What passes goes
to the writer as one binary frame (api/frames.py) on this worker's Unix socket; the answer
comes back after the write's group commit is durable, or at once for a read, which the
writer serves from its RocksDB primary (so a read sees every acknowledged write). Every
other route (health, metrics, stats, scans, watch streams, reads at an LSN, 404s and 405s)
is proxied to the writer's own app on its internal listener.

The worker exits when its writer socket closes (the node stopped or died; also
PR_SET_PDEATHSIG), and on SIGTERM after finishing what it is serving.
"""

from __future__ import annotations

import asyncio
import ctypes
import json
import logging
import os
import signal
import socket
import sys
from dataclasses import asdict, dataclass, field
from typing import Any

from aiohttp import web

from unison import eventloop
from unison.api import fastpath, frames
from unison.api.app import REQUESTS_KEY, Observer
from unison.api.auth import guard, load_tokens
from unison.api.kv import (
    MIN_LSN_HEADER,
    encode_key,
    get_response,
    merged_mutation,
    namespace_not_found,
    parse_batch,
    parse_json_object,
    put_value,
    read_body,
    read_only,
    require_json,
)
from unison.api.metrics import RequestCounter
from unison.api.proxy import Proxy
from unison.api.responses import JSON, ApiError
from unison.api.server import BoundedSite, limit_accept_errors
from unison.api.worker_fastpath import WorkerFastPath, worker_routes
from unison.config import HttpConfig
from unison.crdt import stored as crdt_stored
from unison.errors import StartupError
from unison.logs import setup_logging
from unison.storage import Op

log = logging.getLogger("unison.worker")

_PR_SET_PDEATHSIG = 1
SHUTDOWN_GRACE = 3.0  # seconds in-flight requests get on SIGTERM
REPORT_INTERVAL = 1.0  # seconds between request-count reports to the writer
GONE = "unavailable: the node's writer process is gone"


@dataclass
class WorkerSpec:
    """What a worker needs to know, passed as JSON on its command line."""

    index: int
    parent_pid: int
    fd: int  # its end of the socketpair to the writer
    listen_ip: str
    port: int
    proxy_port: int  # the writer's internal listener on 127.0.0.1
    role: str
    namespaces: list[str]
    writable: list[str]
    merged: list[str]  # crdt_merge_namespaces
    http: dict[str, Any] = field(default_factory=dict)  # HttpConfig's fields
    log_level: str = "info"
    log_format: str = "text"
    timestamps: bool = True
    loop: str = "auto"

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> WorkerSpec:
        return cls(**json.loads(text))


class WriterLink(frames.FrameLink):
    """The worker's end of its writer socket: frames out (written once per loop turn),
    answers matched to waiting requests by id. When the writer goes away every waiting
    request gets 503 and `closed` is set."""

    def __init__(self, max_frame: int) -> None:
        super().__init__()
        self.reader = frames.AnswerReader(max_frame)
        self.pending: dict[int, asyncio.Future[frames.Answer]] = {}
        self.next_rid = 1
        self.closed = asyncio.Event()

    def request(self, build: Any, *args: Any) -> asyncio.Future[frames.Answer]:
        """Send `build(rid, *args)`; the future gets its answer (ApiError 503 if the
        writer goes away first)."""
        if self.closed.is_set():
            raise ApiError(503, GONE)
        rid = self.next_rid
        self.next_rid = rid + 1 if rid < 0xFFFFFFFF else 1
        fut = self.loop.create_future()
        self.pending[rid] = fut
        self.send(build(rid, *args))
        return fut

    async def call(self, build: Any, *args: Any) -> frames.Answer:
        return await self.request(build, *args)

    def data_received(self, data: bytes) -> None:
        try:
            answers = self.reader.feed(data)
        except frames.FrameError as e:
            log.error("HTTP worker: bad frame from the writer (%s); exiting", e)
            assert self.transport is not None
            self.transport.close()
            return
        for a in answers:
            fut = self.pending.pop(a.rid, None)
            if fut is not None and not fut.done():
                fut.set_result(a)

    def connection_lost(self, exc: Exception | None) -> None:
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(ApiError(503, GONE))
        self.pending.clear()
        self.closed.set()


def _answer(a: frames.Answer) -> web.Response:
    if a.kind == frames.FOUND:
        return get_response(a.payload)
    if a.kind == frames.MISSING:
        return get_response(None)
    return web.Response(status=a.status, body=a.payload, content_type=JSON)


class HotRoutes:
    """The routes a worker serves itself: the same checks, in the same order, as
    api/kv.py's KvRoutes, then one frame to the writer."""

    def __init__(self, spec: WorkerSpec, cfg: HttpConfig, link: WriterLink, proxy: Proxy) -> None:
        self.index = {ns: i for i, ns in enumerate(spec.namespaces)}
        self.writable = frozenset(spec.writable)
        self.merged = frozenset(spec.merged)
        self.role = spec.role
        self.cfg = cfg
        self.link = link
        self.proxy = proxy

    def _ns(self, request: web.Request, write: bool) -> tuple[str, int]:
        ns = request.match_info["ns"]
        i = self.index.get(ns)
        if i is None:
            raise namespace_not_found(ns)
        if write and ns not in self.writable:
            raise read_only(ns, self.role)
        return ns, i

    def _key(self, request: web.Request) -> bytes:
        return encode_key(request.match_info.get("key", ""), "key", self.cfg.max_key_size)

    async def _body(self, request: web.Request) -> bytes:
        return await read_body(request, self.cfg.max_body_size, self.cfg.read_timeout)

    async def put(self, request: web.Request) -> web.Response:
        ns, i = self._ns(request, True)
        key = self._key(request)
        require_json(request)
        value = put_value(await self._body(request))
        if ns in self.merged and key.startswith(crdt_stored.PREFIXES):
            merged_mutation(key, value, "value")  # refused here (400), merged by the writer
        return _answer(await self.link.call(frames.request, i, frames.PUT, key, value))

    async def get(self, request: web.Request) -> web.StreamResponse:
        _, i = self._ns(request, False)
        key = self._key(request)
        if request.query_string or MIN_LSN_HEADER in request.headers:
            return await self.proxy(request)  # a read at an LSN waits in the writer
        return _answer(await self.link.call(frames.request, i, frames.GET, key))

    async def delete(self, request: web.Request) -> web.Response:
        _, i = self._ns(request, True)
        key = self._key(request)
        return _answer(await self.link.call(frames.request, i, frames.DELETE, key))

    async def batch(self, request: web.Request) -> web.Response:
        ns, i = self._ns(request, True)
        require_json(request)
        mutations = parse_batch(parse_json_object(await self._body(request)),
                                self.cfg.max_key_size)
        if ns in self.merged:
            for n, m in enumerate(mutations):
                if m.op is Op.PUT and m.key.startswith(crdt_stored.PREFIXES):
                    merged_mutation(m.key, m.value, f"items[{n}].value")
        return _answer(await self.link.call(frames.batch_request, i, mutations))


def build_worker_app(spec: WorkerSpec, cfg: HttpConfig, link: WriterLink,
                     proxy: Proxy) -> web.Application:
    app = web.Application(client_max_size=cfg.max_body_size)
    requests = app[REQUESTS_KEY] = RequestCounter()  # sent to the writer's /metrics
    observe = Observer(requests, cfg.max_body_size)
    hot = HotRoutes(spec, cfg, link, proxy)
    tokens = load_tokens(cfg)
    read, write = guard(tokens, "read"), guard(tokens, "write")
    # As api/app.py: one resource for a key's methods; a method it lacks (POST) falls
    # through to the batch route or the proxy, where the writer answers 405.
    key = app.router.add_resource("/api/v1/{ns}/kv/{key:.+}")
    key.add_route("PUT", observe(write(hot.put)))
    get = observe(read(hot.get))
    key.add_route("GET", get)
    key.add_route("HEAD", get)
    key.add_route("DELETE", observe(write(hot.delete)))
    app.router.add_post("/api/v1/{ns}/kv/batch", observe(write(hot.batch)))
    app.router.add_route("*", "/{path:.*}", proxy)
    return app


class SharedPortSite(BoundedSite):
    """BoundedSite (connection cap, header deadline, the fast path) on a socket bound with
    SO_REUSEPORT; the fast path's stores are the writer's, through the link."""

    fast_protocol = WorkerFastPath  # a GET is a frame to the writer, not a local read

    def __init__(self, runner: web.BaseRunner, cfg: HttpConfig, sock: socket.socket,
                 spec: WorkerSpec, link: WriterLink) -> None:
        super().__init__(runner, cfg, cfg.listen_ip, 0)
        self.sock = sock
        if fastpath.enabled(cfg):
            self.routes = worker_routes(spec.namespaces, spec.writable, spec.merged, link,
                                        cfg.max_key_size, cfg.max_body_size,
                                        runner.app[REQUESTS_KEY])  # type: ignore[attr-defined]

    async def start(self) -> None:
        await web.BaseSite.start(self)
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None
        self._server = await loop.create_server(self._factory(server, loop), sock=self.sock,
                                                backlog=self._backlog)


def listening_socket(ip: str, port: int) -> socket.socket:
    """(ip, port) bound with SO_REUSEPORT, as every worker and the writer's reservation
    bind it; StartupError naming the port when another program holds it."""
    family = socket.AF_INET6 if ":" in ip else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((ip, port))
    except OSError as e:
        sock.close()
        raise StartupError(f"HTTP port {port} on {ip}: {e.strerror}") from e
    return sock


def per_worker(cfg: HttpConfig) -> HttpConfig:
    """A worker's share of the node's connection cap (the kernel spreads connections
    about evenly), so the node's file descriptors stay bounded as with one process."""
    workers = max(1, cfg.workers)
    cfg.max_connections = max(1, -(-cfg.max_connections // workers))
    return cfg


async def _serve(spec: WorkerSpec) -> None:
    cfg = per_worker(HttpConfig(**spec.http))
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    limit_accept_errors(loop)
    # Answers come from our own writer: bounded only against a corrupt length.
    _, link = await loop.create_unix_connection(
        lambda: WriterLink(2**31), sock=socket.socket(fileno=spec.fd))
    proxy = Proxy(spec.proxy_port, cfg.max_connections)
    runner = web.AppRunner(build_worker_app(spec, cfg, link, proxy), access_log=None,
                           handle_signals=False, keepalive_timeout=cfg.idle_timeout,
                           lingering_time=1.0, shutdown_timeout=SHUTDOWN_GRACE)
    await runner.setup()
    sock = listening_socket(spec.listen_ip, spec.port)
    sock.listen(128)
    site = SharedPortSite(runner, cfg, sock, spec, link)
    await site.start()
    link.send(frames.request(spec.index, 0, frames.HELLO))
    reporting = asyncio.create_task(_report(link, runner.app[REQUESTS_KEY]))
    log.debug("HTTP worker %d (pid %d) listening on :%d", spec.index, os.getpid(), spec.port)
    waits = [asyncio.ensure_future(link.closed.wait()), asyncio.ensure_future(stop.wait())]
    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for w in (*waits, reporting):
        w.cancel()
    if not stop.is_set():
        log.warning("HTTP worker %d: the writer closed its socket; exiting", spec.index)
    await runner.cleanup()
    await proxy.close()


def counts_snapshot(requests: RequestCounter) -> bytes | None:
    """What `requests` counted since the last snapshot (JSON), and reset; None if nothing."""
    if not requests.counts and not requests.fast_answered and not requests.fast_handed_over:
        return None
    data = {"counts": [[*k, n] for k, n in requests.counts.items()],
            "durations": [[*k, hist] for k, hist in requests.durations.items()],
            "fast": [requests.fast_answered, requests.fast_handed_over]}
    requests.counts.clear()
    requests.durations.clear()
    requests.fast_answered = requests.fast_handed_over = 0
    return json.dumps(data).encode()


async def _report(link: WriterLink, requests: RequestCounter) -> None:
    """Send the worker's request counts to the writer every REPORT_INTERVAL, so the
    node's /metrics counts what its workers answered."""
    while True:
        await asyncio.sleep(REPORT_INTERVAL)
        data = counts_snapshot(requests)
        if data is not None:
            link.send(frames.request(0, 0, frames.STATS, b"", data))


def _die_with_parent(parent: int) -> None:
    """SIGKILL when the writer dies (it could not stop us), and exit if it already has."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the socket's close still ends us
    if os.getppid() != parent:
        sys.exit(0)


def main(argv: list[str]) -> int:
    spec = WorkerSpec.from_json(argv[0])
    _die_with_parent(spec.parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's ^C: the writer stops us
    setup_logging(spec.log_level, spec.log_format, timestamps=spec.timestamps)
    try:
        eventloop.run(_serve(spec), spec.loop, program=f"unison HTTP worker {spec.index}")
    except StartupError as e:
        log.error("HTTP worker %d: start-up failed: %s", spec.index, e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

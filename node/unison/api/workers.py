"""The node process's side of `http_config.workers` > 0: it starts the HTTP worker
processes (api/worker.py), executes their frames, and restarts a worker that dies.

The node process stays the only writer: it owns the RocksDB primaries, the group commit
and LSNs, gRPC, followers and notifiers. Each worker has one Unix stream socket (a
socketpair, so no path and no listener) on which it sends request frames: a read is
answered at once from the primary, a write goes to `store.submit` and is answered when its
group commit is durable, exactly as the single-process handler awaits it. Answers are
written once per event-loop turn per worker. The writer also serves its full app on an
internal 127.0.0.1 listener, to which workers proxy every route they do not serve.

The public port is bound here too (SO_REUSEPORT, never listening) for the node's life: a
port another program holds fails start-up naming the port, and a restarting worker's
port cannot be taken in between.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import sys
import time
from dataclasses import asdict, dataclass, field
from functools import partial

from aiohttp import web

from unison.api import frames
from unison.api.app import REQUESTS_KEY
from unison.api.kv import batch_answer
from unison.api.metrics import RequestCounter
from unison.api.responses import INTERNAL_ERROR, SUCCESS_BODY, UNCHANGED_BODY, error_body
from unison.api.worker import WorkerSpec, listening_socket
from unison.context import NodeContext
from unison.errors import StartupError
from unison.storage import Mutation, NamespaceStore, Op, StoreClosed

log = logging.getLogger("unison.workers")

START_TIMEOUT = 30.0  # seconds a worker may take to listen
STOP_TIMEOUT = 10.0  # seconds a worker may take to finish after SIGTERM
RESTART_PAUSE = 1.0  # a worker that dies this soon after its start waits this long
_INTERNAL = error_body(INTERNAL_ERROR)


def add_counts(requests: RequestCounter, data: bytes) -> None:
    """Add a worker's counts (api/worker.py counts_snapshot) to the writer's."""
    try:
        report = json.loads(data)
        for method, route, status, n in report["counts"]:
            key = (method, route, status)
            requests.counts[key] = requests.counts.get(key, 0) + n
        for method, route, hist in report["durations"]:
            mine = requests.durations.setdefault((method, route), [0.0] * len(hist))
            for i, v in enumerate(hist):
                mine[i] += v
        requests.fast_answered += report["fast"][0]
        requests.fast_handed_over += report["fast"][1]
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise frames.FrameError(f"request counts: {e}") from None


class WorkerLink(frames.FrameLink):
    """The writer's end of one worker's socket: decodes frames, executes them, answers."""

    def __init__(self, stores: list[NamespaceStore], max_frame: int,
                 requests: RequestCounter) -> None:
        super().__init__()
        self.stores = stores
        self.requests = requests  # the writer app's: /metrics counts the workers' requests
        self.reader = frames.RequestReader(max_frame)
        self.ready = asyncio.Event()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


    def data_received(self, data: bytes) -> None:
        try:
            for r in self.reader.feed(data):
                self._execute(r)
        except frames.FrameError as e:
            # Our own worker sent it, so something is badly wrong: drop the link (the
            # worker exits on the close and is restarted), keep serving the others.
            log.error("HTTP worker link: bad frame (%s); closing the link", e)
            self.close()

    def _execute(self, r: frames.Request) -> None:
        if r.op == frames.HELLO:
            self.ready.set()
            return
        if r.op == frames.STATS:
            add_counts(self.requests, r.value)
            return
        if r.ns >= len(self.stores):
            raise frames.FrameError(f"request {r.rid}: no namespace {r.ns}")
        store = self.stores[r.ns]
        if r.op == frames.GET:
            self._get(store, r)
            return
        if r.op == frames.BATCH:
            mutations = frames.batch_items(r.value)
        else:
            mutations = [Mutation(Op.PUT if r.op == frames.PUT else Op.DELETE, r.key, r.value)]
        merger = store.merger
        if merger is not None:  # the writer reports whether each merged PUT changed state
            mutations = [Mutation(m.op, m.key, m.value, [])
                         if m.op is Op.PUT and m.key.startswith(merger.prefixes) else m
                         for m in mutations]
        try:
            fut = store.submit(mutations)
        except StoreClosed as e:  # as api/kv.py: shutting down, queue full, sync stalled
            self.send(frames.answer(r.rid, 503, frames.BODY, error_body(str(e))))
            return
        fut.add_done_callback(partial(self._written, r.rid, r.op, mutations))

    def _get(self, store: NamespaceStore, r: frames.Request) -> None:
        try:
            value = store.get(r.key)
        except StoreClosed as e:
            self.send(frames.answer(r.rid, 503, frames.BODY, error_body(f"unavailable: {e}")))
            return
        except Exception:
            log.exception("internal error on GET of namespace %s (HTTP worker)", store.name)
            self.send(frames.answer(r.rid, 500, frames.BODY, _INTERNAL))
            return
        if value is None:
            self.send(frames.answer(r.rid, 200, frames.MISSING))
        else:
            self.send(frames.answer(r.rid, 200, frames.FOUND, value))

    def _written(self, rid: int, op: int, mutations: list[Mutation],
                 fut: asyncio.Future[list[int]]) -> None:
        error = fut.exception() if not fut.cancelled() else StoreClosed("write cancelled")
        if isinstance(error, StoreClosed):
            self.send(frames.answer(rid, 503, frames.BODY, error_body(str(error))))
        elif error is not None:
            log.error("internal error on a write (HTTP worker)", exc_info=error)
            self.send(frames.answer(rid, 500, frames.BODY, _INTERNAL))
        elif op == frames.BATCH:
            body = json.dumps(batch_answer(mutations), separators=(",", ":")).encode()
            self.send(frames.answer(rid, 200, frames.BODY, body))
        else:
            changed = mutations[0].changed
            body = UNCHANGED_BODY if changed and not changed[0] else SUCCESS_BODY
            self.send(frames.answer(rid, 200, frames.BODY, body))


@dataclass
class _Slot:
    index: int
    proc: asyncio.subprocess.Process | None = None
    link: WorkerLink | None = None
    started: float = 0.0
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class WorkerPool:
    """N HTTP worker processes for one node, with the node's full app on an internal
    listener. `cleanup()` (as an AppRunner's) stops the workers first, then the app."""

    def __init__(self, ctx: NodeContext, app: web.Application) -> None:
        self.ctx = ctx
        self.cfg = ctx.config
        self.count = self.cfg.http.workers
        self.stores = [ctx.stores[ns] for ns in self.cfg.storage.namespaces]
        self.requests = app[REQUESTS_KEY]
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False,
                                    keepalive_timeout=self.cfg.http.idle_timeout,
                                    lingering_time=1.0)
        self.slots = [_Slot(i) for i in range(self.count)]
        self.internal_port = 0
        self.stopping = False
        self._reserved: socket.socket | None = None
        self._loop = "uvloop" if "uvloop" in type(asyncio.get_running_loop()).__module__ \
            else "asyncio"

    async def start(self) -> None:
        cfg = self.cfg
        self._reserved = listening_socket(cfg.http.listen_ip, cfg.http_port)  # StartupError
        await self.runner.setup()
        # Only our workers connect here (their proxies cap their connections).
        internal = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        internal.bind(("127.0.0.1", 0))
        self.internal_port = internal.getsockname()[1]
        await web.SockSite(self.runner, internal).start()
        await asyncio.gather(*(self._spawn(slot) for slot in self.slots))
        for slot in self.slots:
            slot.task = asyncio.create_task(self._supervise(slot), name=f"http-worker-{slot.index}")
        log.info("HTTP server listening on :%d (address %s, %d worker processes, max %d "
                 "connections each; internal listener 127.0.0.1:%d)", cfg.http_port,
                 cfg.http.listen_ip, self.count,
                 -(-cfg.http.max_connections // self.count), self.internal_port)

    def _spec(self, slot: _Slot, fd: int) -> WorkerSpec:
        cfg = self.cfg
        return WorkerSpec(
            index=slot.index, parent_pid=os.getpid(), fd=fd, listen_ip=cfg.http.listen_ip,
            port=cfg.http_port, proxy_port=self.internal_port, role=self.ctx.role,
            namespaces=list(cfg.storage.namespaces), writable=sorted(self.ctx.writable),
            merged=[s.name for s in self.stores if s.merger is not None],
            http=asdict(cfg.http), log_level=cfg.log.log_level, log_format=cfg.log.log_format,
            timestamps=not cfg.log.disable_timestamp, loop=self._loop)

    async def _spawn(self, slot: _Slot) -> None:
        """Start the slot's worker and wait until it listens (StartupError if it cannot)."""
        loop = asyncio.get_running_loop()
        mine, theirs = socket.socketpair()
        try:
            slot.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "unison.api.worker",
                self._spec(slot, theirs.fileno()).to_json(),
                stdin=asyncio.subprocess.DEVNULL, pass_fds=(theirs.fileno(),))
        finally:
            theirs.close()
        slot.started = time.monotonic()
        max_frame = self.cfg.http.max_body_size + (1 << 20)
        _, slot.link = await loop.create_unix_connection(
            lambda: WorkerLink(self.stores, max_frame, self.requests), sock=mine)
        ready = asyncio.ensure_future(slot.link.ready.wait())
        exited = asyncio.ensure_future(slot.proc.wait())
        await asyncio.wait((ready, exited), timeout=START_TIMEOUT,
                           return_when=asyncio.FIRST_COMPLETED)
        ready.cancel()
        exited.cancel()
        if not slot.link.ready.is_set():
            code = slot.proc.returncode
            await self._end(slot)
            why = (f"exited with code {code}" if code is not None
                   else f"was not listening after {START_TIMEOUT:g}s")
            raise StartupError(f"HTTP port {self.cfg.http_port}: worker {slot.index} {why} "
                               "(its error is logged above)")

    async def _supervise(self, slot: _Slot) -> None:
        """Restart the slot's worker whenever it exits, until the pool stops."""
        while True:
            assert slot.proc is not None
            code = await slot.proc.wait()
            if self.stopping:
                return
            if slot.link is not None:
                slot.link.close()
            how = f"signal {-code}" if code < 0 else f"code {code}"
            log.warning("HTTP worker %d (pid %d) exited with %s; restarting it", slot.index,
                        slot.proc.pid, how)
            if time.monotonic() - slot.started < RESTART_PAUSE:
                await asyncio.sleep(RESTART_PAUSE)  # no tight loop if it cannot start
            try:
                await self._spawn(slot)
            except StartupError as e:
                log.error("HTTP worker %d: restart failed: %s", slot.index, e)
                continue
            log.info("HTTP worker %d restarted (pid %d)", slot.index, slot.proc.pid)

    async def _end(self, slot: _Slot) -> None:
        """SIGTERM the slot's worker, wait for it (SIGKILL after STOP_TIMEOUT)."""
        proc = slot.proc
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), STOP_TIMEOUT)
            except TimeoutError:
                log.warning("HTTP worker %d did not stop in %gs; killing it", slot.index,
                            STOP_TIMEOUT)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if slot.link is not None:
            slot.link.close()

    async def cleanup(self) -> None:
        """Stop the workers (they finish what they serve), then the internal app."""
        self.stopping = True
        for slot in self.slots:
            if slot.task is not None:
                slot.task.cancel()
        await asyncio.gather(*(self._end(slot) for slot in self.slots))
        if self.runner.server is not None:
            await self.runner.cleanup()
        if self._reserved is not None:
            self._reserved.close()
            self._reserved = None

"""ZeroMQ change publisher for one namespace.

After every durable commit (local writes on a primary, records applied by a follower on
a relayer: both reach us through the store's commit listener) each record goes out as
two frames, `[b"<namespace>.kv", json]`, in LSN order.

The socket is an XPUB with XPUB_NODROP: a SUB peer sees exactly what a PUB would send,
but when a subscriber's queue reaches the high-water mark a non-blocking send fails with
EAGAIN instead of dropping silently, so drops can be counted. The commit path never
waits on a subscriber: a send that would block is counted as dropped, and subscribers
notice the gap in `seq_num` and resync.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

import zmq
import zmq.asyncio

from unison.config import NotifierConfig, WriteNotifyConfig
from unison.node import StartupError
from unison.notify.message import encode_notification, topic
from unison.storage import NamespaceStore, Record

log = logging.getLogger(__name__)

# With coalescing on, a burst this large is sent at once rather than held for max_delay.
MAX_COALESCED = 1024


class Notifier:
    """One ZeroMQ publisher bound on `tcp://*:<bind_port>` for one namespace."""

    def __init__(self, store: NamespaceStore, config: NotifierConfig,
                 write_notify: WriteNotifyConfig | None = None) -> None:
        self.store = store
        self.config = config
        self.write_notify = write_notify or WriteNotifyConfig()
        self.namespace = store.name
        self._topic = topic(self.namespace)
        self._ctx: zmq.asyncio.Context | None = None
        self._sock: zmq.asyncio.Socket | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pending: list[Record] = []
        self._flush_handle: asyncio.TimerHandle | None = None
        self.sent = 0
        self.dropped = 0
        self.last_seq_num = 0

    @property
    def endpoint(self) -> str:
        return f"tcp://*:{self.config.bind_port}"

    async def start(self) -> None:
        ctx = zmq.asyncio.Context()
        sock = ctx.socket(zmq.XPUB)
        sock.setsockopt(zmq.SNDHWM, self.config.high_water_mark)
        sock.setsockopt(zmq.LINGER, self.config.linger_time)
        sock.setsockopt(zmq.XPUB_NODROP, 1)
        try:
            sock.bind(self.endpoint)
        except zmq.ZMQError as e:
            sock.close(linger=0)
            ctx.term()
            raise StartupError(
                f"notifier_config.{self.namespace}: cannot bind the ZeroMQ publisher for "
                f"namespace {self.namespace} on port {self.config.bind_port}: {zmq.strerror(e.errno)}"
            ) from e
        self._ctx, self._sock = ctx, sock
        # XPUB hands subscription messages to the application; read them so they never pile up.
        self._reader = asyncio.get_running_loop().create_task(
            self._drain_subscriptions(), name=f"notifier-subs-{self.namespace}")
        if self.write_notify.enabled:
            self._unsubscribe = self.store.subscribe(self._on_commit)
            log.info("ZeroMQ notifier for namespace %s listening on %s (hwm %d, max_delay %gs)",
                     self.namespace, self.endpoint, self.config.high_water_mark,
                     self.write_notify.max_delay)
        else:
            log.info("ZeroMQ notifier for namespace %s bound on %s; write_notify_config.enabled "
                     "is false, so no notifications are sent", self.namespace, self.endpoint)

    async def stop(self) -> None:
        """Stop listening, send what is held back, close within linger_time."""
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._sock is not None:
            self._flush()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
        if self._sock is not None:
            self._sock.close(linger=self.config.linger_time)
            self._sock = None
        if self._ctx is not None:
            # term() waits (at most linger_time) for queued messages to reach subscribers.
            ctx, self._ctx = self._ctx, None
            await asyncio.get_running_loop().run_in_executor(None, ctx.term)
            log.info("ZeroMQ notifier for namespace %s stopped (sent %d, dropped %d)",
                     self.namespace, self.sent, self.dropped)

    def metrics(self) -> dict[str, int]:
        return {
            "sent": self.sent,
            "dropped": self.dropped,
            "pending": len(self._pending),
            "last_seq_num": self.last_seq_num,
        }

    # ------------------------------------------------------------ commit path

    def _on_commit(self, records: Sequence[Record]) -> None:
        if not records:  # a snapshot was installed: no records, subscribers see a seq gap
            return
        if self.write_notify.max_delay <= 0:
            self._send(records)
            return
        self._pending.extend(records)
        if len(self._pending) >= MAX_COALESCED:
            self._flush()
        elif self._flush_handle is None:
            self._flush_handle = asyncio.get_running_loop().call_later(
                self.write_notify.max_delay, self._flush)

    def _flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._pending:
            batch, self._pending = self._pending, []
            self._send(batch)

    def _send(self, records: Sequence[Record]) -> None:
        sock = self._sock
        if sock is None:
            return
        for r in records:
            frames = [self._topic, encode_notification(self.namespace, r)]
            # DONTWAIT: the asyncio socket tries at once and returns a finished future.
            fut = sock.send_multipart(frames, flags=zmq.DONTWAIT)
            if fut.done():
                self._account(fut)
            else:  # cannot happen with DONTWAIT, but never lose the count
                fut.add_done_callback(self._account)
            self.last_seq_num = r.lsn

    def _account(self, fut: asyncio.Future[object]) -> None:
        exc = fut.exception() if not fut.cancelled() else None
        if fut.cancelled() or isinstance(exc, zmq.Again):
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("namespace %s: a subscriber is at the high-water mark (%d); "
                            "%d notifications dropped so far", self.namespace,
                            self.config.high_water_mark, self.dropped)
        elif exc is not None:
            self.dropped += 1
            log.error("namespace %s: notification send failed: %s", self.namespace, exc)
        else:
            self.sent += 1

    async def _drain_subscriptions(self) -> None:
        assert self._sock is not None
        while True:
            msg = await self._sock.recv()
            if msg[:1] in (b"\x00", b"\x01"):
                log.debug("namespace %s: %s %r", self.namespace,
                          "subscribe" if msg[:1] == b"\x01" else "unsubscribe", msg[1:])

"""ZeroMQ change publisher for one namespace.

After every durable commit (local writes on a primary, records applied by a follower on
a relayer: both reach us through the store's commit listener) each record goes out as
two frames, `[b"<namespace>.kv", json]`, in LSN order.

The socket is an XPUB with XPUB_NODROP: a SUB peer sees exactly what a PUB would send,
but when a subscriber's queue reaches the high-water mark a non-blocking send fails with
EAGAIN instead of dropping silently, so drops can be counted. The commit path never
waits on a subscriber: a send that would block is counted as dropped, and subscribers
notice the gap in `seq_num` and resync. The socket lives on the event loop (its FD is
watched with add_reader) and every call on it is non-blocking.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence

import zmq

from unison.config import NotifierConfig, WriteNotifyConfig
from unison.node import StartupError
from unison.notify.message import encode_notification, topic
from unison.storage import NamespaceStore, Record

log = logging.getLogger(__name__)

# With coalescing on, a burst this large is sent at once rather than held for max_delay.
MAX_COALESCED = 1024
_NOWAIT = int(zmq.DONTWAIT)
_MORE_NOWAIT = int(zmq.DONTWAIT | zmq.SNDMORE)


class Notifier:
    """One ZeroMQ publisher bound on `tcp://*:<bind_port>` for one namespace."""

    def __init__(self, store: NamespaceStore, config: NotifierConfig,
                 write_notify: WriteNotifyConfig | None = None) -> None:
        self.store = store
        self.config = config
        self.write_notify = write_notify or WriteNotifyConfig()
        self.namespace = store.name
        self._topic = topic(self.namespace)
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._sock: zmq.Socket[bytes] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._fd: int | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._pending: list[Record] = []
        self._flush_handle: asyncio.TimerHandle | None = None
        self.sent = 0
        self.dropped = 0
        self.last_seq_num = 0

    @property
    def endpoint(self) -> str:
        return f"tcp://*:{self.config.bind_port}"

    async def start(self) -> None:
        ctx = zmq.Context()
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
                f"namespace {self.namespace} on port {self.config.bind_port}: "
                f"{zmq.strerror(e.errno)}"
            ) from e
        self._ctx, self._sock = ctx, sock
        self._loop = asyncio.get_running_loop()
        # XPUB hands subscription messages to the application; read them so they never
        # pile up. The FD is edge-triggered: _drain() also runs after every send.
        self._fd = sock.getsockopt(zmq.FD)
        self._loop.add_reader(self._fd, self._drain)
        self._drain()
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
        if self._sock is None:
            return
        self._flush()
        if self._loop is not None and self._fd is not None:
            self._loop.remove_reader(self._fd)
            self._fd = None
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
        elif self._flush_handle is None and self._loop is not None:
            self._flush_handle = self._loop.call_later(
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
            try:
                # Only the first frame can meet the HWM (XPUB_NODROP checks per message),
                # so a message goes out whole or not at all.
                sock.send(self._topic, _MORE_NOWAIT)
                sock.send(encode_notification(self.namespace, r), _NOWAIT)
            except zmq.Again:
                self._count_drop()
            except zmq.ZMQError as e:
                self.dropped += 1
                log.error("namespace %s: notification send failed: %s", self.namespace, e)
            else:
                self.sent += 1
            self.last_seq_num = r.lsn
        self._drain()

    def _count_drop(self) -> None:
        self.dropped += 1
        if self.dropped == 1 or self.dropped % 1000 == 0:
            log.warning("namespace %s: a subscriber is at the high-water mark (%d); "
                        "%d notifications dropped so far", self.namespace,
                        self.config.high_water_mark, self.dropped)

    def _drain(self) -> None:
        """Read pending subscription messages (b"\\x01topic" / b"\\x00topic")."""
        sock = self._sock
        if sock is None:
            return
        try:
            while sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                msg = sock.recv(_NOWAIT)
                log.debug("namespace %s: %s %r", self.namespace,
                          "subscribe" if msg[:1] == b"\x01" else "unsubscribe", msg[1:])
        except zmq.ZMQError:  # nothing more to read (or closing): the next edge brings more
            pass

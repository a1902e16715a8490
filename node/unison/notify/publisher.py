"""ZeroMQ change publisher for one namespace.

After every durable commit (local writes on a primary, records applied by a follower on
a relayer) each record goes out as two frames, `[b"<namespace>.kv", json]`, in LSN
order. The notifier is a push adapter over the store's log cursor (storage/cursor.py):
its cursor starts at the tail and calls it inside the commit path, and it drains the
cursor without waiting, so a record is on the socket when the commit returns.

`write_notify_config` means what it means in UnisonDB: coalescing of reader wake-ups,
never whether notifications are sent. With `enabled = true` and `max_delay > 0` it
coalesces on the leading edge: the first commit after a quiet period is sent at once
(a lone write is notified about a millisecond after it is durable) and opens a window
of `max_delay`; commits within the window are gathered and sent together when it ends
(which opens the next window), so a write storm costs one wake-up per window.
`enabled = false` (or `max_delay = 0`) turns coalescing off: every commit is sent at
once. `wakeups` counts the sends. After a snapshot install (the history was
replaced) it continues from the new tail: subscribers see a `seq_num` gap.

The socket is a plain PUB, as in UnisonDB: when one subscriber's queue reaches the
high-water mark, ZeroMQ drops that subscriber's messages only, silently; every other
subscriber still gets everything. (XPUB_NODROP would refuse the send for all of them.)
The commit path never waits on a subscriber: every call on the socket is non-blocking.
Subscribers detect their own losses by a gap in `seq_num` (the CRDT client rescans on a
gap); `dropped` counts only sends the socket itself refused or failed.

Bounded against hostile peers: the socket is an XPUB in manual mode, so a subscription
is applied only when it can match this notifier's one topic (a prefix of
`<namespace>.kv`); any other (a 16 MB one, or 50,000 distinct ones) is read, counted in
`refused_subscriptions` and forgotten, so libzmq's subscription trie never grows beyond
the topic's length on our side. libzmq itself still files every subscription of a peer
in its own trie (about 50 bytes per byte subscribed) until the peer disconnects, so once
peers have sent `REFUSED_BYTES_LIMIT` bytes of subscriptions that cannot match, the
socket is closed and bound again: every peer is disconnected, libzmq's tries are freed
(and the heap handed back), and well-behaved subscribers reconnect and resubscribe on
their own (seeing a `seq_num` gap if a write fell in between). `max_msg_size`
(ZMQ_MAXMSGSIZE) disconnects a peer that sends a larger message before it is buffered,
and a small receive high-water mark keeps what libzmq reads ahead of us small. The socket binds the node's HTTP `listen_ip`
(`tcp://*` only when that is 0.0.0.0).

With `curve_secret_key_file` the socket speaks CURVE only (notify/curve.py): a peer that
fails the handshake (no CURVE, a wrong server key, a client key not in
`curve_authorized_keys_dir`) is disconnected before it can send a subscription, and is
counted and logged at a bounded rate. The renewal binds again with the same keys.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import cast

import zmq

from unison.config import NotifierConfig, WriteNotifyConfig
from unison.errors import StartupError
from unison.memory import release_memory
from unison.notify.curve import CurveServer, KeyFileError, load_server_keys
from unison.notify.message import encode_notification, topic
from unison.storage import CorruptRecord, LogCursor, LogTrimmed, NamespaceStore, Record, StoreClosed
from unison.storage.cursor import NOTIFIER

log = logging.getLogger(__name__)

# With coalescing on, a burst this large is sent at once rather than held for max_delay.
MAX_COALESCED = NOTIFIER.max_records
# Bytes of subscriptions that cannot match, accepted before the socket is renewed.
REFUSED_BYTES_LIMIT = 64 * 1024
# Subscriptions libzmq reads ahead of us, per peer. libzmq files each one it reads in a
# trie (about 50 bytes per byte) inside whichever of our socket calls drains them, and
# keeps draining while the peer's next one is already there: one in flight leaves that
# loop the least chance to outrun the check below.
_SUBSCRIPTION_HWM = 1
_NOWAIT = int(zmq.DONTWAIT)
_MORE_NOWAIT = int(zmq.DONTWAIT | zmq.SNDMORE)


class Notifier:
    """One ZeroMQ publisher bound on `tcp://<bind_ip>:<bind_port>` for one namespace."""

    def __init__(self, store: NamespaceStore, config: NotifierConfig,
                 write_notify: WriteNotifyConfig | None = None, bind_ip: str = "*") -> None:
        self.bind_ip = "*" if bind_ip in ("", "*", "0.0.0.0") else bind_ip
        self.refused_subscriptions = 0
        self.renewals = 0
        self._refused_bytes = 0
        self._fd: int | None = None
        self._renewing: asyncio.Future[None] | None = None
        self.store = store
        self.config = config
        self.write_notify = write_notify or WriteNotifyConfig()
        self.namespace = store.name
        self._topic = topic(self.namespace)
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._curve: CurveServer | None = None
        self._sock: zmq.Socket[bytes] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._cursor: LogCursor | None = None
        self._pending: list[Record] = []
        self._flush_handle: asyncio.TimerHandle | None = None  # set while a window is open
        self.wakeups = 0  # sends to subscribers (one per commit without coalescing)
        self.sent = 0
        self.dropped = 0
        self.last_seq_num = 0

    @property
    def endpoint(self) -> str:
        return f"tcp://{self.bind_ip}:{self.config.bind_port}"

    @property
    def refused_handshakes(self) -> int:
        return self._curve.refusals.count if self._curve is not None else 0

    def _load_curve(self) -> CurveServer | None:
        c = self.config
        if not c.curve_secret_key_file:
            return None
        try:
            keys = load_server_keys(self.namespace, c.curve_secret_key_file,
                                    c.curve_authorized_keys_dir)
        except KeyFileError as e:
            raise StartupError(str(e)) from None
        return CurveServer(self.namespace, keys)

    def _new_context(self) -> zmq.Context[zmq.Socket[bytes]]:
        """A context with its ZAP handler (when clients are checked) already bound."""
        assert self._loop is not None
        ctx = zmq.Context()
        if self._curve is not None:
            self._curve.open(ctx, self._loop)
        return ctx

    def _close_curve(self) -> None:
        """Close the context's ZAP handler (and watch) so that its term() can return."""
        if self._curve is not None:
            self._curve.close()

    def _bind(self, ctx: zmq.Context[zmq.Socket[bytes]]) -> zmq.Socket[bytes]:
        sock = ctx.socket(zmq.XPUB)
        if self._curve is not None:
            self._curve.secure(sock)
        sock.setsockopt(zmq.SNDHWM, self.config.high_water_mark)
        hwm = _SUBSCRIPTION_HWM
        if self._curve is not None and self._curve.keys.authorized is not None:
            # With a ZAP handler, libzmq 4.3 delivers no subscription at all at a receive
            # HWM of 1 (found by test); a peer that passed ZAP is one we trust anyway.
            hwm += 1
        sock.setsockopt(zmq.RCVHWM, hwm)
        sock.setsockopt(zmq.LINGER, self.config.linger_time)
        sock.setsockopt(zmq.MAXMSGSIZE, self.config.max_msg_size or -1)
        sock.setsockopt(zmq.XPUB_MANUAL, 1)  # subscriptions are applied by _subscriptions
        try:
            sock.bind(self.endpoint)
        except zmq.ZMQError:
            sock.close(linger=0)
            raise
        return sock

    def _listen(self, sock: zmq.Socket[bytes]) -> None:
        assert self._loop is not None
        self._sock = sock
        self._fd = fd = sock.fileno()  # ZMQ_FD
        if self._curve is not None:
            self._curve.watch(sock, self._loop)
        self._loop.add_reader(fd, self._subscriptions)
        self._subscriptions()  # ZMQ_FD is edge-triggered: drain what is there already

    async def start(self) -> None:
        self._curve = self._load_curve()  # raises StartupError naming the field
        self._loop = asyncio.get_running_loop()
        ctx = self._new_context()
        try:
            sock = self._bind(ctx)
        except zmq.ZMQError as e:
            self._close_curve()
            ctx.term()
            raise StartupError(
                f"notifier_config.{self.namespace}: cannot bind the ZeroMQ publisher for "
                f"namespace {self.namespace} on port {self.config.bind_port}: "
                f"{e.strerror}"
            ) from e
        self._ctx = ctx
        self._listen(sock)
        self._cursor = self.store.cursor(self.store.last_lsn + 1, NOTIFIER)
        self._cursor.on_commit(self._on_commit)
        log.info("ZeroMQ notifier for namespace %s listening on %s (hwm %d, %s, %s)",
                 self.namespace, self.endpoint, self.config.high_water_mark,
                 f"wake-ups coalesced over {self.write_notify.max_delay:g}s, leading edge"
                 if self._coalescing else "every commit sent at once",
                 self._curve.describe() if self._curve is not None else "CURVE off")

    async def stop(self) -> None:
        """Stop listening, send what is held back, close within linger_time."""
        if self._cursor is not None:
            self._cursor.close()
            self._cursor = None
        if self._renewing is not None:  # stopped while renewing the socket
            self._renewing.cancel()
            await asyncio.gather(self._renewing, return_exceptions=True)
        if self._sock is None:
            return
        self._unlisten()
        self._flush()
        self._sock.close(linger=self.config.linger_time)
        self._sock = None
        if self._ctx is not None:
            # term() waits (at most linger_time) for queued messages to reach subscribers.
            ctx, self._ctx = self._ctx, None
            self._close_curve()
            await asyncio.get_running_loop().run_in_executor(None, ctx.term)
        log.info("ZeroMQ notifier for namespace %s stopped (sent %d, dropped %d)",
                 self.namespace, self.sent, self.dropped)

    def metrics(self) -> dict[str, int]:
        return {
            "sent": self.sent,
            "dropped": self.dropped,
            "pending": len(self._pending),
            "last_seq_num": self.last_seq_num,
            "wakeups": self.wakeups,
            "refused_handshakes": self.refused_handshakes,  # CURVE: peers turned away
        }

    def _subscriptions(self) -> None:
        """Apply the subscriptions that can match our topic; read and forget the others."""
        sock = self._sock
        while sock is not None:
            try:
                msg = sock.recv(_NOWAIT)
            except zmq.ZMQError:  # EAGAIN: nothing more (or the socket is closing)
                return
            kind, prefix = msg[:1], msg[1:]
            if kind in (b"\x01", b"\x00") and self._topic.startswith(prefix):
                sock.setsockopt(zmq.SUBSCRIBE if kind == b"\x01" else zmq.UNSUBSCRIBE, prefix)
                continue
            self.refused_subscriptions += 1
            self._refused_bytes += len(msg)
            if self.refused_subscriptions == 1 or self.refused_subscriptions % 10000 == 0:
                log.warning("namespace %s: ignored a subscription that cannot match topic %s "
                            "(%d bytes; %d ignored so far)", self.namespace,
                            self._topic.decode(), len(prefix), self.refused_subscriptions)
            if self._refused_bytes > REFUSED_BYTES_LIMIT:
                self._renew()
                return

    def _unlisten(self) -> None:
        if self._fd is not None and self._loop is not None:
            self._loop.remove_reader(self._fd)
        self._fd = None
        if self._curve is not None:
            self._curve.unwatch()  # the monitor goes before its socket closes

    def _renew(self) -> None:
        """Drop every peer and libzmq's subscription tries, then bind again (_rebind)."""
        if self._sock is None or self._renewing is not None:
            return
        log.warning("namespace %s: %d bytes of subscriptions that cannot match topic %s: "
                    "renewing the ZeroMQ socket (subscribers reconnect)", self.namespace,
                    self._refused_bytes, self._topic.decode())
        self._unlisten()
        self._sock.close(linger=0)
        self._sock = None
        self._refused_bytes = 0
        self.renewals += 1
        self._renewing = asyncio.ensure_future(self._rebind())

    async def _rebind(self) -> None:
        """Terminate the old context (it returns once libzmq has freed the old socket, its
        peers and their tries), hand the heap back, bind in a new context."""
        loop = asyncio.get_running_loop()
        old, self._ctx = self._ctx, None
        if old is not None:
            self._close_curve()
            await loop.run_in_executor(None, old.term)
        release_memory(0)
        ctx = self._new_context()
        error: zmq.ZMQError | None = None
        try:
            for _ in range(250):  # the old listener may still be closing
                try:
                    sock = self._bind(ctx)
                except zmq.ZMQError as e:
                    error = e
                    await asyncio.sleep(0.02)
                    continue
                self._ctx = ctx
                self._listen(sock)
                return
            log.error("namespace %s: cannot bind the ZeroMQ publisher again on %s: %s; "
                      "notifications stopped", self.namespace, self.endpoint, error)
        finally:
            self._renewing = None
            if self._ctx is not ctx:
                self._close_curve()
                ctx.term()

    # ------------------------------------------------------------ commit path

    def _on_commit(self) -> None:
        """Inside the commit path: send (or hold) everything the cursor has now."""
        cursor = self._cursor
        if cursor is None:
            return
        while True:
            try:
                batch = cursor.take_ready()
            except LogTrimmed:  # a snapshot replaced the history: continue at its tail
                cursor.seek(self.store.last_lsn + 1)
                continue
            except (StoreClosed, CorruptRecord) as e:
                log.error("namespace %s: notifications stopped: %s", self.namespace, e)
                return
            if batch is None:
                return
            for c in batch.commits:
                self._publish(c.records)

    @property
    def _coalescing(self) -> bool:
        return self.write_notify.enabled and self.write_notify.max_delay > 0

    def _publish(self, records: Sequence[Record]) -> None:
        """Leading edge: send at once unless a window is open; inside one, gather."""
        if self._flush_handle is None or not self._coalescing:
            self._send(records)
            self.wakeups += 1
            self._open_window()
            return
        self._pending.extend(records)
        if len(self._pending) >= MAX_COALESCED:
            self._send_pending()

    def _open_window(self) -> None:
        if self._coalescing and self._loop is not None:
            self._flush_handle = self._loop.call_later(self.write_notify.max_delay,
                                                       self._window_end)

    def _window_end(self) -> None:
        """Send what the window gathered; that send opens the next window. Nothing
        gathered: quiet again, so the next commit goes out at once."""
        self._flush_handle = None
        if self._pending:
            self._send_pending()
            self._open_window()

    def _send_pending(self) -> None:
        batch, self._pending = self._pending, []
        self._send(batch)
        self.wakeups += 1

    def _flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if self._pending:
            self._send_pending()

    def _send(self, records: Sequence[Record]) -> None:
        sock = self._sock
        if sock is None:  # renewing the socket: nobody is connected to miss these
            self.dropped += len(records)
            return
        for r in records:
            try:
                # A PUB send never blocks and never fails at the HWM: a subscriber whose
                # queue is full loses the whole message (multipart is atomic), the others
                # get it. Only a socket error (e.g. closing) lands here.
                sock.send(self._topic, _MORE_NOWAIT)
                sock.send(encode_notification(self.namespace, r), _NOWAIT)
            except zmq.ZMQError as e:
                self._count_drop(e)
            else:
                self.sent += 1
            self.last_seq_num = r.lsn
        # A send may consume the edge of ZMQ_FD: pick up subscriptions that came meanwhile.
        if cast(int, sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
            self._subscriptions()

    def _count_drop(self, error: zmq.ZMQError) -> None:
        self.dropped += 1
        if self.dropped == 1 or self.dropped % 1000 == 0:
            log.error("namespace %s: notification send failed (%s); %d dropped so far",
                      self.namespace, error, self.dropped)

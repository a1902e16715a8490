"""Follower: keeps one namespace of this node identical to the same namespace upstream.

It streams from `last_lsn + 1`, applies each batch in one write that keeps the upstream's
LSNs (progress is the store's own last_lsn, persisted with the data), installs snapshots
when it is behind the upstream's retained log, and reconnects with capped exponential
backoff plus jitter. Nothing is ever skipped: a batch that fails its CRC check or does
not continue the log is refused and the stream is retried from the last applied LSN.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import grpc

from unison.config import UpstreamConfig
from unison.replication import replication_pb2 as pb
from unison.replication import replication_pb2_grpc as pb_grpc
from unison.replication.tls import TLSConfigError, channel_credentials
from unison.replication.wire import CHANNEL_OPTIONS, chunk_crc, from_pb, history_from_pb
from unison.storage import CorruptRecord, NamespaceStore, OutOfOrder, StoreClosed
from unison.storage.history import History
from unison.storage.records import Record, now_ms

log = logging.getLogger(__name__)


# Decoded batches waiting to be applied, and how many records one write may combine.
QUEUE_DEPTH = 16
COALESCE_RECORDS = 20_000
# How long a lost upstream may stay lost before the follower stops counting as caught up:
# long enough to ride out a reconnect after an upstream restart (backoff starts at 50 ms),
# short enough that /readyz soon tells a load balancer the data is going stale.
DISCONNECT_GRACE_S = 2.0
# Until the upstream first answers, gRPC itself reports what goes wrong (a DNS lookup that
# fails, a refused or timed-out connection) with the real reason; resolvers can take 10-20 s
# to give up, so the idle timeout must not cut that short. This bounds the wait.
CONNECT_TIMEOUT_S = 60.0
# A failure that repeats with the same reason is logged at most this often.
REPEAT_LOG_INTERVAL_S = 30.0


class _Refused(Exception):
    """The upstream sent something this follower must not apply; retry the stream."""


class _Diverged(_Refused):
    """The upstream's history is not the one this namespace holds: apply nothing from it."""


@dataclass(frozen=True, slots=True)
class Divergence:
    """Why a follower stopped following: its history and the upstream's differ."""

    local: str
    upstream: str
    detail: str


@dataclass(slots=True)
class _Batch:
    records: list[Record]


@dataclass(slots=True)
class _End:
    error: BaseException | None


_Item = _Batch | _End | pb.StreamResponse


class Follower:
    def __init__(self, store: NamespaceStore, upstream: UpstreamConfig, *,
                 backoff_base_s: float = 0.05, backoff_cap_s: float = 2.0,
                 idle_timeout_s: float = 10.0, disconnect_grace_s: float = DISCONNECT_GRACE_S,
                 connect_timeout_s: float = CONNECT_TIMEOUT_S, name: str = "") -> None:
        self.store = store
        self.upstream = upstream
        self.namespace = store.name
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        # Heartbeats arrive every second on an idle stream; silence this long means the
        # connection is dead even if TCP has not noticed.
        self.idle_timeout_s = idle_timeout_s
        self.disconnect_grace_s = disconnect_grace_s
        self.connect_timeout_s = max(connect_timeout_s, idle_timeout_s)
        self.name = name or f"{upstream.name}/{store.name}"
        self._task: asyncio.Task[None] | None = None
        self._channel: grpc.aio.Channel | None = None
        # Status, read by /stats, /metrics and /readyz.
        self.connected = False
        self.upstream_lsn: int | None = None  # unknown until the upstream first speaks
        self.last_contact: float | None = None  # monotonic time of the last message
        # Monotonic time the upstream was lost (or first failed); None while streaming.
        self.disconnected_since: float | None = None
        self.last_applied_ts_ms = 0  # origin commit time of the newest applied record
        self.last_sent_ms = 0
        self.attempts = 0
        self.reconnects = 0
        self.records_applied = 0
        self.batches_applied = 0
        self.snapshots_installed = 0
        self.refused_batches = 0
        self.snapshots_refused = 0  # installs aborted: a chunk failed its checksum
        self.last_error = ""
        # Set while the upstream's history differs from this namespace's (nothing applied).
        self.divergence: Divergence | None = None
        self.upstream_history: History | None = None
        self._snapshot_open = False
        self._progressed = False
        self._started = time.monotonic()
        # Rate limit of the interruption warning: (reason, monotonic time, repeats since).
        self._logged: tuple[str, float, int] | None = None

    # ------------------------------------------------------------ lifecycle

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"follower-{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._close_channel()
        self.connected = False

    async def _close_channel(self) -> None:
        if self._channel is not None:
            channel, self._channel = self._channel, None
            await channel.close(grace=None)

    # ------------------------------------------------------------ status

    @property
    def applied_lsn(self) -> int:
        return self.store.last_lsn

    @property
    def lag_records(self) -> int | None:
        if self.upstream_lsn is None:
            return None
        return max(0, self.upstream_lsn - self.applied_lsn)

    @property
    def lag_seconds(self) -> float | None:
        lag = self.lag_records
        if lag is None:
            return None
        if lag == 0:
            return 0.0
        # Behind: the newest data we hold was committed at the origin this long ago.
        since = self.last_applied_ts_ms or self.last_sent_ms
        return max(0.0, (now_ms() - since) / 1000) if since else None

    @property
    def disconnected_seconds(self) -> float | None:
        """How long the upstream has been lost; None while streaming from it."""
        if self.disconnected_since is None:
            return None
        return time.monotonic() - self.disconnected_since

    @property
    def caught_up(self) -> bool:
        return self.not_ready_reason() is None

    def not_ready_reason(self) -> str | None:
        """Why this follower is not caught up, naming its upstream; None when it is.

        Caught up = connected (or lost for at most disconnect_grace_s) with a known lag within
        segment_lag_threshold. The lag alone is not enough: upstream_lsn is the last value the
        upstream reported, so without this check a lost upstream would look caught up forever.
        """
        up = self.upstream
        where = f"upstream {up.name} ({up.upstream_address})"
        if self.divergence is not None:
            d = self.divergence
            return (f"history mismatch with {where}: this node holds history {d.local}, the "
                    f"upstream has {d.upstream} ({d.detail}); following stopped, nothing "
                    "applied (see README: a diverged history)")
        lost = self.disconnected_seconds
        if lost is not None and (lost > self.disconnect_grace_s or self.upstream_lsn is None):
            since = ("never reached since start" if self.upstream_lsn is None
                     else f"disconnected for {lost:.1f}s")
            error = f"; last error: {self.last_error}" if self.last_error else ""
            return f"{where} unreachable: {since}{error}"
        lag = self.lag_records
        if lag is None:
            return f"{where}: waiting for the first message"
        if lag > up.segment_lag_threshold:
            return (f"{lag} records behind {where} (segment_lag_threshold "
                    f"{up.segment_lag_threshold})")
        return None

    def status(self) -> dict[str, Any]:
        reason = self.not_ready_reason()
        lost = self.disconnected_seconds
        return {
            "name": self.upstream.name,
            "upstream": self.upstream.upstream_address,
            "namespace": self.namespace,
            "connected": self.connected,
            "applied_lsn": self.applied_lsn,
            "upstream_lsn": self.upstream_lsn,
            "lag_records": self.lag_records,
            "lag_seconds": self.lag_seconds,
            "segment_lag_threshold": self.upstream.segment_lag_threshold,
            "caught_up": reason is None,
            "not_ready_reason": reason,
            "disconnected_seconds": None if lost is None else round(lost, 3),
            "last_contact_seconds_ago": (None if self.last_contact is None
                                         else round(time.monotonic() - self.last_contact, 3)),
            "connect_attempts": self.attempts,
            "reconnects": self.reconnects,
            "records_applied": self.records_applied,
            "batches_applied": self.batches_applied,
            "snapshots_installed": self.snapshots_installed,
            "refused_batches": self.refused_batches,
            "snapshots_refused": self.snapshots_refused,
            "last_error": self.last_error,
            "history": str(self.store.history),
            "upstream_history": None if self.upstream_history is None
            else str(self.upstream_history),
            "history_mismatch": self.divergence is not None,
        }

    # ------------------------------------------------------------ the loop

    def _backoff(self, failures: int) -> float:
        delay = min(self.backoff_cap_s, self.backoff_base_s * 2 ** min(failures, 30))
        return delay + random.uniform(0, delay / 2)  # jitter: spread reconnect storms

    async def _run(self) -> None:
        addr = self.upstream.upstream_address
        failures = 0
        while True:
            self.attempts += 1
            from_lsn = self.store.last_lsn + 1
            # Every attempt at info only while things work; retries of a failing upstream
            # are summed up by the (rate-limited) interruption warning instead.
            log.log(logging.DEBUG if self._logged else logging.INFO,
                    "replication: connecting to %s for namespace %s (attempt %d, from lsn %d)",
                    addr, self.namespace, self.attempts, from_lsn)
            self._progressed = False
            try:
                await self._follow_once(from_lsn)
                reason = "upstream ended the stream"
            except asyncio.CancelledError:
                raise
            except grpc.aio.AioRpcError as e:
                reason = f"{e.code().name}: {e.details()}"
            except _Refused as e:
                reason = str(e)
            except StoreClosed:
                log.info("replication: namespace %s closed; follower of %s stops",
                         self.namespace, addr)
                return
            except TLSConfigError as e:
                reason = f"TLS configuration: {e}"
            except Exception as e:  # keep following whatever happens; say what it was
                log.exception("replication: follower of %s for namespace %s failed",
                              addr, self.namespace)
                reason = f"{type(e).__name__}: {e}"
            finally:
                self.connected = False
                if self.disconnected_since is None:  # kept across failed reconnects
                    self.disconnected_since = time.monotonic()
                await self._close_channel()
            if self._snapshot_open:
                # A half-built snapshot is dropped; the state before it stays served.
                with contextlib.suppress(StoreClosed):
                    await self.store.abort_snapshot_install()
                self._snapshot_open = False
            self.last_error = reason
            self.reconnects += 1
            # A stream that applied something resets the backoff; repeated failures grow it.
            failures = 0 if self._progressed else failures + 1
            delay = self._backoff(failures)
            self._log_interruption(reason, delay)
            await asyncio.sleep(delay)

    def _log_interruption(self, reason: str, delay: float) -> None:
        """Warn with the reason; the same reason again only every REPEAT_LOG_INTERVAL_S."""
        now = time.monotonic()
        if self._logged and self._logged[0] == reason \
                and now - self._logged[1] < REPEAT_LOG_INTERVAL_S:
            self._logged = (reason, self._logged[1], self._logged[2] + 1)
            log.debug("replication: stream from %s for namespace %s interrupted again (%s)",
                      self.upstream.upstream_address, self.namespace, reason)
            return
        repeats = self._logged[2] if self._logged and self._logged[0] == reason else 0
        again = f" ({repeats} more time(s) since the last warning)" if repeats else ""
        log.warning("replication: stream from %s for namespace %s interrupted (%s)%s; "
                    "reconnect attempt %d in %.2fs from lsn %d", self.upstream.upstream_address,
                    self.namespace, reason, again, self.attempts + 1, delay,
                    self.store.last_lsn + 1)
        self._logged = (reason, now, 0)

    def _open_channel(self) -> grpc.aio.Channel:
        up = self.upstream
        if up.allow_insecure:
            return grpc.aio.insecure_channel(up.upstream_address, options=CHANNEL_OPTIONS)
        creds = channel_credentials(up.ca_path, up.cert_path, up.key_path,
                                    section=f"relayer_config.{up.name}")
        return grpc.aio.secure_channel(up.upstream_address, creds, options=CHANNEL_OPTIONS)

    async def _follow_once(self, from_lsn: int) -> None:
        """One stream from from_lsn until it breaks.

        A reader task receives and decodes messages while this task applies them, so
        decoding the next batch overlaps the fsync of the previous one; batches that
        queued up meanwhile are applied together in one write (the follower's own group
        commit), which keeps a slow disk from turning into ever-growing lag.
        """
        self._channel = self._open_channel()
        stub = pb_grpc.ReplicationStub(self._channel)
        call = stub.Stream(pb.StreamRequest(namespace=self.namespace, from_lsn=from_lsn,
                                            follower=self.name))
        queue: asyncio.Queue[_Item] = asyncio.Queue(maxsize=QUEUE_DEPTH)
        reader = asyncio.get_running_loop().create_task(
            self._read(call, queue, from_lsn), name=f"follower-read-{self.name}")
        try:
            await self._apply_loop(queue)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reader
            call.cancel()

    async def _read(self, call: Any, queue: asyncio.Queue[_Item], from_lsn: int) -> None:
        """Receive, decode and queue messages; the stream's end (or error) is queued last."""
        answered = False
        try:
            while True:
                # Before the first answer the connection is still being made and gRPC
                # reports failures itself, with their reason; after it, silence this long
                # means a dead stream.
                wait = self.idle_timeout_s if answered else self.connect_timeout_s
                async with asyncio.timeout(wait):
                    msg = await call.read()
                answered = True
                if msg is grpc.aio.EOF:
                    await queue.put(_End(None))
                    return
                if not self.connected:
                    self.connected = True
                    self.disconnected_since = None
                    self._logged = None  # a failure after this is news again
                    log.info("replication: streaming namespace %s from %s (from lsn %d)",
                             self.namespace, self.upstream.upstream_address, from_lsn)
                self.last_contact = time.monotonic()
                kind = msg.WhichOneof("body")
                if kind == "heartbeat":
                    hb = msg.heartbeat
                    if hb.HasField("history"):
                        await self._check_history(hb, from_lsn)
                    self.upstream_lsn = hb.upstream_lsn
                    self.last_sent_ms = hb.sent_ms
                    continue
                if kind == "batch":
                    b = msg.batch
                    self.last_sent_ms = b.sent_ms
                    if b.records:
                        try:
                            records = from_pb(b.records)
                        except ValueError as e:
                            await queue.put(_End(self._refuse(b.records[0].lsn,
                                                              b.records[-1].lsn, e)))
                            return
                        await queue.put(_Batch(records))
                    self.upstream_lsn = b.upstream_lsn
                    continue
                await queue.put(msg)
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            if answered:
                why = f"no message from the upstream for {self.idle_timeout_s:.0f}s"
            else:
                state = self._channel.get_state().name if self._channel else "closed"
                why = (f"no answer from the upstream within {self.connect_timeout_s:.0f}s "
                       f"(gRPC channel {state}: still resolving the name or connecting)")
            await queue.put(_End(_Refused(why)))
        except Exception as e:  # handed to the applier, which raises it in order
            await queue.put(_End(e))

    async def _check_history(self, hb: pb.Heartbeat, from_lsn: int) -> None:
        """Before anything is applied: the upstream's history must be this namespace's (or
        this namespace holds nothing yet, and takes it). Raises _Diverged otherwise."""
        upstream = history_from_pb(hb.history)
        if upstream is None:
            return  # an upstream from before history identities: nothing to compare
        self.upstream_history = upstream
        store = self.store
        local, held = store.history, store.last_lsn
        if local != upstream:
            if not (held == 0 or store.history_unverified or upstream.continues(local, held)):
                detail = (f"this node holds lsn {held}, the upstream is at lsn "
                          f"{hb.upstream_lsn}")
                raise self._diverged(local, upstream, detail)
            await store.adopt_history(upstream)
        own = store.record_crc(from_lsn - 1) if hb.prev_lsn == from_lsn - 1 else None
        if own is not None and own != hb.prev_crc32:
            detail = (f"same id, but the record at lsn {hb.prev_lsn} differs (crc "
                      f"{own:#010x} here, {hb.prev_crc32:#010x} upstream): the upstream was "
                      "restored from an older copy and wrote past it")
            raise self._diverged(store.history, upstream, detail)
        if self.divergence is not None:
            log.warning("replication: namespace %s: upstream %s has this node's history "
                        "again (%s); following resumes", self.namespace,
                        self.upstream.upstream_address, upstream)
            self.divergence = None

    def _diverged(self, local: History, upstream: History, detail: str) -> _Diverged:
        first = self.divergence is None
        self.divergence = Divergence(str(local), str(upstream), detail)
        if first:
            log.error("replication: namespace %s: history mismatch with %s: this node holds "
                      "%s, the upstream has %s (%s). Following stopped; nothing from this "
                      "upstream is applied. Way out (README, 'A diverged history'): resync "
                      "this node's namespace from scratch, or restore the upstream from it.",
                      self.namespace, self.upstream.upstream_address, local, upstream, detail)
        return _Diverged(f"history mismatch: local {local}, upstream {upstream} ({detail})")

    async def _apply_loop(self, queue: asyncio.Queue[_Item]) -> None:
        held: _Item | None = None
        while True:
            item = held if held is not None else await queue.get()
            held = None
            if isinstance(item, _End):
                if item.error is not None:
                    raise item.error
                return
            if isinstance(item, _Batch):
                records = list(item.records)
                while len(records) < COALESCE_RECORDS and not queue.empty():
                    nxt = queue.get_nowait()
                    if not isinstance(nxt, _Batch):
                        held = nxt
                        break
                    records += nxt.records
                await self._apply(records)
                if self.upstream_lsn is None or self.upstream_lsn < self.applied_lsn:
                    self.upstream_lsn = self.applied_lsn
                self._progressed = True
                continue
            if await self._handle_snapshot(item):
                self._progressed = True

    async def _handle_snapshot(self, msg: pb.StreamResponse) -> bool:
        kind = msg.WhichOneof("body")
        if kind == "snapshot_begin":
            lsn = msg.snapshot_begin.lsn
            await self._snapshot_history(msg.snapshot_begin)
            log.warning("replication: namespace %s is behind the retained log of %s; "
                        "installing a snapshot at lsn %d (replaces local data)",
                        self.namespace, self.upstream.upstream_address, lsn)
            await self.store.begin_snapshot_install()
            self._snapshot_open = True
            self.upstream_lsn = max(self.upstream_lsn or 0, lsn)
            return False
        if kind == "snapshot_chunk":
            if not self._snapshot_open:
                raise _Refused("snapshot chunk without a snapshot begin")
            chunk = msg.snapshot_chunk
            items = [(kv.key, kv.value) for kv in chunk.items]
            if chunk.HasField("crc32") and chunk_crc(items) != chunk.crc32:
                self.snapshots_refused += 1
                why = (f"snapshot chunk of {len(items)} keys failed its CRC32 check (sent "
                       f"{chunk.crc32:#010x}, computed {chunk_crc(items):#010x}); install "
                       "aborted, the state before it is kept")
                log.error("replication: namespace %s from %s: %s", self.namespace,
                          self.upstream.upstream_address, why)
                raise _Refused(why)
            await self.store.load_snapshot_items(items)
            return False
        if kind == "snapshot_end":
            if not self._snapshot_open:
                raise _Refused("snapshot end without a snapshot begin")
            await self.store.finish_snapshot_install(msg.snapshot_end.lsn)
            self._snapshot_open = False
            self.snapshots_installed += 1
            log.info("replication: namespace %s: snapshot from %s installed at lsn %d "
                     "(%d keys)", self.namespace, self.upstream.upstream_address,
                     msg.snapshot_end.lsn, msg.snapshot_end.keys)
            return True
        raise _Refused(f"unexpected message {kind!r} from the upstream")

    async def _snapshot_history(self, begin: pb.SnapshotBegin) -> None:
        """A snapshot replaces the data, not the history: it must be this namespace's (the
        stream's first message was checked already; this catches a change in between)."""
        upstream = history_from_pb(begin.history)
        if upstream is None or upstream == self.store.history:
            return
        if self.store.last_lsn == 0 or self.store.history_unverified:
            await self.store.adopt_history(upstream)
            return
        raise self._diverged(self.store.history, upstream,
                             f"snapshot at lsn {begin.lsn} is of another history")

    def _refuse(self, first: int, last: int, error: Exception) -> _Refused:
        self.refused_batches += 1
        log.error("replication: refused batch of lsn %d..%d for namespace %s from %s: %s "
                  "(nothing applied; will retry from lsn %d)", first, last, self.namespace,
                  self.upstream.upstream_address, error, self.store.last_lsn + 1)
        return _Refused(f"refused batch lsn {first}..{last}: {error}")

    async def _apply(self, records: list[Record]) -> None:
        try:
            await self.store.apply_records(records)
        except (CorruptRecord, OutOfOrder) as e:
            raise self._refuse(records[0].lsn, records[-1].lsn, e) from e
        self.records_applied += len(records)
        self.batches_applied += 1
        self.last_applied_ts_ms = records[-1].ts_ms

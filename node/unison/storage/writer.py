"""Group commit for a namespace's local writes, in one supervised writer task.

`submit()` queues mutations; the writer takes everything that queued up while the
previous batch was syncing, assigns LSNs, writes data + log + meta as one batch, waits
until it is durable, then answers every future in it (and publishes the records to the
store's commit feed). In interval mode (storage_config.wal_fsync_interval) it answers
once the batch is written; fsync_interval.py syncs the WAL, and stalls the store when
that sync is slow, as the writer does here for a commit's own sync. A failed commit
stops the store taking writes (its batch may still reach disk under LSNs the next one
would reuse): `store.failed` says why until restart.

Supervised: if the writer task itself dies (an exception nothing expected, or a cancel
nobody asked for), the store is marked failed the same way, every queued and in-flight
write fails at once with that reason, and new writes are refused immediately.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

from rocksdict import WriteBatch

from unison.storage.errors import StoreClosed, WriteUnavailable
from unison.storage.layout import META_LAST_LSN, U64
from unison.storage.records import Op, Record, encode_record, lsn_key, now_ms

if TYPE_CHECKING:
    from unison.storage.engine import NamespaceStore

log = logging.getLogger(__name__)

MAX_GROUP_BYTES = 32 * 1024 * 1024


class Mutation(NamedTuple):  # a tuple: built on every PUT, cheaper than a dataclass
    op: Op
    key: bytes
    value: bytes = b""
    # With a Merger: the writer appends whether this PUT changed the key's state.
    changed: list[bool] | None = None


class Merger(NamedTuple):
    """Merging PUTs of some keys into their stored value (CRDT state, see
    unison.crdt.stored): `merge(key, stored or None, written)` -> (value to store,
    changed?). The writer calls it while taking a group, so merges of one key are
    serialized with every other write of it."""

    prefixes: tuple[bytes, ...]
    merge: Callable[[bytes, bytes | None, bytes], tuple[bytes, bool]]


# A queued local write: its mutations and the future its writer awaits.
_Pending = tuple[list[Mutation], "asyncio.Future[list[int]]"]


def _records_of(group: list[_Pending], lsn: int, ts: int) -> list[Record]:
    out = []
    for mutations, _ in group:
        for m in mutations:
            out.append(Record(lsn, m.op, m.key, m.value, ts).with_crc())
            lsn += 1
    return out


class _Group(NamedTuple):
    """One batch taken from the queue, written but not yet durable."""

    pending: list[_Pending]
    wb: WriteBatch
    first: int
    last: int
    ts: int
    size: int
    puts: int
    records: list[Record] | None


class GroupCommitWriter:
    """The queue and the writer task of one store."""

    def __init__(self, store: NamespaceStore) -> None:
        self.store = store
        self._queue: list[_Pending] = []
        self._inflight: list[_Pending] = []  # taken from the queue, not yet answered
        self._wakeup = asyncio.Event()
        self._stopping = False
        self._loop = asyncio.get_running_loop()
        self._task = self._loop.create_task(self._run(), name=f"writer-{store.name}")
        self._task.add_done_callback(self._ended)

    def submit(self, mutations: list[Mutation]) -> asyncio.Future[list[int]]:
        failed = self.store.failed
        if failed is not None:
            raise StoreClosed(failed)
        if self._stopping and self._task.done():
            raise StoreClosed(f"namespace {self.store.name} is not accepting writes")
        if self.store.stalled is not None:
            raise WriteUnavailable(self.store.stalled)
        if len(self._queue) >= self.store.max_pending_writes:
            raise WriteUnavailable(
                f"namespace {self.store.name}: write queue full ({len(self._queue)} writes "
                "waiting, storage_config.max_pending_writes); retry later")
        fut: asyncio.Future[list[int]] = self._loop.create_future()
        self._queue.append((mutations, fut))
        self._wakeup.set()
        return fut

    async def stop(self) -> None:
        """Commit and answer everything queued so far, then end the task."""
        self._stopping = True
        self._wakeup.set()
        # wait(), not await: if it died, _ended() has failed its writes and said why.
        await asyncio.wait([self._task])

    # ------------------------------------------------------------ the task

    async def _run(self) -> None:
        queue_wait = self._wakeup.wait
        while True:
            while not self._queue:
                if self._stopping:
                    return
                await queue_wait()
                self._wakeup.clear()
            if self.store.failed is not None:  # a commit failed: answer the rest at once
                self._fail_all(StoreClosed(self.store.failed))
                continue
            if self.store.stalled is not None:  # interval mode: the periodic sync is stuck
                self._fail_all(WriteUnavailable(self.store.stalled))
                continue
            await self._commit_group()

    def _ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            if self._stopping:
                return
            why = "the writer task was cancelled"
        elif (e := task.exception()) is not None:
            log.error("namespace %s: writer task died", self.store.name, exc_info=e)
            why = f"the writer task died: {type(e).__name__}: {e}"
            # Its frames hold RocksDB handles, which keep the database (and its LOCK) open
            # for as long as anything (a log handler) keeps the exception.
            traceback.clear_frames(e.__traceback__)
        else:
            return
        self.store.fail(why)
        self._fail_all(StoreClosed(self.store.failed))

    def _sync_stalled(self, group: list[_Pending]) -> None:
        """The batch's sync is past storage_config.sync_timeout: answer its writes and the
        queued ones 503 now (they may still be applied) and refuse new ones until it ends."""
        store = self.store
        t = store.sync_timeout
        store.stall()
        error = WriteUnavailable(
            f"namespace {store.name}: the write was not confirmed durable within {t:g}s "
            "(storage_config.sync_timeout): the WAL sync is stalled; it may still be applied")
        pending, self._queue = group + self._queue, []
        for _, fut in pending:
            if not fut.done():
                fut.set_exception(error)

    def _fail_all(self, error: StoreClosed) -> None:  # WriteUnavailable: a 503
        pending = self._inflight + self._queue
        self._inflight, self._queue = [], []
        for _, fut in pending:
            if not fut.done():
                fut.set_exception(error)

    # ------------------------------------------------------------ one batch

    async def _commit_group(self) -> None:
        """Write what queued up (up to about MAX_GROUP_BYTES) as one synced batch, then
        acknowledge it. Runs once per batch, so the per-write work here is kept minimal."""
        store = self.store
        async with store._lock:  # LSNs are assigned under the lock: nothing else moves them
            db = store._require()
            g = self._take()
            if g.last < g.first:  # only empty writes: nothing to store
                self._acknowledge(g.pending, g.first)
                return
            g.wb.put(META_LAST_LSN, U64.pack(g.last))
            # Interval mode does not sync here: its periodic sync has its own bound.
            timer = (self._loop.call_later(store.sync_timeout, self._sync_stalled, g.pending)
                     if store.sync_timeout > 0 and not store.wal_fsync_interval else None)
            try:
                await store._commit_write(db, g.wb)
            except Exception as e:  # nothing here is acknowledged; stop taking writes
                store.fail(f"commit of {g.last - g.first + 1} records failed: {e}")
                self._fail_all(StoreClosed(store.failed))
                return
            finally:
                if timer is not None:
                    timer.cancel()
                    store.unstall()
            store.last_lsn = g.last
        store.stats.committed(g.last - g.first + 1, g.size, g.puts)
        records = g.records
        if records is None and store.feed.active:  # subscribed while the batch was syncing
            records = _records_of(g.pending, g.first, g.ts)
        store.feed.publish(records or ())
        self._inflight = []
        self._acknowledge(g.pending, g.first)

    def _take(self) -> _Group:
        """Take queued writes into one WriteBatch (no Record objects unless the feed wants
        them, one pass over the mutations)."""
        store = self.store
        queue = self._queue
        ts = now_ms()
        first = lsn = store.last_lsn + 1
        wb = WriteBatch(raw_mode=True)
        data_h, log_h = store._data_h, store._log_h
        records: list[Record] | None = [] if store.feed.active else None
        size = puts = taken = 0
        merger = store.merger
        overlay: dict[bytes, bytes | None] = {}  # merged values earlier in this group
        for mutations, _ in queue:
            if merger is not None:
                self._merge(merger, mutations, overlay)
            for m in mutations:
                op, key, value = m.op, m.key, m.value
                if op is Op.PUT:
                    wb.put(key, value, data_h)
                    puts += 1
                else:
                    wb.delete(key, data_h)
                crc, encoded = encode_record(op, ts, key, value)
                wb.put(lsn_key(lsn), encoded, log_h)
                if records is not None:
                    records.append(Record(lsn, op, key, value, ts, crc))
                size += len(encoded)
                lsn += 1
            taken += 1
            if size >= MAX_GROUP_BYTES:
                break
        if taken == len(queue):
            group, self._queue = queue, []
        else:
            group = queue[:taken]
            del queue[:taken]
        self._inflight = group
        return _Group(group, wb, first, lsn - 1, ts, size, puts, records)

    def _merge(self, merger: Merger, mutations: list[Mutation],
               overlay: dict[bytes, bytes | None]) -> None:
        """Replace each PUT of a merged key by its merge with the key's current value (the
        store's, or an earlier write's in this group), in place."""
        data = self.store._data
        for i, m in enumerate(mutations):
            key = m.key
            if not key.startswith(merger.prefixes):
                continue
            if m.op is not Op.PUT:
                overlay[key] = None
                continue
            current = overlay[key] if key in overlay else data.get(key)
            value, changed = merger.merge(key, current, m.value)
            if m.changed is not None:
                m.changed.append(changed)
            if value is not m.value:
                mutations[i] = Mutation(Op.PUT, key, value, m.changed)
            overlay[key] = value

    @staticmethod
    def _acknowledge(group: list[_Pending], lsn: int) -> None:
        for mutations, fut in group:
            n = len(mutations)
            if not fut.done():  # its request may have been cancelled meanwhile
                fut.set_result([lsn] if n == 1 else list(range(lsn, lsn + n)))
            lsn += n

"""One way to read a namespace's log: replay from an LSN, then follow the tail.

Every reader of committed records goes through a `LogCursor` (`store.cursor(from_lsn)`):
the gRPC replication stream, the SSE watch and the ZeroMQ notifier are adapters that
only encode what it yields. What the cursor guarantees, in one place:

- records come in LSN order, whole commits at a time, and only once durable;
- replay reads RocksDB in bounded batches (`max_records`, about `max_bytes`);
- at the tail it serves the newest commits from the store's `CommitFeed`, a byte-bounded
  window shared by every cursor, so N readers at the tail cost one copy (and each commit
  is encoded once per wire form, see `Commit.encoded`);
- backpressure: a cursor only holds its position. A reader slower than the writers drops
  out of the window and reads RocksDB again; nothing is buffered on its behalf;
- no polling: an idle cursor waits on a future that the next commit resolves, and
  yields a `Heartbeat` after `heartbeat` seconds without one (None: waits forever);
- `LogTrimmed` when its position is older than the retained log, or when a snapshot
  install replaced the history it was reading (the replication server answers with a
  snapshot, the watch with 410 or an error event); `StoreClosed` once the store closes.

Push consumers that must act inside the commit (the notifier sends before the commit
path returns) register `on_commit` and drain with the non-blocking `take_ready()`.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from unison.storage.errors import LogTrimmed, StoreClosed
from unison.storage.records import Record

if TYPE_CHECKING:
    from types import TracebackType

log = logging.getLogger(__name__)

# Newest commits kept in memory per namespace while any cursor is open.
TAIL_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class CursorLimits:
    """How much one cursor hands over at a time, and when an idle one says so."""

    max_records: int = 1000
    max_bytes: int = 1024 * 1024  # about: a batch ends at the commit that reaches it
    heartbeat: float | None = None  # idle seconds before a Heartbeat; None: never


DEFAULT_LIMITS = CursorLimits()
# Every stream's limits, in one place (the adapters may only change the heartbeat).
# A replication batch is held (encoded) while its peer has not read it: about max_bytes
# per stream that does not read, so it stays small (grpc_config.max_streams bounds them).
REPLICATION_STREAM = CursorLimits(max_records=2000, max_bytes=512 * 1024, heartbeat=1.0)
WATCH_STREAM = CursorLimits(max_records=500, max_bytes=1024 * 1024, heartbeat=10.0)
# The notifier drains inside the commit path; it never waits, so it has no heartbeat.
NOTIFIER = CursorLimits(max_records=1024, max_bytes=4 * 1024 * 1024, heartbeat=None)

CommitListener = Callable[[Sequence[Record]], None]


@dataclass(slots=True, eq=False)
class Commit:
    """Consecutive durable records: one commit from the feed, or one read of the log."""

    first: int
    last: int
    records: Sequence[Record]
    size: int = 0
    _encoded: dict[str, bytes] = field(default_factory=dict)

    def encoded(self, form: str, encode: Callable[[Sequence[Record]], bytes]) -> bytes:
        """`encode(records)`, computed once per commit and form for every reader sharing it."""
        out = self._encoded.get(form)
        if out is None:
            out = self._encoded[form] = encode(self.records)
        return out


@dataclass(frozen=True, slots=True)
class CommittedBatch:
    """What a cursor yields: whole commits from `first` to `last`, all durable."""

    commits: Sequence[Commit]
    durable_lsn: int  # the store's latest durable LSN when the batch was taken

    @property
    def first(self) -> int:
        return self.commits[0].first

    @property
    def last(self) -> int:
        return self.commits[-1].last

    def records(self) -> Iterator[Record]:
        for c in self.commits:
            yield from c.records


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Yielded after `heartbeat` idle seconds: nothing new, the store is at `durable_lsn`."""

    durable_lsn: int


class LogSource(Protocol):
    """What a cursor needs of a store."""

    name: str
    last_lsn: int
    first_lsn: int

    @property
    def closed(self) -> bool: ...

    def read_log(self, from_lsn: int, max_records: int, max_bytes: int) -> list[Record]: ...


class CommitFeed:
    """The newest durable commits of one store, its commit listeners, and who waits.

    The store calls `publish()` after each durable commit, in LSN order. Records are
    built for it only while `active` (a cursor or a listener exists), so a node nobody
    reads from pays nothing for it.
    """

    def __init__(self, max_bytes: int = TAIL_BYTES) -> None:
        self.max_bytes = max_bytes
        self.readers = 0  # open cursors: while any, commits are kept in memory
        self.generation = 0  # bumped when a snapshot install replaces the history
        self._commits: list[Commit] = []
        self._bytes = 0
        self._listeners: list[CommitListener] = []
        self._waiters: set[asyncio.Future[None]] = set()

    @property
    def active(self) -> bool:
        return self.readers > 0 or bool(self._listeners)

    def subscribe(self, listener: CommitListener) -> Callable[[], None]:
        """Call `listener(records)` on the event loop after each durable commit, in LSN
        order (in subscription order, inside the commit path); `()` after a snapshot
        install. Returns the unsubscribe function."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    # ------------------------------------------------------------ the store's side

    def publish(self, records: Sequence[Record]) -> None:
        """`records` are durable (the store's last_lsn already covers them)."""
        if records and self.readers:
            self._keep(records)
        self._tell(records)

    def replaced(self) -> None:
        """A snapshot install replaced the history: cursors reading it must start over."""
        self.generation += 1
        self.forget_tail()
        self._tell(())

    def forget_tail(self) -> None:
        self._commits.clear()
        self._bytes = 0

    def close(self) -> None:
        self._wake()

    def _tell(self, records: Sequence[Record]) -> None:
        for listener in list(self._listeners):
            try:
                listener(records)
            except Exception:  # a broken listener must not break the commit path
                log.exception("commit listener failed")
        self._wake()

    def _wake(self) -> None:
        if self._waiters:
            waiters, self._waiters = self._waiters, set()
            for fut in waiters:
                if not fut.done():
                    fut.set_result(None)

    def _keep(self, records: Sequence[Record]) -> None:
        commits = self._commits
        if commits and records[0].lsn != commits[-1].last + 1:
            self.forget_tail()  # not continuous (nobody was reading meanwhile): start over
        size = sum(r.size for r in records)
        commits.append(Commit(records[0].lsn, records[-1].lsn, records, size))
        self._bytes += size
        if self._bytes > self.max_bytes and len(commits) > 1:
            drop = 0
            while self._bytes > self.max_bytes // 2 and drop < len(commits) - 1:
                self._bytes -= commits[drop].size
                drop += 1
            del commits[:drop]  # halve at once: trimming stays amortised O(1) per commit

    # ------------------------------------------------------------ the cursors' side

    def waiter(self) -> asyncio.Future[None]:
        """A future the next commit (or a replace, or close) resolves; `discard` it after."""
        fut = asyncio.get_running_loop().create_future()
        self._waiters.add(fut)
        return fut

    def discard(self, fut: asyncio.Future[None]) -> None:
        self._waiters.discard(fut)

    def take(self, next_lsn: int, durable: int, first_retained: int, max_records: int,
             max_bytes: int) -> list[Commit]:
        """Whole retained commits from next_lsn on (at least one, then within the limits);
        [] when next_lsn is not the start of a retained, durable commit."""
        commits = self._commits
        if (not commits or next_lsn < commits[0].first or next_lsn > commits[-1].last
                or next_lsn < first_retained):
            return []
        i = bisect.bisect_right(commits, next_lsn, key=lambda c: c.first) - 1
        if commits[i].first != next_lsn:
            return []
        out: list[Commit] = []
        count = size = 0
        for c in commits[i:]:
            n = c.last - c.first + 1
            if c.last > durable or (out and (count + n > max_records or size + c.size > max_bytes)):
                break
            out.append(c)
            count, size = count + n, size + c.size
        return out


class LogCursor:
    """Replays a store's log from an LSN, then follows its tail (see the module docstring).

    Iterate it (`async for item in cursor`: `CommittedBatch` or `Heartbeat`), or drain it
    with `take_ready()`. Close it (or use it as a context manager) when done.
    """

    def __init__(self, store: LogSource, feed: CommitFeed, from_lsn: int,
                 limits: CursorLimits = DEFAULT_LIMITS) -> None:
        self.store = store
        self.next_lsn = max(from_lsn, 1)
        self.max_records = limits.max_records
        self.max_bytes = limits.max_bytes
        self.heartbeat = limits.heartbeat
        self._feed = feed
        self._generation = feed.generation
        self._waiter: asyncio.Future[None] | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self.closed = False
        feed.readers += 1

    def __aiter__(self) -> LogCursor:
        return self

    async def __anext__(self) -> CommittedBatch | Heartbeat:
        while True:
            batch = self.take_ready()
            if batch is not None:
                return batch
            if self.closed:
                raise StopAsyncIteration
            if not await self._wait():
                return Heartbeat(self.store.last_lsn)

    def take_ready(self) -> CommittedBatch | None:
        """The next batch if one is durable now, else None (never waits). Raises
        LogTrimmed, StoreClosed, CorruptRecord (a damaged record in the log)."""
        if self.closed:
            return None
        store, feed = self.store, self._feed
        if store.closed:
            raise StoreClosed(f"namespace {store.name} is closed")
        nxt = self.next_lsn
        if self._generation != feed.generation:
            self._generation = feed.generation
            raise LogTrimmed(nxt, store.first_lsn)  # the history it was reading is gone
        durable = store.last_lsn
        if nxt > durable:
            return None
        commits = feed.take(nxt, durable, store.first_lsn, self.max_records, self.max_bytes)
        if not commits:
            records = store.read_log(nxt, self.max_records, self.max_bytes)
            if not records:
                return None
            commits = [Commit(records[0].lsn, records[-1].lsn, records)]
        self.next_lsn = commits[-1].last + 1
        return CommittedBatch(commits, durable)

    def seek(self, lsn: int) -> None:
        """Continue from `lsn` (a push consumer skipping what it can no longer read)."""
        self.next_lsn = max(lsn, 1)
        self._generation = self._feed.generation

    def on_commit(self, callback: Callable[[], None]) -> None:
        """Call `callback()` inside the commit path after each durable commit (and after a
        snapshot install), so a push consumer can drain `take_ready()` at once."""
        self._unsubscribe = self._feed.subscribe(lambda _records: callback())

    async def _wait(self) -> bool:
        """True when woken (a commit, a replace, close), False after `heartbeat` idle seconds."""
        fut = self._waiter = self._feed.waiter()
        try:
            if self.heartbeat is None:
                await fut
            else:
                async with asyncio.timeout(self.heartbeat):
                    await fut
            return True
        except TimeoutError:
            return False
        finally:
            self._feed.discard(fut)
            self._waiter = None

    def close(self) -> None:
        """Stop: a waiting iteration ends (StopAsyncIteration). Idempotent."""
        if self.closed:
            return
        self.closed = True
        feed = self._feed
        feed.readers -= 1
        if feed.readers == 0:
            feed.forget_tail()  # nobody reads the tail: do not keep it
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def __enter__(self) -> LogCursor:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

"""One RocksDB database per namespace: data, ordered log and meta, written together.

Every mutation gets the next LSN of its namespace and is written with its log record in
one WriteBatch, so data and log never disagree. Writers are group-committed: a single
writer task takes everything that queued up while the previous batch was syncing,
writes it as one batch, syncs the WAL once, then acknowledges all of it. The sync runs
in a helper process (see wal_sync.py); without one, in a thread of this process.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

from rocksdict import AccessType, Options, Rdict, WriteBatch, WriteOptions

from unison.storage.records import CorruptRecord, Op, Record, encode_record, lsn_key, lsn_of, now_ms
from unison.storage.wal_sync import WalSyncer, WalSyncerGone

log = logging.getLogger(__name__)

DATA_CF = "data"
LOG_CF = "log"
# Meta keys live in the default column family.
META_LAST_LSN = b"last_lsn"
META_FIRST_LSN = b"first_lsn"
META_SNAPSHOT_PENDING = b"snapshot_pending"
# User keys arrive as UTF-8, which never contains 0xff: this bounds "every key".
_KEY_SPACE_END = b"\xff"
_U64 = struct.Struct(">Q")
MAX_GROUP_BYTES = 32 * 1024 * 1024

CommitListener = Callable[[Sequence[Record]], None]


class StoreClosed(RuntimeError):
    pass


class LogTrimmed(LookupError):
    """The asked-for LSN is older than the retained log."""

    def __init__(self, wanted: int, first: int) -> None:
        super().__init__(f"lsn {wanted} is older than the retained log (first retained: {first})")
        self.wanted = wanted
        self.first = first


class OutOfOrder(ValueError):
    """A replicated record does not continue this namespace's log."""


class Mutation(NamedTuple):  # a tuple: built on every PUT, cheaper than a dataclass
    op: Op
    key: bytes
    value: bytes = b""


# A queued local write: its mutations and the future its writer awaits.
_Pending = tuple[list[Mutation], "asyncio.Future[list[int]]"]


@dataclass
class StoreStats:
    puts: int = 0
    deletes: int = 0
    commits: int = 0  # synced write batches
    committed_records: int = 0
    bytes_written: int = 0
    replicated_records: int = 0
    trimmed_records: int = 0
    snapshots_installed: int = 0
    extra: dict[str, float] = field(default_factory=dict)


def _records_of(group: list[_Pending], lsn: int, ts: int) -> list[Record]:
    out = []
    for mutations, _ in group:
        for m in mutations:
            out.append(Record(lsn, m.op, m.key, m.value, ts).with_crc())
            lsn += 1
    return out


def _options(bytes_per_sync: int = 0) -> Options:
    # No wal_dir: the WAL sync helper looks for the WAL in the database directory.
    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.create_missing_column_families(True)
    if bytes_per_sync:
        # storage_config.bytes_per_sync: RocksDB syncs SST files incrementally every this
        # many bytes, so a flush or compaction does not end in one large fsync. (The WAL
        # is synced on every commit anyway.)
        opts.set_bytes_per_sync(bytes_per_sync)
    return opts


class NamespaceStore:
    """Storage for one namespace. Reads are synchronous; writes are awaited until durable."""

    def __init__(self, name: str, path: str | Path, *, sync: bool = True,
                 bytes_per_sync: int = 0, sync_helper: bool = True) -> None:
        self.name = name
        self.path = Path(path)
        self.sync = sync
        self.sync_helper = sync and sync_helper  # False: the fsync runs in a thread here
        self._syncer: WalSyncer | None = None
        self.bytes_per_sync = bytes_per_sync  # 0: RocksDB's default (off)
        self.stats = StoreStats()
        self.last_lsn = 0
        self.first_lsn = 1  # oldest LSN still in the log (== last_lsn + 1 when empty)
        self._db: Rdict | None = None
        self._queue: list[_Pending] = []
        self._wakeup = asyncio.Event()
        self._committed = asyncio.Event()
        self._lock = asyncio.Lock()  # one RocksDB write at a time; snapshots take it too
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"rocks-{name}")
        self._writer: asyncio.Task[None] | None = None
        self._listeners: list[CommitListener] = []
        self._wopts = WriteOptions()  # sync=False: the WAL is synced after the write
        # Set when a commit fails: its batch may be in RocksDB's memtable (and may still
        # reach disk) with LSNs the next batch would reuse, so no further write is taken
        # until a restart recovers the LSN from what is really on disk.
        self.failed: str | None = None

    # ------------------------------------------------------------ lifecycle

    def open(self) -> NamespaceStore:
        self.path.mkdir(parents=True, exist_ok=True)
        opts = _options(self.bytes_per_sync)
        cfs = {DATA_CF: _options(self.bytes_per_sync), LOG_CF: _options(self.bytes_per_sync)}
        self._db = Rdict(str(self.path), opts, column_families=cfs,
                         access_type=AccessType.read_write())
        self._data = self._db.get_column_family(DATA_CF)
        self._log = self._db.get_column_family(LOG_CF)
        self._data_h = self._db.get_column_family_handle(DATA_CF)
        self._log_h = self._db.get_column_family_handle(LOG_CF)
        if self._meta(META_SNAPSHOT_PENDING):
            log.warning("namespace %s: an interrupted snapshot install was found in %s; "
                        "starting empty so the follower fetches a fresh snapshot",
                        self.name, self.path)
            self._wipe_sync()
        self.last_lsn = self._meta(META_LAST_LSN)
        self.first_lsn = self._meta(META_FIRST_LSN) or 1
        # The meta LSN is written in the same batch as the log; the log's tail must agree.
        tail = self._log_tail()
        if tail is not None and tail != self.last_lsn:
            raise RuntimeError(f"namespace {self.name}: log tail {tail} disagrees with meta "
                               f"last_lsn {self.last_lsn} in {self.path}")
        log.info("namespace %s: opened %s (lsn %d, log retained from %d)",
                 self.name, self.path, self.last_lsn, self.first_lsn)
        return self

    def start(self) -> None:
        if self.sync_helper and self._syncer is None:
            try:
                self._syncer = WalSyncer.spawn(str(self.path))
                log.info("namespace %s: WAL of %s synced by helper process %d", self.name,
                         self.path, self._syncer.proc.pid)
            except OSError as e:
                log.warning("namespace %s: cannot start the WAL sync helper (%s); syncing "
                            "in-process", self.name, e)
        if self._writer is None:
            self._loop = asyncio.get_running_loop()
            self._writer = self._loop.create_task(self._write_loop(), name=f"writer-{self.name}")

    async def close(self) -> None:
        """Finish queued writes, then close RocksDB."""
        if self._writer is not None:
            while self._queue or self._lock.locked():  # queued, or committing right now
                self._wakeup.set()
                await asyncio.sleep(0.001)
            self._writer.cancel()
            try:
                await self._writer
            except asyncio.CancelledError:
                pass
            self._writer = None
        async with self._lock:
            if self._syncer is not None:
                await self._syncer.close()
                self._syncer = None
            if self._db is not None:
                db, self._db = self._db, None
                # Column family handles keep the database (and its LOCK file) alive.
                self._data = self._log = self._data_h = self._log_h = None
                await asyncio.get_running_loop().run_in_executor(self._executor, db.close)
                del db
        self._executor.shutdown(wait=True)
        self._committed.set()  # release anyone waiting for commits
        log.info("namespace %s: closed", self.name)

    @property
    def closed(self) -> bool:
        return self._db is None

    def _require(self) -> Rdict:
        if self._db is None:
            raise StoreClosed(f"namespace {self.name} is closed")
        return self._db

    def _meta(self, key: bytes) -> int:
        raw = self._require().get(key)
        return _U64.unpack(raw)[0] if raw else 0

    def _log_tail(self) -> int | None:
        it = self._log.iter()
        it.seek_to_last()
        return lsn_of(it.key()) if it.valid() else None

    # ------------------------------------------------------------ reads

    def get(self, key: bytes) -> bytes | None:
        self._require()
        return self._data.get(key)

    def scan(self, prefix: bytes = b"", after: bytes | None = None,
             limit: int = 1000) -> tuple[list[tuple[bytes, bytes]], bool]:
        """Keys starting with `prefix`, strictly after `after`, in key order; (items, more)."""
        self._require()
        start = prefix if after is None or after < prefix else after
        out: list[tuple[bytes, bytes]] = []
        for k, v in self._data.items(from_key=start):
            if not k.startswith(prefix):
                break
            if after is not None and k <= after:
                continue
            if len(out) == limit:
                return out, True
            out.append((k, v))
        return out, False

    def approximate_keys(self) -> int:
        try:
            return int(self._data.property_int_value("rocksdb.estimate-num-keys") or 0)
        except Exception:  # property support varies by build; a metric is not worth a crash
            return 0

    def read_log(self, from_lsn: int, max_records: int = 1000,
                 max_bytes: int = 4 * 1024 * 1024) -> list[Record]:
        """Durable records with LSN >= from_lsn (at most max_records / about max_bytes)."""
        self._require()
        from_lsn = max(from_lsn, 1)
        durable = self.last_lsn
        if from_lsn < self.first_lsn and from_lsn <= durable:
            raise LogTrimmed(from_lsn, self.first_lsn)
        out: list[Record] = []
        size = 0
        for k, v in self._log.items(from_key=lsn_key(from_lsn)):
            lsn = lsn_of(k)
            if lsn > durable:  # written by a commit whose sync has not finished yet
                break
            rec = Record.decode(lsn, v)
            out.append(rec)
            size += rec.size
            if len(out) >= max_records or size >= max_bytes:
                break
        return out

    async def wait_beyond(self, lsn: int) -> bool:
        """Wait until last_lsn > lsn (True) or the store closes (False). No polling;
        bound it with `asyncio.timeout()` where needed."""
        while self.last_lsn <= lsn and not self.closed:
            await self._committed.wait()
        return self.last_lsn > lsn

    def subscribe(self, listener: CommitListener) -> Callable[[], None]:
        """Call `listener(records)` on the event loop after each durable commit, in LSN order."""
        self._listeners.append(listener)
        return lambda: self._listeners.remove(listener) if listener in self._listeners else None

    # ------------------------------------------------------------ local writes

    async def put(self, key: bytes, value: bytes) -> int:
        return (await self.write([Mutation(Op.PUT, key, value)]))[0]

    async def delete(self, key: bytes) -> int:
        return (await self.write([Mutation(Op.DELETE, key)]))[0]

    async def write(self, mutations: list[Mutation]) -> list[int]:
        """Apply mutations atomically; returns their LSNs once durable."""
        return await self.submit(mutations)

    def submit(self, mutations: list[Mutation]) -> asyncio.Future[list[int]]:
        """Queue mutations for the next group commit; the future gets their LSNs once
        durable. (write() without its coroutine: the PUT handler awaits this directly.)"""
        if self.failed is not None:
            raise StoreClosed(self.failed)
        if self._writer is None:
            raise StoreClosed(f"namespace {self.name} is not accepting writes")
        fut: asyncio.Future[list[int]] = self._loop.create_future()
        self._queue.append((mutations, fut))
        self._wakeup.set()
        return fut

    async def _write_loop(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue:
                await self._commit_group()

    async def _commit_group(self) -> None:
        """Write what queued up (up to about MAX_GROUP_BYTES) as one synced batch, then
        acknowledge it. Runs once per batch, so the per-write work here is kept minimal:
        no Record objects unless a listener wants them, one pass over the mutations."""
        async with self._lock:  # LSNs are assigned under the lock: nothing else moves them
            db = self._require()
            queue = self._queue
            ts = now_ms()
            first = lsn = self.last_lsn + 1
            wb = WriteBatch(raw_mode=True)
            data_h, log_h = self._data_h, self._log_h
            records: list[Record] | None = [] if self._listeners else None
            size = puts = taken = 0
            for mutations, _ in queue:
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
            last = lsn - 1
            if last < first:  # only empty writes: nothing to store
                self._acknowledge(group, first)
                return
            wb.put(META_LAST_LSN, _U64.pack(last))
            try:
                await self._durable_write(db, wb)
            except Exception as e:  # nothing here is acknowledged; stop taking writes
                self._fail(f"commit of {last - first + 1} records failed: {e}")
                for _, fut in group + self._queue:
                    if not fut.done():
                        fut.set_exception(StoreClosed(self.failed))
                self._queue = []
                return
            self.last_lsn = last
        stats = self.stats
        stats.commits += 1
        stats.committed_records += last - first + 1
        stats.bytes_written += size
        stats.puts += puts
        stats.deletes += last - first + 1 - puts
        if records is None and self._listeners:  # subscribed while the batch was syncing
            records = _records_of(group, first, ts)
        self._signal_commit(records or ())
        self._acknowledge(group, first)

    @staticmethod
    def _acknowledge(group: list[_Pending], lsn: int) -> None:
        for mutations, fut in group:
            n = len(mutations)
            if not fut.done():  # its request may have been cancelled meanwhile
                fut.set_result([lsn] if n == 1 else list(range(lsn, lsn + n)))
            lsn += n

    async def _write_records(self, records: list[Record], *, replicated: bool = False) -> None:
        """One WriteBatch: data + log + meta; synced before returning; then listeners."""
        if not records:
            return
        wb = WriteBatch(raw_mode=True)
        size = 0
        for r in records:
            if r.op is Op.PUT:
                wb.put(r.key, r.value, self._data_h)
            else:
                wb.delete(r.key, self._data_h)
            encoded = encode_record(r.op, r.ts_ms, r.key, r.value)[1]
            size += len(encoded)
            wb.put(lsn_key(r.lsn), encoded, self._log_h)
        last = records[-1].lsn
        wb.put(META_LAST_LSN, _U64.pack(last))
        async with self._lock:
            if self.failed is not None:
                raise StoreClosed(self.failed)
            db = self._require()
            try:
                await self._durable_write(db, wb)
            except Exception as e:
                self._fail(f"commit of {len(records)} records failed: {e}")
                raise StoreClosed(self.failed) from e
            self.last_lsn = last
        self.stats.commits += 1
        self.stats.committed_records += len(records)
        self.stats.bytes_written += size
        if replicated:
            self.stats.replicated_records += len(records)
        self._signal_commit(records)

    def _fail(self, what: str) -> None:
        self.failed = (f"namespace {self.name}: {what}; writes are refused until the node "
                       "restarts and recovers from its log")
        log.error("%s", self.failed)

    async def _durable_write(self, db: Rdict, wb: WriteBatch) -> None:
        """Write `wb`; return once it is on stable storage (or raise: nothing is durable
        that the caller may acknowledge)."""
        syncer = self._syncer
        if syncer is None:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._write_sync,
                                                             db, wb)
            return
        # On the loop: write() keeps the GIL for its duration wherever it runs. When it
        # returns, RocksDB has handed the WAL records to the kernel; the helper syncs them.
        db.write(wb, self._wopts)
        try:
            await syncer.sync()
        except WalSyncerGone as e:
            log.warning("namespace %s: %s; syncing the WAL in-process from now on",
                        self.name, e)
            self._syncer = None
            await syncer.close()
            # RocksDB still counts the WAL as unsynced, so this syncs what the helper did not.
            await asyncio.get_running_loop().run_in_executor(self._executor, db.flush_wal, True)

    def _write_sync(self, db: Rdict, wb: WriteBatch) -> None:
        # write() keeps the GIL for its duration; flush_wal(sync) releases it while the
        # fsync runs, so the event loop keeps serving requests during the sync.
        db.write(wb, self._wopts)
        if self.sync:
            db.flush_wal(True)

    def _signal_commit(self, records: Sequence[Record]) -> None:
        event, self._committed = self._committed, asyncio.Event()
        event.set()
        for listener in list(self._listeners):
            try:
                listener(records)
            except Exception:  # a broken listener must not break the commit path
                log.exception("namespace %s: commit listener failed", self.name)

    # ------------------------------------------------------------ replication

    async def apply_records(self, records: Sequence[Record]) -> None:
        """Apply upstream records atomically, keeping their LSNs. Verifies CRC and order."""
        if not records:
            return
        expected = self.last_lsn + 1
        for i, r in enumerate(records):
            if r.lsn != expected + i:
                raise OutOfOrder(f"namespace {self.name}: expected lsn {expected + i}, "
                                 f"got {r.lsn}")
            try:
                r.verify()
            except CorruptRecord as e:
                raise CorruptRecord(f"namespace {self.name}: {e}") from None
        await self._write_records(list(records), replicated=True)

    async def snapshot(self) -> tuple[int, Iterator[tuple[bytes, bytes]]]:
        """A consistent view of all live keys: (lsn it reflects, iterator of (key, value))."""
        async with self._lock:  # no write in flight: the snapshot and last_lsn agree
            self._require()
            snap = self._data.snapshot()
            lsn = self.last_lsn

        def items() -> Iterator[tuple[bytes, bytes]]:
            yield from snap.items()

        return lsn, items()

    async def begin_snapshot_install(self) -> None:
        """Drop everything and mark an install in progress (survives a crash)."""
        async with self._lock:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._wipe_sync)
            self.last_lsn = 0
            self.first_lsn = 1

    def _wipe_sync(self) -> None:
        db = self._require()
        wb = WriteBatch(raw_mode=True)
        wb.put(META_SNAPSHOT_PENDING, _U64.pack(1))
        wb.delete_range(b"", _KEY_SPACE_END, self._data_h)
        wb.delete_range(lsn_key(0), lsn_key(2**64 - 1), self._log_h)
        wb.put(META_LAST_LSN, _U64.pack(0))
        wb.put(META_FIRST_LSN, _U64.pack(1))
        db.write(wb, self._wopts)
        db.flush_wal(True)

    async def load_snapshot_items(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        wb = WriteBatch(raw_mode=True)
        for k, v in items:
            wb.put(k, v, self._data_h)
        async with self._lock:
            db = self._require()
            await asyncio.get_running_loop().run_in_executor(self._executor, db.write, wb,
                                                             self._wopts)

    async def finish_snapshot_install(self, lsn: int) -> None:
        wb = WriteBatch(raw_mode=True)
        wb.put(META_LAST_LSN, _U64.pack(lsn))
        wb.put(META_FIRST_LSN, _U64.pack(lsn + 1))
        wb.delete(META_SNAPSHOT_PENDING)
        async with self._lock:
            db = self._require()
            await self._durable_write(db, wb)
            self.last_lsn = lsn
            self.first_lsn = lsn + 1
        self.stats.snapshots_installed += 1
        self._signal_commit(())
        log.info("namespace %s: snapshot installed at lsn %d", self.name, lsn)

    # ------------------------------------------------------------ retention

    async def trim_log(self, before_lsn: int) -> int:
        """Drop log records with LSN < before_lsn (never the newest). Returns how many."""
        before_lsn = min(before_lsn, self.last_lsn)
        if before_lsn <= self.first_lsn:
            return 0
        wb = WriteBatch(raw_mode=True)
        wb.delete_range(lsn_key(self.first_lsn), lsn_key(before_lsn), self._log_h)
        wb.put(META_FIRST_LSN, _U64.pack(before_lsn))
        async with self._lock:
            db = self._require()
            await self._durable_write(db, wb)
            dropped = before_lsn - self.first_lsn
            self.first_lsn = before_lsn
        self.stats.trimmed_records += dropped
        log.info("namespace %s: trimmed %d log records (retained from lsn %d)",
                 self.name, dropped, before_lsn)
        return dropped

    async def apply_retention(self, max_records: int = 0, max_age_s: float = 0.0) -> int:
        """Trim by count and/or age; 0 disables a limit."""
        cut = self.first_lsn
        if max_records > 0:
            cut = max(cut, self.last_lsn - max_records + 1)
        if max_age_s > 0:
            oldest_ms = now_ms() - int(max_age_s * 1000)
            for k, v in self._log.items(from_key=lsn_key(cut)):
                if Record.decode(lsn_of(k), v).ts_ms >= oldest_ms:
                    break
                cut = lsn_of(k) + 1
        return await self.trim_log(cut)

    def describe(self) -> dict[str, int | str]:
        s = self.stats
        return {
            "namespace": self.name,
            "lsn": self.last_lsn,
            "first_retained_lsn": self.first_lsn,
            "approximate_keys": self.approximate_keys(),
            "puts": s.puts,
            "deletes": s.deletes,
            "commits": s.commits,
            "committed_records": s.committed_records,
            "bytes_written": s.bytes_written,
            "replicated_records": s.replicated_records,
            "trimmed_records": s.trimmed_records,
            "snapshots_installed": s.snapshots_installed,
        }

"""One RocksDB database per namespace: data, ordered log and meta, written together.

Every mutation gets the next LSN of its namespace and is written with its log record in
one WriteBatch, so data and log never disagree. `NamespaceStore` opens and closes the
database, reads it, appends (local writes through the group-commit writer, replicated
records keeping their LSNs) and makes writes durable: the WAL sync runs in a helper
process (see wal_sync.py); without one, in a thread of this process. By default a commit
returns once synced; in interval mode (storage_config.wal_fsync_interval) once written,
and the WAL is synced periodically (fsync_interval.py). The rest has its own module:

- writer.py     group commit in one supervised writer task
- fsync_interval.py  the periodic WAL sync of the interval durability mode
- cursor.py     the log cursor every reader uses, and the commit feed behind it
- snapshot.py   a consistent view to send, and installing one received
- retention.py  trimming the log by count and age
- layout.py     column families, meta keys, RocksDB options
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from rocksdict import AccessType, Rdict, WriteBatch, WriteOptions

from unison.storage import retention, snapshot
from unison.storage.cursor import (
    DEFAULT_LIMITS,
    CommitFeed,
    CommitListener,
    CursorLimits,
    LogCursor,
)
from unison.storage.errors import LogTrimmed, OutOfOrder, StoreClosed
from unison.storage.fsync_interval import IntervalSync
from unison.storage.history import History
from unison.storage.layout import (
    DATA_CF,
    DATA_CFS,
    LOG_CF,
    META_DATA_CF,
    META_FIRST_LSN,
    META_HISTORY,
    META_HISTORY_ADOPTED,
    META_LAST_LSN,
    META_OPEN,
    OPEN_INTERVAL,
    OPEN_SYNCED,
    U64,
    options,
    sync_ancestors,
)
from unison.storage.records import CorruptRecord, Op, Record, lsn_key, lsn_of
from unison.storage.wal_sync import WalSyncer, WalSyncerGone
from unison.storage.writer import GroupCommitWriter, Merger, Mutation

__all__ = ["CommitListener", "LogTrimmed", "Mutation", "NamespaceStore", "OutOfOrder",
           "StoreClosed", "StoreStats"]

log = logging.getLogger(__name__)


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

    def committed(self, records: int, size: int, puts: int) -> None:
        """A local group commit of `records` records (`puts` of them puts) is durable."""
        self.commits += 1
        self.committed_records += records
        self.bytes_written += size
        self.puts += puts
        self.deletes += records - puts


class NamespaceStore:
    """Storage for one namespace. Reads are synchronous; writes are awaited until durable
    (in interval mode: until written, see fsync_interval.py)."""

    def __init__(self, name: str, path: str | Path, *, sync: bool = True,
                 bytes_per_sync: int = 0, sync_helper: bool = True,
                 max_pending_writes: int = 10000, sync_timeout: float = 10.0,
                 wal_fsync_interval: float = 0.0) -> None:
        self.name = name
        self.path = Path(path)
        self.sync = sync
        # Seconds (storage_config.wal_fsync_interval); 0: every commit is synced first.
        self.wal_fsync_interval = wal_fsync_interval if sync else 0.0
        self._interval: IntervalSync | None = None
        self._synced_lsn = 0  # interval mode: the newest LSN known on stable storage
        # Set by open(): the last run was in interval mode and did not close cleanly.
        self.unclean_interval_stop = False
        self.sync_helper = sync and sync_helper  # False: the fsync runs in a thread here
        self._syncer: WalSyncer | None = None
        self.bytes_per_sync = bytes_per_sync  # 0: RocksDB's default (off)
        self.stats = StoreStats()
        self.last_lsn = 0  # newest committed LSN (durable, but see synced_lsn)
        self.first_lsn = 1  # oldest LSN still in the log (== last_lsn + 1 when empty)
        self.feed = CommitFeed()  # durable commits for cursors and listeners
        self._db: Rdict | None = None
        self._lock = asyncio.Lock()  # one RocksDB write at a time; snapshots take it too
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"rocks-{name}")
        self._writer: GroupCommitWriter | None = None
        self._wopts = WriteOptions()  # sync=False: the WAL is synced after the write
        # Set when a commit fails or the writer dies: a failed batch may be in RocksDB's
        # memtable (and may still reach disk) with LSNs the next batch would reuse, so no
        # further write is taken until a restart recovers the LSN from what is on disk.
        self.failed: str | None = None
        self.data_cf = DATA_CF  # the live data column family (see snapshot.py)
        # Set by the node for a namespace whose CRDT writes are merged (crdt_merge).
        self.merger: Merger | None = None
        # Bounds on local writes (storage_config): queued writes beyond max_pending_writes
        # are refused; a WAL sync slower than sync_timeout (seconds, 0: no bound) fails
        # its writes with 503 and sets `stalled` (reported by /readyz) until it completes.
        self.max_pending_writes = max_pending_writes
        self.sync_timeout = sync_timeout
        self.stalled: str | None = None
        # Which history the log holds (history.py); set by open().
        self.history = History("")
        # True when the identity was made for a log that already held records (a store
        # from before identities): a follower may adopt its upstream's once.
        self.history_unverified = False

    # ------------------------------------------------------------ lifecycle

    def open(self) -> NamespaceStore:
        self.path.mkdir(parents=True, exist_ok=True)
        if self.sync:  # also when the helper cannot start and the node syncs in-process
            sync_ancestors(str(self.path))
        cfs = {name: options(self.bytes_per_sync) for name in (*DATA_CFS, LOG_CF)}
        self._db = Rdict(str(self.path), options(self.bytes_per_sync), column_families=cfs,
                         access_type=AccessType.read_write())
        self._log = self._db.get_column_family(LOG_CF)
        self._log_h = self._db.get_column_family_handle(LOG_CF)
        live = self._db.get(META_DATA_CF)
        self.use_data_cf(live.decode() if live else DATA_CF)
        snapshot.recover(self)
        self.last_lsn = self._meta(META_LAST_LSN)
        self.first_lsn = self._meta(META_FIRST_LSN) or 1
        # The meta LSN is written in the same batch as the log; the log's tail must agree.
        tail = self._log_tail()
        if tail is not None and tail != self.last_lsn:
            raise RuntimeError(f"namespace {self.name}: log tail {tail} disagrees with meta "
                               f"last_lsn {self.last_lsn} in {self.path}")
        self._load_history()
        self._mark_open()
        log.info("namespace %s: opened %s (lsn %d, log retained from %d, history %s)",
                 self.name, self.path, self.last_lsn, self.first_lsn, self.history)
        if self.wal_fsync_interval:
            log.warning("namespace %s: durability mode interval: writes are acknowledged "
                        "before the WAL is synced, which happens every %gs; acknowledged "
                        "writes of the last %gs may be lost on power loss "
                        "(storage_config.wal_fsync_interval)", self.name,
                        self.wal_fsync_interval, self.wal_fsync_interval)
        return self

    def _mark_open(self) -> None:
        """Note (synced) that the store is open and in which mode; close() removes it."""
        db = self._require()
        self.unclean_interval_stop = db.get(META_OPEN) == OPEN_INTERVAL
        wb = WriteBatch(raw_mode=True)
        wb.put(META_OPEN, OPEN_INTERVAL if self.wal_fsync_interval else OPEN_SYNCED)
        db.write(wb, self._wopts)
        if self.sync:
            db.flush_wal(True)  # syncs whatever recovery left unsynced in the WAL too
        self._synced_lsn = self.last_lsn

    def _mark_closed(self, db: Rdict) -> None:
        wb = WriteBatch(raw_mode=True)
        wb.delete(META_OPEN)
        db.write(wb, self._wopts)
        if self.sync:
            db.flush_wal(True)

    def use_data_cf(self, name: str) -> None:
        """Serve data from column family `name` (a snapshot install switches it)."""
        db = self._require()
        self._data = db.get_column_family(name)
        self._data_h = db.get_column_family_handle(name)
        self.data_cf = name

    def _load_history(self) -> None:
        raw = self._require().get(META_HISTORY)
        if raw:
            self.history = History.decode(raw)
            return
        self.history = History.new()
        self.history_unverified = self.last_lsn > 0
        self._write_history(self.history)

    def _write_history(self, history: History, *, adopted: bool = False) -> None:
        db = self._require()
        wb = WriteBatch(raw_mode=True)
        wb.put(META_HISTORY, history.encode())
        if adopted:
            wb.put(META_HISTORY_ADOPTED, U64.pack(1))
        else:
            wb.delete(META_HISTORY_ADOPTED)
        db.write(wb, self._wopts)
        db.flush_wal(True)

    async def adopt_history(self, history: History) -> None:
        """Take the upstream's history identity (a follower; synced before returning)."""
        async with self._lock:
            await asyncio.get_running_loop().run_in_executor(
                self._executor, lambda: self._write_history(history, adopted=True))
            self.history = history
            self.history_unverified = False
        log.info("namespace %s: history is now %s", self.name, history)

    def claim_history(self) -> None:
        """This node writes the namespace (blocking; at start). If its data is a follower's
        copy (a datacenter restored from a relayer), or its last run in interval mode
        ended without a clean close (it may have lost acknowledged writes that followers
        already hold), the history is reset: it continues in a new epoch from the next
        LSN, so a follower that holds more of the old epoch than this node does is
        refused instead of spliced."""
        reset = False
        if self._require().get(META_HISTORY_ADOPTED):
            log.warning("namespace %s: the data in %s is a follower's copy (restored from "
                        "one?); this node now writes it", self.name, self.path)
            reset = True
        if self.unclean_interval_stop:
            log.warning("namespace %s: its last run in interval mode "
                        "(storage_config.wal_fsync_interval) ended without a clean close "
                        "(killed, or power lost): writes acknowledged after its last WAL sync "
                        "may be gone while followers hold them; starting a new epoch at lsn "
                        "%d, so a follower holding more than this node is refused, not spliced",
                        self.name, self.last_lsn + 1)
            reset = True
        if reset:
            self.new_epoch()

    def new_epoch(self) -> History:
        """Reset the history at the next LSN (blocking)."""
        history = self.history.next_epoch(self.last_lsn + 1)
        self._write_history(history)
        self.history = history
        log.info("namespace %s: new epoch: history %s from lsn %d", self.name, history,
                 self.last_lsn + 1)
        return history

    def start(self) -> None:
        """Start the WAL sync helper and the writer (on the event loop)."""
        if self.sync_helper and self._syncer is None:
            try:
                self._syncer = WalSyncer.spawn(str(self.path))
                log.info("namespace %s: WAL of %s synced by helper process %d", self.name,
                         self.path, self._syncer.proc.pid)
            except OSError as e:
                log.warning("namespace %s: cannot start the WAL sync helper (%s); syncing "
                            "in-process", self.name, e)
        if self._writer is None:
            self._writer = GroupCommitWriter(self)
        if self.wal_fsync_interval and self._interval is None:
            self._interval = IntervalSync(self)

    async def close(self) -> None:
        """Finish queued writes, sync the WAL, note the clean close, then close RocksDB."""
        if self._writer is not None:
            await self._writer.stop()
            self._writer = None
        if self._interval is not None:
            await self._interval.stop()  # its last sync: everything written so far
            self._interval = None
        async with self._lock:
            if self._syncer is not None:
                await self._syncer.close()
                self._syncer = None
            if self._db is not None:
                db, self._db = self._db, None
                if self.failed is None:  # a failed store may have lost what it wrote
                    await asyncio.get_running_loop().run_in_executor(
                        self._executor, self._mark_closed, db)
                # Column family handles keep the database (and its LOCK file) alive.
                self._data = self._log = self._data_h = self._log_h = None
                await asyncio.get_running_loop().run_in_executor(self._executor, db.close)
                del db
        self._executor.shutdown(wait=True)
        self.feed.close()  # release every cursor waiting for commits
        log.info("namespace %s: closed", self.name)

    @property
    def closed(self) -> bool:
        return self._db is None

    def fail(self, what: str) -> None:
        """Refuse writes from now on, saying why (the node reports it in /readyz)."""
        if self.failed is None:
            self.failed = (f"namespace {self.name}: {what}; writes are refused until the node "
                           "restarts and recovers from its log")
            log.error("%s", self.failed)

    def stall(self) -> None:
        """A WAL sync is past storage_config.sync_timeout: refuse writes (503, and /readyz
        says why) until unstall()."""
        self.stalled = (f"namespace {self.name}: the WAL sync has not completed within "
                        f"{self.sync_timeout:g}s (storage_config.sync_timeout); writes are "
                        "refused until it does")
        log.error("%s", self.stalled)

    def unstall(self) -> None:
        """The stalled WAL sync completed: take writes again."""
        if self.stalled is not None:
            log.warning("namespace %s: the WAL sync completed again; taking writes", self.name)
            self.stalled = None

    def _require(self) -> Rdict:
        if self._db is None:
            raise StoreClosed(f"namespace {self.name} is closed")
        return self._db

    def _meta(self, key: bytes) -> int:
        raw = self._require().get(key)
        return U64.unpack(raw)[0] if raw else 0

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

    def record_crc(self, lsn: int) -> int | None:
        """The stored CRC32 of the record at `lsn`, None when the log does not hold it."""
        self._require()
        raw = self._log.get(lsn_key(lsn)) if 0 < lsn <= self.last_lsn else None
        return U64.unpack(b"\0\0\0\0" + raw[:4])[0] if raw and len(raw) >= 4 else None

    def cursor(self, from_lsn: int, limits: CursorLimits = DEFAULT_LIMITS) -> LogCursor:
        """Replay the log from `from_lsn`, then follow the tail (see cursor.py), within
        `limits` (cursor.py lists every stream's). Raises LogTrimmed at once when
        from_lsn is older than the retained log."""
        self._require()
        from_lsn = max(from_lsn, 1)
        if from_lsn < self.first_lsn and from_lsn <= self.last_lsn:
            raise LogTrimmed(from_lsn, self.first_lsn)
        return LogCursor(self, self.feed, from_lsn, limits)

    async def wait_beyond(self, lsn: int) -> bool:
        """Wait until last_lsn > lsn (True) or the store closes (False). No polling;
        bound it with `asyncio.timeout()` where needed."""
        while self.last_lsn <= lsn and not self.closed:
            fut = self.feed.waiter()
            try:
                await fut
            finally:
                self.feed.discard(fut)
        return self.last_lsn > lsn

    def subscribe(self, listener: CommitListener) -> Callable[[], None]:
        """Call `listener(records)` on the event loop after each durable commit, in LSN order."""
        return self.feed.subscribe(listener)

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
        durable. (write() without its coroutine: the PUT handler awaits this directly.)
        Raises StoreClosed at once when the store is closed or failed."""
        writer = self._writer
        if writer is None:
            if self.failed is not None:
                raise StoreClosed(self.failed)
            raise StoreClosed(f"namespace {self.name} is not accepting writes")
        return writer.submit(mutations)

    # ------------------------------------------------------------ durability

    @property
    def synced_lsn(self) -> int:
        """The newest LSN known to be on stable storage (last_lsn but in interval mode)."""
        return min(self._synced_lsn, self.last_lsn) if self.wal_fsync_interval else self.last_lsn

    async def _commit_write(self, db: Rdict, wb: WriteBatch) -> None:
        """Write a commit's batch (local or replicated): on stable storage when it returns,
        or in interval mode only handed to the kernel (the periodic sync follows)."""
        if self.wal_fsync_interval:
            db.write(wb, self._wopts)
            return
        await self._durable_write(db, wb)

    async def _durable_write(self, db: Rdict, wb: WriteBatch) -> None:
        """Write `wb`; return once it is on stable storage (or raise: nothing is durable
        that the caller may acknowledge)."""
        if self._syncer is None:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._write_sync,
                                                             db, wb)
            return
        # On the loop: write() keeps the GIL for its duration wherever it runs. When it
        # returns, RocksDB has handed the WAL records to the kernel; the helper syncs them.
        db.write(wb, self._wopts)
        await self._sync_wal()

    async def _sync_wal(self) -> None:
        """Return once everything written to the WAL so far is on stable storage."""
        db = self._require()
        syncer = self._syncer
        if syncer is not None:
            try:
                await syncer.sync()
                return
            except WalSyncerGone as e:
                if self._syncer is syncer:  # not yet noticed by a concurrent sync
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

    # ------------------------------------------------------------ replication

    async def apply_records(self, records: Sequence[Record]) -> None:
        """Apply upstream records atomically, keeping their LSNs. Verifies CRC and order;
        one WriteBatch (data + log + meta), synced before returning (in interval mode by
        the next periodic sync: what a power cut takes, the upstream sends again); then
        the feed."""
        if not records:
            return
        wb = WriteBatch(raw_mode=True)
        data_h, log_h, put, delete = self._data_h, self._log_h, wb.put, wb.delete
        lsn = self.last_lsn
        size = 0
        # One pass: order, CRC and the stored form together (each record summed once). A
        # refusal leaves the batch unwritten, so nothing of it is applied.
        for r in records:
            lsn += 1
            if r.lsn != lsn:
                raise OutOfOrder(f"namespace {self.name}: expected lsn {lsn}, got {r.lsn}")
            try:
                encoded = r.verified_encoding()
            except CorruptRecord as e:
                raise CorruptRecord(f"namespace {self.name}: {e}") from None
            if r.op is Op.PUT:
                put(r.key, r.value, data_h)
            else:
                delete(r.key, data_h)
            size += len(encoded)
            put(lsn_key(lsn), encoded, log_h)
        last = records[-1].lsn
        wb.put(META_LAST_LSN, U64.pack(last))
        async with self._lock:
            if self.failed is not None:
                raise StoreClosed(self.failed)
            db = self._require()
            try:
                await self._commit_write(db, wb)
            except Exception as e:
                self.fail(f"commit of {len(records)} records failed: {e}")
                raise StoreClosed(self.failed) from e
            self.last_lsn = last
        s = self.stats
        s.commits += 1
        s.committed_records += len(records)
        s.bytes_written += size
        s.replicated_records += len(records)
        self.feed.publish(list(records))

    # ------------------------------------------------------------ snapshots, retention

    async def snapshot(self) -> tuple[int, Iterator[tuple[bytes, bytes]]]:
        """A consistent view of all live keys: (lsn it reflects, iterator of (key, value))."""
        return await snapshot.view(self)

    async def begin_snapshot_install(self) -> None:
        """Start building a snapshot aside; readers keep the current state until
        finish_snapshot_install switches to it (snapshot.py)."""
        await snapshot.begin_install(self)

    async def abort_snapshot_install(self) -> None:
        """Drop a half-built snapshot; the current state is kept."""
        await snapshot.abort_install(self)

    async def load_snapshot_items(self, items: Sequence[tuple[bytes, bytes]]) -> None:
        await snapshot.load_items(self, items)

    async def finish_snapshot_install(self, lsn: int) -> None:
        await snapshot.finish_install(self, lsn)

    async def trim_log(self, before_lsn: int) -> int:
        """Drop log records with LSN < before_lsn (never the newest). Returns how many."""
        return await retention.trim_log(self, before_lsn)

    async def apply_retention(self, max_records: int = 0, max_age_s: float = 0.0) -> int:
        """Trim by count and/or age; 0 disables a limit."""
        return await retention.apply_retention(self, max_records, max_age_s)

    def describe(self) -> dict[str, int | str | float]:
        s = self.stats
        return {
            "namespace": self.name,
            "lsn": self.last_lsn,
            # "synced": acknowledged means on stable storage; "interval": the WAL is synced
            # every wal_fsync_interval_s and synced_lsn is what a power cut would keep.
            "durability": "interval" if self.wal_fsync_interval else "synced",
            "wal_fsync_interval_s": self.wal_fsync_interval,
            "synced_lsn": self.synced_lsn,
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
            "history_id": self.history.id,
            "history_epoch": self.history.epoch,
        }

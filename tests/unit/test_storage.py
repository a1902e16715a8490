"""The storage engine on real RocksDB: group commit, atomic batches, LSNs, the log,
retention, replication apply (CRC, order) and snapshot install."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from unison.storage import (
    CorruptRecord,
    LogTrimmed,
    Mutation,
    NamespaceStore,
    Op,
    OutOfOrder,
    Record,
    StoreClosed,
)
from unison.storage.records import now_ms


def open_store(path: Path, name: str = "ns", *, sync_helper: bool = True) -> NamespaceStore:
    store = NamespaceStore(name, path / name, sync_helper=sync_helper).open()
    store.start()
    return store


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[NamespaceStore]:
    s = open_store(tmp_path)
    yield s
    if not s.closed:
        await s.close()


def upstream_records(first_lsn: int, n: int, ts_ms: int | None = None,
                     prefix: str = "up") -> list[Record]:
    ts = now_ms() if ts_ms is None else ts_ms
    return [Record(first_lsn + i, Op.PUT, f"{prefix}:{first_lsn + i}".encode(), b"v", ts).with_crc()
            for i in range(n)]


# ---------------------------------------------------------------- writes and LSNs


async def test_concurrent_puts_are_group_committed(store: NamespaceStore) -> None:
    lsns = await asyncio.gather(*(store.put(f"k{i}".encode(), b"v" * 100) for i in range(64)))
    assert sorted(lsns) == list(range(1, 65))
    assert store.last_lsn == 64
    assert store.stats.puts == 64 and store.stats.committed_records == 64
    assert store.stats.commits < 64  # many writes per synced batch
    assert all(store.get(f"k{i}".encode()) == b"v" * 100 for i in range(64))


async def test_batch_gets_consecutive_lsns_in_one_commit(store: NamespaceStore) -> None:
    await store.put(b"before", b"x")
    commits = store.stats.commits
    lsns = await store.write([Mutation(Op.PUT, b"a", b"1"), Mutation(Op.PUT, b"b", b"2"),
                              Mutation(Op.DELETE, b"before")])
    assert lsns == [2, 3, 4]
    assert store.stats.commits == commits + 1
    log = store.read_log(2)
    assert [(r.lsn, r.op, r.key) for r in log] == [(2, Op.PUT, b"a"), (3, Op.PUT, b"b"),
                                                   (4, Op.DELETE, b"before")]
    assert len({r.ts_ms for r in log}) == 1  # one commit, one timestamp
    assert store.get(b"before") is None and store.get(b"a") == b"1"


async def test_put_then_delete_in_one_batch_leaves_the_key_deleted(store: NamespaceStore) -> None:
    await store.write([Mutation(Op.PUT, b"k", b"v"), Mutation(Op.DELETE, b"k")])
    assert store.get(b"k") is None
    assert [r.op for r in store.read_log(1)] == [Op.PUT, Op.DELETE]


async def test_log_records_carry_a_valid_crc(store: NamespaceStore) -> None:
    await store.put(b"k", b"value")
    (rec,) = store.read_log(1)
    rec.verify()
    assert rec.crc32 == rec.checksum() != 0
    tampered = Record(rec.lsn, rec.op, rec.key, b"other", rec.ts_ms, rec.crc32)
    with pytest.raises(CorruptRecord, match="CRC32 mismatch"):
        tampered.verify()


async def test_reopen_recovers_lsn_and_data(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    await asyncio.gather(*(s.put(f"k{i}".encode(), str(i).encode()) for i in range(10)))
    await s.delete(b"k0")
    await s.close()
    assert s.closed

    s = open_store(tmp_path)
    try:
        assert s.last_lsn == 11
        assert s.get(b"k0") is None and s.get(b"k9") == b"9"
        assert await s.put(b"next", b"x") == 12  # no LSN reused
        assert [r.lsn for r in s.read_log(1)] == list(range(1, 13))
    finally:
        await s.close()


async def test_closed_store_refuses_writes(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    await s.close()
    with pytest.raises(StoreClosed):
        await s.put(b"k", b"v")


async def test_a_failed_sync_stops_writes_until_a_restart(tmp_path: Path) -> None:
    """A batch whose sync failed may still reach disk under LSNs the next batch would reuse:
    the store refuses writes (nothing acknowledged) and a reopen starts from what is stored.
    (In-process sync; test_wal_sync.py fails the helper's.)"""
    store = open_store(tmp_path, sync_helper=False)
    await store.put(b"kept", b"1")
    real = store._write_sync

    def sync_fails(db, wb):  # the write reaches RocksDB, the fsync does not succeed
        db.write(wb, store._wopts)
        raise OSError(5, "Input/output error")

    store._write_sync = sync_fails
    results = await asyncio.gather(*(store.put(f"k{i}".encode(), b"v") for i in range(8)),
                                   return_exceptions=True)
    assert results and all(isinstance(r, StoreClosed) for r in results)
    store._write_sync = real
    with pytest.raises(StoreClosed, match="Input/output error.*restarts"):
        await store.put(b"after", b"x")
    assert store.last_lsn == 1
    await store.close()

    store = open_store(tmp_path)
    try:
        assert store.get(b"kept") == b"1"
        lsn = await store.put(b"after", b"x")
        assert lsn == store.last_lsn and lsn > 1  # continues after whatever is on disk
        assert [r.lsn for r in store.read_log(1)] == list(range(1, lsn + 1))
    finally:
        await store.close()


class _SyncGate:
    """Stands in front of the real Rdict inside _write_sync: every call goes to RocksDB, but
    a synced WAL flush first waits for the test, so "acknowledged before durable" shows."""

    def __init__(self, db: Any, store: GatedSyncStore) -> None:
        self._db = db
        self._store = store

    def write(self, wb: Any, opts: Any) -> None:
        self._db.write(wb, opts)

    def flush_wal(self, sync: bool) -> None:
        st = self._store
        st.flush_calls.append(sync)
        st.in_sync.set()
        if not st.release.wait(30):
            raise TimeoutError("test never released the WAL sync")
        self._db.flush_wal(sync)
        st.synced.set()


class GatedSyncStore(NamespaceStore):
    """A real store, syncing in-process, whose WAL sync blocks until the test releases it
    (threading.Event: the sync runs on the store's RocksDB thread, not on the event loop).
    test_wal_sync.py holds the helper process's sync instead."""

    def __init__(self, name: str, path: Path) -> None:
        super().__init__(name, path, sync_helper=False)
        self.in_sync = threading.Event()  # a synced flush has begun
        self.release = threading.Event()  # the test lets it proceed
        self.synced = threading.Event()  # the real flush_wal(True) has returned
        self.flush_calls: list[bool] = []

    def _write_sync(self, db: Any, wb: Any) -> None:
        super()._write_sync(_SyncGate(db, self), wb)


async def test_a_put_is_acknowledged_only_after_its_wal_sync_returns(tmp_path: Path) -> None:
    """kill -9 cannot show this (the page cache survives a process kill); holding the sync can:
    while the batch sits in RocksDB unsynced, no writer in it may have its answer."""
    store = GatedSyncStore("ns", tmp_path / "ns").open()
    store.start()
    try:
        single = asyncio.ensure_future(store.put(b"k", b"v"))
        group = [asyncio.ensure_future(store.put(f"g{i}".encode(), b"v")) for i in range(8)]
        batch = asyncio.ensure_future(store.write([Mutation(Op.PUT, b"b1", b"1"),
                                                   Mutation(Op.DELETE, b"b2")]))
        writes = [single, *group, batch]
        assert await asyncio.to_thread(store.in_sync.wait, 10), "no synced flush started"
        assert store.flush_calls == [True]  # the commit path asks for a synced WAL flush
        await asyncio.sleep(0.2)  # give a premature acknowledgement every chance to happen
        assert not any(w.done() for w in writes)
        assert store.last_lsn == 0  # and nothing is advertised to followers either

        acked_after_sync: list[bool] = []
        for w in writes:
            w.add_done_callback(lambda _: acked_after_sync.append(store.synced.is_set()))
        store.release.set()
        results = await asyncio.wait_for(asyncio.gather(*writes), 10)
        assert acked_after_sync == [True] * len(writes)
        assert sorted([results[0], *results[1:-1], *results[-1]]) == list(range(1, 12))
        assert store.last_lsn == 11 and all(store.flush_calls)
        assert len(store.flush_calls) == store.stats.commits
    finally:
        store.release.set()
        await store.close()


async def test_namespaces_are_independent(tmp_path: Path) -> None:
    a, b = open_store(tmp_path, "a"), open_store(tmp_path, "b")
    try:
        await a.put(b"k", b"from-a")
        assert b.get(b"k") is None and b.last_lsn == 0 and a.last_lsn == 1
    finally:
        await a.close()
        await b.close()


# ---------------------------------------------------------------- reads


async def test_scan_prefix_after_limit(store: NamespaceStore) -> None:
    await store.write([Mutation(Op.PUT, k, k.upper()) for k in
                       (b"a:1", b"a:2", b"a:3", b"a:4", b"b:1", b"a")])
    assert store.scan(b"a:", None, 10) == ([(b"a:1", b"A:1"), (b"a:2", b"A:2"),
                                             (b"a:3", b"A:3"), (b"a:4", b"A:4")], False)
    assert store.scan(b"a:", None, 2) == ([(b"a:1", b"A:1"), (b"a:2", b"A:2")], True)
    assert store.scan(b"a:", b"a:2", 2) == ([(b"a:3", b"A:3"), (b"a:4", b"A:4")], False)
    assert store.scan(b"", b"a:4", 10) == ([(b"b:1", b"B:1")], False)
    assert store.scan(b"c", None, 10) == ([], False)


async def test_subscribers_see_commits_in_lsn_order(store: NamespaceStore) -> None:
    seen: list[int] = []
    unsubscribe = store.subscribe(lambda recs: seen.extend(r.lsn for r in recs))
    await asyncio.gather(*(store.put(f"k{i}".encode(), b"v") for i in range(20)))
    await store.write([Mutation(Op.PUT, b"x", b"1"), Mutation(Op.DELETE, b"x")])
    assert seen == list(range(1, 23))
    unsubscribe()
    await store.put(b"after", b"v")
    assert seen == list(range(1, 23))


async def test_subscribers_get_records_with_their_stored_crc(store: NamespaceStore) -> None:
    seen: list[Record] = []
    store.subscribe(seen.extend)
    await asyncio.gather(store.put(b"a", b"1"), store.delete(b"b"))
    assert [r.lsn for r in seen] == [1, 2]
    assert [r.op for r in seen] == [Op.PUT, Op.DELETE]
    for r in seen:
        r.verify()
        assert store.read_log(r.lsn, 1) == [r]


async def test_a_group_over_the_byte_limit_is_split_with_dense_lsns(
        store: NamespaceStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("unison.storage.writer.MAX_GROUP_BYTES", 1)  # one write per batch
    results = await asyncio.gather(*(store.write([Mutation(Op.PUT, f"k{i}".encode(), b"v"),
                                                  Mutation(Op.PUT, f"j{i}".encode(), b"w")])
                                     for i in range(5)))
    assert sorted(results) == [[1, 2], [3, 4], [5, 6], [7, 8], [9, 10]]
    assert store.stats.commits == 5 and store.last_lsn == 10
    assert [r.lsn for r in store.read_log(1)] == list(range(1, 11))


async def test_wait_beyond_wakes_on_commit(store: NamespaceStore) -> None:
    waiter = asyncio.create_task(store.wait_beyond(0))
    await asyncio.sleep(0)
    assert not waiter.done()
    await store.put(b"k", b"v")
    async with asyncio.timeout(5):
        assert await waiter is True


# ---------------------------------------------------------------- retention


async def test_retention_by_count_trims_the_log_not_the_data(store: NamespaceStore) -> None:
    for chunk in range(10):
        await store.write([Mutation(Op.PUT, f"k{chunk * 10 + i:03d}".encode(), b"v")
                           for i in range(10)])
    assert await store.apply_retention(max_records=10) == 90
    assert store.first_lsn == 91 and store.last_lsn == 100
    with pytest.raises(LogTrimmed) as err:
        store.read_log(50)
    assert (err.value.wanted, err.value.first) == (50, 91)
    assert [r.lsn for r in store.read_log(91)] == list(range(91, 101))
    assert all(store.get(f"k{i:03d}".encode()) == b"v" for i in range(100))
    assert store.stats.trimmed_records == 90


async def test_trim_never_drops_the_newest_record(store: NamespaceStore) -> None:
    await store.write([Mutation(Op.PUT, f"k{i}".encode(), b"v") for i in range(5)])
    await store.trim_log(10**9)
    assert [r.lsn for r in store.read_log(store.first_lsn)] == [5]
    assert store.read_log(6) == []  # asking for what comes next is not "trimmed"


async def test_retention_by_age(store: NamespaceStore) -> None:
    hour_ago = now_ms() - 3_600_000
    await store.apply_records(upstream_records(1, 5, ts_ms=hour_ago))
    await store.apply_records(upstream_records(6, 3))
    assert await store.apply_retention(max_age_s=60) == 5
    assert store.first_lsn == 6


async def test_trimmed_position_survives_reopen(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    await s.write([Mutation(Op.PUT, f"k{i}".encode(), b"v") for i in range(20)])
    await s.trim_log(15)
    await s.close()
    s = open_store(tmp_path)
    try:
        assert (s.first_lsn, s.last_lsn) == (15, 20)
        with pytest.raises(LogTrimmed):
            s.read_log(3)
    finally:
        await s.close()


# ---------------------------------------------------------------- replication apply


async def test_apply_records_keeps_upstream_lsns(store: NamespaceStore) -> None:
    recs = upstream_records(1, 4)
    await store.apply_records(recs)
    assert store.last_lsn == 4 and store.stats.replicated_records == 4
    assert store.read_log(1) == recs
    assert store.get(b"up:3") == b"v"


async def test_corrupt_record_is_refused_and_nothing_is_applied(store: NamespaceStore) -> None:
    good = upstream_records(1, 3)
    bad = Record(good[1].lsn, good[1].op, good[1].key, b"flipped", good[1].ts_ms, good[1].crc32)
    with pytest.raises(CorruptRecord, match="CRC32 mismatch"):
        await store.apply_records([good[0], bad, good[2]])
    assert store.last_lsn == 0 and store.get(good[0].key) is None


async def test_gap_or_replay_is_refused(store: NamespaceStore) -> None:
    await store.apply_records(upstream_records(1, 2))
    with pytest.raises(OutOfOrder, match="expected lsn 3, got 5"):
        await store.apply_records(upstream_records(5, 1))
    with pytest.raises(OutOfOrder, match="expected lsn 3, got 2"):
        await store.apply_records(upstream_records(2, 2))
    assert store.last_lsn == 2


# ---------------------------------------------------------------- snapshots


async def copy_snapshot(source: NamespaceStore, target: NamespaceStore) -> int:
    lsn, items = await source.snapshot()
    await target.begin_snapshot_install()
    chunk: list[tuple[bytes, bytes]] = []
    for kv in items:
        chunk.append(kv)
        if len(chunk) == 7:
            await target.load_snapshot_items(chunk)
            chunk = []
    await target.load_snapshot_items(chunk)
    await target.finish_snapshot_install(lsn)
    return lsn


async def test_snapshot_install_then_continue_from_the_next_lsn(tmp_path: Path) -> None:
    source, target = open_store(tmp_path, "source"), open_store(tmp_path, "target")
    events: list[Sequence[Record]] = []
    target.subscribe(events.append)
    try:
        await source.write([Mutation(Op.PUT, f"k{i:02d}".encode(), str(i).encode())
                            for i in range(30)])
        await source.write([Mutation(Op.DELETE, b"k05")])
        await source.trim_log(source.last_lsn)
        await target.put(b"stale-local", b"gone after install")

        lsn = await copy_snapshot(source, target)
        assert lsn == 31
        assert (target.last_lsn, target.first_lsn) == (31, 32)
        assert target.scan(b"", None, 100) == source.scan(b"", None, 100)
        assert target.get(b"stale-local") is None and target.get(b"k05") is None
        assert events[-1] == ()  # subscribers hear that the state was replaced
        assert target.stats.snapshots_installed == 1

        await source.put(b"after", b"snapshot")
        await target.apply_records(source.read_log(32))
        assert target.get(b"after") == b"snapshot" and target.last_lsn == 32
    finally:
        await source.close()
        await target.close()


async def test_interrupted_snapshot_install_keeps_the_state_before_it(tmp_path: Path) -> None:
    s = open_store(tmp_path)
    await s.write([Mutation(Op.PUT, b"old", b"v")])
    await s.begin_snapshot_install()
    await s.load_snapshot_items([(b"half", b"installed")])
    await s.close()  # crash-equivalent: finish_snapshot_install never ran

    s = open_store(tmp_path)
    try:
        assert s.last_lsn == 1
        assert s.get(b"half") is None and s.get(b"old") == b"v"
        assert s.scan(b"", None, 10) == ([(b"old", b"v")], False)
    finally:
        await s.close()


async def test_snapshot_install_is_invisible_to_readers_until_it_switches(
        tmp_path: Path) -> None:
    s = open_store(tmp_path)
    try:
        await s.write([Mutation(Op.PUT, f"old{i}".encode(), b"o") for i in range(5)])
        before = s.scan(b"", None, 100)
        await s.begin_snapshot_install()
        await s.load_snapshot_items([(f"new{i}".encode(), b"n") for i in range(7)])
        # Mid-install: every read answers from the state before it.
        assert (s.last_lsn, s.first_lsn) == (5, 1)
        assert s.get(b"old3") == b"o" and s.get(b"new3") is None
        assert s.scan(b"", None, 100) == before
        assert [r.lsn for r in s.read_log(1)] == [1, 2, 3, 4, 5]

        await s.abort_snapshot_install()  # a bad chunk: dropped, nothing changed
        assert s.scan(b"", None, 100) == before and s.last_lsn == 5

        await s.begin_snapshot_install()
        await s.load_snapshot_items([(b"new1", b"n"), (b"new2", b"n")])
        assert s.get(b"new1") is None
        await s.finish_snapshot_install(40)
        assert (s.last_lsn, s.first_lsn) == (40, 41)
        assert s.scan(b"", None, 100) == ([(b"new1", b"n"), (b"new2", b"n")], False)
        await s.put(b"after", b"a")  # writes go to the live family after the switch
        await s.close()

        s = open_store(tmp_path)  # the switch survives a restart
        assert s.last_lsn == 41
        assert [k for k, _ in s.scan(b"", None, 100)[0]] == [b"after", b"new1", b"new2"]
        # A second install switches back to the first family, emptied meanwhile.
        await s.begin_snapshot_install()
        await s.load_snapshot_items([(b"third", b"t")])
        await s.finish_snapshot_install(99)
        assert s.scan(b"", None, 100) == ([(b"third", b"t")], False)
    finally:
        await s.close()


async def test_bytes_per_sync_reaches_rocksdb(tmp_path: Path) -> None:
    """storage_config.bytes_per_sync has a RocksDB meaning; RocksDB's own OPTIONS file shows it."""
    def db_option(path: Path, name: str) -> str:
        newest = max(path.glob("OPTIONS-*"), key=lambda p: int(p.name.split("-")[1]))
        values = [line.split("=", 1)[1] for line in newest.read_text().splitlines()
                  if line.strip().startswith(f"{name}=")]
        assert values, f"{name} not in {newest}"
        return values[0]

    tuned = NamespaceStore("tuned", tmp_path / "tuned", bytes_per_sync=2 * 1024 * 1024).open()
    plain = NamespaceStore("plain", tmp_path / "plain").open()
    try:
        assert db_option(tmp_path / "tuned", "bytes_per_sync") == str(2 * 1024 * 1024)
        assert db_option(tmp_path / "plain", "bytes_per_sync") == "0"
    finally:
        await tuned.close()
        await plain.close()


async def test_close_finishes_the_commit_in_flight(tmp_path: Path) -> None:
    """Writes queued before close() are all committed and answered, including the batch
    that is being synced when close() begins."""
    store = open_store(tmp_path)
    writes = [asyncio.ensure_future(store.put(f"k{i}".encode(), b"v")) for i in range(200)]
    await asyncio.sleep(0)  # the first batch is taken and its sync is under way
    await store.close()
    assert all(w.done() and not w.cancelled() for w in writes)
    assert sorted(w.result() for w in writes) == list(range(1, 201))
    store = open_store(tmp_path)
    try:
        assert store.last_lsn == 200 and store.get(b"k199") == b"v"
    finally:
        await store.close()


# ---------------------------------------------------------------- a supervised writer


async def test_a_dead_writer_fails_pending_and_new_writes_and_the_node_says_why(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer task dies of an exception nothing expected (injected while it builds a
    batch, outside the commit's own error handling): every queued write fails at once with
    the reason, new writes are refused without queueing, /readyz answers 503 naming it,
    and close() returns."""
    from aiohttp import ClientSession, web
    from unison.api.app import build_app
    from unison.config import NodeConfig
    from unison.context import NodeContext
    from unison.storage import writer

    store = open_store(tmp_path)
    assert await store.put(b"kept", b"1") == 1
    real = writer.encode_record

    def fault(op: int, ts_ms: int, key: bytes, value: bytes) -> tuple[int, bytes]:
        if key == b"boom":
            raise RuntimeError("injected fault")
        return real(op, ts_ms, key, value)

    monkeypatch.setattr(writer, "encode_record", fault)
    pending = [asyncio.ensure_future(store.put(f"k{i}".encode(), b"v")) for i in range(5)]
    pending.append(asyncio.ensure_future(store.put(b"boom", b"v")))
    pending += [asyncio.ensure_future(store.write([Mutation(Op.PUT, b"a", b"1"),
                                                   Mutation(Op.DELETE, b"b")]))]
    async with asyncio.timeout(5):
        results = await asyncio.gather(*pending, return_exceptions=True)
    assert all(isinstance(r, StoreClosed) for r in results), results
    assert all("writer task died: RuntimeError: injected fault" in str(r) for r in results)
    assert store.failed is not None and "injected fault" in store.failed

    with pytest.raises(StoreClosed, match="injected fault.*restarts"):
        store.submit([Mutation(Op.PUT, b"new", b"v")])  # refused at once, nothing queued
    with pytest.raises(StoreClosed, match="injected fault"):
        await store.put(b"new", b"v")
    assert store.last_lsn == 1 and store.get(b"k0") is None

    ctx = NodeContext(NodeConfig(), "replicator", {"ns": store}, frozenset({"ns"}))
    runner = web.AppRunner(build_app(ctx))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with ClientSession() as http, http.get(f"http://127.0.0.1:{port}/readyz") as resp:
            body = await resp.json()
            assert resp.status == 503
    finally:
        await runner.cleanup()
    assert body["ready"] is False
    assert any("writer task died: RuntimeError: injected fault" in r for r in body["reasons"])

    async with asyncio.timeout(10):
        await store.close()
    assert store.closed

    store = open_store(tmp_path)  # a restart recovers from what is on disk
    try:
        assert store.failed is None and store.last_lsn == 1
        assert await store.put(b"after", b"restart") == 2
    finally:
        await store.close()


async def test_a_cancelled_writer_fails_writes_instead_of_leaving_them_unanswered(
        store: NamespaceStore) -> None:
    """A cancel nobody asked for (not close()) is a death too: no write waits forever."""
    await store.put(b"k", b"v")
    assert store._writer is not None
    store._writer._task.cancel()
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    with pytest.raises(StoreClosed, match="writer task was cancelled"):
        await store.put(b"after", b"v")
    assert store.failed is not None and "cancelled" in store.failed

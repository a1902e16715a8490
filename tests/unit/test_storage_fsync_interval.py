"""The interval durability mode on real RocksDB stores and a real WAL sync helper process
(issue 17): a write is acknowledged without waiting for the helper, synced_lsn follows
within about one interval, a stuck sync stalls writes after sync_timeout, a failed one
fails the store, and the open marker tells a clean close from an unclean one."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest
from rocksdict import Rdict
from unison.storage import NamespaceStore, StoreClosed, WriteUnavailable
from unison.storage.layout import META_OPEN
from unison.storage.wal_sync import WalSyncer

INTERVAL = 0.2


def open_store(path: Path, interval: float = INTERVAL, sync_timeout: float = 10.0,
               **kw: object) -> NamespaceStore:
    store = NamespaceStore("ns", path / "ns", wal_fsync_interval=interval,
                           sync_timeout=sync_timeout, **kw).open()  # type: ignore[arg-type]
    store.start()
    return store


async def wait_until(cond: object, within: float, what: str) -> float:
    """Seconds it took for `cond()` to hold."""
    t0 = time.monotonic()
    while not cond():  # type: ignore[operator]
        assert time.monotonic() - t0 < within, f"{what}: not within {within}s"
        await asyncio.sleep(0.01)
    return time.monotonic() - t0


async def test_the_default_mode_is_synced_and_says_so(tmp_path: Path) -> None:
    store = open_store(tmp_path, interval=0.0)
    try:
        assert await store.put(b"k", b"v") == 1
        d = store.describe()
        assert (d["durability"], d["wal_fsync_interval_s"], d["synced_lsn"], d["lsn"]) == (
            "synced", 0.0, 1, 1)
        assert store._interval is None
    finally:
        await store.close()


async def test_writes_are_acknowledged_without_the_helper(tmp_path: Path) -> None:
    """Freeze the helper: writes are still acknowledged at once and synced_lsn stays
    behind; thawed, synced_lsn catches up within about one interval."""
    store = open_store(tmp_path)
    assert store._syncer is not None
    assert store.describe()["durability"] == "interval"
    await store.put(b"before", b"v")
    await wait_until(lambda: store.synced_lsn == 1, 5, "the first sync")
    pid = store._syncer.proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        lsns = await asyncio.wait_for(
            asyncio.gather(*(store.put(f"k{i}".encode(), b"v") for i in range(200))), 5)
        assert lsns == list(range(2, 202))
        assert time.monotonic() - t0 < 2, "acknowledged without waiting for the helper"
        await asyncio.sleep(3 * INTERVAL)  # a sync has been asked for and is stuck
        assert store.synced_lsn == 1 and store.last_lsn == 201
        assert store.describe()["synced_lsn"] == 1
    finally:
        os.kill(pid, signal.SIGCONT)
    took = await wait_until(lambda: store.synced_lsn == 201, 5, "synced_lsn catching up")
    assert took < 2 * INTERVAL + 0.5, took
    await store.put(b"after", b"v")
    took = await wait_until(lambda: store.synced_lsn == 202, 5, "the next sync")
    assert took < INTERVAL + 0.5, took
    await store.close()


async def test_a_stuck_sync_stalls_writes_after_sync_timeout(tmp_path: Path) -> None:
    store = open_store(tmp_path, sync_timeout=0.8)
    assert store._syncer is not None
    pid = store._syncer.proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        await store.put(b"k", b"v")  # acknowledged; its sync will hang
        await wait_until(lambda: store.stalled is not None, 5, "the stall")
        assert "storage_config.sync_timeout" in (store.stalled or "")
        with pytest.raises(WriteUnavailable, match="storage_config.sync_timeout"):
            await store.put(b"refused", b"v")
        assert store.last_lsn == 1 and store.synced_lsn == 0
    finally:
        os.kill(pid, signal.SIGCONT)
    await wait_until(lambda: store.stalled is None, 5, "taking writes again")
    assert await store.put(b"again", b"v") == 2
    assert store.failed is None
    await store.close()


async def test_a_dead_helper_falls_back_to_syncing_in_process(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    assert store._syncer is not None
    os.kill(store._syncer.proc.pid, signal.SIGKILL)
    for i in range(20):
        await store.put(f"k{i}".encode(), b"v")
    await wait_until(lambda: store.synced_lsn == 20, 5, "the in-process sync")
    assert store._syncer is None and store.failed is None
    await store.close()


async def test_a_failed_sync_fails_the_store(tmp_path: Path) -> None:
    """A helper whose fdatasync fails (as in test_wal_sync: the directory it syncs is
    gone): the store fails, takes no more writes, and is not marked closed cleanly."""
    store = open_store(tmp_path)
    await store.put(b"k", b"v")
    await wait_until(lambda: store.synced_lsn == 1, 5, "the first sync")
    assert store._syncer is not None
    await store._syncer.close()
    directory = tmp_path / "not-the-db"
    directory.mkdir()
    store._syncer = WalSyncer.spawn(str(directory))
    await asyncio.wait_for(store._syncer.sync(), 10)
    directory.rmdir()
    await store.put(b"k2", b"v")  # acknowledged; its sync fails
    await wait_until(lambda: store.failed is not None, 5, "the failure")
    assert "WAL sync failed" in (store.failed or "") and "fdatasync" in (store.failed or "")
    with pytest.raises(StoreClosed, match="restarts"):
        await store.put(b"k3", b"v")
    assert store.synced_lsn == 1
    await store.close()
    again = open_store(tmp_path)
    assert again.unclean_interval_stop  # what it acknowledged may be lost
    await again.close()


async def test_the_open_marker_tells_a_clean_close(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    await store.put(b"k", b"v")
    await store.close()  # syncs, then removes the marker
    db = Rdict(str(tmp_path / "ns"))
    assert db.get(META_OPEN) is None
    db.close()
    store = open_store(tmp_path)
    assert not store.unclean_interval_stop
    epoch = store.history.epoch
    store.claim_history()
    assert store.history.epoch == epoch  # clean: no new epoch
    assert store.synced_lsn == store.last_lsn == 1
    await store.close()


async def test_a_replicated_batch_follows_the_mode(tmp_path: Path) -> None:
    source = open_store(tmp_path / "src", interval=0.0)
    for i in range(10):
        await source.put(f"k{i}".encode(), b"v")
    records = source.read_log(1)
    await source.close()
    relay = open_store(tmp_path / "relay")
    assert relay._syncer is not None
    pid = relay._syncer.proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        await asyncio.wait_for(relay.apply_records(records), 2)
        assert relay.last_lsn == 10 and relay.synced_lsn == 0
    finally:
        os.kill(pid, signal.SIGCONT)
    await wait_until(lambda: relay.synced_lsn == 10, 5, "the relayer's sync")
    await relay.close()


async def test_an_interval_marker_left_open_reads_as_unclean(tmp_path: Path) -> None:
    """What a kill -9 leaves (the marker is written at open): a writable store then starts
    a new epoch at its next LSN."""
    store = open_store(tmp_path)
    await store.put(b"k", b"v")
    store.failed = "as if killed"  # close() then leaves the marker in place
    await store.close()
    store = open_store(tmp_path)
    assert store.unclean_interval_stop
    store.claim_history()
    assert store.history.epoch == 2 and store.history.epoch_starts[-1] == 2
    await store.close()
    store = open_store(tmp_path, interval=0.0)  # closed cleanly since: no new epoch
    assert not store.unclean_interval_stop
    await store.close()


async def test_overlapping_and_cancelled_helper_syncs_are_answered_in_order(
        tmp_path: Path) -> None:
    """The periodic sync and a synced write (a retention trim) may ask the helper at once;
    a caller cancelled while waiting must not take the next request's answer."""
    syncer = WalSyncer.spawn(str(tmp_path))
    try:
        await asyncio.wait_for(asyncio.gather(*(syncer.sync() for _ in range(20))), 10)
        os.kill(syncer.proc.pid, signal.SIGSTOP)
        cancelled = asyncio.ensure_future(syncer.sync())
        await asyncio.sleep(0.05)
        cancelled.cancel()
        later = asyncio.ensure_future(syncer.sync())
        await asyncio.sleep(0.05)
        assert not later.done()
        os.kill(syncer.proc.pid, signal.SIGCONT)
        await asyncio.wait_for(later, 10)
        assert len(syncer._waiters) == 0
    finally:
        os.kill(syncer.proc.pid, signal.SIGCONT)
        await syncer.close()

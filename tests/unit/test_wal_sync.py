"""The WAL sync helper process, on real RocksDB stores and real processes: a write is
acknowledged only after the helper answers, a dead helper falls back to syncing in-process,
a failing helper stops writes, and the helper syncs every live log file (and the directory
when a new one appears)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import threading
from pathlib import Path

import pytest
from unison.storage import Mutation, Op, StoreClosed, wal_sync_helper
from unison.storage.wal_sync import WalSyncer

from tests.unit.test_storage import open_store


def open_logs(pid: int) -> set[Path]:
    """The *.log files process `pid` has open."""
    targets = (os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir())
    return {Path(t).resolve() for t in targets if t.endswith(".log")}


async def test_the_helper_runs_beside_the_store_and_stops_with_it(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    syncer = store._syncer
    assert syncer is not None, "the default store syncs through a helper process"
    assert syncer.proc.poll() is None
    assert await asyncio.gather(*(store.put(f"k{i}".encode(), b"v") for i in range(50))) \
        == list(range(1, 51))
    await store.close()
    assert syncer.proc.poll() == 0  # it exited on its own when the store closed its end


async def test_the_helper_holds_every_wal_file_rocksdb_writes(tmp_path: Path) -> None:
    """The helper finds the WAL by name (`*.log` in the database directory): checked
    against what this RocksDB build really writes, through the helper's open files."""
    store = open_store(tmp_path)
    try:
        await store.put(b"k", b"v" * 1000)
        assert store._syncer is not None
        wal_files = {p.resolve() for p in (tmp_path / "ns").glob("*.log")}
        assert wal_files, "RocksDB wrote no *.log file next to its data"
        assert open_logs(store._syncer.proc.pid) == wal_files
    finally:
        await store.close()


async def test_a_put_is_acknowledged_only_after_the_helper_has_synced(tmp_path: Path) -> None:
    """Freeze the helper (SIGSTOP): the batch is in RocksDB, unsynced, and nobody in it may
    have an answer; thaw it and every write is acknowledged."""
    store = open_store(tmp_path)
    assert store._syncer is not None
    pid = store._syncer.proc.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        writes = [asyncio.ensure_future(store.put(f"g{i}".encode(), b"v")) for i in range(8)]
        writes.append(asyncio.ensure_future(store.write([Mutation(Op.PUT, b"b1", b"1"),
                                                         Mutation(Op.DELETE, b"b2")])))
        for _ in range(200):  # until the batch is written (not yet synced)
            if store.get(b"b1") is not None:
                break
            await asyncio.sleep(0.01)
        assert store.get(b"b1") == b"1", "the batch never reached RocksDB"
        await asyncio.sleep(0.2)  # every chance for a premature acknowledgement
        assert not any(w.done() for w in writes)
        assert store.last_lsn == 0  # followers are not told about it either
    finally:
        os.kill(pid, signal.SIGCONT)
    results = await asyncio.wait_for(asyncio.gather(*writes), 10)
    assert sorted([*results[:-1], *results[-1]]) == list(range(1, 11))
    assert store.last_lsn == 10
    await store.close()


async def test_a_killed_helper_is_replaced_by_syncing_in_process(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = open_store(tmp_path)
    await store.put(b"before", b"1")
    assert store._syncer is not None
    proc = store._syncer.proc
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    with caplog.at_level(logging.WARNING, logger="unison.storage.engine"):
        lsns = await asyncio.gather(*(store.put(f"k{i}".encode(), b"v") for i in range(20)))
    assert sorted(lsns) == list(range(2, 22))
    assert store._syncer is None
    assert "syncing the WAL in-process from now on" in caplog.text
    assert f"pid {proc.pid}" in caplog.text
    await store.put(b"after", b"2")
    await store.close()

    store = open_store(tmp_path)
    try:
        assert store.get(b"before") == b"1" and store.get(b"after") == b"2"
        assert store.last_lsn == 22
    finally:
        await store.close()


async def test_a_failing_helper_sync_refuses_writes(tmp_path: Path) -> None:
    """When the helper cannot sync (here: the directory it syncs is gone), nothing in the
    batch is acknowledged and the store takes no more writes, as after a failed fsync."""
    directory = tmp_path / "not-the-db"
    directory.mkdir()
    syncer = WalSyncer.spawn(str(directory))
    try:
        await asyncio.wait_for(syncer.sync(), 10)  # a directory without logs syncs fine
        directory.rmdir()
        with pytest.raises(OSError, match=f"fdatasync of the WAL in {directory} failed"):
            await asyncio.wait_for(syncer.sync(), 10)
    finally:
        await syncer.close()

    store = open_store(tmp_path)
    await store.put(b"kept", b"1")
    assert store._syncer is not None
    await store._syncer.close()
    directory.mkdir()
    store._syncer = WalSyncer.spawn(str(directory))  # the same failure, inside a store
    await asyncio.wait_for(store._syncer.sync(), 10)
    directory.rmdir()
    results = await asyncio.gather(*(store.put(f"k{i}".encode(), b"v") for i in range(5)),
                                   return_exceptions=True)
    assert all(isinstance(r, StoreClosed) for r in results), results
    with pytest.raises(StoreClosed, match="fdatasync of the WAL.*restarts"):
        await store.put(b"later", b"x")
    assert store.last_lsn == 1
    await store.close()


def test_the_helper_syncs_every_live_log_and_the_directory_when_one_appears(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The helper's loop in a thread, on a real directory; every sync call it makes is
    recorded (by inode) and then really made."""
    for name in ("000004.log", "000005.log", "OPTIONS-000007", "000006.sst"):
        (tmp_path / name).write_bytes(b"x")
    inode = {name: (tmp_path / name).stat().st_ino for name in ("000004.log", "000005.log")}
    dir_inode = tmp_path.stat().st_ino
    calls: list[tuple[str, int]] = []
    real_fdatasync, real_fsync = os.fdatasync, os.fsync

    def fdatasync(fd: int) -> None:
        calls.append(("fdatasync", os.fstat(fd).st_ino))
        real_fdatasync(fd)

    def fsync(fd: int) -> None:
        calls.append(("fsync", os.fstat(fd).st_ino))
        real_fsync(fd)

    monkeypatch.setattr(os, "fdatasync", fdatasync)
    monkeypatch.setattr(os, "fsync", fsync)
    ours, theirs = socket.socketpair()
    helper = threading.Thread(target=wal_sync_helper.serve, args=(str(tmp_path), theirs), daemon=True)
    helper.start()

    def sync() -> list[tuple[str, int]]:
        calls.clear()
        ours.sendall(b"s")
        assert ours.recv(16) == b"\x00"
        return sorted(calls)

    try:
        both = [("fdatasync", inode["000004.log"]), ("fdatasync", inode["000005.log"])]
        assert sync() == sorted([*both, ("fsync", dir_inode)])  # first sight: directory too
        assert sync() == sorted(both)  # nothing new: the logs only
        (tmp_path / "000004.log").unlink()  # obsolete, deleted by RocksDB
        (tmp_path / "000008.log").write_bytes(b"y")
        inode["000008.log"] = (tmp_path / "000008.log").stat().st_ino
        assert sync() == sorted([("fdatasync", inode["000005.log"]),
                                 ("fdatasync", inode["000008.log"]), ("fsync", dir_inode)])
    finally:
        ours.close()
        helper.join(5)
    assert not helper.is_alive()  # end of input: the helper stops
    theirs.close()


"""Snapshots of a namespace: a consistent view to send, and installing one received.

An install is invisible to readers until it is complete: the keys are loaded aside, into
the namespace's second data column family (the staging one), while reads, `/offset` and
the log keep serving the old state. `finish_install` then switches in one synced batch
(which data column family is live, the new LSNs, the old log dropped) and swaps the
store's handles on the event loop, so a reader sees either the old state or the new one,
never a mix. A crash or an aborted install (a chunk that fails its checksum) leaves the
old state as it was; the staging family is cleared by the next install or open.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from rocksdict import WriteBatch

from unison.storage.layout import (
    DATA_CFS,
    KEY_SPACE_END,
    META_DATA_CF,
    META_FIRST_LSN,
    META_LAST_LSN,
    META_SNAPSHOT_PENDING,
    U64,
)
from unison.storage.records import lsn_key

if TYPE_CHECKING:
    from unison.storage.engine import NamespaceStore

log = logging.getLogger(__name__)

# META_SNAPSHOT_PENDING values: 1 was an install that wiped the live data first (before
# installs were built aside); 2 is one being built in the staging family.
_WIPED = 1
_ASIDE = 2


async def view(store: NamespaceStore) -> tuple[int, Iterator[tuple[bytes, bytes]]]:
    """A consistent view of all live keys: (lsn it reflects, iterator of (key, value))."""
    async with store._lock:  # no write in flight: the snapshot and last_lsn agree
        store._require()
        snap = store._data.snapshot()
        lsn = store.last_lsn

    def items() -> Iterator[tuple[bytes, bytes]]:
        yield from snap.items()

    return lsn, items()


def staging_name(store: NamespaceStore) -> str:
    return DATA_CFS[1] if store.data_cf == DATA_CFS[0] else DATA_CFS[0]


def recover(store: NamespaceStore) -> None:
    """At open: drop what an interrupted install left (blocking)."""
    pending = store._meta(META_SNAPSHOT_PENDING)
    if not pending:
        return
    if pending == _WIPED:  # the live data was wiped: only a fresh snapshot can help
        log.warning("namespace %s: an interrupted snapshot install (wiped data) was found "
                    "in %s; starting empty so the follower fetches a fresh snapshot",
                    store.name, store.path)
        wipe(store)
    else:
        log.warning("namespace %s: an interrupted snapshot install was found in %s; it is "
                    "dropped, the state before it is kept", store.name, store.path)
    clear_staging(store)


def wipe(store: NamespaceStore) -> None:
    """Drop all live data and log (synced; blocking)."""
    db = store._require()
    wb = WriteBatch(raw_mode=True)
    wb.delete_range(b"", KEY_SPACE_END, store._data_h)
    wb.delete_range(lsn_key(0), lsn_key(2**64 - 1), store._log_h)
    wb.put(META_LAST_LSN, U64.pack(0))
    wb.put(META_FIRST_LSN, U64.pack(1))
    db.write(wb, store._wopts)
    db.flush_wal(True)


def clear_staging(store: NamespaceStore, *, pending: bool = False) -> None:
    """Empty the staging family; mark an install in progress or not (synced; blocking)."""
    db = store._require()
    wb = WriteBatch(raw_mode=True)
    wb.delete_range(b"", KEY_SPACE_END, db.get_column_family_handle(staging_name(store)))
    if pending:
        wb.put(META_SNAPSHOT_PENDING, U64.pack(_ASIDE))
    else:
        wb.delete(META_SNAPSHOT_PENDING)
    db.write(wb, store._wopts)
    db.flush_wal(True)


async def begin_install(store: NamespaceStore) -> None:
    """Start building a snapshot aside (readers keep the current state)."""
    async with store._lock:
        await asyncio.get_running_loop().run_in_executor(
            store._executor, lambda: clear_staging(store, pending=True))


async def abort_install(store: NamespaceStore) -> None:
    """Drop a half-built snapshot; the current state stays as it is."""
    async with store._lock:
        await asyncio.get_running_loop().run_in_executor(store._executor, clear_staging, store)


async def load_items(store: NamespaceStore, items: Sequence[tuple[bytes, bytes]]) -> None:
    async with store._lock:
        db = store._require()
        handle = db.get_column_family_handle(staging_name(store))
        wb = WriteBatch(raw_mode=True)
        for k, v in items:
            wb.put(k, v, handle)
        await asyncio.get_running_loop().run_in_executor(store._executor, db.write, wb,
                                                         store._wopts)


async def finish_install(store: NamespaceStore, lsn: int) -> None:
    """Switch to the snapshot built aside, atomically for every reader."""
    new = staging_name(store)
    wb = WriteBatch(raw_mode=True)
    wb.put(META_DATA_CF, new.encode())
    wb.delete_range(lsn_key(0), lsn_key(2**64 - 1), store._log_h)
    wb.put(META_LAST_LSN, U64.pack(lsn))
    wb.put(META_FIRST_LSN, U64.pack(lsn + 1))
    wb.delete(META_SNAPSHOT_PENDING)
    async with store._lock:
        db = store._require()
        await store._durable_write(db, wb)  # the staging writes are synced with it
        store.use_data_cf(new)  # the switch readers see: one step on the event loop
        store.last_lsn = lsn
        store.first_lsn = lsn + 1
    store.stats.snapshots_installed += 1
    store.feed.replaced()
    log.info("namespace %s: snapshot installed at lsn %d", store.name, lsn)
    # The old live family is the staging one now: empty it in the background (not
    # urgent: the next install or open clears it again).
    task = asyncio.get_running_loop().create_task(_clear_old(store))
    _cleanups.add(task)
    task.add_done_callback(_cleanups.discard)


_cleanups: set[asyncio.Task[None]] = set()


async def _clear_old(store: NamespaceStore) -> None:
    try:
        async with store._lock:
            if store.closed or store._meta(META_SNAPSHOT_PENDING):
                return  # closed, or a new install began (and cleared it itself)
            await asyncio.get_running_loop().run_in_executor(store._executor, clear_staging,
                                                             store)
    except Exception:  # the next install or open clears it anyway
        log.warning("namespace %s: clearing the replaced data failed", store.name,
                    exc_info=True)

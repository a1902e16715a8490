"""Snapshots of a namespace: a consistent view to send, and installing one received.

An install drops everything and marks itself pending in the same synced batch, loads the
keys in chunks, then writes the snapshot's LSN and clears the mark. A crash in between
leaves the mark, and the next open starts empty (`wipe`), so the follower fetches a
fresh snapshot instead of serving half of one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from rocksdict import WriteBatch

from unison.storage.layout import (
    KEY_SPACE_END,
    META_FIRST_LSN,
    META_LAST_LSN,
    META_SNAPSHOT_PENDING,
    U64,
)
from unison.storage.records import lsn_key

if TYPE_CHECKING:
    from unison.storage.engine import NamespaceStore

log = logging.getLogger(__name__)


async def view(store: NamespaceStore) -> tuple[int, Iterator[tuple[bytes, bytes]]]:
    """A consistent view of all live keys: (lsn it reflects, iterator of (key, value))."""
    async with store._lock:  # no write in flight: the snapshot and last_lsn agree
        store._require()
        snap = store._data.snapshot()
        lsn = store.last_lsn

    def items() -> Iterator[tuple[bytes, bytes]]:
        yield from snap.items()

    return lsn, items()


def wipe(store: NamespaceStore) -> None:
    """Drop all data and log, and mark an install in progress (synced; blocking)."""
    db = store._require()
    wb = WriteBatch(raw_mode=True)
    wb.put(META_SNAPSHOT_PENDING, U64.pack(1))
    wb.delete_range(b"", KEY_SPACE_END, store._data_h)
    wb.delete_range(lsn_key(0), lsn_key(2**64 - 1), store._log_h)
    wb.put(META_LAST_LSN, U64.pack(0))
    wb.put(META_FIRST_LSN, U64.pack(1))
    db.write(wb, store._wopts)
    db.flush_wal(True)


async def begin_install(store: NamespaceStore) -> None:
    async with store._lock:
        await asyncio.get_running_loop().run_in_executor(store._executor, wipe, store)
        store.last_lsn = 0
        store.first_lsn = 1
        store.feed.forget_tail()  # nothing it holds is in the store any more


async def load_items(store: NamespaceStore, items: Sequence[tuple[bytes, bytes]]) -> None:
    wb = WriteBatch(raw_mode=True)
    for k, v in items:
        wb.put(k, v, store._data_h)
    async with store._lock:
        db = store._require()
        await asyncio.get_running_loop().run_in_executor(store._executor, db.write, wb,
                                                         store._wopts)


async def finish_install(store: NamespaceStore, lsn: int) -> None:
    wb = WriteBatch(raw_mode=True)
    wb.put(META_LAST_LSN, U64.pack(lsn))
    wb.put(META_FIRST_LSN, U64.pack(lsn + 1))
    wb.delete(META_SNAPSHOT_PENDING)
    async with store._lock:
        db = store._require()
        await store._durable_write(db, wb)
        store.last_lsn = lsn
        store.first_lsn = lsn + 1
    store.stats.snapshots_installed += 1
    store.feed.replaced()
    log.info("namespace %s: snapshot installed at lsn %d", store.name, lsn)

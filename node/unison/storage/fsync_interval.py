"""The interval durability mode (storage_config.wal_fsync_interval, UnisonDB's): a commit
is acknowledged once RocksDB has handed its WAL records to the kernel, and this task
syncs the WAL every interval, through the store's WAL sync helper (in-process when the
helper is gone), as the default mode does per commit.

What it promises: a kill -9 of the node loses nothing acknowledged (the OS page cache
holds the WAL and outlives the process); a power cut loses at most what was acknowledged
after the last completed sync. `store.synced_lsn` is the newest LSN known to be on
stable storage. A sync slower than storage_config.sync_timeout stalls the store (writes
refused with 503 until it completes), so the loss window stays bounded; a failed sync
fails the store, as a failed commit does in the default mode.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from unison.storage.engine import NamespaceStore

log = logging.getLogger(__name__)


class IntervalSync:
    """The periodic WAL sync of one store (started on the event loop)."""

    def __init__(self, store: NamespaceStore) -> None:
        self.store = store
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        self._wake = asyncio.Event()
        self._stalled_here = False  # this task set store.stalled
        self._task = self._loop.create_task(self._run(), name=f"wal-fsync-{store.name}")
        self._task.add_done_callback(self._ended)

    async def stop(self) -> None:
        """Sync what was written so far (unless the store failed), then end. Never
        cancels a sync in flight: its answer is what close() waits for."""
        self._stopping = True
        self._wake.set()
        await asyncio.wait([self._task])

    async def _run(self) -> None:
        interval = self.store.wal_fsync_interval
        due = self._loop.time() + interval
        while True:
            # A fixed rate, as UnisonDB's ticker: a slow sync does not push the next one.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), max(due - self._loop.time(), 0))
            due = max(due + interval, self._loop.time())
            if self.store.failed is not None:
                return
            await self.sync_once()
            if self._stopping:
                return

    async def sync_once(self) -> None:
        """Sync the WAL if a commit since the last sync left it behind; synced_lsn then
        covers every commit that had returned before the sync was asked for."""
        store = self.store
        target = store.last_lsn
        if target <= store._synced_lsn:
            return
        timer = (self._loop.call_later(store.sync_timeout, self._stall)
                 if store.sync_timeout > 0 else None)
        try:
            await store._sync_wal()
        except Exception as e:  # nothing after the last good sync is known durable
            store.fail(f"WAL sync failed: {e}")
            return
        finally:
            if timer is not None:
                timer.cancel()
            self._unstall()
        store._synced_lsn = max(store._synced_lsn, target)

    def _stall(self) -> None:
        self._stalled_here = True
        self.store.stall()

    def _unstall(self) -> None:
        if self._stalled_here:
            self._stalled_here = False
            self.store.unstall()

    def _ended(self, task: asyncio.Task[None]) -> None:
        if task.cancelled():
            why = "the WAL sync task was cancelled"
        elif (e := task.exception()) is not None:
            log.error("namespace %s: WAL sync task died", self.store.name, exc_info=e)
            why = f"the WAL sync task died: {type(e).__name__}: {e}"
        else:
            return
        # Without it nothing written from now on would ever be synced.
        self.store.fail(why)

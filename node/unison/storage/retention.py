"""Log retention: trim old log records by count and/or age (never the data, never the
newest record). A reader older than what is left gets LogTrimmed (then a snapshot)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from rocksdict import WriteBatch

from unison.storage.layout import META_FIRST_LSN, U64
from unison.storage.records import Record, lsn_key, lsn_of, now_ms

if TYPE_CHECKING:
    from unison.storage.engine import NamespaceStore

log = logging.getLogger(__name__)


async def trim_log(store: NamespaceStore, before_lsn: int) -> int:
    """Drop log records with LSN < before_lsn (never the newest). Returns how many."""
    before_lsn = min(before_lsn, store.last_lsn)
    if before_lsn <= store.first_lsn:
        return 0
    wb = WriteBatch(raw_mode=True)
    wb.delete_range(lsn_key(store.first_lsn), lsn_key(before_lsn), store._log_h)
    wb.put(META_FIRST_LSN, U64.pack(before_lsn))
    async with store._lock:
        db = store._require()
        await store._durable_write(db, wb)
        dropped = before_lsn - store.first_lsn
        store.first_lsn = before_lsn
    store.stats.trimmed_records += dropped
    log.info("namespace %s: trimmed %d log records (retained from lsn %d)",
             store.name, dropped, before_lsn)
    return dropped


def retention_cut(store: NamespaceStore, max_records: int, max_age_s: float) -> int:
    """The first LSN to keep under the limits (0 disables a limit)."""
    cut = store.first_lsn
    if max_records > 0:
        cut = max(cut, store.last_lsn - max_records + 1)
    if max_age_s > 0:
        oldest_ms = now_ms() - int(max_age_s * 1000)
        for k, v in store._log.items(from_key=lsn_key(cut)):
            if Record.decode(lsn_of(k), v).ts_ms >= oldest_ms:
                break
            cut = lsn_of(k) + 1
    return cut


async def apply_retention(store: NamespaceStore, max_records: int = 0,
                          max_age_s: float = 0.0) -> int:
    """Trim by count and/or age; 0 disables a limit. Returns how many records went."""
    return await trim_log(store, retention_cut(store, max_records, max_age_s))

"""Storage engine group commit vs raw rocksdict synced batches (the storage ceiling).

`writers` asyncio tasks each await `NamespaceStore.put(key, 1 KB)` in a loop for a fixed
time; every put returns only once its batch is synced. Then, in the same process and on
the same disk, raw rocksdict writes the same bytes in synced batches of `writers`
records (the largest group the engine can form with that many writers).

    python -m bench.run --only storage
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from unison.storage.engine import NamespaceStore

from bench.ceilings import best_raw_storage
from bench.report import Outcome, latency_summary


@dataclass(frozen=True)
class StorageSizes:
    seconds: float
    writers: int = 64
    value_size: int = 1024
    warmup: float = 0.3


SIZES = {
    "smoke": StorageSizes(seconds=0.5, warmup=0.1),
    "full": StorageSizes(seconds=4.0),
}


async def engine_group_commit(directory: Path, sizes: StorageSizes) -> tuple[dict[str, float],
                                                                             list[float]]:
    store = NamespaceStore("bench", directory).open()
    store.start()
    value = os.urandom(sizes.value_size)
    latencies: list[float] = []
    measuring = False
    stop = False

    async def writer(w: int) -> int:
        n = 0
        while not stop:
            t0 = time.perf_counter()
            await store.put(b"w%02d:%010d" % (w, n), value)
            if measuring:
                latencies.append((time.perf_counter() - t0) * 1000.0)
            n += 1
        return n

    try:
        tasks = [asyncio.create_task(writer(w)) for w in range(sizes.writers)]
        await asyncio.sleep(sizes.warmup)
        measuring = True
        records0, commits0 = store.stats.committed_records, store.stats.commits
        t0 = time.perf_counter()
        await asyncio.sleep(sizes.seconds)
        records = store.stats.committed_records - records0
        commits = store.stats.commits - commits0
        elapsed = time.perf_counter() - t0
        measuring = False
        stop = True
        await asyncio.gather(*tasks)
    finally:
        await store.close()
    metrics = {
        "engine_writes_per_s": records / elapsed,
        "engine_commits_per_s": commits / elapsed,
        "engine_group_size": records / commits if commits else 0.0,
        **latency_summary(latencies, "engine_put"),
    }
    return metrics, latencies


def run(profile: str) -> Outcome:
    sizes = SIZES[profile]
    with tempfile.TemporaryDirectory(prefix="unison-bench-storage-") as d:
        metrics, latencies = asyncio.run(engine_group_commit(Path(d) / "engine", sizes))
    best, tried = best_raw_storage(seconds=sizes.seconds, batch=sizes.writers,
                                   value_size=sizes.value_size)
    metrics.update(best.as_metrics("raw"))
    metrics.update({f"raw_{r.method}_writes_per_s": r.writes_per_s for r in tried})
    note = (f"raw ceiling: synced batches of {sizes.writers} records ({sizes.value_size} B "
            "values into a data and a log column family), the faster of write+flush_wal "
            "(what the engine does) and a sync=True write")
    return Outcome(
        metrics=metrics,
        samples={"engine put (group commit)": latencies,
                 f"raw synced batch of {sizes.writers} (ceiling)": best.durations_ms},
        params={"seconds": sizes.seconds, "writers": sizes.writers,
                "value_size": sizes.value_size},
        notes=[note],
    )

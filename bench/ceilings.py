"""Ceilings: what the bare component does on this machine, measured in the same run.

The storage ceiling is raw rocksdict: the same bytes the engine writes per record (a data
value and a log record, in two column families) in synced WriteBatches of the size the
engine's group commit reaches, from one thread with no asyncio, CRC or record encoding
in the loop. The engine cannot beat it; the ratio says what the engine's own work costs.
(The HTTP and ZeroMQ ceilings live beside their benchmarks in bench_http.py and
bench_notify.py.)
"""

from __future__ import annotations

import os
import struct
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from rocksdict import AccessType, Options, Rdict, WriteBatch, WriteOptions

from bench.report import percentile

_LSN = struct.Struct(">Q")
# A log record's header in the engine: crc32, op, ts_ms, key length.
_HEADER = struct.Struct(">IBQI")


@dataclass
class RawStorageCeiling:
    writes_per_s: float
    batches_per_s: float
    batch_p50_ms: float
    batch_p99_ms: float
    method: str
    batch: int
    value_size: int
    durations_ms: list[float]  # one per synced batch

    def as_metrics(self, prefix: str = "raw") -> dict[str, float]:
        return {
            f"{prefix}_writes_per_s": self.writes_per_s,
            f"{prefix}_batches_per_s": self.batches_per_s,
            f"{prefix}_batch_p50_ms": self.batch_p50_ms,
            f"{prefix}_batch_p99_ms": self.batch_p99_ms,
        }


def _options() -> Options:
    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.create_missing_column_families(True)
    return opts


def raw_synced_batches(directory: Path, *, seconds: float, batch: int, value_size: int,
                       method: str = "flush_wal") -> RawStorageCeiling:
    """Write synced batches of `batch` records for `seconds`.

    method "flush_wal": write, then flush_wal(sync=True) - what the engine does.
    method "sync_write": one write with WriteOptions.sync = True.
    """
    if method not in ("flush_wal", "sync_write"):
        raise ValueError(f"method must be flush_wal or sync_write, got {method!r}")
    cfs = {"data": _options(), "log": _options()}
    db = Rdict(str(directory), _options(), column_families=cfs,
               access_type=AccessType.read_write())
    try:
        data_h = db.get_column_family_handle("data")
        log_h = db.get_column_family_handle("log")
        wopts = WriteOptions()
        if method == "sync_write":
            wopts.sync = True
        value = os.urandom(value_size)
        header = _HEADER.pack(0, 0, int(time.time() * 1000), 16)
        lsn = 0
        durations: list[float] = []
        start = time.perf_counter()
        deadline = start + seconds
        while True:
            t0 = time.perf_counter()
            if t0 >= deadline:
                break
            wb = WriteBatch(raw_mode=True)
            for _ in range(batch):
                lsn += 1
                key = b"key:%012d" % lsn
                wb.put(key, value, data_h)
                wb.put(_LSN.pack(lsn), header + key + value, log_h)
            wb.put(b"last_lsn", _LSN.pack(lsn))
            db.write(wb, wopts)
            if method == "flush_wal":
                db.flush_wal(True)
            durations.append((time.perf_counter() - t0) * 1000.0)
        elapsed = time.perf_counter() - start
    finally:
        data_h = log_h = None
        db.close()
    return RawStorageCeiling(
        writes_per_s=lsn / elapsed,
        batches_per_s=len(durations) / elapsed,
        batch_p50_ms=percentile(durations, 50),
        batch_p99_ms=percentile(durations, 99),
        method=method,
        batch=batch,
        value_size=value_size,
        durations_ms=durations,
    )


def best_raw_storage(*, seconds: float, batch: int, value_size: int,
                     parent: str | None = None) -> tuple[RawStorageCeiling, list[RawStorageCeiling]]:
    """Both sync methods, each in a fresh database; the faster one is the ceiling."""
    results = []
    for method in ("flush_wal", "sync_write"):
        with tempfile.TemporaryDirectory(prefix="unison-bench-raw-", dir=parent) as d:
            results.append(raw_synced_batches(Path(d), seconds=seconds, batch=batch,
                                              value_size=value_size, method=method))
    return max(results, key=lambda r: r.writes_per_s), results

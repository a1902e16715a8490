"""CPU per replicated record on the follower's apply path, in-process, beside its ceiling.

What a relayer does with each batch after gRPC hands it over: parse the StreamResponse
(protobuf), turn its records into what the store takes, verify order and CRC32, write
data + log + meta as one synced WriteBatch (the WAL sync helper process, as in a node),
publish to the commit feed. The messages are built as the upstream's server builds them
(`wire.records_payload` + `wire.batch_message`) from records with their stored CRC.

Ceiling: raw rocksdict, the same bytes per record (data + log) in one WriteBatch per
message, synced the same way (write, then the helper's fdatasync), no parsing or checks.
CPU is measured from /proc over the node process and its helper; the figure is
microseconds per record. The machine's other load inflates both sides alike, so read the
ratio.

    python -m bench.bench_apply [--records 20000] [--batch 1 16 256] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.procs import cpu_seconds

VALUE_SIZE = 1024


def _messages(total: int, batch: int) -> list[bytes]:
    from unison.replication import wire
    from unison.storage.records import Op, Record

    value = os.urandom(VALUE_SIZE)
    out = []
    for first in range(1, total + 1, batch):
        records = [Record(lsn, Op.PUT, b"key-%d" % lsn, value, 1_700_000_000_000).with_crc()
                   for lsn in range(first, min(first + batch, total + 1))]
        out.append(wire.batch_message([wire.records_payload(records)], records[-1].lsn, 0))
    return out


async def _apply(directory: Path, messages: list[bytes]) -> tuple[float, float]:
    """CPU seconds to apply every message: (this process and its helper, this process)."""
    from unison.replication import replication_pb2 as pb
    from unison.replication.wire import from_pb
    from unison.storage import NamespaceStore

    store = NamespaceStore("bench", directory).open()
    store.start()
    try:
        cpu0, own0 = cpu_seconds(os.getpid()), time.process_time()
        for raw in messages:
            msg = pb.StreamResponse.FromString(raw)
            await store.apply_records(from_pb(msg.batch.records))
        return cpu_seconds(os.getpid()) - cpu0, time.process_time() - own0
    finally:
        await store.close()


async def _ceiling(directory: Path, messages: list[bytes]) -> tuple[float, float]:
    """The same writes with raw rocksdict and the same WAL sync helper: no parse, no check."""
    from rocksdict import Rdict, WriteBatch, WriteOptions
    from unison.replication import replication_pb2 as pb
    from unison.storage.layout import LOG_CF, options
    from unison.storage.wal_sync import WalSyncer

    # Parsed up front: the ceiling is the storage, not the wire.
    batches = [[(r.lsn, r.key, r.value) for r in pb.StreamResponse.FromString(m).batch.records]
               for m in messages]
    db = Rdict(str(directory), options(0), column_families={LOG_CF: options(0)})
    log_h = db.get_column_family_handle(LOG_CF)
    syncer = WalSyncer.spawn(str(directory))
    wopts = WriteOptions()
    header = bytes(17)
    try:
        cpu0, own0 = cpu_seconds(os.getpid()), time.process_time()
        for batch in batches:
            wb = WriteBatch(raw_mode=True)
            for lsn, key, value in batch:
                wb.put(key, value)
                wb.put(lsn.to_bytes(8, "big"), header + key + value, log_h)
            db.write(wb, wopts)
            await syncer.sync()
        return cpu_seconds(os.getpid()) - cpu0, time.process_time() - own0
    finally:
        await syncer.close()
        db.close()


def measure(total: int, batch_sizes: list[int], rounds: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for batch in batch_sizes:
        messages = _messages(total, batch)
        ours, ceiling = [], []
        for r in range(rounds):  # alternating, so drifting background load hits both
            with tempfile.TemporaryDirectory(prefix="unison-bench-apply-") as d:
                ceiling.append(asyncio.run(_ceiling(Path(d) / f"raw{r}", messages)))
                ours.append(asyncio.run(_apply(Path(d) / f"ns{r}", messages)))

        def us(runs: list[tuple[float, float]], i: int) -> float:
            return statistics.median(x[i] for x in runs) * 1e6 / total

        out[str(batch)] = {"us_per_record": us(ours, 0), "ceiling_us_per_record": us(ceiling, 0),
                           # the node process alone (no helper), from its own clock: finer
                           "process_us_per_record": us(ours, 1),
                           "ceiling_process_us_per_record": us(ceiling, 1),
                           "rounds": [round(x[0] * 1e6 / total, 1) for x in ours],
                           "ceiling_rounds": [round(x[0] * 1e6 / total, 1) for x in ceiling]}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_apply", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--records", type=int, default=20000)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 16, 256])
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    result = measure(args.records, args.batch, args.rounds)
    print(f"python {sys.version.split()[0]}, {args.records} records of {VALUE_SIZE} B, "
          f"load average {os.getloadavg()[0]:.1f}")
    for batch, r in result.items():
        print(f"batch {batch:>4}: {r['us_per_record']:6.1f} us/record (rounds {r['rounds']}), "
              f"ceiling {r['ceiling_us_per_record']:6.1f} (rounds {r['ceiling_rounds']}), "
              f"ratio {r['us_per_record'] / r['ceiling_us_per_record']:.2f}x; this process "
              f"alone {r['process_us_per_record']:.1f} vs "
              f"{r['ceiling_process_us_per_record']:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Resident memory of a real node process after writing 1,000,000 keys.

Starts `unison node ... replicator` as a subprocess, writes the keys through the batch
endpoint (`POST /api/v1/{ns}/kv/batch`, 1,000 keys of 100 B per request, a few
connections), checks the namespace's LSN reached the key count, then reads VmRSS and
VmHWM from /proc/<pid>/status. RSS is sampled during the load for the plot.

    python -m bench.run --only rss
"""

from __future__ import annotations

import asyncio
import base64
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from bench.report import Outcome
from tests.support.nodes import NodeProcess, single_node_config

NAMESPACE = "bench-rss"
MIB = 1024 * 1024


@dataclass(frozen=True)
class RssSizes:
    keys: int
    batch: int = 1000
    value_size: int = 100
    connections: int = 4


SIZES = {
    "smoke": RssSizes(keys=5_000, batch=500, connections=2),
    "full": RssSizes(keys=1_000_000),
}


def proc_memory(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM (peak RSS) of a process, in MiB, from /proc."""
    out: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        field, _, rest = line.partition(":")
        if field in ("VmRSS", "VmHWM"):
            out[field] = int(rest.split()[0]) * 1024 / MIB  # the kernel reports kB
    if "VmRSS" not in out:
        raise RuntimeError(f"/proc/{pid}/status has no VmRSS (has the process exited?)")
    return out


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


async def write_keys(port: int, sizes: RssSizes, pid: int,
                     samples: list[tuple[float, float]]) -> float:
    """Write all keys; returns the seconds it took. Samples RSS into `samples`."""
    value = base64.b64encode(os.urandom(sizes.value_size)).decode()
    batches = iter(range(0, sizes.keys, sizes.batch))
    url = f"http://127.0.0.1:{port}/api/v1/{NAMESPACE}/kv/batch"
    start = time.perf_counter()

    async def sampler() -> None:
        while True:
            samples.append((time.perf_counter() - start, proc_memory(pid)["VmRSS"]))
            await asyncio.sleep(0.25)

    async def worker(session: aiohttp.ClientSession) -> None:
        for first in batches:
            items = [{"key": f"rss:{i:08d}", "value": value}
                     for i in range(first, min(first + sizes.batch, sizes.keys))]
            async with session.post(url, json={"operation": "put", "items": items}) as resp:
                if resp.status != 200:
                    raise RuntimeError(f"batch at key {first}: HTTP {resp.status}: "
                                       f"{(await resp.text())[:200]}")

    sampling = asyncio.create_task(sampler())
    try:
        connector = aiohttp.TCPConnector(limit=sizes.connections)
        timeout = aiohttp.ClientTimeout(total=None, sock_read=60)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            await asyncio.gather(*(worker(session) for _ in range(sizes.connections)))
    finally:
        sampling.cancel()
    return time.perf_counter() - start


def run(profile: str) -> Outcome:
    sizes = SIZES[profile]
    with tempfile.TemporaryDirectory(prefix="unison-bench-rss-") as d:
        tmp = Path(d)
        node = NodeProcess("rss", "replicator", single_node_config(tmp, [NAMESPACE]), tmp / "node")
        node.start()
        try:
            assert node.proc is not None
            pid = node.proc.pid
            start_mib = proc_memory(pid)["VmRSS"]
            samples: list[tuple[float, float]] = []
            seconds = asyncio.run(write_keys(node.http_port, sizes, pid, samples))
            status, body = node.api("GET", f"/api/v1/{NAMESPACE}/offset")
            if status != 200 or body.get("lsn") != sizes.keys:
                raise RuntimeError(f"after writing {sizes.keys} keys the namespace offset is "
                                   f"{body!r} (HTTP {status})")
            time.sleep(1.0)  # let background flushes settle before reading
            mem = proc_memory(pid)
            samples.append((samples[-1][0] + 1.0 if samples else 0.0, mem["VmRSS"]))
            disk = dir_size(tmp / "data" / NAMESPACE) / MIB
        finally:
            code = node.stop()
        if code not in (0, None):
            raise RuntimeError(f"node exited with code {code} on SIGTERM:\n{node.logs()[-2000:]}")
    return Outcome(
        metrics={
            "rss_mib": mem["VmRSS"],
            "rss_peak_mib": mem.get("VmHWM", mem["VmRSS"]),
            "rss_start_mib": start_mib,
            "disk_mib": disk,
            "write_keys_per_s": sizes.keys / seconds,
        },
        series={"resident memory (MiB)": samples},
        params={"keys": sizes.keys, "batch": sizes.batch, "value_size": sizes.value_size,
                "connections": sizes.connections},
        notes=[f"{sizes.keys:,} keys of {sizes.value_size} B written in batches of "
               f"{sizes.batch} over {sizes.connections} connections; RSS read from "
               "/proc/<pid>/status after the last batch was acknowledged"],
    )

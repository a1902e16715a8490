"""Replication benchmarks on real node processes (127.0.0.1):

- lag: dc1 takes writes open-loop at a steady rate (default 2,000/s, each to a new key:
  200/s as single PUTs, the rest as batch POSTs of 10, since a bare aiohttp server on
  this 2-core machine tops out near 1,000 requests/s); a watcher process holds a gRPC Stream on the relayer's replication port and timestamps
  each record as it arrives, i.e. the moment it is durable on the relayer and served
  onwards. lag = arrival - the PUT's HTTP acknowledgement (both CLOCK_MONOTONIC, shared
  by all processes). A record can reach the watcher before the load generator has read
  its acknowledgement; such samples count as 0 ms and are reported.
- catch-up: dc1 starts with 100,000 records; a fresh relayer replays them. Rate =
  records / time from the relayer's first applied record to its last (polled over gRPC
  LatestLSN every 5 ms); the rate including process start and connect is reported too.
- fan-out: one dc1, 20 relayers following it, one watcher process streaming from all
  20; lag p99 over every (relayer, write) pair at a lower rate (default 200/s: 20 relayer
  processes share the machine's cores with dc1, the watcher and the load generator).

    python -m bench.bench_replication            # full sizes -> bench/results/replication.json
    python -m bench.bench_replication --smoke    # tiny sizes, seconds
    python -m bench.bench_replication --only lag --rate 2000 --seconds 10

`run(profile)` ("smoke" | "full") is the entry point of the combined runner (bench.run).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import select
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from bench.procs import HOST, cpu_seconds, free_port, http_status, python_env, stop_process
from bench.report import percentile_or_nan

NAMESPACE = "ad-campaign-dc1"
RESULTS = Path(__file__).resolve().parent / "results" / "replication.json"
STOP_KEY = "bench-stop"
QUANTILES = [q / 2 for q in range(1, 200)]  # 0.5 .. 99.5
TARGETS = {"lag_p99_ms": ("<=", 10.0), "catchup_per_s": (">=", 50_000.0)}


@dataclass(frozen=True)
class Sizes:
    rate: float = 2000.0  # lag: writes per second on dc1
    seconds: float = 10.0  # lag: measured phase
    warmup: float = 1.0
    connections: int = 32  # keep-alive HTTP connections of the load generator
    value_size: int = 100
    probe_rate: float = 200.0  # of the writes, this many per second are single PUTs
    batch: int = 10  # the rest go as batch POSTs of this many keys
    catchup_records: int = 100_000
    fanout_relayers: int = 20
    fanout_rate: float = 200.0
    fanout_seconds: float = 10.0


SIZES = {
    "smoke": Sizes(rate=200.0, seconds=0.5, warmup=0.2, probe_rate=50.0, catchup_records=3000,
                   fanout_relayers=2, fanout_rate=100.0, fanout_seconds=0.5),
    "full": Sizes(),
}


# ---------------------------------------------------------------- small helpers


class Node:
    """One `unison node` subprocess with its config written under workdir."""

    def __init__(self, name: str, role: str, cfg: Any, workdir: Path) -> None:
        from unison.config import render_toml

        self.name, self.role, self.cfg = name, role, cfg
        self.log_path = workdir / f"{name}.log"
        path = workdir / f"{name}.toml"
        path.write_text(render_toml(cfg))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "unison.cli", "node", "-config", str(path), role],
                stdout=log, stderr=subprocess.STDOUT, env=python_env())

    @property
    def grpc_address(self) -> str:
        return f"{HOST}:{self.cfg.grpc.port}"

    def wait(self, path: str = "/healthz", timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: "
                                   f"{self.log_path.read_text()[-2000:]}")
            if http_status(self.cfg.http_port, path) == 200:
                return
            time.sleep(0.05)
        raise TimeoutError(f"{self.name}: {path} not 200 after {timeout}s")

    def stop(self) -> int | None:
        return stop_process(self.proc)


def plan(workdir: Path, relayers: int) -> tuple[Any, list[Any]]:
    """dc1 and `relayers` relayers following it, on free ports, quiet logs."""
    import copy

    from unison.config import LogConfig
    from unison.topology.plan import plan_cluster

    dc1_grpc = free_port()
    dc1_plan, relayer_plan = plan_cluster(
        [("dc1", [NAMESPACE])], ["dc1"], notifier_base_port=free_port(),
        base_dir=lambda n: str(workdir / n / "data"),
        upstream_address=lambda _dc, _port: f"{HOST}:{dc1_grpc}")
    dc1 = dc1_plan.config
    dc1.grpc.port = dc1_grpc
    out = []
    for i in range(relayers):
        cfg = copy.deepcopy(relayer_plan.config)
        cfg.grpc.port = free_port()
        cfg.storage.base_dir = str(workdir / f"relayer{i}" / "data")
        for n in cfg.notifiers:
            n.bind_port = free_port()
        out.append(cfg)
    for cfg in (dc1, *out):
        cfg.http_port = free_port()
        cfg.http.listen_ip = cfg.grpc.listen_ip = HOST
        cfg.log = LogConfig(log_level="warn")
    return dc1, out


# ---------------------------------------------------------------- the watcher process


async def _watch(addresses: list[str], prefix: str, idle: float) -> list[dict[str, int]]:
    """One Stream per relayer from its latest LSN + 1; key -> first arrival (monotonic ns)."""
    import grpc
    from unison.replication import replication_pb2 as pb
    from unison.replication import replication_pb2_grpc as pb_grpc

    arrivals: list[dict[str, int]] = [{} for _ in addresses]
    stop = STOP_KEY.encode()
    ready = asyncio.Event()
    seen_any = [False] * len(addresses)

    async def follow(i: int, addr: str) -> None:
        async with grpc.aio.insecure_channel(addr) as ch:
            stub = pb_grpc.ReplicationStub(ch)
            latest = await stub.LatestLSN(pb.LatestLSNRequest(namespace=NAMESPACE))
            call = stub.Stream(pb.StreamRequest(namespace=NAMESPACE, from_lsn=latest.lsn + 1,
                                                follower="bench-watcher"))
            mine = arrivals[i]
            while True:
                async with asyncio.timeout(idle):
                    msg = await call.read()
                now = time.monotonic_ns()
                if msg is grpc.aio.EOF:
                    return
                if msg.WhichOneof("body") != "batch" or not msg.batch.records:
                    continue
                if not seen_any[i]:
                    seen_any[i] = True
                    if all(seen_any):
                        ready.set()
                for r in msg.batch.records:
                    if r.key.startswith(prefix.encode()):
                        mine.setdefault(r.key.decode(), now)
                    elif r.key.startswith(stop):
                        return

    async def announce() -> None:
        await ready.wait()
        print("READY", flush=True)

    herald = asyncio.create_task(announce())
    try:
        await asyncio.gather(*(follow(i, a) for i, a in enumerate(addresses)))
    finally:
        herald.cancel()
    return arrivals


class Watcher:
    def __init__(self, addresses: list[str], workdir: Path, prefix: str) -> None:
        self.out = workdir / f"arrivals-{time.monotonic_ns()}.json"
        self._ready = False
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.bench_replication", "--watch", ",".join(addresses),
             "--arrivals", str(self.out), "--prefix", prefix],
            stdout=subprocess.PIPE, env=python_env())

    def ready(self) -> bool:
        """True once the watcher has said READY; sticky, since several load streams ask."""
        assert self.proc.stdout is not None
        if self._ready:
            return True
        if self.proc.poll() is not None:
            raise RuntimeError(f"watcher exited with {self.proc.returncode}")
        r, _, _ = select.select([self.proc.stdout], [], [], 0)
        self._ready = bool(r) and self.proc.stdout.readline().strip() == b"READY"
        return self._ready

    def arrivals(self, timeout: float = 60.0) -> list[dict[str, int]]:
        self.proc.wait(timeout)
        return json.loads(self.out.read_text())

    def close(self) -> None:
        stop_process(self.proc)


# ---------------------------------------------------------------- load generator


async def _load(port: int, prefix: str, rate: float, seconds: float, sizes: Sizes,
                until: Any = None, issued: dict[str, int] | None = None) -> dict[str, int]:
    """Open-loop writes on dc1 at `rate` writes/s in total, each to a new key: single PUTs
    (keys `<prefix>p<i>`, at most `sizes.probe_rate`/s) plus the rest as batch POSTs of
    `sizes.batch` keys (`<prefix>b<j>-<k>`), because this machine's HTTP stack cannot
    take 2,000 requests/s next to the nodes. Returns key -> monotonic ns of its 200
    acknowledgement (a batch acknowledges all its keys at once) and fills `issued`.
    Runs `seconds`, or (with `until`) until until() is true (at most 60 s)."""
    import aiohttp

    value = base64.b64encode(os.urandom(sizes.value_size)).decode()
    single = json.dumps({"value": value})
    base = f"http://{HOST}:{port}/api/v1/{NAMESPACE}/kv"
    headers = {"Content-Type": "application/json"}
    acks: dict[str, int] = {}
    issued = {} if issued is None else issued
    errors: list[str] = []

    async def request(session: aiohttp.ClientSession, method: str, url: str, body: str,
                      keys: list[str]) -> None:
        t = time.monotonic_ns()
        for k in keys:
            issued[k] = t
        async with session.request(method, url, data=body, headers=headers) as r:
            await r.read()
            if r.status != 200:
                errors.append(f"{method} {url}: HTTP {r.status}")
                return
        t = time.monotonic_ns()
        for k in keys:
            acks[k] = t

    probe_rate = min(rate, sizes.probe_rate)
    batch_rate = (rate - probe_rate) / sizes.batch  # batch requests per second

    def probe(session: aiohttp.ClientSession, i: int) -> Any:
        key = f"{prefix}p{i}"
        return request(session, "PUT", f"{base}/{key}", single, [key])

    def batch(session: aiohttp.ClientSession, j: int) -> Any:
        keys = [f"{prefix}b{j}-{k}" for k in range(sizes.batch)]
        body = json.dumps({"operation": "put",
                           "items": [{"key": k, "value": value} for k in keys]})
        return request(session, "POST", f"{base}/batch", body, keys)

    async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=sizes.connections)) as session:
        streams = [_open_loop(lambda i: probe(session, i), 1 / probe_rate, seconds, until)]
        if batch_rate > 0:
            streams.append(_open_loop(lambda j: batch(session, j), 1 / batch_rate, seconds,
                                      until))
        await asyncio.gather(*streams)
    if errors:
        raise RuntimeError(f"{len(errors)} writes failed; first: {errors[0]}")
    return acks


async def _open_loop(make: Any, every: float, seconds: float, until: Any) -> None:
    """Start make(i) every `every` seconds (open loop: not waiting for the previous one)
    for `seconds`, or (with `until`) until until() is true (at most 60 s); await them all."""
    tasks = []
    t0 = time.monotonic()
    i = 0
    while True:
        due = t0 + i * every
        if (until is None and due - t0 >= seconds) or (until is not None and
                                                      (until() or due - t0 >= 60)):
            break
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(make(i)))
        i += 1
    await asyncio.gather(*tasks)


def _lags(acks: dict[str, int], arrivals: dict[str, int]) -> tuple[list[float], int, int]:
    """(sorted lags in ms, records missing, arrived before their ack)."""
    lags, missing, early = [], 0, 0
    for key, t_ack in acks.items():
        t = arrivals.get(key)
        if t is None:
            missing += 1
            continue
        ms = (t - t_ack) / 1e6
        if ms < 0:
            early, ms = early + 1, 0.0
        lags.append(ms)
    lags.sort()
    return lags, missing, early


LAG_WINDOW_S = 0.25


def _lag_over_time(acks: dict[str, int], arrivals: dict[str, int]) -> list[tuple[float, float]]:
    """(seconds since the first ack, p99 lag in ms) per LAG_WINDOW_S window of acks."""
    if not acks:
        return []
    t0 = min(acks.values())
    windows: dict[int, list[float]] = {}
    for key, t_ack in acks.items():
        t = arrivals.get(key)
        if t is not None:
            windows.setdefault(int((t_ack - t0) / 1e9 / LAG_WINDOW_S), []).append(
                max(0.0, (t - t_ack) / 1e6))
    return [(w * LAG_WINDOW_S, percentile_or_nan(sorted(v), 99))
            for w, v in sorted(windows.items())]


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time so far of a process and its children (a node's WAL sync
    helpers), from Linux /proc; 0 where unavailable."""
    try:
        return cpu_seconds(pid)
    except (OSError, ValueError, IndexError):
        return 0.0


def _measure_lag(dc1: Node, relayers: list[Node], workdir: Path, rate: float, seconds: float,
                 sizes: Sizes) -> dict[str, Any]:
    watcher = Watcher([r.grpc_address for r in relayers], workdir, prefix="m-")
    try:
        port = dc1.cfg.http_port
        asyncio.run(_load(port, "warm-", rate, 0, sizes, until=watcher.ready))
        asyncio.run(_load(port, "warm2-", rate, sizes.warmup, sizes))
        issued: dict[str, int] = {}
        # CPU per process over the measured phase: steadier than lag on a shared machine.
        pids = {"dc1": [dc1.proc.pid], "relayers": [r.proc.pid for r in relayers],
                "watcher": [watcher.proc.pid]}
        cpu0 = {k: sum(map(_cpu_seconds, v)) for k, v in pids.items()}
        acks = asyncio.run(_load(port, "m-", rate, seconds, sizes, issued=issued))
        cpu = {k: sum(map(_cpu_seconds, v)) - cpu0[k] for k, v in pids.items()}
        asyncio.run(_load(port, STOP_KEY, 1, 0.001, sizes))
        arrivals = watcher.arrivals()
    finally:
        watcher.close()
    probes = {k: t for k, t in acks.items() if k.startswith("m-p")}
    out: dict[str, Any] = {"writes": len(acks), "put_probes": len(probes),
                           "relayers": len(relayers),
                           **{f"cpu_{k}_s": v for k, v in cpu.items()}}
    for name, subset in (("", acks), ("probe_", probes)):
        lags: list[float] = []
        per_relayer_p99 = []
        missing = early = 0
        for got in arrivals:
            mine, miss, before = _lags(subset, got)
            lags += mine
            per_relayer_p99.append(percentile_or_nan(mine, 99))
            missing, early = missing + miss, early + before
        lags.sort()
        ack_ms = sorted((subset[k] - issued[k]) / 1e6 for k in subset)
        out.update({
            f"{name}p50_ms": percentile_or_nan(lags, 50), f"{name}p99_ms": percentile_or_nan(lags, 99),
            f"{name}max_ms": lags[-1] if lags else float("nan"),
            f"{name}missing": missing, f"{name}before_ack": early,
            f"{name}worst_relayer_p99_ms": max(per_relayer_p99, default=float("nan")),
            f"{name}ack_p50_ms": percentile_or_nan(ack_ms, 50),
            f"{name}ack_p99_ms": percentile_or_nan(ack_ms, 99),
        })
        if not name:
            out["quantiles_ms"] = [percentile_or_nan(lags, q) for q in QUANTILES]
            out["over_time"] = _lag_over_time(subset, arrivals[0]) if arrivals else []
    return out


# ---------------------------------------------------------------- the three benchmarks


def bench_lag(sizes: Sizes) -> dict[str, Any]:
    """Lag at a steady write rate, dc1 -> one relayer."""
    with tempfile.TemporaryDirectory(prefix="unison-bench-repl-") as d:
        workdir = Path(d)
        dc1_cfg, (relayer_cfg,) = plan(workdir, 1)
        dc1 = Node("dc1", "replicator", dc1_cfg, workdir)
        nodes = [dc1]
        try:
            dc1.wait()
            relayer = Node("relayer", "relayer", relayer_cfg, workdir)
            nodes.append(relayer)
            relayer.wait("/readyz")
            r = _measure_lag(dc1, [relayer], workdir, sizes.rate, sizes.seconds, sizes)
        finally:
            r_codes = [n.stop() for n in reversed(nodes)]
        r["rate"] = sizes.rate
        r["node_exit_codes"] = r_codes
        return r


def _prefill(base_dir: str, records: int, value_size: int) -> None:
    """Write `records` puts straight into dc1's namespace store before dc1 starts."""
    from unison.storage import Mutation, NamespaceStore, Op

    async def fill() -> None:
        store = NamespaceStore(NAMESPACE, Path(base_dir) / NAMESPACE).open()
        store.start()
        value = os.urandom(value_size)
        try:
            for start in range(0, records, 1000):
                await store.write([Mutation(Op.PUT, f"key-{i:08d}".encode(), value)
                                   for i in range(start, min(records, start + 1000))])
        finally:
            await store.close()

    asyncio.run(fill())


def bench_catchup(sizes: Sizes) -> dict[str, Any]:
    """A fresh relayer replays dc1's whole log."""
    import grpc
    from unison.replication import replication_pb2 as pb
    from unison.replication import replication_pb2_grpc as pb_grpc

    n = sizes.catchup_records
    with tempfile.TemporaryDirectory(prefix="unison-bench-catchup-") as d:
        workdir = Path(d)
        dc1_cfg, (relayer_cfg,) = plan(workdir, 1)
        _prefill(dc1_cfg.storage.base_dir, n, sizes.value_size)
        dc1 = Node("dc1", "replicator", dc1_cfg, workdir)
        nodes = [dc1]
        series: list[tuple[float, int]] = []
        try:
            dc1.wait()
            t_start = time.monotonic()
            nodes.append(Node("relayer", "relayer", relayer_cfg, workdir))
            channel = grpc.insecure_channel(nodes[1].grpc_address)
            stub = pb_grpc.ReplicationStub(channel)
            deadline = t_start + 300
            lsn = 0
            while lsn < n:
                if time.monotonic() > deadline or nodes[1].proc.poll() is not None:
                    raise RuntimeError(f"relayer did not catch up (lsn {lsn} of {n})")
                try:
                    lsn = stub.LatestLSN(pb.LatestLSNRequest(namespace=NAMESPACE),
                                         timeout=2).lsn
                except grpc.RpcError:
                    lsn = 0  # not listening yet
                if lsn:
                    series.append((time.monotonic(), lsn))
                time.sleep(0.005)
            channel.close()
        finally:
            codes = [node.stop() for node in reversed(nodes)]
    (t0, lsn0), (t1, lsn1) = series[0], series[-1]
    replay_s = max(t1 - t0, 1e-9)
    with_start = n / (t1 - t_start)
    return {
        "records": n,
        # Too few records to see progress between two polls: fall back to the wider figure.
        "per_s": (lsn1 - lsn0) / replay_s if lsn1 > lsn0 else with_start,
        "replay_seconds": replay_s,
        "with_start_per_s": with_start,
        "with_start_seconds": t1 - t_start,
        "series": [(t - t_start, float(v)) for t, v in series[:: max(1, len(series) // 200)]],
        "node_exit_codes": codes,
    }


def bench_fanout(sizes: Sizes) -> dict[str, Any]:
    """One dc1, many relayers; lag over every relayer at a modest rate."""
    with tempfile.TemporaryDirectory(prefix="unison-bench-fanout-") as d:
        workdir = Path(d)
        dc1_cfg, relayer_cfgs = plan(workdir, sizes.fanout_relayers)
        dc1 = Node("dc1", "replicator", dc1_cfg, workdir)
        nodes = [dc1]
        try:
            dc1.wait()
            relayers = [Node(f"relayer{i}", "relayer", cfg, workdir)
                        for i, cfg in enumerate(relayer_cfgs)]
            nodes += relayers
            for r in relayers:
                r.wait("/readyz", timeout=300)
            result = _measure_lag(dc1, relayers, workdir, sizes.fanout_rate,
                                  sizes.fanout_seconds, sizes)
        finally:
            codes = [n.stop() for n in reversed(nodes)]
        result["rate"] = sizes.fanout_rate
        result["node_exit_codes"] = codes
        return result


def measure(sizes: Sizes, only: list[str] | None = None) -> dict[str, Any]:
    parts = only or ["lag", "catchup", "fanout"]
    out: dict[str, Any] = {"params": asdict(sizes), "cpus": os.cpu_count(), "targets": TARGETS,
                           "loadavg_before": os.getloadavg()}
    if "lag" in parts:
        out["lag"] = bench_lag(sizes)
    if "catchup" in parts:
        out["catchup"] = bench_catchup(sizes)
    if "fanout" in parts:
        out["fanout"] = bench_fanout(sizes)
    # Other work on the machine inflates every figure; keep the evidence with them.
    out["loadavg_after"] = os.getloadavg()
    return out


def summary(r: dict[str, Any]) -> dict[str, float]:
    m: dict[str, float] = {}
    if "lag" in r:
        lag = r["lag"]
        m.update(lag_p50_ms=lag["p50_ms"], lag_p99_ms=lag["p99_ms"], lag_max_ms=lag["max_ms"],
                 lag_missing=lag["missing"], lag_put_probe_p50_ms=lag["probe_p50_ms"],
                 lag_put_probe_p99_ms=lag["probe_p99_ms"], ack_p50_ms=lag["ack_p50_ms"],
                 ack_p99_ms=lag["ack_p99_ms"], lag_cpu_dc1_s=lag["cpu_dc1_s"],
                 lag_cpu_relayer_s=lag["cpu_relayers_s"],
                 lag_cpu_dc1_us_per_write=lag["cpu_dc1_s"] * 1e6 / max(1, lag["writes"]),
                 lag_cpu_relayer_us_per_record=lag["cpu_relayers_s"] * 1e6 / max(1, lag["writes"]))
    if "catchup" in r:
        m.update(catchup_per_s=r["catchup"]["per_s"],
                 catchup_with_start_per_s=r["catchup"]["with_start_per_s"])
    if "fanout" in r:
        m.update(fanout_lag_p50_ms=r["fanout"]["p50_ms"], fanout_lag_p99_ms=r["fanout"]["p99_ms"],
                 fanout_worst_relayer_p99_ms=r["fanout"]["worst_relayer_p99_ms"],
                 fanout_missing=r["fanout"]["missing"],
                 fanout_cpu_dc1_s=r["fanout"]["cpu_dc1_s"],
                 fanout_cpu_relayers_s=r["fanout"]["cpu_relayers_s"])
    return {k: float(v) for k, v in m.items()}


def run(profile: str) -> Any:
    """Entry point for the combined runner (bench.run): returns a `bench.report.Outcome`."""
    from bench.report import Outcome

    sizes = SIZES[profile]
    r = measure(sizes)
    lag_series = f"replication lag p99 per {LAG_WINDOW_S:g} s (ms)"
    return Outcome(
        metrics=summary(r),
        samples={"PUT ack on dc1 -> record streamed by the relayer (quantiles)":
                 r["lag"]["quantiles_ms"],
                 f"fan-out to {sizes.fanout_relayers} relayers (quantiles)":
                 r["fanout"]["quantiles_ms"]},
        series={"catch-up: relayer lsn": r["catchup"]["series"],
                lag_series: r["lag"]["over_time"]},
        params=asdict(sizes),
        # The load lasts sizes.seconds from the first ack: a later window is not a full one.
        windows={lag_series: (LAG_WINDOW_S, sizes.seconds)},
        notes=[f"lag: {r['lag']['writes']} writes at {sizes.rate:g}/s ({r['lag']['put_probes']} "
               f"single PUTs, the rest in batches of {sizes.batch}), {r['lag']['missing']} "
               f"missing, {r['lag']['before_ack']} streamed before their ack (0 ms)",
               f"catch-up: {sizes.catchup_records} records; "
               f"{r['catchup']['with_start_per_s']:.0f}/s including relayer start",
               f"fan-out: {sizes.fanout_relayers} relayers at {sizes.fanout_rate:g}/s, "
               f"{r['fanout']['missing']} missing"],
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_replication", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks the harness")
    p.add_argument("--only", nargs="+", choices=["lag", "catchup", "fanout"])
    p.add_argument("--rate", type=float, help="lag: writes per second (default 2000)")
    p.add_argument("--probe-rate", type=float,
                   help="of those, single PUTs per second (default 200; the rest are batched)")
    p.add_argument("--batch", type=int, help="keys per batch POST (default 10)")
    p.add_argument("--seconds", type=float, help="lag: measured seconds (default 10)")
    p.add_argument("--records", type=int, help="catch-up: records (default 100000)")
    p.add_argument("--relayers", type=int, help="fan-out: relayers (default 20)")
    p.add_argument("--fanout-rate", type=float, help="fan-out: PUTs per second (default 200)")
    p.add_argument("--out", type=Path, default=RESULTS, help="JSON result file")
    p.add_argument("--watch", help=argparse.SUPPRESS)
    p.add_argument("--arrivals", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--prefix", default="m-", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.watch:
        arrivals = asyncio.run(_watch(args.watch.split(","), args.prefix, idle=60.0))
        args.arrivals.write_text(json.dumps(arrivals))
        return 0

    sizes = SIZES["smoke" if args.smoke else "full"]
    overrides = {k: v for k, v in (("rate", args.rate), ("seconds", args.seconds),
                                   ("probe_rate", args.probe_rate), ("batch", args.batch),
                                   ("catchup_records", args.records),
                                   ("fanout_relayers", args.relayers),
                                   ("fanout_rate", args.fanout_rate)) if v is not None}
    for k, v in overrides.items():
        if v <= 0:
            p.error(f"--{k.replace('_', '-')} must be positive")
    sizes = replace(sizes, **overrides)
    r = measure(sizes, args.only)
    r["command"] = "python -m bench.bench_replication " + " ".join(argv or sys.argv[1:])
    r["summary"] = summary(r)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(r, indent=2) + "\n")
    for k, v in r["summary"].items():
        print(f"{k:32s} {v:12.2f}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

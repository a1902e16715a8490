"""Issue 17's table: the seed topology under wrk, one variant against another.

dc1 and dc2 (replicators) and a relayer following both (a ZeroMQ notifier per
namespace, `write_notify_config.max_delay` 20 ms as in the seed). Per variant and round,
on a fresh cluster:

1. 100,000 keys of 1 KB written to dc1 in batches; RSS of dc1 and of the relayer once it
   holds them all;
2. PUT: wrk, 64 connections, each PUT a new 1 KB key, for `--seconds`: PUT/s, CPU per
   PUT on dc1 (all its processes, from /proc), and CPU per replicated record on the
   relayer (counted until it has applied everything dc1 acknowledged);
3. GET: wrk, 64 connections over the preloaded keys: GET/s and CPU per GET on dc1;
4. notifications: PUTs at 2,000/s for `--notify-seconds`, each a new key; ack (HTTP 200
   on dc1) to receipt on a ZeroMQ SUB of the relayer: p50 and p99.

A variant is a source tree (`--tree DIR`: its `node/` runs the nodes; default this
checkout), a durability mode (`synced`: acknowledged means fsynced, the default;
`interval`: `storage_config.wal_fsync_interval = 1s`, UnisonDB's default) and a number of
HTTP workers on dc1 (`http_config.workers`). Variants alternate within each round, so a
change in the machine's load hits them alike; figures are medians over rounds. The
ceiling (a bare aiohttp handler on the same event loop, same wrk load) is measured in
each round too.

    python -m bench.bench_seed                                   # synced vs interval, this tree
    python -m bench.bench_seed --tree /tmp/before --tree . --durability synced  # before/after
    python -m bench.bench_seed --workers 0 1 2 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.bench_http import NAMESPACE, PRELOAD_PREFIX, preload, run_wrk, start_bare
from bench.bench_notify import NotifySizes, Subscriber, _latencies, _put_at_rate
from bench.bench_rss import proc_memory
from bench.procs import (
    HOST,
    REPO,
    cpu_seconds,
    free_port,
    get_json,
    python_env,
    stop_process,
    wait_http,
)

RESULTS = Path(__file__).resolve().parent / "results" / "seed.json"
DC2_NAMESPACE = "bench-dc2"
FSYNC_INTERVAL_S = 1.0  # UnisonDB's default wal_fsync_interval
CATCH_UP_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class SeedSizes:
    preload: int = 100_000
    value_size: int = 1024
    connections: int = 64
    seconds: float = 5.0
    notify_rate: float = 2000.0
    notify_seconds: float = 5.0
    max_delay: float = 0.02
    rounds: int = 3


SIZES = {
    "smoke": SeedSizes(preload=2000, connections=8, seconds=1.0, notify_rate=200.0,
                       notify_seconds=1.0, rounds=1),
    "full": SeedSizes(rounds=1),
}


@dataclass(frozen=True)
class Variant:
    tree: Path  # a checkout whose node/ runs the nodes
    durability: str = "synced"  # or "interval"
    workers: int = 0  # dc1's http_config.workers

    @property
    def label(self) -> str:
        tree = "this tree" if self.tree == REPO else self.tree.name
        workers = f", {self.workers} workers" if self.workers else ""
        return f"{tree}, {self.durability}{workers}"


@dataclass
class Figures:
    """One variant in one round."""

    put_per_s: float = 0.0
    put_cpu_us: float = 0.0
    put_p50_ms: float = 0.0
    put_p99_ms: float = 0.0
    relayer_cpu_us_per_record: float = 0.0
    get_per_s: float = 0.0
    get_cpu_us: float = 0.0
    rss_dc1_mib: float = 0.0
    rss_relayer_mib: float = 0.0
    notify_p50_ms: float = 0.0
    notify_p99_ms: float = 0.0
    notify_missing: float = 0.0
    errors: float = 0.0
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- the cluster


def _configs(workdir: Path, variant: Variant, max_delay: float) -> tuple[Any, Any, Any]:
    from unison.config import LogConfig, WriteNotifyConfig
    from unison.topology.plan import plan_cluster

    grpc = {"dc1": free_port(), "dc2": free_port()}
    plans = plan_cluster([("dc1", [NAMESPACE]), ("dc2", [DC2_NAMESPACE])], ["dc1", "dc2"],
                         notifier_base_port=free_port(),
                         base_dir=lambda n: str(workdir / n / "data"),
                         upstream_address=lambda dc, _p: f"{HOST}:{grpc[dc]}")
    dc1, dc2, relayer = (p.config for p in plans)
    for name, cfg in (("dc1", dc1), ("dc2", dc2), ("relayer", relayer)):
        cfg.http_port = free_port()
        cfg.http.listen_ip = HOST
        cfg.grpc.listen_ip = HOST
        cfg.grpc.port = grpc.get(name) or free_port()
        cfg.log = LogConfig(log_level="warn")
        cfg.write_notify = WriteNotifyConfig(enabled=True, max_delay=max_delay)
        if variant.durability == "interval":
            cfg.storage.wal_fsync_interval = FSYNC_INTERVAL_S
    if variant.workers:
        dc1.http.workers = variant.workers
    return dc1, dc2, relayer


def _env(tree: Path) -> dict[str, str]:
    env = python_env()
    if tree != REPO:  # the other tree's package first, this one's bench/ still importable
        env["PYTHONPATH"] = str(tree / "node") + os.pathsep + env["PYTHONPATH"]
    return env


class Cluster:
    def __init__(self, workdir: Path, variant: Variant, sizes: SeedSizes) -> None:
        self.workdir = workdir
        self.variant = variant
        self.dc1, self.dc2, self.relayer = _configs(workdir, variant, sizes.max_delay)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self) -> None:
        for name, cfg, role in (("dc1", self.dc1, "replicator"), ("dc2", self.dc2, "replicator"),
                                ("relayer", self.relayer, "relayer")):
            self.procs[name] = self._spawn(name, cfg, role)
        for name, cfg in (("dc1", self.dc1), ("dc2", self.dc2), ("relayer", self.relayer)):
            wait_http(cfg.http_port, "/readyz", self.procs[name], timeout=90)

    def _spawn(self, name: str, cfg: Any, role: str) -> subprocess.Popen[bytes]:
        from unison.config import render_toml

        path = self.workdir / f"{name}.toml"
        path.write_text(render_toml(cfg))
        with open(self.workdir / f"{name}.log", "ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "unison.cli", "node", "-config", str(path), role],
                stdout=log, stderr=subprocess.STDOUT, env=_env(self.variant.tree),
                start_new_session=True)

    def lsn(self, port: int) -> int:
        status, body = get_json(port, f"/api/v1/{NAMESPACE}/offset")
        if status != 200:
            raise RuntimeError(f"GET /offset on port {port}: HTTP {status}")
        return int(body["lsn"])

    def wait_relayer(self) -> int:
        """Wait until the relayer holds everything dc1 holds; returns that LSN."""
        want = self.lsn(self.dc1.http_port)
        deadline = time.monotonic() + CATCH_UP_TIMEOUT_S
        while self.lsn(self.relayer.http_port) < want:
            if time.monotonic() > deadline:
                raise RuntimeError(f"the relayer did not reach lsn {want} within "
                                   f"{CATCH_UP_TIMEOUT_S:g}s")
            time.sleep(0.05)
        return want

    def log_tails(self, lines: int = 5) -> str:
        return "\n".join(f"{name}: " + " | ".join(
            (self.workdir / f"{name}.log").read_text(errors="replace").splitlines()[-lines:])
            for name in self.procs if (self.workdir / f"{name}.log").exists())

    def stop(self) -> list[int | None]:
        return [stop_process(p) for p in reversed(list(self.procs.values()))]


# ---------------------------------------------------------------- one variant


def _put_phase(c: Cluster, sizes: SeedSizes, tag: str, out: Figures) -> None:
    dc1, relayer = c.procs["dc1"].pid, c.procs["relayer"].pid
    lsn0 = c.lsn(c.dc1.http_port)
    cpu_dc0, cpu_rel0 = cpu_seconds(dc1), cpu_seconds(relayer)
    put = run_wrk(c.dc1.http_port, sizes.seconds, sizes.connections, sizes.value_size,
                  f"p{tag}-")
    cpu_dc = cpu_seconds(dc1) - cpu_dc0
    lsn1 = c.wait_relayer()
    cpu_rel = cpu_seconds(relayer) - cpu_rel0
    out.put_per_s, out.put_p50_ms, out.put_p99_ms = put.per_s, put.p50_ms, put.p99_ms
    out.put_cpu_us = cpu_dc * 1e6 / max(1, put.ok)
    out.relayer_cpu_us_per_record = cpu_rel * 1e6 / max(1, lsn1 - lsn0)
    out.errors += put.errors


def _get_phase(c: Cluster, sizes: SeedSizes, out: Figures) -> None:
    dc1 = c.procs["dc1"].pid
    cpu0 = cpu_seconds(dc1)
    get = run_wrk(c.dc1.http_port, sizes.seconds, sizes.connections, sizes.value_size,
                  PRELOAD_PREFIX, "GET", sizes.preload)
    out.get_per_s = get.per_s
    out.get_cpu_us = (cpu_seconds(dc1) - cpu0) * 1e6 / max(1, get.ok)
    out.errors += get.errors


def _notify_phase(c: Cluster, sizes: SeedSizes, out: Figures) -> None:
    port = next(n.bind_port for n in c.relayer.notifiers if n.namespace == NAMESPACE)
    ns = NotifySizes(rate=sizes.notify_rate, seconds=sizes.notify_seconds,
                     connections=sizes.connections, max_delay=sizes.max_delay)
    sub = Subscriber(f"tcp://{HOST}:{port}", c.workdir, namespace=NAMESPACE)

    def load(prefix: str, seconds: float, until: Any = None) -> dict[str, int]:
        return asyncio.run(_put_at_rate(c.dc1.http_port, prefix, ns.rate, seconds, ns,
                                        until, {}, namespace=NAMESPACE))
    try:
        load("warm-", 0, sub.ready)
        starts = load("n-", ns.seconds)
        load("bench-stop", 0.5)
        arrivals = sub.arrivals()
    finally:
        sub.close()
    lat = _latencies(starts, arrivals)
    out.notify_p50_ms, out.notify_p99_ms = lat["p50_ms"], lat["p99_ms"]
    out.notify_missing = lat["missing"]


def measure_variant(variant: Variant, sizes: SeedSizes, tag: str) -> Figures:
    """One fresh cluster; tried twice (ports are picked free before the nodes bind them,
    so another process can take one in between), failing with the nodes' log tails."""
    try:
        return _measure_once(variant, sizes, tag)
    except RuntimeError as first:
        print(f"... {variant.label}: {first}; trying again", file=sys.stderr, flush=True)
        return _measure_once(variant, sizes, tag + "r")


def _measure_once(variant: Variant, sizes: SeedSizes, tag: str) -> Figures:
    out = Figures()
    with tempfile.TemporaryDirectory(prefix="unison-bench-seed-") as d:
        c = Cluster(Path(d), variant, sizes)
        try:
            try:
                c.start()
            except RuntimeError as e:
                raise RuntimeError(f"{e}\n{c.log_tails()}") from None
            _check_mode(c, variant)
            preload(c.dc1.http_port, sizes.preload, sizes.value_size)
            c.wait_relayer()
            time.sleep(1.0)  # background flushes settle before RSS is read
            out.rss_dc1_mib = proc_memory(c.procs["dc1"].pid)["VmRSS"]
            out.rss_relayer_mib = proc_memory(c.procs["relayer"].pid)["VmRSS"]
            _put_phase(c, sizes, tag, out)
            _get_phase(c, sizes, out)
            _notify_phase(c, sizes, out)
        finally:
            codes = c.stop()
        if any(code not in (0, None) for code in codes):
            out.notes.append(f"{variant.label}: exit codes on SIGTERM {codes}")
    return out


def _check_mode(c: Cluster, variant: Variant) -> None:
    """The nodes run the mode asked for (an older tree that ignores the setting says so)."""
    status, stats = get_json(c.dc1.http_port, f"/api/v1/{NAMESPACE}/stats")
    mode = (stats or {}).get("durability", "synced") if status == 200 else "?"
    if mode != variant.durability:
        raise RuntimeError(f"{variant.label}: dc1 reports durability {mode!r}")


# ---------------------------------------------------------------- rounds


def _ceiling(sizes: SeedSizes, tag: str) -> dict[str, float]:
    """The bare aiohttp handler under the same PUT and GET loads."""
    port = free_port()
    proc = start_bare(port, "auto", sizes.value_size)
    try:
        cpu0 = cpu_seconds(proc.pid)
        put = run_wrk(port, sizes.seconds, sizes.connections, sizes.value_size, f"b{tag}-")
        cpu1 = cpu_seconds(proc.pid)
        get = run_wrk(port, sizes.seconds, sizes.connections, sizes.value_size,
                      PRELOAD_PREFIX, "GET", sizes.preload)
        cpu2 = cpu_seconds(proc.pid)
    finally:
        stop_process(proc)
    return {"put_per_s": put.per_s, "put_cpu_us": (cpu1 - cpu0) * 1e6 / max(1, put.ok),
            "get_per_s": get.per_s, "get_cpu_us": (cpu2 - cpu1) * 1e6 / max(1, get.ok)}


def measure(variants: list[Variant], sizes: SeedSizes,
            progress: Any = None) -> dict[str, Any]:
    runs: dict[str, list[Figures]] = {v.label: [] for v in variants}
    ceilings: list[dict[str, float]] = []
    for r in range(sizes.rounds):
        for i, v in enumerate(variants):
            if progress:
                progress(f"round {r + 1}/{sizes.rounds}: {v.label}")
            runs[v.label].append(measure_variant(v, sizes, f"{r}x{i}"))
        if progress:
            progress(f"round {r + 1}/{sizes.rounds}: ceiling")
        ceilings.append(_ceiling(sizes, str(r)))
    return {"params": asdict(sizes), "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "variants": {label: _median(figs) for label, figs in runs.items()},
            "rounds": {label: [asdict(f) for f in figs] for label, figs in runs.items()},
            "ceiling": {k: statistics.median(c[k] for c in ceilings) for k in ceilings[0]}}


def _median(figs: list[Figures]) -> dict[str, Any]:
    keys = [k for k in asdict(figs[0]) if k != "notes"]
    out: dict[str, Any] = {k: statistics.median(getattr(f, k) for f in figs) for k in keys}
    out["notes"] = list(itertools.chain.from_iterable(f.notes for f in figs))
    return out


# ---------------------------------------------------------------- output


ROWS = (("PUT req/s", "put_per_s", "{:,.0f}"), ("GET req/s", "get_per_s", "{:,.0f}"),
        ("CPU per PUT on dc1 (µs, all its processes)", "put_cpu_us", "{:.0f}"),
        ("CPU per GET on dc1 (µs)", "get_cpu_us", "{:.0f}"),
        ("CPU per replicated record on the relayer (µs)", "relayer_cpu_us_per_record",
         "{:.1f}"),
        ("PUT p99 (ms)", "put_p99_ms", "{:.1f}"),
        ("RSS after 100k keys, dc1 (MiB)", "rss_dc1_mib", "{:.0f}"),
        ("RSS after 100k keys, relayer (MiB)", "rss_relayer_mib", "{:.0f}"),
        ("ack-to-notification p50 (ms)", "notify_p50_ms", "{:.2f}"),
        ("ack-to-notification p99 (ms)", "notify_p99_ms", "{:.2f}"))


def table(result: dict[str, Any]) -> str:
    labels = list(result["variants"])
    ceiling = result["ceiling"]
    lines = ["| | " + " | ".join(labels) + " | ceiling (bare aiohttp handler) |",
             "|---" * (len(labels) + 2) + "|"]
    for title, key, fmt in ROWS:
        cells = [fmt.format(result["variants"][x][key]) for x in labels]
        bare = fmt.format(ceiling[key]) if key in ceiling else ""
        lines.append(f"| {title} | " + " | ".join(cells) + f" | {bare} |")
    return "\n".join(lines)


def run(profile: str) -> Any:
    """Entry point for bench.run: this tree, synced and interval."""
    from bench.report import Outcome

    sizes = SIZES[profile]
    variants = [Variant(REPO, "synced"), Variant(REPO, "interval")]
    r = measure(variants, sizes)
    synced, interval = (r["variants"][v.label] for v in variants)
    metrics = {f"{k}_{mode}": float(figs[k]) for mode, figs in (("synced", synced),
                                                                 ("interval", interval))
               for k in ("put_per_s", "put_cpu_us", "get_cpu_us", "relayer_cpu_us_per_record",
                         "notify_p50_ms")}
    metrics.update({f"bare_{k}": float(v) for k, v in r["ceiling"].items()})
    return Outcome(metrics=metrics, params={**r["params"], "variants": list(r["variants"])},
                   notes=[f"seed topology (dc1, dc2, relayer following both); "
                          f"{sizes.preload:,} keys preloaded; wrk {sizes.connections} "
                          f"connections; interval = wal_fsync_interval {FSYNC_INTERVAL_S:g}s"]
                   + synced["notes"] + interval["notes"])


def _variant(text: str) -> Variant:
    tree, mode, workers = [*text.split(","), "", ""][:3]
    mode, workers = mode or "synced", workers or "0"
    if mode not in ("synced", "interval") or not workers.isdigit():
        raise SystemExit(f"--variant {text!r}: expected TREE[,synced|interval[,WORKERS]]")
    return Variant(Path(tree).resolve(), mode, int(workers))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_seed", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tree", type=Path, action="append", default=None,
                   help="a checkout to run the nodes from (repeat to compare; default this one)")
    p.add_argument("--durability", nargs="+", choices=("synced", "interval"),
                   default=["synced", "interval"])
    p.add_argument("--workers", type=int, nargs="+", default=[0],
                   help="dc1's http_config.workers (several: one variant each)")
    p.add_argument("--variant", action="append", default=None, metavar="TREE[,MODE[,WORKERS]]",
                   help="one variant (repeat): e.g. /tmp/before,synced and .,interval,2; "
                   "instead of the product of --tree, --durability and --workers")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=SeedSizes.seconds)
    p.add_argument("--preload", type=int, default=SeedSizes.preload)
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks the harness")
    p.add_argument("--out", type=Path, default=RESULTS, help="JSON result file")
    args = p.parse_args(argv)
    trees = [t.resolve() for t in (args.tree or [REPO])]
    variants = ([_variant(text) for text in args.variant] if args.variant else
                [Variant(t, d, w) for t in trees for d in args.durability for w in args.workers])
    sizes = SIZES["smoke"] if args.smoke else SeedSizes(
        rounds=args.rounds, seconds=args.seconds, preload=args.preload)
    r = measure(variants, sizes, progress=lambda s: print(f"... {s}", file=sys.stderr,
                                                           flush=True))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(r, indent=2) + "\n")
    print(f"python {r['python']}, {r['cpus']} cores, {sizes.rounds} rounds (medians), "
          f"{sizes.preload:,} keys preloaded, wrk -c{sizes.connections} {sizes.seconds:g}s")
    print(table(r))
    for label, figs in r["variants"].items():
        for note in figs["notes"]:
            print(f"note: {label}: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

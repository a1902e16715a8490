"""Durable HTTP PUTs against a real node vs a bare aiohttp handler, in the same run.

A real node process (`unison node ... replicator`, durable group commit, data on disk)
takes 1 KB PUTs from `connections` concurrent keep-alive connections for a fixed time,
each to a new key; a bare aiohttp process with the same route and a handler that does
nothing takes the same load from the same generator. The two alternate for `rounds`
rounds (the machine is shared, so background load drifts); figures are medians. The
ratio is what the node's own work (JSON, base64, checks, durable write) costs.

The load generator runs in its own process: `wrk` (a C load generator; Debian package
`wrk`) when it is on PATH, else an aiohttp client process (slower, so it may then be the
bottleneck for both sides; the result names the generator it used).

    python -m bench.bench_http [--seconds 5] [--rounds 3] [--connections 64]  # -> bench/results/http.json
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from bench.procs import HOST, cpu_seconds, free_port, python_env, stop_process, wait_http

NAMESPACE = "bench"
ROUTE = "/api/v1/{ns}/kv/{key:.+}"
RESULTS = Path(__file__).resolve().parent / "results" / "http.json"
QUANTILES = [q / 2 for q in range(1, 200)]  # 0.5 .. 99.5: the latency distribution


@dataclass(frozen=True)
class HttpSizes:
    seconds: float
    connections: int = 64
    value_size: int = 1024
    warmup: float = 1.0
    rounds: int = 1  # bare/node pairs, alternating
    loop: str = "auto"  # event loop of both servers (unison.eventloop.CHOICES)
    op: str = "put"  # "get": GETs of `get_keys` preloaded keys (ceiling: the same GETs)
    get_keys: int = 10_000


SIZES = {
    "smoke": HttpSizes(seconds=1.0, connections=8, warmup=0.2, get_keys=500),
    "full": HttpSizes(seconds=5.0, rounds=3),
}


@dataclass
class LoadResult:
    """What the load generator saw against one server."""

    generator: str
    seconds: float
    ok: int  # 2xx answers
    errors: int  # non-2xx answers and socket errors
    p50_ms: float
    p99_ms: float
    quantiles_ms: list[float] = field(default_factory=list)  # at QUANTILES
    cpu_s: float = 0.0  # CPU the server (all its processes) spent during the run

    @property
    def cpu_us_per_op(self) -> float:
        return self.cpu_s * 1e6 / self.ok if self.ok else 0.0

    @property
    def per_s(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0


# ---------------------------------------------------------------- processes


def loop_env(loop: str) -> dict[str, str]:
    """A child Python's environment that runs `loop` (see unison.eventloop)."""
    return {**python_env(), "UNISON_EVENT_LOOP": loop}


def start_node(workdir: Path, port: int, loop: str = "auto") -> subprocess.Popen[bytes]:
    """A durable replicator for NAMESPACE on `port`, data under `workdir` (no gRPC)."""
    from unison.config import GrpcConfig, LogConfig, NodeConfig, StorageConfig, render_toml

    cfg = NodeConfig(http_port=port, grpc=GrpcConfig(port=0),
                     storage=StorageConfig(base_dir=str(workdir / "data"),
                                           namespaces=[NAMESPACE]),
                     log=LogConfig(log_level="warn"))
    cfg.http.listen_ip = HOST
    config = workdir / "node.toml"
    config.write_text(render_toml(cfg))
    log = open(workdir / "node.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen([sys.executable, "-m", "unison.cli", "node", "-config", str(config),
                             "replicator"], stdout=log, stderr=subprocess.STDOUT,
                            env=loop_env(loop))
    log.close()
    wait_http(port, "/healthz", proc)
    return proc


def start_bare(port: int, loop: str = "auto", value_size: int = 1024) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "bench.bench_http", "--serve-bare", str(port),
                             "--value-size", str(value_size)],
                            env=loop_env(loop))
    wait_http(port, "/healthz", proc)
    return proc


def serve_bare(port: int, value_size: int = 1024) -> None:
    """The ceiling: aiohttp with the node's route shape and a handler that does nothing, on
    the event loop the node would choose (UNISON_EVENT_LOOP)."""
    from aiohttp import web
    from unison import eventloop

    factory, name = eventloop.loop_factory(eventloop.choice_from_env())
    loop = factory() if factory is not None else asyncio.new_event_loop()

    async def nothing(request: web.Request) -> web.Response:
        return web.Response(body=b'{"success":true}', content_type="application/json")

    # A GET answers a prebuilt body the size of the node's (the kernel's loopback work
    # for the bytes sent is charged to the sender, and is a large part of a GET's CPU).
    found = f'{{"value":"{_value_b64(value_size)}","found":true}}'.encode()

    async def prebuilt(request: web.Request) -> web.Response:
        return web.Response(body=found, content_type="application/json")

    app = web.Application()
    app.router.add_put(ROUTE, nothing)
    app.router.add_get(ROUTE, prebuilt)
    app.router.add_get("/healthz", nothing)
    web.run_app(app, host=HOST, port=port, access_log=None, print=None, loop=loop)


# ---------------------------------------------------------------- load generators

_WRK_SCRIPT = """
local body = '{"value":"%(value)s"}'
local headers = {["Content-Type"] = "application/json"}
local prefix = "%(prefix)s"
local method = "%(method)s"
local nkeys = %(nkeys)d  -- 0: every request a new key; else cycle over keys 1..nkeys
local counter = 0
request = function()
  counter = counter + 1
  local k = counter
  if nkeys > 0 then k = (counter - 1) %% nkeys + 1 end
  if method == "GET" then return wrk.format("GET", prefix .. k) end
  return wrk.format("PUT", prefix .. k, headers, body)
end
done = function(summary, latency, requests)
  local q = {}
  for _, p in ipairs({%(quantiles)s}) do q[#q + 1] = string.format("%%.1f", latency:percentile(p)) end
  local e = summary.errors
  io.write(string.format('\\nWRK_JSON {"requests":%%d,"duration_us":%%d,"status":%%d,' ..
    '"socket":%%d,"p50_us":%%.1f,"p99_us":%%.1f,"quantiles_us":[%%s]}\\n',
    summary.requests, summary.duration, e.status, e.connect + e.read + e.write + e.timeout,
    latency:percentile(50), latency:percentile(99), table.concat(q, ",")))
end
"""


def _value_b64(value_size: int) -> str:
    return base64.b64encode(os.urandom(value_size)).decode()


def run_wrk(port: int, seconds: float, connections: int, value_size: int,
            key_prefix: str, method: str = "PUT", nkeys: int = 0) -> LoadResult:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(_WRK_SCRIPT % {
            "value": _value_b64(value_size),
            "prefix": f"/api/v1/{NAMESPACE}/kv/{key_prefix}",
            "method": method,
            "nkeys": nkeys,
            "quantiles": ",".join(str(q) for q in QUANTILES),
        })
        script = f.name
    try:
        duration = max(1, round(seconds))
        out = subprocess.run(
            ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--timeout", "10s", "-s", script,
             f"http://{HOST}:{port}/"],
            capture_output=True, text=True, timeout=duration + 60, check=True).stdout
    finally:
        os.unlink(script)
    line = next(x for x in out.splitlines() if x.startswith("WRK_JSON "))
    data = json.loads(line.removeprefix("WRK_JSON "))
    errors = data["status"] + data["socket"]
    return LoadResult(
        generator="wrk", seconds=data["duration_us"] / 1e6,
        ok=data["requests"] - data["status"], errors=errors,
        p50_ms=data["p50_us"] / 1000, p99_ms=data["p99_us"] / 1000,
        quantiles_ms=[x / 1000 for x in data["quantiles_us"]])


async def _aiohttp_load(port: int, seconds: float, connections: int, value_size: int,
                        key_prefix: str, get_keys: int = 0) -> dict[str, Any]:
    import aiohttp

    body = json.dumps({"value": _value_b64(value_size)}).encode()
    headers = {"Content-Type": "application/json"}
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + seconds
    base = f"http://{HOST}:{port}/api/v1/{NAMESPACE}/kv/{key_prefix}"

    async def worker(session: aiohttp.ClientSession, w: int) -> None:
        nonlocal errors
        n = 0
        while time.perf_counter() < stop_at:
            n += 1
            t0 = time.perf_counter()
            try:
                if get_keys:  # keys 1..get_keys, spread over the workers
                    request = session.get(f"{base}{(w * 7919 + n) % get_keys + 1}")
                else:
                    request = session.put(f"{base}{w}-{n}", data=body, headers=headers)
                async with request as r:
                    await r.read()
                    ok = r.status == 200
            except aiohttp.ClientError:
                ok = False
            if ok:
                latencies.append((time.perf_counter() - t0) * 1000)
            else:
                errors += 1

    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(session, w) for w in range(connections)))
        elapsed = time.perf_counter() - t0
    latencies.sort()

    def q(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(len(latencies) * p / 100))] if latencies else 0.0

    return {"seconds": elapsed, "ok": len(latencies), "errors": errors, "p50_ms": q(50),
            "p99_ms": q(99), "quantiles_ms": [q(p) for p in QUANTILES]}


def run_aiohttp_client(port: int, seconds: float, connections: int, value_size: int,
                       key_prefix: str, get_keys: int = 0) -> LoadResult:
    """The aiohttp load generator, in its own process so it does not share the server's loop."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.bench_http", "--load", str(port), "--seconds", str(seconds),
         "--connections", str(connections), "--value-size", str(value_size),
         "--key-prefix", key_prefix, "--get-keys", str(get_keys)],
        capture_output=True, text=True, timeout=seconds + 60, check=True, env=python_env()).stdout
    return LoadResult(generator="aiohttp-client", **json.loads(out.strip().splitlines()[-1]))


def drive_puts(port: int, seconds: float, connections: int, value_size: int, key_prefix: str,
               generator: str = "auto", get_keys: int = 0) -> LoadResult:
    """PUTs to new keys; with `get_keys`, GETs cycling over keys 1..get_keys."""
    if generator == "auto":
        generator = "wrk" if shutil.which("wrk") else "aiohttp"
    if get_keys:
        if generator == "wrk":
            return run_wrk(port, seconds, connections, value_size, key_prefix, "GET", get_keys)
        return run_aiohttp_client(port, seconds, connections, value_size, key_prefix, get_keys)
    run = run_wrk if generator == "wrk" else run_aiohttp_client
    return run(port, seconds, connections, value_size, key_prefix)


# ---------------------------------------------------------------- the measurement


PRELOAD_PREFIX = "g-"


def preload(port: int, keys: int, value_size: int) -> None:
    """Keys g-1..g-<keys> with `value_size` random bytes, through POST /kv/batch."""
    value = _value_b64(value_size)
    for first in range(1, keys + 1, 1000):
        items = [{"key": f"{PRELOAD_PREFIX}{i}", "value": value}
                 for i in range(first, min(first + 1000, keys + 1))]
        request = urllib.request.Request(
            f"http://{HOST}:{port}/api/v1/{NAMESPACE}/kv/batch", method="POST",
            data=json.dumps({"operation": "put", "items": items}).encode(),
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=60) as r:
            r.read()


def _node_offset(port: int) -> int:
    with urllib.request.urlopen(f"http://{HOST}:{port}/api/v1/{NAMESPACE}/offset") as r:
        return int(json.loads(r.read())["lsn"])


def _node_commits(port: int) -> int:
    with urllib.request.urlopen(f"http://{HOST}:{port}/api/v1/{NAMESPACE}/stats") as r:
        return int(json.loads(r.read())["commits"])


def measure(sizes: HttpSizes, generator: str = "auto",
            loops: list[str] | None = None) -> dict[str, Any]:
    """Both servers up, then `rounds` x (bare, node) under the same load, alternating so
    that a change in the machine's background load hits both sides alike. Figures are
    medians over rounds. Returns a flat result; with several `loops`, a pair of servers
    per event loop, all alternating in each round, and {"loops": {loop: result}}."""
    loops = loops or [sizes.loop]

    def load(proc: subprocess.Popen[bytes], port: int, seconds: float,
             prefix: str, get_keys: int = 0) -> LoadResult:
        cpu0 = cpu_seconds(proc.pid)
        result = drive_puts(port, seconds, sizes.connections, sizes.value_size, prefix,
                            generator, get_keys)
        result.cpu_s = cpu_seconds(proc.pid) - cpu0
        return result

    runs: dict[str, tuple[list[LoadResult], list[LoadResult]]] = {x: ([], []) for x in loops}
    marks: dict[str, list[tuple[int, int]]] = {x: [] for x in loops}
    codes: dict[str, int | None] = {}
    with tempfile.TemporaryDirectory(prefix="unison-bench-http-") as d, ExitStack() as stack:
        servers = {}
        for x in loops:
            bare_port, node_port = free_port(), free_port()
            bare = start_bare(bare_port, x, sizes.value_size)
            stack.callback(stop_process, bare)
            (Path(d) / x).mkdir()
            node = start_node(Path(d) / x, node_port, x)
            stack.callback(lambda x=x, node=node: codes.__setitem__(x, stop_process(node)))
            servers[x] = (bare, bare_port, node, node_port)
        for x, (bare, bare_port, node, node_port) in servers.items():
            if sizes.warmup:
                load(bare, bare_port, sizes.warmup, "warm-")
                load(node, node_port, sizes.warmup, "warm-")
            if sizes.op == "get":
                preload(node_port, sizes.get_keys, sizes.value_size)
            marks[x].append((_node_offset(node_port), _node_commits(node_port)))
        for r in range(sizes.rounds):
            for x, (bare, bare_port, node, node_port) in servers.items():
                keys = sizes.get_keys if sizes.op == "get" else 0
                prefix = PRELOAD_PREFIX if keys else f"r{r}-"
                runs[x][0].append(load(bare, bare_port, sizes.seconds, prefix, keys))
                runs[x][1].append(load(node, node_port, sizes.seconds, prefix, keys))
        for x, (_, _, _, node_port) in servers.items():
            marks[x].append((_node_offset(node_port), _node_commits(node_port)))
    results = {x: _summary(sizes, x, *runs[x], *marks[x], codes.get(x)) for x in loops}
    return results[loops[0]] if len(loops) == 1 else {"loops": results}


def _summary(sizes: HttpSizes, loop: str, bare_runs: list[LoadResult],
             node_runs: list[LoadResult], before: tuple[int, int], after: tuple[int, int],
             code: int | None) -> dict[str, Any]:
    (lsn0, commits0), (lsn1, commits1) = before, after
    acknowledged = sum(x.ok for x in node_runs)
    committed = lsn1 - lsn0
    if sizes.op == "put" and committed < acknowledged:
        raise RuntimeError(f"node acknowledged {acknowledged} PUTs but committed only {committed}")
    node = _median_run(node_runs)
    bare = _median_run(bare_runs)
    put_per_s = statistics.median(x.per_s for x in node_runs)
    bare_per_s = statistics.median(x.per_s for x in bare_runs)
    return {
        "loop": loop,
        "put_per_s": put_per_s,
        "put_p50_ms": statistics.median(x.p50_ms for x in node_runs),
        "put_p99_ms": statistics.median(x.p99_ms for x in node_runs),
        "put_cpu_us": statistics.median(x.cpu_us_per_op for x in node_runs),
        "bare_per_s": bare_per_s,
        "bare_p50_ms": statistics.median(x.p50_ms for x in bare_runs),
        "bare_p99_ms": statistics.median(x.p99_ms for x in bare_runs),
        "bare_cpu_us": statistics.median(x.cpu_us_per_op for x in bare_runs),
        "ratio": put_per_s / bare_per_s if bare_per_s else 0.0,
        "round_ratios": [n.per_s / b.per_s if b.per_s else 0.0
                         for n, b in zip(node_runs, bare_runs, strict=True)],
        "put_errors": sum(x.errors for x in node_runs),
        "bare_errors": sum(x.errors for x in bare_runs),
        "puts_acknowledged": acknowledged,
        "records_committed": committed,
        "group_size": committed / (commits1 - commits0) if commits1 > commits0 else 0.0,
        "node_exit_code": code,
        "generator": node.generator,
        "node": asdict(node),
        "bare": asdict(bare),
        "node_rounds": [_brief(x) for x in node_runs],
        "bare_rounds": [_brief(x) for x in bare_runs],
        "params": {**asdict(sizes), "loop": loop},
        "cpus": os.cpu_count(),
        "load_average": list(os.getloadavg()),
    }


def _median_run(runs: list[LoadResult]) -> LoadResult:
    return sorted(runs, key=lambda x: x.per_s)[len(runs) // 2]


def _brief(x: LoadResult) -> dict[str, float]:
    return {"per_s": round(x.per_s, 1), "p50_ms": round(x.p50_ms, 3), "p99_ms": round(x.p99_ms, 3),
            "cpu_us_per_op": round(x.cpu_us_per_op, 1), "errors": x.errors}


def run(profile: str) -> Any:
    """Entry point for the combined bench runner: returns a `bench.report.Outcome`."""
    from bench.report import Outcome

    sizes = SIZES[profile]
    r = measure(sizes)
    metrics = {k: float(r[k]) for k in ("put_per_s", "put_p50_ms", "put_p99_ms", "bare_per_s",
                                        "bare_p50_ms", "bare_p99_ms", "group_size",
                                        "put_cpu_us", "bare_cpu_us")}
    g = measure(replace(sizes, op="get"))  # the same figures, named put_* and bare_*
    metrics.update(get_per_s=g["put_per_s"], get_cpu_us=g["put_cpu_us"],
                   bare_get_per_s=g["bare_per_s"], bare_get_cpu_us=g["bare_cpu_us"])
    return Outcome(
        metrics=metrics,
        samples={"node PUT (quantiles)": r["node"]["quantiles_ms"],
                 "bare handler (quantiles)": r["bare"]["quantiles_ms"]},
        params={**r["params"], "generator": r["generator"]},
        notes=[f"load generator: {r['generator']} in its own process; {r['params']['rounds']} "
               "alternating bare/node rounds, medians; every PUT is a new key "
               f"and is acknowledged only after its group commit is synced; "
               f"{r['records_committed']} records committed for {r['puts_acknowledged']} "
               "acknowledged PUTs"],
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_http", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=SIZES["full"].seconds)
    p.add_argument("--connections", type=int, default=SIZES["full"].connections)
    p.add_argument("--value-size", type=int, default=SIZES["full"].value_size)
    p.add_argument("--warmup", type=float, default=SIZES["full"].warmup)
    p.add_argument("--rounds", type=int, default=SIZES["full"].rounds,
                   help="alternating bare/node measurements; figures are medians")
    p.add_argument("--generator", choices=("auto", "wrk", "aiohttp"), default="auto")
    p.add_argument("--op", choices=("put", "get"), default="put",
                   help="get: GETs of --get-keys keys written before the measurement")
    p.add_argument("--get-keys", type=int, default=SIZES["full"].get_keys)
    p.add_argument("--loop", nargs="+", choices=("auto", "uvloop", "asyncio"), default=["auto"],
                   help="event loop of node and ceiling; several: a pair per loop, all "
                   "alternating in each round (an A/B comparison)")
    p.add_argument("--out", type=Path, default=RESULTS, help="JSON result file")
    p.add_argument("--serve-bare", type=int, metavar="PORT", help=argparse.SUPPRESS)
    p.add_argument("--load", type=int, metavar="PORT", help=argparse.SUPPRESS)
    p.add_argument("--key-prefix", default="k-", help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    if args.serve_bare:
        serve_bare(args.serve_bare, args.value_size)
        return 0
    if args.load:
        result = asyncio.run(_aiohttp_load(args.load, args.seconds, args.connections,
                                           args.value_size, args.key_prefix, args.get_keys))
        print(json.dumps(result))
        return 0
    if args.generator == "wrk" and not shutil.which("wrk"):
        print("wrk is not installed (apt-get install wrk); use --generator aiohttp",
              file=sys.stderr)
        return 2

    sizes = HttpSizes(seconds=args.seconds, connections=args.connections,
                      value_size=args.value_size, warmup=args.warmup, rounds=args.rounds,
                      loop=args.loop[0], op=args.op, get_keys=args.get_keys)
    r = measure(sizes, args.generator, args.loop)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(r, indent=2) + "\n")
    for result in r["loops"].values() if "loops" in r else [r]:
        _print_result(sizes, result, args.out)
    return 0


def _print_result(sizes: HttpSizes, r: dict[str, Any], out: Path) -> None:
    print(f"loop {r['loop']}, generator {r['generator']}, {sizes.connections} connections, "
          f"{sizes.value_size} B values, {sizes.rounds} x {sizes.seconds:g}s each side, "
          f"load average {r['load_average'][0]:.1f}")
    what = "GET" if sizes.op == "get" else "PUT"
    print(f"node (durable): {r['put_per_s']:9.0f} {what}/s  p50 {r['put_p50_ms']:.2f} ms  "
          f"p99 {r['put_p99_ms']:.2f} ms  CPU {r['put_cpu_us']:.0f} us/{what}  "
          f"errors {r['put_errors']}  mean group {r['group_size']:.1f}")
    print(f"bare handler:   {r['bare_per_s']:9.0f} req/s  p50 {r['bare_p50_ms']:.2f} ms  "
          f"p99 {r['bare_p99_ms']:.2f} ms  CPU {r['bare_cpu_us']:.0f} us/req  "
          f"errors {r['bare_errors']}")
    print(f"ratio node/bare: {r['ratio']:.2f} (target >= 0.7; per round "
          f"{', '.join(f'{x:.2f}' for x in r['round_ratios'])}) -> {out}")


if __name__ == "__main__":
    sys.exit(main())

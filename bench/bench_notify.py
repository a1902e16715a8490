"""Notification latency: a PUT's HTTP acknowledgement on dc1 to its receipt at a ZeroMQ
subscriber on the relayer, at a fixed write rate; and, in the same run, a bare pyzmq
PUB/SUB pair as the ceiling.

Real processes on 127.0.0.1: dc1 (durable replicator), a relayer following dc1 with a
notifier for dc1's namespace, and a SUB process that timestamps every message as it
arrives. The load generator issues PUTs open-loop at `rate` per second (each to a new
key) and timestamps each acknowledgement. Both clocks are CLOCK_MONOTONIC, shared by all
processes on the machine, so latency = receipt - acknowledgement. A notification can
beat its HTTP acknowledgement to the client; such samples count as 0 ms and are reported.

The ceiling sends the same frames at the same rate from a plain pyzmq PUB socket to the
same SUB program: latency = receipt - send.

    python -m bench.bench_notify [--rate 1000] [--seconds 10]   # writes bench/results/notify.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import select
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.procs import HOST, free_port, get_json, python_env, stop_process, wait_http
from bench.report import percentile_or_nan

NAMESPACE = "ad-campaign-dc1"
TOPIC = f"{NAMESPACE}.kv".encode()
RESULTS = Path(__file__).resolve().parent / "results" / "notify.json"
QUANTILES = [q / 2 for q in range(1, 200)]  # 0.5 .. 99.5
STOP_KEY = "bench-stop"


@dataclass(frozen=True)
class NotifySizes:
    rate: float  # writes per second
    seconds: float  # measured phase
    warmup: float = 1.0  # seconds at the same rate, not measured
    connections: int = 64  # keep-alive HTTP connections to dc1 (at most this many in flight)
    value_size: int = 100
    max_delay: float = 0.0  # write_notify_config.max_delay of both nodes (the seed: 0.02)


SIZES = {
    "smoke": NotifySizes(rate=200.0, seconds=0.5, warmup=0.2),
    "full": NotifySizes(rate=1000.0, seconds=10.0),
}


# ---------------------------------------------------------------- helpers


# ---------------------------------------------------------------- the subscriber process


def subscribe_main(endpoint: str, prefix: str, out: Path, idle: float) -> int:
    """Timestamp every message on arrival; print READY at the first, dump at STOP_KEY."""
    import zmq

    ctx = zmq.Context()
    sub = ctx.socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 0)
    sub.setsockopt(zmq.SUBSCRIBE, prefix.encode())
    sub.connect(endpoint)
    received: list[tuple[int, bytes]] = []
    ready = False
    stop = STOP_KEY.encode()
    while sub.poll(int(idle * 1000)):
        frames = sub.recv_multipart()
        now = time.monotonic_ns()
        received.append((now, frames[1]))
        if not ready:
            print("READY", flush=True)
            ready = True
        if stop in frames[1]:
            break
    arrivals: dict[str, int] = {}
    for t, body in received:
        arrivals.setdefault(json.loads(body)["key"], t)
    out.write_text(json.dumps(arrivals))
    sub.close(linger=0)
    ctx.term()
    return 0


class Subscriber:
    def __init__(self, endpoint: str, workdir: Path, idle: float = 30.0,
                 namespace: str = NAMESPACE) -> None:
        self.out = workdir / f"arrivals-{time.monotonic_ns()}.json"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.bench_notify", "--subscribe", endpoint,
             "--prefix", namespace, "--arrivals", str(self.out), "--idle", str(idle)],
            stdout=subprocess.PIPE, env=python_env())

    def ready(self) -> bool:
        assert self.proc.stdout is not None
        r, _, _ = select.select([self.proc.stdout], [], [], 0)
        return bool(r) and self.proc.stdout.readline().strip() == b"READY"

    def arrivals(self, timeout: float = 30.0) -> dict[str, int]:
        self.proc.wait(timeout)
        return json.loads(self.out.read_text())

    def close(self) -> None:
        stop_process(self.proc)


# ---------------------------------------------------------------- load: node and bare


async def _put_at_rate(port: int, prefix: str, rate: float, seconds: float, sizes: NotifySizes,
                       until: Any = None, sent_at: dict[str, int] | None = None,
                       namespace: str = NAMESPACE) -> dict[str, int]:
    """Open-loop PUTs to dc1: key -> monotonic ns of its 200 acknowledgement
    (and, in `sent_at`, of the moment the request was due).

    A minimal keep-alive HTTP/1.1 client on asyncio streams: an aiohttp client costs
    about as much CPU per request as the node itself, which on a small machine would
    measure the load generator rather than the node."""
    import base64

    body = json.dumps({"value": base64.b64encode(os.urandom(sizes.value_size)).decode()}).encode()
    head = (f"PUT /api/v1/{namespace}/kv/%s HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
    sent_at = {} if sent_at is None else sent_at
    acks: dict[str, int] = {}
    failures: list[str] = []
    queue: asyncio.Queue[str | None] = asyncio.Queue()

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            while (key := await queue.get()) is not None:
                writer.write((head % key).encode() + body)
                status = int((await reader.readline()).split()[1])
                length = 0
                while (line := await reader.readline()) not in (b"\r\n", b""):
                    if line[:15].lower() == b"content-length:":
                        length = int(line[15:])
                await reader.readexactly(length)
                if status == 200:
                    acks[key] = time.monotonic_ns()
                else:
                    failures.append(f"{key}: HTTP {status}")
        finally:
            writer.close()

    workers = [asyncio.create_task(connection()) for _ in range(sizes.connections)]
    t0 = time.monotonic()
    i = 0
    while True:
        due = t0 + i / rate
        if until is None and due - t0 >= seconds:
            break
        if until is not None and (until() or due - t0 >= 60):
            break
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        key = f"{prefix}{i}"
        sent_at[key] = time.monotonic_ns()
        queue.put_nowait(key)
        i += 1
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    if failures:
        raise RuntimeError(f"{len(failures)} PUTs failed, first: {failures[0]}")
    return acks


def _bare_publish(sock: Any, prefix: str, rate: float, seconds: float,
                  until: Any = None) -> dict[str, int]:
    """Open-loop sends on a plain PUB socket: key -> monotonic ns just before the send."""
    import zmq

    sent: dict[str, int] = {}
    t0 = time.monotonic()
    i = 0
    while True:
        due = t0 + i / rate
        if until is None and due - t0 >= seconds:
            break
        if until is not None and (until() or due - t0 >= 60):
            break
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        key = f"{prefix}{i}"
        payload = json.dumps({"key": key, "namespace": NAMESPACE, "operation": "put",
                              "entry_type": "kv", "seq_num": i + 1}).encode()
        sent[key] = time.monotonic_ns()
        sock.send_multipart([TOPIC, payload], flags=zmq.DONTWAIT)
        i += 1
    return sent


def _latencies(starts: dict[str, int], arrivals: dict[str, int]) -> dict[str, Any]:
    lat: list[float] = []
    early = 0
    for key, t0 in starts.items():
        t1 = arrivals.get(key)
        if t1 is None:
            continue
        ms = (t1 - t0) / 1e6
        if ms < 0:
            early += 1
            ms = 0.0
        lat.append(ms)
    lat.sort()
    return {
        "count": len(starts),
        "received": len(lat),
        "missing": len(starts) - len(lat),
        "before_ack": early,
        "p50_ms": percentile_or_nan(lat, 50),
        "p99_ms": percentile_or_nan(lat, 99),
        "max_ms": lat[-1] if lat else float("nan"),
        "quantiles_ms": [percentile_or_nan(lat, q) for q in QUANTILES],
    }


def _node_configs(workdir: Path, max_delay: float) -> tuple[Any, Any]:
    from unison.config import LogConfig, WriteNotifyConfig
    from unison.topology.plan import plan_cluster

    grpc_port = free_port()
    dc1_plan, relayer_plan = plan_cluster(
        [("dc1", [NAMESPACE])], ["dc1"], notifier_base_port=free_port(),
        base_dir=lambda n: str(workdir / n / "data"),
        upstream_address=lambda _dc, _p: f"{HOST}:{grpc_port}",
    )
    dc1, relayer = dc1_plan.config, relayer_plan.config
    for cfg in (dc1, relayer):
        cfg.http_port = free_port()
        cfg.http.listen_ip = HOST
        cfg.grpc.listen_ip = HOST
        cfg.log = LogConfig(log_level="warn")
        cfg.write_notify = WriteNotifyConfig(enabled=True, max_delay=max_delay)
    dc1.grpc.port = grpc_port
    relayer.grpc.port = free_port()
    return dc1, relayer


def _start_node(cfg: Any, role: str, workdir: Path, name: str) -> subprocess.Popen[bytes]:
    from unison.config import render_toml

    path = workdir / f"{name}.toml"
    path.write_text(render_toml(cfg))
    log = open(workdir / f"{name}.log", "ab")  # noqa: SIM115 - handed to the child
    proc = subprocess.Popen([sys.executable, "-m", "unison.cli", "node", "-config", str(path),
                             role], stdout=log, stderr=subprocess.STDOUT, env=python_env())
    log.close()
    return proc


def _drive(workdir: Path, endpoint: str, sizes: NotifySizes, load: Any) -> dict[str, Any]:
    """Warm up until the subscriber hears us, measure, then send the stop key.
    `load(prefix, rate, seconds, until, issued)` returns key -> start of the latency
    (and fills `issued` with key -> moment the write was issued, where that differs)."""
    sub = Subscriber(endpoint, workdir)
    issued: dict[str, int] = {}
    try:
        load("warm-", sizes.rate, 0, sub.ready, {})  # until READY (or 60 s)
        if sub.proc.poll() is not None or sub.out.exists():
            raise RuntimeError("the subscriber exited before the measurement")
        load("warm2-", sizes.rate, sizes.warmup, None, {})
        starts = load("m-", sizes.rate, sizes.seconds, None, issued)
        load(STOP_KEY, 1.0, 0.5, None, {})
        arrivals = sub.arrivals()
    finally:
        sub.close()
    result = _latencies(starts, arrivals)
    if issued:
        e2e = _latencies(issued, arrivals)
        result["e2e_p50_ms"], result["e2e_p99_ms"] = e2e["p50_ms"], e2e["p99_ms"]
        acked = sorted((starts[k] - issued[k]) / 1e6 for k in starts if k in issued)
        result["put_p50_ms"] = percentile_or_nan(acked, 50)
        result["put_p99_ms"] = percentile_or_nan(acked, 99)
    return result


def measure_node(sizes: NotifySizes) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="unison-bench-notify-") as d:
        workdir = Path(d)
        dc1_cfg, relayer_cfg = _node_configs(workdir, sizes.max_delay)
        zmq_port = relayer_cfg.notifiers[0].bind_port
        procs = [_start_node(dc1_cfg, "replicator", workdir, "dc1")]
        try:
            wait_http(dc1_cfg.http_port, "/healthz", procs[0])
            procs.append(_start_node(relayer_cfg, "relayer", workdir, "relayer"))
            wait_http(relayer_cfg.http_port, "/readyz", procs[1])

            def load(prefix: str, rate: float, seconds: float, until: Any,
                     issued: dict[str, int]) -> dict[str, int]:
                return asyncio.run(_put_at_rate(dc1_cfg.http_port, prefix, rate, seconds, sizes,
                                                until, issued))

            result = _drive(workdir, f"tcp://{HOST}:{zmq_port}", sizes, load)
            status, stats = get_json(relayer_cfg.http_port, f"/api/v1/{NAMESPACE}/stats")
            result["relayer_notifier"] = (stats or {}).get("notifier", {}) if status == 200 else {}
        finally:
            codes = [stop_process(p) for p in reversed(procs)]
        result["node_exit_codes"] = codes
        return result


def measure_bare(sizes: NotifySizes) -> dict[str, Any]:
    import zmq

    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUB)
    sock.setsockopt(zmq.SNDHWM, 0)
    port = sock.bind_to_random_port(f"tcp://{HOST}")
    try:
        with tempfile.TemporaryDirectory(prefix="unison-bench-zmq-") as d:
            def load(prefix: str, rate: float, seconds: float, until: Any,
                     issued: dict[str, int]) -> dict[str, int]:
                return _bare_publish(sock, prefix, rate, seconds, until)

            return _drive(Path(d), f"tcp://{HOST}:{port}", sizes, load)
    finally:
        sock.close(linger=0)
        ctx.term()


def measure(sizes: NotifySizes) -> dict[str, Any]:
    bare = measure_bare(sizes)
    node = measure_node(sizes)
    return {
        "latency_p50_ms": node["p50_ms"],
        "latency_p99_ms": node["p99_ms"],
        "latency_max_ms": node["max_ms"],
        "bare_p50_ms": bare["p50_ms"],
        "bare_p99_ms": bare["p99_ms"],
        "bare_max_ms": bare["max_ms"],
        "e2e_p50_ms": node["e2e_p50_ms"],
        "e2e_p99_ms": node["e2e_p99_ms"],
        "put_p50_ms": node["put_p50_ms"],
        "put_p99_ms": node["put_p99_ms"],
        "writes": node["count"],
        "missing": node["missing"],
        "before_ack": node["before_ack"],
        "node": node,
        "bare": bare,
        "params": asdict(sizes),
        "cpus": os.cpu_count(),
    }


def run(profile: str) -> Any:
    """Entry point for the combined bench runner: returns a `bench.report.Outcome`."""
    from bench.report import Outcome

    r = measure(SIZES[profile])
    return Outcome(
        metrics={k: float(r[k]) for k in ("latency_p50_ms", "latency_p99_ms", "latency_max_ms",
                                          "bare_p50_ms", "bare_p99_ms", "bare_max_ms",
                                          "e2e_p50_ms", "e2e_p99_ms", "put_p50_ms",
                                          "put_p99_ms", "missing")},
        samples={"PUT ack -> relayer SUB (quantiles)": r["node"]["quantiles_ms"],
                 "bare pyzmq PUB -> SUB (quantiles)": r["bare"]["quantiles_ms"]},
        params=r["params"],
        notes=[f"{r['writes']} PUTs on dc1 at {r['params']['rate']:g}/s, each a new key; "
               f"{r['missing']} notifications missing; {r['before_ack']} arrived before "
               "their HTTP acknowledgement (counted as 0 ms); e2e = PUT issued -> SUB receipt"],
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.bench_notify", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rate", type=float, default=SIZES["full"].rate, help="writes per second")
    p.add_argument("--seconds", type=float, default=SIZES["full"].seconds,
                   help="length of the measured phase")
    p.add_argument("--warmup", type=float, default=SIZES["full"].warmup)
    p.add_argument("--max-delay", type=float, default=0.0, metavar="SECONDS",
                   help="write_notify_config.max_delay of the nodes; with the seed's 0.02 and "
                   "a rate under 50/s every write is a lone write (leading-edge coalescing)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks the harness")
    p.add_argument("--out", type=Path, default=RESULTS, help="JSON result file")
    p.add_argument("--subscribe", help=argparse.SUPPRESS)
    p.add_argument("--prefix", help=argparse.SUPPRESS)
    p.add_argument("--arrivals", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--idle", type=float, default=30.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.subscribe:
        return subscribe_main(args.subscribe, args.prefix or "", args.arrivals, args.idle)
    if args.rate <= 0 or args.seconds <= 0:
        p.error("--rate and --seconds must be positive")

    sizes = SIZES["smoke"] if args.smoke else NotifySizes(rate=args.rate, seconds=args.seconds,
                                                          warmup=args.warmup,
                                                          max_delay=args.max_delay)
    r = measure(sizes)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(r, indent=2) + "\n")
    print(f"{r['writes']} PUTs at {sizes.rate:g}/s on dc1, SUB on the relayer "
          f"({r['missing']} missing, {r['before_ack']} before their ack)")
    print(f"node: PUT ack -> SUB   p50 {r['latency_p50_ms']:.3f} ms  "
          f"p99 {r['latency_p99_ms']:.3f} ms  max {r['latency_max_ms']:.3f} ms  "
          f"(targets p50 <= 2, p99 <= 10)")
    print(f"node: PUT issued -> SUB p50 {r['e2e_p50_ms']:.3f} ms  p99 {r['e2e_p99_ms']:.3f} ms"
          f"  (PUT round trip p50 {r['put_p50_ms']:.3f} ms  p99 {r['put_p99_ms']:.3f} ms)")
    print(f"bare: PUB -> SUB       p50 {r['bare_p50_ms']:.3f} ms  "
          f"p99 {r['bare_p99_ms']:.3f} ms  max {r['bare_max_ms']:.3f} ms  -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Run every benchmark and write one report: `python -m bench.run` (also `make bench`).

Each repetition of each benchmark runs in its own child process (its own session, so a
benchmark that hangs is killed together with the nodes it started once its time is up).
The child writes its Outcome as JSON; this process draws the progress bar on stderr,
then reduces the outcomes to `latest.json`, `latest.md` and PNG plots in the output
directory (default `bench/results/`). A benchmark that fails is reported with its
error and makes the command exit 1.

    python -m bench.run                 # full sizes, 3 repetitions (replication, rss: 1), ~5 min on 2 cores
    python -m bench.run --smoke         # tiny sizes, seconds (what the test suite runs)
    python -m bench.run --only http notify --repeat 5 --out /tmp/results
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import importlib.util
import json
import logging
import os
import platform
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

from bench.report import (
    BenchRun,
    Outcome,
    build_rows,
    render_markdown,
    report_json,
    write_plots,
)

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "bench" / "results"
PROFILES = ("smoke", "full")


@dataclass(frozen=True)
class Bench:
    name: str
    description: str
    target: str  # "module:function", function(profile: str) -> Outcome
    timeout: dict[str, float] = field(default_factory=lambda: {"smoke": 60.0, "full": 240.0})
    # Heavy benchmarks run at most this often in a full run, to keep it near 5 minutes
    # on 2 cores (an explicit --repeat above it is capped too, and the table shows the count).
    max_repeat: int | None = None


BENCHES: tuple[Bench, ...] = (
    Bench("http", "durable 1 KB PUTs over 64 connections vs a bare aiohttp handler",
          "bench.bench_http:run", {"smoke": 60.0, "full": 180.0}),
    Bench("storage", "engine group commit vs raw rocksdict synced batches",
          "bench.bench_storage:run", {"smoke": 60.0, "full": 120.0}),
    Bench("replication", "lag at 2,000 w/s, catch-up of 100,000 records, 20-relayer fan-out",
          "bench.bench_replication:run", {"smoke": 120.0, "full": 600.0}, max_repeat=1),
    Bench("notify", "PUT ack to ZeroMQ receipt at 1,000 w/s vs bare pyzmq",
          "bench.bench_notify:run", {"smoke": 60.0, "full": 180.0}),
    Bench("rss", "node RSS after writing 1,000,000 keys", "bench.bench_rss:run",
          {"smoke": 60.0, "full": 420.0}, max_repeat=1),
    Bench("seed", "issue 17's table: the seed topology under wrk, synced and interval "
          "durability", "bench.bench_seed:run", {"smoke": 150.0, "full": 600.0}, max_repeat=1),
    Bench("render", "operator render time for a 10-datacenter cluster",
          "bench.bench_render:run", {"smoke": 60.0, "full": 120.0}),
)
BY_NAME = {b.name: b for b in BENCHES}


# ---------------------------------------------------------------- progress bar


class Progress:
    """A one-line progress bar on a terminal; plain lines when stderr is not one."""

    def __init__(self, total: int, stream: TextIO = sys.stderr, width: int = 24) -> None:
        self.total = total
        self.done = 0
        self.stream = stream
        self.width = width
        self.label = ""
        self.started = time.monotonic()
        self.step_started = self.started
        self.tty = stream.isatty()

    def begin(self, label: str) -> None:
        self.label = label
        self.step_started = time.monotonic()
        if self.tty:
            self.draw()
        else:
            self.stream.write(f"bench [{self.done}/{self.total}] {label} ...\n")
            self.stream.flush()

    def draw(self) -> None:
        if not self.tty:
            return
        filled = int(self.width * self.done / max(self.total, 1))
        bar = "#" * filled + "-" * (self.width - filled)
        now = time.monotonic()
        self.stream.write(f"\r\x1b[2Kbench [{bar}] {self.done}/{self.total} {self.label} "
                          f"{now - self.step_started:5.1f}s (total {now - self.started:5.0f}s)")
        self.stream.flush()

    def end(self, outcome: str) -> None:
        self.done += 1
        elapsed = time.monotonic() - self.step_started
        if self.tty:
            self.stream.write(f"\r\x1b[2K{self.label}: {outcome} ({elapsed:.1f}s)\n")
            self.draw()
        else:
            self.stream.write(f"bench [{self.done}/{self.total}] {self.label}: {outcome} "
                              f"({elapsed:.1f}s)\n")
        self.stream.flush()

    def message(self, text: str) -> None:
        self.stream.write(("\r\x1b[2K" if self.tty else "") + text + "\n")
        self.draw()
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\r\x1b[2K")
        self.stream.write(f"bench: finished in {time.monotonic() - self.started:.0f}s\n")
        self.stream.flush()


# ---------------------------------------------------------------- child processes


def resolve(target: str) -> Callable[[str], Outcome]:
    """"module:function" -> the function."""
    import importlib

    module, _, func = target.partition(":")
    return getattr(importlib.import_module(module), func)


def _child_main(target: str, profile: str, result: Path) -> int:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        outcome = resolve(target)(profile)
        if not isinstance(outcome, Outcome):
            raise TypeError(f"{target} returned {type(outcome).__name__}, not Outcome")
        result.write_text(json.dumps({"ok": True, "outcome": outcome.to_json()}))
        return 0
    except BaseException as e:  # report every failure, including KeyboardInterrupt
        traceback.print_exc()
        result.write_text(json.dumps({"ok": False, "error": f"{type(e).__name__}: {e}"}))
        return 1


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop the child and whatever it started (its own session), politely then not."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        deadline = time.monotonic() + 5.0
        while time.monotonic() < deadline:
            if proc.poll() is not None and not _group_alive(proc.pid):
                return
            time.sleep(0.05)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        pass


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run_repetition(bench: Bench, profile: str, logs: Path, rep: int | str,
                   progress: Progress | None) -> Outcome:
    """One repetition in a child process; raises RuntimeError with the reason on failure."""
    result = logs / f"{bench.name}-{rep}.json"
    log_path = logs / f"{bench.name}-{rep}.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    cmd = [sys.executable, "-m", "bench.run", "--child", bench.target, "--profile", profile,
           "--result", str(result)]
    timeout = bench.timeout[profile]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None:
            if time.monotonic() > deadline:
                _kill_group(proc)
                raise RuntimeError(f"timed out after {timeout:.0f}s (log: {log_path})\n"
                                   f"{_tail(log_path)}")
            if progress is not None:
                progress.draw()
            time.sleep(0.25)
    except BaseException:
        _kill_group(proc)
        raise
    _kill_group(proc)  # nodes left behind by a benchmark that did not clean up
    try:
        data = json.loads(result.read_text())
    except (OSError, ValueError):
        raise RuntimeError(f"exited with code {proc.returncode} without a result "
                           f"(log: {log_path})\n{_tail(log_path)}") from None
    if not data.get("ok"):
        raise RuntimeError(f"{data.get('error')} (log: {log_path})\n{_tail(log_path)}")
    return Outcome.from_json(data["outcome"])


# ---------------------------------------------------------------- the whole run


def machine_meta(profile: str, repeat: int, argv: list[str]) -> dict[str, object]:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                                capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cores": os.cpu_count(),
        "cpu": cpu or platform.processor() or "unknown CPU",
        "platform": platform.platform(),
        "python": platform.python_version(),
        "profile": profile,
        "repeat": repeat,
        "command": "python -m bench.run" + ("" if not argv else " " + shlex.join(argv)),
        "commit": commit,
    }


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "unknown error"


def run_all(benches: list[Bench], profile: str, repeat: int, out: Path, argv: list[str],
            retries: int = 1) -> tuple[list[BenchRun], dict[str, object]]:
    """Run every repetition; a failed one is retried `retries` times (ports taken by
    other programs between choosing and binding are the usual transient cause)."""
    out.mkdir(parents=True, exist_ok=True)
    logs = Path(tempfile.mkdtemp(prefix="unison-bench-logs-"))
    plan = [(b, min(repeat, b.max_repeat) if profile == "full" and b.max_repeat else repeat)
            for b in benches]
    progress = Progress(sum(n for _, n in plan))
    meta = machine_meta(profile, repeat, argv)
    started = time.monotonic()
    runs: list[BenchRun] = []
    for bench, reps in plan:
        run = BenchRun(bench.name)
        t0 = time.monotonic()
        for rep in range(1, reps + 1):
            progress.begin(f"{bench.name} {rep}/{reps}")
            failures: list[str] = []
            while True:
                try:
                    outcome = run_repetition(bench, profile, logs, f"{rep}.{len(failures)}",
                                             progress)
                except RuntimeError as e:
                    failures.append(str(e))
                    if len(failures) <= retries:
                        progress.message(f"{bench.name} {rep}/{reps} failed, retrying once: "
                                         f"{_first_line(str(e))}")
                        continue
                    break
                # A retried success stays visible in the report, with the first error.
                outcome.notes += [f"repetition {rep} failed and was retried: {_first_line(f)}"
                                  for f in failures]
                run.outcomes.append(outcome)
                break
            if len(failures) > retries:
                run.error = failures[-1]
                progress.end("FAILED")
                progress.done += reps - rep  # skip the remaining repetitions
                break
            progress.end("ok")
        run.seconds = time.monotonic() - t0
        runs.append(run)
    progress.close()
    meta["seconds"] = round(time.monotonic() - started, 1)
    if any(r.error for r in runs):
        meta["logs"] = str(logs)  # the failed children's output, named in the report
    else:
        shutil.rmtree(logs, ignore_errors=True)
    return runs, meta


def write_report(runs: list[BenchRun], meta: dict[str, object], out: Path) -> tuple[Path, Path]:
    rows = build_rows(runs)
    try:
        plots = write_plots(runs, out)
    except Exception as e:  # a broken plot must not cost the numbers
        logging.getLogger("bench").exception("plotting failed")
        meta["plot_error"] = f"{type(e).__name__}: {e}"
        plots = []
    json_path, md_path = out / "latest.json", out / "latest.md"
    json_path.write_text(json.dumps(report_json(rows, meta, runs, plots), indent=2) + "\n")
    md_path.write_text(render_markdown(rows, meta, runs, plots))
    return json_path, md_path


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.run",
        description="Run Unison's benchmarks on 127.0.0.1 and write latest.json, latest.md "
        "and PNG plots. Every figure is reported beside a ceiling measured in the same run.",
        epilog="benchmarks: " + "; ".join(f"{b.name} ({b.description})" for b in BENCHES),
    )
    p.add_argument("--smoke", action="store_true",
                   help="tiny sizes, one repetition by default: checks the harness, not speed")
    p.add_argument("--only", nargs="+", metavar="NAME", default=None,
                   help="run only these benchmarks")
    p.add_argument("--repeat", type=int, default=None, metavar="N",
                   help="repetitions per benchmark (default 3, smoke 1); the table shows "
                   "the median and range over them")
    p.add_argument("--out", type=Path, default=None, metavar="DIR",
                   help=f"where to write the report (default {DEFAULT_OUT.relative_to(REPO)}; "
                   "with --smoke a new temporary directory, so a smoke run never replaces "
                   "the committed figures)")
    p.add_argument("--retries", type=int, default=1, metavar="N",
                   help="retry a failed repetition up to N times (default 1); a retried "
                   "success carries the first error as a note in the report")
    p.add_argument("--strict", action="store_true",
                   help="also exit 1 when a figure misses its target")
    p.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                   help="limit every repetition to this many seconds (default: per benchmark, "
                   "see --list)")
    p.add_argument("--target", action="append", default=[], metavar="NAME=MODULE:FUNCTION",
                   help="run NAME with another function(profile) -> Outcome (for development)")
    p.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    p.add_argument("--child", metavar="MODULE:FUNCTION", help=argparse.SUPPRESS)
    p.add_argument("--profile", choices=PROFILES, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child is not None:
        if ":" not in args.child or args.profile is None or args.result is None:
            p.error("--child needs MODULE:FUNCTION, --profile and --result")
        return args
    unknown = [n for n in args.only or [] if n not in BY_NAME]
    if unknown:
        p.error(f"--only: unknown benchmark {', '.join(unknown)} "
                f"(choose from {', '.join(BY_NAME)})")
    if args.repeat is not None and args.repeat < 1:
        p.error(f"--repeat must be at least 1, got {args.repeat}")
    if args.retries < 0:
        p.error(f"--retries must be 0 or more, got {args.retries}")
    if args.timeout is not None and args.timeout <= 0:
        p.error(f"--timeout must be positive, got {args.timeout}")
    for t in args.target:
        name, _, target = t.partition("=")
        if name not in BY_NAME or ":" not in target:
            p.error(f"--target {t}: expected NAME=MODULE:FUNCTION with NAME one of "
                    f"{', '.join(BY_NAME)}")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    if args.child is not None:
        return _child_main(args.child, args.profile, args.result)
    if args.list:
        for b in BENCHES:
            print(f"{b.name:12} {b.description} (limit {b.timeout['smoke']:.0f}s smoke, "
                  f"{b.timeout['full']:.0f}s full per repetition)")
        return 0
    profile = "smoke" if args.smoke else "full"
    repeat = args.repeat or (1 if args.smoke else 3)
    if importlib.util.find_spec("matplotlib") is None:
        print("bench: matplotlib is not installed; `make bench` installs it "
              "(pip install -e '.[bench]')", file=sys.stderr)
        return 2
    if args.out is None:
        args.out = (Path(tempfile.mkdtemp(prefix="unison-bench-smoke-")) if args.smoke
                    else DEFAULT_OUT)
    targets = dict(t.split("=", 1) for t in args.target)
    benches = []
    for b in BENCHES:
        if args.only is not None and b.name not in args.only:
            continue
        if b.name in targets:
            b = dataclasses.replace(b, target=targets[b.name])
        if args.timeout is not None:
            b = dataclasses.replace(b, timeout={p: args.timeout for p in PROFILES})
        benches.append(b)
    runs, meta = run_all(benches, profile, repeat, args.out, argv, args.retries)
    json_path, md_path = write_report(runs, meta, args.out)
    print(md_path.read_text())
    print(f"wrote {json_path} and {md_path}")
    failed = [r.name for r in runs if r.error]
    if failed:
        print(f"bench: failed: {', '.join(failed)} (logs in {meta['logs']})", file=sys.stderr)
        return 1
    if "plot_error" in meta:
        print(f"bench: plots failed: {meta['plot_error']}", file=sys.stderr)
        return 1
    if args.strict:
        missed = [r.label for r in build_rows(runs) if r.status == "fail"]
        if missed:
            print(f"bench: targets missed: {'; '.join(missed)}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

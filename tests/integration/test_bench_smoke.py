"""The benchmark harness end to end at tiny sizes, so it cannot rot unnoticed.

Runs `python -m bench.run --smoke` for real (real nodes, RocksDB, gRPC, ZeroMQ on
127.0.0.1) into a temporary directory and checks that the JSON, the Markdown table and
the plots exist and carry every metric. No speed is asserted: speed is what the full
run reports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from bench.report import METRICS, Outcome

REPO = Path(__file__).resolve().parents[2]


def bench(*args: str, timeout: float = 420.0,
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    # A failed benchmark's logs are kept for the reader; here nobody reads them.
    with tempfile.TemporaryDirectory(prefix="bench-test-") as scratch:
        return subprocess.run([sys.executable, "-m", "bench.run", *args], cwd=REPO,
                              capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "TMPDIR": scratch, **(env or {})})


def hang(profile: str) -> None:
    """A benchmark that never finishes (used through --target)."""
    time.sleep(600)


def flaky(profile: str) -> Outcome:
    """Fails on its first call, succeeds on the next (the flag file says which)."""
    flag = Path(os.environ["BENCH_TEST_FLAG"])
    if not flag.exists():
        flag.write_text("failed once")
        raise RuntimeError("port 12345 already in use")
    return Outcome(metrics={"render_p50_ms": 1.0, "render_p99_ms": 2.0})


@pytest.mark.slow
def test_smoke_run_writes_every_metric_to_json_markdown_and_plots(tmp_path: Path) -> None:
    out = tmp_path / "results"
    r = bench("--smoke", "--out", str(out))
    assert r.returncode == 0, f"stdout:\n{r.stdout[-4000:]}\nstderr:\n{r.stderr[-4000:]}"

    report = json.loads((out / "latest.json").read_text())
    assert report["meta"]["cores"] >= 1
    assert report["meta"]["profile"] == "smoke"
    for m in METRICS:
        row = report["metrics"].get(m.key)
        assert row is not None, f"{m.key} missing from latest.json"
        assert row["status"] != "error", f"{m.key}: {row['error']}"
        assert isinstance(row["median"], float)
        if m.ceiling:
            assert row["ceiling"] is not None and row["ratio"] is not None, m.key
    assert all(b["status"] == "ok" for b in report["benchmarks"].values())

    md = (out / "latest.md").read_text()
    for m in METRICS:
        assert f"| {m.label} |" in md, f"{m.label} missing from latest.md"
    assert "**ERROR**" not in md

    plots = report["plots"]
    for expected in ("http_latency.png", "notify_latency.png", "replication_latency.png",
                     "storage_latency.png"):
        assert expected in plots
    for expected in ("replication_catch_up_relayer_lsn.png",
                     "replication_replication_lag_p99_per_0_25_s.png"):
        assert expected in plots, f"no {expected} (over time) in {plots}"
    for name in plots:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in md


def test_a_failing_benchmark_is_reported_with_its_error_and_fails_the_command(
        tmp_path: Path) -> None:
    r = bench("--smoke", "--only", "render", "--target", "render=bench.report:percentile",
              "--out", str(tmp_path))
    assert r.returncode == 1
    assert "render 1/1 failed, retrying once" in r.stderr
    assert "failed: render" in r.stderr
    md = (tmp_path / "latest.md").read_text()
    assert "| Operator render, 10-datacenter cluster, p50 | — |" in md
    assert "**ERROR**: TypeError: percentile() missing 1 required positional argument" in md
    report = json.loads((tmp_path / "latest.json").read_text())
    assert report["benchmarks"]["render"]["status"] == "error"
    assert report["metrics"]["render.render_p50_ms"]["status"] == "error"


def test_a_repetition_that_fails_once_is_retried_and_the_failure_noted(tmp_path: Path) -> None:
    r = bench("--smoke", "--only", "render", "--target",
              "render=tests.integration.test_bench_smoke:flaky", "--out", str(tmp_path / "out"),
              env={"BENCH_TEST_FLAG": str(tmp_path / "flag")})
    assert r.returncode == 0, r.stderr
    md = (tmp_path / "out" / "latest.md").read_text()
    assert "| Operator render, 10-datacenter cluster, p50 | 1.00 ms |" in md
    assert ("render: repetition 1 failed and was retried: RuntimeError: port 12345 already "
            "in use") in md


def test_a_benchmark_that_hangs_is_stopped_at_its_time_limit(tmp_path: Path) -> None:
    started = time.monotonic()
    r = bench("--smoke", "--only", "render", "--timeout", "3", "--retries", "0",
              "--target", "render=tests.integration.test_bench_smoke:hang", "--out", str(tmp_path), timeout=60)
    assert r.returncode == 1
    assert time.monotonic() - started < 50
    md = (tmp_path / "latest.md").read_text()
    assert "timed out after 3s" in md


@pytest.mark.parametrize("args, message", [
    (["--only", "nope"], "--only: unknown benchmark nope"),
    (["--repeat", "0"], "--repeat must be at least 1"),
    (["--retries", "-1"], "--retries must be 0 or more"),
    (["--target", "render=nothing"], "--target render=nothing: expected NAME=MODULE:FUNCTION"),
])
def test_usage_errors_exit_2_with_a_message(args: list[str], message: str) -> None:
    r = bench(*args, timeout=60)
    assert r.returncode == 2
    assert message in r.stderr
    assert "Traceback" not in r.stderr


def test_smoke_run_never_replaces_the_committed_figures() -> None:
    committed = REPO / "bench" / "results" / "latest.json"
    before = committed.read_bytes()
    r = bench("--smoke", "--only", "render", timeout=120)
    assert r.returncode == 0, r.stderr
    wrote = next(line for line in r.stdout.splitlines() if line.startswith("wrote "))
    assert "unison-bench-smoke-" in wrote and str(REPO / "bench") not in wrote, wrote
    assert committed.read_bytes() == before


def test_missing_matplotlib_is_one_line_and_exit_2(tmp_path: Path) -> None:
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['matplotlib'] = None\n")
    r = bench("--smoke", "--only", "render", "--out", str(tmp_path / "out"), timeout=60,
              env={"PYTHONPATH": str(tmp_path)})
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [
        "bench: matplotlib is not installed; `make bench` installs it "
        "(pip install -e '.[bench]')"]
    assert not (tmp_path / "out").exists()

"""Pure parts of the benchmark report: statistics, the metric catalogue, Markdown, plots.

Every benchmark repetition yields an `Outcome` (scalar metrics, latency samples, time
series). The runner collects the outcomes of all repetitions; this module reduces them to
one row per metric (median and range over repetitions, the ceiling measured in the same
run, the ratio, the target and whether it is met) and renders JSON, Markdown and PNGs.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# ---------------------------------------------------------------- statistics


def percentile(values: Iterable[float], q: float) -> float:
    """The q-th percentile (0..100) with linear interpolation between closest ranks."""
    data = sorted(values)
    if not data:
        raise ValueError("percentile of an empty sequence")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile q must be within 0..100, got {q}")
    pos = (len(data) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def percentile_or_nan(values: Sequence[float], q: float) -> float:
    """percentile(), with NaN for no samples (a run that lost every sample still reports)."""
    return percentile(values, q) if values else math.nan


def latency_summary(samples_ms: Sequence[float], prefix: str) -> dict[str, float]:
    """`{prefix}_p50_ms`, `{prefix}_p99_ms`, `{prefix}_max_ms` of latency samples in ms."""
    return {
        f"{prefix}_p50_ms": percentile(samples_ms, 50),
        f"{prefix}_p99_ms": percentile(samples_ms, 99),
        f"{prefix}_max_ms": max(samples_ms),
    }


def ratio(value: float | None, ceiling: float | None) -> float | None:
    """value / ceiling, or None when either is missing or the ceiling is not positive."""
    if value is None or ceiling is None or ceiling <= 0 or math.isnan(value):
        return None
    return value / ceiling


# ---------------------------------------------------------------- outcomes


@dataclass
class Outcome:
    """What one repetition of one benchmark measured."""

    metrics: dict[str, float] = field(default_factory=dict)
    # name -> latency samples in ms (pooled over repetitions for the distribution plots)
    samples: dict[str, list[float]] = field(default_factory=dict)
    # name -> [(seconds since start, value)] (plotted over time)
    series: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Outcome:
        return cls(
            metrics={k: float(v) for k, v in data.get("metrics", {}).items()},
            samples={k: [float(x) for x in v] for k, v in data.get("samples", {}).items()},
            series={k: [(float(t), float(y)) for t, y in v]
                    for k, v in data.get("series", {}).items()},
            params=dict(data.get("params", {})),
            notes=list(data.get("notes", [])),
        )


@dataclass
class BenchRun:
    """All repetitions of one benchmark, or the error that stopped it."""

    name: str
    outcomes: list[Outcome] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0


# ---------------------------------------------------------------- metric catalogue


@dataclass(frozen=True)
class Target:
    op: str  # ">=" or "<="
    value: float
    on_ratio: bool = False  # compare the ratio to the ceiling instead of the figure

    def met(self, figure: float | None, rat: float | None) -> bool | None:
        x = rat if self.on_ratio else figure
        if x is None:
            return None
        return x >= self.value if self.op == ">=" else x <= self.value

    def describe(self, unit: str) -> str:
        sign = "≥" if self.op == ">=" else "≤"
        if self.on_ratio:
            return f"{sign} {fmt_ratio(self.value)} ceiling"
        v = self.value
        number = f"{int(v):,}" if float(v).is_integer() else fmt_number(v)
        return f"{sign} {number} {unit}".rstrip()


@dataclass(frozen=True)
class Metric:
    key: str  # "<bench>.<name>"; the benchmark reports <name> in its Outcome.metrics
    label: str
    unit: str
    ceiling: str | None = None  # key of the ceiling metric measured in the same run
    ceiling_label: str = ""
    target: Target | None = None

    @property
    def bench(self) -> str:
        return self.key.split(".", 1)[0]

    @property
    def name(self) -> str:
        """The key inside the benchmark's own Outcome.metrics."""
        return self.key.split(".", 1)[1]


BARE_HTTP = "bare aiohttp handler"
BARE_ZMQ = "bare pyzmq PUB/SUB"
RAW_ROCKS = "raw rocksdict synced batches"

METRICS: tuple[Metric, ...] = (
    Metric("http.put_per_s", "Durable PUT/s (1 KB, 64 connections)", "ops/s",
           "http.bare_per_s", BARE_HTTP, Target(">=", 0.7, on_ratio=True)),
    Metric("http.put_p50_ms", "PUT latency p50", "ms", "http.bare_p50_ms", BARE_HTTP),
    Metric("http.put_p99_ms", "PUT latency p99", "ms", "http.bare_p99_ms", BARE_HTTP),
    Metric("http.put_cpu_us", "CPU per durable PUT (node + helpers, /proc)", "µs",
           "http.bare_cpu_us", BARE_HTTP, Target("<=", 150.0)),
    Metric("http.get_per_s", "GET/s (1 KB values, 64 connections)", "ops/s",
           "http.bare_get_per_s", BARE_HTTP),
    Metric("http.get_cpu_us", "CPU per GET (node + helpers, /proc)", "µs",
           "http.bare_get_cpu_us", BARE_HTTP, Target("<=", 100.0)),
    Metric("storage.engine_writes_per_s", "Engine group-commit writes/s (1 KB, 64 writers)",
           "writes/s", "storage.raw_writes_per_s", RAW_ROCKS),
    Metric("storage.engine_group_size", "Engine mean records per synced batch", "records"),
    Metric("replication.lag_p50_ms", "Replication lag p50 at 2,000 writes/s", "ms"),
    Metric("replication.lag_p99_ms", "Replication lag p99 at 2,000 writes/s", "ms",
           target=Target("<=", 10.0)),
    Metric("replication.lag_cpu_relayer_us_per_record",
           "CPU per replicated record on the relayer at 2,000 writes/s", "µs",
           target=Target("<=", 30.0)),
    Metric("replication.catchup_per_s", "Catch-up replay, 100,000 records", "records/s",
           target=Target(">=", 50_000.0)),
    Metric("replication.fanout_lag_p99_ms", "Fan-out lag p99, 20 relayers at 200 writes/s",
           "ms"),
    Metric("notify.latency_p50_ms", "Notification latency p50 at 1,000 writes/s", "ms",
           "notify.bare_p50_ms", BARE_ZMQ, Target("<=", 2.0)),
    Metric("notify.latency_p99_ms", "Notification latency p99 at 1,000 writes/s", "ms",
           "notify.bare_p99_ms", BARE_ZMQ, Target("<=", 10.0)),
    Metric("rss.rss_mib", "Node RSS after 1,000,000 keys", "MiB"),
    Metric("render.render_p50_ms", "Operator render, 10-datacenter cluster, p50", "ms"),
    Metric("render.render_p99_ms", "Operator render, 10-datacenter cluster, p99", "ms"),
)


def metrics_of(bench: str) -> list[Metric]:
    return [m for m in METRICS if m.bench == bench]


# ---------------------------------------------------------------- rows


@dataclass
class Row:
    key: str
    label: str
    unit: str
    status: str  # "pass", "fail", "info" (no target), "error"
    median: float | None = None
    low: float | None = None
    high: float | None = None
    reps: int = 0
    ceiling: float | None = None
    ceiling_label: str = ""
    ratio: float | None = None
    target: str = ""
    error: str = ""


def _values(outcomes: Sequence[Outcome], key: str) -> list[float]:
    """The values of "<bench>.<name>" over repetitions (outcomes hold plain names)."""
    name = key.split(".", 1)[1]
    return [o.metrics[name] for o in outcomes
            if name in o.metrics and not math.isnan(o.metrics[name])]


def build_rows(runs: Sequence[BenchRun], catalogue: Sequence[Metric] = METRICS) -> list[Row]:
    """One row per catalogued metric of the benchmarks that ran (or failed)."""
    by_bench = {r.name: r for r in runs}
    rows: list[Row] = []
    for m in catalogue:
        run = by_bench.get(m.bench)
        if run is None:
            continue
        row = Row(m.key, m.label, m.unit, "info", ceiling_label=m.ceiling_label,
                  target=m.target.describe(m.unit) if m.target else "")
        vals = _values(run.outcomes, m.key)
        if run.error is not None or not vals:
            row.status = "error"
            row.error = run.error or f"the benchmark did not report {m.key}"
            rows.append(row)
            continue
        row.median = statistics.median(vals)
        row.low, row.high, row.reps = min(vals), max(vals), len(vals)
        if m.ceiling:
            cvals = _values(run.outcomes, m.ceiling)
            row.ceiling = statistics.median(cvals) if cvals else None
            row.ratio = ratio(row.median, row.ceiling)
        if m.target is not None:
            met = m.target.met(row.median, row.ratio)
            row.status = "info" if met is None else ("pass" if met else "fail")
        rows.append(row)
    return rows


# ---------------------------------------------------------------- formatting


def fmt_number(x: float | None) -> str:
    """Human-scale number: thousands separators for big ones, 3 significant digits for small."""
    if x is None or math.isnan(x):
        return "—"
    ax = abs(x)
    if ax >= 1000:
        return f"{x:,.0f}"
    if ax >= 100:
        return f"{x:.0f}"
    if ax >= 10:
        return f"{x:.1f}"
    if ax >= 1:
        return f"{x:.2f}"
    if ax == 0:
        return "0"
    return f"{x:.3g}"


def fmt_ratio(r: float | None) -> str:
    return "—" if r is None else f"{r:.2f}×"


STATUS_TEXT = {"pass": "pass", "fail": "**FAIL**", "info": "—", "error": "**ERROR**"}


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(rows: Sequence[Row], meta: dict[str, Any], runs: Sequence[BenchRun],
                    plots: Sequence[str] = ()) -> str:
    lines = [
        "# Unison benchmark results",
        "",
        f"- date: {meta.get('date', '?')}",
        f"- machine: {meta.get('cores', '?')} cores ({meta.get('cpu', 'unknown CPU')}), "
        f"{meta.get('platform', '')}",
        f"- python: {meta.get('python', '?')}",
        f"- profile: {meta.get('profile', '?')}, repetitions: {meta.get('repeat', '?')}, "
        f"total time: {fmt_number(meta.get('seconds'))} s",
        f"- command: `{meta.get('command', 'python -m bench.run')}`",
    ]
    if meta.get("commit"):
        lines.append(f"- commit: {meta['commit']}")
    if meta.get("profile") == "smoke":
        lines += ["", "**Smoke profile: tiny sizes that check the harness, not the speed. The "
                  "labels describe the full run (`python -m bench.run`).**"]
    lines += [
        "",
        "Figure = median over repetitions (range in brackets). Ceiling = the same measurement "
        "against the bare component, in the same run. Ratio = figure / ceiling.",
        "",
        "| Metric | Figure | Range (reps) | Ceiling | Ratio | Target | Result |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if r.status == "error":
            lines.append(f"| {_cell(r.label)} | — | — | — | — | {_cell(r.target) or '—'} | "
                         f"**ERROR**: {_cell(_short(r.error))} |")
            continue
        figure = f"{fmt_number(r.median)} {r.unit}"
        rng = f"{fmt_number(r.low)}–{fmt_number(r.high)} ({r.reps})"
        ceiling = (f"{fmt_number(r.ceiling)} {r.unit} ({r.ceiling_label})"
                   if r.ceiling is not None else "—")
        lines.append(f"| {_cell(r.label)} | {figure} | {rng} | {_cell(ceiling)} | "
                     f"{fmt_ratio(r.ratio)} | {_cell(r.target) or '—'} | "
                     f"{STATUS_TEXT[r.status]} |")
    failed = [r for r in runs if r.error]
    if failed:
        lines += ["", "## Failed benchmarks", ""]
        for r in failed:
            lines += [f"### {r.name}", "", "```", r.error.strip(), "```", ""]
    notes = [(r.name, n) for r in runs for n in _unique_notes(r)]
    if notes:
        lines += ["", "## Notes", ""]
        lines += [f"- {name}: {note}" for name, note in notes]
    if plots:
        lines += ["", "## Plots", ""]
        lines += [f"![{Path(p).stem}]({Path(p).name})" for p in plots]
    return "\n".join(lines).rstrip() + "\n"


def _short(text: str, limit: int = 160) -> str:
    first = text.strip().splitlines()[-1] if text.strip() else "unknown error"
    return first if len(first) <= limit else first[: limit - 1] + "…"


def _unique_notes(run: BenchRun) -> list[str]:
    seen: list[str] = []
    for o in run.outcomes:
        for n in o.notes:
            if n not in seen:
                seen.append(n)
    return seen


def report_json(rows: Sequence[Row], meta: dict[str, Any], runs: Sequence[BenchRun],
                plots: Sequence[str] = ()) -> dict[str, Any]:
    return {
        "meta": meta,
        "metrics": {r.key: asdict(r) for r in rows},
        "benchmarks": {
            r.name: {
                "status": "error" if r.error else "ok",
                "error": r.error,
                "seconds": round(r.seconds, 3),
                "repetitions": [{"metrics": o.metrics, "params": o.params} for o in r.outcomes],
                "notes": _unique_notes(r),
            }
            for r in runs
        },
        "plots": [Path(p).name for p in plots],
    }


# ---------------------------------------------------------------- plots


def _pooled(run: BenchRun) -> tuple[dict[str, list[float]], dict[str, list[list[tuple[float, float]]]]]:
    samples: dict[str, list[float]] = {}
    series: dict[str, list[list[tuple[float, float]]]] = {}
    for o in run.outcomes:
        for k, v in o.samples.items():
            samples.setdefault(k, []).extend(v)
        for k, pts in o.series.items():
            series.setdefault(k, []).append(pts)
    return samples, series


LOG_FLOOR_MS = 0.01  # where a log axis draws a 0 ms sample (e.g. a notification beat its ack)


def slugify(name: str) -> str:
    """"catch-up: relayer lsn (records)" -> "catch_up_relayer_lsn"."""
    words = "".join(c if c.isalnum() else " " for c in name.split("(")[0].lower()).split()
    return "_".join(words) or "series"


def write_plots(runs: Sequence[BenchRun], out_dir: Path) -> list[Path]:
    """Latency distributions (CDF, log time axis) and values over time, one PNG per kind."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    for run in runs:
        samples, series = _pooled(run)
        samples = {k: v for k, v in samples.items() if v}
        if samples:
            fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
            for name, vals in sorted(samples.items()):
                data = sorted(max(v, LOG_FLOOR_MS) for v in vals)
                n = len(data)
                step = max(1, n // 2000)  # a CDF needs no more than ~2,000 points to look right
                xs = data[::step] + [data[-1]]
                ys = [i / n for i in range(0, n, step)] + [1.0]
                p50, p99 = percentile(data, 50), percentile(data, 99)
                ax.plot(xs, ys, label=f"{name} (p50 {fmt_number(p50)}, p99 {fmt_number(p99)} ms)")
            ax.set_xscale("log")
            ax.set_xlabel(f"latency (ms, log scale; 0 is drawn at {LOG_FLOOR_MS})")
            ax.set_ylabel("fraction of samples ≤ x")
            ax.set_title(f"{run.name}: latency distribution")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8, loc="lower right")
            path = out_dir / f"{run.name}_latency.png"
            fig.tight_layout()
            fig.savefig(path)
            plt.close(fig)
            written.append(path)
        for name, reps in sorted(series.items()):
            if not any(reps):
                continue
            fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
            for i, pts in enumerate(reps, start=1):
                if pts:
                    ax.plot([t for t, _ in pts], [y for _, y in pts], lw=0.8,
                            marker="o" if len(pts) < 100 else None, ms=3,
                            label=f"repetition {i}")
            ax.set_xlabel("time since start (s)")
            ax.set_ylabel(name)
            ax.set_title(f"{run.name}: {name} over time")
            ax.grid(True, alpha=0.3)
            if len(reps) > 1:
                ax.legend(fontsize=8)
            path = out_dir / f"{run.name}_{slugify(name)}.png"
            fig.tight_layout()
            fig.savefig(path)
            plt.close(fig)
            written.append(path)
    return written

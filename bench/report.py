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
    # series name -> (bucket width s, measured span s) for series of per-window figures:
    # a window that ends after the span holds only stragglers and is not plotted
    windows: dict[str, tuple[float, float]] = field(default_factory=dict)

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
            windows={k: (float(w), float(span))
                     for k, (w, span) in data.get("windows", {}).items()},
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
    # Plots the target is drawn on: prefixes of the benchmark's sample or series names.
    drawn_on: tuple[str, ...] = ()

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
           "http.bare_per_s", BARE_HTTP, Target(">=", 0.8, on_ratio=True)),
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
           target=Target("<=", 10.0),
           drawn_on=("PUT ack on dc1 -> record streamed", "replication lag p99")),
    Metric("replication.lag_cpu_relayer_us_per_record",
           "CPU per replicated record on the relayer at 2,000 writes/s", "µs",
           target=Target("<=", 30.0)),
    Metric("replication.catchup_per_s", "Catch-up replay, 100,000 records", "records/s",
           target=Target(">=", 50_000.0), drawn_on=("catch-up: relayer lsn",)),
    Metric("replication.fanout_lag_p99_ms", "Fan-out lag p99, 20 relayers at 200 writes/s",
           "ms"),
    Metric("notify.latency_p50_ms", "Notification latency p50 at 1,000 writes/s", "ms",
           "notify.bare_p50_ms", BARE_ZMQ, Target("<=", 2.0), drawn_on=("PUT ack -> relayer",)),
    Metric("notify.latency_p99_ms", "Notification latency p99 at 1,000 writes/s", "ms",
           "notify.bare_p99_ms", BARE_ZMQ, Target("<=", 10.0), drawn_on=("PUT ack -> relayer",)),
    Metric("rss.rss_mib", "Node RSS after 1,000,000 keys", "MiB"),
    Metric("seed.put_per_s_synced", "Seed topology: PUT/s on dc1, acknowledged after fsync",
           "ops/s", "seed.bare_put_per_s", BARE_HTTP, Target(">=", 0.8, on_ratio=True)),
    Metric("seed.put_per_s_interval", "Seed topology: PUT/s on dc1, wal_fsync_interval 1s",
           "ops/s", "seed.bare_put_per_s", BARE_HTTP),
    Metric("seed.put_cpu_us_synced", "Seed topology: CPU per PUT on dc1, synced", "µs",
           "seed.bare_put_cpu_us", BARE_HTTP, Target("<=", 150.0)),
    Metric("seed.put_cpu_us_interval", "Seed topology: CPU per PUT on dc1, interval", "µs",
           "seed.bare_put_cpu_us", BARE_HTTP),
    Metric("seed.get_cpu_us_synced", "Seed topology: CPU per GET on dc1", "µs",
           "seed.bare_get_cpu_us", BARE_HTTP, Target("<=", 100.0)),
    Metric("seed.relayer_cpu_us_per_record_synced",
           "Seed topology: CPU per replicated record on the relayer, synced", "µs",
           target=Target("<=", 30.0)),
    Metric("seed.relayer_cpu_us_per_record_interval",
           "Seed topology: CPU per replicated record on the relayer, interval", "µs"),
    Metric("seed.notify_p50_ms_synced", "Seed topology: ack-to-notification p50 at 2,000 w/s, "
           "synced", "ms"),
    Metric("seed.notify_p50_ms_interval", "Seed topology: ack-to-notification p50 at 2,000 "
           "w/s, interval", "ms"),
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
            window = o.windows.get(k)
            kept = complete_windows(pts, window)
            if window is not None:  # a window's figure belongs to its middle, not its start
                kept = [(t + window[0] / 2, y) for t, y in kept]
            series.setdefault(k, []).append(kept)
    return samples, series


def slugify(name: str) -> str:
    """"catch-up: relayer lsn (records)" -> "catch_up_relayer_lsn"."""
    words = "".join(c if c.isalnum() else " " for c in name.split("(")[0].lower()).split()
    return "_".join(words) or "series"


# What ran, from Outcome.params, keyed "<bench>" or "<bench>/<prefix of a sample or series name>".
WORKLOADS: dict[str, str] = {
    "http": "PUTs from {connections} connections, {value_size:,} B values, "
            "rounds of {seconds:g} s per side: {rounds}, load generator {generator}",
    "storage": "{writers} writers, {value_size:,} B values, {seconds:g} s",
    "replication": "lag: {rate:,g} writes/s for {seconds:g} s, {connections} connections, "
                   "{value_size:,} B values; fan-out: {fanout_relayers} relayers at "
                   "{fanout_rate:,g} writes/s for {fanout_seconds:g} s",
    "replication/catch-up": "a new relayer replays {catchup_records:,} records",
    "replication/replication lag": "{rate:,g} writes/s for {seconds:g} s, {connections} "
                                   "connections, {value_size:,} B values",
    "notify": "{rate:,g} writes/s open loop for {seconds:g} s, {connections} connections, "
              "{value_size:,} B values",
    "rss": "{keys:,} keys of {value_size:,} B in batches of {batch:,} over {connections} "
           "connections",
    "render": "{datacenters} datacenters, {iterations:,} iterations",
}


def workload(bench: str, params: dict[str, Any], plot: str = "") -> str:
    """One line saying what ran; every parameter as name=value when no template fits."""
    specific = [k for k in WORKLOADS
                if k.startswith(bench + "/") and plot.startswith(k.split("/", 1)[1])]
    template = WORKLOADS.get(specific[0] if specific else bench)
    if template is not None:
        try:
            return template.format_map(params)
        except (KeyError, ValueError, TypeError):
            pass  # a parameter renamed or missing: still say what ran
    return ", ".join(f"{k}={v}" for k, v in params.items())


def complete_windows(points: Sequence[tuple[float, float]],
                     window: tuple[float, float] | None) -> list[tuple[float, float]]:
    """The points worth drawing: no empty (NaN) windows and, when the series is per window
    (width, measured span), no window ending after the span. That last window is partial
    or holds only stragglers, and drawn it looked like a fall to 0."""
    kept = [(t, y) for t, y in points if not math.isnan(y)]
    if window is None:
        return kept
    width, span = window
    return [(t, y) for t, y in kept if t + width <= span + 1e-9]


def cdf_points(values: Sequence[float], max_points: int = 2000
               ) -> tuple[list[float], list[float], int]:
    """(xs, fraction of samples ≤ x, how many samples are ≤ 0) for a CDF on a log axis.

    A log axis has no place for 0, and inventing one would pile the zeros at a fake value,
    so they are left out of xs but still counted in the fractions: the curve starts at
    the share that was 0."""
    data = sorted(values)
    n = len(data)
    zeros = sum(1 for v in data if v <= 0)
    step = max(1, (n - zeros) // max_points)  # ~2,000 points draw a CDF as well as all
    idx = list(range(zeros, n, step))
    if idx and idx[-1] != n - 1:
        idx.append(n - 1)
    return [data[i] for i in idx], [(i + 1) / n for i in idx], zeros


def plain_number(x: float) -> str:
    """A log axis tick as people write it: 0.1, 1, 3, 10, 1,000 (not 10^-1 or 3x10^0)."""
    if x >= 1000:
        return f"{x:,.0f}"
    if x >= 1:
        return f"{x:g}"
    return f"{x:.10f}".rstrip("0").rstrip(".")


def targets_on(bench: str, plot: str, catalogue: Sequence[Metric] = METRICS) -> list[Metric]:
    """The metrics whose (absolute) target is drawn on the named sample set or series."""
    return [m for m in catalogue
            if m.bench == bench and m.target is not None and not m.target.on_ratio
            and any(plot.startswith(p) for p in m.drawn_on)]


def _quantile(metric: Metric) -> float | None:
    """0.99 for a "..._p99_ms" metric, None when the name is no percentile."""
    for part in metric.name.split("_"):
        if part.startswith("p") and part[1:].isdigit():
            return int(part[1:]) / 100
    return None


def _which(metric: Metric) -> str:
    q = _quantile(metric)
    return f"p{round(q * 100)} " if q is not None else ""


def _log_axis(axis: Any, values: Sequence[float]) -> None:
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    positive = [v for v in values if v > 0]
    decades = math.log10(max(positive) / min(positive)) if positive else 0.0
    # enough labelled ticks to read a value off a narrow range, few enough for a wide one
    if decades <= 1.5:
        subs: tuple[float, ...] = (1.0, 2.0, 3.0, 5.0)
    elif decades <= 3:
        subs = (1.0, 2.0, 5.0)
    else:
        subs = (1.0, 3.0)
    axis.set_major_locator(LogLocator(base=10, subs=subs, numticks=30))
    axis.set_major_formatter(FuncFormatter(lambda x, _pos: plain_number(x)))
    axis.set_minor_formatter(NullFormatter())


def _figure(title: str, subtitle: str) -> tuple[Any, Any]:
    import textwrap

    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.2, 5.0), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    fig.suptitle(title, fontsize=12)
    ax.set_title(textwrap.fill(subtitle, 115), fontsize=8, color="0.3")
    return fig, ax


def _legend(fig: Any) -> None:
    # Below the axes, so it never covers a line however the data falls.
    fig.legend(loc="outside lower center", fontsize=8, frameon=False, ncols=1)


def plot_figures(runs: Sequence[BenchRun],
                 catalogue: Sequence[Metric] = METRICS) -> list[tuple[str, Any]]:
    """(file name, matplotlib Figure) per plot: each benchmark's latency distributions
    (CDF on a log time axis) and each of its series over time, with targets drawn."""
    figures: list[tuple[str, Any]] = []
    for run in runs:
        samples, series = _pooled(run)
        params = run.outcomes[0].params if run.outcomes else {}
        samples = {k: v for k, v in samples.items() if v}
        if samples:
            figures.append((f"{run.name}_latency.png",
                            _latency_figure(run, samples, params, catalogue)))
        for name, reps in sorted(series.items()):
            if any(reps):
                figures.append((f"{run.name}_{slugify(name)}.png",
                                _series_figure(run, name, reps, params, catalogue)))
    return figures


def _latency_figure(run: BenchRun, samples: dict[str, list[float]], params: dict[str, Any],
                    catalogue: Sequence[Metric]) -> Any:
    fig, ax = _figure(f"{run.name}: latency distribution", workload(run.name, params))
    drawn: list[float] = []
    for name, vals in sorted(samples.items()):
        xs, ys, zeros = cdf_points(vals)
        label = (f"{name}: p50 {fmt_number(percentile(vals, 50))}, "
                 f"p99 {fmt_number(percentile(vals, 99))} ms")
        if zeros:
            label += f"; {zeros / len(vals):.0%} at 0 ms, left of the log axis"
        (line,) = ax.plot(xs, ys, label=label)
        drawn += xs
        for m in targets_on(run.name, name, catalogue):
            assert m.target is not None
            q = _quantile(m)
            ax.axvline(m.target.value, color=line.get_color(), ls="--", lw=1, gid="target",
                       label=f"target: {_which(m)}{m.target.describe(m.unit)}")
            if q is not None:  # the curve must pass left of this point
                ax.plot([m.target.value], [q], marker="x", ms=7, ls="",
                        color=line.get_color())
            drawn.append(m.target.value)
    ax.set_xscale("log")
    _log_axis(ax.xaxis, drawn)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("latency (ms, log scale)")
    ax.set_ylabel("fraction of samples ≤ x")
    ax.grid(True, which="both", alpha=0.3)
    _legend(fig)
    return fig


def _series_figure(run: BenchRun, name: str, reps: list[Any], params: dict[str, Any],
                   catalogue: Sequence[Metric]) -> Any:
    fig, ax = _figure(f"{run.name}: {name} over time", workload(run.name, params, name))
    for i, pts in enumerate(reps, start=1):
        if pts:
            ax.plot([t for t, _ in pts], [y for _, y in pts], lw=0.8,
                    marker="o" if len(pts) < 100 else None, ms=3,
                    label=f"repetition {i}" if len(reps) > 1 else name)
    first = next(pts for pts in reps if pts)
    top = 0.0
    for m in targets_on(run.name, name, catalogue):
        assert m.target is not None
        label = f"target: {_which(m)}{m.target.describe(m.unit)}"
        if m.unit.endswith("/s"):
            # A rate target on a running count: the pace the count must keep up with.
            (t0, y0), t1 = first[0], first[-1][0]
            ax.plot([t0, t1], [y0, y0 + m.target.value * (t1 - t0)], color="0.4",
                    ls="--", lw=1, gid="target", label=f"{label} (pace)")
        else:
            ax.axhline(m.target.value, color="0.4", ls="--", lw=1, gid="target", label=label)
            top = max(top, m.target.value * 1.08)  # off the frame, so it shows
    if all(y >= 0 for pts in reps for _, y in pts):
        ax.set_ylim(bottom=0)  # counts, rates and latencies are read from 0
    if top > ax.get_ylim()[1]:
        ax.set_ylim(top=top)
    spans = [o.windows[name][1] for o in run.outcomes if name in o.windows]
    if spans:  # the whole measured phase, even where few windows were complete
        ax.set_xlim(0, max(spans))
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel(name)
    ax.grid(True, alpha=0.3)
    _legend(fig)
    return fig


def write_plots(runs: Sequence[BenchRun], out_dir: Path) -> list[Path]:
    """Every plot of plot_figures() as a PNG in out_dir."""
    written: list[Path] = []
    for file_name, fig in plot_figures(runs):
        path = out_dir / file_name
        fig.savefig(path)
        written.append(path)
    return written

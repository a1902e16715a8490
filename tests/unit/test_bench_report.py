"""The benchmark report's arithmetic and formatting: percentiles, ratios, rows, Markdown."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from bench.report import (
    METRICS,
    BenchRun,
    Metric,
    Outcome,
    Target,
    build_rows,
    cdf_points,
    complete_windows,
    fmt_number,
    fmt_ratio,
    latency_summary,
    percentile,
    plain_number,
    plot_figures,
    ratio,
    render_markdown,
    report_json,
    slugify,
    workload,
    write_plots,
)

if TYPE_CHECKING:  # the plot tests import matplotlib when they run, the others need none
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

META = {"date": "2026-11-25 10:00 UTC", "cores": 2, "cpu": "Test CPU", "platform": "Linux",
        "python": "3.11.7", "profile": "full", "repeat": 3, "seconds": 12.5,
        "command": "python -m bench.run"}

CATALOGUE = (
    Metric("http.put_per_s", "Durable PUT/s", "ops/s", "http.bare_per_s", "bare aiohttp",
           Target(">=", 0.7, on_ratio=True)),
    Metric("http.put_p99_ms", "PUT latency p99", "ms", "http.bare_p99_ms", "bare aiohttp"),
    Metric("notify.latency_p99_ms", "Notification p99", "ms", target=Target("<=", 10.0)),
    Metric("rss.rss_mib", "RSS", "MiB"),
)


def reps(*metric_dicts: dict[str, float]) -> list[Outcome]:
    return [Outcome(metrics=m) for m in metric_dicts]


# ---------------------------------------------------------------- statistics


def test_percentile_interpolates_between_closest_ranks() -> None:
    data = [1.0, 2.0, 3.0, 4.0]
    assert percentile(data, 0) == 1.0
    assert percentile(data, 100) == 4.0
    assert percentile(data, 50) == 2.5
    assert percentile(list(range(1, 101)), 99) == pytest.approx(99.01)


def test_percentile_ignores_input_order_and_handles_one_value() -> None:
    assert percentile([5.0, 1.0, 3.0], 50) == 3.0
    assert percentile([7.0], 99) == 7.0


@pytest.mark.parametrize("values, q", [([], 50), ([1.0], -1), ([1.0], 100.5)])
def test_percentile_rejects_empty_data_and_bad_quantiles(values: list[float], q: float) -> None:
    with pytest.raises(ValueError):
        percentile(values, q)


def test_latency_summary_names_its_figures() -> None:
    s = latency_summary([1.0] * 98 + [50.0, 100.0], "put")
    assert s["put_p50_ms"] == 1.0
    assert 1.0 < s["put_p99_ms"] < 100.0
    assert s["put_max_ms"] == 100.0


def test_ratio_is_figure_over_ceiling_and_absent_without_a_usable_ceiling() -> None:
    assert ratio(700.0, 1000.0) == pytest.approx(0.7)
    assert ratio(None, 1000.0) is None
    assert ratio(1.0, None) is None
    assert ratio(1.0, 0.0) is None
    assert ratio(math.nan, 1.0) is None


# ---------------------------------------------------------------- rows


def test_rows_take_the_median_over_repetitions_and_the_ceiling_of_the_same_run() -> None:
    run = BenchRun("http", reps(
        {"put_per_s": 800.0, "bare_per_s": 1000.0, "put_p99_ms": 9.0, "bare_p99_ms": 2.0},
        {"put_per_s": 600.0, "bare_per_s": 900.0, "put_p99_ms": 30.0, "bare_p99_ms": 3.0},
        {"put_per_s": 700.0, "bare_per_s": 1100.0, "put_p99_ms": 10.0, "bare_p99_ms": 1.0},
    ))
    rows = {r.key: r for r in build_rows([run], CATALOGUE)}
    assert set(rows) == {"http.put_per_s", "http.put_p99_ms"}  # only benchmarks that ran
    put = rows["http.put_per_s"]
    assert (put.median, put.low, put.high, put.reps) == (700.0, 600.0, 800.0, 3)
    assert put.ceiling == 1000.0
    assert put.ratio == pytest.approx(0.7)
    assert put.status == "pass"  # target >= 0.7x ceiling, met exactly
    assert rows["http.put_p99_ms"].ratio == pytest.approx(5.0)
    assert rows["http.put_p99_ms"].status == "info"  # no target


def test_a_missed_target_fails_and_a_met_one_passes() -> None:
    slow = BenchRun("notify", reps({"latency_p99_ms": 12.0}))
    fast = BenchRun("notify", reps({"latency_p99_ms": 3.0}))
    assert build_rows([slow], CATALOGUE)[0].status == "fail"
    assert build_rows([fast], CATALOGUE)[0].status == "pass"


def test_a_failed_benchmark_gives_error_rows_carrying_its_error() -> None:
    run = BenchRun("http", error="RuntimeError: node exited with 1")
    rows = build_rows([run], CATALOGUE)
    assert [r.status for r in rows] == ["error", "error"]
    assert all("node exited with 1" in r.error for r in rows)


def test_a_metric_the_benchmark_did_not_report_is_an_error_not_a_blank() -> None:
    rows = build_rows([BenchRun("rss", reps({"something_else": 1.0}))], CATALOGUE)
    assert rows[0].status == "error"
    assert "rss.rss_mib" in rows[0].error


def test_every_catalogued_metric_belongs_to_a_registered_benchmark() -> None:
    from bench.run import BY_NAME

    assert {m.bench for m in METRICS} <= set(BY_NAME)
    assert len({m.key for m in METRICS}) == len(METRICS)


# ---------------------------------------------------------------- formatting


@pytest.mark.parametrize("value, text", [
    (None, "—"), (math.nan, "—"), (0.0, "0"), (0.01234, "0.0123"), (1.5, "1.50"),
    (12.34, "12.3"), (123.4, "123"), (12345.6, "12,346"),
])
def test_numbers_are_formatted_for_people(value: float | None, text: str) -> None:
    assert fmt_number(value) == text


def test_targets_and_ratios_read_naturally() -> None:
    assert Target(">=", 0.7, on_ratio=True).describe("ops/s") == "≥ 0.70× ceiling"
    assert Target("<=", 10.0).describe("ms") == "≤ 10 ms"
    assert Target("<=", 2.5).describe("ms") == "≤ 2.50 ms"
    assert Target(">=", 50_000).describe("records/s") == "≥ 50,000 records/s"
    assert fmt_ratio(0.7234) == "0.72×"
    assert fmt_ratio(None) == "—"


def test_markdown_table_shows_figures_ceilings_targets_and_failures() -> None:
    runs = [
        BenchRun("http", reps({"put_per_s": 500.0, "bare_per_s": 1000.0,
                               "put_p99_ms": 4.0, "bare_p99_ms": 2.0})),
        BenchRun("notify", error="TimeoutError: no notification | after 5s"),
    ]
    md = render_markdown(build_rows(runs, CATALOGUE), META, runs, [Path("x/http_latency.png")])
    assert "2 cores (Test CPU)" in md
    assert "python: 3.11.7" in md
    assert "2026-11-25 10:00 UTC" in md
    table = [line for line in md.splitlines() if line.startswith("| ")]
    assert table[0].startswith("| Metric | Figure |")
    put = next(line for line in table if line.startswith("| Durable PUT/s"))
    assert "500 ops/s" in put and "1,000 ops/s (bare aiohttp)" in put
    assert "0.50×" in put and "≥ 0.70× ceiling" in put and "**FAIL**" in put
    failed = next(line for line in table if line.startswith("| Notification p99"))
    assert "**ERROR**" in failed and "no notification \\| after 5s" in failed  # pipe escaped
    assert "### notify" in md  # the full error is shown below the table
    assert "![http_latency](http_latency.png)" in md


def test_json_report_round_trips_and_names_every_metric() -> None:
    runs = [BenchRun("http", reps({"put_per_s": 500.0, "bare_per_s": 1000.0,
                                   "put_p99_ms": 4.0, "bare_p99_ms": 2.0}))]
    data = json.loads(json.dumps(report_json(build_rows(runs, CATALOGUE), META, runs)))
    assert data["metrics"]["http.put_per_s"]["ratio"] == pytest.approx(0.5)
    assert data["benchmarks"]["http"]["status"] == "ok"
    assert data["meta"]["cores"] == 2


def test_outcome_survives_json() -> None:
    o = Outcome(metrics={"a": 1.0}, samples={"s": [1.0, 2.0]}, series={"lag": [(0.0, 1.5)]},
                params={"n": 3}, notes=["note"], windows={"lag": (0.25, 10.0)})
    assert Outcome.from_json(json.loads(json.dumps(o.to_json()))) == o


def test_plot_file_names_are_slugs_of_the_series_name() -> None:
    assert slugify("catch-up: relayer lsn") == "catch_up_relayer_lsn"
    assert slugify("RSS (MiB)") == "rss"
    assert slugify("(x)") == "series"


def test_plots_are_written_for_samples_and_series(tmp_path: Path) -> None:
    run = BenchRun("replication", [Outcome(
        samples={"lag": [0.5, 1.0, 2.0, 8.0]},
        series={"lag (ms)": [(0.0, 1.0), (0.5, 2.0), (1.0, 1.5)]},
    )])
    paths = write_plots([run], tmp_path)
    assert [p.name for p in paths] == ["replication_latency.png", "replication_lag.png"]
    for p in paths:
        assert p.read_bytes().startswith(b"\x89PNG")


# ---------------------------------------------------------------- what a reader sees in the plots

PLOT_CATALOGUE = (
    Metric("notify.latency_p99_ms", "Notification p99", "ms", target=Target("<=", 10.0),
           drawn_on=("PUT ack",)),
    Metric("replication.lag_p99_ms", "Lag p99", "ms", target=Target("<=", 10.0),
           drawn_on=("lag p99",)),
    Metric("replication.catchup_per_s", "Catch-up", "records/s",
           target=Target(">=", 50_000.0), drawn_on=("catch-up",)),
)


def figures(*runs: BenchRun) -> dict[str, Figure]:
    return dict(plot_figures(runs, PLOT_CATALOGUE))


def target_lines(ax: Axes) -> list[Line2D]:
    return [line for line in ax.get_lines() if line.get_gid() == "target"]


def test_a_latency_target_is_a_vertical_line_at_its_value_and_in_the_legend() -> None:
    run = BenchRun("notify", [Outcome(samples={"PUT ack -> SUB": [1.0, 2.0, 4.0],
                                               "bare PUB -> SUB": [0.5, 0.6]})])
    fig = figures(run)["notify_latency.png"]
    (ax,) = fig.axes
    (line,) = target_lines(ax)
    assert list(line.get_xdata()) == [10.0, 10.0]
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "target: p99 ≤ 10 ms" in legend


def test_no_target_line_where_the_metric_has_none() -> None:
    run = BenchRun("http", [Outcome(samples={"node PUT": [1.0, 2.0]})])
    (ax,) = figures(run)["http_latency.png"].axes
    assert target_lines(ax) == []


def test_a_lag_target_is_a_horizontal_line_over_time_and_inside_the_frame() -> None:
    run = BenchRun("replication", [Outcome(series={"lag p99 per 0.25 s": [(0.0, 2.0), (0.25, 3.0)]})])
    (ax,) = figures(run)["replication_lag_p99_per_0_25_s.png"].axes
    (line,) = target_lines(ax)
    assert list(line.get_ydata()) == [10.0, 10.0]
    assert ax.get_ylim()[1] > 10.0


def test_a_rate_target_on_a_running_count_is_drawn_as_the_pace_to_keep() -> None:
    run = BenchRun("replication", [Outcome(
        series={"catch-up: relayer lsn": [(1.0, 40_000.0), (1.5, 70_000.0), (2.0, 100_000.0)]})])
    (ax,) = figures(run)["replication_catch_up_relayer_lsn.png"].axes
    (line,) = target_lines(ax)
    assert list(line.get_xdata()) == [1.0, 2.0]
    assert list(line.get_ydata()) == [40_000.0, 90_000.0]  # 50,000 records/s from the start


def test_count_and_rate_axes_start_at_zero() -> None:
    run = BenchRun("rss", [Outcome(series={"resident memory (MiB)": [(0.0, 65.0), (1.0, 67.0)]})])
    (ax,) = figures(run)["rss_resident_memory.png"].axes
    assert ax.get_ylim()[0] == 0.0
    assert ax.get_ylim()[1] >= 67.0


def test_zero_latencies_are_not_drawn_at_an_invented_floor_but_counted() -> None:
    vals = [0.0] * 25 + [1.0] * 50 + [3.0] * 25
    xs, ys, zeros = cdf_points(vals)
    assert zeros == 25
    assert min(xs) == 1.0
    assert ys[0] == pytest.approx(0.26)  # above the 25% that were 0: still counted
    assert ys[-1] == 1.0
    run = BenchRun("replication", [Outcome(samples={"fan-out": vals})])
    fig = figures(run)["replication_latency.png"]
    (ax,) = fig.axes
    drawn = [x for line in ax.get_lines() for x in line.get_xdata()]
    assert drawn and min(drawn) >= 1.0  # nothing at 0.01 or any other stand-in for 0
    (label,) = [t.get_text() for t in fig.legends[0].get_texts()]
    assert "25% at 0 ms" in label


def test_log_axis_ticks_are_plain_numbers() -> None:
    assert [plain_number(x) for x in (0.1, 0.30000000000000004, 1.0, 3.0, 10.0, 2000.0)] == [
        "0.1", "0.3", "1", "3", "10", "2,000"]
    run = BenchRun("storage", [Outcome(samples={"engine put": [0.2, 0.9, 3.0, 12.0]})])
    fig = figures(run)["storage_latency.png"]
    fig.draw_without_rendering()
    (ax,) = fig.axes
    labels = {t.get_text() for t in ax.get_xticklabels() if t.get_text()}
    assert {"1", "10"} <= labels
    assert not any("$" in t or "^" in t or "×" in t for t in labels)


def test_the_legend_is_outside_the_axes_and_the_title_says_what_ran() -> None:
    run = BenchRun("notify", [Outcome(samples={"PUT ack -> SUB": [1.0, 2.0]}, params={
        "rate": 1000.0, "seconds": 10.0, "connections": 64, "value_size": 100})])
    fig = figures(run)["notify_latency.png"]
    (ax,) = fig.axes
    assert ax.get_legend() is None and len(fig.legends) == 1
    assert ax.get_title() == "1,000 writes/s open loop for 10 s, 64 connections, 100 B values"


def test_workload_falls_back_to_every_parameter() -> None:
    assert workload("render", {"iterations": 500, "datacenters": 10}) == \
        "10 datacenters, 500 iterations"
    assert workload("render", {"n": 3}) == "n=3"
    assert workload("replication", {"catchup_records": 100_000}, "catch-up: relayer lsn") == \
        "a new relayer replays 100,000 records"


def test_the_last_window_after_the_measured_span_and_empty_ones_are_not_drawn() -> None:
    pts = [(0.0, 2.0), (0.25, math.nan), (0.5, 3.0), (0.75, 2.5), (1.0, 0.0)]
    assert complete_windows(pts, (0.25, 1.0)) == [(0.0, 2.0), (0.5, 3.0), (0.75, 2.5)]
    assert complete_windows(pts, None) == [(0.0, 2.0), (0.5, 3.0), (0.75, 2.5), (1.0, 0.0)]
    run = BenchRun("replication", [Outcome(series={"lag p99 per 0.25 s": pts},
                                           windows={"lag p99 per 0.25 s": (0.25, 1.0)})])
    (ax,) = figures(run)["replication_lag_p99_per_0_25_s.png"].axes
    (data,) = [line for line in ax.get_lines() if line.get_gid() != "target"]
    assert list(data.get_ydata()) == [2.0, 3.0, 2.5]  # no fall to 0 at the end

"""The node's /metrics, exposed through prometheus_client.

Everything but the request histogram is read at scrape time by `NodeCollector` from the
parts' own state (stores, followers, notifiers, watch streams), so serving requests costs
nothing for it. Process metrics (CPU, memory, open files) come from prometheus_client's
own collectors.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from unison import __version__
from unison.context import NodeContext

CONTENT_TYPE = CONTENT_TYPE_LATEST
_HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})
# Seconds; a durable PUT takes a few milliseconds, a /watch stream as long as it is open.
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                    2.5, 5.0, 10.0)


class RequestCounter:
    """HTTP requests by (method, route pattern, status) and their durations by (method,
    route). Written by hand rather than with prometheus_client's Histogram: it is on every
    request, and `python -m bench.bench_metrics` measures 1.3 us per request here (count
    and duration) against 4.7 us for a labelled Histogram's duration alone (2.2 us with
    its child cached); the exposition is still prometheus_client's."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, int], int] = {}
        # (method, route) -> [count per bucket..., count above the last bucket, sum]
        self.durations: dict[tuple[str, str], list[float]] = {}
        # Connections the fast path (fastpath.py) answered requests on / gave to aiohttp.
        self.fast_answered = 0
        self.fast_handed_over = 0

    def add(self, method: str, route: str, status: int, seconds: float = 0.0) -> None:
        method = method if method in _HTTP_METHODS else "OTHER"
        counts = self.counts
        key = (method, route, status)
        counts[key] = counts.get(key, 0) + 1
        hist = self.durations.get((method, route))
        if hist is None:
            hist = self.durations[(method, route)] = [0.0] * (len(DURATION_BUCKETS) + 2)
        hist[bisect.bisect_left(DURATION_BUCKETS, seconds)] += 1
        hist[-1] += seconds

    def histograms(self) -> Iterator[tuple[tuple[str, str], list[tuple[str, float]], float]]:
        """((method, route), cumulative buckets as prometheus_client wants them, sum)."""
        for key, hist in sorted(self.durations.items()):
            running, buckets = 0.0, []
            for bound, n in zip((*DURATION_BUCKETS, float("inf")), hist[:-1], strict=True):
                running += n
                buckets.append((_bound(bound), running))
            yield key, buckets, hist[-1]


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(value)


def _num(value: Any) -> float | None:
    """A sample value, or None for what is not a number (absent, text)."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        return float(value)
    return None


# Store counters: stats attribute -> (metric name without _total, help).
_STORE_COUNTERS = (
    ("puts", "unison_puts", "Put mutations committed locally."),
    ("deletes", "unison_deletes", "Delete mutations committed locally."),
    ("commits", "unison_commits", "Synced write batches (group commits)."),
    ("committed_records", "unison_committed_records", "Log records committed."),
    ("bytes_written", "unison_log_bytes_written", "Bytes of log records written."),
    ("replicated_records", "unison_replicated_records", "Log records applied from an upstream."),
    ("trimmed_records", "unison_trimmed_records", "Log records dropped by retention."),
    ("snapshots_installed", "unison_snapshots_installed", "Snapshots installed from an upstream."),
)

# Follower status field -> (kind, metric name without _total for counters, help). Fields
# not listed (names, addresses, reasons) are text and belong in /stats, not here.
_FOLLOWER_FIELDS = (
    ("connected", "gauge", "unison_follower_connected", "1 while the stream is connected."),
    ("caught_up", "gauge", "unison_follower_caught_up", "1 when lag is within the threshold."),
    ("applied_lsn", "gauge", "unison_follower_applied_lsn", "Last LSN applied from upstream."),
    ("upstream_lsn", "gauge", "unison_follower_upstream_lsn", "Upstream's latest LSN seen."),
    ("lag_records", "gauge", "unison_follower_lag_records", "Records behind the upstream."),
    ("lag_seconds", "gauge", "unison_follower_lag_seconds", "Seconds behind the upstream."),
    ("segment_lag_threshold", "gauge", "unison_follower_segment_lag_threshold",
     "Lag in records within which the follower counts as caught up."),
    ("disconnected_seconds", "gauge", "unison_follower_disconnected_seconds",
     "Seconds since the stream was lost (only while disconnected)."),
    ("last_contact_seconds_ago", "gauge", "unison_follower_last_contact_seconds_ago",
     "Seconds since the last message from upstream."),
    ("connect_attempts", "counter", "unison_follower_connect_attempts",
     "Connection attempts to the upstream."),
    ("reconnects", "counter", "unison_follower_reconnects", "Streams re-established."),
    ("records_applied", "counter", "unison_follower_records_applied",
     "Log records applied from the upstream."),
    ("batches_applied", "counter", "unison_follower_batches_applied",
     "Batches applied from the upstream."),
    ("snapshots_installed", "counter", "unison_follower_snapshots_installed",
     "Snapshots installed from the upstream."),
    ("refused_batches", "counter", "unison_follower_refused_batches",
     "Batches refused (gap, checksum or order)."),
    ("snapshots_refused", "counter", "unison_follower_snapshots_refused",
     "Snapshot installs aborted because a chunk failed its CRC32 check."),
    ("history_mismatch", "gauge", "unison_follower_history_mismatch",
     "1 while the upstream's history differs from this namespace's: nothing is applied "
     "(unison_follower_history_mismatch_info names both histories)."),
)

_NOTIFIER_FIELDS = (
    ("sent", "counter", "unison_notifier_sent", "Notifications sent."),
    ("dropped", "counter", "unison_notifier_dropped", "Notifications dropped."),
    ("pending", "gauge", "unison_notifier_pending", "Notifications waiting to be sent."),
    ("last_seq_num", "gauge", "unison_notifier_last_seq_num", "LSN of the last notification."),
    ("wakeups", "counter", "unison_notifier_wakeups",
     "Sends to subscribers: one per commit, or per max_delay window when coalescing."),
)


def _family(kind: str, name: str, help_text: str, labels: list[str]
            ) -> CounterMetricFamily | GaugeMetricFamily:
    if kind == "counter":
        return CounterMetricFamily(name, help_text, labels=labels)
    return GaugeMetricFamily(name, help_text, labels=labels)


def _status_families(fields: tuple[tuple[str, str, str, str], ...], labels: list[str],
                     sources: list[tuple[list[str], dict[str, Any]]]) -> Iterator[Metric]:
    """One family per known field, one sample per source that has it as a number."""
    for field, kind, name, help_text in fields:
        family = _family(kind, name, help_text, labels)
        for values, status in sources:
            number = _num(status.get(field))
            if number is not None:
                family.add_metric(values, number)
        if family.samples:
            yield family


def _history_mismatches(followers: list[tuple[list[str], dict[str, Any]]]) -> Iterator[Metric]:
    """One sample per follower whose upstream has another history, naming both."""
    family = GaugeMetricFamily(
        "unison_follower_history_mismatch_info",
        "A follower stopped because its upstream's history (id/epoch) is not this "
        "namespace's; labels name both.",
        labels=["namespace", "upstream", "local_history", "upstream_history"])
    for values, status in followers:
        if status.get("history_mismatch"):
            family.add_metric([*values, str(status.get("history", "")),
                               str(status.get("upstream_history", ""))], 1)
    if family.samples:
        yield family


class NodeCollector:
    """Reads a running node's state at scrape time (a prometheus_client collector)."""

    def __init__(self, ctx: NodeContext, requests: RequestCounter,
                 watch: Callable[[], dict[str, int]] | None = None) -> None:
        self.ctx, self.requests, self.watch = ctx, requests, watch

    def collect(self) -> Iterator[Metric]:
        ctx = self.ctx
        info = GaugeMetricFamily("unison_build_info", "Node version and role.",
                                 labels=["version", "role"])
        info.add_metric([__version__, ctx.role], 1)
        yield info
        yield GaugeMetricFamily("unison_uptime_seconds", "Seconds since the node started.",
                                value=round(time.time() - ctx.started_at, 3))
        ready, _ = ctx.ready()
        yield GaugeMetricFamily("unison_ready", "1 when /readyz answers 200.", value=ready)
        yield from self._stores()
        yield from self._http()
        if self.watch is not None:
            watch = self.watch()
            yield GaugeMetricFamily("unison_watch_streams", "Open /watch event streams.",
                                    value=watch.get("watch_streams", 0))
            yield CounterMetricFamily("unison_watch_events_sent", "Events sent on /watch streams.",
                                      value=watch.get("watch_events_sent", 0))
        followers = [([ns, str(s.get("upstream", ""))], s)
                     for ns, s in ((ns, f.status()) for ns, f in ctx.followers.items())]
        yield from _status_families(_FOLLOWER_FIELDS, ["namespace", "upstream"], followers)
        yield from _history_mismatches(followers)
        notifiers = [([ns], n.metrics()) for ns, n in ctx.notifiers.items()]
        yield from _status_families(_NOTIFIER_FIELDS, ["namespace"], notifiers)

    def _stores(self) -> Iterator[Metric]:
        ctx = self.ctx
        labels = ["namespace"]
        lsn = GaugeMetricFamily("unison_namespace_lsn", "Latest committed LSN.", labels=labels)
        first = GaugeMetricFamily("unison_namespace_first_retained_lsn",
                                  "Oldest LSN still in the log.", labels=labels)
        writable = GaugeMetricFamily("unison_namespace_writable",
                                     "1 when this node accepts writes.", labels=labels)
        synced = GaugeMetricFamily("unison_synced_lsn", "Newest LSN known to be on stable "
                                   "storage: the latest committed LSN unless in interval "
                                   "durability mode, where the gap to it is what a power cut "
                                   "may lose.", labels=labels)
        interval = GaugeMetricFamily("unison_wal_fsync_interval_seconds", "Interval durability "
                                     "mode's WAL fsync period (storage_config.wal_fsync_interval"
                                     "); 0: every write is fsynced before it is acknowledged.",
                                     labels=labels)
        counters = [CounterMetricFamily(name, help_text, labels=labels)
                    for _, name, help_text in _STORE_COUNTERS]
        for ns, store in ctx.stores.items():
            lsn.add_metric([ns], store.last_lsn)
            first.add_metric([ns], store.first_lsn)
            writable.add_metric([ns], ns in ctx.writable)
            synced.add_metric([ns], store.synced_lsn)
            interval.add_metric([ns], store.wal_fsync_interval)
            for (attr, _, _), family in zip(_STORE_COUNTERS, counters, strict=True):
                family.add_metric([ns], getattr(store.stats, attr))
        yield from (lsn, first, writable, synced, interval, *counters)

    def _http(self) -> Iterator[Metric]:
        total = CounterMetricFamily("unison_http_requests", "HTTP requests by route and status.",
                                    labels=["method", "route", "status"])
        for (method, route, status), n in sorted(self.requests.counts.items()):
            total.add_metric([method, route, str(status)], n)
        yield total
        hist = HistogramMetricFamily("unison_http_request_duration_seconds",
                                     "Time to answer an HTTP request, by route (a /watch "
                                     "stream counts until it closes).",
                                     labels=["method", "route"])
        for (method, route), buckets, total_seconds in self.requests.histograms():
            hist.add_metric([method, route], buckets, total_seconds)
        yield hist
        fast = CounterMetricFamily("unison_http_fast_path", "Key requests answered by the "
                                   "fast path, and connections it handed to aiohttp (a request "
                                   "it does not take: another route, an unusual or refused one).",
                                   labels=["outcome"])
        fast.add_metric(["answered"], self.requests.fast_answered)
        fast.add_metric(["handed_over"], self.requests.fast_handed_over)
        yield fast


def node_registry(ctx: NodeContext, requests: RequestCounter,
                  watch: Callable[[], dict[str, int]] | None = None) -> CollectorRegistry:
    """A registry of its own per node (tests run several nodes in one process)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(NodeCollector(ctx, requests, watch))
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)

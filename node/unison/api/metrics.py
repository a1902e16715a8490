"""Prometheus text exposition (format 0.0.4) of the node's state, written by hand.

Per namespace: LSN and storage counters; HTTP requests by method, route and status;
followers' `status()` fields and notifiers' `metrics()` as labelled gauges/counters.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from typing import Any

from unison import __version__

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_NAME_BAD = re.compile(r"[^a-zA-Z0-9_]")
# Follower/notifier fields that only ever grow; everything else numeric is a gauge.
_COUNTER_FIELDS = frozenset({"reconnects", "snapshots", "snapshots_received", "records_applied",
                             "applied_records", "batches", "errors", "sent", "published",
                             "dropped", "notifications", "messages", "events"})
_HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})


class RequestCounter:
    """HTTP requests by (method, route pattern, status); cheap enough for every request."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str, int], int] = {}

    def add(self, method: str, route: str, status: int) -> None:
        key = (method if method in _HTTP_METHODS else "OTHER", route, status)
        counts = self.counts
        counts[key] = counts.get(key, 0) + 1


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items()) + "}"


def _number(value: Any) -> float | int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int | float):
        return value
    return None


def _fmt(value: float | int) -> str:
    if isinstance(value, int):
        return str(value)
    if value != value:  # NaN
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)


class Exposition:
    """Collects samples grouped by metric family, then renders them in one piece."""

    def __init__(self) -> None:
        self._families: dict[str, tuple[str, str, list[str]]] = {}

    def add(self, name: str, kind: str, help_text: str, value: Any,
            labels: dict[str, str] | None = None) -> None:
        number = _number(value)
        if number is None:
            return
        family = self._families.setdefault(name, (kind, help_text, []))
        family[2].append(f"{name}{_labels(labels or {})} {_fmt(number)}")

    def add_fields(self, prefix: str, fields: dict[str, Any], labels: dict[str, str],
                   what: str) -> None:
        """Numeric fields of a status dict: counters for growing fields, gauges otherwise."""
        for field, value in fields.items():
            base = _NAME_BAD.sub("_", field).strip("_").lower()
            if not base or _number(value) is None:
                continue
            if base.endswith("_total") or base in _COUNTER_FIELDS:
                name = f"{prefix}_{base.removesuffix('_total')}_total"
                self.add(name, "counter", f"{what}: {field}", value, labels)
            else:
                self.add(f"{prefix}_{base}", "gauge", f"{what}: {field}", value, labels)

    def render(self) -> str:
        lines: list[str] = []
        for name, (kind, help_text, samples) in self._families.items():
            lines.append(f"# HELP {name} {help_text.replace(chr(10), ' ')}")
            lines.append(f"# TYPE {name} {kind}")
            lines.extend(samples)
        return "\n".join(lines) + "\n"


_STORE_COUNTERS: Iterable[tuple[str, str, str]] = (
    ("puts", "unison_puts_total", "Put mutations committed locally."),
    ("deletes", "unison_deletes_total", "Delete mutations committed locally."),
    ("commits", "unison_commits_total", "Synced write batches (group commits)."),
    ("committed_records", "unison_committed_records_total", "Log records committed."),
    ("bytes_written", "unison_log_bytes_written_total", "Bytes of log records written."),
    ("replicated_records", "unison_replicated_records_total",
     "Log records applied from an upstream."),
    ("trimmed_records", "unison_trimmed_records_total", "Log records dropped by retention."),
    ("snapshots_installed", "unison_snapshots_installed_total",
     "Snapshots installed from an upstream."),
)


def render_metrics(ctx: Any, requests: RequestCounter,
                   watch: dict[str, int] | None = None) -> str:
    ex = Exposition()
    ex.add("unison_build_info", "gauge", "Node version and role.", 1,
           {"version": __version__, "role": ctx.role})
    ex.add("unison_uptime_seconds", "gauge", "Seconds since the node started.",
           round(time.time() - ctx.started_at, 3))
    ready, _ = ctx.ready()
    ex.add("unison_ready", "gauge", "1 when /readyz answers 200.", ready)
    for ns, store in ctx.stores.items():
        labels = {"namespace": ns}
        ex.add("unison_namespace_lsn", "gauge", "Latest committed LSN.", store.last_lsn, labels)
        ex.add("unison_namespace_first_retained_lsn", "gauge", "Oldest LSN still in the log.",
               store.first_lsn, labels)
        ex.add("unison_namespace_writable", "gauge", "1 when this node accepts writes.",
               ns in ctx.writable, labels)
        for attr, name, help_text in _STORE_COUNTERS:
            ex.add(name, "counter", help_text, getattr(store.stats, attr), labels)
    for (method, route, status), n in sorted(requests.counts.items()):
        ex.add("unison_http_requests_total", "counter", "HTTP requests by route and status.", n,
               {"method": method, "route": route, "status": str(status)})
    if watch:
        ex.add("unison_watch_streams", "gauge", "Open /watch event streams.",
               watch.get("watch_streams"))
        ex.add("unison_watch_events_sent_total", "counter", "Events sent on /watch streams.",
               watch.get("watch_events_sent"))
    for ns, follower in ctx.followers.items():
        status = follower.status()
        labels = {"namespace": ns, "upstream": str(status.get("upstream", ""))}
        ex.add("unison_follower_caught_up", "gauge", "1 when lag is within the threshold.",
               follower.caught_up, labels)
        ex.add_fields("unison_follower", status, labels, "follower status")
    for ns, notifier in ctx.notifiers.items():
        ex.add_fields("unison_notifier", notifier.metrics(), {"namespace": ns},
                      "notifier metric")
    return ex.render()

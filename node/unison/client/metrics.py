"""The client's counters and gauges (prometheus_client), served on its /metrics."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

CONTENT_TYPE = CONTENT_TYPE_LATEST
# A `<name>_created` gauge beside every counter only doubles the series; nobody reads it.
disable_created_metrics()

# name -> (type, help, label names)
METRICS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "unison_client_notifications_received_total": (
        "counter", "Change notifications received over ZeroMQ.", ("namespace",)),
    "unison_client_updates_applied_total": (
        "counter", "Values that changed the CRDT state.", ("namespace",)),
    "unison_client_stale_ignored_total": (
        "counter", "Values ignored because they lose the merge.", ("namespace",)),
    "unison_client_duplicates_total": (
        "counter", "Values equal to what is already held.", ("namespace",)),
    "unison_client_malformed_skipped_total": (
        "counter", "Values or notifications skipped as malformed.", ("namespace",)),
    "unison_client_unknown_keys_total": (
        "counter", "Keys ignored because no CRDT handles them.", ("namespace",)),
    "unison_client_deletes_total": (
        "counter", "Delete notifications (CRDT state is kept).", ("namespace",)),
    "unison_client_rescans_total": (
        "counter", "Namespace scans, by reason.", ("namespace", "reason")),
    "unison_client_relayer_errors_total": (
        "counter", "Failed requests to the relayer.", ("namespace",)),
    "unison_client_last_seq": ("gauge", "Highest seq_num seen per namespace.", ("namespace",)),
    "unison_client_keys": ("gauge", "CRDT keys held, by type.", ("crdt",)),
}


class Metrics:
    """The client's metrics in a registry of their own (tests run several clients)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self._metrics: dict[str, Counter | Gauge] = {}
        for name, (kind, help_text, labels) in METRICS.items():
            if kind == "counter":
                self._metrics[name] = Counter(name.removesuffix("_total"), help_text, labels,
                                              registry=self.registry)
            else:
                self._metrics[name] = Gauge(name, help_text, labels, registry=self.registry)
        ProcessCollector(registry=self.registry)

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        metric = self._metrics[name]
        assert isinstance(metric, Counter), name
        metric.labels(**labels).inc(amount)

    def set(self, name: str, value: float, **labels: str) -> None:
        metric = self._metrics[name]
        assert isinstance(metric, Gauge), name
        metric.labels(**labels).set(value)

    def render(self) -> str:
        return generate_latest(self.registry).decode()

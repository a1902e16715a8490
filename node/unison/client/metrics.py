"""The client's counters, rendered in the Prometheus text format."""

from __future__ import annotations

from collections import defaultdict

# name -> (type, help); rendered in this order
METRICS: dict[str, tuple[str, str]] = {
    "unison_client_notifications_received_total": (
        "counter",
        "Change notifications received over ZeroMQ.",
    ),
    "unison_client_updates_applied_total": ("counter", "Values that changed the CRDT state."),
    "unison_client_stale_ignored_total": ("counter", "Values ignored because they lose the merge."),
    "unison_client_duplicates_total": ("counter", "Values equal to what is already held."),
    "unison_client_malformed_skipped_total": (
        "counter",
        "Values or notifications skipped as malformed.",
    ),
    "unison_client_unknown_keys_total": ("counter", "Keys ignored because no CRDT handles them."),
    "unison_client_deletes_total": ("counter", "Delete notifications (CRDT state is kept)."),
    "unison_client_rescans_total": ("counter", "Namespace scans, by reason."),
    "unison_client_relayer_errors_total": ("counter", "Failed requests to the relayer."),
    "unison_client_last_seq": ("gauge", "Highest seq_num seen per namespace."),
    "unison_client_keys": ("gauge", "CRDT keys held, by type."),
}

Labels = tuple[tuple[str, str], ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Metrics:
    def __init__(self) -> None:
        self._values: dict[str, dict[Labels, float]] = defaultdict(dict)

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        assert name in METRICS, name
        key = tuple(sorted(labels.items()))
        series = self._values[name]
        series[key] = series.get(key, 0) + amount

    def set(self, name: str, value: float, **labels: str) -> None:
        assert name in METRICS, name
        self._values[name][tuple(sorted(labels.items()))] = value

    def get(self, name: str, **labels: str) -> float:
        return self._values.get(name, {}).get(tuple(sorted(labels.items())), 0)

    def render(self) -> str:
        lines: list[str] = []
        for name, (kind, helptext) in METRICS.items():
            lines.append(f"# HELP {name} {helptext}")
            lines.append(f"# TYPE {name} {kind}")
            for labels, value in sorted(self._values.get(name, {}).items()):
                inner = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
                number = int(value) if float(value).is_integer() else value
                lines.append(f"{name}{{{inner}}} {number}" if inner else f"{name} {number}")
        return "\n".join(lines) + "\n"

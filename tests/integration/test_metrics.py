"""/metrics of real nodes, read with prometheus_client's own parser as a Prometheus server
would: every line parses, no series appears twice, counters are counters (named
*_total), the request-duration histogram and process metrics are there; the durability
gauges say each namespace's mode and synced LSN, as /stats does."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from tests.support.nodes import NodeProcess, running_cluster, seed_cluster
from tests.unit.test_chart_podmonitor import dashboard_metrics


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def assert_no_duplicate_series(text: str) -> None:
    series = Counter((s.name, tuple(sorted(s.labels.items())))
                     for f in text_string_to_metric_families(text) for s in f.samples)
    twice = [s for s, n in series.items() if n > 1]
    assert not twice, twice


def test_node_metrics_parse_without_duplicates(tmp_path: Path) -> None:
    with running_cluster(tmp_path) as nodes:
        dc1, relayer = nodes["dc1"], nodes["relayer"]
        for i in range(5):
            assert dc1.put("ad-campaign-dc1", f"k{i}", "v")[0] == 200
        for node in (dc1, relayer):
            status, text = node.api("GET", "/metrics")
            assert status == 200 and isinstance(text, str)
            assert_no_duplicate_series(text)
            f = families(text)
            for name, fam in f.items():
                if fam.type == "counter":
                    assert all(s.name.endswith("_total") for s in fam.samples), name
            assert f["process_resident_memory_bytes"].samples[0].value > 0
            assert "unison_http_request_duration_seconds" in f

        dc1_text = dc1.api("GET", "/metrics")[1]
        puts = [s for s in families(dc1_text)["unison_http_request_duration_seconds"].samples
                if s.name.endswith("_count") and s.labels["method"] == "PUT"]
        assert puts and puts[0].value == 5, puts

        relayer_text = relayer.api("GET", "/metrics")[1]
        rf = families(relayer_text)
        # Growing follower fields are counters; state is a gauge, once per upstream.
        for name in ("unison_follower_connect_attempts", "unison_follower_batches_applied",
                     "unison_follower_snapshots_installed", "unison_follower_refused_batches",
                     "unison_follower_reconnects", "unison_follower_records_applied"):
            assert rf[name].type == "counter", name
        caught_up = rf["unison_follower_caught_up"]
        assert caught_up.type == "gauge" and len(caught_up.samples) == 2, caught_up.samples

        # Every metric the chart's Grafana dashboard queries is one these nodes export.
        exported = {n.removesuffix("_total") for n in (*rf, *families(dc1_text))}
        assert dashboard_metrics() <= exported, dashboard_metrics() - exported


def gauge(text: str, name: str) -> dict[str, float]:
    """namespace -> value of a per-namespace gauge."""
    fam = families(text)[name]
    assert fam.type == "gauge", name
    return {s.labels["namespace"]: s.value for s in fam.samples}


def durability(node: NodeProcess) -> dict[str, tuple[float, float, float]]:
    """namespace -> (wal_fsync_interval_seconds, synced_lsn, namespace_lsn) from /metrics."""
    status, text = node.api("GET", "/metrics")
    assert status == 200 and isinstance(text, str)
    assert_no_duplicate_series(text)
    interval = gauge(text, "unison_wal_fsync_interval_seconds")
    synced, lsn = gauge(text, "unison_synced_lsn"), gauge(text, "unison_namespace_lsn")
    assert set(interval) == set(synced) == set(lsn), (interval, synced, lsn)
    return {ns: (interval[ns], synced[ns], lsn[ns]) for ns in lsn}


def stats(node: NodeProcess, ns: str) -> dict[str, Any]:
    status, body = node.api("GET", f"/api/v1/{ns}/stats")
    assert status == 200 and isinstance(body, dict), body
    return body


def test_durability_gauges_in_synced_and_interval_mode(tmp_path: Path) -> None:
    nodes = seed_cluster(tmp_path)
    dc1, dc2, relayer = nodes["dc1"], nodes["dc2"], nodes["relayer"]
    dc1.config.storage.wal_fsync_interval = 60.0  # no periodic sync while the test runs
    try:
        for node in nodes.values():
            node.start()
        relayer.wait_ready()
        for i in range(5):
            assert dc1.put("ad-campaign-dc1", f"k{i}", "v")[0] == 200
            assert dc2.put("ad-campaign-dc2", f"k{i}", "v")[0] == 200

        # Interval mode: acknowledged writes past the last sync (at open) are not synced yet.
        interval, synced, lsn = durability(dc1)["ad-campaign-dc1"]
        assert interval == 60.0 and lsn >= 5 and synced < lsn, (interval, synced, lsn)
        s = stats(dc1, "ad-campaign-dc1")
        assert (s["durability"], s["wal_fsync_interval_s"], s["synced_lsn"]) == (
            "interval", 60.0, synced)
        # Synced mode (the default): 0, and what is committed is synced.
        assert durability(dc2) == {"ad-campaign-dc2": (0.0, lsn, lsn)}
        assert stats(dc2, "ad-campaign-dc2")["durability"] == "synced"
        relayed = durability(relayer)
        assert set(relayed) == {"ad-campaign-dc1", "ad-campaign-dc2"}
        assert all(i == 0.0 and synced == last for i, synced, last in relayed.values()), relayed
    finally:
        for node in nodes.values():
            node.stop()

"""The chart's optional PodMonitor (metrics.podMonitor.enabled): off by default; on, it
selects exactly the pods the operator renders, on the port each of them names "http"
(which serves /metrics), in the namespaces the operator watches."""

from __future__ import annotations

from pathlib import Path

import helm_python as helm
import pytest
import yaml
from unison.topology.spec import parse_cluster
from unison_operator.render import render

from tests.unit.test_chart import SCOPES, objects, of_kind

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "ad-campaign.yaml"


def pods_of_the_example() -> list[dict]:
    example = parse_cluster(yaml.safe_load(EXAMPLE.read_text()))
    return [o["spec"]["template"] for o in render(example, "ad-campaign", "default")
            if o["kind"] in ("StatefulSet", "Deployment")]


def test_off_by_default() -> None:
    assert of_kind(objects(), "PodMonitor") == []


@pytest.mark.parametrize("scope", SCOPES)
def test_selects_every_unison_pod_on_its_metrics_port(scope: str) -> None:
    values = {**SCOPES[scope], "metrics": {"podMonitor": {
        "enabled": True, "interval": "15s", "labels": {"release": "prom"}}}}
    (monitor,) = of_kind(objects(values), "PodMonitor")
    spec = monitor["spec"]
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert spec["podMetricsEndpoints"] == [{"port": "http", "path": "/metrics",
                                            "interval": "15s"}]
    if scope == "all-namespaces":
        assert spec["namespaceSelector"] == {"any": True}
    else:
        assert spec["namespaceSelector"] == {"matchNames": ["campaigns"]}
    pods = pods_of_the_example()
    assert len(pods) == 4  # dc1, dc2, the relayer, the client
    for pod in pods:
        labels = pod["metadata"]["labels"]
        assert spec["selector"]["matchLabels"].items() <= labels.items(), labels
        ports = {p["name"] for c in pod["spec"]["containers"] for p in c.get("ports", [])}
        assert "http" in ports, ports


def test_interval_is_checked() -> None:
    with helm.Chart.load(Path(__file__).resolve().parents[2] / "charts" / "unison-operator") as c:
        with pytest.raises(helm.HelmError, match="interval"):
            c.render({"metrics": {"podMonitor": {"enabled": True, "interval": "soon"}}},
                     name="r", namespace="n", is_install=True)


DASHBOARD = Path(__file__).resolve().parents[2] / "charts" / "unison-operator" / "dashboards"


def dashboard_metrics() -> set[str]:
    """The metric names the dashboard's queries read (histogram series by family name)."""
    import json
    import re

    doc = json.loads((DASHBOARD / "unison.json").read_text())
    exprs = [t["expr"] for p in doc["panels"] for t in p["targets"]]
    names = {m for e in exprs for m in re.findall(r"\b((?:unison|process)_[a-z_]+)\b", e)}
    return {re.sub(r"_(bucket|total)$", "", n) for n in names}


def test_grafana_dashboard_configmap() -> None:
    import json

    assert of_kind(objects(), "ConfigMap") == []
    (cm,) = of_kind(objects({"metrics": {"grafanaDashboard": {"enabled": True}}}), "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    doc = json.loads(cm["data"]["unison.json"])
    assert doc == json.loads((DASHBOARD / "unison.json").read_text())
    assert {"unison_http_request_duration_seconds", "unison_follower_lag_records"} <= (
        dashboard_metrics())

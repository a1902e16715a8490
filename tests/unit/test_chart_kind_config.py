"""kind-config.yaml offers one worker per zone the e2e test places the seed's parts in,
labelled with the zone label the operator's `zone:` placement selects on."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import yaml
from unison.topology.spec import ZONE_LABEL

ROOT = Path(__file__).resolve().parents[2]


def test_kind_config_has_a_worker_per_zone() -> None:
    doc = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    assert (doc["kind"], doc["apiVersion"]) == ("Cluster", "kind.x-k8s.io/v1alpha4")
    roles = Counter(n["role"] for n in doc["nodes"])
    assert roles == {"control-plane": 1, "worker": 3}
    zones = [n.get("labels", {}).get(ZONE_LABEL) for n in doc["nodes"] if n["role"] == "worker"]
    assert sorted(zones) == ["dc1", "dc2", "relay"]

"""examples/configs/*.toml, the seed's three UnisonDB-style config files for running nodes
by hand (`unison node -config examples/configs/dc1.toml replicator`): each loads, and each
describes the same node as examples/ad-campaign.yaml does under `unison up` (ports,
namespaces, upstreams, notifiers), so the two ways to run the demo cannot drift apart."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from unison.config import NodeConfig, load_config
from unison.topology.spec import parse_cluster

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "examples" / "configs"


def planned() -> dict[str, NodeConfig]:
    spec = parse_cluster(yaml.safe_load((ROOT / "examples" / "ad-campaign.yaml").read_text()))
    plans = spec.plan(base_dir=lambda node: f"./data/{node}",
                      upstream_address=lambda _dc, port: f"127.0.0.1:{port}")
    return {p.name: p.config for p in plans}


def essentials(cfg: NodeConfig) -> dict[str, object]:
    return {
        "http_port": cfg.http_port,
        "grpc_port": cfg.grpc.port,
        "base_dir": cfg.storage.base_dir,
        "namespaces": list(cfg.storage.namespaces),
        "upstreams": sorted((u.name, tuple(u.namespaces), u.upstream_address)
                            for u in cfg.upstreams),
        "notifiers": sorted((n.namespace, n.bind_port) for n in cfg.notifiers),
    }


@pytest.mark.parametrize("name", ["dc1", "dc2", "relayer"])
def test_example_config_is_the_manifests_node(name: str) -> None:
    cfg = load_config(CONFIGS / f"{name}.toml")
    assert essentials(cfg) == essentials(planned()[name])
    assert cfg.write_notify.enabled and cfg.write_notify.max_delay == 0.02  # the seed's 20ms


def test_there_is_one_file_per_node() -> None:
    assert sorted(p.stem for p in CONFIGS.glob("*.toml")) == sorted(planned())

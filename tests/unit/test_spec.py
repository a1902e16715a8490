"""UnisonCluster spec parsing: defaults, field-naming errors, the node plan."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from unison.topology.spec import SpecError, load_cluster, parse_cluster

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "ad-campaign.yaml"


def example() -> dict[str, Any]:
    return yaml.safe_load(EXAMPLE.read_text())


def test_example_parses_with_the_seed_topology_and_defaults() -> None:
    c = load_cluster(EXAMPLE)
    assert c.name == "ad-campaign"
    assert c.image == "unison:0.1.0"
    assert [(dc.name, dc.namespaces) for dc in c.datacenters] == [
        ("dc1", ("ad-campaign-dc1",)), ("dc2", ("ad-campaign-dc2",))]
    assert c.relayer.follow == ("dc1", "dc2")
    assert c.relayer.notifier_base_port == 5555
    assert c.relayer.replicas == 1
    assert c.datacenters[0].storage.size == "1Gi"
    assert c.datacenters[0].storage.reclaim_policy == "Retain"  # PVCs are kept by default
    assert c.client.enabled and c.client.state_port == 8090
    relayer = c.plan(base_dir="/d")[-1]  # its namespaces in notifier-port order
    assert relayer.config.storage.namespaces == ["ad-campaign-dc1", "ad-campaign-dc2"]


def test_a_bare_spec_gets_every_default() -> None:
    c = parse_cluster({"datacenters": [{"name": "east", "namespaces": ["a"]},
                                       {"name": "west", "namespaces": ["b", "c"]}]})
    assert c.name is None
    assert c.relayer.follow == ("east", "west")  # follows every datacenter
    assert c.image == "unison:0.1.0" and c.image_pull_policy == "IfNotPresent"
    assert c.log_level == "info" and c.cluster_domain == "cluster.local"
    assert c.relayer.storage.size == "1Gi"


def test_crdt_merge_is_on_by_default_and_can_be_turned_off_per_datacenter() -> None:
    seed = load_cluster(EXAMPLE).plan(base_dir="/d")
    assert [p.config.storage.crdt_merge_namespaces for p in seed] == [
        ["ad-campaign-dc1"], ["ad-campaign-dc2"], []]  # the relayer only follows
    c = parse_cluster({"datacenters": [{"name": "east", "namespaces": ["a"]},
                                       {"name": "west", "namespaces": ["b"], "crdtMerge": False}]})
    assert [dc.crdt_merge for dc in c.datacenters] == [True, False]
    assert [p.config.storage.crdt_merge_namespaces for p in c.plan(base_dir="/d")] == [
        ["a"], [], []]
    with pytest.raises(SpecError, match=r"spec.datacenters\[0\].crdtMerge: expected true or false"):
        parse_cluster({"datacenters": [{"name": "east", "namespaces": ["a"], "crdtMerge": 1}]})


def test_local_plan_matches_the_seed_ports(tmp_path: Path) -> None:
    plans = load_cluster(EXAMPLE).plan(base_dir=tmp_path)
    assert [(p.name, p.role, p.http_port, p.grpc_port) for p in plans] == [
        ("dc1", "replicator", 8001, 4001),
        ("dc2", "replicator", 8002, 4002),
        ("relayer", "relayer", 8003, 4003),
    ]
    relayer = plans[-1]
    assert relayer.notifier_ports == {"ad-campaign-dc1": 5555, "ad-campaign-dc2": 5556}
    assert [u.upstream_address for u in relayer.config.upstreams] == [
        "127.0.0.1:4001", "127.0.0.1:4002"]
    assert [p.config.storage.base_dir for p in plans] == [
        f"{tmp_path}/dc1", f"{tmp_path}/dc2", f"{tmp_path}/relayer"]


def test_plan_takes_functions_for_directories_and_upstreams() -> None:
    plans = load_cluster(EXAMPLE).plan(base_dir=lambda node: f"/srv/{node}-data",
                                       upstream_address=lambda dc, port: f"{dc}.example:{port}")
    assert plans[0].config.storage.base_dir == "/srv/dc1-data"
    assert plans[-1].config.upstreams[1].upstream_address == "dc2.example:4002"


def _set(doc: dict[str, Any], path: str, value: Any) -> None:
    """Set a dotted path like 'spec.datacenters.1.name' (None deletes the key)."""
    *parents, last = path.split(".")
    node: Any = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    key: Any = int(last) if isinstance(node, list) else last
    if value is None:
        del node[key]
    else:
        node[key] = value


INVALID = [
    ("spec.datacenters.1.name", "dc1",
     'spec.datacenters[1].name: must be unique, "dc1" is used twice'),
    ("spec.datacenters.1.namespaces", ["ad-campaign-dc1"],
     'spec.datacenters[1].namespaces[0]: must be unique across datacenters, "ad-campaign-dc1" '
     'is used already by datacenter "dc1"'),
    ("spec.datacenters.0.namespaces", ["x", "x"],
     'spec.datacenters[0].namespaces[1]: must be unique across datacenters, "x" is used twice'),
    ("spec.relayer.follow", ["dc1", "dc9"],
     'spec.relayer.follow[1]: no datacenter is named "dc9" (datacenters: dc1, dc2)'),
    ("spec.relayer.follow", ["dc1", "dc1"], 'spec.relayer.follow[1]: must be unique'),
    ("spec.relayer.follow", [], "spec.relayer.follow: the relayer must follow at least one"),
    ("spec.datacenters", [], "spec.datacenters: at least one datacenter is required"),
    ("spec.datacenters", None, "spec.datacenters: required field is missing"),
    ("spec.datacenters", {"name": "dc1"}, "spec.datacenters: expected a list"),
    ("spec.datacenters.0.name", "DC_1", 'spec.datacenters[0].name: "DC_1" is not a valid'),
    ("spec.datacenters.0.name", "relayer", 'spec.datacenters[0].name: "relayer" is reserved'),
    ("spec.datacenters.0.name", None, "spec.datacenters[0].name: required field is missing"),
    ("spec.datacenters.0.namespaces", [], "spec.datacenters[0].namespaces: at least one"),
    ("spec.datacenters.1.namespaces", ["Bad Name"],
     'spec.datacenters[1].namespaces[0]: invalid namespace "Bad Name"'),
    ("spec.datacenters.0.storage.size", "lots",
     'spec.datacenters[0].storage.size: expected a Kubernetes quantity like "1Gi" or "500m", '
     'got "lots"'),
    ("spec.datacenters.0.storage.size", "0", "spec.datacenters[0].storage.size: must be greater"),
    ("spec.datacenters.0.storage.reclaimPolicy", "Keep",
     'spec.datacenters[0].storage.reclaimPolicy: must be one of Retain, Delete, got "Keep"'),
    ("spec.datacenters.0.resources", {"requests": {"memory": "1Gi"}, "limits": {"memory": "1Mi"}},
     "spec.datacenters[0].resources.requests.memory: request 1Gi is greater than the limit 1Mi"),
    ("spec.datacenters.0.zone", "", 'spec.datacenters[0].zone: invalid zone name ""'),
    ("spec.relayer.replicas", 0, "spec.relayer.replicas: must be between 1 and 9, got 0"),
    ("spec.relayer.replicas", "2", 'spec.relayer.replicas: expected an integer, got "2"'),
    ("spec.relayer.notifierBasePort", 8002,
     "spec.relayer.notifierBasePort: notifier ports 8002-8003 overlap node port 8002"),
    ("spec.relayer.notifierBasePort", 65535,
     "spec.relayer.notifierBasePort: 65535 leaves no room for 2 notifier ports"),
    ("spec.relayer.folow", ["dc1"], "spec.relayer.folow: unknown field (known fields: replicas"),
    ("spec.client.enabled", "yes", 'spec.client.enabled: expected true or false, got "yes"'),
    ("spec.imagePullPolicy", "Sometimes", "spec.imagePullPolicy: must be one of Always"),
    ("spec.image", "unison: 0.1", 'spec.image: not a valid image reference: "unison: 0.1"'),
    ("kind", "Deployment", 'kind: expected UnisonCluster, got "Deployment"'),
    ("apiVersion", "unisondb.io/v1", "apiVersion: expected unisondb.io/v1alpha1"),
    ("metadata.name", "x" * 45, 'metadata.name: "' + "x" * 45 + '" is too long'),
    ("metadata.name", "Ad_Campaign", 'metadata.name: "Ad_Campaign" is not a valid cluster name'),
]


@pytest.mark.parametrize(("path", "value", "message"), INVALID,
                         ids=[f"{p}={v!r}"[:60] for p, v, _ in INVALID])
def test_invalid_specs_name_the_field(path: str, value: Any, message: str) -> None:
    doc = example()
    _set(doc, path, copy.deepcopy(value))
    with pytest.raises(SpecError) as err:
        parse_cluster(doc)
    assert str(err.value).startswith(message)


def test_zone_and_node_selector_become_one_selector() -> None:
    doc = example()
    doc["spec"]["datacenters"][0].update(zone="eu-1", nodeSelector={"disk": "ssd"})
    dc1 = parse_cluster(doc).datacenters[0]
    assert dc1.placement.selector() == {"disk": "ssd", "topology.kubernetes.io/zone": "eu-1"}
    doc["spec"]["datacenters"][0]["nodeSelector"] = {"topology.kubernetes.io/zone": "us-2"}
    with pytest.raises(SpecError, match=r"^spec.datacenters\[0\].zone: \"eu-1\" contradicts"):
        parse_cluster(doc)


def test_load_cluster_reports_file_problems(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match=r"missing.yaml: cannot read file"):
        load_cluster(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("spec: [unclosed\n")
    with pytest.raises(SpecError, match=r"bad.yaml: not valid YAML"):
        load_cluster(bad)
    other = tmp_path / "other.yaml"
    other.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    with pytest.raises(SpecError, match=r"other.yaml: no UnisonCluster document found"):
        load_cluster(other)
    wrong = tmp_path / "wrong.yaml"
    doc = example()
    doc["spec"]["relayer"]["follow"] = ["dc3"]
    wrong.write_text("---\n# a namespace first\napiVersion: v1\nkind: Namespace\n"
                     "metadata: {name: x}\n---\n" + yaml.safe_dump(doc))
    with pytest.raises(SpecError) as err:
        load_cluster(wrong)
    assert str(err.value) == (f'{wrong}: spec.relayer.follow[0]: no datacenter is named "dc3" '
                              "(datacenters: dc1, dc2)")


def test_load_cluster_refuses_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes(yaml.safe_dump(example()).encode() + "# équipe\n".encode("latin-1"))
    with pytest.raises(SpecError) as err:
        load_cluster(latin1)
    message = str(err.value)
    assert message.startswith(f"{latin1}: not UTF-8 text")
    assert "byte 0xe9 at offset" in message

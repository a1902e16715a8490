"""Rendering a UnisonCluster into Kubernetes objects: determinism, names, ports, TOML."""

from __future__ import annotations

import copy
import dataclasses
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from unison.config import NodeConfig, parse_config, render_toml
from unison.local.cluster import plan_local
from unison.topology.spec import load_cluster, parse_cluster
from unison_operator.render import (
    CONFIG_HASH_ANNOTATION,
    HASH_ANNOTATION,
    allocation_from_status,
    allocation_to_status,
    k8s_plans,
    port_allocation,
    render,
)
from unison_operator.render_cli import main as render_main

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "ad-campaign.yaml"
K8S_VERSION = kubernetes_validate.utils.latest_version()


def seed(uid: str | None = "uid-1") -> list[dict[str, Any]]:
    return render(load_cluster(EXAMPLE), "ad-campaign", "prod", uid)


def by_name(objects: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (obj,) = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


def container(obj: dict[str, Any]) -> dict[str, Any]:
    (c,) = obj["spec"]["template"]["spec"]["containers"]
    return c


def test_seed_topology_renders_the_expected_objects() -> None:
    assert [(o["kind"], o["metadata"]["name"]) for o in seed()] == [
        ("ConfigMap", "ad-campaign-config"),
        ("Service", "ad-campaign-dc1-headless"), ("Service", "ad-campaign-dc1"),
        ("NetworkPolicy", "ad-campaign-dc1"),
        ("StatefulSet", "ad-campaign-dc1"), ("PodDisruptionBudget", "ad-campaign-dc1"),
        ("Service", "ad-campaign-dc2-headless"), ("Service", "ad-campaign-dc2"),
        ("NetworkPolicy", "ad-campaign-dc2"),
        ("StatefulSet", "ad-campaign-dc2"), ("PodDisruptionBudget", "ad-campaign-dc2"),
        ("Service", "ad-campaign-relayer-headless"), ("Service", "ad-campaign-relayer"),
        ("NetworkPolicy", "ad-campaign-relayer"),
        ("StatefulSet", "ad-campaign-relayer"), ("PodDisruptionBudget", "ad-campaign-relayer"),
        ("Service", "ad-campaign-client"), ("Deployment", "ad-campaign-client"),
    ]
    assert {o["metadata"]["namespace"] for o in seed()} == {"prod"}


def test_rendering_is_deterministic() -> None:
    first = yaml.safe_dump_all(seed())
    # Same manifest with its keys in another order and defaults spelled out.
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["spec"] = dict(reversed(list(doc["spec"].items())))
    doc["spec"]["logLevel"] = "info"
    doc["spec"]["relayer"]["storage"] = {"size": "1Gi", "reclaimPolicy": "Retain"}
    again = render(parse_cluster(doc), "ad-campaign", "prod", "uid-1")
    assert yaml.safe_dump_all(again) == first
    assert yaml.safe_dump_all(seed()) == first


@pytest.mark.parametrize("uid", ["uid-1", None])
def test_every_object_validates_against_the_kubernetes_schema(uid: str | None) -> None:
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["spec"]["datacenters"][0].update(
        zone="zone-a", nodeSelector={"kubernetes.io/hostname": "kind-worker"},
        resources={"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "1Gi"}},
        storage={"size": "2Gi", "storageClassName": "standard", "reclaimPolicy": "Delete"})
    doc["spec"]["relayer"]["replicas"] = 2
    for objects in (seed(uid), render(parse_cluster(doc), "ad-campaign", "prod", uid)):
        for obj in objects:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_invalid_object_is_caught_by_the_validator() -> None:
    # Guards the test above: the validator does reject a broken StatefulSet.
    sts = copy.deepcopy(by_name(seed(), "StatefulSet", "ad-campaign-dc1"))
    sts["spec"]["replicas"] = "one"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, K8S_VERSION, strict=True)


def test_node_statefulsets_follow_the_contract() -> None:
    objects = seed()
    dc1 = by_name(objects, "StatefulSet", "ad-campaign-dc1")
    c = container(dc1)
    assert c["image"] == "unison:0.1.0"
    assert c["args"] == ["node", "-config", "/etc/unison/dc1.toml", "replicator"]
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": 8001, "grpc": 4001}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert {m["mountPath"] for m in c["volumeMounts"]} >= {"/etc/unison", "/data"}
    pod = dc1["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["resources"]["requests"] and c["resources"]["limits"]
    assert dc1["spec"]["replicas"] == 1
    assert dc1["spec"]["serviceName"] == "ad-campaign-dc1-headless"
    (claim,) = dc1["spec"]["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "1Gi"
    assert dc1["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Retain"
    assert CONFIG_HASH_ANNOTATION in dc1["spec"]["template"]["metadata"]["annotations"]

    relayer = by_name(objects, "StatefulSet", "ad-campaign-relayer")
    c = container(relayer)
    assert c["args"] == ["node", "-config", "/etc/unison/relayer.toml", "relayer"]
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {
        "http": 8003, "grpc": 4003, "zmq-0": 5555, "zmq-1": 5556}


def test_services_expose_named_ports_and_the_zmq_map() -> None:
    objects = seed()
    headless = by_name(objects, "Service", "ad-campaign-relayer-headless")
    assert headless["spec"]["clusterIP"] == "None"
    svc = by_name(objects, "Service", "ad-campaign-relayer")
    assert [(p["name"], p["port"]) for p in svc["spec"]["ports"]] == [
        ("http", 8003), ("grpc", 4003), ("zmq-0", 5555), ("zmq-1", 5556)]
    assert svc["metadata"]["annotations"]["unisondb.io/zmq-ports"] == (
        "ad-campaign-dc1=5555,ad-campaign-dc2=5556")
    sts = by_name(objects, "StatefulSet", "ad-campaign-relayer")
    assert svc["spec"]["selector"] == sts["spec"]["selector"]["matchLabels"]
    assert sts["spec"]["selector"]["matchLabels"].items() <= (
        sts["spec"]["template"]["metadata"]["labels"].items())


def _tcp(*ports: int) -> list[dict[str, Any]]:
    return [{"protocol": "TCP", "port": p} for p in ports]


@pytest.mark.parametrize("base", [5555, 6100])
def test_network_policies_open_http_and_zmq_and_keep_grpc_inside_the_cluster(base: int) -> None:
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["spec"]["relayer"]["notifierBasePort"] = base
    spec = parse_cluster(doc)
    objects = render(spec, "ad-campaign", "prod", "uid-1")
    plans = {p.name: p for p in k8s_plans(spec, "ad-campaign", "prod")}
    relayer_pods = {"podSelector": {"matchLabels": by_name(
        objects, "StatefulSet", "ad-campaign-relayer")["spec"]["selector"]["matchLabels"]}}
    for part, plan in plans.items():
        policy = by_name(objects, "NetworkPolicy", f"ad-campaign-{part}")
        kubernetes_validate.validate(policy, K8S_VERSION, strict=True)
        sts = by_name(objects, "StatefulSet", f"ad-campaign-{part}")
        assert policy["spec"]["podSelector"] == sts["spec"]["selector"]
        assert policy["spec"]["policyTypes"] == ["Ingress"]  # egress is not restricted
        # Ports are the node's own, as its TOML in the ConfigMap says, as numbers.
        cfg = parse_config(tomllib.loads(by_name(
            objects, "ConfigMap", "ad-campaign-config")["data"][f"{part}.toml"]))
        open_rule, grpc_rule = policy["spec"]["ingress"]
        assert open_rule == {"ports": _tcp(cfg.http_port, *(n.bind_port for n in cfg.notifiers))}
        assert grpc_rule["ports"] == _tcp(cfg.grpc.port)
        if part == "relayer":
            assert sorted(plan.notifier_ports.values()) == [base, base + 1]
            # Any pod of this UnisonCluster (the client too), nothing else.
            assert grpc_rule["from"] == [{"podSelector": {"matchLabels": {
                "app.kubernetes.io/instance": "ad-campaign",
                "app.kubernetes.io/name": "unison"}}}]
        else:
            assert not plan.notifier_ports
            assert grpc_rule["from"] == [relayer_pods]  # only its followers
    client = by_name(objects, "Deployment", "ad-campaign-client")
    assert ({"app.kubernetes.io/instance": "ad-campaign", "app.kubernetes.io/name": "unison"}
            .items() <= client["spec"]["template"]["metadata"]["labels"].items())


def test_a_datacenter_nobody_follows_admits_no_grpc() -> None:
    # An empty `from` would admit every source: the gRPC rule is left out instead.
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["spec"]["relayer"]["follow"] = ["dc1"]
    objects = render(parse_cluster(doc), "ad-campaign", "prod", "uid-1")
    (rule,) = by_name(objects, "NetworkPolicy", "ad-campaign-dc2")["spec"]["ingress"]
    assert rule == {"ports": _tcp(8002)}
    assert len(by_name(objects, "NetworkPolicy", "ad-campaign-dc1")["spec"]["ingress"]) == 2


def test_client_deployment_points_at_the_relayer() -> None:
    client = by_name(seed(), "Deployment", "ad-campaign-client")
    c = container(client)
    assert c["args"] == [
        "client", "--http", "http://ad-campaign-relayer:8003",
        "--zmq", "ad-campaign-dc1=tcp://ad-campaign-relayer:5555",
        "--zmq", "ad-campaign-dc2=tcp://ad-campaign-relayer:5556",
        "--state-host", "0.0.0.0", "--state-port", "8090"]
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}


def test_disabling_the_client_removes_it() -> None:
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["spec"]["client"]["enabled"] = False
    kinds = {(o["kind"], o["metadata"]["name"])
             for o in render(parse_cluster(doc), "ad-campaign", "prod")}
    assert ("Deployment", "ad-campaign-client") not in kinds
    assert ("Service", "ad-campaign-client") not in kinds


def test_labels_and_owner_references() -> None:
    for obj in seed():
        labels = obj["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "unison"
        assert labels["app.kubernetes.io/instance"] == "ad-campaign"
        assert labels["app.kubernetes.io/managed-by"] == "unison-operator"
        assert labels["app.kubernetes.io/part-of"] == "unison"
        assert labels["app.kubernetes.io/component"] in (
            "config", "datacenter", "relayer", "client")
        assert obj["metadata"]["ownerReferences"] == [{
            "apiVersion": "unisondb.io/v1alpha1", "kind": "UnisonCluster",
            "name": "ad-campaign", "uid": "uid-1", "controller": True,
            "blockOwnerDeletion": True}]
    assert all("ownerReferences" not in o["metadata"] for o in seed(uid=None))


def test_configmap_toml_is_what_unison_up_writes_apart_from_paths_and_addresses() -> None:
    data = seed()[0]["data"]
    assert sorted(data) == ["dc1.toml", "dc2.toml", "relayer.toml"]
    manifest = yaml.safe_load(EXAMPLE.read_text())
    local_cluster = plan_local(manifest, str(EXAMPLE), data_dir="/home/me/unison-data")
    assert [n.name for n in local_cluster.nodes] == ["dc1", "dc2", "relayer"]

    def same_places(cfg: NodeConfig) -> NodeConfig:
        """What legitimately differs: data paths, listen addresses, upstream hosts, and
        TLS (Kubernetes: mutual TLS with the operator's certificates; loopback: plaintext)."""
        cfg = copy.deepcopy(cfg)
        cfg.source = ""
        cfg.storage.base_dir = "/data"
        cfg.http.listen_ip = cfg.grpc.listen_ip = "any"
        plain = {"allow_insecure": True, "cert_path": "", "key_path": "", "ca_path": ""}
        cfg.grpc = dataclasses.replace(cfg.grpc, **plain)
        cfg.upstreams = [dataclasses.replace(u, upstream_address=u.upstream_address.rsplit(":")[-1],
                                             **plain)
                        for u in cfg.upstreams]
        return cfg

    for node in local_cluster.nodes:
        # Exactly the file `unison up` writes, read back as the node reads it.
        written = parse_config(tomllib.loads(render_toml(node.config)), node.name)
        in_cluster = parse_config(tomllib.loads(data[f"{node.name}.toml"]), node.name)
        assert same_places(in_cluster) == same_places(written), node.name


def test_relayer_dials_datacenters_through_headless_service_dns() -> None:
    relayer = tomllib.loads(seed()[0]["data"]["relayer.toml"])
    assert relayer["relayer_config"]["dc1"]["upstream_address"] == (
        "ad-campaign-dc1-0.ad-campaign-dc1-headless.prod.svc.cluster.local:4001")
    assert relayer["storage_config"]["base_dir"] == "/data"
    assert relayer["notifier_config"]["ad-campaign-dc2"]["bind_port"] == 5556


def test_config_hash_rolls_only_the_nodes_whose_toml_changed() -> None:
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["spec"]["datacenters"][1]["namespaces"].append("ad-campaign-extra")

    def hashes(objects: list[dict[str, Any]]) -> dict[str, str]:
        return {o["metadata"]["name"]: o["spec"]["template"]["metadata"]["annotations"][
            CONFIG_HASH_ANNOTATION] for o in objects if o["kind"] == "StatefulSet"}

    before, after = hashes(seed()), hashes(render(parse_cluster(doc), "ad-campaign", "prod"))
    assert before["ad-campaign-dc1"] == after["ad-campaign-dc1"]
    assert before["ad-campaign-dc2"] != after["ad-campaign-dc2"]
    assert before["ad-campaign-relayer"] != after["ad-campaign-relayer"]


def test_applied_hash_changes_with_content_only() -> None:
    a, b = seed(), seed()
    assert [o["metadata"]["annotations"][HASH_ANNOTATION] for o in a] == [
        o["metadata"]["annotations"][HASH_ANNOTATION] for o in b]
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["spec"]["datacenters"][0]["storage"]["size"] = "5Gi"
    changed = render(parse_cluster(doc), "ad-campaign", "prod", "uid-1")
    differs = [o["metadata"]["name"] for o, n in zip(a, changed, strict=True)
               if o["metadata"]["annotations"][HASH_ANNOTATION]
               != n["metadata"]["annotations"][HASH_ANNOTATION]]
    assert differs == ["ad-campaign-dc1"]


def test_placement_and_reclaim_policy() -> None:
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["spec"]["datacenters"][1].update(zone="zone-b", nodeSelector={"disk": "ssd"})
    doc["spec"]["datacenters"][1]["storage"]["reclaimPolicy"] = "Delete"
    dc2 = by_name(render(parse_cluster(doc), "ad-campaign", "prod"), "StatefulSet",
                  "ad-campaign-dc2")
    assert dc2["spec"]["template"]["spec"]["nodeSelector"] == {
        "disk": "ssd", "topology.kubernetes.io/zone": "zone-b"}
    assert dc2["spec"]["persistentVolumeClaimRetentionPolicy"] == {
        "whenDeleted": "Delete", "whenScaled": "Retain"}


def test_render_cli_prints_yaml(capsys: pytest.CaptureFixture[str]) -> None:
    assert render_main([str(EXAMPLE), "--namespace", "prod"]) == 0
    printed = list(yaml.safe_load_all(capsys.readouterr().out))
    assert printed == seed(uid=None)


def test_render_cli_bad_file_is_one_line_and_exit_2(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["spec"]["datacenters"][1]["name"] = "dc1"
    bad.write_text(yaml.safe_dump(doc))
    assert render_main([str(bad)]) == 2
    out = capsys.readouterr()
    assert out.out == ""
    assert out.err == (f'unison render: {bad}: spec.datacenters[1].name: must be unique, '
                       '"dc1" is used twice\n')
    assert render_main([str(tmp_path / "nope.yaml")]) == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


# ---------------------------------------------------------------- stable ports


def with_dc3(doc: dict[str, Any], follow: list[str] | None = None) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    doc["spec"]["datacenters"].append({"name": "dc3", "namespaces": ["ad-campaign-dc3"]})
    doc["spec"]["relayer"]["follow"] = follow or ["dc1", "dc2", "dc3"]
    return doc


def service_ports(objects: list[dict[str, Any]], part: str) -> dict[str, int]:
    svc = by_name(objects, "Service", f"ad-campaign-{part}")
    return {p["name"]: p["port"] for p in svc["spec"]["ports"]}


def test_without_a_previous_allocation_ports_follow_the_seed_order() -> None:
    spec = load_cluster(EXAMPLE)
    ports = allocation_to_status(port_allocation(spec, "ad-campaign", "prod"))
    assert ports == {
        "dc1": {"index": 1, "http": 8001, "grpc": 4001},
        "dc2": {"index": 2, "http": 8002, "grpc": 4002},
        "relayer": {"index": 3, "http": 8003, "grpc": 4003, "notifierBasePort": 5555,
                    "notifiers": {"ad-campaign-dc1": 5555, "ad-campaign-dc2": 5556}}}
    # Passing that allocation back changes nothing.
    assert render(spec, "ad-campaign", "prod", "uid-1",
                  ports=allocation_from_status(ports)) == seed()


def test_adding_a_datacenter_keeps_the_ports_of_the_others() -> None:
    doc = yaml.safe_load(EXAMPLE.read_text())
    previous = port_allocation(parse_cluster(doc), "ad-campaign", "prod")
    # dc3 first in follow order: its namespace still gets the next free notifier port.
    grown = parse_cluster(with_dc3(doc, follow=["dc3", "dc1", "dc2"]))
    after = render(grown, "ad-campaign", "prod", "uid-1", ports=previous)
    before = seed()
    assert service_ports(after, "relayer") == {"http": 8003, "grpc": 4003, "zmq-0": 5557,
                                               "zmq-1": 5555, "zmq-2": 5556}
    assert service_ports(after, "dc3") == {"http": 8004, "grpc": 4004}
    for part in ("dc1", "dc2"):
        assert service_ports(after, part) == service_ports(before, part)
        assert by_name(after, "StatefulSet", f"ad-campaign-{part}") == by_name(
            before, "StatefulSet", f"ad-campaign-{part}")
    # The relayer's TOML only gains the new upstream and its notifier.
    old = tomllib.loads(by_name(before, "ConfigMap", "ad-campaign-config")["data"]["relayer.toml"])
    new = tomllib.loads(by_name(after, "ConfigMap", "ad-campaign-config")["data"]["relayer.toml"])
    assert (new["http_port"], new["grpc_config"]["port"]) == (8003, 4003)
    assert set(new["relayer_config"]) - set(old["relayer_config"]) == {"dc3"}
    assert new["relayer_config"]["dc3"]["upstream_address"].endswith(":4004")
    for name in old["relayer_config"]:
        assert new["relayer_config"][name] == old["relayer_config"][name]
    assert {ns: c["bind_port"] for ns, c in new["notifier_config"].items()} == {
        "ad-campaign-dc1": 5555, "ad-campaign-dc2": 5556, "ad-campaign-dc3": 5557}
    # The client keeps its relayer address and only subscribes to one more namespace.
    old_args = container(by_name(before, "Deployment", "ad-campaign-client"))["args"]
    new_args = container(by_name(after, "Deployment", "ad-campaign-client"))["args"]
    assert "http://ad-campaign-relayer:8003" in new_args
    assert set(new_args) - set(old_args) == {"ad-campaign-dc3=tcp://ad-campaign-relayer:5557"}
    assert set(old_args) <= set(new_args)


def test_removing_a_datacenter_keeps_the_others_and_frees_its_index() -> None:
    doc = with_dc3(yaml.safe_load(EXAMPLE.read_text()))
    three = port_allocation(parse_cluster(doc), "ad-campaign", "prod")
    assert three.indices == {"dc1": 1, "dc2": 2, "dc3": 3, "relayer": 4}
    del doc["spec"]["datacenters"][1]
    doc["spec"]["relayer"]["follow"] = ["dc1", "dc3"]
    two = port_allocation(parse_cluster(doc), "ad-campaign", "prod", three)
    assert two.indices == {"dc1": 1, "dc3": 3, "relayer": 4}
    assert two.notifier_ports == {"ad-campaign-dc1": 5555, "ad-campaign-dc3": 5557}
    # A datacenter added later takes the lowest free index and notifier port.
    doc["spec"]["datacenters"].append({"name": "dc4", "namespaces": ["ad-campaign-dc4"]})
    doc["spec"]["relayer"]["follow"] = ["dc1", "dc3", "dc4"]
    four = port_allocation(parse_cluster(doc), "ad-campaign", "prod", two)
    assert four.indices == {"dc1": 1, "dc3": 3, "dc4": 2, "relayer": 4}
    assert four.notifier_ports["ad-campaign-dc4"] == 5556


def test_a_new_notifier_base_port_renumbers_the_notifiers_only() -> None:
    doc = yaml.safe_load(EXAMPLE.read_text())
    previous = port_allocation(parse_cluster(doc), "ad-campaign", "prod")
    doc["spec"]["relayer"]["notifierBasePort"] = 6000
    moved = port_allocation(parse_cluster(doc), "ad-campaign", "prod", previous)
    assert moved.indices == previous.indices
    assert moved.notifier_ports == {"ad-campaign-dc1": 6000, "ad-campaign-dc2": 6001}

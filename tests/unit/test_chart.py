"""The Helm chart, through Helm's own engine (helm-python-sdk): it lints, renders objects
the Kubernetes API accepts (official schemas via kubernetes-validate), grants the operator
exactly the API calls it makes, carries the project's CRD unchanged, and its NOTES give
port-forwards that match what the operator creates for examples/ad-campaign.yaml."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from unison.topology.spec import parse_cluster
from unison_operator import kube, run
from unison_operator.render import render

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "unison-operator"
RELEASE, RELEASE_NS = "unison-operator", "unison-system"
# The oldest Kubernetes the chart declares (Chart.yaml kubeVersion) and the newest schema.
KUBE_VERSIONS = ("1.28", kubernetes_validate.utils.latest_version())

# Every (apiGroup, resource, verb) the operator needs in the namespaces it watches,
# read from operator/unison_operator (kube.py, handlers.py) and kopf (standalone: no
# peering objects). Anything the chart grants beyond this is a finding.
NAMESPACED_CALLS = {
    # kopf: list+watch the UnisonClusters, patch its annotations; handlers.write_status:
    # get the cluster, merge-patch its status.
    ("unisondb.io", "unisonclusters", "get"),
    ("unisondb.io", "unisonclusters", "list"),
    ("unisondb.io", "unisonclusters", "watch"),
    ("unisondb.io", "unisonclusters", "patch"),
    ("unisondb.io", "unisonclusters/status", "patch"),
    # children with blockOwnerDeletion ownerReferences (OwnerReferencesPermissionEnforcement)
    ("unisondb.io", "unisonclusters/finalizers", "update"),
    # kube.KubeClient: get, server-side apply (PATCH), create (POST) of every child
    *{(g, r, v) for g, r in (("", "configmaps"), ("", "services"), ("apps", "statefulsets"),
                             ("apps", "deployments"), ("policy", "poddisruptionbudgets"),
                             ("networking.k8s.io", "networkpolicies"))
      for v in ("get", "create", "patch")},
    # kopf.on.event on every child kind: a deleted or edited child is repaired, and status
    # follows the StatefulSets and Deployments
    *{(g, r, v) for g, r in (("", "configmaps"), ("", "services"), ("apps", "statefulsets"),
                             ("apps", "deployments"), ("policy", "poddisruptionbudgets"),
                             ("networking.k8s.io", "networkpolicies"))
      for v in ("list", "watch")},
    # a StatefulSet whose volumeClaimTemplates change is deleted (orphan) and recreated
    ("apps", "statefulsets", "delete"),
    # the cluster's TLS Secret (handlers.tls_material: read, then applied like any child;
    # not watched, so no list/watch on Secrets)
    ("", "secrets", "get"),
    ("", "secrets", "create"),
    ("", "secrets", "patch"),
    # growing data volumes
    ("", "persistentvolumeclaims", "get"),
    ("", "persistentvolumeclaims", "patch"),
    # kopf.event()
    ("", "events", "create"),
}
# Cluster-scoped reads kopf makes: CRD observation always, namespaces only when it watches
# named namespaces (cluster-wide it lists the resource across all namespaces instead).
CLUSTER_CALLS = {
    ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
    ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
}
NAMESPACE_WATCH_CALLS = {("", "namespaces", "list"), ("", "namespaces", "watch")}


def render_chart(values: dict[str, Any] | None = None) -> dict[str, str]:
    with helm.Chart.load(CHART) as chart:
        return chart.render(values or {}, name=RELEASE, namespace=RELEASE_NS, is_install=True)


def objects(values: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    out = []
    for path, text in render_chart(values).items():
        if path.endswith(".yaml"):
            out += [d for d in yaml.safe_load_all(text) if d]
    return out


def of_kind(objs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def grants(rules: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {(g, r, v) for rule in rules for g in rule.get("apiGroups", [])
            for r in rule.get("resources", []) for v in rule.get("verbs", [])}


SCOPES = {
    "all-namespaces": {"watch": {"allNamespaces": True}},
    "one-namespace": {"watch": {"allNamespaces": False, "namespace": "campaigns"}},
}


# ---------------------------------------------------------------- Helm's own checks


@pytest.mark.parametrize("scope", SCOPES)
def test_chart_lints_clean_in_strict_mode(scope: str) -> None:
    report = helm.lint(CHART, SCOPES[scope], strict=True, namespace=RELEASE_NS)
    problems = [m for m in report["messages"] if m["severity"] >= 2]
    assert report["errors"] == [] and problems == [], report


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("version", KUBE_VERSIONS)
def test_rendered_objects_pass_the_kubernetes_schemas(scope: str, version: str) -> None:
    objs = objects(SCOPES[scope])
    kinds = sorted(o["kind"] for o in objs)
    assert "Deployment" in kinds and "ServiceAccount" in kinds, kinds
    for obj in objs:
        kubernetes_validate.validate(obj, version, strict=True)


def test_chart_crd_is_the_projects_crd_and_valid() -> None:
    chart_copy = CHART / "crds" / "unisoncluster.yaml"
    assert chart_copy.read_bytes() == (ROOT / "crds" / "unisoncluster.yaml").read_bytes(), (
        "charts/unison-operator/crds/unisoncluster.yaml differs from crds/unisoncluster.yaml: "
        "copy it over")
    with helm.Chart.load(CHART) as chart:
        assert [c["name"] for c in chart.crds] == ["crds/unisoncluster.yaml"]
    crd = yaml.safe_load(chart_copy.read_text())
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(crd, version, strict=True)


def test_values_schema_rejects_mistakes_naming_the_key() -> None:
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(chart.values)
        for bad, key in (({"watch": {"allNamespaces": "yes"}}, "allNamespaces"),
                         ({"image": {"pullPolicy": "Sometimes"}}, "pullPolicy"),
                         ({"watch": {"namespace": "Not_A_Namespace"}}, "namespace"),
                         ({"operator": {"verbose": "yes"}}, "verbose"),
                         ({"replicas": 2}, "replicas")):
            with pytest.raises(helm.HelmError) as err:
                chart.render(bad, name=RELEASE, namespace=RELEASE_NS)
            assert key in str(err.value), (bad, str(err.value))


# ---------------------------------------------------------------- RBAC = the operator's calls


def test_default_rbac_is_namespace_scoped() -> None:
    """Cluster-wide writes only when asked for (watch.allNamespaces: true)."""
    objs = objects()
    assert grants([r for cr in of_kind(objs, "ClusterRole") for r in cr["rules"]]) == (
        CLUSTER_CALLS | NAMESPACE_WATCH_CALLS)
    (role,) = of_kind(objs, "Role")
    assert role["metadata"]["namespace"] == RELEASE_NS
    assert grants(role["rules"]) == NAMESPACED_CALLS


def test_cluster_wide_rbac_is_exactly_the_operators_calls() -> None:
    objs = objects(SCOPES["all-namespaces"])
    assert of_kind(objs, "Role") == [] and of_kind(objs, "RoleBinding") == []
    granted = grants([r for cr in of_kind(objs, "ClusterRole") for r in cr["rules"]])
    assert granted == NAMESPACED_CALLS | CLUSTER_CALLS, (
        f"missing: {sorted(NAMESPACED_CALLS | CLUSTER_CALLS - granted)}, "
        f"beyond need: {sorted(granted - NAMESPACED_CALLS - CLUSTER_CALLS)}")


def test_single_namespace_rbac_keeps_the_cluster_objects_in_that_namespace() -> None:
    objs = objects(SCOPES["one-namespace"])
    cluster = grants([r for cr in of_kind(objs, "ClusterRole") for r in cr["rules"]])
    assert cluster == CLUSTER_CALLS | NAMESPACE_WATCH_CALLS
    (role,) = of_kind(objs, "Role")
    assert role["metadata"]["namespace"] == "campaigns"
    assert grants(role["rules"]) == NAMESPACED_CALLS


@pytest.mark.parametrize("scope", SCOPES)
def test_rbac_has_no_wildcards_and_binds_the_operators_account(scope: str) -> None:
    objs = objects(SCOPES[scope])
    for role in of_kind(objs, "ClusterRole") + of_kind(objs, "Role"):
        for rule in role["rules"]:
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field], (role["metadata"]["name"], rule)
            assert "resourceNames" not in rule and "nonResourceURLs" not in rule
    (sa,) = of_kind(objs, "ServiceAccount")
    (dep,) = of_kind(objs, "Deployment")
    assert dep["spec"]["template"]["spec"]["serviceAccountName"] == sa["metadata"]["name"]
    roles = {(r["kind"], r["metadata"]["name"]) for r in
             of_kind(objs, "ClusterRole") + of_kind(objs, "Role")}
    for binding in of_kind(objs, "ClusterRoleBinding") + of_kind(objs, "RoleBinding"):
        assert (binding["roleRef"]["kind"], binding["roleRef"]["name"]) in roles
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": sa["metadata"]["name"],
                                        "namespace": RELEASE_NS}]
    assert len(of_kind(objs, "ClusterRoleBinding") + of_kind(objs, "RoleBinding")) == len(roles)


def test_every_kind_the_operator_writes_is_covered() -> None:
    # A kind added to the operator's client without RBAC would fail only in a real cluster.
    granted = {r for _, r, _ in NAMESPACED_CALLS}
    for kind, (_, plural) in kube.RESOURCES.items():
        assert plural in granted, f"{kind} ({plural}) is used by unison_operator.kube, not granted"
    example = parse_cluster(yaml.safe_load((ROOT / "examples" / "ad-campaign.yaml").read_text()))
    for obj in render(example, "ad-campaign", "default", uid="0"):
        assert kube.RESOURCES[obj["kind"]][1] in granted


# ---------------------------------------------------------------- the operator's pod


@pytest.mark.parametrize("scope", SCOPES)
def test_deployment_runs_the_operator_with_the_chosen_watch_scope(scope: str) -> None:
    (dep,) = of_kind(objects(SCOPES[scope]), "Deployment")
    pod = dep["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == "unison:0.1.0"
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"]["type"] == "Recreate"
    assert pod["securityContext"]["runAsUser"] == 10001
    assert container["args"][0] == "operator"
    # The arguments are the operator's own command line, as `unison operator` parses it.
    args = run.build_parser().parse_args(container["args"][1:])
    if scope == "all-namespaces":
        assert args.all_namespaces and not args.namespace
    else:
        assert args.namespace == ["campaigns"] and not args.all_namespaces
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("livenessProbe", "readinessProbe"):  # both on the endpoint kopf serves
        get = container[probe]["httpGet"]
        assert args.liveness.endswith(f":{ports[get['port']]}{get['path']}"), probe


def test_image_and_tag_come_from_values() -> None:
    (dep,) = of_kind(objects({"image": {"repository": "registry.local/unison", "tag": "dev",
                                        "pullPolicy": "Never"}}), "Deployment")
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    assert (container["image"], container["imagePullPolicy"]) == ("registry.local/unison:dev",
                                                                  "Never")


# ---------------------------------------------------------------- NOTES


def test_notes_port_forwards_match_the_services_of_the_example() -> None:
    notes = next(v for k, v in render_chart(SCOPES["all-namespaces"]).items()
                 if k.endswith("NOTES.txt"))
    assert "kubectl -n default apply -f examples/ad-campaign.yaml" in notes
    forwards = re.findall(r"port-forward svc/(\S+)((?: \d+:\d+)+)", notes)
    example = parse_cluster(yaml.safe_load((ROOT / "examples" / "ad-campaign.yaml").read_text()))
    services = {o["metadata"]["name"]: {p["port"] for p in o["spec"]["ports"]}
                for o in render(example, "ad-campaign", "default") if o["kind"] == "Service"}
    local_ports = set()
    for svc, pairs in forwards:
        for pair in pairs.split():
            local, remote = map(int, pair.split(":"))
            assert svc in services and remote in services[svc], (svc, remote, services)
            local_ports.add(local)
    # The seed's curl commands and its client use exactly these.
    assert {8001, 8002, 8003, 5555, 5556} <= local_ports


def test_notes_use_the_watched_namespace() -> None:
    notes = next(v for k, v in render_chart(SCOPES["one-namespace"]).items()
                 if k.endswith("NOTES.txt"))
    assert "namespace campaigns only" in notes
    assert "kubectl -n campaigns apply -f examples/ad-campaign.yaml" in notes


# ---------------------------------------------------------------- kubectl install


def test_kubectl_install_manifest_is_the_chart_rendered() -> None:
    r = subprocess.run([sys.executable, "scripts/container/render_install_manifest.py", "--check"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    docs = list(yaml.safe_load_all((ROOT / "charts" / "install" / "unison-operator.yaml")
                                   .read_text()))
    assert [d["kind"] for d in docs][:2] == ["Namespace", "CustomResourceDefinition"]
    assert docs[1] == yaml.safe_load((ROOT / "crds" / "unisoncluster.yaml").read_text())
    for d in docs:
        kubernetes_validate.validate(d, KUBE_VERSIONS[-1], strict=True)

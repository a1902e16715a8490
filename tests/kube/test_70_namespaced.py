"""The chart's namespace-scoped mode (`watch.allNamespaces: false`) on a real cluster: the
operator reconciles UnisonClusters in its own namespace with a Role there, and neither
touches nor may touch any other namespace. Then the other install path: the plain-kubectl
manifest (`kubectl apply --server-side -f charts/install/unison-operator.yaml`).

Runs after the cluster-wide tests: it uninstalls the cluster-wide release first, since two
operators must not reconcile the same UnisonClusters.
"""

from __future__ import annotations

import time

import pytest

from tests.kube.cluster import Cluster
from tests.kube.e2e import (
    INSTALL_MANIFEST,
    Operator,
    apply,
    children,
    example,
    get_uc,
    helm,
    install_operator,
    wait_ready,
)

TEAM, OTHER = "team-a", "team-b"
IGNORED_SECONDS = 20


@pytest.fixture(scope="module")
def scoped(cluster: Cluster, operator: Operator) -> Operator:
    helm(cluster, "uninstall", operator.namespace, operator.release)
    op = install_operator(cluster, TEAM, "team-unison-operator", {"watch": {"allNamespaces": False}})
    cluster.kubectl("create", "namespace", OTHER)
    return op


def can_i(cluster: Cluster, op: Operator, verb: str, resource: str, namespace: str) -> bool:
    r = cluster.kubectl("auth", "can-i", verb, resource, "-n", namespace,
                        "--as", op.service_account, check=False)
    return r.stdout.strip() == "yes"


def test_reconciles_its_own_namespace(cluster: Cluster, scoped: Operator) -> None:
    apply(cluster, example("team-cluster"), TEAM)
    wait_ready(cluster, "team-cluster", TEAM)
    assert can_i(cluster, scoped, "create", "statefulsets", TEAM)


def test_leaves_other_namespaces_alone(cluster: Cluster, scoped: Operator) -> None:
    apply(cluster, example("elsewhere"), OTHER)
    time.sleep(IGNORED_SECONDS)
    assert not (get_uc(cluster, "elsewhere", OTHER).get("status") or {}), "it was reconciled"
    for kind in ("statefulsets", "services", "configmaps"):
        assert children(cluster, kind, "elsewhere", OTHER) == []
    # And it could not even if it tried: its RBAC is a Role in its own namespace.
    for verb, resource in (("create", "statefulsets"), ("get", "configmaps"),
                           ("patch", "unisonclusters/status")):
        assert not can_i(cluster, scoped, verb, resource, OTHER), (verb, resource)


def test_plain_manifest_install(cluster: Cluster, scoped: Operator) -> None:
    """The README's other path (the chart's default values: namespace-scoped to
    unison-system); the namespace-scoped release goes first."""
    helm(cluster, "uninstall", scoped.namespace, scoped.release)
    cluster.kubectl("apply", "--server-side", "-f", str(INSTALL_MANIFEST))
    op = Operator(cluster, "unison-system", "unison-operator")
    op.wait_available()
    apply(cluster, example("plain"), "unison-system")
    wait_ready(cluster, "plain", "unison-system")
    # Secure by default: the default scope grants nothing outside its own namespace.
    assert not can_i(cluster, op, "create", "statefulsets", OTHER)
    assert not can_i(cluster, op, "get", "secrets", OTHER)

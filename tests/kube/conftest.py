"""Fixtures of the real-Kubernetes suite: one cluster for the session (tests/kube/cluster.py)
with the project's image loaded, and the operator installed by its Helm chart.

Where the cluster cannot run (not root, no Go, no Docker image) the suite skips with the
reason; with UNISON_REQUIRE_KUBE=1 (set by .ci/run, which prepares everything) it fails
instead. UNISON_KUBE_KEEP=1 leaves the cluster's files and logs in /var/tmp afterwards.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from tests.container.harness import IMAGE, docker, docker_unavailable_reason
from tests.kube.cluster import Cluster, ClusterError, log, new_cluster
from tests.kube.e2e import Operator, install_operator

REQUIRED = os.environ.get("UNISON_REQUIRE_KUBE") == "1"
_timings: dict[str, float] = {}  # the session cluster's phases, for the closing summary
SUMMARY: list[str] = []  # lines tests want in the closing summary (e.g. audit counts)


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "the real-Kubernetes suite needs root (network namespaces, containerd)"
    if shutil.which("go") is None:
        return "Go is not installed (Kubernetes is built from Go modules)"
    reason = docker_unavailable_reason()
    if reason:
        return reason
    if docker("image", "inspect", IMAGE, check=False).returncode != 0:
        return f"image {IMAGE} not built (run: bash scripts/container/prepare.sh)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/kube/" in str(item.fspath):
            item.add_marker(pytest.mark.kube)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    reason = _unavailable()
    if reason:
        if REQUIRED:
            pytest.fail(f"UNISON_REQUIRE_KUBE=1 but the cluster cannot run: {reason}")
        pytest.skip(reason)
    keep = os.environ.get("UNISON_KUBE_KEEP") == "1"
    try:
        c = new_cluster(keep)
    except ClusterError as e:
        pytest.fail(f"the test cluster did not start: {e}")
    try:
        try:
            c.load_image(IMAGE)
        except ClusterError as e:
            pytest.fail(f"the test cluster did not start: {e}")
        yield c
    finally:
        c.stop()
        if keep:
            log(f"kept {c.workdir} (UNISON_KUBE_KEEP=1)")
        else:
            shutil.rmtree(c.workdir, ignore_errors=True)
        _timings.update(c.timings)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if _timings:
        terminalreporter.write_line("real Kubernetes cluster: " + ", ".join(
            f"{k} {v:.1f}s" for k, v in _timings.items()))
    for line in SUMMARY:
        terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def operator(cluster: Cluster) -> Operator:
    """The operator as users install it: the chart in unison-system, cluster-wide (asked
    for: the chart's default scope is its own namespace) since the suite's clusters live
    in several namespaces."""
    return install_operator(cluster, "unison-system", "unison-operator",
                            {"watch": {"allNamespaces": True}})

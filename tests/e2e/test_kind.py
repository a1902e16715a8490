"""End to end on kind: create the cluster from kind-config.yaml, build and load the image,
install the Helm chart, apply examples/ad-campaign.yaml (each part placed in its zone),
wait for Ready, port-forward, run the seed's scenarios and check the client's /state.

Needs `kind`, `kubectl` and a Docker engine that kind can use; skips otherwise. Set
UNISON_KIND_CLUSTER=NAME to use an existing kind cluster (left in place afterwards).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import helm_python as helm
import pytest
import yaml
from unison.local.scenarios import DC1, DC2, RELAYER_READS, seed_scenarios

from tests.container.harness import (
    IMAGE,
    REPO_ROOT,
    docker,
    docker_unavailable_reason,
    free_ports,
    relayer_value,
    request,
    run_scenarios,
    unmet,
    wait_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _skip_reason() -> str | None:
    for tool in ("kind", "kubectl"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (the kind test needs kind, kubectl and Docker)"
    return docker_unavailable_reason()


_reason = _skip_reason()
if _reason:
    pytest.skip(_reason, allow_module_level=True)

CHART = REPO_ROOT / "charts" / "unison-operator"
EXAMPLE = REPO_ROOT / "examples" / "ad-campaign.yaml"
OPERATOR_NS, CLUSTER_NS = "unison-system", "default"
ZONES = {"dc1": "dc1", "dc2": "dc2", "relayer": "relay", "client": "relay"}


@dataclass
class Kind:
    name: str
    kubeconfig: Path

    def kubectl(self, *args: str, input: str | None = None, timeout: float = 120,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        r = subprocess.run(["kubectl", "--kubeconfig", str(self.kubeconfig), *args], input=input,
                           capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}: {r.stderr.strip()}")
        return r

    def diagnose(self) -> str:
        out = []
        for args in (("get", "unisoncluster,pods,svc", "-A", "-o", "wide"),
                     ("-n", OPERATOR_NS, "logs", "deploy/unison-operator", "--tail", "40"),
                     ("-n", CLUSTER_NS, "get", "events", "--sort-by", ".lastTimestamp")):
            r = self.kubectl(*args, check=False)
            out.append(f"$ kubectl {' '.join(args)}\n{r.stdout}{r.stderr}")
        return "\n".join(out)


def run(*cmd: str, timeout: float = 900, env: dict[str, str] | None = None) -> None:
    r = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout,
                       env={**os.environ, **(env or {})}, cwd=REPO_ROOT)
    assert r.returncode == 0, f"{' '.join(cmd)} failed:\n{r.stdout[-2000:]}{r.stderr[-2000:]}"


def ensure_image() -> None:
    """The image as prepare.sh builds it; on machines with an image registry the base
    image may be the public python one instead of the local debootstrap one."""
    if docker("image", "inspect", IMAGE, check=False).returncode == 0:
        return
    run("bash", "scripts/container/wheelhouse.sh")
    base = os.environ.get("UNISON_BASE_IMAGE")
    if base is None and docker("image", "inspect", "unison-base:bookworm",
                               check=False).returncode != 0:
        base = "python:3.11-slim-bookworm"
    run("bash", "scripts/container/build-image.sh", env={"UNISON_BASE_IMAGE": base} if base else None)


@pytest.fixture(scope="module")
def kind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kind]:
    existing = os.environ.get("UNISON_KIND_CLUSTER")
    kubeconfig = tmp_path_factory.mktemp("kind") / "kubeconfig"
    cluster = Kind(existing or f"unison-e2e-{uuid.uuid4().hex[:6]}", kubeconfig)
    ensure_image()
    try:
        if existing:
            run("kind", "export", "kubeconfig", "--name", existing, "--kubeconfig", str(kubeconfig))
        else:
            run("kind", "create", "cluster", "--name", cluster.name, "--config",
                str(REPO_ROOT / "kind-config.yaml"), "--kubeconfig", str(kubeconfig),
                "--wait", "180s")
        run("kind", "load", "docker-image", IMAGE, "--name", cluster.name)
        yield cluster
    finally:
        if not existing:
            subprocess.run(["kind", "delete", "cluster", "--name", cluster.name],
                           capture_output=True, timeout=300)


def zoned_example() -> dict[str, Any]:
    """examples/ad-campaign.yaml with every part placed in its kind-config.yaml zone."""
    doc = yaml.safe_load(EXAMPLE.read_text())
    spec = doc["spec"]
    for dc in spec["datacenters"]:
        dc["zone"] = ZONES[dc["name"]]
    spec["relayer"]["zone"] = ZONES["relayer"]
    spec["client"]["zone"] = ZONES["client"]
    return doc


class PortForwards:
    """`kubectl port-forward` processes, stopped on exit."""

    def __init__(self, cluster: Kind, stack: ExitStack) -> None:
        self.cluster, self.stack = cluster, stack

    def forward(self, service: str, remote: int) -> int:
        (local,) = free_ports(1)
        proc = subprocess.Popen(
            ["kubectl", "--kubeconfig", str(self.cluster.kubeconfig), "-n", CLUSTER_NS,
             "port-forward", "--address", "127.0.0.1", f"svc/{service}", f"{local}:{remote}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.stack.callback(lambda: (proc.terminate(), proc.wait(10)))
        return local


def test_seed_scenarios_on_kind(kind: Kind) -> None:
    with helm.Config(kubeconfig_path=kind.kubeconfig, namespace=OPERATOR_NS) as cfg:
        cfg.install(str(CHART), "unison-operator", {"image": {"pullPolicy": "Never"}},
                    namespace=OPERATOR_NS, create_namespace=True, wait="watcher", timeout=300)

    kind.kubectl("-n", CLUSTER_NS, "apply", "-f", "-", input=yaml.safe_dump(zoned_example()))
    r = kind.kubectl("-n", CLUSTER_NS, "wait", "unisoncluster/ad-campaign",
                     "--for=jsonpath={.status.phase}=Ready", "--timeout=600s", timeout=660,
                     check=False)
    assert r.returncode == 0, f"UnisonCluster not Ready: {r.stderr}\n{kind.diagnose()}"

    # Each part runs on the worker of its zone.
    nodes = yaml.safe_load(kind.kubectl("get", "nodes", "-o", "yaml").stdout)["items"]
    zone_of = {n["metadata"]["name"]: n["metadata"]["labels"].get("topology.kubernetes.io/zone")
               for n in nodes}
    pods = yaml.safe_load(kind.kubectl("-n", CLUSTER_NS, "get", "pods", "-l",
                                       "app.kubernetes.io/instance=ad-campaign",
                                       "-o", "yaml").stdout)["items"]
    placed = {p["metadata"]["labels"]["unisondb.io/part"]: zone_of[p["spec"]["nodeName"]]
              for p in pods}
    assert placed == ZONES, placed

    with ExitStack() as stack:
        pf = PortForwards(kind, stack)
        ports = {"dc1": pf.forward("ad-campaign-dc1", 8001),
                 "dc2": pf.forward("ad-campaign-dc2", 8002),
                 "relayer": pf.forward("ad-campaign-relayer", 8003),
                 "client": pf.forward("ad-campaign-client", 8090)}
        for name, port in ports.items():
            wait_for(f"port-forward to {name}",
                     lambda p=port: request(p, "GET", "/readyz", timeout=2)[0] == 200,
                     60, kind.diagnose)

        scenarios = seed_scenarios(int(time.time()) * 1000)
        run_scenarios(scenarios, {DC1: ports["dc1"], DC2: ports["dc2"]})
        expects = [e for sc in scenarios for e in sc.expects]
        last: list[object] = [None]

        def converged() -> bool:
            status, doc = request(ports["client"], "GET", "/state", timeout=2)
            last[0] = doc
            return status == 200 and not unmet(expects, doc)

        wait_for("the client's converged CRDT state", converged, 120,
                 lambda: "\n".join(unmet(expects, last[0])) + "\n" + kind.diagnose())
        for read in RELAYER_READS:
            assert relayer_value(ports["relayer"], read.namespace, read.key) == read.payload

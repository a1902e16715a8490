"""What the real-Kubernetes tests do again and again: install the operator with its chart,
apply a UnisonCluster and wait for it, port-forward, talk HTTP inside the cluster's
network, read the API server's audit log, and watch that status never claims Ready while
a rollout is still going on.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tests.container.harness import request
from tests.kube.cluster import REPO_ROOT, Cluster

CHART = REPO_ROOT / "charts" / "unison-operator"
INSTALL_MANIFEST = REPO_ROOT / "charts" / "install" / "unison-operator.yaml"
EXAMPLE = REPO_ROOT / "examples" / "ad-campaign.yaml"
HELM_SCRIPT = Path(__file__).resolve().parent / "helm_release.py"
INSTANCE = "app.kubernetes.io/instance"


def wait_until(what: str, probe: Callable[[], Any], timeout: float,
               diagnose: Callable[[], str] = lambda: "", every: float = 0.5) -> Any:
    """Poll until `probe` returns something truthy, and return it; fail with `what`."""
    deadline = time.monotonic() + timeout
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f}s\n{diagnose()}")
        time.sleep(every)


# ---------------------------------------------------------------- the operator


@dataclass
class Operator:
    cluster: Cluster
    namespace: str
    release: str

    @property
    def service_account(self) -> str:
        return f"system:serviceaccount:{self.namespace}:{self.release}"

    def pods(self) -> list[dict[str, Any]]:
        return self.cluster.get_json("-n", self.namespace, "pods", "-l",
                                     f"{INSTANCE}={self.release}")["items"]

    def wait_available(self, timeout: float = 180) -> None:
        self.cluster.kubectl("-n", self.namespace, "rollout", "status",
                             f"deployment/{self.release}", f"--timeout={int(timeout)}s",
                             timeout=timeout + 10)

    def restart(self) -> None:
        """Kill the operator's pod; its Deployment starts a new one."""
        old = {p["metadata"]["name"] for p in self.pods()}
        self.cluster.kubectl("-n", self.namespace, "delete", "pod", "--wait=false",
                             "-l", f"{INSTANCE}={self.release}")
        wait_until("a new operator pod Ready", lambda: any(
            p["metadata"]["name"] not in old and _pod_ready(p) for p in self.pods()), 120,
            self.cluster.diagnose)

    def logs(self) -> str:
        return self.cluster.kubectl("-n", self.namespace, "logs", "--tail=-1", "--prefix",
                                    "-l", f"{INSTANCE}={self.release}", check=False).stdout


def helm(cluster: Cluster, action: str, namespace: str, release: str,
         values: dict[str, Any] | None = None) -> None:
    args = [sys.executable, str(HELM_SCRIPT), action, "--kubeconfig", str(cluster.kubeconfig),
            "--namespace", namespace, "--release", release]
    if action == "install":
        args += ["--chart", str(CHART), "--values", json.dumps(values or {})]
    r = cluster.run(*args, timeout=400, check=False)
    assert r.returncode == 0, f"helm {action} {release}: {r.stderr}\n{cluster.diagnose()}"


def install_operator(cluster: Cluster, namespace: str, release: str,
                     values: dict[str, Any]) -> Operator:
    helm(cluster, "install", namespace, release, values)
    op = Operator(cluster, namespace, release)
    op.wait_available()
    return op


# ---------------------------------------------------------------- UnisonClusters


def example(name: str = "ad-campaign", **spec_changes: Any) -> dict[str, Any]:
    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["metadata"]["name"] = name
    doc["spec"].update(spec_changes)
    return doc


def apply(cluster: Cluster, doc: dict[str, Any], namespace: str = "default",
          check: bool = True) -> subprocess.CompletedProcess[str]:
    return cluster.kubectl("-n", namespace, "apply", "-f", "-", input=json.dumps(doc),
                           check=check)


def get_uc(cluster: Cluster, name: str, namespace: str = "default") -> dict[str, Any]:
    return cluster.get_json("-n", namespace, "unisoncluster", name)


def phase_summary(uc: dict[str, Any]) -> str:
    st = uc.get("status") or {}
    conds = "; ".join(f"{c.get('type')}={c.get('status')} {c.get('reason')}: {c.get('message')}"
                      for c in st.get("conditions") or [])
    return f"phase={st.get('phase')} ready={st.get('ready')} {conds}"


def wait_ready(cluster: Cluster, name: str, namespace: str = "default",
               timeout: float = 300) -> dict[str, Any]:
    """The UnisonCluster Ready for its current generation; returns it."""
    last: list[dict[str, Any]] = [{}]

    def ready() -> bool:
        uc = last[0] = get_uc(cluster, name, namespace)
        st = uc.get("status") or {}
        return (st.get("phase") == "Ready"
                and st.get("observedGeneration") == uc["metadata"]["generation"])

    wait_until(f"UnisonCluster {namespace}/{name} Ready", ready, timeout,
               lambda: phase_summary(last[0]) + "\n" + cluster.diagnose([namespace]))
    return last[0]


def children(cluster: Cluster, kind: str, name: str, namespace: str = "default") -> list[Any]:
    return cluster.get_json("-n", namespace, kind, "-l", f"{INSTANCE}={name}")["items"]


def _pod_ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True"
               for c in pod.get("status", {}).get("conditions", []))


def rollout_lies(cluster: Cluster, name: str, namespace: str = "default") -> list[str]:
    """Why the UnisonCluster's status would be false if it says Ready now ([] = true)."""
    uc = get_uc(cluster, name, namespace)
    st = uc.get("status") or {}
    if st.get("phase") != "Ready" or st.get("observedGeneration") != uc["metadata"]["generation"]:
        return []
    lies = []
    for kind in ("statefulsets", "deployments"):
        for w in children(cluster, kind, name, namespace):
            want = w["spec"].get("replicas", 1)
            s = w.get("status", {})
            n = f"{kind[:-1]}/{w['metadata']['name']}"
            if s.get("observedGeneration") != w["metadata"]["generation"]:
                lies.append(f"{n}: generation {w['metadata']['generation']} not yet observed")
            for key in ("replicas", "readyReplicas", "updatedReplicas"):
                if s.get(key, 0) != want:
                    lies.append(f"{n}: {key}={s.get(key, 0)}, want {want}")
            if kind == "statefulsets" and s.get("currentRevision") != s.get("updateRevision"):
                lies.append(f"{n}: revision {s.get('currentRevision')} -> "
                            f"{s.get('updateRevision')} still rolling")
            if s.get("unavailableReplicas"):
                lies.append(f"{n}: {s['unavailableReplicas']} unavailable")
    return [f"{namespace}/{name} says Ready but {lie}" for lie in lies]


@dataclass
class StatusWatch:
    """Samples a UnisonCluster in the background; a lie seen twice in a row, with the
    status unchanged in between, is recorded (one sample can race a pod's own change)."""

    cluster: Cluster
    name: str
    namespace: str = "default"
    lies: list[str] = field(default_factory=list)
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        previous: tuple[str, list[str]] | None = None
        while not self._stop.wait(0.5):
            try:
                version = get_uc(self.cluster, self.name, self.namespace)["metadata"][
                    "resourceVersion"]
                lies = rollout_lies(self.cluster, self.name, self.namespace)
            except (AssertionError, KeyError, ValueError):
                continue  # the API answered oddly once (e.g. mid-delete): sample again
            self.samples += 1
            if lies and previous and previous[0] == version and previous[1]:
                self.lies.extend(lies)
            previous = (version, lies)


@contextmanager
def status_watched(cluster: Cluster, name: str, namespace: str = "default"
                   ) -> Iterator[StatusWatch]:
    watch = StatusWatch(cluster, name, namespace)
    t = threading.Thread(target=watch.run, daemon=True)
    t.start()
    try:
        yield watch
    finally:
        watch._stop.set()
        t.join(10)
    assert watch.samples > 0, "the status watch never got an answer"
    assert not watch.lies, "status was not truthful during the rollout:\n" + "\n".join(
        sorted(set(watch.lies)))


# ---------------------------------------------------------------- talking to pods


def http_call(cluster: Cluster, host: str, port: int, method: str, path: str, body: Any = None,
              timeout: float = 5.0) -> tuple[int, Any]:
    """One HTTP request from inside the cluster's network; status 0 when nothing answered."""
    return cluster.call(request, port, method, path, body, timeout=timeout, host=host)


def ready_cluster(cluster: Cluster, namespace: str, name: str, **spec_changes: Any) -> Cluster:
    """A namespace of its own with the example UnisonCluster in it, Ready."""
    cluster.kubectl("create", "namespace", namespace)
    apply(cluster, example(name, **spec_changes), namespace)
    wait_ready(cluster, name, namespace)
    return cluster


def service_ip(cluster: Cluster, service: str, namespace: str = "default") -> str:
    return cluster.get_json("-n", namespace, "service", service)["spec"]["clusterIP"]


@contextmanager
def port_forwards(cluster: Cluster, namespace: str, *specs: tuple[str, list[str]]
                  ) -> Iterator[None]:
    """`kubectl port-forward svc/NAME L:R ...` for each (service, ports), as the README does;
    ports listen on 127.0.0.1 inside the cluster's network namespace."""
    procs = []
    try:
        for service, ports in specs:
            procs.append(cluster.popen(
                cluster.bin("kubectl"), "--kubeconfig", str(cluster.kubeconfig),
                "-n", namespace, "port-forward", f"svc/{service}", *ports,
                log_name=f"port-forward-{service}"))
        for (service, ports), proc in zip(specs, procs, strict=True):
            local = int(ports[0].split(":")[0])
            wait_until(f"port-forward svc/{service} {ports[0]}", lambda p=local, pr=proc: (
                pr.poll() is None and http_call(cluster, "127.0.0.1", p, "GET", "/healthz")[0] == 200),
                60, lambda s=service: cluster.log_tail(f"port-forward-{s}"))
        yield
    finally:
        for proc in procs:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


# ---------------------------------------------------------------- the audit log


def audit_events(cluster: Cluster, username: str) -> list[dict[str, Any]]:
    """Every request `username` made, from the API server's audit log."""
    out = []
    with open(cluster.logs / "audit.log") as f:
        for line in f:
            ev = json.loads(line)
            if ev.get("user", {}).get("username") == username:
                out.append(ev)
    return out

"""A real Kubernetes cluster for the end-to-end tests, inside a network namespace.

etcd, kube-apiserver (RBAC), kube-controller-manager (per-controller service accounts),
kube-scheduler, containerd + runc, a kubelet and kube-proxy, all built from Go modules
(scripts/kube/build.sh) or taken from Debian, run as processes of this machine. Every one
of them runs in a network namespace made for the cluster, with only loopback and the
node's own address: nothing listens on the host and no port can clash with anything.

What the host lacks is made here: certificates (openssl), the pod sandbox image (a static
`pause` built with the cluster), cluster DNS and volumes (tests/kube/addons.py answers
Service and StatefulSet pod names from the API, as CoreDNS would, and gives each claim of
the default StorageClass a host directory, as local-path-provisioner would). The parts'
config files come from node_files.py, the certificates from pki.py.

Test code reaches the cluster through `Cluster.run` (a command inside the namespace,
kubectl among them) and `Cluster.call` (a Python function on a thread that joined the
namespace, so its sockets see the cluster's 127.0.0.1 and pod addresses).

    python -m tests.kube.cluster up     # a cluster to look at by hand; Ctrl-C stops it
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import json
import os
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tests.kube import node_files
from tests.kube.pki import Pki
from tests.kube.shell import ClusterError, log, sh
from tests.kube.topology import (
    API_URL,
    CLUSTER_CIDR,
    DNS_IP,
    NETNS_PREFIX,
    NODE_IP,
    NODE_NAME,
    SERVICE_CIDR,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO_ROOT / "scripts" / "kube" / "build.sh"
ADDONS_SCRIPT = Path(__file__).resolve().parent / "addons.py"
CLONE_NEWNET = 0x40000000

T = TypeVar("T")


def build_binaries() -> Path:
    """The cached binaries' directory; builds them first if needed (minutes, cold)."""
    r = subprocess.run(["bash", str(BUILD_SCRIPT)], stdout=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise ClusterError(f"{BUILD_SCRIPT.name} failed (exit {r.returncode}); its output is above")
    return Path(r.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- the namespace


def _setns_current_thread(netns: str) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns({netns}): {os.strerror(err)}")
    finally:
        os.close(fd)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _netns_names() -> list[str]:
    return [line.split()[0] for line in sh("ip", "netns", "list", check=False).stdout.splitlines()
            if line.split()]


def sweep_stale() -> None:
    """Remove the namespaces (and their processes) of earlier runs whose owner died."""
    for name in _netns_names():
        if not name.startswith(NETNS_PREFIX):
            continue
        try:
            owner = int(name[len(NETNS_PREFIX):])
        except ValueError:
            continue
        if _pid_alive(owner):
            continue
        log(f"removing namespace {name} left by a run that died (pid {owner})")
        for pid in sh("ip", "netns", "pids", name, check=False).stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        sh("ip", "netns", "del", name, check=False)


# ---------------------------------------------------------------- the cluster


@dataclass
class Cluster:
    """One control plane and one node. `start()` returns once the node is Ready."""

    workdir: Path
    bins: Path
    netns: str = field(default_factory=lambda: f"{NETNS_PREFIX}{os.getpid()}")
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    # Pod network namespaces (containerd makes /run/netns/cni-*) that were there before.
    _foreign_netns: set[str] = field(default_factory=set)
    timings: dict[str, float] = field(default_factory=dict)
    _pool: concurrent.futures.ThreadPoolExecutor | None = None

    # -- paths

    @property
    def pki(self) -> Pki:
        return Pki(self.workdir / "pki")

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "admin.kubeconfig"

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    @property
    def containerd_sock(self) -> Path:
        return self.workdir / "containerd" / "containerd.sock"

    def bin(self, name: str) -> str:
        return str(self.bins / name)

    # -- running things inside the namespace

    def ns_cmd(self, *cmd: str) -> list[str]:
        # Only the network namespace: every part must see the same mounts (kubelet mounts
        # the volumes that containerd's containers use).
        return ["nsenter", f"--net=/run/netns/{self.netns}", *cmd]

    def run(self, *cmd: str, input: str | None = None, timeout: float = 120,
            check: bool = True, env: dict[str, str] | None = None,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        """A command inside the cluster's network namespace, output captured."""
        r = subprocess.run(self.ns_cmd(*cmd), input=input, capture_output=True, text=True,
                           timeout=timeout, env={**os.environ, **(env or {})}, cwd=cwd)
        if check and r.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} (exit {r.returncode}):\n"
                                 f"{r.stdout[-3000:]}{r.stderr[-3000:]}")
        return r

    def kubectl(self, *args: str, input: str | None = None, timeout: float = 120,
                check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(self.bin("kubectl"), "--kubeconfig", str(self.kubeconfig), *args,
                        input=input, timeout=timeout, check=check)

    def get_json(self, *args: str) -> Any:
        return json.loads(self.kubectl("get", *args, "-o", "json").stdout)

    def popen(self, *cmd: str, log_name: str | None = None, pipe: bool = False,
              env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        """A long-running command inside the namespace, its output in logs/<name>.log
        (or readable from .stdout with pipe=True)."""
        out: Any = subprocess.PIPE if pipe else subprocess.DEVNULL
        if log_name:
            out = open(self.logs / f"{log_name}.log", "ab")  # noqa: SIM115 - the child owns it
        return subprocess.Popen(self.ns_cmd(*cmd), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})},
                                start_new_session=True)

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """fn(*args) on a thread inside the namespace (sockets it opens see the cluster)."""
        if self._pool is None:
            self._pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="netns",
                initializer=_setns_current_thread, initargs=(self.netns,))
        return self._pool.submit(fn, *args, **kwargs).result()

    def _start(self, name: str, *cmd: str) -> None:
        self.procs[name] = self.popen(*cmd, log_name=name)

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.logs / f"{name}.log"
        if not path.exists():
            return f"(no {path})"
        text = path.read_text(errors="replace").splitlines()[-lines:]
        return f"--- {path} (last {len(text)} lines)\n" + "\n".join(text)

    def _wait(self, what: str, probe: Callable[[], bool], timeout: float,
              parts: Sequence[str] = ()) -> None:
        start = time.monotonic()
        while time.monotonic() - start < timeout:
            for name in parts:
                p = self.procs.get(name)
                if p is not None and p.poll() is not None:
                    raise ClusterError(f"{name} exited with {p.returncode} while waiting for "
                                       f"{what}\n{self.log_tail(name)}")
            try:
                if probe():
                    self.timings[what] = time.monotonic() - start
                    return
            except Exception:  # noqa: BLE001 - not up yet is any error
                pass
            time.sleep(0.2)
        tails = "\n".join(self.log_tail(p) for p in parts)
        raise ClusterError(f"{what}: not within {timeout:.0f}s\n{tails}")

    def _url_ok(self, url: str, context: ssl.SSLContext | None = None) -> bool:
        """GET `url` from inside the namespace answers 200."""
        def get() -> bool:
            with urllib.request.urlopen(url, context=context, timeout=3) as r:
                return r.status == 200
        return self.call(get)

    # -- life cycle

    def start(self) -> None:
        t0 = time.monotonic()
        for d in ("logs", "etcd", "containerd", "kubelet", "cni/net.d", "pods-logs", "volumes"):
            (self.workdir / d).mkdir(parents=True, exist_ok=True)
        self._network()
        self.pki.make()
        self.timings["certificates"] = time.monotonic() - t0
        self.pki.kubeconfig(self.kubeconfig, API_URL)
        self._control_plane()
        self._node()
        everything = ["kube-apiserver", "kube-controller-manager", "kube-scheduler", "addons",
                      "containerd", "kubelet", "kube-proxy"]
        self._wait("node Ready", self._node_ready, 120, everything)
        self._wait("default ServiceAccount", lambda: self.kubectl(
            "get", "serviceaccount", "default", check=False).returncode == 0, 60, everything)
        self.timings["cluster ready"] = time.monotonic() - t0
        log(f"cluster ready in {self.timings['cluster ready']:.1f}s "
            f"(namespace {self.netns}, files and logs in {self.workdir})")

    def _control_plane(self) -> None:
        """etcd, then the API server; the controller-manager and scheduler after it."""
        pki = self.pki
        self._start("etcd", self.bin("etcd"), "--name", "default",
                    "--data-dir", str(self.workdir / "etcd"),
                    "--listen-client-urls", "http://127.0.0.1:2379",
                    "--advertise-client-urls", "http://127.0.0.1:2379",
                    "--listen-peer-urls", "http://127.0.0.1:2380",
                    "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
                    "--initial-cluster", "default=http://127.0.0.1:2380",
                    "--listen-metrics-urls", "http://127.0.0.1:2381",
                    # the test cluster's data may be lost with the machine: speed over safety
                    "--unsafe-no-fsync")
        self._wait("etcd healthy", lambda: self._url_ok("http://127.0.0.1:2379/health"), 60,
                   ["etcd"])

        self._start("kube-apiserver", self.bin("kube-apiserver"),
                    "--etcd-servers", "http://127.0.0.1:2379",
                    "--bind-address", "0.0.0.0", "--secure-port", "6443",
                    "--advertise-address", NODE_IP,
                    "--service-cluster-ip-range", SERVICE_CIDR,
                    "--tls-cert-file", str(pki.crt("apiserver")),
                    "--tls-private-key-file", str(pki.key("apiserver")),
                    "--client-ca-file", str(pki.ca),
                    "--kubelet-client-certificate", str(pki.crt("admin")),
                    "--kubelet-client-key", str(pki.key("admin")),
                    # the node's name resolves nowhere: reach the kubelet by its address
                    "--kubelet-preferred-address-types", "InternalIP",
                    "--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
                    "--service-account-key-file", str(pki.dir / "sa.pub"),
                    "--service-account-signing-key-file", str(pki.dir / "sa.key"),
                    "--authorization-mode", "Node,RBAC",
                    "--enable-admission-plugins", "NodeRestriction",
                    "--allow-privileged=true",
                    "--audit-log-path", str(self.logs / "audit.log"),
                    "--audit-policy-file", str(node_files.audit_policy(self.workdir)),
                    "--endpoint-reconciler-type", "lease")
        # The admin certificate, loaded once rather than on every poll.
        admin = ssl.create_default_context(cafile=str(pki.ca))
        admin.load_cert_chain(str(pki.crt("admin")), str(pki.key("admin")))
        self._wait("kube-apiserver ready", lambda: self._url_ok(f"{API_URL}/readyz", admin), 90,
                   ["kube-apiserver"])

        self._start("kube-controller-manager", self.bin("kube-controller-manager"),
                    "--kubeconfig", str(self.kubeconfig),
                    "--authentication-kubeconfig", str(self.kubeconfig),
                    "--authorization-kubeconfig", str(self.kubeconfig),
                    "--use-service-account-credentials",
                    "--service-account-private-key-file", str(pki.dir / "sa.key"),
                    "--root-ca-file", str(pki.ca),
                    "--cluster-cidr", CLUSTER_CIDR, "--allocate-node-cidrs=false",
                    "--service-cluster-ip-range", SERVICE_CIDR,
                    "--bind-address", "127.0.0.1", "--leader-elect=false")
        self._start("kube-scheduler", self.bin("kube-scheduler"),
                    "--kubeconfig", str(self.kubeconfig),
                    "--authentication-kubeconfig", str(self.kubeconfig),
                    "--authorization-kubeconfig", str(self.kubeconfig),
                    "--bind-address", "127.0.0.1", "--leader-elect=false")

    def _node(self) -> None:
        """The add-ons, containerd with the pause image, the kubelet and kube-proxy."""
        pki = self.pki
        self._start("addons", sys.executable, str(ADDONS_SCRIPT), "--listen", DNS_IP,
                    "--kubeconfig", str(self.kubeconfig),
                    "--volumes", str(self.workdir / "volumes"))
        self.kubectl("apply", "-f", "-", input=json.dumps(node_files.STORAGE_CLASS))
        self._start("containerd", "containerd", "--config", str(node_files.containerd_config(
            self.workdir, self.containerd_sock)))
        self._wait("containerd up", self.containerd_sock.exists, 30, ["containerd"])
        self.ctr("images", "import", "-",
                 input=node_files.pause_image((self.bins / "pause").read_bytes()))
        self._start("kubelet", self.bin("kubelet"),
                    "--config", str(node_files.kubelet_config(
                        self.workdir, self.containerd_sock, pki.ca)),
                    "--kubeconfig", str(self.kubeconfig),
                    "--root-dir", str(self.workdir / "kubelet"),
                    "--node-ip", NODE_IP, "--hostname-override", NODE_NAME, "--v=1")
        self._start("kube-proxy", self.bin("kube-proxy"), "--config",
                    str(node_files.proxy_config(self.workdir, self.kubeconfig)))

    def _network(self) -> None:
        sweep_stale()
        self._foreign_netns = set(_netns_names())
        ns = self.netns
        sh("ip", "netns", "add", ns)
        for cmd in (["link", "set", "lo", "up"],
                    # A veth pair (these kernels have no dummy links) carries the address.
                    ["link", "add", "node0", "type", "veth", "peer", "name", "node0-end"],
                    ["addr", "add", f"{NODE_IP}/32", "dev", "node0"],
                    ["link", "set", "node0", "up"],
                    ["link", "set", "node0-end", "up"],
                    # Without a route, a connect() to a ClusterIP fails before kube-proxy's
                    # DNAT rewrites it; the rewritten address then routes to the pod bridge.
                    ["route", "add", SERVICE_CIDR, "dev", "node0"]):
            sh("ip", "-n", ns, *cmd)
        for key, value in (("net.ipv4.ip_forward", "1"),
                           ("net.bridge.bridge-nf-call-iptables", "1")):
            sh("ip", "netns", "exec", ns, "sysctl", "-q", "-w", f"{key}={value}")

    def _node_ready(self) -> bool:
        node = self.get_json("node", NODE_NAME)
        return any(c["type"] == "Ready" and c["status"] == "True"
                   for c in node["status"].get("conditions", []))

    def ctr(self, *args: str, input: bytes | None = None,
            timeout: float = 300) -> subprocess.CompletedProcess[Any]:
        return sh("ctr", "--address", str(self.containerd_sock), "-n", "k8s.io", *args,
                   input=input, timeout=timeout)

    def load_image(self, image: str) -> None:
        """A Docker image into the node's containerd, as `kind load docker-image` does."""
        t0 = time.monotonic()
        cli = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"
        saved = subprocess.run([cli, "save", image], capture_output=True, timeout=300)
        if saved.returncode != 0:
            raise ClusterError(f"docker save {image}: {saved.stderr.decode().strip()}")
        self.ctr("images", "import", "-", input=saved.stdout)
        self.timings[f"load image {image}"] = time.monotonic() - t0

    def diagnose(self, namespaces: Sequence[str] = ("default",)) -> str:
        out = []
        for args in (("get", "nodes,pods,svc,statefulsets,deployments", "-A", "-o", "wide"),
                     ("get", "unisonclusters", "-A", "-o", "yaml")):
            r = self.kubectl(*args, check=False)
            out.append(f"$ kubectl {' '.join(args)}\n{r.stdout[-4000:]}{r.stderr[-1000:]}")
        for ns in namespaces:
            r = self.kubectl("-n", ns, "get", "events", "--sort-by", ".lastTimestamp",
                             check=False)
            out.append(f"$ kubectl -n {ns} get events\n{r.stdout[-3000:]}")
        out.append(self.log_tail("kubelet", 15))
        return "\n".join(out)

    def stop(self) -> None:
        """Everything down: pods' processes, the parts, mounts, cgroups and the namespace."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
        for name in ("kubelet", "kube-proxy", "kube-scheduler", "kube-controller-manager",
                     "addons"):
            self._kill(name)
        # Every process left in the namespace: pods, their shims, containerd.
        for pid in sh("ip", "netns", "pids", self.netns, check=False).stdout.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        self._kill_shims()
        for name in list(self.procs):
            self._kill(name)
        self._unmount_all()
        sh("ip", "netns", "del", self.netns, check=False)
        # containerd is gone before it could remove its pods' namespaces.
        for name in set(_netns_names()) - self._foreign_netns:
            if name.startswith("cni-"):
                sh("ip", "netns", "del", name, check=False)

    def _kill(self, name: str) -> None:
        p = self.procs.pop(name, None)
        if p is None or p.poll() is not None:
            return
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        p.wait(10)

    def _kill_shims(self) -> None:
        """containerd's shims (and the containers under them) outside the namespace."""
        marker = str(self.containerd_sock).encode()
        for d in Path("/proc").iterdir():
            if not d.name.isdigit():
                continue
            try:
                if marker in (d / "cmdline").read_bytes():
                    os.kill(int(d.name), signal.SIGKILL)
            except (OSError, ValueError):
                pass

    def _unmount_all(self) -> None:
        root = str(self.workdir)
        mounts = []
        with open("/proc/self/mountinfo") as f:
            for line in f:
                point = line.split()[4].replace("\\040", " ")
                if point.startswith(root):
                    mounts.append(point)
        for point in sorted(mounts, key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True)


def new_cluster(keep: bool = False) -> Cluster:
    """Build or restore the binaries, make a work directory and start a cluster
    (`keep`: leave the work directory with its logs behind if the start fails)."""
    for tool in ("ip", "nsenter", "openssl", "containerd", "runc", "iptables", "ctr"):
        if shutil.which(tool) is None:
            raise ClusterError(f"{tool} is not installed (run: bash scripts/kube/prepare.sh)")
    if os.geteuid() != 0:
        raise ClusterError("the test cluster needs root (network namespaces, containerd)")
    t0 = time.monotonic()
    bins = build_binaries()
    workdir = Path(tempfile.mkdtemp(prefix="unison-kube-", dir="/var/tmp"))
    cluster = Cluster(workdir=workdir, bins=bins)
    cluster.timings["binaries"] = time.monotonic() - t0
    try:
        cluster.start()
    except BaseException:
        cluster.stop()
        if not keep:  # the error already carries the failing part's log
            shutil.rmtree(workdir, ignore_errors=True)
        raise
    return cluster


def main(argv: Sequence[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m tests.kube.cluster",
                                description="Start the end-to-end suite's real Kubernetes "
                                            "cluster and keep it until Ctrl-C.")
    p.add_argument("command", choices=["up"], help="up: start a cluster and wait")
    p.add_argument("--image", action="append", default=[],
                   help="a Docker image to load into the node (repeatable)")
    args = p.parse_args(argv)
    try:
        cluster = new_cluster()
    except ClusterError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    try:
        for image in args.image:
            cluster.load_image(image)
        print(f"cluster up. In another shell:\n  nsenter --net=/run/netns/{cluster.netns} "
              f"{cluster.bin('kubectl')} --kubeconfig {cluster.kubeconfig} get pods -A\n"
              f"Ctrl-C stops it.", flush=True)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        cluster.stop()
        shutil.rmtree(cluster.workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

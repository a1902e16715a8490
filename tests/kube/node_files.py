"""The files the test cluster's parts read: each function writes one into the work
directory and returns its path; nothing here starts a process. The choices that these
VMs force are explained where they are made."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import textwrap
from pathlib import Path

from tests.kube.topology import (
    CLUSTER_CIDR,
    DNS_IP,
    NODE_NAME,
    PAUSE_IMAGE,
    POD_CIDR,
    POD_GATEWAY,
)

# The default StorageClass; tests/kube/addons.py provisions and expands its volumes.
STORAGE_CLASS = {
    "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
    "metadata": {"name": "standard",
                 "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
    "provisioner": "unison.test/hostpath", "reclaimPolicy": "Delete",
    "volumeBindingMode": "Immediate", "allowVolumeExpansion": True,
}


def audit_policy(workdir: Path) -> Path:
    """Metadata of every request a ServiceAccount (or nobody) makes: the tests judge what
    was forbidden (403) or anonymous from the API server's side, not from a log line."""
    path = workdir / "audit-policy.yaml"
    path.write_text(textwrap.dedent("""\
        apiVersion: audit.k8s.io/v1
        kind: Policy
        omitStages: [RequestReceived]
        rules:
          - level: Metadata
            userGroups: ["system:serviceaccounts", "system:unauthenticated"]
          - level: None
        """))
    return path


def containerd_config(workdir: Path, socket: Path) -> Path:
    """containerd's config and the pod network (bridge cni0 + host-local addresses)."""
    c = workdir / "containerd"
    net = workdir / "cni" / "net.d"
    net.mkdir(parents=True, exist_ok=True)
    (net / "10-unison.conflist").write_text(json.dumps({
        "cniVersion": "0.4.0", "name": "unison-pods",
        "plugins": [
            {"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": False,
             "hairpinMode": True,
             "ipam": {"type": "host-local",
                      "ranges": [[{"subnet": POD_CIDR, "gateway": POD_GATEWAY}]],
                      "routes": [{"dst": "0.0.0.0/0"}],
                      "dataDir": str(workdir / "cni" / "ipam")}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ]}, indent=1))
    path = c / "config.toml"
    path.write_text(textwrap.dedent(f"""\
        version = 2
        root = "{c}/root"
        state = "{c}/state"
        [grpc]
          address = "{socket}"
        [ttrpc]
          address = "{socket}.ttrpc"
        [debug]
          level = "warn"
        [plugins."io.containerd.grpc.v1.cri"]
          sandbox_image = "{PAUSE_IMAGE}"
          # This machine withholds CAP_SYS_RESOURCE: without this every sandbox fails
          # with "can't get final child's PID from pipe".
          restrict_oom_score_adj = true
          enable_unprivileged_ports = true
          [plugins."io.containerd.grpc.v1.cri".containerd]
            snapshotter = "overlayfs"
            default_runtime_name = "runc"
            [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
              runtime_type = "io.containerd.runc.v2"
              [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
                SystemdCgroup = false
          [plugins."io.containerd.grpc.v1.cri".cni]
            bin_dir = "/usr/lib/cni"
            conf_dir = "{net}"
        """))
    return path


def kubelet_config(workdir: Path, socket: Path, client_ca: Path) -> Path:
    resolv = workdir / "resolv.conf"
    resolv.write_text("")  # pods resolve through clusterDNS only
    path = workdir / "kubelet.yaml"
    path.write_text(json.dumps({
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        # These VMs run cgroup v1 (kubelet refuses it unless told) without systemd.
        "failCgroupV1": False, "cgroupDriver": "cgroupfs",
        "containerRuntimeEndpoint": f"unix://{socket}",
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False},
                           "x509": {"clientCAFile": str(client_ca)}},
        "authorization": {"mode": "AlwaysAllow"},
        "clusterDNS": [DNS_IP], "clusterDomain": "cluster.local",
        "resolvConf": str(resolv), "failSwapOn": False, "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1", "healthzPort": 10248,
        "podLogsDir": str(workdir / "pods-logs"),
        # The machine's disk is shared; never evict the test's pods for it.
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "1%",
                         "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
        "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
        "serializeImagePulls": False, "registerNode": True,
    }, indent=1))
    return path


def proxy_config(workdir: Path, kubeconfig: Path) -> Path:
    path = workdir / "kube-proxy.yaml"
    path.write_text(json.dumps({
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "mode": "iptables", "clusterCIDR": CLUSTER_CIDR, "hostnameOverride": NODE_NAME,
        # conntrack sysctls are read-only in a network namespace: leave them alone.
        "conntrack": {"maxPerCore": 0},
        "metricsBindAddress": "127.0.0.1:10249", "healthzBindAddress": "127.0.0.1:10256",
    }, indent=1))
    return path


def _tar(files: list[tuple[str, bytes, int]]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as t:
        for name, data, mode in files:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            t.addfile(info, io.BytesIO(data))
    return out.getvalue()


def pause_image(binary: bytes) -> bytes:
    """The pod sandbox image in docker-save format: one layer holding our static pause."""
    layer = _tar([("pause", binary, 0o755)])
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Entrypoint": ["/pause"]},
                         "rootfs": {"type": "layers", "diff_ids": [
                             "sha256:" + hashlib.sha256(layer).hexdigest()]}}).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [PAUSE_IMAGE],
                            "Layers": ["layer.tar"]}]).encode()
    return _tar([("layer.tar", layer, 0o644), (config_name, config, 0o644),
                 ("manifest.json", manifest, 0o644)])

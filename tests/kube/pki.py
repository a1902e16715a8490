"""The test cluster's certificates, made with openssl: a CA, the API server's serving
certificate, one client identity for the cluster's own parts, and the service-account
signing key pair."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tests.kube.shell import sh
from tests.kube.topology import API_SERVICE_IP, NODE_IP


@dataclass
class Pki:
    """A CA and the certificates the control plane needs, made with openssl."""

    dir: Path

    @property
    def ca(self) -> Path:
        return self.dir / "ca.crt"

    def crt(self, name: str) -> Path:
        return self.dir / f"{name}.crt"

    def key(self, name: str) -> Path:
        return self.dir / f"{name}.key"

    def make(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        d = str(self.dir)
        sh("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "3",
            "-keyout", f"{d}/ca.key", "-out", f"{d}/ca.crt", "-subj", "/CN=unison-test-ca")
        sans = ",".join([f"IP:{API_SERVICE_IP}", f"IP:{NODE_IP}", "IP:127.0.0.1",
                         "DNS:kubernetes", "DNS:kubernetes.default", "DNS:kubernetes.default.svc",
                         "DNS:kubernetes.default.svc.cluster.local", "DNS:localhost"])
        self._issue("apiserver", "/CN=kube-apiserver", f"subjectAltName={sans}")
        # One identity for the cluster's own parts (controller-manager, scheduler, kubelet,
        # kube-proxy, the DNS responder, the test): system:masters. The operator, the part
        # under test, runs with the chart's ServiceAccount and RBAC like in production.
        self._issue("admin", "/O=system:masters/CN=unison-test-admin", None)
        # The service-account token signing key pair.
        sh("openssl", "genrsa", "-out", f"{d}/sa.key", "2048")
        sh("openssl", "rsa", "-in", f"{d}/sa.key", "-pubout", "-out", f"{d}/sa.pub")

    def _issue(self, name: str, subject: str, ext: str | None) -> None:
        d = str(self.dir)
        sh("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{d}/{name}.key",
            "-out", f"{d}/{name}.csr", "-subj", subject)
        args = ["openssl", "x509", "-req", "-in", f"{d}/{name}.csr", "-CA", f"{d}/ca.crt",
                "-CAkey", f"{d}/ca.key", "-CAcreateserial", "-days", "3",
                "-out", f"{d}/{name}.crt"]
        if ext:
            extfile = self.dir / f"{name}.ext"
            extfile.write_text(ext + "\n")
            args += ["-extfile", str(extfile)]
        sh(*args)

    def kubeconfig(self, path: Path, server: str, cert: str = "admin") -> Path:
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "unison-test",
            "clusters": [{"name": "unison-test", "cluster": {
                "server": server, "certificate-authority": str(self.ca)}}],
            "users": [{"name": cert, "user": {
                "client-certificate": str(self.crt(cert)), "client-key": str(self.key(cert))}}],
            "contexts": [{"name": "unison-test", "context": {
                "cluster": "unison-test", "user": cert, "namespace": "default"}}],
        }, indent=1))
        return path

"""The test cluster's add-ons, in place of the images no registry here can give us.

Cluster DNS, in place of CoreDNS. Answers A queries the way CoreDNS's kubernetes plugin does for the names our pods use:
  <service>.<namespace>.svc.cluster.local         -> the ClusterIP, or for a headless
                                                     Service the ready endpoint addresses
  <hostname>.<service>.<namespace>.svc.cluster.local -> that endpoint (StatefulSet pods)
Everything else is NXDOMAIN at once (the namespace has no upstream resolver). Answers are
looked up in the API on each query, with a one-second cache, so they follow the cluster.

A volume provisioner, in place of local-path-provisioner: the default StorageClass
`standard` (made by the harness) gets a host directory per claim, removed with the claim
(reclaim policy Delete), and expanded when the claim asks for more (a directory has no
size, so expanding is recording the new capacity, as an external resizer would).

    python tests/kube/addons.py --listen 10.201.0.1 --kubeconfig admin.kubeconfig \
        --volumes /var/tmp/unison-kube-X/volumes
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import ssl
import threading
import time
import urllib.error
import urllib.request
from typing import Any

from dnslib import QTYPE, RCODE, RR, A
from dnslib.server import BaseResolver, DNSServer

DOMAIN = "svc.cluster.local"
TTL = 1
STORAGE_CLASS = "standard"
PROVISIONER = "unison.test/hostpath"

log = logging.getLogger("kube-dns")


class Api:
    """GETs against the API server with the kubeconfig's client certificate."""

    def __init__(self, kubeconfig: str) -> None:
        cfg = json.load(open(kubeconfig))
        cluster = cfg["clusters"][0]["cluster"]
        user = cfg["users"][0]["user"]
        self.server = cluster["server"]
        self.ctx = ssl.create_default_context(cafile=cluster["certificate-authority"])
        self.ctx.load_cert_chain(user["client-certificate"], user["client-key"])
        self._cache: dict[str, tuple[float, Any]] = {}
        self._lock = threading.Lock()

    def call(self, method: str, path: str, body: Any = None,
             content_type: str = "application/json") -> Any:
        """An uncached request; 404 and 409 (already there / gone) answer None."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.server + path, data=data, method=method,
                                     headers={"Content-Type": content_type})
        try:
            with urllib.request.urlopen(req, context=self.ctx, timeout=5) as r:
                return json.load(r)
        except urllib.error.HTTPError as e:
            if e.code in (404, 409):
                return None
            raise

    def get(self, path: str) -> Any:
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(path)
            if hit and now - hit[0] < 1.0:
                return hit[1]
        try:
            with urllib.request.urlopen(self.server + path, context=self.ctx, timeout=3) as r:
                doc = json.load(r)
        except urllib.error.HTTPError as e:
            if e.code != 404:
                raise
            doc = None
        with self._lock:
            self._cache[path] = (now, doc)
        return doc


def endpoints(api: Api, namespace: str, service: str) -> list[tuple[str | None, str]]:
    """(hostname, address) of the Service's ready endpoints."""
    slices = api.get(f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices"
                     f"?labelSelector=kubernetes.io%2Fservice-name%3D{service}") or {}
    out = []
    for s in slices.get("items", []):
        for ep in s.get("endpoints") or []:
            if (ep.get("conditions") or {}).get("ready") is False:
                continue
            out.extend((ep.get("hostname"), a) for a in ep.get("addresses", []))
    return out


def lookup(api: Api, name: str) -> list[str] | None:
    """Addresses for `name` (no trailing dot); None when the name does not exist."""
    if not name.endswith("." + DOMAIN):
        return None
    labels = name[: -len(DOMAIN) - 1].split(".")
    if len(labels) == 2:
        service, namespace = labels
        svc = api.get(f"/api/v1/namespaces/{namespace}/services/{service}")
        if svc is None:
            return None
        ip = svc["spec"].get("clusterIP")
        if ip and ip != "None":
            return [ip]
        return [a for _, a in endpoints(api, namespace, service)]
    if len(labels) == 3:
        host, service, namespace = labels
        found = [a for h, a in endpoints(api, namespace, service) if h == host]
        return found or None
    return None


class Resolver(BaseResolver):
    def __init__(self, api: Api) -> None:
        self.api = api

    def resolve(self, request: Any, handler: Any) -> Any:
        reply = request.reply()
        q = request.q
        name = str(q.qname).rstrip(".").lower()
        try:
            addresses = lookup(self.api, name)
        except Exception as e:  # noqa: BLE001 - a failed lookup is SERVFAIL, never a crash
            log.warning("lookup %s failed: %s", name, e)
            reply.header.rcode = RCODE.SERVFAIL
            return reply
        if addresses is None:
            reply.header.rcode = RCODE.NXDOMAIN
        elif q.qtype in (QTYPE.A, QTYPE.ANY):
            for a in addresses:
                reply.add_answer(RR(q.qname, QTYPE.A, rdata=A(a), ttl=TTL))
        return reply


def _size(quantity: str) -> int:
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6,
             "G": 10**9, "T": 10**12}
    for suffix, factor in units.items():
        if quantity.endswith(suffix):
            return int(float(quantity[: -len(suffix)]) * factor)
    return int(float(quantity))


class Provisioner:
    """Host-directory volumes for the claims of the `standard` StorageClass."""

    def __init__(self, api: Api, root: str) -> None:
        self.api, self.root = api, root

    def run(self) -> None:
        while True:
            try:
                self.step()
            except Exception as e:  # noqa: BLE001 - keep provisioning through API hiccups
                log.warning("provisioner: %s", e)
            time.sleep(0.5)

    def step(self) -> None:
        for pvc in self.api.call("GET", "/api/v1/persistentvolumeclaims")["items"]:
            if pvc["spec"].get("storageClassName") != STORAGE_CLASS:
                continue
            if pvc["status"].get("phase") == "Pending" and not pvc["spec"].get("volumeName"):
                self.provision(pvc)
            elif pvc["status"].get("phase") == "Bound":
                self.expand(pvc)
        for pv in self.api.call("GET", "/api/v1/persistentvolumes")["items"]:
            ours = pv["metadata"].get("annotations", {}).get(
                "pv.kubernetes.io/provisioned-by") == PROVISIONER
            if ours and pv["status"].get("phase") == "Released":
                shutil.rmtree(pv["spec"]["hostPath"]["path"], ignore_errors=True)
                self.api.call("DELETE", f"/api/v1/persistentvolumes/{pv['metadata']['name']}")
                log.info("deleted %s", pv["metadata"]["name"])

    def provision(self, pvc: dict[str, Any]) -> None:
        meta = pvc["metadata"]
        name = f"pvc-{meta['uid']}"
        path = os.path.join(self.root, name)
        os.makedirs(path, exist_ok=True)
        os.chmod(path, 0o777)  # hostPath volumes get no fsGroup: let any pod user write
        self.api.call("POST", "/api/v1/persistentvolumes", {
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": name,
                         "annotations": {"pv.kubernetes.io/provisioned-by": PROVISIONER}},
            "spec": {"capacity": {"storage": pvc["spec"]["resources"]["requests"]["storage"]},
                     "accessModes": pvc["spec"].get("accessModes") or ["ReadWriteOnce"],
                     "persistentVolumeReclaimPolicy": "Delete",
                     "storageClassName": STORAGE_CLASS,
                     "hostPath": {"path": path, "type": "DirectoryOrCreate"},
                     "claimRef": {"namespace": meta["namespace"], "name": meta["name"],
                                  "uid": meta["uid"]}}})
        log.info("provisioned %s for %s/%s", name, meta["namespace"], meta["name"])

    def expand(self, pvc: dict[str, Any]) -> None:
        want = pvc["spec"]["resources"]["requests"]["storage"]
        have = (pvc["status"].get("capacity") or {}).get("storage")
        if have is None or _size(want) <= _size(have):
            return
        meta, pv = pvc["metadata"], pvc["spec"]["volumeName"]
        self.api.call("PATCH", f"/api/v1/persistentvolumes/{pv}",
                      {"spec": {"capacity": {"storage": want}}},
                      "application/merge-patch+json")
        self.api.call("PATCH", f"/api/v1/namespaces/{meta['namespace']}/persistentvolumeclaims/"
                               f"{meta['name']}/status",
                      {"status": {"capacity": {"storage": want}, "conditions": None}},
                      "application/merge-patch+json")
        log.info("expanded %s/%s from %s to %s", meta["namespace"], meta["name"], have, want)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--listen", required=True, help="address to answer on (port 53)")
    p.add_argument("--kubeconfig", required=True)
    p.add_argument("--volumes", required=True, help="where claims' directories are made")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    api = Api(args.kubeconfig)
    threading.Thread(target=Provisioner(api, args.volumes).run, daemon=True).start()
    resolver = Resolver(api)
    servers = [DNSServer(resolver, address=args.listen, port=53, tcp=tcp,
                         logger=_Quiet()) for tcp in (False, True)]
    for s in servers:
        s.start_thread()
    log.info("answering *.%s on %s:53 (udp, tcp)", DOMAIN, args.listen)
    threading.Event().wait()


class _Quiet:
    """dnslib's per-query logging off; errors still reach our log."""

    def __getattr__(self, name: str) -> Any:
        if name == "log_error":
            return lambda handler, e: log.warning("dns error: %s", e)
        return lambda *a, **k: None


if __name__ == "__main__":
    main()

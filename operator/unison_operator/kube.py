"""A small asyncio Kubernetes REST client for the objects the operator owns.

kopf talks to the API for the UnisonCluster itself; the children are written here. The
credentials come from the `kubernetes` package's loaders (in-cluster service account or
kubeconfig), so token refresh and client certificates work as in kubectl.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
from unison import __version__

log = logging.getLogger(__name__)

FIELD_MANAGER = "unison-operator"
# Names our calls in the API server's audit log (and lets tests tell them apart).
USER_AGENT = f"unison-operator/{__version__}"

# kind -> (API path prefix, plural); only what the operator reads or writes.
RESOURCES: dict[str, tuple[str, str]] = {
    "ConfigMap": ("/api/v1", "configmaps"),
    "Service": ("/api/v1", "services"),
    "Secret": ("/api/v1", "secrets"),
    "PersistentVolumeClaim": ("/api/v1", "persistentvolumeclaims"),
    "StatefulSet": ("/apis/apps/v1", "statefulsets"),
    "Deployment": ("/apis/apps/v1", "deployments"),
    "PodDisruptionBudget": ("/apis/policy/v1", "poddisruptionbudgets"),
    "NetworkPolicy": ("/apis/networking.k8s.io/v1", "networkpolicies"),
    "UnisonCluster": ("/apis/unisondb.io/v1alpha1", "unisonclusters"),
}


class KubeError(Exception):
    def __init__(self, status: int, method: str, path: str, message: str) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {message}")
        self.status = status
        self.message = message


def bearer_header(value: str | None) -> str | None:
    """`Authorization` value for a token as the `kubernetes` package stores it: kubeconfig
    tokens come as "Bearer X", in-cluster ones as "bearer X", older versions bare."""
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return f"Bearer {token.strip()}"
    return f"Bearer {value.strip()}"


def collection_path(kind: str, namespace: str) -> str:
    prefix, plural = RESOURCES[kind]
    return f"{prefix}/namespaces/{quote(namespace)}/{plural}"


def object_path(kind: str, namespace: str, name: str) -> str:
    return f"{collection_path(kind, namespace)}/{quote(name)}"


@dataclass
class KubeClient:
    """Async JSON client: `server` URL, optional TLS context and bearer-token provider."""

    server: str
    ssl_context: ssl.SSLContext | None = None
    token: Callable[[], str | None] | None = None
    _session: aiohttp.ClientSession | None = None
    _closed: bool = False

    @classmethod
    def from_environment(cls, *, token_file: str | None = None, ca_file: str | None = None,
                         environ: Mapping[str, str] | None = None,
                         kubeconfig: str | None = None) -> KubeClient:
        """In-cluster service account when running in a pod, else the kubeconfig.

        The keyword arguments replace the service account's files, the environment and the
        kubeconfig path (tests point them at their own files and server).
        """
        from kubernetes import client, config
        from kubernetes.config import incluster_config

        cfg = client.Configuration()
        loader = incluster_config.InClusterConfigLoader(
            token_filename=token_file or incluster_config.SERVICE_TOKEN_FILENAME,
            cert_filename=ca_file or incluster_config.SERVICE_CERT_FILENAME,
            environ=os.environ if environ is None else environ)
        try:
            loader.load_and_set(cfg)
        except config.ConfigException:
            config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)
        return cls.from_configuration(cfg)

    @classmethod
    def from_configuration(cls, cfg: Any) -> KubeClient:
        """A client with the server, TLS and credentials of a `kubernetes` Configuration."""
        ctx: ssl.SSLContext | None = None
        if cfg.host.startswith("https"):
            ctx = ssl.create_default_context(cafile=cfg.ssl_ca_cert or None)
            if cfg.cert_file:
                ctx.load_cert_chain(cfg.cert_file, cfg.key_file)
            if not cfg.verify_ssl:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE

        def token() -> str | None:
            # auth_settings() knows where this version of the package keeps the token
            # ("BearerToken" since 29, "authorization" before) and runs the refresh hook,
            # so a rotated service-account token is read again.
            bearer = cfg.auth_settings().get("BearerToken")
            return bearer_header(bearer["value"]) if bearer else None

        return cls(server=cfg.host, ssl_context=ctx, token=token)

    @property
    def closed(self) -> bool:
        return self._closed

    async def close(self) -> None:
        self._closed = True
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _sess(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError("the Kubernetes client is closed (operator shutting down)")
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(ssl=self.ssl_context) if self.ssl_context else None
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=30))
        return self._session

    async def request(self, method: str, path: str, body: Any = None, *,
                      params: dict[str, str] | None = None,
                      content_type: str = "application/json") -> dict[str, Any] | None:
        """One API call; returns the decoded JSON, None for 404 on GET; raises KubeError."""
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        auth = self.token() if self.token else None
        if auth:
            headers["Authorization"] = auth
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body)
        url = self.server.rstrip("/") + path
        async with self._sess().request(method, url, data=data, headers=headers,
                                        params=params) as resp:
            text = await resp.text()
            if method == "GET" and resp.status == 404:
                return None
            if resp.status >= 400:
                try:
                    message = json.loads(text).get("message") or text
                except ValueError:
                    message = text
                raise KubeError(resp.status, method, path, str(message)[:500])
            return json.loads(text) if text else None

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return await self.request("GET", object_path(kind, namespace, name))

    async def create(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        meta = obj["metadata"]
        return await self.request("POST", collection_path(obj["kind"], meta["namespace"]), obj,
                                  params={"fieldManager": FIELD_MANAGER})

    async def apply(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        """Server-side apply with force: the object becomes what we render, for our fields."""
        meta = obj["metadata"]
        return await self.request(
            "PATCH", object_path(obj["kind"], meta["namespace"], meta["name"]), obj,
            params={"fieldManager": FIELD_MANAGER, "force": "true"},
            content_type="application/apply-patch+yaml",
        )

    async def apply_or_create(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        """Create through server-side apply, so one field manager owns every field from
        the start; plain create where the server cannot apply to a missing object."""
        try:
            return await self.apply(obj)
        except KubeError as e:
            if e.status != 404:
                raise
        return await self.create(obj)

    async def merge_patch(self, kind: str, namespace: str, name: str, patch: dict[str, Any],
                          subresource: str = "") -> dict[str, Any] | None:
        path = object_path(kind, namespace, name) + (f"/{subresource}" if subresource else "")
        return await self.request("PATCH", path, patch,
                                  content_type="application/merge-patch+json")

    async def delete(self, kind: str, namespace: str, name: str,
                     propagation: str = "Background") -> None:
        await self.request("DELETE", object_path(kind, namespace, name),
                           {"kind": "DeleteOptions", "apiVersion": "v1",
                            "propagationPolicy": propagation})

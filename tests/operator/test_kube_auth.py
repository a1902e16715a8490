"""The child-object client sends the credentials the `kubernetes` package loads.

A small aiohttp server on 127.0.0.1 stands in for the API server and records the
Authorization header of every request: once reached through a token kubeconfig, once as a
pod would (KUBERNETES_SERVICE_HOST/PORT, the service account's token and CA files, TLS).
"""

from __future__ import annotations

import datetime
import shutil
import ssl
import subprocess
import types
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from kubernetes.config import incluster_config
from unison_operator.kube import KubeClient, bearer_header


class FakeApiServer:
    def __init__(self) -> None:
        self.authorization: list[str | None] = []

    async def handle(self, request: web.Request) -> web.Response:
        self.authorization.append(request.headers.get("Authorization"))
        return web.json_response({"kind": "ConfigMap", "metadata": {"name": "x"}})


async def serve(ssl_context: ssl.SSLContext | None = None
                ) -> AsyncIterator[tuple[FakeApiServer, int]]:
    api = FakeApiServer()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", api.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ssl_context)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield api, port
    finally:
        await runner.cleanup()


@pytest.fixture
async def plain_server() -> AsyncIterator[tuple[FakeApiServer, int]]:
    async for pair in serve():
        yield pair


def test_bearer_header_normalizes_what_the_package_stores() -> None:
    assert bearer_header("bearer abc") == "Bearer abc"  # in-cluster loader
    assert bearer_header("Bearer abc") == "Bearer abc"  # kubeconfig loader
    assert bearer_header("abc") == "Bearer abc"
    assert bearer_header(None) is None and bearer_header("") is None


async def test_kubeconfig_token_is_sent_as_bearer(tmp_path: Path,
                                                  plain_server: tuple[FakeApiServer, int]) -> None:
    api, port = plain_server
    kubeconfig = tmp_path / "config"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "test",
        "clusters": [{"name": "c", "cluster": {"server": f"http://127.0.0.1:{port}"}}],
        "users": [{"name": "u", "user": {"token": "kubeconfig-token"}}],
        "contexts": [{"name": "test", "context": {"cluster": "c", "user": "u"}}]}))
    client = KubeClient.from_environment(environ={}, kubeconfig=str(kubeconfig))
    try:
        assert await client.get("ConfigMap", "demo", "x") is not None
    finally:
        await client.close()
    assert api.authorization == ["Bearer kubeconfig-token"]


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make the fake API server's certificate")
    cert, key = tmp_path / "ca.crt", tmp_path / "tls.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


class _Clock:
    """Stands in for the `datetime` module of the in-cluster loader, to jump its clock."""

    def __init__(self) -> None:
        self.offset = datetime.timedelta()
        clock = self

        class _Now(datetime.datetime):
            @classmethod
            def now(cls, tz: Any = None) -> Any:
                return datetime.datetime.now(tz) + clock.offset

        self.module = types.SimpleNamespace(datetime=_Now, timedelta=datetime.timedelta)


async def test_in_cluster_service_account_token_is_sent_and_rotation_is_picked_up(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cert, key = _self_signed(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    token = tmp_path / "token"
    token.write_text("sa-token-1")
    clock = _Clock()
    monkeypatch.setattr(incluster_config, "datetime", clock.module)
    async for api, port in serve(tls):
        client = KubeClient.from_environment(
            token_file=str(token), ca_file=str(cert),
            environ={"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": str(port)},
            kubeconfig=str(tmp_path / "no-such-kubeconfig"))
        try:
            assert client.server == f"https://127.0.0.1:{port}"
            await client.get("ConfigMap", "demo", "x")
            # The kubelet rotates projected tokens; the loader rereads the file every minute.
            token.write_text("sa-token-2")
            clock.offset = datetime.timedelta(minutes=2)
            await client.get("ConfigMap", "demo", "x")
        finally:
            await client.close()
        assert api.authorization == ["Bearer sa-token-1", "Bearer sa-token-2"]

"""Optional bearer tokens on the HTTP API, against a real node process."""

from __future__ import annotations

import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.nodes import HOST, NodeProcess, b64, kv_path, single_node_config

NS = "auth"
READ, WRITE = "r-3c2f7a", "w-91b0de"


def call(node: NodeProcess, method: str, path: str, token: str | None = None,
         body: Any = None) -> tuple[int, Any, dict[str, str]]:
    conn = http.client.HTTPConnection(HOST, node.http_port, timeout=10)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        conn.request(method, path, None if body is None else json.dumps(body), headers)
        resp = conn.getresponse()
        text = resp.read().decode()
        try:
            data = json.loads(text)
        except ValueError:
            data = text
        return resp.status, data, dict(resp.getheaders())
    finally:
        conn.close()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    tmp = tmp_path_factory.mktemp("auth")
    (tmp / "read").write_text(READ + "\n")
    (tmp / "write").write_text(f"  {WRITE}\n")
    cfg = single_node_config(tmp, [NS])
    cfg.http.read_token_file, cfg.http.write_token_file = str(tmp / "read"), str(tmp / "write")
    n = NodeProcess("auth", "replicator", cfg, tmp / "node").start()
    yield n
    n.stop()


def test_health_and_readiness_stay_open(node: NodeProcess) -> None:
    assert call(node, "GET", "/healthz")[0] == 200
    assert call(node, "GET", "/readyz")[0] == 200


def test_writes_need_the_write_token(node: NodeProcess) -> None:
    put = {"value": b64("v")}
    status, body, headers = call(node, "PUT", kv_path(NS, "k"), None, put)
    assert status == 401 and "missing bearer token" in body["error"], body
    assert "write_token_file" in body["error"] and headers["WWW-Authenticate"].startswith("Bearer")
    assert call(node, "PUT", kv_path(NS, "k"), READ, put)[0] == 401
    assert call(node, "PUT", kv_path(NS, "k"), WRITE + "x", put)[0] == 401
    assert call(node, "PUT", kv_path(NS, "k"), WRITE, put)[0] == 200
    batch = {"operation": "delete", "keys": ["k"]}
    assert call(node, "POST", f"/api/v1/{NS}/kv/batch", READ, batch)[0] == 401
    assert call(node, "DELETE", kv_path(NS, "k"), READ)[0] == 401


def test_reads_need_the_read_or_the_write_token(node: NodeProcess) -> None:
    assert call(node, "PUT", kv_path(NS, "r"), WRITE, {"value": b64("1")})[0] == 200
    for path in (kv_path(NS, "r"), f"/api/v1/{NS}/kv?prefix=r", f"/api/v1/{NS}/offset",
                 f"/api/v1/{NS}/stats", "/metrics", f"/api/v1/{NS}/watch?from_lsn=999999"):
        status, body, _ = call(node, "GET", path)
        assert status == 401 and "read_token_file" in body["error"], (path, body)
        assert call(node, "GET", path, "wrong")[0] == 401, path
    assert call(node, "GET", kv_path(NS, "r"), READ)[1]["value"] == b64("1")
    assert call(node, "GET", kv_path(NS, "r"), WRITE)[1]["value"] == b64("1")


def test_unreadable_token_file_fails_start_naming_the_key(tmp_path: Path) -> None:
    cfg = single_node_config(tmp_path, [NS])
    cfg.http.read_token_file = str(tmp_path / "missing")
    n = NodeProcess("bad", "replicator", cfg, tmp_path / "node")
    with pytest.raises(RuntimeError, match="exited"):
        n.start(timeout=20)
    assert "http_config.read_token_file: cannot read the token file" in n.logs()
    assert "Traceback" not in n.logs()

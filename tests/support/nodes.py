"""Start real node processes on 127.0.0.1 for integration tests.

Every node runs as `python -m unison.cli node -config FILE ROLE` in its own process, with
free ports and a temporary base_dir, so tests can kill -9 and restart it like a user would.
"""

from __future__ import annotations

import base64
import dataclasses
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unison.config import NodeConfig, render_toml
from unison.topology.plan import plan_cluster

HOST = "127.0.0.1"


_handed_out: set[int] = set()


def free_port() -> int:
    """A port free now that this process never handed out before: the kernel may offer
    the same port twice in a row, and a node given it for HTTP and gRPC cannot start."""
    while True:
        with socket.socket() as s:
            s.bind((HOST, 0))
            port = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


def api(port: int, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
        timeout: float = 10.0) -> tuple[int, Any]:
    """One HTTP request to 127.0.0.1:port; returns (status, parsed JSON or text)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        headers = {"Content-Type": "application/json"} if data is not None else {}
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        text = resp.read().decode("utf-8", "replace")
        try:
            return resp.status, json.loads(text)
        except ValueError:
            return resp.status, text
    finally:
        conn.close()


def kv_path(namespace: str, key: str) -> str:
    return f"/api/v1/{namespace}/kv/{urllib.parse.quote(key, safe='')}"


@dataclass
class NodeProcess:
    name: str
    role: str
    config: NodeConfig
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None
    env: dict[str, str] = field(default_factory=dict)  # added to the node's environment
    log_path: Path = field(init=False)
    config_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.workdir / f"{self.name}.log"
        self.config_path = self.workdir / f"{self.name}.toml"

    @property
    def http_port(self) -> int:
        return self.config.http_port

    @property
    def grpc_port(self) -> int:
        return self.config.grpc.port

    def api(self, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        return api(self.http_port, method, path, body, **kw)

    def put(self, namespace: str, key: str, value: str | bytes) -> tuple[int, Any]:
        return self.api("PUT", kv_path(namespace, key), {"value": b64(value)})

    def get(self, namespace: str, key: str) -> bytes | None:
        status, body = self.api("GET", kv_path(namespace, key))
        assert status == 200, (status, body)
        return unb64(body["value"]) if body["found"] else None

    def start(self, wait: bool = True, timeout: float = 30.0) -> NodeProcess:
        self.config_path.write_text(render_toml(self.config))
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "unison.cli", "node", "-config", str(self.config_path),
             self.role],
            stdout=log, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
        )
        log.close()
        if wait:
            self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                if self.api("GET", "/healthz", timeout=1.0)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"{self.name} not healthy after {timeout}s:\n{self.logs()}")

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.api("GET", "/readyz", timeout=1.0)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"{self.name} not ready after {timeout}s:\n{self.logs()}")

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 15.0) -> int | None:
        """SIGTERM and wait; returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        return self.proc.returncode

    def restart(self, wait: bool = True) -> NodeProcess:
        self.stop()
        return self.start(wait)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


def single_node_config(tmp: Path, namespaces: list[str], **overrides: Any) -> NodeConfig:
    """A replicator config on free ports with its data under tmp."""
    from unison.config import GrpcConfig, StorageConfig

    cfg = NodeConfig(
        http_port=free_port(),
        # Plaintext is opt-in (allow_insecure defaults to false): ask, as before.
        grpc=GrpcConfig(port=free_port(), listen_ip=HOST, allow_insecure=True),
        storage=StorageConfig(base_dir=str(tmp / "data"), namespaces=namespaces),
    )
    cfg.http.listen_ip = HOST
    return dataclasses.replace(cfg, **overrides)


def seed_cluster(tmp: Path, datacenters: list[tuple[str, list[str]]] | None = None,
                 follow: list[str] | None = None) -> dict[str, NodeProcess]:
    """The seed's topology (dc1, dc2, relayer) on free ports; not started."""
    dcs = datacenters or [("dc1", ["ad-campaign-dc1"]), ("dc2", ["ad-campaign-dc2"])]
    follow = follow or [name for name, _ in dcs]
    grpc_ports = {name: free_port() for name, _ in dcs}
    plans = plan_cluster(
        dcs, follow, notifier_base_port=0,
        base_dir=lambda n: str(tmp / n / "data"),
        upstream_address=lambda dc, _port: f"{HOST}:{grpc_ports[dc]}",
    )
    nodes: dict[str, NodeProcess] = {}
    for plan in plans:
        cfg = plan.config
        cfg.http_port = free_port()
        cfg.http.listen_ip = HOST
        cfg.grpc.listen_ip = HOST
        cfg.grpc.port = grpc_ports.get(plan.name) or free_port()
        for n in cfg.notifiers:
            n.bind_port = free_port()
        nodes[plan.name] = NodeProcess(plan.name, plan.role, cfg, tmp / plan.name)
    return nodes


@contextmanager
def running_cluster(tmp: Path, datacenters: list[tuple[str, list[str]]] | None = None,
                    follow: list[str] | None = None) -> Iterator[dict[str, NodeProcess]]:
    """seed_cluster() started, with the relayer ready; every node stopped on exit."""
    nodes = seed_cluster(tmp, datacenters, follow)
    try:
        for node in nodes.values():
            node.start()
        nodes["relayer"].wait_ready()
        yield nodes
    finally:
        for node in nodes.values():
            node.stop()

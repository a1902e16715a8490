"""Helpers shared by the container and kind tests: a Docker CLI wrapper, plain HTTP to
127.0.0.1 (what the seed's curl commands do) and waiting for the client's converged state.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import shutil
import socket
import subprocess
import time
import urllib.parse
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from unison.local.scenarios import Expect, Scenario, state_of

HOST = "127.0.0.1"
IMAGE = os.environ.get("UNISON_IMAGE", "unison:0.1.0")
REPO_ROOT = Path(__file__).resolve().parents[2]
PREPARE = "bash scripts/container/prepare.sh"


def docker_cli() -> str | None:
    """The Docker client to use: Debian's (matches the engine prepare.sh starts) first."""
    if Path("/usr/bin/docker").exists():
        return "/usr/bin/docker"
    return shutil.which("docker")


def docker_unavailable_reason() -> str | None:
    """None when a Docker engine answers, else a one-line reason to skip."""
    cli = docker_cli()
    if cli is None:
        return "no docker client installed (run: " + PREPARE + ")"
    try:
        r = subprocess.run([cli, "info", "--format", "{{.ServerVersion}}"],
                           capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        return "docker engine did not answer within 20s"
    if r.returncode != 0:
        return "no docker engine reachable (run: " + PREPARE + ")"
    return None


def docker(*args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    cli = docker_cli()
    assert cli, "docker client missing"
    r = subprocess.run([cli, *args], capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
    return r


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def free_ports(n: int) -> list[int]:
    """n distinct free ports (held open together so none is handed out twice)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((HOST, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def request(port: int, method: str, path: str, body: Any = None, *,
         timeout: float = 10.0, host: str = HOST) -> tuple[int, Any]:
    """One request to host:port (127.0.0.1 unless told); (status, parsed JSON or text).
    Status 0: no answer."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        conn.request(method, path, body=data, headers=headers)
        resp = conn.getresponse()
        text = resp.read().decode("utf-8", "replace")
    except OSError:
        return 0, None
    finally:
        conn.close()
    try:
        return resp.status, json.loads(text)
    except ValueError:
        return resp.status, text


def kv_path(namespace: str, key: str) -> str:
    return f"/api/v1/{namespace}/kv/{urllib.parse.quote(key, safe='')}"


def relayer_value(port: int, namespace: str, key: str) -> Any:
    """The JSON a key holds on the relayer (the seed's `curl ... | jq` + `base64 -d`)."""
    status, body = request(port, "GET", kv_path(namespace, key))
    assert status == 200 and isinstance(body, dict) and body.get("found") is True, (
        f"GET {namespace}/{key} from the relayer answered {status} {body}")
    return json.loads(base64.b64decode(body["value"]))


def wait_for(what: str, probe: Callable[[], bool], timeout: float,
             diagnose: Callable[[], str] = lambda: "") -> None:
    """Poll `probe` until true; on timeout fail with `what` and the diagnosis."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():
            return
        time.sleep(0.3)
    raise AssertionError(f"{what} not reached within {timeout:.0f}s\n{diagnose()}")


def run_scenarios(scenarios: Sequence[Scenario], dc_http: dict[str, int]) -> None:
    """Send every write of the seed's scenarios, as its curl commands do, to the datacenter
    that owns the namespace (`dc_http`: namespace -> HTTP port on 127.0.0.1)."""
    for sc in scenarios:
        for w in sc.writes:
            status, body = request(dc_http[w.namespace], "PUT", kv_path(w.namespace, w.key), w.body())
            assert (status, body) == (200, {"success": True}), (
                f"scenario {sc.number}: PUT {w.namespace}/{w.key} answered {status} {body}")


def unmet(expects: Sequence[Expect], state_doc: Any) -> list[str]:
    """What the client's /state still lacks, one line per expectation ([] = converged)."""
    state = state_of(state_doc)
    out = []
    for e in expects:
        ok, held = e.check(state)
        if not ok:
            out.append(f"{e.key}: want {e.summary}, client holds {held}")
    return out

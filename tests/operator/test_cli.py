"""`unison operator` as a real process: kubeconfig login, liveness endpoint, reconcile."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from .conftest import UC_PATH, ApiServerEmulator, eventually, example, kubeconfig, live

pytestmark = pytest.mark.kmock(cls=ApiServerEmulator)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def healthy(url: str) -> bool:
    try:
        async with aiohttp.ClientSession() as s, s.get(url) as resp:
            return resp.status == 200
    except aiohttp.ClientError:
        return False


async def test_operator_command_reconciles_with_a_kubeconfig(k8s: Any, tmp_path: Path) -> None:
    config = kubeconfig(k8s, tmp_path / "kubeconfig")
    liveness = f"http://127.0.0.1:{free_port()}/healthz"
    env = {**os.environ, "KUBECONFIG": str(config)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "unison.cli", "operator", "--all-namespaces",
        "--liveness", liveness, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        resp = await k8s.post(UC_PATH, json=example())
        assert resp.status == 200
        await eventually(lambda: live(k8s, "Deployment", "ad-campaign-client"),
                         "the client Deployment", within=60)
        token = [r.headers.get("Authorization") for r in list(k8s)
                 if r.resource is not None and r.resource.plural == "deployments"]
        assert "Bearer not-checked" in token  # children are written with the kubeconfig's user
        ok = False
        for _ in range(50):
            if ok := await healthy(liveness):
                break
            await asyncio.sleep(0.2)
        assert ok, "kopf's liveness endpoint did not answer"
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 0, output.decode()[-2000:]
    assert b"Traceback" not in output, output.decode()[-2000:]


async def test_operator_command_needs_a_scope() -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "unison.cli", "operator",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    assert proc.returncode == 2
    assert b"one of the arguments -n/--namespace -A/--all-namespaces is required" in err

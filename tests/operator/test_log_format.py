"""`unison operator --log-format json` as a real process against the API emulator: every
line it writes is a JSON object from unison.logs, and the lines about the cluster it
reconciles name it under "object"."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from .conftest import NS, UC_PATH, ApiServerEmulator, eventually, example, kubeconfig, live

pytestmark = pytest.mark.kmock(cls=ApiServerEmulator)


async def test_json_logs_from_the_environment(k8s: Any, tmp_path: Path) -> None:
    env = {**os.environ, "KUBECONFIG": str(kubeconfig(k8s, tmp_path / "kubeconfig")),
           "UNISON_LOG_FORMAT": "json"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "unison.cli", "operator", "--all-namespaces", "--liveness", "",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        resp = await k8s.post(UC_PATH, json=example())
        assert resp.status == 200
        await eventually(lambda: live(k8s, "Deployment", "ad-campaign-client"),
                         "the client Deployment", within=60)
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = await asyncio.wait_for(proc.communicate(), timeout=30)
    assert proc.returncode == 0, output.decode()[-2000:]
    lines = output.decode().splitlines()
    docs = [json.loads(line) for line in lines]  # raises on any line that is not JSON
    assert all({"time", "level", "logger", "message"} <= d.keys() for d in docs)
    about = [d for d in docs if d.get("object", {}).get("name") == "ad-campaign"]
    assert about, "no line names the UnisonCluster"
    assert all(d["object"]["namespace"] == NS and d["object"]["kind"] == "UnisonCluster"
               for d in about)

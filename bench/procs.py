"""Process plumbing the benchmarks share: free ports, child environments, readiness, stop."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def python_env() -> dict[str, str]:
    """The environment for a child Python: the repo importable, output unbuffered."""
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": str(REPO) + (os.pathsep + path if path else ""),
            "PYTHONUNBUFFERED": "1"}


def http_status(port: int, path: str, timeout: float = 2.0) -> int | None:
    """The HTTP status of GET path on 127.0.0.1:port, None when nothing answers."""
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def wait_http(port: int, path: str, proc: subprocess.Popen[bytes], timeout: float = 60.0,
              name: str = "server") -> None:
    """Until GET path answers 200; fails at once when the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} on port {port} exited with {proc.returncode}")
        if http_status(port, path) == 200:
            return
        time.sleep(0.05)
    raise TimeoutError(f"{name} on port {port} did not answer {path} with 200 within {timeout}s")


def stop_process(proc: subprocess.Popen[bytes], grace: float = 15.0) -> int | None:
    """SIGTERM, then SIGKILL after `grace` seconds; returns the exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return proc.returncode


def get_json(port: int, path: str) -> tuple[int, Any]:
    """(status, parsed body) of GET path; the body is None on an HTTP error."""
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}{path}", timeout=2.0) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, None


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rindex(")") + 2:].split()  # after "pid (comm) ": comm may hold spaces


def process_tree(pid: int) -> list[int]:
    """`pid` and every live descendant (the node's WAL sync helpers are its children)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (f := _stat_fields(int(entry))) is not None:
            parents.setdefault(int(f[1]), []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(parents.get(p, ()))
    return out


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of `pid` and its live descendants, from /proc."""
    total = 0
    for p in process_tree(pid):
        f = _stat_fields(p)
        if f is not None:
            total += int(f[11]) + int(f[12])  # utime, stime (fields 14 and 15 of stat)
    return total / _CLK_TCK

"""Running the harness's own commands: one error type and a one-line log."""

from __future__ import annotations

import subprocess
import sys


class ClusterError(RuntimeError):
    """The harness could not start the cluster; the message says which part and why."""


def log(msg: str) -> None:
    print(f"[kube] {msg}", file=sys.stderr, flush=True)


def sh(*cmd: str, check: bool = True, input: str | bytes | None = None,
       timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """A short command on the host, output captured; ClusterError when it fails."""
    r = subprocess.run(list(cmd), capture_output=True, text=not isinstance(input, bytes),
                       input=input, timeout=timeout)
    if check and r.returncode != 0:
        err = r.stderr if isinstance(r.stderr, str) else r.stderr.decode(errors="replace")
        raise ClusterError(f"{' '.join(cmd)} failed ({r.returncode}): {err.strip()}")
    return r

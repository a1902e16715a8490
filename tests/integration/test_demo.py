"""`unison demo` exactly as `make demo` runs it: the seed's fixed ports, its own cluster.

It needs 8001-8003, 4001-4003, 5555-5556 and 8090, so runs of this test take turns
through a lock file (pytest-xdist workers or two engineers at once). Everything else
uses free ports.
"""

from __future__ import annotations

import fcntl
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from unison.local.procs import port_free

REPO = Path(__file__).resolve().parents[2]
SEED_PORTS = (8001, 8002, 8003, 4001, 4002, 4003, 5555, 5556, 8090)


@pytest.fixture
def seed_ports() -> Iterator[None]:
    """Hold the seed-ports lock for the duration of the test."""
    with open(Path(tempfile.gettempdir()) / "unison-seed-ports.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def test_make_demo_runs_the_seed_story_and_passes(seed_ports: None, tmp_path: Path) -> None:
    free_before = [p for p in SEED_PORTS if port_free(p)]
    script = Path(sys.executable).parent / "unison"  # what `make demo` runs
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "unison.cli"]
    r = subprocess.run([*argv, "demo"], cwd=REPO, text=True,
                       capture_output=True, timeout=240,
                       env={**os.environ, "PYTHONUNBUFFERED": "1", "TMPDIR": str(tmp_path)})
    out = r.stdout
    assert r.returncode == 0, out + r.stderr
    for line in (
        'client: lww:user-status = "away" from ad-campaign-dc2 at 1698765433000',
        'client: lww:config = "DC2 wins!" from ad-campaign-dc2',
        'client: counter:page-views = total 8 {"ad-campaign-dc1":5,"ad-campaign-dc2":3}',
        "client: lww:feature-flag = true from ad-campaign-dc1 at 2000",
        'client: counter:api-calls = total 175 {"ad-campaign-dc1":100,"ad-campaign-dc2":75}',
        'client: counter:db-queries = total 250 {"ad-campaign-dc1":250}',
        'GET :8003/api/v1/ad-campaign-dc1/kv/lww:user-status  -> "online" from ad-campaign-dc1',
        "Converged state",
        "writes acknowledged:  11/11",
        "outcomes as expected: 8/8",
        "PASS",
    ):
        assert line in out, f"missing {line!r} in:\n{out}"
    # The converged state block: one line per key.
    assert re.search(r'lww:user-status +"away" +ad-campaign-dc2 @ 1698765433000', out)
    assert re.search(r'counter:page-views +8 +\{"ad-campaign-dc1":5,"ad-campaign-dc2":3\}', out)
    for n in range(1, 6):
        assert f"Scenario {n}: " in out
    assert "FAIL" not in out
    # The closing hint names a command that runs from here (the venv is not on PATH).
    hint = re.search(r"To keep a cluster running: (\S+) up examples/ad-campaign.yaml", out)
    assert hint, out
    if script.exists():
        assert (REPO / hint.group(1)).resolve() == script.resolve(), hint.group(1)
    if len(free_before) == len(SEED_PORTS):
        # It started its own cluster: everything stopped, temporary data removed.
        assert "Starting a local cluster" in out
        assert "stopped dc1, dc2, relayer, client" in out
        assert [p for p in SEED_PORTS if not port_free(p)] == []
        assert not list(tmp_path.glob("unison-demo-*"))

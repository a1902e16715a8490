"""The `unison` entry point as a user runs it: the installed console script."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXPECTED = ("node", "client", "up", "demo", "render", "operator")


def unison(*args: str) -> subprocess.CompletedProcess[str]:
    script = shutil.which("unison", path=str(Path(sys.executable).parent))
    argv = [script] if script else [sys.executable, "-m", "unison.cli"]
    return subprocess.run([*argv, *args], capture_output=True, text=True, timeout=60)


def test_help_lists_every_subcommand() -> None:
    r = unison("--help")
    assert r.returncode == 0, r.stderr
    listed = [line.split()[0] for line in r.stdout.splitlines() if line.startswith("  ")]
    assert listed == list(EXPECTED)


@pytest.mark.parametrize("command", EXPECTED)
def test_each_subcommand_has_its_own_help(command: str) -> None:
    r = unison(command, "--help")
    assert r.returncode == 0, r.stderr
    assert "usage:" in r.stdout and command in r.stdout.split("\n", 1)[0]
    assert "Traceback" not in r.stdout + r.stderr


def test_unknown_command_is_a_usage_error() -> None:
    r = unison("bogus")
    assert r.returncode == 2
    assert "unknown command 'bogus'" in r.stderr
    assert "Traceback" not in r.stderr

"""The `unison` entry point as a user runs it: the installed console script."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

EXPECTED = ("node", "client", "up", "demo", "curve-keypair", "render", "operator")


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


def test_no_command_is_a_usage_error_listing_them() -> None:
    r = unison()
    assert r.returncode == 2 and r.stdout == ""
    assert "usage: unison COMMAND" in r.stderr and "  demo" in r.stderr


def test_help_command_shows_that_commands_help() -> None:
    r = unison("help", "up")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("usage:") and "up" in r.stdout.split("\n", 1)[0]
    assert r.stdout == unison("up", "--help").stdout


def test_unknown_command_is_a_usage_error() -> None:
    r = unison("bogus")
    assert r.returncode == 2
    assert "unknown command 'bogus'" in r.stderr
    assert "Traceback" not in r.stderr


def _without_operator_extra(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`unison ARGS` as in an install without the `operator` extra: kopf and kubernetes
    cannot be imported (a `sitecustomize` on the path blocks them)."""
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\nfor name in ('kopf', 'kubernetes'):\n    sys.modules[name] = None\n")
    code = "import sys; from unison.cli import main; sys.exit(main(sys.argv[1:]))"
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path)}
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=60, env=env)


def test_operator_without_its_extra_says_how_to_install_it(tmp_path: Path) -> None:
    r = _without_operator_extra(tmp_path, "operator", "--all-namespaces")
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "kopf and kubernetes not installed" in lines[0]
    assert "pip install 'unison[operator]'" in lines[0]


def test_render_needs_no_operator_extra(tmp_path: Path) -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "ad-campaign.yaml"
    r = _without_operator_extra(tmp_path, "render", str(example))
    assert r.returncode == 0, r.stderr
    assert "kind: StatefulSet" in r.stdout


@pytest.mark.parametrize("spelling,role", [("replicator", "replicator"), ("relayer", "relayer"),
                                           ("server", "replicator"), ("replica", "relayer"),
                                           ("relay", "relayer")])
def test_node_roles_in_the_seeds_and_unisondbs_current_names(spelling: str, role: str) -> None:
    from unison.node import parse_args

    assert parse_args(["-config", "dc1.toml", spelling]).role == role


def test_a_unisondb_command_line_runs_a_node(tmp_path: Path) -> None:
    """`unison -config F relayer`, as the seed runs `./unisondb -config F relayer`."""
    missing = tmp_path / "nope.toml"
    for argv in (["-config", str(missing), "relayer"], ["server", "-config", str(missing)]):
        r = unison(*argv)
        assert r.returncode == 2, (argv, r.stderr)
        assert r.stderr.strip() == (f"unison node: {missing}: cannot read config file: "
                                    "No such file or directory"), r.stderr

"""`unison up` as a user runs it: real node, relayer and client processes on 127.0.0.1.

Every cluster here runs with --port-offset on ports checked free, so these tests can run
beside other engineers' tests and beside a `unison up` on the seed's ports.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from unison.local.procs import port_free
from unison.local.scenarios import seed_scenarios

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "ad-campaign.yaml"
SEED_PORTS = (8001, 8002, 8003, 4001, 4002, 4003, 5555, 5556, 8090)


def free_offset() -> int:
    """A --port-offset whose every port is free (kept below the ephemeral range)."""
    rng = random.Random()
    for _ in range(500):
        offset = rng.randrange(1000, 24000)
        if all(port_free(p + offset) for p in SEED_PORTS):
            return offset
    raise RuntimeError("no free port offset found")


def unison(*args: str, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "unison.cli", *args], cwd=cwd, text=True,
                          capture_output=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


def processes_mentioning(text: str) -> list[tuple[int, str]]:
    """(pid, command line) of live processes that mention `text` (e.g. our data dir)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd and "pytest" not in cmd:
            found.append((int(entry.name), cmd))
    return found


def busy_ports(offset: int) -> list[int]:
    return [p + offset for p in SEED_PORTS if not port_free(p + offset)]


def write_manifest(path: Path, change=None) -> Path:
    doc = yaml.safe_load(EXAMPLE.read_text())
    if change:
        change(doc)
    path.write_text(yaml.safe_dump(doc))
    return path


class Running:
    """A `unison up` child whose merged output is collected by a thread."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "unison.cli", "up", *args], cwd=cwd, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, text: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.output:
                return
            if self.proc.poll() is not None:
                self._reader.join(5)
                break
            time.sleep(0.1)
        raise AssertionError(f"{text!r} not seen; output:\n{self.output[-6000:]}")

    def stop(self, sig: int = signal.SIGINT, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code


# ---------------------------------------------------------------- start-up refusals


def test_invalid_manifest_is_refused_naming_the_field(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "bad.yaml",
                              lambda d: d["spec"]["relayer"].update(follow=["dc1", "dc3"]))
    r = unison("up", str(manifest), "--data-dir", str(tmp_path / "data"), cwd=tmp_path)
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1, r.stderr  # one line
    assert "spec.relayer.follow[1]" in r.stderr and "bad.yaml" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert not (tmp_path / "data").exists()  # nothing written, nothing started


def test_unreadable_manifest_and_bad_yaml_exit_2(tmp_path: Path) -> None:
    r = unison("up", str(tmp_path / "missing.yaml"), cwd=tmp_path)
    assert r.returncode == 2
    assert "missing.yaml: cannot read file" in r.stderr

    (tmp_path / "broken.yaml").write_text("kind: UnisonCluster\nspec: {datacenters: [\n")
    r = unison("up", str(tmp_path / "broken.yaml"), cwd=tmp_path)
    assert r.returncode == 2
    assert "broken.yaml: not valid YAML (line" in r.stderr
    assert "Traceback" not in r.stderr

    r = unison("up", str(EXAMPLE), "--client-port", "70000", cwd=tmp_path)
    assert r.returncode == 2 and "--client-port" in r.stderr


def write_latin1_manifest(path: Path) -> Path:
    """The example, saved by an editor set to Latin-1: valid YAML, not UTF-8."""
    text = EXAMPLE.read_text(encoding="utf-8") + "# propriété de l'équipe\n"
    path.write_bytes(text.encode("latin-1"))
    return path


@pytest.mark.parametrize("command", ["up", "demo", "render"])
def test_a_manifest_that_is_not_utf8_is_refused_naming_the_file(command: str,
                                                                tmp_path: Path) -> None:
    manifest = write_latin1_manifest(tmp_path / "latin1.yaml")
    extra = [] if command == "render" else ["--data-dir", str(tmp_path / "data"),
                                            "--port-offset", str(free_offset())]
    r = unison(command, str(manifest), *extra, cwd=tmp_path)
    assert r.returncode == 2, r.stdout + r.stderr  # as for any other invalid manifest
    assert r.stderr.count("\n") == 1, r.stderr  # one line
    assert f"unison {command}: {manifest}: not UTF-8 text" in r.stderr
    assert "byte 0xe9" in r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    assert not (tmp_path / "data").exists()


@pytest.mark.parametrize("command", ["up", "demo"])
@pytest.mark.parametrize("where", ["proc", "under-a-file"])
def test_a_data_dir_that_cannot_be_made_is_one_line_and_starts_nothing(
        command: str, where: str, tmp_path: Path) -> None:
    if where == "proc":
        data, reason = Path("/proc/nope/x"), "No such file or directory"
    else:
        (tmp_path / "a-file").write_text("")
        data, reason = tmp_path / "a-file" / "x", "Not a directory"
    offset = free_offset()
    r = unison(command, str(EXAMPLE), "--data-dir", str(data), "--port-offset", str(offset),
               cwd=tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "Traceback" not in out
    lines = [line for line in r.stderr.splitlines() if str(data) in line]
    assert len(lines) == 1 and r.stderr.count("\n") == 1, r.stderr
    assert f"cannot create data directory {data}: {reason}" in lines[0]
    assert "nothing was started" in lines[0]
    assert busy_ports(offset) == []
    assert processes_mentioning(str(data)) == []


def test_port_in_use_names_port_and_node_and_starts_nothing(tmp_path: Path) -> None:
    offset = free_offset()
    taken = 4002 + offset  # dc2's gRPC port
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", taken))
        blocker.listen()
        r = unison("up", str(EXAMPLE), "--data-dir", str(tmp_path / "data"),
                   "--port-offset", str(offset), cwd=tmp_path)
        assert r.returncode == 1, r.stdout + r.stderr
        assert f"port {taken} is already in use; the gRPC port of dc2 needs it" in r.stderr
        assert "nothing was started" in r.stderr
        assert busy_ports(offset) == [taken]  # only our blocker holds a port
    assert processes_mentioning(str(tmp_path)) == []
    assert not list((tmp_path).glob("data/*.log"))


def test_same_port_twice_is_reported(tmp_path: Path) -> None:
    offset = free_offset()
    r = unison("up", str(EXAMPLE), "--data-dir", str(tmp_path / "data"), "--port-offset",
               str(offset), "--client-port", str(8003 + offset), cwd=tmp_path)
    assert r.returncode == 1
    assert (f"port {8003 + offset} is needed twice: by the HTTP port of relayer and by the "
            "state port (--client-port) of client") in r.stderr
    assert processes_mentioning(str(tmp_path)) == []


def test_child_dying_on_start_is_reported_and_the_rest_stopped(tmp_path: Path) -> None:
    offset = free_offset()
    data = tmp_path / "data"
    data.mkdir()
    (data / "dc2").write_text("not a directory\n")  # dc2 cannot open its storage
    r = unison("up", str(EXAMPLE), "--data-dir", str(data), "--port-offset", str(offset),
               cwd=tmp_path)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out
    assert "dc2 exited during start-up (exit code 1)" in out
    assert "last lines of" in out and "dc2.log" in out
    assert "cannot open storage" in out  # the node's own words, from its log tail
    assert "Stopping everything that was started" in out
    assert "relayer" not in out.split("dc2 exited")[0]  # never got that far
    assert processes_mentioning(str(tmp_path)) == []
    assert busy_ports(offset) == []


# ---------------------------------------------------------------- a running cluster


@dataclass
class Cluster:
    up: Running
    offset: int
    data: Path

    def url(self, port: int) -> str:
        return f"http://127.0.0.1:{port + self.offset}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("up")
    offset = free_offset()
    up = Running([str(EXAMPLE), "--data-dir", str(tmp / "data"), "--port-offset", str(offset)],
                 cwd=tmp)
    try:
        up.wait_for("Ctrl-C stops it")
        yield Cluster(up, offset, tmp / "data")
    finally:
        if up.proc.poll() is None:
            up.stop(signal.SIGKILL)


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def test_up_shows_endpoints_and_streams_prefixed_logs(cluster: Cluster) -> None:
    o = cluster.offset
    out = cluster.up.output
    assert "NODE     ROLE         HTTP" in out
    for name, http, grpc in (("dc1", 8001, 4001), ("dc2", 8002, 4002), ("relayer", 8003, 4003)):
        row = next(line for line in cluster.up.lines if line.strip().startswith(name + " "))
        assert str(http + o) in row and str(grpc + o) in row and f"{name}.log" in row
    assert f"{5555 + o} ad-campaign-dc1" in out and f"{5556 + o} ad-campaign-dc2" in out
    assert f"{8090 + o} /state" in out
    for name in ("dc1", "dc2", "relayer", "client"):
        assert f"{name} " in out and "ready after" in out
    cluster.up.wait_for("[relayer] ")
    cluster.up.wait_for("[dc1]     ")
    assert (cluster.data / "dc1.toml").is_file() and (cluster.data / "relayer.toml").is_file()


@pytest.mark.skipif(not all(shutil.which(t) for t in ("bash", "curl", "base64")),
                    reason="needs bash, curl and base64")
def test_curl_script_converges_the_client(cluster: Cluster) -> None:
    env = {**os.environ, "DC1": cluster.url(8001), "DC2": cluster.url(8002),
           "RELAYER": cluster.url(8003), "CLIENT": cluster.url(8090)}
    run = subprocess.run(["bash", str(REPO / "examples" / "curl-scenarios.sh")], env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count('{"success":true}') == 11
    assert '{"value":"online","timestamp":1698765432000,"replica":"ad-campaign-dc1"}' in run.stdout

    expects = [e for s in seed_scenarios(0) for e in s.expects if e.key != "lww:config"]
    deadline = time.monotonic() + 30
    while True:
        state = get_json(cluster.url(8090) + "/state")
        results = {e.key: e.check(state) for e in expects}
        if all(ok for ok, _ in results.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert all(ok for ok, _ in results.values()), results
    config = state["lww"]["lww:config"]
    assert (config["value"], config["replica"]) == ("DC2 wins!", "ad-campaign-dc2")


def test_demo_uses_the_running_cluster(cluster: Cluster, tmp_path: Path) -> None:
    r = unison("demo", str(EXAMPLE), "--port-offset", str(cluster.offset), cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "using the cluster already running" in r.stdout
    assert "using the client already running" in r.stdout
    assert "Starting a local cluster" not in r.stdout
    assert "PASS" in r.stdout and "outcomes as expected: 8/8" in r.stdout
    assert cluster.up.proc.poll() is None  # the demo left the user's cluster alone


class _WrongClient(BaseHTTPRequestHandler):
    """Something on the client's port that answers but never converges."""

    def do_GET(self) -> None:  # noqa: N802
        body = b'{"lww": {}, "counters": {}}'
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def test_demo_reports_failure_when_the_state_never_converges(cluster: Cluster,
                                                             tmp_path: Path) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _WrongClient)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        r = unison("demo", str(EXAMPLE), "--port-offset", str(cluster.offset), "--client-port",
                   str(server.server_address[1]), "--wait", "1", cwd=tmp_path)
    finally:
        server.shutdown()
        server.server_close()
    assert r.returncode == 1, r.stdout
    assert "PASS" not in r.stdout
    assert "FAIL" in r.stdout
    assert "client: lww:user-status should be \"away\" from ad-campaign-dc2, holds not in" \
           in r.stdout
    assert "writes acknowledged:  11/11" in r.stdout
    assert "outcomes as expected: 2/8" in r.stdout  # only the two relayer reads


def test_ctrl_c_stops_every_process(cluster: Cluster) -> None:
    code = cluster.up.stop(signal.SIGINT)
    out = cluster.up.output
    assert code == 0, out[-4000:]
    assert "Stopping the cluster" in out
    for name in ("dc1", "dc2", "relayer", "client"):
        assert f"{name} stopped" in out
    assert "[dc1]     " in out and "stopped cleanly" in out  # the nodes' own last words
    assert processes_mentioning(str(cluster.data)) == []
    assert busy_ports(cluster.offset) == []


@pytest.mark.skipif(sys.platform != "linux", reason="parent-death signal is Linux-only")
def test_a_dead_child_is_reported_and_nothing_outlives_a_killed_up(tmp_path: Path) -> None:
    """A child dying later is reported while the rest keep serving (the demo then brings
    its own client); and even `kill -9` of `unison up` leaves no process behind."""
    offset = free_offset()
    up = Running([str(EXAMPLE), "--data-dir", str(tmp_path / "data"), "--port-offset",
                  str(offset), "--no-logs"], cwd=tmp_path)
    try:
        up.wait_for("Ctrl-C stops it")
        [client_pid] = [pid for pid, cmd in processes_mentioning(f"--state-port {8090 + offset}")]
        os.kill(client_pid, signal.SIGKILL)
        up.wait_for("client exited unexpectedly (killed by SIGKILL)")
        assert up.proc.poll() is None
        r = unison("demo", str(EXAMPLE), "--port-offset", str(offset), cwd=tmp_path)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "using the cluster already running" in r.stdout
        assert f"no client answers on :{8090 + offset}; starting one" in r.stdout
        assert "stopped client" in r.stdout  # the demo stops only what it started
        assert up.proc.poll() is None
    finally:
        up.stop(signal.SIGKILL)
    deadline = time.monotonic() + 30
    while processes_mentioning(str(tmp_path)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert processes_mentioning(str(tmp_path)) == []
    while busy_ports(offset) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert busy_ports(offset) == []


def test_sigterm_stops_every_process_like_ctrl_c(tmp_path: Path) -> None:
    """What a service manager or `kill` sends: the same clean stop as Ctrl-C."""
    offset = free_offset()
    up = Running([str(EXAMPLE), "--data-dir", str(tmp_path / "data"), "--port-offset",
                  str(offset), "--no-logs"], cwd=tmp_path)
    try:
        up.wait_for("Ctrl-C stops it")
        code = up.stop(signal.SIGTERM)
    finally:
        if up.proc.poll() is None:
            up.stop(signal.SIGKILL)
    assert code == 0, up.output[-4000:]
    for name in ("dc1", "dc2", "relayer", "client"):
        assert f"{name} stopped" in up.output
    assert processes_mentioning(str(tmp_path)) == []
    assert busy_ports(offset) == []

"""The image, run for real: dc1, dc2, the relayer and the CRDT client as containers on the
host network with non-default ports, the seed's scenarios sent over HTTP, and the client's
converged /state checked. Needs a Docker engine and the image (bash scripts/container/prepare.sh).
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import helm_python as helm
import pytest
import yaml
from unison.config import render_toml
from unison.local.scenarios import DC1, DC2, RELAYER_READS, seed_scenarios
from unison.topology.plan import plan_cluster

from tests.container.harness import (
    IMAGE,
    PREPARE,
    REPO_ROOT,
    docker,
    docker_unavailable_reason,
    free_ports,
    kv_path,
    relayer_value,
    request,
    run_scenarios,
    unmet,
    wait_for,
)

pytestmark = pytest.mark.container

_reason = docker_unavailable_reason()
if _reason:
    # .ci/run prepares the engine and the image: there a missing engine is a failure, not
    # a reason to skip the only tests that run the image.
    if os.environ.get("UNISON_REQUIRE_DOCKER") == "1":
        pytest.fail(f"UNISON_REQUIRE_DOCKER=1 but {_reason}", pytrace=False)
    pytest.skip(_reason, allow_module_level=True)

LABEL = "org.unison.test=container"
CONVERGE_TIMEOUT = 60.0


@pytest.fixture(scope="module")
def image() -> str:
    r = docker("image", "inspect", IMAGE, check=False)
    assert r.returncode == 0, f"image {IMAGE} is missing: build it with `{PREPARE}`"
    return IMAGE


def run(image: str, *args: str) -> subprocess.CompletedProcess[str]:
    return docker("run", "--rm", "--network", "none", image, *args, check=False)


# ---------------------------------------------------------------- the image itself


def test_image_runs_as_non_root_with_data_volume(image: str) -> None:
    cfg = docker("image", "inspect", image, "--format",
                 "{{json .Config.User}} {{json .Config.Entrypoint}} {{json .Config.Volumes}}").stdout
    assert cfg.split() == ['"10001:10001"', '["unison"]', '{"/data":{}}']
    r = docker("run", "--rm", "--network", "none", "--entrypoint", "id", image)
    assert r.stdout.strip() == "uid=10001(unison) gid=10001(unison) groups=10001(unison)"


def test_default_command_prints_help_listing_every_program(image: str) -> None:
    r = run(image)
    assert r.returncode == 0, r.stderr
    listed = {line.split()[0] for line in r.stdout.split("commands:")[1].splitlines() if line.strip()
              and line.startswith("  ")}
    assert {"node", "client", "operator"} <= listed, r.stdout


def test_bad_config_is_a_clear_error_with_exit_2(image: str) -> None:
    r = run(image, "node", "-config", "/etc/unison/missing.toml", "replicator")
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "/etc/unison/missing.toml" in r.stderr
    assert "Traceback" not in r.stderr


def test_operator_command_takes_the_helm_charts_arguments(image: str) -> None:
    with helm.Chart.load(REPO_ROOT / "charts" / "unison-operator") as chart:
        rendered = chart.render({}, name="unison-operator", namespace="unison-system")
    (dep,) = [d for d in yaml.safe_load_all(rendered["unison-operator/templates/deployment.yaml"])
              if d]
    args = dep["spec"]["template"]["spec"]["containers"][0]["args"]
    # No cluster here: the operator must get past its command line and stop, clearly, at
    # the missing credentials.
    r = run(image, *args)
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "usage:" not in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert "credentials" in r.stderr, r.stderr


# ---------------------------------------------------------------- the seed, in containers


@dataclass
class Cluster:
    """Containers started by one test, always removed at the end."""

    image: str
    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:8])
    names: list[str] = field(default_factory=list)

    def start(self, name: str, *args: str, health_url: str | None = None) -> str:
        cname = f"unison-test-{self.tag}-{name}"
        health = ["--health-cmd", f"healthcheck {health_url}", "--health-interval", "1s",
                  "--health-retries", "60"] if health_url else []
        self.names.append(cname)
        docker("run", "--detach", "--name", cname, "--label", LABEL, "--network", "host",
               *health, *args[:-1], self.image, *args[-1].split())
        return cname

    def logs(self) -> str:
        out = []
        for n in self.names:
            r = docker("logs", "--tail", "40", n, check=False)
            state = docker("inspect", n, "--format", "{{.State.Status}} exit={{.State.ExitCode}}",
                           check=False).stdout.strip()
            out.append(f"--- {n} ({state})\n{r.stdout}{r.stderr}")
        return "\n".join(out)

    def health(self, name: str) -> str:
        return docker("inspect", name, "--format", "{{.State.Health.Status}}",
                      check=False).stdout.strip()

    def remove(self) -> None:
        for n in reversed(self.names):
            docker("rm", "--force", "--volumes", n, check=False)


@pytest.fixture
def cluster(image: str) -> Iterator[Cluster]:
    c = Cluster(image)
    try:
        yield c
    finally:
        c.remove()


def write_configs(conf_dir: Path) -> dict[str, dict[str, int]]:
    """TOML for dc1, dc2 and the relayer with free (non-default) ports; returns the ports."""
    (http1, grpc1, http2, grpc2, http3, grpc3, zmq1, zmq2, state) = free_ports(9)
    grpc = {"dc1": grpc1, "dc2": grpc2}
    plans = plan_cluster(
        [("dc1", [DC1]), ("dc2", [DC2])], ["dc1", "dc2"],
        base_dir=lambda name: "/data",
        upstream_address=lambda dc, _port: f"127.0.0.1:{grpc[dc]}",
    )
    ports = {"dc1": (http1, grpc1), "dc2": (http2, grpc2), "relayer": (http3, grpc3)}
    for plan in plans:
        cfg = plan.config
        cfg.http_port, cfg.grpc.port = ports[plan.name]
        cfg.http.listen_ip = cfg.grpc.listen_ip = "127.0.0.1"
        if plan.role == "relayer":
            for notifier, port in zip(cfg.notifiers, (zmq1, zmq2), strict=True):
                notifier.bind_port = port
        (conf_dir / f"{plan.name}.toml").write_text(render_toml(cfg))
    conf_dir.chmod(0o755)  # the node runs as uid 10001
    for f in conf_dir.iterdir():
        f.chmod(0o644)
    return {"http": {n: p[0] for n, p in ports.items()}, "zmq": {DC1: zmq1, DC2: zmq2},
            "state": {"client": state}}


def test_seed_scenarios_converge_across_containers(cluster: Cluster, tmp_path: Path) -> None:
    conf = tmp_path / "unison"
    conf.mkdir()
    ports = write_configs(conf)
    http_port = ports["http"]
    mount = ["--volume", f"{conf}:/etc/unison:ro"]
    for name, role in (("dc1", "replicator"), ("dc2", "replicator"), ("relayer", "relayer")):
        cluster.start(name, *mount, f"node -config /etc/unison/{name}.toml {role}",
                      health_url=f"http://127.0.0.1:{http_port[name]}/readyz")
    zmq = " ".join(f"--zmq {ns}=tcp://127.0.0.1:{p}" for ns, p in ports["zmq"].items())
    state_port = ports["state"]["client"]
    cluster.start("client", f"client --http http://127.0.0.1:{http_port['relayer']} {zmq} "
                  f"--state-host 127.0.0.1 --state-port {state_port}")

    for name in ("dc1", "dc2", "relayer"):
        wait_for(f"{name} /readyz 200",
                 lambda n=name: request(http_port[n], "GET", "/readyz", timeout=2)[0] == 200,
                 60, cluster.logs)
    wait_for("client /healthz 200",
             lambda: request(state_port, "GET", "/healthz", timeout=2)[0] == 200, 60, cluster.logs)

    scenarios = seed_scenarios(int(time.time()) * 1000)
    run_scenarios(scenarios, {DC1: http_port["dc1"], DC2: http_port["dc2"]})

    expects = [e for sc in scenarios for e in sc.expects]
    last: list[object] = [None]

    def converged() -> bool:
        status, doc = request(state_port, "GET", "/state", timeout=2)
        last[0] = doc
        return status == 200 and not unmet(expects, doc)

    wait_for("the client's converged CRDT state", converged, CONVERGE_TIMEOUT,
             lambda: "\n".join(unmet(expects, last[0])) + "\n" + cluster.logs())

    # The seed's last step: the relayer serves each datacenter's namespace read-only.
    for read in RELAYER_READS:
        assert relayer_value(http_port["relayer"], read.namespace, read.key) == read.payload
    status, body = request(http_port["relayer"], "PUT", kv_path(DC1, "lww:x"), {"value": ""})
    assert status == 403, (status, body)

    # The image's healthcheck command agrees with what we saw from outside.
    wait_for("docker health 'healthy' for every node",
             lambda: all(cluster.health(n) == "healthy" for n in cluster.names[:3]),
             30, cluster.logs)

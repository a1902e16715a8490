"""`unison demo [FILE]`: the seed's whole story with one command.

Uses the cluster already answering on the manifest's ports, or starts one in the
background (the same code as `unison up`) and stops it at the end. Then it sends the
seed's five scenarios, waits for the CRDT client to converge, checks every expected
outcome against the client's /state and the relayer, and exits 1 if anything is off.
"""

from __future__ import annotations

import argparse
import base64
import json
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from unison.local.cluster import (
    DataDirError,
    LocalCluster,
    ManifestError,
    display_path,
    load_manifest,
    plan_local,
    report_start_failure,
    start_cluster,
)
from unison.local.console import Console
from unison.local.procs import (
    ProcessGroup,
    StartFailure,
    describe_exit,
    http_ok,
    port_problems,
    stopped_cleanly,
)
from unison.local.scenarios import (
    DC1,
    DC2,
    RELAYER_READS,
    SEED_NAMESPACES,
    Expect,
    Scenario,
    Write,
    describe_register,
    seed_scenarios,
    state_of,
    state_table,
)
from unison.local.up import StopRequest, add_cluster_args

EXAMPLE = Path("examples") / "ad-campaign.yaml"
CONVERGE_TIMEOUT = 30.0

# The seed's topology, used when examples/ad-campaign.yaml is not around (an installed
# package run outside the repository). tests/unit/test_scenarios.py keeps it equal to
# the example file.
SEED_MANIFEST: dict[str, Any] = {
    "apiVersion": "unisondb.io/v1alpha1",
    "kind": "UnisonCluster",
    "metadata": {"name": "ad-campaign"},
    "spec": {
        "datacenters": [{"name": "dc1", "namespaces": [DC1]}, {"name": "dc2", "namespaces": [DC2]}],
        "relayer": {"replicas": 1, "follow": ["dc1", "dc2"], "notifierBasePort": 5555},
        "client": {"enabled": True},
    },
}


class Interrupted(Exception):
    pass


def default_manifest() -> Path | None:
    """examples/ad-campaign.yaml from the current directory or this checkout."""
    for base in (Path.cwd(), Path(__file__).resolve().parents[3]):
        if (base / EXAMPLE).is_file():
            return base / EXAMPLE
    return None


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="unison demo",
        description="Start a local cluster (unless one is already running), run the seed's five "
                    "CRDT scenarios against it, show the client's converged state and check "
                    "every expected outcome. Exits 1 if any check fails.",
    )
    p.add_argument("file", metavar="FILE", nargs="?",
                   help=f"UnisonCluster manifest (default: {EXAMPLE})")
    add_cluster_args(p)
    p.add_argument("--wait", type=float, default=CONVERGE_TIMEOUT, metavar="SECONDS",
                   help="how long to wait for each outcome to show up "
                        f"(default: {CONVERGE_TIMEOUT:.0f})")
    return p.parse_args(argv)


# ---------------------------------------------------------------- HTTP


def request(method: str, url: str, body: Any = None, timeout: float = 5.0) -> tuple[int, Any]:
    """(status, parsed JSON or text); status 0 when nothing answered."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method,
                                 headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    except (OSError, urllib.error.URLError) as e:
        return 0, str(getattr(e, "reason", e))
    text = raw.decode("utf-8", "replace")
    try:
        return status, json.loads(text)
    except ValueError:
        return status, text


# ---------------------------------------------------------------- the run


@dataclass
class Tally:
    writes_ok: int = 0
    writes: int = 0
    checks_ok: int = 0
    checks: int = 0
    failures: list[str] = field(default_factory=list)

    def write(self, ok: bool, what: str) -> None:
        self.writes += 1
        self.writes_ok += ok
        if not ok:
            self.failures.append(what)

    def check(self, ok: bool, what: str) -> None:
        self.checks += 1
        self.checks_ok += ok
        if not ok:
            self.failures.append(what)


class Demo:
    def __init__(self, cluster: LocalCluster, console: Console, wait: float,
                 stop: StopRequest) -> None:
        assert cluster.client is not None and cluster.relayer is not None
        self.cluster = cluster
        self.client = cluster.client
        self.relayer = cluster.relayer
        self.console = console
        self.wait = wait
        self.stop = stop
        self.tally = Tally()
        self.state: dict[str, Any] = {}

    def run(self) -> None:
        now_ms = int(time.time()) * 1000  # the seed's $(date +%s)000
        for scenario in seed_scenarios(now_ms):
            self.scenario(scenario)
        self.relayer_reads()

    def scenario(self, s: Scenario) -> None:
        c = self.console
        c.heading(f"Scenario {s.number}: {s.title}")
        for w in s.writes:
            self.put(w)
        met = self.converge(s.expects)
        for e in s.expects:
            ok, held = met[e.key]
            self.tally.check(ok, f"scenario {s.number}: {e.key} should be {e.summary}; "
                                 f"the client holds {held}")
            if ok:
                c.line(f"  {c.ok_mark} client: {e.key} = {held}")
            else:
                c.line(f"  {c.fail_mark} client: {e.key} should be {e.summary}, holds {held}")
        c.line(c.paint(f"    {s.lesson}", "2"))

    def put(self, w: Write) -> None:
        node = self.cluster.writer_for(w.namespace)
        assert node is not None
        status, body = request("PUT", node.url + w.path(), w.body())
        ok = status == 200 and isinstance(body, dict) and body.get("success") is True
        answer = f"{status}" if status else "no answer"
        c = self.console
        mark = c.ok_mark if ok else c.fail_mark
        c.line(f"  {mark} PUT {node.name} :{node.config.http_port} {w.key} {w.json_text}"
               f"  -> {answer}")
        if not ok:
            c.line(f"      {body}")
        self.tally.write(ok, f"PUT {w.key} to {node.name} ({w.namespace}) answered {answer}: {body}")

    def converge(self, expects: tuple[Expect, ...]) -> dict[str, tuple[bool, str]]:
        """Poll the client's /state until every expectation holds or time runs out."""
        url = f"{self.client.url}/state"
        t0 = time.monotonic()
        results: dict[str, tuple[bool, str]] = {}
        with self.console.progress("    ") as progress:
            while True:
                status, doc = request("GET", url)
                if status == 200:
                    self.state = state_of(doc)
                    results = {e.key: e.check(self.state) for e in expects}
                else:
                    why = f"/state answered {status}" if status else f"no answer from {url}"
                    results = {e.key: (False, why) for e in expects}
                if all(ok for ok, _ in results.values()):
                    return results
                elapsed = time.monotonic() - t0
                if elapsed > self.wait:
                    return results
                if self.stop.event.is_set():
                    raise Interrupted
                progress.update(f"waiting for the client to converge ... {elapsed:.1f}s")
                time.sleep(0.1)

    def relayer_reads(self) -> None:
        c = self.console
        r = self.relayer
        c.heading(f"Reading from the relayer (read-only, :{r.config.http_port})")
        for read in RELAYER_READS:
            path = f"/api/v1/{read.namespace}/kv/{read.key}"
            want = read.payload
            got: Any = None
            answer = "no answer"
            t0 = time.monotonic()
            with c.progress("    ") as progress:
                while True:
                    status, body = request("GET", r.url + path)
                    answer = str(status) if status else "no answer"
                    got = _decoded(body) if status == 200 else None
                    if got == want or time.monotonic() - t0 > self.wait:
                        break
                    if self.stop.event.is_set():
                        raise Interrupted
                    progress.update(f"waiting for the relayer to catch up ... "
                                    f"{time.monotonic() - t0:.1f}s")
                    time.sleep(0.1)
            ok = got == want
            held = describe_register(got) if isinstance(got, dict) else f"{answer}: {got}"
            self.tally.check(ok, f"relayer: GET {path} should return {describe_register(want)}; "
                                 f"got {held}")
            mark = c.ok_mark if ok else c.fail_mark
            c.line(f"  {mark} GET :{r.config.http_port}{path}  -> {held}")
        c.line(c.paint("    each namespace as its datacenter wrote it; the merged view is "
                       "the client's", "2"))

    def show_state(self) -> None:
        c = self.console
        c.heading(f"Converged state (the client's /state at "
                  f"http://localhost:{self.client.state_port}/state)")
        status, doc = request("GET", f"{self.client.url}/state")
        if status == 200:
            self.state = state_of(doc)
            for line in state_table(self.state):
                c.line("  " + line)
        else:
            c.line(f"  {c.fail_mark} could not read it ({status or 'no answer'})")

    def summary(self) -> bool:
        c = self.console
        t = self.tally
        ok = not t.failures
        c.heading("Summary")
        c.line(f"  writes acknowledged:  {t.writes_ok}/{t.writes}")
        c.line(f"  outcomes as expected: {t.checks_ok}/{t.checks}")
        if ok:
            c.line(f"  {c.ok_mark} " + c.paint("PASS", "1;32") +
                   ": every scenario converged to the seed's expected state")
        else:
            c.line(f"  {c.fail_mark} " + c.paint("FAIL", "1;31") +
                   f": {len(t.failures)} problem(s):")
            for f in t.failures:
                c.line(f"    - {f}")
        return ok


def _decoded(body: Any) -> Any:
    """The JSON inside a GET /kv answer's base64 value, or None."""
    if not (isinstance(body, dict) and body.get("found")):
        return None
    try:
        return json.loads(base64.b64decode(body.get("value", "")))
    except ValueError:
        return None


def check_topology(cluster: LocalCluster) -> str | None:
    """Why the seed's scenarios cannot run on this cluster, or None."""
    for ns in SEED_NAMESPACES:
        if cluster.writer_for(ns) is None:
            return f"no datacenter writes namespace {ns!r} (the seed's scenarios need " \
                   f"{DC1} and {DC2})"
    relayer = cluster.relayer
    if relayer is None or not set(SEED_NAMESPACES) <= set(relayer.config.storage.namespaces):
        return f"the relayer must follow both {DC1} and {DC2} (spec.relayer.follow)"
    if cluster.client is None:
        return "the demo needs the CRDT client (spec.client.enabled: true)"
    return None


def _prepare(args: argparse.Namespace) -> tuple[str, dict[str, Any], LocalCluster] | int:
    """(source, manifest, cluster) to run the demo on, or the exit code of why not."""
    source = args.file
    manifest: dict[str, Any]
    try:
        if source is None and (found := default_manifest()) is not None:
            source = display_path(found)
        if source is None:
            source, manifest = "<built-in seed topology>", SEED_MANIFEST
        else:
            manifest = load_manifest(source)
        cluster = plan_local(manifest, source, data_dir=args.data_dir,
                             client_port=args.client_port, port_offset=args.port_offset)
    except ManifestError as e:
        print(f"unison demo: {e}", file=sys.stderr)
        return 2
    problem = check_topology(cluster)
    if problem:
        print(f"unison demo: {source}: {problem}", file=sys.stderr)
        return 2
    if args.data_dir is not None:
        # before the banner: a bad --data-dir is one line, not a traceback mid-demo
        # (without the option the demo makes a temporary directory itself)
        try:
            cluster.make_data_dir()
        except DataDirError as e:
            print(f"unison demo: {e}; nothing was started", file=sys.stderr)
            return 1
    return source, manifest, cluster


def _banner(c: Console, cluster: LocalCluster) -> None:
    assert cluster.client is not None and cluster.relayer is not None
    c.line(c.bold("Unison demo: two datacenters, a relayer and a CRDT client (from the seed)"))
    for n in cluster.nodes:
        if n.role == "replicator":
            c.line(f"  {n.name:<8} accepts writes to {', '.join(n.config.storage.namespaces)} "
                   f"on :{n.config.http_port}")
    r = cluster.relayer
    zmq = ", ".join(f":{z.bind_port}" for z in r.config.notifiers)
    c.line(f"  {r.name:<8} follows them (read-only :{r.config.http_port}) and publishes "
           f"changes over ZeroMQ {zmq}")
    c.line(f"  {'client':<8} merges the changes into CRDTs: "
           f"http://localhost:{cluster.client.state_port}/state")


@dataclass
class _Run:
    """One demo run: the cluster it uses, what it started and what it must clean up."""

    args: argparse.Namespace
    console: Console
    source: str
    manifest: dict[str, Any]
    cluster: LocalCluster
    stop: StopRequest
    group: ProcessGroup
    temp_dir: Path | None = None
    failed: bool = False  # keep the temporary logs only when something went wrong

    def start(self) -> int | None:
        """Use what already answers on the cluster's ports and start the rest; the exit
        code if it cannot start (nothing is started then)."""
        c, args = self.console, self.args
        reuse_nodes = all(http_ok(f"{n.url}/healthz") for n in self.cluster.nodes)
        assert self.cluster.client is not None
        reuse_client = reuse_nodes and http_ok(f"{self.cluster.client.url}/healthz")
        if not reuse_client and args.data_dir is None:
            self.temp_dir = Path(tempfile.mkdtemp(prefix="unison-demo-"))
            self.cluster = plan_local(self.manifest, self.source, data_dir=self.temp_dir,
                                      client_port=args.client_port, port_offset=args.port_offset)
        cluster = self.cluster
        assert cluster.client is not None
        where = (f"{cluster.data_dir}, removed on success" if self.temp_dir
                 else display_path(cluster.data_dir))
        if reuse_nodes:
            c.heading("Cluster")
            c.line(f"  {c.ok_mark} using the cluster already running on "
                   f"{', '.join(':' + str(n.config.http_port) for n in cluster.nodes)}")
            if reuse_client:
                c.line(f"  {c.ok_mark} using the client already running on "
                       f":{cluster.client.state_port}")
                return None
            c.line(f"  no client answers on :{cluster.client.state_port}; starting one "
                   f"(log: {where})")
        else:
            c.heading(f"Starting a local cluster (data and logs: {where})")
        phases = [[cluster.client.process_spec()]] if reuse_nodes else cluster.phases()
        problems = port_problems(cluster.client.port_uses() if reuse_nodes
                                 else cluster.port_uses())
        if problems:
            c.line(f"{c.fail_mark} cannot start the cluster; nothing was started:")
            for p in problems:
                c.line(f"  - {p}")
            c.line("  Stop whatever holds the port, or use --port-offset N.")
            return 1
        if not reuse_nodes:
            cluster.write_configs()
        start_cluster(self.group, phases, c, timeout=args.timeout,
                      interrupted=self.stop.event.is_set)
        return None

    def clean_up(self) -> None:
        """Stop what this run started; remove the temporary directory unless it failed."""
        c = self.console
        if self.group.children:
            c.line()
            c.line("Stopping the local cluster ...")
            codes = self.group.stop()
            unclean = {n: code for n, code in codes.items() if not stopped_cleanly(code)}
            if unclean:
                c.line(f"  {c.fail_mark} did not stop cleanly: " +
                       ", ".join(f"{n} ({describe_exit(code)})" for n, code in unclean.items()))
            else:
                c.line(f"  {c.ok_mark} stopped {', '.join(codes)}")
        if self.temp_dir is not None:
            if not self.failed:
                shutil.rmtree(self.temp_dir, ignore_errors=True)
            else:
                c.line(f"Logs kept in {self.temp_dir}")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    console = Console()
    prepared = _prepare(args)
    if isinstance(prepared, int):
        return prepared
    source, manifest, cluster = prepared

    stop = StopRequest()
    stop.install()
    group = ProcessGroup(console)
    stop.group = group
    _banner(console, cluster)
    run = _Run(args, console, source, manifest, cluster, stop, group)
    ok = False
    try:
        code = run.start()
        if code is not None:
            return code
        demo = Demo(run.cluster, console, args.wait, stop)
        demo.run()
        demo.show_state()
        ok = demo.summary()
        run.failed = not ok
    except StartFailure as failure:
        if failure.child is None:
            console.line("Interrupted.")
            return 130
        run.failed = True
        report_start_failure(console, failure)
        return 1
    except DataDirError as e:  # writing the configs, before anything starts
        run.failed = True
        print(f"unison demo: {e}; nothing was started", file=sys.stderr)
        return 1
    except Interrupted:
        console.line("Interrupted.")
        return 130
    finally:
        run.clean_up()
    if ok and group.children:
        console.line(f"To keep a cluster running: {_this_command()} up {source}  "
                     "(then bash examples/curl-scenarios.sh)")
    return 0 if ok else 1


def _this_command() -> str:
    """How the user can run `unison` again: the path they ran (`.venv/bin/unison` after
    `make demo`), since the venv is not on PATH and Debian's `unison` is another program."""
    argv0 = Path(sys.argv[0])
    if argv0.name != "unison" or not argv0.exists():
        return "unison"
    try:
        return str(argv0.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(argv0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

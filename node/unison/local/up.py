"""`unison up FILE`: run a UnisonCluster manifest as processes on this machine.

Checks every port before starting anything, starts the datacenters, then the relayer,
then the CRDT client, waits for each to be ready, prints where everything listens and
streams the logs. Ctrl-C or SIGTERM stops it all (SIGTERM, wait, SIGKILL stragglers).
Exit codes: 0 stopped cleanly, 1 start-up or runtime failure, 2 bad manifest or usage.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType

from unison.local.cluster import (
    DEFAULT_CLIENT_PORT,
    READY_TIMEOUT,
    DataDirError,
    LocalCluster,
    ManifestError,
    display_path,
    endpoint_table,
    load_manifest,
    plan_local,
    report_start_failure,
    start_cluster,
    try_lines,
)
from unison.local.console import Console
from unison.local.procs import (
    ProcessGroup,
    StartFailure,
    describe_exit,
    port_problems,
    stopped_cleanly,
)


def add_cluster_args(p: argparse.ArgumentParser) -> None:
    """Options shared with `unison demo`."""
    p.add_argument("--data-dir", metavar="DIR",
                   help="where node data, rendered TOML and logs go "
                        "(default: ./.unison/<cluster name>)")
    p.add_argument("--client-port", type=_port, metavar="PORT",
                   help="port of the CRDT client's /state (default: the manifest's "
                        f"spec.client.statePort, else {DEFAULT_CLIENT_PORT})")
    p.add_argument("--port-offset", type=int, default=0, metavar="N",
                   help="add N to every port, to run a second cluster beside one on the "
                        "seed's ports (default: 0)")
    p.add_argument("--timeout", type=float, default=READY_TIMEOUT, metavar="SECONDS",
                   help=f"how long each part may take to become ready (default: {READY_TIMEOUT:.0f})")


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number, got {text!r}") from None
    if not 0 < value < 65536:
        raise argparse.ArgumentTypeError(f"port must be between 1 and 65535, got {value}")
    return value


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="unison up",
        description="Run a UnisonCluster manifest as local processes with the seed's ports "
                    "(HTTP 8001.., gRPC 4001.., ZeroMQ 5555..), no Kubernetes needed.",
        epilog="example: unison up examples/ad-campaign.yaml",
    )
    p.add_argument("file", metavar="FILE", help="UnisonCluster manifest (YAML)")
    add_cluster_args(p)
    p.add_argument("--no-logs", action="store_true", help="do not stream the processes' logs")
    return p.parse_args(argv)


def prepare(args: argparse.Namespace, prog: str) -> LocalCluster | int:
    """Manifest -> checked local plan with its configs written, or an exit code after
    printing why not."""
    try:
        manifest = load_manifest(args.file)
        cluster = plan_local(manifest, args.file, data_dir=args.data_dir,
                             client_port=args.client_port, port_offset=args.port_offset)
    except ManifestError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return 2
    problems = port_problems(cluster.port_uses())
    if problems:
        print(f"{prog}: cannot start cluster {cluster.name!r}; nothing was started:",
              file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        print("  Stop whatever holds the port (another `unison up`?), or run beside it with "
              "--port-offset N.", file=sys.stderr)
        return 1
    try:
        cluster.write_configs()
    except DataDirError as e:
        print(f"{prog}: {e}; nothing was started", file=sys.stderr)
        return 1
    return cluster


class StopRequest:
    """SIGINT/SIGTERM handler: the first asks for a clean stop, a second kills."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.count = 0
        self.group: ProcessGroup | None = None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        self.count += 1
        self.event.set()
        if self.count > 1 and self.group is not None:
            self.group.kill_all()

    def install(self) -> None:
        signal.signal(signal.SIGINT, self)
        signal.signal(signal.SIGTERM, self)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    prepared = prepare(args, "unison up")
    if isinstance(prepared, int):
        return prepared
    cluster = prepared
    console = Console()
    stop = StopRequest()
    stop.install()
    group = ProcessGroup(console)
    stop.group = group

    console.line(console.bold(f"Starting cluster {cluster.name!r} from {args.file}") +
                 f" (data in {display_path(cluster.data_dir)})")
    try:
        start_cluster(group, cluster.phases(), console, timeout=args.timeout,
                      interrupted=stop.event.is_set)
    except StartFailure as failure:
        if failure.child is None:
            console.line("Interrupted; stopping what was started.")
            group.stop()
            return 130
        report_start_failure(console, failure)
        console.line("Stopping everything that was started.")
        group.stop()
        return 1

    _show_cluster(console, cluster, follow_logs=not args.no_logs)
    if not args.no_logs:
        group.stream_logs()
    reported = _watch_until_stopped(console, group, stop)
    if reported is None:
        return 1
    console.line("Stopping the cluster (Ctrl-C again to kill) ...")
    codes = group.stop()
    clean = True
    for name, code in codes.items():
        if name in reported:
            continue
        if stopped_cleanly(code):
            console.line(f"  {console.ok_mark} {name} stopped")
        else:
            clean = False
            console.line(f"  {console.fail_mark} {name} stopped with {describe_exit(code)}")
    return 0 if clean and not reported else 1


def _show_cluster(console: Console, cluster: LocalCluster, *, follow_logs: bool) -> None:
    console.line()
    console.line(f"Cluster {cluster.name!r} (files under {display_path(cluster.data_dir)}/):")
    for line in endpoint_table(cluster):
        console.line("  " + line)
    console.line()
    console.line(console.bold("Try:"))
    for line in try_lines(cluster):
        console.line("  " + line)
    console.line()
    console.line(f"Cluster {cluster.name!r} is up. Ctrl-C stops it." +
                 (" Logs follow." if follow_logs else ""))


def _watch_until_stopped(console: Console, group: ProcessGroup,
                         stop: StopRequest) -> set[str] | None:
    """Report children that exit on their own until a stop is asked for; the names of those
    that exited, or None when every one has (then all is stopped already)."""
    reported: set[str] = set()
    while not stop.event.wait(0.2):
        for child in group.exited():
            if child.name not in reported:
                reported.add(child.name)
                code = child.exit_code()
                console.line(f"{console.fail_mark} {child.name} exited unexpectedly "
                             f"({describe_exit(code or 0)}); log: {display_path(child.spec.log_path)}"
                             "; the rest keep running")
        if len(reported) == len(group.children):
            console.line("Every process has exited.")
            group.stop()
            return None
    return reported


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

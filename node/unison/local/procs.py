"""Child processes for local mode: start, wait until ready, stream logs, stop.

Shared by `unison up` (foreground, logs streamed) and `unison demo` (background, quiet).
Children run in their own session so a terminal Ctrl-C reaches only us and we stop them
in order; on Linux they also get SIGTERM if we die without cleaning up.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from unison.local.console import Console

HOST = "127.0.0.1"


# ---------------------------------------------------------------- ports


@dataclass(frozen=True)
class PortUse:
    """A port some process of the cluster will bind, and what for (for messages)."""

    port: int
    owner: str  # process name, e.g. "dc2"
    what: str  # e.g. "gRPC"

    def describe(self) -> str:
        return f"{self.what} of {self.owner}"


def port_free(port: int) -> bool:
    """True when nothing listens on `port` (any address). SO_REUSEADDR so a connection
    lingering in TIME_WAIT from an earlier run does not count as "in use"."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
        except OSError as e:
            if e.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def port_problems(uses: Sequence[PortUse]) -> list[str]:
    """Every reason the cluster cannot bind its ports, phrased for a person; [] if none."""
    problems: list[str] = []
    first: dict[int, PortUse] = {}
    for use in uses:
        if use.port in first:
            problems.append(f"port {use.port} is needed twice: by the {first[use.port].describe()}"
                            f" and by the {use.describe()}")
        else:
            first[use.port] = use
    for use in first.values():
        if not port_free(use.port):
            problems.append(f"port {use.port} is already in use; the {use.describe()} needs it")
    return problems


# ---------------------------------------------------------------- one child


def http_ok(url: str, timeout: float = 1.0) -> bool:
    """GET url answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status == 200
    except (OSError, urllib.error.URLError, ValueError):
        return False


def _die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    # PR_SET_PDEATHSIG: the kernel sends SIGTERM to the child when we go away, so a
    # `kill -9` of `unison up` does not leave orphan nodes holding the seed's ports.
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


@dataclass
class ProcessSpec:
    name: str  # log prefix and table name: "dc1", "relayer", "client"
    argv: list[str]
    log_path: Path
    ready_url: str  # 200 here means ready


@dataclass
class Child:
    spec: ProcessSpec
    popen: subprocess.Popen[bytes] | None = None
    log_offset: int = 0  # where this run's output starts in the (appended) log file
    started_at: float = 0.0

    @property
    def name(self) -> str:
        return self.spec.name

    def start(self) -> None:
        self.spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.spec.log_path, "ab") as log:
            self.log_offset = log.tell()
            self.popen = subprocess.Popen(
                self.spec.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                start_new_session=True,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )
        self.started_at = time.monotonic()

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen else None

    def exit_code(self) -> int | None:
        """None while running (or never started)."""
        return None if self.popen is None else self.popen.poll()

    @property
    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def ready(self) -> bool:
        return self.running and http_ok(self.spec.ready_url)

    def signal(self, sig: int) -> None:
        if self.running:
            assert self.popen is not None
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(sig)

    def log_text(self) -> str:
        try:
            with open(self.spec.log_path, "rb") as f:
                f.seek(self.log_offset)
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 15) -> list[str]:
        return self.log_text().splitlines()[-lines:]


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def stopped_cleanly(code: int) -> bool:
    """Exit 0, or SIGTERM's default action (a child stopped before it set its handlers)."""
    return code in (0, -signal.SIGTERM)


# ---------------------------------------------------------------- log streaming


class _LogTail(threading.Thread):
    """Follows one child's log file and prints complete lines with a prefix."""

    def __init__(self, child: Child, prefix: str, console: Console, done: threading.Event):
        super().__init__(name=f"tail-{child.name}", daemon=True)
        self.child = child
        self.prefix = prefix
        self.console = console
        self.done = done

    def run(self) -> None:
        pending = b""
        try:
            f = open(self.child.spec.log_path, "rb")  # closed by the with below
        except OSError:
            return
        with f:
            f.seek(self.child.log_offset)
            while True:
                finished = self.done.is_set()  # read once more after the stop signal
                chunk = f.read(65536)
                if chunk:
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        self.console.line(self.prefix + line.decode("utf-8", "replace"))
                    continue
                if finished:
                    break
                time.sleep(0.1)
        if pending:
            self.console.line(self.prefix + pending.decode("utf-8", "replace"))


# ---------------------------------------------------------------- the group


class StartFailure(RuntimeError):
    """A child died or never became ready; `child` is the one to blame (None: interrupted)."""

    def __init__(self, message: str, child: Child | None = None) -> None:
        super().__init__(message)
        self.child = child


@dataclass
class ProcessGroup:
    console: Console
    children: list[Child] = field(default_factory=list)
    _tails: list[_LogTail] = field(default_factory=list)
    _tails_done: threading.Event = field(default_factory=threading.Event)

    def start(self, spec: ProcessSpec) -> Child:
        child = Child(spec)
        self.children.append(child)
        child.start()
        return child

    def wait_ready(self, batch: Sequence[Child], timeout: float,
                   interrupted: Callable[[], bool] = lambda: False) -> None:
        """Wait until every child in `batch` answers its ready URL, showing progress.
        Raises StartFailure when one exits, the time runs out or we are interrupted."""
        waiting = list(batch)
        t0 = time.monotonic()
        with self.console.progress() as progress:
            while waiting:
                for child in list(waiting):
                    code = child.exit_code()
                    if code is not None:
                        raise StartFailure(f"{child.name} exited during start-up "
                                           f"({describe_exit(code)})", child)
                    if child.ready():
                        waiting.remove(child)
                        progress.done(f"{child.name:<8} ready after "
                                      f"{time.monotonic() - child.started_at:.1f}s")
                if not waiting:
                    break
                elapsed = time.monotonic() - t0
                if interrupted():
                    raise StartFailure("interrupted during start-up")
                if elapsed > timeout:
                    child = waiting[0]
                    raise StartFailure(f"{child.name} did not become ready within {timeout:.0f}s "
                                       f"({child.spec.ready_url})", child)
                names = ", ".join(c.name for c in waiting)
                progress.update(f"waiting for {names} ... {elapsed:.0f}s")
                time.sleep(0.1)

    def exited(self) -> list[Child]:
        return [c for c in self.children if c.popen is not None and c.exit_code() is not None]

    def stream_logs(self) -> None:
        width = max((len(c.name) for c in self.children), default=0)
        for i, child in enumerate(self.children):
            prefix = self.console.tag(f"[{child.name}]".ljust(width + 2), i) + " "
            tail = _LogTail(child, prefix, self.console, self._tails_done)
            tail.start()
            self._tails.append(tail)

    def stop(self, grace: float = 10.0) -> dict[str, int]:
        """Stop in reverse start order (client, relayer, datacenters) so nothing logs
        about a peer that just vanished: SIGTERM, wait up to `grace` seconds, SIGKILL.
        Returns name -> exit code for every started child."""
        for child in reversed(self.children):
            if not child.running:
                continue
            assert child.popen is not None
            child.signal(signal.SIGTERM)
            try:
                child.popen.wait(grace)
            except subprocess.TimeoutExpired:
                self.console.line(f"{child.name} did not stop within {grace:.0f}s; killing it")
                child.signal(signal.SIGKILL)
                child.popen.wait()
        self._tails_done.set()
        for tail in self._tails:
            tail.join(timeout=5)
        return {c.name: code for c in self.children if (code := c.exit_code()) is not None}

    def kill_all(self) -> None:
        for child in self.children:
            child.signal(signal.SIGKILL)

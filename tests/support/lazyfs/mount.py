"""Mount LazyFS from a test, cut its power, mount it again ("reboot").

    with LazyFS(tmp / "disk") as fs:       # mounted at fs.mount
        ... run processes on fs.mount ...
        fs.cut()                            # everything not synced is gone; EIO from now on
        ... kill the processes ...
        fs.reboot()                         # unmount, mount again on what was durable
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[3]
REQUIRE_ENV = "UNISON_REQUIRE_FUSE"


def unavailable() -> str | None:
    """Why a FUSE filesystem cannot be mounted here, or None when it can."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse does not exist"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is not installed (Debian package fuse3)"
    try:
        import mfusepy  # noqa: F401  (finds libfuse at import)
    except (ImportError, OSError) as e:
        return f"mfusepy cannot be used: {e}"
    return None


class LazyFS:
    """One LazyFS mount: `root/backing` served at `root/mnt`, controlled over `root/ctl`."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.backing = root / "backing"
        self.mount = root / "mnt"
        self.control = root / "ctl"
        self.log_path = root / "lazyfs.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.cuts: list[dict[str, Any]] = []

    def __enter__(self) -> LazyFS:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self, timeout: float = 30.0) -> None:
        for d in (self.backing, self.mount):
            d.mkdir(parents=True, exist_ok=True)
        self.control.unlink(missing_ok=True)
        trash = self.root / "trash"
        shutil.rmtree(trash, ignore_errors=True)
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.support.lazyfs.daemon", str(self.backing),
                 str(trash), str(self.mount), str(self.control)],
                cwd=REPO, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while not (self._mounted() and self.control.exists()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"LazyFS did not mount {self.mount}:\n{self.logs()}")
            time.sleep(0.02)
        log.info("LazyFS mounted at %s (pid %d)", self.mount, self.proc.pid)

    def _mounted(self) -> bool:
        with open("/proc/self/mounts") as f:
            return any(line.split()[1] == str(self.mount) for line in f)

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def request(self, cmd: str, io_timeout: float = 60.0, **args: Any) -> Any:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(io_timeout)
            s.connect(str(self.control))
            s.sendall(json.dumps({"cmd": cmd, **args}).encode() + b"\n")
            with s.makefile("rb") as f:
                answer = json.loads(f.readline())
        if not answer["ok"]:
            raise RuntimeError(f"LazyFS {cmd}: {answer['error']}")
        return answer["result"]

    def stats(self) -> dict[str, Any]:
        return self.request("stats")

    def trace(self) -> list[tuple[str, str]]:
        return [tuple(e) for e in self.request("trace")]

    def cut(self, torn_seed: int | None = None) -> dict[str, Any]:
        """Power off now: what was not synced is dropped, every operation fails."""
        report = self.request("cut", torn_seed=torn_seed)
        self.cuts.append(report)
        return report

    def arm(self, stages: list[dict[str, Any]], when: str = "after",
            torn_seed: int | None = None) -> None:
        """Cut by itself at the operation that completes `stages` (see daemon.py)."""
        self.request("arm", stages=stages, when=when, torn_seed=torn_seed)

    def disarm(self) -> None:
        self.request("disarm")

    def wait_cut(self, timeout: float) -> dict[str, Any] | None:
        """The report of the armed cut once it happened (None: not within timeout)."""
        report = self.request("wait_cut", io_timeout=timeout + 5, timeout=timeout)
        if report is not None and report not in self.cuts:
            self.cuts.append(report)
        return report

    def reboot(self) -> None:
        """Unmount (processes using it must be gone) and mount the durable state again."""
        self.stop()
        self.start()

    def stop(self) -> None:
        """Unmount; a daemon that does not exit is killed and the mount detached."""
        if self.proc is None:
            return
        if self._mounted():  # not os.path.ismount: a cut filesystem answers stat with EIO
            done = subprocess.run(["fusermount3", "-u", str(self.mount)], capture_output=True)
            if done.returncode != 0:
                log.warning("fusermount3 -u %s: %s; detaching lazily", self.mount,
                            done.stderr.decode(errors="replace").strip())
                subprocess.run(["fusermount3", "-u", "-z", str(self.mount)], capture_output=True)
        t = time.monotonic()
        try:
            self.proc.wait(10)
            log.info("LazyFS at %s unmounted in %.2fs", self.mount, time.monotonic() - t)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            subprocess.run(["fusermount3", "-u", "-z", str(self.mount)], capture_output=True)
        self.proc = None

"""The LazyFS FUSE process: `python -m tests.support.lazyfs.daemon BACKING TRASH MOUNT CONTROL`.

Serves MOUNT from BACKING through the durability model (model.py) and answers JSON-line
commands on the Unix socket CONTROL (see mount.py for the client):

- `{"cmd": "stats"}`: operation counts and what is pending
- `{"cmd": "cut", "torn_seed": N?}`: the power cut: drop what is not durable, then answer
  EIO to every operation until unmounted (the machine is off)
- `{"cmd": "arm", "stages": [{"op", "glob", "contains", "count"}...], "when": "before" |
  "after", "torn_seed": N?}`: cut by itself inside the operation that completes the last stage (stages
  match in order, `count` times each; `op` and `glob` (the file name) are shell
  patterns, op one of create, open, write, truncate, fsync, fsyncdir, rename, unlink,
  mkdir, rmdir; `contains`: text the written data must contain)
- `{"cmd": "disarm"}`: forget the armed cut
- `{"cmd": "wait_cut", "timeout": s}`: block until a cut happened; its report
- `{"cmd": "trace"}`: the last operations seen (op, path), oldest first

Every operation runs under one lock, so a cut is atomic with respect to them.
"""

from __future__ import annotations

import collections
import errno
import fnmatch
import itertools
import json
import logging
import os
import random
import socket
import sys
import threading
from typing import Any

import mfusepy

from tests.support.lazyfs.model import Model

log = logging.getLogger("lazyfs")

TRACE_LEN = 100_000


class _Trigger:
    """Stages matched in order; the last one's operation cuts the power."""

    def __init__(self, stages: list[dict[str, Any]], when: str, torn_seed: int | None) -> None:
        self.stages = [dict(s, left=int(s.get("count", 1))) for s in stages]
        self.when = when
        self.torn_seed = torn_seed

    def step(self, op: str, path: str, data: bytes) -> bool:
        """Count (op, path, written data); True when every stage has matched."""
        stage = self.stages[0]
        if (fnmatch.fnmatch(op, stage["op"])
                and fnmatch.fnmatch(os.path.basename(path), stage.get("glob", "*"))
                and stage.get("contains", "").encode() in data):
            stage["left"] -= 1
            if stage["left"] <= 0:
                self.stages.pop(0)
        return not self.stages


class LazyOps(mfusepy.Operations):
    use_ns = True
    flag_nopath = True  # with nullpath_ok: handles keep working after an unlink
    flag_nullpath_ok = True

    def __init__(self, model: Model) -> None:
        self.model = model
        self._mu = threading.RLock()
        self.handles: dict[int, tuple[int, str]] = {}  # fh -> (backing fd, path at open)
        self.dirs: dict[int, str] = {}  # directory fh -> its path
        self._dir_fhs = itertools.count(1)
        self.counts: collections.Counter[str] = collections.Counter()
        self.trace: collections.deque[tuple[str, str]] = collections.deque(maxlen=TRACE_LEN)
        self.trigger: _Trigger | None = None
        self.cut_report: dict[str, Any] | None = None
        self.cut_done = threading.Event()

    # ------------------------------------------------------------ bookkeeping

    def _enter(self, op: str, path: str, stage: str, data: bytes = b"") -> None:
        """Called under the lock before ("before") and after ("after") each operation."""
        self._alive()
        if stage == "before":
            self.counts[op] += 1
            self.trace.append((op, path))
        t = self.trigger
        if t is None or t.when != stage or not t.step(op, path, data):
            return
        self.trigger = None
        self.cut(t.torn_seed, f"armed: {op} {path} ({stage})")
        raise mfusepy.FuseOSError(errno.EIO)

    def _alive(self) -> None:
        if self.cut_report is not None:
            raise mfusepy.FuseOSError(errno.EIO)  # the power is off

    def cut(self, torn_seed: int | None, why: str) -> dict[str, Any]:
        with self._mu:
            if self.cut_report is None:
                torn = random.Random(torn_seed) if torn_seed is not None else None
                self.cut_report = {"why": why, **self.model.cut(torn)}
                self.cut_done.set()
            return self.cut_report

    def _run(self, op: str, path: str, fn: Any, data: bytes = b"") -> Any:
        with self._mu:
            self._enter(op, path, "before", data)
            result = fn()
            self._enter(op, path, "after", data)
            return result

    def _fd(self, fh: int) -> tuple[int, str]:
        try:
            return self.handles[fh]
        except KeyError:
            raise mfusepy.FuseOSError(errno.EBADF) from None

    def _new_handle(self, fd: int, path: str) -> int:
        self.handles[fd] = (fd, path)
        return fd

    # ------------------------------------------------------------ metadata

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        with self._mu:
            self._alive()
            st = os.fstat(self._fd(fh)[0]) if fh is not None else os.lstat(self.model.real(path))
        keys = ("st_mode", "st_ino", "st_nlink", "st_uid", "st_gid", "st_size", "st_blocks",
                "st_atime_ns", "st_mtime_ns", "st_ctime_ns")
        out = {k.replace("_ns", ""): getattr(st, k) for k in keys}
        out["st_blksize"] = 4096
        return out

    def readdir(self, path: str, fh: int) -> list[str]:
        with self._mu:
            self._alive()
            return [".", "..", *os.listdir(self.model.real(self.dirs.get(fh, path)))]

    def opendir(self, path: str) -> int:
        with self._mu:  # fsyncdir gets no path (nopath): remember it by handle
            fh = next(self._dir_fhs)
            self.dirs[fh] = path
            return fh

    def releasedir(self, path: str, fh: int) -> int:
        with self._mu:
            self.dirs.pop(fh, None)
        return 0

    def fsyncdir(self, path: str, datasync: int, fh: int) -> int:
        at = self.dirs.get(fh, path)
        self._run("fsyncdir", at, lambda: self.model.fsyncdir(at))
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        st = os.statvfs(self.model.root)
        return {k: getattr(st, k) for k in ("f_bsize", "f_frsize", "f_blocks", "f_bfree",
                                             "f_bavail", "f_files", "f_ffree", "f_namemax")}

    def chmod(self, path: str, mode: int) -> int:
        with self._mu:
            os.chmod(self.model.real(path), mode)
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        with self._mu:
            os.utime(self.model.real(path), ns=times)
        return 0

    def access(self, path: str, amode: int) -> int:
        return 0

    # ------------------------------------------------------------ entries

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        flags = (fi or os.O_RDWR) & ~(os.O_APPEND | os.O_CREAT)

        def go() -> int:
            return self._new_handle(self.model.create(path, flags, mode), path)
        return self._run("create", path, go)

    def mkdir(self, path: str, mode: int) -> int:
        self._run("mkdir", path, lambda: self.model.mkdir(path, mode))
        return 0

    def unlink(self, path: str) -> int:
        self._run("unlink", path, lambda: self.model.unlink(path))
        return 0

    def rmdir(self, path: str) -> int:
        self._run("rmdir", path, lambda: self.model.rmdir(path))
        return 0

    def rename(self, old: str, new: str) -> int:
        self._run("rename", new, lambda: self.model.rename(old, new))
        return 0

    def link(self, target: str, source: str) -> int:
        raise mfusepy.FuseOSError(errno.EPERM)

    def symlink(self, target: str, source: str) -> int:
        raise mfusepy.FuseOSError(errno.EPERM)

    # ------------------------------------------------------------ data

    def open(self, path: str, flags: int) -> int:
        trunc = flags & os.O_TRUNC  # with atomic_o_trunc the kernel leaves it to us
        flags &= ~(os.O_APPEND | os.O_CREAT | os.O_TRUNC)  # the kernel passes offsets

        def go() -> int:
            fd = os.open(self.model.real(path), flags)
            if trunc:
                self.model.truncate(fd, path, 0)
            return self._new_handle(fd, path)
        return self._run("open", path, go)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        with self._mu:
            self._alive()
            return os.pread(self._fd(fh)[0], size, offset)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        fd, at = self._fd(fh)
        return self._run("write", at, lambda: self.model.write(fd, at, data, offset), data)

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        with self._mu:
            if fh is not None:
                fd, at = self._fd(fh)
                self._run("truncate", at, lambda: self.model.truncate(fd, at, length))
                return 0
            fd = os.open(self.model.real(path), os.O_RDWR)
            try:
                self._run("truncate", path, lambda: self.model.truncate(fd, path, length))
            finally:
                os.close(fd)
        return 0

    def fallocate(self, path: str, mode: int, offset: int, size: int, fh: int) -> int:
        fd, at = self._fd(fh)
        if mode == 1:  # FALLOC_FL_KEEP_SIZE: preallocation changes nothing one can read
            return 0
        if mode != 0:
            raise mfusepy.FuseOSError(errno.EOPNOTSUPP)
        with self._mu:
            if offset + size > os.fstat(fd).st_size:
                self._run("truncate", at, lambda: self.model.truncate(fd, at, offset + size))
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        fd, at = self._fd(fh)
        self._run("fsync", at, lambda: self.model.fsync(fd))
        return 0

    def flush(self, path: str, fh: int) -> int:
        return 0

    def release(self, path: str, fh: int) -> int:
        with self._mu:
            fd, _ = self.handles.pop(fh, (-1, ""))
            if fd >= 0:
                os.close(fd)
        return 0


def _answer(ops: LazyOps, req: dict[str, Any]) -> Any:
    cmd = req.get("cmd")
    if cmd == "stats":
        with ops._mu:
            return {"counts": dict(ops.counts), "cut": ops.cut_report is not None,
                    **ops.model.pending()}
    if cmd == "cut":
        return ops.cut(req.get("torn_seed"), "cut by the test")
    if cmd == "arm":
        with ops._mu:
            ops.trigger = _Trigger(req["stages"], req.get("when", "after"), req.get("torn_seed"))
        return {"armed": True}
    if cmd == "disarm":
        with ops._mu:
            ops.trigger = None
        return {"armed": False}
    if cmd == "wait_cut":
        return ops.cut_report if ops.cut_done.wait(req.get("timeout", 30)) else None
    if cmd == "trace":
        with ops._mu:
            return list(ops.trace)
    raise ValueError(f"unknown command {cmd!r}")


def _control(ops: LazyOps, path: str) -> None:
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen()
    while True:
        conn, _ = srv.accept()
        threading.Thread(target=_session, args=(ops, conn), daemon=True).start()


def _session(ops: LazyOps, conn: socket.socket) -> None:
    with conn, conn.makefile("rwb") as f:
        for line in f:
            try:
                out = {"ok": True, "result": _answer(ops, json.loads(line))}
            except Exception as e:  # the test sees it in its answer
                log.exception("control command failed")
                out = {"ok": False, "error": f"{type(e).__name__}: {e}"}
            f.write(json.dumps(out).encode() + b"\n")
            f.flush()


class _FUSE(mfusepy.FUSE):
    def truncate_fuse_3(self, path: bytes | None, length: int, fip: Any) -> int:
        # mfusepy drops the handle of an ftruncate(); with nopath there is no path either.
        fh = fip.contents.fh if fip else None
        return self.operations.truncate(None if path is None else path.decode(), length, fh)


def main(backing: str, trash: str, mount: str, control: str) -> None:
    ops = LazyOps(Model(backing, trash))
    threading.Thread(target=_control, args=(ops, control), daemon=True).start()
    # hard_remove: an unlinked open file is unlinked at once (no .fuse_hidden rename);
    # no attribute/entry caching, so the kernel asks us about every lookup.
    _FUSE(ops, mount, foreground=True, nothreads=False, hard_remove=True,
                 attr_timeout=0, entry_timeout=0, negative_timeout=0, fsname="lazyfs")


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s lazyfs %(message)s")
    main(*sys.argv[1:5])

"""What a disk would still hold after a power cut: the durability model behind LazyFS.

Every change goes straight to the backing directory (so reads see it at once), and the
model keeps what it needs to take the change back:

- file data: per file (keyed by the backing inode, so renames and unlinks do not lose
  it), a journal of the writes and truncations since its last fsync/fdatasync, each with
  the size before it and the bytes it overwrote. Undone newest first, the journal brings
  the file back to its content at the last sync. Appends, RocksDB's usual write, cost
  no copy at all. A synced file has no journal.
- directory entries: every create, mkdir, unlink, rmdir and rename since the fsync of
  the directories it touched (a rename across directories needs both). An unlinked or
  replaced file is moved to a trash directory instead of being deleted, so undoing the
  entry change brings it back with its (synced) content.

`cut()` undoes all of it: the backing directory then holds exactly what was synced, as a
machine that lost power would. `cut(torn=Random)` keeps a random prefix of each file's
and each directory's unsynced changes instead (the page cache wrote some back before the
power went), which is also a state a real disk can be left in.

Not modelled: directory renames (refused with EXDEV: RocksDB never renames a
directory), hard and symbolic links (refused), extended attributes.
"""

from __future__ import annotations

import itertools
import logging
import os
import random
import shutil
from dataclasses import dataclass, field

log = logging.getLogger(__name__)


@dataclass
class _Dirty:
    """The unsynced changes of one file: (size before, offset, overwritten bytes)."""

    fd: int  # read-write, on the inode itself: works after a rename or an unlink
    path: str  # where it was last seen, for reports
    journal: list[tuple[int, int, bytes]] = field(default_factory=list)

    def unsynced_bytes(self) -> int:
        return sum(max(len(old), 1) for _, _, old in self.journal)


@dataclass
class _DirOp:
    """One directory entry change not yet durable: undo it by `kind`."""

    kind: str  # create, mkdir, unlink, rmdir, rename
    path: str  # the entry made (create, mkdir, rename: the new name) or removed
    dirs: set[str]  # directories whose fsync it still waits for
    source: str = ""  # rename: the old name
    trashed: str = ""  # unlink, rename over a file, rmdir: where the old entry went


def parent(path: str) -> str:
    return os.path.dirname(path.rstrip("/")) or "/"


class Model:
    """The backing directory `root` and what is not yet durable in it. Paths are the
    mount's ("/a/b"); `trash` must be on the same filesystem as `root`."""

    def __init__(self, root: str, trash: str) -> None:
        self.root = os.path.realpath(root)
        self.trash = os.path.realpath(trash)
        os.makedirs(self.trash, exist_ok=True)
        self._dirty: dict[int, _Dirty] = {}
        self._dirops: list[_DirOp] = []
        self._trash_seq = itertools.count()

    def real(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    # ------------------------------------------------------------ file data

    def _dirty_of(self, fd: int, path: str) -> _Dirty:
        ino = os.fstat(fd).st_ino
        d = self._dirty.get(ino)
        if d is None:
            # Reopen the inode read-write: the handle may be read-only or O_APPEND.
            d = self._dirty[ino] = _Dirty(os.open(f"/proc/self/fd/{fd}", os.O_RDWR), path)
        return d

    def write(self, fd: int, path: str, data: bytes, offset: int) -> int:
        d = self._dirty_of(fd, path)  # its descriptor reads, whatever mode `fd` has
        size = os.fstat(d.fd).st_size
        old = os.pread(d.fd, min(len(data), size - offset), offset) if offset < size else b""
        d.journal.append((size, offset, old))
        return os.pwrite(d.fd, data, offset)

    def truncate(self, fd: int, path: str, length: int) -> None:
        d = self._dirty_of(fd, path)
        size = os.fstat(d.fd).st_size
        old = os.pread(d.fd, size - length, length) if length < size else b""
        d.journal.append((size, min(length, size), old))
        os.ftruncate(d.fd, length)

    def fsync(self, fd: int) -> None:
        """The file's data is durable (fsync and fdatasync alike: the size is data)."""
        d = self._dirty.pop(os.fstat(fd).st_ino, None)
        if d is not None:
            os.close(d.fd)

    # ------------------------------------------------------------ directory entries

    def _to_trash(self, path: str) -> str:
        dest = os.path.join(self.trash, f"{next(self._trash_seq)}")
        os.rename(self.real(path), dest)
        return dest

    def create(self, path: str, flags: int, mode: int) -> int:
        """Open `path` with O_CREAT; an entry change only when it did not exist."""
        existed = os.path.lexists(self.real(path))
        fd = os.open(self.real(path), flags | os.O_CREAT, mode)
        if not existed:
            self._dirops.append(_DirOp("create", path, {parent(path)}))
        return fd

    def mkdir(self, path: str, mode: int) -> None:
        os.mkdir(self.real(path), mode)
        self._dirops.append(_DirOp("mkdir", path, {parent(path)}))

    def unlink(self, path: str) -> None:
        self._dirops.append(_DirOp("unlink", path, {parent(path)}, trashed=self._to_trash(path)))

    def rmdir(self, path: str) -> None:
        if os.listdir(self.real(path)):
            raise OSError(39, "Directory not empty")  # ENOTEMPTY
        self._dirops.append(_DirOp("rmdir", path, {parent(path)}, trashed=self._to_trash(path)))

    def rename(self, old: str, new: str) -> None:
        if os.path.isdir(self.real(old)):
            raise OSError(18, "directory renames are not modelled")  # EXDEV: callers copy
        os.stat(self.real(old))  # ENOENT before anything moves
        trashed = self._to_trash(new) if os.path.lexists(self.real(new)) else ""
        os.rename(self.real(old), self.real(new))
        self._dirops.append(_DirOp("rename", new, {parent(old), parent(new)}, old, trashed))

    def fsyncdir(self, path: str) -> None:
        """Every entry change in `path` so far is durable (a rename once both sides are)."""
        keep = []
        for op in self._dirops:
            op.dirs.discard(path)
            if op.dirs:
                keep.append(op)
            elif op.trashed:
                _remove(op.trashed)  # the removal is durable: the old entry is gone
        self._dirops = keep

    # ------------------------------------------------------------ the power cut

    def pending(self) -> dict[str, int]:
        return {"dirty_files": len(self._dirty),
                "unsynced_writes": sum(len(d.journal) for d in self._dirty.values()),
                "unsynced_dir_ops": len(self._dirops)}

    def cut(self, torn: random.Random | None = None) -> dict[str, object]:
        """Drop everything not durable (with `torn`: a random suffix of each file's and
        directory's changes); return what was dropped."""
        files = {}
        for d in self._dirty.values():
            keep = torn.randint(0, len(d.journal)) if torn else 0
            for size, offset, old in reversed(d.journal[keep:]):
                os.ftruncate(d.fd, size)
                if old:
                    os.pwrite(d.fd, old, offset)
            if keep < len(d.journal):
                files[d.path] = len(d.journal) - keep
            os.close(d.fd)
        self._dirty.clear()
        undone = self._undo_dirops(torn)
        for name in os.listdir(self.trash):  # what is left there was removed for good
            _remove(os.path.join(self.trash, name))
        report = {"files_rolled_back": files, "dir_ops_undone": undone}
        log.info("power cut: %s", report)
        return report

    def _undo_dirops(self, torn: random.Random | None) -> list[str]:
        ops = self._dirops
        if torn:  # each directory keeps a prefix of its changes, in order
            by_dir: dict[str, list[int]] = {}
            for i, op in enumerate(ops):
                for d in op.dirs:
                    by_dir.setdefault(d, []).append(i)
            lost = set()
            for idx in by_dir.values():
                lost.update(idx[torn.randint(0, len(idx)):])
            ops = [op for i, op in enumerate(ops) if i in lost]
        undone = []
        for op in reversed(ops):
            self._undo(op)
            undone.append(f"{op.kind} {op.source + ' -> ' if op.source else ''}{op.path}")
        self._dirops = []
        return undone

    def _undo(self, op: _DirOp) -> None:
        real = self.real(op.path)
        if op.kind in ("create", "mkdir"):
            if os.path.lexists(real):
                _remove(real)
        elif op.kind == "rename":
            if os.path.lexists(real) and not os.path.lexists(self.real(op.source)):
                os.rename(real, self.real(op.source))
            if op.trashed and os.path.lexists(op.trashed):
                os.rename(op.trashed, real)
        elif op.trashed and os.path.lexists(op.trashed) and os.path.isdir(parent(real)):
            if os.path.lexists(real):
                _remove(real)
            os.rename(op.trashed, real)  # unlink, rmdir: the entry comes back

    def close(self) -> None:
        for d in self._dirty.values():
            os.close(d.fd)
        self._dirty.clear()


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        os.unlink(path)

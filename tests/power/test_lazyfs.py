"""LazyFS itself, and the WAL sync helper on it.

The model is checked on a plain directory (no FUSE needed); the helper runs as the node
runs it, against files on a mounted LazyFS, and is asked the issue's question directly:
does it make a WAL file created a moment ago durable, with the directory entry naming it?
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from unison.storage import wal_sync_helper
from unison.storage.layout import sync_ancestors
from unison.storage.wal_sync_helper import OK, REQUEST

from tests.power.harness import Machine
from tests.support.lazyfs.model import Model


@pytest.fixture
def model(tmp_path: Path) -> Model:
    (tmp_path / "root").mkdir()
    return Model(str(tmp_path / "root"), str(tmp_path / "trash"))


def _open(model: Model, path: str) -> int:
    return model.create(path, os.O_RDWR, 0o644)


def test_a_cut_keeps_synced_data_and_drops_the_rest(model: Model) -> None:
    fd = _open(model, "/f")
    model.fsyncdir("/")
    model.write(fd, "/f", b"hello world", 0)
    model.fsync(fd)
    model.write(fd, "/f", b"HELLO", 0)  # overwrites synced bytes
    model.write(fd, "/f", b" and more", 11)  # appends
    model.truncate(fd, "/f", 3)
    report = model.cut()
    assert Path(model.real("/f")).read_bytes() == b"hello world"
    assert report["files_rolled_back"] == {"/f": 3}
    os.close(fd)


def test_entries_need_their_directory_synced(model: Model) -> None:
    for name in ("/kept", "/replaced", "/gone"):
        fd = _open(model, name)
        model.write(fd, name, name.encode(), 0)
        model.fsync(fd)
        os.close(fd)
    model.fsyncdir("/")
    model.mkdir("/d", 0o755)
    fd = _open(model, "/new")
    model.fsync(fd)  # its data is durable, its name is not
    os.close(fd)
    model.rename("/kept", "/replaced")
    model.unlink("/gone")
    model.cut()
    root = Path(model.root)
    assert sorted(os.listdir(root)) == ["gone", "kept", "replaced"]
    assert (root / "replaced").read_bytes() == b"/replaced"
    assert (root / "gone").read_bytes() == b"/gone"


def test_a_synced_directory_keeps_its_entries(model: Model) -> None:
    fd = _open(model, "/a")
    os.close(fd)
    model.rename("/a", "/b")
    model.fsyncdir("/")
    model.cut()
    assert os.listdir(model.root) == ["b"]


def test_a_torn_cut_keeps_a_prefix_of_each_file(model: Model) -> None:
    fd = _open(model, "/f")
    model.fsyncdir("/")
    for i in range(10):
        model.write(fd, "/f", bytes([65 + i]), i)
    model.cut(torn=random.Random(3))
    kept = Path(model.real("/f")).read_bytes()
    assert kept == b"ABCDEFGHIJ"[:len(kept)]
    os.close(fd)


def _helper(directory: Path) -> tuple[subprocess.Popen[bytes], socket.socket]:
    ours, theirs = socket.socketpair()
    proc = subprocess.Popen([sys.executable, "-I", wal_sync_helper.__file__, str(directory),
                             str(theirs.fileno())], pass_fds=(theirs.fileno(),))
    theirs.close()
    return proc, ours


def test_the_helper_syncs_a_new_wal_file_and_its_entry(
        machine: Callable[[str], Machine]) -> None:
    """Files appear one by one, each written and then synced through the helper as a
    commit is: after a cut, each is there with everything written before the last sync,
    and a file written after it is gone."""
    m = machine("disk")
    db = m.fs.mount / "base" / "ns"
    db.mkdir(parents=True)  # as the node makes it, and syncs the entries naming it when
    sync_ancestors(str(db))  # the store opens, before the helper starts
    proc, sock = _helper(db)
    try:
        for i in range(1, 6):
            with open(db / f"{i:06d}.log", "ab") as f:
                f.write(b"record %d\n" % i)
                f.flush()
                sock.sendall(REQUEST)
                assert sock.recv(64) == OK
                f.write(b"not synced\n")  # written after the answer: may go
        with open(db / "000099.log", "wb") as f:
            f.write(b"never synced")
    finally:
        sock.close()
        proc.wait(10)
    m.fs.cut()
    m.fs.reboot()
    assert sorted(os.listdir(db)) == [f"{i:06d}.log" for i in range(1, 6)]
    for i in range(1, 5):  # every live WAL file is synced on each request
        assert (db / f"{i:06d}.log").read_bytes() == b"record %d\nnot synced\n" % i
    assert (db / "000005.log").read_bytes() == b"record 5\n"

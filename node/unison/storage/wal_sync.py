"""Makes a RocksDB write-ahead log durable from a helper process.

Why a process: the synced write is the one blocking call on every commit. Run in a
thread, its hand-off costs more than the fsync itself, because the thread must win the
GIL back from a busy event loop twice per batch (measured: about 20 µs per PUT, a sixth
of the node's CPU per request). A helper process has its own interpreter, so the loop
only sends one byte and later reads one back.

How: the node writes each batch with `sync=False`, so RocksDB has handed the WAL
records to the kernel when `write()` returns. It then asks the helper, which
`fdatasync`s every live `*.log` file in the database directory (the WAL, plus older ones
not yet obsolete) and `fsync`s the directory when a new log file appeared (its name
must survive a power cut too). On Linux `fdatasync` flushes the file, whichever
descriptor wrote it. The node acknowledges the batch only after the helper answers.

The helper is `wal_sync_helper.py`, run as a script.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import socket
import subprocess
import sys

from unison.storage import wal_sync_helper as helper_script
from unison.storage.wal_sync_helper import OK, REQUEST

log = logging.getLogger(__name__)


class WalSyncerGone(RuntimeError):
    """The helper process is no longer there; the caller syncs in-process instead."""


class WalSyncer:
    """The node's end. Requests may overlap (the group commit's, a retention trim's, the
    interval mode's periodic one): the helper answers each in the order it was sent, so
    every answer resolves the oldest waiter, even one whose caller was cancelled."""

    def __init__(self, directory: str, proc: subprocess.Popen[bytes], sock: socket.socket) -> None:
        self.directory = directory
        self.proc = proc
        self._sock = sock
        self._buf = b""
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._lost: str | None = None  # why the helper can no longer be used
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(sock.fileno(), self._readable)

    @classmethod
    def spawn(cls, directory: str) -> WalSyncer:
        """Start the helper for `directory` (must be called on the event loop)."""
        ours, theirs = socket.socketpair()
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", helper_script.__file__, directory, str(theirs.fileno())],
                pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL, close_fds=True)
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        ours.setblocking(False)
        return cls(directory, proc, ours)

    async def sync(self) -> None:
        """Return once everything written to the WAL so far is on stable storage.
        Raises OSError if the helper's fdatasync failed, WalSyncerGone if it died."""
        if self._lost is not None:
            raise WalSyncerGone(self._lost)
        fut = self._loop.create_future()
        try:
            self._sock.send(REQUEST)
        except OSError as e:
            self._lose(f"WAL sync helper (pid {self.proc.pid}) gone: {e}")
            raise WalSyncerGone(self._lost) from None
        self._waiters.append(fut)
        await fut

    def _readable(self) -> None:
        try:
            data = self._sock.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:  # it closed its end: it is exiting, or was killed
            code = self.proc.poll()  # never wait here: this runs on the event loop
            self._lose(f"WAL sync helper (pid {self.proc.pid}) exited"
                       + (f" with code {code}" if code is not None else ""))
            return
        self._buf += data
        while self._buf:
            if self._buf[:1] == OK:
                self._buf = self._buf[1:]
                self._resolve(None)
            elif b"\n" in self._buf:
                line, _, self._buf = self._buf.partition(b"\n")
                self._resolve(OSError(f"fdatasync of the WAL in {self.directory} failed: "
                                      f"{line[1:].decode(errors='replace')}"))
            else:
                return  # an error message still arriving

    def _resolve(self, outcome: BaseException | None) -> None:
        """The oldest request's answer."""
        if not self._waiters:
            return
        fut = self._waiters.popleft()
        if fut.done():  # its caller was cancelled
            return
        if outcome is None:
            fut.set_result(None)
        else:
            fut.set_exception(outcome)

    def _lose(self, why: str) -> None:
        if self._lost is None:
            self._lost = why
        if self._sock.fileno() >= 0:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
        while self._waiters:
            self._resolve(WalSyncerGone(self._lost))

    async def close(self) -> None:
        """Stop the helper: it exits on end of input; killed if it does not within 5 s."""
        self._lose("WAL sync helper closed")
        for _ in range(500):
            if self.proc.poll() is not None:
                return
            await asyncio.sleep(0.01)
        self.proc.kill()
        self.proc.wait()

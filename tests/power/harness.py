"""Power-loss harness: real nodes on LazyFS, writers with a recorded history of
acknowledgements, and the checks every cut must pass.

A "machine" is one LazyFS mount and the node processes whose data directory is on it.
`Machine.power_cut()` cuts the filesystem's power (what was not synced is gone, every
further operation fails), kills every process of the node's session at once (the node
and its WAL sync helper, as a power loss would), mounts the disk again on what was
durable and starts the node on it.
"""

from __future__ import annotations

import collections
import http.client
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rocksdict import AccessType, Options, Rdict
from unison.config import render_toml
from unison.storage.layout import (
    DATA_CF,
    DATA_CFS,
    LOG_CF,
    META_DATA_CF,
    META_FIRST_LSN,
    META_LAST_LSN,
    U64,
    WRITE_BUFFER_ENV,
)
from unison.storage.records import Op, Record, lsn_of

from tests.support.lazyfs import LazyFS
from tests.support.nodes import HOST, NodeProcess, b64, kv_path

log = logging.getLogger(__name__)

# What this session's power-loss tests did (conftest prints it): cuts, acknowledged
# writes checked after them, replicated records compared between nodes.
TOTALS: collections.Counter[str] = collections.Counter()


def tally(what: str, cuts: int, acked: int, compared: int = 0) -> None:
    TOTALS.update(cuts=cuts, acked=acked, compared=compared)
    log.info("%s: %d power cuts, %d acknowledged writes checked%s", what, cuts, acked,
             f", {compared} replicated records compared" if compared else "")


class PowerNode(NodeProcess):
    """A node in its own session, so a power cut kills its helper processes with it."""

    write_buffer: int = 0  # bytes; 0: RocksDB's default

    def start(self, wait: bool = True, timeout: float = 60.0) -> PowerNode:
        self.config_path.write_text(render_toml(self.config))
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        if self.write_buffer:
            env[WRITE_BUFFER_ENV] = str(self.write_buffer)
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "unison.cli", "node", "-config", str(self.config_path),
                 self.role], stdout=out, stderr=subprocess.STDOUT, env=env,
                start_new_session=True)
        if wait:
            self.wait_healthy(timeout)
        return self

    def power_off(self) -> None:
        """SIGKILL the whole session, and wait until none of it runs any more."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(30)
        deadline = time.monotonic() + 30
        while _session_alive(self.proc.pid):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: processes of session {self.proc.pid} "
                                   "outlived SIGKILL")
            time.sleep(0.02)

    def lsn(self, ns: str) -> int:
        status, body = self.api("GET", f"/api/v1/{ns}/offset")
        assert status == 200, (status, body)
        return int(body["lsn"])


def _session_alive(sid: int) -> bool:
    """Whether a process of session `sid` still runs (zombies hold no files: not counted)."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[3]) == sid and fields[0] != "Z":
            return True
    return False


@dataclass
class Machine:
    """A LazyFS disk and the nodes on it."""

    fs: LazyFS
    nodes: list[PowerNode] = field(default_factory=list)

    def power_cut(self, report: dict[str, Any] | None = None,
                  check: Callable[[], None] | None = None) -> dict[str, Any]:
        """Cut (unless an armed cut already did), kill, reboot the disk, `check()` what is
        on it, restart the nodes."""
        t0 = time.monotonic()
        if report is None:
            report = self.fs.cut()
        log.info("power cut (%s): unsynced writes dropped %s; entries undone %s",
                 report["why"], report["files_rolled_back"], report["dir_ops_undone"])
        for node in self.nodes:
            node.power_off()
        t1 = time.monotonic()
        self.fs.reboot()
        t2 = time.monotonic()
        if check is not None:
            check()
        t3 = time.monotonic()
        for node in self.nodes:
            node.start()
        log.info("power cut: off %.2fs, reboot %.2fs, check %.2fs, restart %.2fs",
                 t1 - t0, t2 - t1, t3 - t2, time.monotonic() - t3)
        return report


# ------------------------------------------------------------ writers and their history


@dataclass
class _Op:
    value: bytes | None  # None: a delete
    acked: bool = False


class History:
    """Every write attempted, per key, in the order its one writer sent them."""

    def __init__(self) -> None:
        self._mu = threading.Lock()
        self.ops: dict[bytes, list[_Op]] = {}
        self.acked = 0

    def attempt(self, key: bytes, value: bytes | None) -> _Op:
        op = _Op(value)
        with self._mu:
            self.ops.setdefault(key, []).append(op)
        return op

    def ack(self, op: _Op) -> None:
        with self._mu:
            op.acked = True
            self.acked += 1

    def violations(self, data: dict[bytes, bytes]) -> list[str]:
        """Keys whose stored value is neither the last acknowledged write nor one sent
        after it (which may or may not have landed)."""
        bad = []
        with self._mu:
            for key, ops in self.ops.items():
                last = max((i for i, op in enumerate(ops) if op.acked), default=None)
                if last is None:
                    continue
                allowed = {op.value for op in ops[last:]}
                if data.get(key) not in allowed:
                    bad.append(f"{key!r}: stored {data.get(key)!r:.60}, acknowledged "
                               f"{ops[last].value!r:.60}")
        return bad


class Writers:
    """`n` threads writing one namespace of a node over keep-alive HTTP: each its own new
    keys (value padded to `size` bytes), its own register (a counter, overwritten), and
    deletes of its earlier keys. Every attempt and acknowledgement goes to `history`."""

    def __init__(self, port: int, ns: str, history: History, n: int = 4,
                 size: int = 600, tag: str = "") -> None:
        self.port, self.ns, self.history, self.size = port, ns, history, size
        self.tag = tag or f"{time.monotonic_ns():x}"
        self.stop_event = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(w,), daemon=True)
                        for w in range(n)]

    def __enter__(self) -> Writers:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self.stop_event.set()
        for t in self.threads:
            t.join(30)

    def wait_acks(self, n: int, timeout: float = 120.0) -> None:
        """Until `n` more writes are acknowledged (from now)."""
        target = self.history.acked + n
        deadline = time.monotonic() + timeout
        while self.history.acked < target:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.history.acked}/{target} acknowledgements")
            time.sleep(0.01)

    def _run(self, w: int) -> None:
        conn: http.client.HTTPConnection | None = None
        i = 0
        while not self.stop_event.is_set():
            key, value = self._next(w, i)
            op = self.history.attempt(key, value)
            try:
                conn = conn or http.client.HTTPConnection(HOST, self.port, timeout=30)
                if self._send(conn, key, value):
                    self.history.ack(op)
            except (OSError, http.client.HTTPException):
                if conn is not None:
                    conn.close()
                conn = None
                time.sleep(0.05)  # the node is down or restarting
            i += 1
        if conn is not None:
            conn.close()

    def _next(self, w: int, i: int) -> tuple[bytes, bytes | None]:
        prefix = f"p-{self.tag}-w{w}"
        if i % 10 == 3:
            return f"{prefix}-reg".encode(), str(i).encode()
        if i % 10 == 7 and i > 10:
            return f"{prefix}-{i - 9:07d}".encode(), None  # a new key of 10 writes ago
        key = f"{prefix}-{i:07d}"
        return key.encode(), (key * (self.size // len(key) + 1)).encode()[:self.size]

    def _send(self, conn: http.client.HTTPConnection, key: bytes, value: bytes | None) -> bool:
        path = kv_path(self.ns, key.decode())
        if value is None:
            conn.request("DELETE", path)
        else:
            conn.request("PUT", path, body=json.dumps({"value": b64(value)}),
                         headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status == 200 and json.loads(body).get("success") is True


# ------------------------------------------------------------ what is on disk


@dataclass
class Stored:
    """A namespace's database as read back from disk."""

    last_lsn: int
    first_lsn: int
    log: dict[int, bytes]  # lsn -> encoded record
    data: dict[bytes, bytes]


def read_store(path: Path) -> Stored:
    """Open the namespace's RocksDB read-only (its node stopped) and read all of it. No
    database there (a cut before anything made it durable) reads as an empty one."""
    if not (path / "CURRENT").exists():
        return Stored(0, 1, {}, {})
    cfs = {name: Options(raw_mode=True) for name in (*DATA_CFS, LOG_CF)}
    db = Rdict(str(path), Options(raw_mode=True), column_families=cfs,
               access_type=AccessType.read_only())
    try:
        live = (db.get(META_DATA_CF) or DATA_CF.encode()).decode()
        meta = {k: U64.unpack(v)[0] if (v := db.get(k)) else 0
                for k in (META_LAST_LSN, META_FIRST_LSN)}
        log_cf, data_cf = db.get_column_family(LOG_CF), db.get_column_family(live)
        stored = Stored(meta[META_LAST_LSN], meta[META_FIRST_LSN] or 1,
                        {lsn_of(k): v for k, v in log_cf.items()}, dict(data_cf.items()))
        del log_cf, data_cf  # column family handles keep the database open
    finally:
        db.close()
    return stored


def check_store(s: Stored, name: str) -> list[Record]:
    """The log's LSNs are contiguous up to the meta LSN, every checksum verifies, and
    the data agrees with the log. Returns the log's records."""
    lsns = sorted(s.log)
    if lsns:
        assert lsns[-1] == s.last_lsn, f"{name}: log tail {lsns[-1]} != meta {s.last_lsn}"
        assert lsns[0] == s.first_lsn, f"{name}: log head {lsns[0]} != first {s.first_lsn}"
        gaps = [a for a, b in zip(lsns, lsns[1:], strict=False) if b != a + 1]
        assert not gaps, f"{name}: the log has gaps after LSNs {gaps[:5]}"
    else:
        assert s.first_lsn == s.last_lsn + 1 or s.last_lsn == 0, (name, s.first_lsn, s.last_lsn)
    records = [Record.decode(lsn, s.log[lsn]) for lsn in lsns]
    for r in records:
        r.verify()  # raises CorruptRecord naming the LSN
    latest: dict[bytes, bytes | None] = {}
    for r in records:
        latest[r.key] = r.value if r.op is Op.PUT else None
    wrong = [k for k, v in latest.items() if s.data.get(k) != v]
    assert not wrong, f"{name}: data disagrees with the log for {len(wrong)} keys: {wrong[:3]}"
    return records

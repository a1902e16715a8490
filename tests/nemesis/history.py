"""Writers with a recorded history, and the checks run on it after the faults heal.

Each writer is one CRDT replica (replica id `<namespace>-w<i>`) writing to one datacenter
over HTTP, as the seed's curl does: LWW registers whose timestamps only move forward per
writer, G-counters whose count only grows per writer, and `once` keys written a single
time (a later write can never mask their loss). Every write is recorded as acknowledged
(200), refused (connection refused: nothing was sent) or indeterminate (the connection
broke or the node answered an error: it may or may not have been applied).

After the faults stop every writer closes: it writes each LWW and counter key it ever
touched once more, above anything it wrote before, until acknowledged. So an
indeterminate write to those keys cannot decide the final state, and the expected state
is computed from acknowledged writes alone; an indeterminate `once` write is resolved by
looking for its key where it would have landed.
"""

from __future__ import annotations

import http.client
import json
import logging
import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from unison.crdt import CRDTState

from tests.support.nodes import api, b64, kv_path

log = logging.getLogger(__name__)

ACKED, REFUSED, INDETERMINATE = "acked", "refused", "indeterminate"
LWW_KEYS = 5
COUNTER_KEYS = 3


@dataclass(frozen=True)
class Write:
    ns: str
    key: str
    doc: dict[str, Any]
    phase: str  # "before" or "after" the disk loss: which history of the namespace took it
    once: bool = False


@dataclass
class History:
    """Every write attempted, by outcome; appended to by several writer threads."""

    writes: dict[str, list[Write]] = field(
        default_factory=lambda: {ACKED: [], REFUSED: [], INDETERMINATE: []})
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, outcome: str, write: Write) -> None:
        with self.lock:
            self.writes[outcome].append(write)

    def select(self, outcome: str, ns: str | None = None, phase: str | None = None,
               once: bool | None = None) -> list[Write]:
        with self.lock:
            return [w for w in self.writes[outcome]
                    if (ns is None or w.ns == ns) and (phase is None or w.phase == phase)
                    and (once is None or w.once == once)]

    def counts(self) -> dict[str, int]:
        with self.lock:
            return {k: len(v) for k, v in self.writes.items()}


class Writer(threading.Thread):
    """One replica writing to one datacenter until stopped; parks while paused."""

    def __init__(self, history: History, port: int, ns: str, index: int, seed: int) -> None:
        super().__init__(name=f"writer-{ns}-{index}", daemon=True)
        self.history, self.port, self.ns = history, port, ns
        self.replica = f"{ns}-w{index}"
        self.rng = random.Random(seed)
        self.clock: dict[str, int] = {}  # per LWW key: this writer's last timestamp
        self.count: dict[str, int] = {}  # per counter key: this writer's count so far
        self.once = 0
        self.phase = "before"
        self.stop = threading.Event()
        self.go = threading.Event()  # cleared: park (the nemesis wipes this datacenter)
        self.go.set()
        self.parked = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            if not self.go.is_set():
                self.parked.set()
                self.go.wait(0.1)
                continue
            self.parked.clear()
            self._put(self._next(), retry=False)
            time.sleep(0.02)  # ~50 writes/s each: the 2-core machine also runs the nodes
        self.parked.set()

    def _next(self) -> Write:
        roll = self.rng.random()
        if roll < 0.25:
            self.once += 1
            key = f"counter:once-{self.replica}-{self.once}"
            doc = {"replica": self.replica, "count": self.rng.randint(1, 9)}
            return Write(self.ns, key, doc, self.phase, once=True)
        if roll < 0.65:
            return self._lww(f"lww:k{self.rng.randrange(LWW_KEYS)}")
        return self._counter(f"counter:c{self.rng.randrange(COUNTER_KEYS)}")

    def _lww(self, key: str) -> Write:
        # small steps from a shared start: writers tie on timestamps, replica decides
        self.clock[key] = self.clock.get(key, 0) + self.rng.randint(1, 3)
        doc = {"value": f"{self.replica}#{self.clock[key]}", "timestamp": self.clock[key],
               "replica": self.replica}
        return Write(self.ns, key, doc, self.phase)

    def _counter(self, key: str) -> Write:
        self.count[key] = self.count.get(key, 0) + self.rng.randint(1, 5)
        return Write(self.ns, key, {"replica": self.replica, "count": self.count[key]},
                     self.phase)

    def _put(self, w: Write, *, retry: bool) -> str:
        """PUT one write; with `retry`, until it is acknowledged."""
        body = {"value": b64(json.dumps(w.doc, separators=(",", ":")))}
        while True:
            try:
                status, _ = api(self.port, "PUT", kv_path(w.ns, w.key), body, timeout=5)
                outcome = ACKED if status == 200 else INDETERMINATE
            except ConnectionRefusedError:
                outcome = REFUSED  # nothing reached a node: certainly not applied
            except (OSError, http.client.HTTPException):
                outcome = INDETERMINATE
            self.history.record(outcome, w)
            if outcome == ACKED or not retry:
                return outcome
            time.sleep(0.1)

    def close(self) -> None:
        """Write every LWW and counter key touched once more, above all before, until
        acknowledged (call with the thread parked or stopped)."""
        for key in sorted(self.clock):
            self._put(self._lww(key), retry=True)
        for key in sorted(self.count):
            self._put(self._counter(key), retry=True)


def crdt_of(items: list[tuple[str, str]]) -> CRDTState:
    """A namespace's scan (key, base64 value) as CRDT state."""
    state = CRDTState()
    for key, value in items:
        state.apply_b64(key, value)
    return state


def lost(writes: list[Write], holder: CRDTState) -> list[Write]:
    """The writes whose effect `holder` does not include: an LWW register below the
    write's (timestamp, replica), a counter below the write's count for its replica."""
    snap = holder.snapshot()
    out = []
    for w in writes:
        if w.key.startswith("lww:"):
            reg = snap["lww"].get(w.key)
            covered = reg is not None and (reg["timestamp"], reg["replica"]) >= (
                w.doc["timestamp"], w.doc["replica"])
        else:
            counts = snap["counters"].get(w.key, {}).get("counts", {})
            covered = counts.get(w.doc["replica"], -1) >= w.doc["count"]
        if not covered:
            out.append(w)
    return out


def expected_state(acked: list[Write], indeterminate_once: list[Write],
                   landed: dict[str, set[str]]) -> CRDTState:
    """The CRDT merge of the acknowledged writes, plus each indeterminate `once` write
    whose key is present in `landed[ns]` (it reached its datacenter)."""
    state = CRDTState()
    for w in acked:
        state.apply_json(w.key, json.dumps(w.doc))
    for w in indeterminate_once:
        if w.key in landed.get(w.ns, set()):
            state.apply_json(w.key, json.dumps(w.doc))
    return state


def summary(history: History) -> dict[str, Any]:
    by_ns = Counter(w.ns for w in history.select(ACKED))
    return {**history.counts(), "acked_by_namespace": dict(by_ns)}

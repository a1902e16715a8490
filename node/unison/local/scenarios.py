"""The seed's five scenarios: the exact writes of its curl commands and what the CRDT
client must end up showing. Used by `unison demo` and by the tests (which also check
that `examples/curl-scenarios.sh` sends the same requests)."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

DC1 = "ad-campaign-dc1"
DC2 = "ad-campaign-dc2"
SEED_NAMESPACES = (DC1, DC2)


@dataclass(frozen=True)
class Write:
    """One of the seed's `curl -X PUT` commands: to the datacenter owning `namespace`."""

    namespace: str
    key: str
    payload: dict[str, Any]  # the JSON the seed pipes through base64

    @property
    def json_text(self) -> str:
        # The seed writes compact JSON in this key order (`echo -n '{"value":...}'`).
        return json.dumps(self.payload, separators=(",", ":"), ensure_ascii=False)

    def body(self) -> dict[str, str]:
        return {"value": base64.b64encode(self.json_text.encode()).decode()}

    def path(self) -> str:
        return f"/api/v1/{self.namespace}/kv/{self.key}"


@dataclass(frozen=True)
class Expect:
    """What the client's converged /state must hold for one key."""

    key: str
    summary: str  # what a person should see, e.g. '"away" from ad-campaign-dc2'
    register: dict[str, Any] | None = None  # LWW: value, timestamp, replica
    counts: dict[str, int] | None = None  # G-counter: count per replica (total is their sum)

    def check(self, state: dict[str, Any]) -> tuple[bool, str]:
        """(met?, what the client holds), from a /state document."""
        if self.register is not None:
            held = state.get("lww", {}).get(self.key)
            if held is None:
                return False, "not in the client's state"
            got = {k: held.get(k) for k in ("value", "timestamp", "replica")}
            return got == self.register, describe_register(got)
        held = state.get("counters", {}).get(self.key)
        if held is None:
            return False, "not in the client's state"
        counts = dict(held.get("counts", {}))
        total = held.get("total")
        ok = counts == self.counts and total == sum(counts.values())
        return ok, describe_counter(counts, total)


@dataclass(frozen=True)
class Scenario:
    number: int
    title: str
    writes: tuple[Write, ...]
    expects: tuple[Expect, ...]
    lesson: str  # one line: why the outcome is what it is


def describe_register(reg: dict[str, Any]) -> str:
    return (f"{json.dumps(reg.get('value'), ensure_ascii=False)} from {reg.get('replica')} "
            f"at {reg.get('timestamp')}")


def describe_counter(counts: dict[str, int], total: Any) -> str:
    return f"total {total} {json.dumps(counts, separators=(',', ':'), sort_keys=True)}"


def lww(value: Any, timestamp: int, replica: str) -> dict[str, Any]:
    return {"value": value, "timestamp": timestamp, "replica": replica}


def gcount(replica: str, count: int) -> dict[str, Any]:
    return {"replica": replica, "count": count}


def seed_scenarios(now_ms: int) -> list[Scenario]:
    """The seed's scenarios; scenario 2 uses `now_ms` as the seed uses `$(date +%s)000`."""
    return [
        Scenario(
            1, "Basic LWW-Register update",
            (Write(DC1, "lww:user-status", lww("online", 1698765432000, DC1)),
             Write(DC2, "lww:user-status", lww("away", 1698765433000, DC2))),
            (Expect("lww:user-status", f'"away" from {DC2}',
                    register=lww("away", 1698765433000, DC2)),),
            "the newer timestamp wins (1698765433000 > 1698765432000)",
        ),
        Scenario(
            2, "Concurrent writes with the same timestamp",
            (Write(DC1, "lww:config", lww("DC1 wins?", now_ms, DC1)),
             Write(DC2, "lww:config", lww("DC2 wins!", now_ms, DC2))),
            (Expect("lww:config", f'"DC2 wins!" from {DC2}',
                    register=lww("DC2 wins!", now_ms, DC2)),),
            f'equal timestamps: the higher replica id wins ("{DC2}" > "{DC1}")',
        ),
        Scenario(
            3, "Distributed counter (G-Counter)",
            (Write(DC1, "counter:page-views", gcount(DC1, 5)),
             Write(DC2, "counter:page-views", gcount(DC2, 3))),
            (Expect("counter:page-views", "total 8 (5 from dc1 + 3 from dc2)",
                    counts={DC1: 5, DC2: 3}),),
            "each datacenter's count is kept; the total is their sum",
        ),
        Scenario(
            4, "Out-of-order delivery (stale write)",
            (Write(DC1, "lww:feature-flag", lww(True, 2000, DC1)),
             Write(DC2, "lww:feature-flag", lww(False, 1000, DC2))),
            (Expect("lww:feature-flag", f"true from {DC1} at 2000",
                    register=lww(True, 2000, DC1)),),
            "the older write (timestamp 1000) is ignored as stale",
        ),
        Scenario(
            5, "Multiple counters operating independently",
            (Write(DC1, "counter:api-calls", gcount(DC1, 100)),
             Write(DC2, "counter:api-calls", gcount(DC2, 75)),
             Write(DC1, "counter:db-queries", gcount(DC1, 250))),
            (Expect("counter:api-calls", "total 175 (100 + 75)", counts={DC1: 100, DC2: 75}),
             Expect("counter:db-queries", "total 250 (dc1 only)", counts={DC1: 250})),
            "each counter converges on its own",
        ),
    ]


@dataclass(frozen=True)
class RelayerRead:
    """The seed's last step: read a namespace's raw value back from the read-only relayer."""

    namespace: str
    key: str
    payload: dict[str, Any]  # what was written to that namespace's datacenter


# The relayer keeps each datacenter's namespace as written (the seed's sample response
# shows dc2's value under ad-campaign-dc1, which no real replica could return); the
# merged view is the client's. We read both namespaces back.
RELAYER_READS = (
    RelayerRead(DC1, "lww:user-status", lww("online", 1698765432000, DC1)),
    RelayerRead(DC2, "lww:user-status", lww("away", 1698765433000, DC2)),
)


def state_of(doc: Any) -> dict[str, Any]:
    """The CRDT state inside a client's /state answer (bare, or under "state")."""
    if isinstance(doc, dict) and isinstance(doc.get("state"), dict):
        return doc["state"]
    return doc if isinstance(doc, dict) else {}


def state_table(state: dict[str, Any]) -> list[str]:
    """The converged state, one key a line: registers (value, replica, timestamp), then
    counters (total, per-replica counts)."""
    rows: list[tuple[str, str, str]] = []
    for key, reg in (state.get("lww") or {}).items():
        rows.append((key, json.dumps(reg.get("value"), ensure_ascii=False),
                     f"{reg.get('replica')} @ {reg.get('timestamp')}"))
    for key, c in (state.get("counters") or {}).items():
        counts = json.dumps(c.get("counts", {}), separators=(",", ":"), sort_keys=True)
        rows.append((key, str(c.get("total")), counts))
    for key, c in (state.get("pncounters") or {}).items():
        rows.append((key, str(c.get("total")), "PN-counter"))
    if not rows:
        return ["(empty)"]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    return [f"{k.ljust(w0)}  {v.ljust(w1)}  {extra}" for k, v, extra in rows]

"""The lines the client prints, in the seed's words. Pure: every function returns text."""

from __future__ import annotations

import json
from typing import Any

from unison.crdt import ApplyResult, Kind, Outcome
from unison.crdt.values import GCounterUpdate, LWWUpdate, PNCounterUpdate

RULE = "=" * 57
IND = "   "


def show_value(value: Any) -> str:
    """Strings as they are (the seed prints `Value: online`), anything else as JSON."""
    return value if isinstance(value, str) else compact(value)


def compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True, ensure_ascii=False)


def banner() -> str:
    return f"{RULE}\n        Unison CRDT Client - Multi-DC Example\n{RULE}"


def notification(topic: str, key: str, operation: str, seq_num: int) -> str:
    return "\n".join(
        [
            "",
            "Change notification received",
            f"{IND}Topic: {topic}",
            f"{IND}Key: {key}",
            f"{IND}Operation: {operation}",
            f"{IND}Seq Num: {seq_num}",
        ]
    )


def apply_result(r: ApplyResult) -> str:
    """What one merge did: the seed's "LWW-Register updated/ignored (stale)" lines and the
    same shape for counters."""
    u = r.update
    if r.kind is Kind.LWW and isinstance(u, LWWUpdate):
        body = _lww_lines(r, u)
    elif r.kind is Kind.GCOUNTER and isinstance(u, GCounterUpdate):
        body = _gcounter_lines(r, u)
    elif r.kind is Kind.PNCOUNTER and isinstance(u, PNCounterUpdate):
        body = _pncounter_lines(r, u)
    else:
        body = [f"Ignored: {r.key} is not a CRDT key (lww:, counter:, pncounter:)"]
    return "\n".join([f"Processing update: {r.key}", *body])


def _lww_lines(r: ApplyResult, u: LWWUpdate) -> list[str]:
    if r.outcome is Outcome.UPDATED:
        return [
            f"LWW-Register updated: {r.key}",
            f"{IND}Value: {show_value(u.value)}",
            f"{IND}Timestamp: {u.timestamp}",
            f"{IND}Replica: {u.replica}",
        ]
    if r.outcome is Outcome.STALE:
        cur = r.after or {}
        lines = [
            f"LWW-Register ignored (stale): {r.key}",
            f"{IND}Incoming timestamp: {u.timestamp}",
            f"{IND}Current timestamp: {cur.get('timestamp')}",
        ]
        if u.timestamp == cur.get("timestamp"):
            lines += [
                f"{IND}Incoming replica: {u.replica}",
                f"{IND}Current replica: {cur.get('replica')}",
            ]
        return lines
    return [f"LWW-Register unchanged (duplicate): {r.key}"]


def _gcounter_lines(r: ApplyResult, u: GCounterUpdate) -> list[str]:
    cur = (r.after or {}).get("counts", {})
    total = (r.after or {}).get("total")
    if r.outcome is Outcome.UPDATED:
        return [
            f"G-Counter updated: {r.key}",
            f"{IND}Replica: {u.replica}",
            f"{IND}Count: {u.count}",
            f"{IND}Total: {total}",
        ]
    if r.outcome is Outcome.STALE:
        return [
            f"G-Counter ignored (stale): {r.key}",
            f"{IND}Replica: {u.replica}",
            f"{IND}Incoming count: {u.count}",
            f"{IND}Current count: {cur.get(u.replica)}",
        ]
    return [f"G-Counter unchanged (duplicate): {r.key}"]


def _pncounter_lines(r: ApplyResult, u: PNCounterUpdate) -> list[str]:
    after = r.after or {}
    if r.outcome is Outcome.UPDATED:
        return [
            f"PN-Counter updated: {r.key}",
            f"{IND}Replica: {u.replica}",
            f"{IND}Increments: {u.p}",
            f"{IND}Decrements: {u.n}",
            f"{IND}Total: {after.get('total')}",
        ]
    if r.outcome is Outcome.STALE:
        return [
            f"PN-Counter ignored (stale): {r.key}",
            f"{IND}Replica: {u.replica}",
            f"{IND}Incoming increments/decrements: {u.p}/{u.n}",
            f"{IND}Current increments/decrements: "
            f"{after.get('p', {}).get(u.replica)}/{after.get('n', {}).get(u.replica)}",
        ]
    return [f"PN-Counter unchanged (duplicate): {r.key}"]


def state_block(snapshot: dict[str, Any]) -> str:
    """The seed's CURRENT CRDT STATE block, from CRDTState.snapshot()."""
    lines = ["", RULE, "CURRENT CRDT STATE", RULE]
    lww, counters, pn = snapshot["lww"], snapshot["counters"], snapshot["pncounters"]
    if lww:
        lines.append("LWW-Registers:")
        for key, reg in lww.items():
            lines += [
                f"{IND}{key}:",
                f"{IND * 2}Value: {show_value(reg['value'])}",
                f"{IND * 2}Timestamp: {reg['timestamp']}",
                f"{IND * 2}Replica: {reg['replica']}",
            ]
    if counters:
        lines.append("G-Counters:")
        for key, c in counters.items():
            lines += [
                f"{IND}{key}:",
                f"{IND * 2}Replica Counts: {compact(c['counts'])}",
                f"{IND * 2}Total: {c['total']}",
            ]
    if pn:
        lines.append("PN-Counters:")
        for key, c in pn.items():
            lines += [
                f"{IND}{key}:",
                f"{IND * 2}Increments: {compact(c['p'])}",
                f"{IND * 2}Decrements: {compact(c['n'])}",
                f"{IND * 2}Total: {c['total']}",
            ]
    if not (lww or counters or pn):
        lines.append("(empty)")
    lines.append(RULE)
    return "\n".join(lines)

"""`GET /crdt/{key}`: a CRDT key's value merged across every namespace this node holds,
which is what the CRDT client computes, served by the node itself (on the relayer: every
datacenter it follows). Each namespace's LSN is read before its value, so the answer
includes at least that much of it. Outside /api/v1/{namespace} so no namespace name can
shadow it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from aiohttp import web

from unison.api.kv import encode_key
from unison.api.responses import ApiError, json_ok
from unison.context import NodeContext
from unison.crdt import CRDTState, MalformedValueError, kind_of

Handler = Callable[[web.Request], Any]


def converged_value(ctx: NodeContext, key: str) -> dict[str, Any]:
    """The merged value of `key` and what each namespace contributed (its LSN, whether it
    holds the key, and why a value it holds was skipped)."""
    kind = kind_of(key)
    if kind is None:
        raise ApiError(400, f"key: {key!r} is not a CRDT key (its prefix must be one of "
                            "lww:, counter:, pncounter:)")
    raw_key = encode_key(key, "key", ctx.config.http.max_key_size)
    state = CRDTState()
    namespaces: dict[str, dict[str, Any]] = {}
    for ns in sorted(ctx.stores):
        store = ctx.stores[ns]
        entry: dict[str, Any] = {"lsn": store.last_lsn}
        raw = store.get(raw_key)
        entry["found"] = raw is not None
        if raw is not None:
            try:
                state.apply_json(key, raw)
            except MalformedValueError as e:  # one bad value must not hide the others
                entry["skipped"] = str(e)
        namespaces[ns] = entry
    value = state.get_json(key)
    return {"key": key, "type": kind.value.rstrip(":"), "found": value is not None,
            "value": value, "namespaces": namespaces}


def add_converged_route(app: web.Application, ctx: NodeContext, *,
                        wrap: Callable[[Handler], Handler]) -> None:
    async def converged(request: web.Request) -> web.Response:
        return json_ok(converged_value(ctx, request.match_info["key"]))

    app.router.add_get("/crdt/{key:.+}", wrap(converged))

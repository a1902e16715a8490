"""UnisonDB-compatible key/value routes under `/api/v1/{ns}`.

Values travel base64-encoded in JSON. Everything a request carries is validated before
anything is written, so a refused request changes nothing; a batch is one `store.write`,
so it is applied all or nothing.
"""

from __future__ import annotations

import asyncio
import binascii
import json
import re
from typing import Any

import pybase64
from aiohttp import web

from unison.api.responses import (
    JSON,
    UNCHANGED_BODY,
    ApiError,
    json_bytes,
    json_ok,
    success,
    value_body,
)
from unison.config.model import DEFAULT_MAX_KEY_BYTES
from unison.context import NodeContext
from unison.crdt import stored as crdt_stored
from unison.crdt.values import MalformedValueError
from unison.storage import Mutation, NamespaceStore, Op, StoreClosed

SCAN_DEFAULT_LIMIT = 1000
# Reads at an LSN: how long a replica that is behind waits before it answers 503.
MIN_LSN_HEADER = "X-Unison-Min-LSN"
MIN_LSN_WAIT_S = 2.0
SCAN_MAX_LIMIT = 10000
# Scans bigger than this run off the event loop so they do not stall other requests.
_SCAN_INLINE_LIMIT = 100
_WHITESPACE = str.maketrans("", "", " \t\r\n")
# How JSON encoders write a PUT body `{"value": "<base64>"}` (compact, or with ": ").
_PUT_BODY_PREFIXES = (b'{"value":"', b'{"value": "')
_PUT_BODY_SUFFIX = b'"}'


def decode_b64(value: Any, field: str) -> bytes:
    """Strict base64 -> bytes; the error names `field`."""
    if not isinstance(value, str):
        raise ApiError(400, f"{field}: expected a base64 string, got {_json_type(value)}")
    try:
        return _b64decode(value)
    except (binascii.Error, ValueError):
        pass
    # Line-wrapped base64 (as `base64` on Linux prints it) is still base64.
    if any(c in value for c in " \t\r\n"):
        try:
            return _b64decode(value.translate(_WHITESPACE))
        except (binascii.Error, ValueError):
            pass
    raise ApiError(400, f"{field}: invalid base64")


def _b64decode(text: str | bytes | memoryview) -> bytes:
    # pybase64 (SIMD) rather than binascii: decoding a 1 KB value is a sixth of the
    # microseconds, on every PUT. validate=True is strict: only the alphabet and padding.
    return pybase64.b64decode(text, validate=True)


def _b64encode(value: bytes) -> bytes:
    return pybase64.b64encode(value)


def encode_key(key: Any, field: str, max_size: int = DEFAULT_MAX_KEY_BYTES) -> bytes:
    if not isinstance(key, str):
        raise ApiError(400, f"{field}: expected a string, got {_json_type(key)}")
    if not key:
        raise ApiError(400, f"{field}: must not be empty")
    try:
        encoded = key.encode("utf-8")
    except UnicodeEncodeError:
        raise ApiError(400, f"{field}: not valid UTF-8") from None
    if len(encoded) > max_size:
        raise ApiError(400, f"{field}: key is {len(encoded)} bytes, over the limit of "
                            f"{max_size} bytes (http_config.max_key_size)")
    return encoded


def require_json(request: web.Request) -> None:
    """Writes with a body must say `Content-Type: application/json` (415 otherwise): a
    browser's cross-site form or no-preflight fetch cannot, so it cannot forge a write."""
    ct = request.headers.get("Content-Type")
    if ct == JSON:
        return
    if ct is None:
        raise ApiError(415, "Content-Type: header missing; writes must be sent as "
                            "application/json")
    if ct.split(";", 1)[0].strip().lower() != JSON:
        raise ApiError(415, f"Content-Type: {ct!r} is not accepted; writes must be sent as "
                            "application/json")


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "a boolean", int: "a number", float: "a number", str: "a string",
            list: "an array", dict: "an object"}.get(type(value), type(value).__name__)


def body_too_large(limit: int) -> str:
    return f"request body too large: limit is {limit} bytes (http_config.max_body_size)"


def put_value(raw: bytes) -> bytes:
    """The value of a PUT body `{"value": "<base64>"}`, with the errors the API names.

    The common exact shapes skip json.loads: when the bytes between the quotes are
    strict base64 they hold no quote, backslash or whitespace, so the body is exactly
    that one-field object and the decoded bytes are what the JSON path would give.
    Anything else (other spacing, more fields, bad base64) takes the JSON path.
    """
    if raw.endswith(_PUT_BODY_SUFFIX):
        for prefix in _PUT_BODY_PREFIXES:
            if raw.startswith(prefix):
                try:
                    return _b64decode(memoryview(raw)[len(prefix):-2])
                except (binascii.Error, ValueError):
                    break
    body = parse_json_object(raw)
    if "value" not in body:
        raise ApiError(400, "value: missing field")
    return decode_b64(body["value"], "value")


def merged_mutation(key: bytes, value: bytes, field: str) -> Mutation:
    """A PUT the writer merges (see unison.crdt.stored); its value must be a valid CRDT
    value for the key (400 naming `field` otherwise)."""
    try:
        crdt_stored.check(key.decode("utf-8"), value)
    except MalformedValueError as e:
        raise ApiError(400, f"{field}: {e} (this namespace merges CRDT writes: "
                            "storage_config.crdt_merge_namespaces)") from None
    return Mutation(Op.PUT, key, value, [])


# A body cut right after a whole number of 76-character base64 lines: what the seed's
# `-d '{"value": "'$(... | base64)'"}'` sends, since GNU base64 wraps at 76 columns and
# the shell splits the unquoted $(...) there.
_CUT_AT_WRAP = re.compile(rb'^\s*\{\s*"value"\s*:\s*"([A-Za-z0-9+/]+)\s*$')


def _wrapped_base64_hint(raw: bytes) -> str:
    cut = _CUT_AT_WRAP.match(raw)
    if cut is None or len(cut.group(1)) % 76:
        return ""
    return (f" (the value stops after {len(cut.group(1))} characters, where GNU base64 "
            "wraps its lines: pipe through `base64 -w0`, or quote the $(...))")


def parse_json_object(raw: bytes) -> dict[str, Any]:
    if not raw:
        raise ApiError(400, "invalid JSON: request body is empty")
    try:
        body = json.loads(raw)
    except RecursionError:
        raise ApiError(400, "invalid JSON: nested too deeply") from None
    except UnicodeDecodeError:
        raise ApiError(400, "invalid JSON: body is not UTF-8") from None
    except ValueError as e:
        raise ApiError(400, f"invalid JSON: {e}{_wrapped_base64_hint(raw)}") from None
    if not isinstance(body, dict):
        raise ApiError(400, f"invalid JSON: expected an object, got {_json_type(body)}")
    return body


def namespace_not_found(ns: str) -> ApiError:
    return ApiError(404, f"namespace not found: {ns}")


def read_only(ns: str, role: str) -> ApiError:
    return ApiError(403, f"namespace {ns} is read-only on this node (role {role}); write to "
                         "its primary instead")


async def read_body(request: web.Request, max_body: int, read_timeout: float) -> bytes:
    """A write's body, within http_config.max_body_size (413) and read_timeout (408)."""
    # Refuse by the announced length before reading: no point receiving 100 MB to say no.
    length = request.content_length
    if length is not None:
        if length > max_body:
            raise ApiError(413, body_too_large(max_body))
        content = request.content
        if content.is_eof():  # all of it has arrived (the usual small body): take it
            return content.read_nowait()
    try:
        async with asyncio.timeout(read_timeout):
            return await request.read()
    except TimeoutError:
        raise ApiError(408, f"request body not received within {read_timeout:g}s "
                            "(http_config.read_timeout)") from None


def get_response(value: bytes | None) -> web.Response:
    """A GET's answer for the stored value (None: missing)."""
    return web.Response(body=value_body(value), content_type=JSON)


def batch_answer(mutations: list[Mutation]) -> dict[str, Any]:
    """A batch's success body; with merged CRDT keys, how many changed nothing."""
    unchanged = sum(1 for m in mutations if m.changed and not m.changed[0])
    return {"success": True, "count": len(mutations),
            **({"unchanged": unchanged} if unchanged else {})}


class KvRoutes:
    """Request handlers; one instance per app, bound to the node's context."""

    def __init__(self, ctx: NodeContext) -> None:
        self.ctx = ctx
        self.stores: dict[str, NamespaceStore] = ctx.stores
        self.writable: frozenset[str] = ctx.writable
        self.max_body = ctx.config.http.max_body_size
        self.max_key = ctx.config.http.max_key_size
        self.read_timeout = ctx.config.http.read_timeout

    # ------------------------------------------------------------ helpers

    def _store(self, request: web.Request) -> NamespaceStore:
        ns = request.match_info["ns"]
        store = self.stores.get(ns)
        if store is None:
            raise namespace_not_found(ns)
        return store

    def _writable_store(self, request: web.Request) -> NamespaceStore:
        store = self._store(request)
        if store.name not in self.writable:
            raise read_only(store.name, self.ctx.role)
        return store

    async def _raw_body(self, request: web.Request) -> bytes:
        return await read_body(request, self.max_body, self.read_timeout)

    async def _body(self, request: web.Request) -> dict[str, Any]:
        return parse_json_object(await self._raw_body(request))

    def _key(self, request: web.Request) -> bytes:
        return encode_key(request.match_info.get("key", ""), "key", self.max_key)

    @staticmethod
    async def _write(store: NamespaceStore, mutations: list[Mutation]) -> None:
        try:
            await store.write(mutations)
        except StoreClosed as e:  # shutting down, or a failed commit stopped writes
            raise ApiError(503, str(e)) from None

    async def _at_least(self, store: NamespaceStore, request: web.Request) -> web.Response | None:
        """A read "at least at LSN n" (`?min_lsn=n` or the X-Unison-Min-LSN header): a
        replica behind waits up to MIN_LSN_WAIT_S for it, then answers 503 naming its LSN.
        None: serve the read."""
        text = request.query.get("min_lsn", request.headers.get(MIN_LSN_HEADER))
        if text is None:
            return None
        wanted = _int_param(text, "min_lsn", 0, 0, 2**63 - 1)
        if store.last_lsn >= wanted:
            return None
        try:
            async with asyncio.timeout(MIN_LSN_WAIT_S):
                await store.wait_beyond(wanted - 1)
        except TimeoutError:
            pass
        lsn = store.last_lsn
        if lsn >= wanted:
            return None
        return json_ok({"error": f"namespace {store.name} is at lsn {lsn}, behind min_lsn "
                                 f"{wanted} (waited {MIN_LSN_WAIT_S:g}s); retry, or read "
                                 "another replica", "lsn": lsn, "min_lsn": wanted}, 503)

    # ------------------------------------------------------------ single keys

    async def put(self, request: web.Request) -> web.Response:
        store = self._writable_store(request)
        key = self._key(request)
        require_json(request)
        value = put_value(await self._raw_body(request))
        merger = store.merger
        if merger is not None and key.startswith(merger.prefixes):
            return await self._merged_put(store, key, value)
        try:
            await store.submit([Mutation(Op.PUT, key, value)])
        except StoreClosed as e:  # shutting down, or a failed commit stopped writes
            raise ApiError(503, str(e)) from None
        return success()

    async def _merged_put(self, store: NamespaceStore, key: bytes, value: bytes) -> web.Response:
        """A CRDT key of a crdt_merge namespace: the writer stores the join with the stored
        value. The answer is UnisonDB's when the state changed, and says `"changed": false`
        when it did not (a stale or repeated write)."""
        mutation = merged_mutation(key, value, "value")
        await self._write(store, [mutation])
        if mutation.changed and not mutation.changed[0]:
            return json_bytes(200, UNCHANGED_BODY)
        return success()

    async def get(self, request: web.Request) -> web.Response:
        store = self._store(request)
        key = self._key(request)
        if request.query_string or MIN_LSN_HEADER in request.headers:
            behind = await self._at_least(store, request)
            if behind is not None:
                return behind
        return get_response(store.get(key))

    async def delete(self, request: web.Request) -> web.Response:
        store = self._writable_store(request)
        key = self._key(request)
        await self._write(store, [Mutation(Op.DELETE, key)])
        return success()

    async def empty_key(self, request: web.Request) -> web.Response:
        self._store(request)
        raise ApiError(400, "key: must not be empty")

    # ------------------------------------------------------------ batch

    async def batch(self, request: web.Request) -> web.Response:
        store = self._writable_store(request)
        require_json(request)
        body = await self._body(request)
        mutations = parse_batch(body, self.max_key)
        merger = store.merger
        if merger is None:
            await self._write(store, mutations)
            return json_ok({"success": True, "count": len(mutations)})
        merged = [merged_mutation(m.key, m.value, f"items[{i}].value")
                  if m.op is Op.PUT and m.key.startswith(merger.prefixes) else m
                  for i, m in enumerate(mutations)]
        await self._write(store, merged)
        return json_ok(batch_answer(merged))

    # ------------------------------------------------------------ reads beyond UnisonDB

    async def scan(self, request: web.Request) -> web.Response:
        store = self._store(request)
        behind = await self._at_least(store, request)
        if behind is not None:
            return behind
        q = request.query
        prefix = q.get("prefix", "").encode("utf-8", "surrogatepass")
        after_text = q.get("after")
        after = after_text.encode("utf-8", "surrogatepass") if after_text else None
        limit = _int_param(q.get("limit"), "limit", SCAN_DEFAULT_LIMIT, 1, SCAN_MAX_LIMIT)
        if limit <= _SCAN_INLINE_LIMIT:
            items, more = store.scan(prefix, after, limit)
        else:
            items, more = await asyncio.get_running_loop().run_in_executor(
                None, store.scan, prefix, after, limit)
        out = [{"key": k.decode("utf-8", "replace"),
                "value": _b64encode(v).decode()} for k, v in items]
        return json_ok({"items": out, "count": len(out), "more": more})

    async def offset(self, request: web.Request) -> web.Response:
        store = self._store(request)
        return json_ok({"namespace": store.name, "lsn": store.last_lsn})

    async def stats(self, request: web.Request) -> web.Response:
        store = self._store(request)
        out: dict[str, Any] = dict(store.describe())
        out["writable"] = store.name in self.writable
        out["role"] = self.ctx.role
        follower = self.ctx.followers.get(store.name)
        if follower is not None:
            out["follower"] = follower.status()
        notifier = self.ctx.notifiers.get(store.name)
        if notifier is not None:
            out["notifier"] = notifier.metrics()
        return json_ok(out)


def parse_batch(body: dict[str, Any], max_key: int = DEFAULT_MAX_KEY_BYTES) -> list[Mutation]:
    """Validate a whole batch request into mutations; raises ApiError naming the field."""
    if "operation" not in body:
        raise ApiError(400, "operation: missing field (expected \"put\" or \"delete\")")
    op = body["operation"]
    if op == "put":
        items = body.get("items")
        if not isinstance(items, list):
            what = "missing field" if "items" not in body else f"expected an array, got {_json_type(items)}"
            raise ApiError(400, f"items: {what}")
        if not items:
            raise ApiError(400, "items: must contain at least one item")
        out = []
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise ApiError(400, f"items[{i}]: expected an object with key and value, "
                                    f"got {_json_type(item)}")
            if "key" not in item:
                raise ApiError(400, f"items[{i}].key: missing field")
            if "value" not in item:
                raise ApiError(400, f"items[{i}].value: missing field")
            key = encode_key(item["key"], f"items[{i}].key", max_key)
            out.append(Mutation(Op.PUT, key, decode_b64(item["value"], f"items[{i}].value")))
        return out
    if op == "delete":
        keys = body.get("keys")
        if not isinstance(keys, list):
            what = "missing field" if "keys" not in body else f"expected an array, got {_json_type(keys)}"
            raise ApiError(400, f"keys: {what}")
        if not keys:
            raise ApiError(400, "keys: must contain at least one key")
        return [Mutation(Op.DELETE, encode_key(k, f"keys[{i}]", max_key))
                for i, k in enumerate(keys)]
    raise ApiError(400, f"operation: unknown batch operation {op!r} (expected \"put\" or \"delete\")")


def _int_param(text: str | None, name: str, default: int, lo: int, hi: int) -> int:
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not lo <= value <= hi:
        raise ApiError(400, f"{name}: expected an integer between {lo} and {hi}, got {text!r}")
    return value

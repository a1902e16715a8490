"""The node's HTTP API over real HTTP, against real node processes (DESIGN section 3).

One replicator serves the module (tests use distinct keys); a relayer-role node checks
that its namespaces refuse writes. Values travel base64-encoded, as UnisonDB's do.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import re
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp.test_utils import TestServer
from unison.api.app import build_app
from unison.config import GrpcConfig, HttpConfig, NodeConfig, StorageConfig
from unison.node import NodeContext
from unison.storage import NamespaceStore

from tests.support.nodes import NodeProcess, b64, free_port, kv_path, single_node_config, unb64

NS = "ad-campaign-dc1"
OTHER = "scratch"
MAX_BODY = 2 * 1024 * 1024  # a 1 MB value is ~1.4 MB as base64 JSON: fits


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    tmp = tmp_path_factory.mktemp("http-api")
    cfg = single_node_config(tmp, [NS, OTHER], grpc=GrpcConfig(port=0))
    cfg.http.max_body_size = MAX_BODY
    proc = NodeProcess("dc1", "replicator", cfg, tmp).start()
    yield proc
    assert proc.stop() == 0, proc.logs()


@pytest.fixture(scope="module")
def relayer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    tmp = tmp_path_factory.mktemp("http-relayer")
    cfg = NodeConfig(http_port=free_port(), grpc=GrpcConfig(port=0),
                     http=HttpConfig(listen_ip="127.0.0.1"),
                     storage=StorageConfig(base_dir=str(tmp / "data"), namespaces=[NS]))
    proc = NodeProcess("relayer", "relayer", cfg, tmp).start()
    yield proc
    assert proc.stop() == 0, proc.logs()


def lsn(n: NodeProcess, ns: str = NS) -> int:
    status, body = n.api("GET", f"/api/v1/{ns}/offset")
    assert status == 200, body
    return body["lsn"]


def put_raw(n: NodeProcess, key: str, body: bytes, ns: str = NS) -> tuple[int, object]:
    return n.api("PUT", kv_path(ns, key), raw=body)


# ---------------------------------------------------------------- single keys


def test_put_get_delete_round_trip(node: NodeProcess) -> None:
    assert node.put(NS, "basic", "hello") == (200, {"success": True})
    assert node.api("GET", kv_path(NS, "basic")) == (200, {"value": b64("hello"), "found": True})
    assert node.api("DELETE", kv_path(NS, "basic")) == (200, {"success": True})
    assert node.api("GET", kv_path(NS, "basic")) == (200, {"value": "", "found": False})


def test_missing_key_reads_as_not_found(node: NodeProcess) -> None:
    assert node.api("GET", kv_path(NS, "never-written")) == (200, {"value": "", "found": False})


def test_overwrite_keeps_latest_value(node: NodeProcess) -> None:
    node.put(NS, "twice", "first")
    node.put(NS, "twice", "second")
    assert node.get(NS, "twice") == b"second"


def test_seed_curl_request_shape(node: NodeProcess) -> None:
    """The seed's curl: JSON body, base64 of a CRDT value, key with a colon, unencoded."""
    value = '{"value":"online","timestamp":1698765432000,"replica":"ad-campaign-dc1"}'
    status, body = node.api("PUT", f"/api/v1/{NS}/kv/lww:user-status", {"value": b64(value)})
    assert (status, body) == (200, {"success": True})
    status, body = node.api("GET", f"/api/v1/{NS}/kv/lww:user-status")
    assert status == 200 and body["found"] is True
    assert json.loads(unb64(body["value"])) == json.loads(value)


@pytest.mark.parametrize("key", [
    "lww:user:alice:status",
    "a/b/c",
    "ключ-🔑-キー",
    "spaces and ?query=1&x#frag",
    "100%-sure",
    "batch",  # the batch route is POST only: a key may still be called "batch"
])
def test_awkward_keys_round_trip(node: NodeProcess, key: str) -> None:
    assert node.put(NS, key, f"value of {key}")[0] == 200
    assert node.get(NS, key) == f"value of {key}".encode()
    status, body = node.api("GET", f"/api/v1/{NS}/kv?prefix={urllib.parse.quote(key, safe='')}")
    assert status == 200 and [i["key"] for i in body["items"]] == [key]


def test_one_megabyte_binary_value_round_trips(node: NodeProcess) -> None:
    value = os.urandom(1024 * 1024)
    assert node.put(NS, "big", value) == (200, {"success": True})
    assert node.get(NS, "big") == value


def test_empty_value_is_a_value(node: NodeProcess) -> None:
    assert node.put(NS, "empty-value", b"") == (200, {"success": True})
    assert node.api("GET", kv_path(NS, "empty-value")) == (200, {"value": "", "found": True})


def test_line_wrapped_base64_is_accepted(node: NodeProcess) -> None:
    """GNU `base64` wraps at 76 columns; the wrapped text is still valid base64."""
    value = b"x" * 120
    wrapped = base64.encodebytes(value).decode()
    assert "\n" in wrapped
    assert node.api("PUT", kv_path(NS, "wrapped"), {"value": wrapped})[0] == 200
    assert node.get(NS, "wrapped") == value


# ---------------------------------------------------------------- single-key errors


def test_unknown_namespace_is_404_on_every_route(node: NodeProcess) -> None:
    want = (404, {"error": "namespace not found: nope"})
    assert node.api("GET", kv_path("nope", "k")) == want
    assert node.api("PUT", kv_path("nope", "k"), {"value": b64("v")}) == want
    assert node.api("DELETE", kv_path("nope", "k")) == want
    assert node.api("POST", "/api/v1/nope/kv/batch",
                    {"operation": "delete", "keys": ["k"]}) == want
    assert node.api("GET", "/api/v1/nope/kv") == want
    assert node.api("GET", "/api/v1/nope/offset") == want
    assert node.api("GET", "/api/v1/nope/stats") == want


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE"])
def test_empty_key_is_400(node: NodeProcess, method: str) -> None:
    body = {"value": b64("v")} if method == "PUT" else None
    assert node.api(method, f"/api/v1/{NS}/kv/", body) == (400, {"error": "key: must not be empty"})


@pytest.mark.parametrize("raw, message", [
    (b"{not json", "invalid JSON: "),
    (b"", "invalid JSON: request body is empty"),
    (b'["value"]', "invalid JSON: expected an object, got an array"),
    (b"\xff\xfe", "invalid JSON"),
    (b'{"val": "aGk="}', "value: missing field"),
    (b'{"value": 12}', "value: expected a base64 string, got a number"),
    (b'{"value": null}', "value: expected a base64 string, got null"),
    (b'{"value": "not base64!"}', "value: invalid base64"),
    (b'{"value": "aGk"}', "value: invalid base64"),  # missing padding
    # The exact `{"value":"..."}` shapes that skip json.loads refuse the same way.
    (b'{"value":"not base64!"}', "value: invalid base64"),
    (b'{"value":"aGk"}', "value: invalid base64"),
    (b'{"value":"aGk="}"}', "invalid JSON: "),
    (b'{"value": "aGk=" "}', "invalid JSON: "),
])
def test_bad_put_bodies_are_400_and_write_nothing(node: NodeProcess, raw: bytes,
                                                   message: str) -> None:
    before = lsn(node)
    status, body = put_raw(node, "bad-body", raw)
    assert status == 400
    assert body["error"].startswith(message), body
    assert lsn(node) == before
    assert node.get(NS, "bad-body") is None


def test_a_body_cut_where_base64_wraps_says_so(node: NodeProcess) -> None:
    """The seed's `-d '{"value": "'$(echo -n ... | base64)'"}'`: GNU base64 wraps at 76
    columns, the shell splits the unquoted $(...) there, and the node receives the JSON
    cut after the first line. The error says what happened and how to fix it."""
    line = base64.encodebytes(json.dumps(
        {"value": "online", "timestamp": 1698765432000, "replica": NS}).encode()).split()[0]
    assert len(line) == 76
    status, body = put_raw(node, "lww:user-status", b'{"value": "' + line)
    assert status == 400 and body["error"].startswith("invalid JSON: "), body
    assert "76 characters" in body["error"] and "base64 -w0" in body["error"], body
    # Other broken bodies get no such hint.
    assert "base64 -w0" not in put_raw(node, "k", b'{"value": "aGk')[1]["error"]


@pytest.mark.parametrize("raw", [
    b'{"value":"aGk="}',
    b'{"value": "aGk="}',
    b'{"value":"aG\\u006b="}',  # an escape: the JSON path decodes it
    b'{ "value" : "aGk=" }\n',
    b'{"value":"aGk=","other":1}',
    b'{"other":"x","value":"aGk="}',
])
def test_every_json_shape_of_a_put_body_stores_the_value(node: NodeProcess, raw: bytes) -> None:
    assert put_raw(node, "shape", raw) == (200, {"success": True})
    assert node.get(NS, "shape") == b"hi"
    node.api("DELETE", kv_path(NS, "shape"))


def test_body_over_limit_is_413(node: NodeProcess) -> None:
    before = lsn(node)
    raw = json.dumps({"value": b64(os.urandom(MAX_BODY))}).encode()
    status, body = put_raw(node, "too-big", raw)
    assert status == 413
    assert body["error"] == (f"request body too large: limit is {MAX_BODY} bytes "
                             "(http_config.max_body_size)")
    assert lsn(node) == before
    assert node.get(NS, "too-big") is None


def test_chunked_body_over_limit_is_413(node: NodeProcess) -> None:
    """No Content-Length to refuse by: the limit still holds while reading."""
    raw = json.dumps({"value": b64(os.urandom(MAX_BODY))}).encode()
    conn = http.client.HTTPConnection("127.0.0.1", node.http_port, timeout=10)
    try:
        chunks = (raw[i:i + 65536] for i in range(0, len(raw), 65536))
        conn.request("PUT", kv_path(NS, "too-big-chunked"), body=chunks,
                     headers={"Content-Type": "application/json"}, encode_chunked=True)
        resp = conn.getresponse()
        assert resp.status == 413
        assert json.loads(resp.read())["error"].startswith("request body too large")
    finally:
        conn.close()
    assert node.get(NS, "too-big-chunked") is None


def test_wrong_method_and_unknown_path_answer_json(node: NodeProcess) -> None:
    status, body = node.api("POST", kv_path(NS, "k"), {"value": b64("v")})
    assert status == 405 and "method POST not allowed" in body["error"]
    assert node.api("GET", "/api/v2/whatever") == (404, {"error": "not found: /api/v2/whatever"})


def test_wrong_method_lists_what_every_matching_route_allows(node: NodeProcess) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", node.http_port, timeout=10)
    try:
        conn.request("PATCH", f"/api/v1/{NS}/kv/batch")  # the key route and the batch route
        resp = conn.getresponse()
        body = json.loads(resp.read())
        assert resp.status == 405
        assert resp.getheader("Allow") == "DELETE,GET,HEAD,POST,PUT"
        assert body == {"error": f"method PATCH not allowed on /api/v1/{NS}/kv/batch "
                                 "(allowed: DELETE, GET, HEAD, POST, PUT)"}
        conn.request("HEAD", "/healthz")  # GET routes answer HEAD too
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 200
    finally:
        conn.close()


# ---------------------------------------------------------------- batch


def test_batch_put_applies_all_items_with_consecutive_lsns(node: NodeProcess) -> None:
    before = lsn(node)
    items = [{"key": f"batch:{i}", "value": b64(f"v{i}")} for i in range(5)]
    assert node.api("POST", f"/api/v1/{NS}/kv/batch", {"operation": "put", "items": items}) == (
        200, {"success": True, "count": 5})
    assert lsn(node) == before + 5
    assert [node.get(NS, f"batch:{i}") for i in range(5)] == [f"v{i}".encode() for i in range(5)]


def test_batch_delete_removes_keys(node: NodeProcess) -> None:
    for k in ("del:a", "del:b", "del:keep"):
        node.put(NS, k, "x")
    assert node.api("POST", f"/api/v1/{NS}/kv/batch",
                    {"operation": "delete", "keys": ["del:a", "del:b"]}) == (
        200, {"success": True, "count": 2})
    assert node.get(NS, "del:a") is None and node.get(NS, "del:b") is None
    assert node.get(NS, "del:keep") == b"x"


@pytest.mark.parametrize("body, message", [
    ({"items": []}, "operation: missing field"),
    ({"operation": "upsert", "items": []}, "operation: unknown batch operation 'upsert'"),
    ({"operation": "put"}, "items: missing field"),
    ({"operation": "put", "items": {"k": "v"}}, "items: expected an array, got an object"),
    ({"operation": "put", "items": []}, "items: must contain at least one item"),
    ({"operation": "put", "items": [{"key": "ok", "value": "aGk="}, "x"]},
     "items[1]: expected an object"),
    ({"operation": "put", "items": [{"key": "ok", "value": "aGk="}, {"value": "aGk="}]},
     "items[1].key: missing field"),
    ({"operation": "put", "items": [{"key": "ok", "value": "aGk="}, {"key": "k2"}]},
     "items[1].value: missing field"),
    ({"operation": "put", "items": [{"key": "ok", "value": "aGk="}, {"key": "", "value": "aGk="}]},
     "items[1].key: must not be empty"),
    ({"operation": "put", "items": [{"key": "ok", "value": "aGk="}, {"key": 7, "value": "aGk="}]},
     "items[1].key: expected a string, got a number"),
    ({"operation": "delete"}, "keys: missing field"),
    ({"operation": "delete", "keys": []}, "keys: must contain at least one key"),
    ({"operation": "delete", "keys": ["ok", ""]}, "keys[1]: must not be empty"),
])
def test_bad_batches_are_400_naming_the_field(node: NodeProcess, body: dict,
                                              message: str) -> None:
    before = lsn(node)
    status, answer = node.api("POST", f"/api/v1/{NS}/kv/batch", body)
    assert status == 400
    assert answer["error"].startswith(message), answer
    assert lsn(node) == before


def test_batch_with_one_bad_item_applies_nothing(node: NodeProcess) -> None:
    before = lsn(node)
    items = [{"key": f"atomic:{i}", "value": b64("v")} for i in range(5)]
    items[3]["value"] = "%%% not base64"
    status, body = node.api("POST", f"/api/v1/{NS}/kv/batch", {"operation": "put", "items": items})
    assert (status, body) == (400, {"error": "items[3].value: invalid base64"})
    assert lsn(node) == before
    assert all(node.get(NS, f"atomic:{i}") is None for i in range(5))


def test_batch_bad_json_is_400(node: NodeProcess) -> None:
    status, body = node.api("POST", f"/api/v1/{NS}/kv/batch", raw=b'{"operation": "put", ')
    assert status == 400 and body["error"].startswith("invalid JSON: ")


# ---------------------------------------------------------------- scan, offset, stats


def test_scan_by_prefix_pages_in_key_order(node: NodeProcess) -> None:
    keys = [f"scan:{i:03d}" for i in range(25)]
    items = [{"key": k, "value": b64(k.upper())} for k in reversed(keys)]
    node.api("POST", f"/api/v1/{OTHER}/kv/batch", {"operation": "put", "items": items})
    node.put(OTHER, "scan;after-the-prefix", "x")
    node.put(OTHER, "scam:before-the-prefix", "x")

    seen: list[str] = []
    after = ""
    while True:
        q = urllib.parse.urlencode({"prefix": "scan:", "limit": 10, "after": after})
        status, page = node.api("GET", f"/api/v1/{OTHER}/kv?{q}")
        assert status == 200
        assert page["count"] == len(page["items"]) <= 10
        for item in page["items"]:
            assert unb64(item["value"]) == item["key"].upper().encode()
        seen += [i["key"] for i in page["items"]]
        if not page["more"]:
            break
        after = seen[-1]
    assert seen == keys

    status, whole = node.api("GET", f"/api/v1/{OTHER}/kv?prefix=scan:")
    assert status == 200 and whole["count"] == 25 and whole["more"] is False


def test_scan_without_prefix_lists_everything(node: NodeProcess) -> None:
    status, page = node.api("GET", f"/api/v1/{OTHER}/kv?limit=10000")
    assert status == 200
    keys = [i["key"] for i in page["items"]]
    assert keys == sorted(keys, key=lambda k: k.encode()) and "scam:before-the-prefix" in keys


@pytest.mark.parametrize("limit", ["0", "10001", "ten", "-1"])
def test_scan_bad_limit_is_400(node: NodeProcess, limit: str) -> None:
    status, body = node.api("GET", f"/api/v1/{OTHER}/kv?limit={limit}")
    assert (status, body) == (400, {"error": "limit: expected an integer between 1 and 10000, "
                                             f"got {limit!r}"})


def test_offset_counts_every_mutation(node: NodeProcess) -> None:
    before = lsn(node, OTHER)
    node.put(OTHER, "offset:a", "1")
    node.api("DELETE", kv_path(OTHER, "offset:a"))
    assert node.api("GET", f"/api/v1/{OTHER}/offset") == (
        200, {"namespace": OTHER, "lsn": before + 2})


def test_stats_report_lsn_and_counters(node: NodeProcess) -> None:
    node.put(OTHER, "stats:a", "1")
    node.api("DELETE", kv_path(OTHER, "stats:a"))
    status, stats = node.api("GET", f"/api/v1/{OTHER}/stats")
    assert status == 200
    assert stats["namespace"] == OTHER and stats["lsn"] == lsn(node, OTHER)
    assert stats["puts"] >= 1 and stats["deletes"] >= 1 and stats["commits"] >= 1
    assert stats["writable"] is True and stats["role"] == "replicator"


# ---------------------------------------------------------------- health, metrics, openapi


def test_health_and_readiness(node: NodeProcess) -> None:
    status, body = node.api("GET", "/healthz")
    assert status == 200 and body["status"] == "ok"
    assert node.api("GET", "/readyz") == (200, {"ready": True, "reasons": []})


_SAMPLE = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="([^"\\]|\\.)*",?)*\})? '
                     r'(-?[0-9.eE+-]+|NaN|[+-]Inf)$')


def parse_metrics(text: str) -> dict[str, float]:
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            assert line.startswith(("# HELP ", "# TYPE ")) or not line, line
            continue
        assert _SAMPLE.match(line), f"not a Prometheus sample line: {line!r}"
        name, value = line.rsplit(" ", 1)
        samples[name] = float(value)
    return samples


def test_metrics_are_prometheus_text_with_namespace_and_request_counts(node: NodeProcess) -> None:
    node.put(NS, "metrics:a", "1")
    node.api("GET", kv_path("nope", "k"))
    status, text = node.api("GET", "/metrics")
    assert status == 200 and isinstance(text, str)
    m = parse_metrics(text)
    assert m[f'unison_namespace_lsn{{namespace="{NS}"}}'] == lsn(node)
    assert m[f'unison_puts_total{{namespace="{NS}"}}'] >= 1
    assert m[f'unison_commits_total{{namespace="{NS}"}}'] >= 1
    assert m[f'unison_namespace_writable{{namespace="{NS}"}}'] == 1
    assert m['unison_http_requests_total{method="PUT",route="/api/v1/{ns}/kv/{key}",'
             'status="200"}'] >= 1
    assert m['unison_http_requests_total{method="GET",route="/api/v1/{ns}/kv/{key}",'
             'status="404"}'] >= 1
    assert m["unison_ready"] == 1
    assert m["unison_watch_streams"] == 0
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    assert types["unison_puts_total"] == "counter" and types["unison_namespace_lsn"] == "gauge"


async def test_openapi_documents_every_route(node: NodeProcess, tmp_path: Path) -> None:
    """Every route the app's router serves is in /openapi.json with its methods, read from
    the router itself, so a new route cannot go undocumented."""
    status, doc = node.api("GET", "/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.")
    store = NamespaceStore(NS, tmp_path / "router" / NS).open()
    try:
        app = build_app(NodeContext(NodeConfig(), "replicator", {NS: store}, frozenset({NS})))
        served: dict[str, set[str]] = {}
        for route in app.router.routes():
            path = route.resource.canonical if route.resource else ""
            if route.method in ("*", "HEAD") or path in ("", "/{path}"):
                continue  # the catch-all 404/405 answerer; HEAD rides on GET
            path = path.replace("{ns}", "{namespace}")
            if path.endswith("/kv/"):
                continue  # the empty-key answerer: a 400 naming the missing key
            served.setdefault(path, set()).add(route.method.lower())
    finally:
        await store.close()
    assert "/api/v1/{namespace}/kv/{key}" in served and "/metrics" in served, served
    for path, methods in served.items():
        assert path in doc["paths"], f"{path} is served but not documented"
        assert methods <= set(doc["paths"][path]), (path, methods)
    # Every $ref points at a schema that exists.
    refs = set(re.findall(r'"#/components/schemas/([^"]+)"', json.dumps(doc)))
    assert refs <= set(doc["components"]["schemas"])


# ---------------------------------------------------------------- read-only relayer


def test_relayer_namespaces_refuse_writes_with_403(relayer: NodeProcess) -> None:
    msg = f"namespace {NS} is read-only on this node (role relayer); write to its primary instead"
    assert relayer.put(NS, "k", "v") == (403, {"error": msg})
    assert relayer.api("DELETE", kv_path(NS, "k")) == (403, {"error": msg})
    assert relayer.api("POST", f"/api/v1/{NS}/kv/batch",
                       {"operation": "delete", "keys": ["k"]}) == (403, {"error": msg})
    assert relayer.api("GET", f"/api/v1/{NS}/offset") == (200, {"namespace": NS, "lsn": 0})
    # Reads still work, and readiness holds with no upstream configured.
    assert relayer.api("GET", kv_path(NS, "k")) == (200, {"value": "", "found": False})
    assert relayer.api("GET", "/readyz")[0] == 200
    status, stats = relayer.api("GET", f"/api/v1/{NS}/stats")
    assert status == 200 and stats["writable"] is False and stats["role"] == "relayer"


def test_relayer_refuses_before_reading_the_body(relayer: NodeProcess) -> None:
    """Read-only wins over a bad body: the client learns the real problem first."""
    status, body = relayer.api("PUT", kv_path(NS, "k"), raw=b"not json")
    assert status == 403 and "read-only" in body["error"]


# ---------------------------------------------------------------- failures inside the node


async def test_internal_error_is_500_json_and_logged(tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    """The API app in-process on real storage, with a route that fails the way a bug
    would: the client gets a plain 500, the traceback goes to the node's log only."""
    store = NamespaceStore(NS, tmp_path / NS).open()
    store.start()
    ctx = NodeContext(NodeConfig(), "replicator", {NS: store}, frozenset({NS}))
    app = build_app(ctx)

    def broken() -> tuple[bool, list[str]]:
        raise RuntimeError("secret internal detail")

    ctx.ready = broken  # type: ignore[method-assign]  # /readyz now fails like a bug
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    try:
        async with aiohttp.ClientSession() as session:
            async with session.get(server.make_url("/readyz")) as r:
                assert r.status == 500
                body = await r.json()
            assert body == {"error": "internal error (see the node's log)"}
            assert "secret" not in json.dumps(body)
            assert "secret internal detail" in caplog.text

            await store.close()  # the node is shutting down under a request
            async with session.get(server.make_url(kv_path(NS, "k"))) as r:
                assert r.status == 503
                assert "closed" in (await r.json())["error"]
    finally:
        await server.close()
        if not store.closed:
            await store.close()

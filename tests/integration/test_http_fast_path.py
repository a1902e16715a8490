"""The HTTP fast path (unison.api.fastpath) answers exactly as aiohttp's routes do.

Two real nodes, the same configuration, one with the fast path (the default) and one
without (UNISON_HTTP_FAST_PATH=0). Every scenario is sent as raw bytes over a fresh TCP
connection to both (in chunks where the scenario splits a request) and the answers must
be byte for byte the same but for the Date header: status, headers, bodies, order, and
the connection closing or staying open. Then the node's own counters show the fast
path answered the plain requests and handed the others to aiohttp.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.nodes import HOST, NodeProcess, b64, single_node_config

NS, CRDT = "ns", "crdt"
MAX_KEY, MAX_BODY = 64, 4096
_DATE = re.compile(rb"\r\nDate: [^\r]*")


def put(path: str, body: bytes, *, ctype: bytes = b"application/json",
        extra: bytes = b"") -> bytes:
    return (b"PUT " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: " + ctype
            + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n" + extra
            + b"\r\n" + body)


def get(path: bytes | str, extra: bytes = b"", method: bytes = b"GET") -> bytes:
    raw = path.encode() if isinstance(path, str) else path
    return method + b" " + raw + b" HTTP/1.1\r\nHost: x\r\n" + extra + b"\r\n"


def value(text: str) -> bytes:
    return b'{"value":"' + b64(text).encode() + b'"}'


def key_path(key: str, ns: str = NS) -> str:
    return f"/api/v1/{ns}/kv/{key}"


# Printable ASCII but the characters a request target cannot hold as they are.
_KEY_CHARS = [chr(c) for c in range(0x21, 0x7F) if chr(c) not in "#?%"]

SCENARIOS: dict[str, list[bytes]] = {
    "put get delete get": [put(key_path("a"), value("one")) + get(key_path("a"))
                           + get(key_path("a"), method=b"DELETE") + get(key_path("a"))],
    "every key character": [b"".join(put(key_path(f"k{c}x"), value(c)) + get(key_path(f"k{c}x"))
                                     for c in _KEY_CHARS)],
    "escaped and dotted keys": [b"".join(get(p) for p in (
        "/api/v1/ns/kv/a%2Fb", "/api/v1/ns/kv/%61", "/api/v1/ns/kv/./a", "/api/v1/ns/kv/a/../b",
        "/api/v1/ns/kv/a//b", "/api/v1/ns/kv/.hidden", "/api/v1/ns/kv/a?min_lsn=0",
        "/api/v1/ns/kv/a?x=1", "/api/v1/ns/kv/a/"))],
    "key over the limit": [get(key_path("k" * (MAX_KEY + 1))) + put(key_path("k" * MAX_KEY),
                                                                    value("max"))],
    "bad bodies": [put(key_path("b"), b"{") + put(key_path("b"), b'{"value":"!!"}')
                   + put(key_path("b"), b"[]") + put(key_path("b"), b'{"other":1}')
                   + put(key_path("b"), b"") + put(key_path("b"), b'{"value": "YQ=="}')
                   + get(key_path("b"))],
    "content types": [put(key_path("c"), value("x"), ctype=b"text/plain")
                      + put(key_path("c"), value("y"), ctype=b"application/json; charset=utf-8")
                      + put(key_path("c"), value("z"), ctype=b"Application/JSON")
                      + get(key_path("c"))],
    "no content type": [b"PUT /api/v1/ns/kv/d HTTP/1.1\r\nHost: x\r\nContent-Length: 16"
                        b"\r\n\r\n" + value("xyzw")[:16]],
    "no host": [b"GET /api/v1/ns/kv/a HTTP/1.1\r\n\r\n"],
    "two hosts": [b"GET /api/v1/ns/kv/a HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"],
    "body over the limit": [put(key_path("e"), value("x" * MAX_BODY))],
    "unknown namespace and route": [get(key_path("a", "nope")) + get("/api/v1/ns/kv/")
                                    + get("/healthz") + get(key_path("a"))],
    "head and other methods": [get(key_path("a"), method=b"HEAD") + get(key_path("a"),
                                                                        method=b"POST")],
    "chunked body": [b"PUT /api/v1/ns/kv/f HTTP/1.1\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n10\r\n" + value("abcd")[:16]
                     + b"\r\n0\r\n\r\n" + get(key_path("f"))],
    "smuggling: length and chunked": [
        b"PUT /api/v1/ns/kv/g HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 4"
        b"\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + get(key_path("g"))],
    "two lengths": [b"PUT /api/v1/ns/kv/h HTTP/1.1\r\nContent-Type: application/json\r\n"
                    b"Content-Length: 16\r\nContent-Length: 17\r\n\r\n" + value("abcd")],
    "expect continue": [put(key_path("i"), value("i"), extra=b"Expect: 100-continue\r\n")],
    "connection close": [get(key_path("a"), b"Connection: close\r\n") + get(key_path("a"))],
    "keep-alive spelled out": [get(key_path("a"), b"Connection: Keep-Alive\r\n")
                               + get(key_path("a"))],
    "http/1.0": [b"GET /api/v1/ns/kv/a HTTP/1.0\r\n\r\n"],
    "nul in a header": [b"GET /api/v1/ns/kv/a HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n"],
    "space in a header name": [b"GET /api/v1/ns/kv/a HTTP/1.1\r\nHost: x\r\nBad Header: 1"
                               b"\r\n\r\n"],
    "folded header": [b"GET /api/v1/ns/kv/a HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  continued"
                      b"\r\n\r\n"],
    "lowercase method": [b"get /api/v1/ns/kv/a HTTP/1.1\r\nHost: x\r\n\r\n"],
    "bare newlines": [b"GET /api/v1/ns/kv/a HTTP/1.1\nHost: x\n\n"],
    "split request": [put(key_path("j"), value("split"))[:40], put(key_path("j"),
                                                                  value("split"))[40:]
                      + get(key_path("j"))],
    "split body": [put(key_path("k"), value("body"))[:-5], put(key_path("k"), value("body"))[-5:]],
    "fast then aiohttp then fast": [put(key_path("l"), value("1")) + get("/api/v1/ns/offset")
                                    + get(key_path("l"))],
    "crdt merge changed and unchanged": [
        put(key_path("counter:c", CRDT), b'{"value":"' + b64('{"a": 2}').encode() + b'"}')
        + put(key_path("counter:c", CRDT), b'{"value":"' + b64('{"a": 1}').encode() + b'"}')
        + put(key_path("counter:c", CRDT), b'{"value":"' + b64("not json").encode() + b'"}')
        + get(key_path("counter:c", CRDT))],
    "a write then 300 KB of pipelined reads": [put(key_path("p"), value("p"))
                                               + get(key_path("p")) * 6000],
    "min lsn header": [get(key_path("a"), b"X-Unison-Min-LSN: 1\r\n")],
    "content-length on a get": [b"GET /api/v1/ns/kv/a HTTP/1.1\r\nHost: x\r\nContent-Length: 2"
                                b"\r\n\r\nab" + get(key_path("a"))],
}


def exchange(port: int, chunks: list[bytes]) -> bytes:
    """Send the chunks (a pause between them) and return everything answered until the
    node closes the connection or stays silent for a while."""
    with socket.create_connection((HOST, port), timeout=5) as s:
        for i, chunk in enumerate(chunks):
            if i:
                time.sleep(0.15)  # a separate segment: the node sees a partial request
            s.sendall(chunk)
        s.settimeout(0.6)
        out = b""
        while True:
            try:
                data = s.recv(65536)
            except TimeoutError:
                return out
            if not data:
                return out + b"<closed>"
            out += data


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, NodeProcess]]:
    out: dict[str, NodeProcess] = {}
    tmp = tmp_path_factory.mktemp("fast-path")
    try:
        for name, fast in (("fast", "1"), ("aiohttp", "0")):
            cfg = single_node_config(tmp / name, [NS, CRDT])
            cfg.storage.crdt_merge_namespaces = [CRDT]
            cfg.http.max_key_size, cfg.http.max_body_size = MAX_KEY, MAX_BODY
            node = NodeProcess(name, "replicator", cfg, Path(tmp / name),
                               env={"UNISON_HTTP_FAST_PATH": fast})
            out[name] = node.start()
        yield out
    finally:
        for node in out.values():
            node.stop()


@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_the_fast_path_answers_as_aiohttp_does(nodes: dict[str, NodeProcess],
                                              scenario: str) -> None:
    chunks = SCENARIOS[scenario]
    fast = _DATE.sub(b"", exchange(nodes["fast"].http_port, chunks))
    slow = _DATE.sub(b"", exchange(nodes["aiohttp"].http_port, chunks))
    assert fast == slow


def fast_path_counts(node: NodeProcess) -> dict[str, float]:
    """The fast path's counters (this read is itself one connection handed over)."""
    status, text = node.api("GET", "/metrics")
    assert status == 200
    found = re.findall(r'unison_http_fast_path_total\{outcome="(\w+)"\} ([0-9.e+]+)', text)
    return {k: float(v) for k, v in found}


def test_plain_requests_are_answered_by_the_fast_path_and_counted(
        nodes: dict[str, NodeProcess]) -> None:
    fast, slow = nodes["fast"], nodes["aiohttp"]
    before = fast_path_counts(fast)
    n = 50
    out = exchange(fast.http_port, [b"".join(put(key_path(f"m{i}"), value(str(i)))
                                             + get(key_path(f"m{i}")) for i in range(n))])
    assert out.count(b"HTTP/1.1 200 OK") == 2 * n
    after = fast_path_counts(fast)
    assert after["answered"] - before["answered"] == 2 * n
    assert after["handed_over"] == before["handed_over"] + 1  # only the /metrics read
    assert fast_path_counts(slow)["answered"] == 0
    exchange(fast.http_port, [get("/api/v1/ns/offset")])  # another route: aiohttp's
    last = fast_path_counts(fast)
    assert last["handed_over"] == after["handed_over"] + 2
    assert last["answered"] == after["answered"]
    # The request metrics count the fast path's answers under the route's name.
    status, text = fast.api("GET", "/metrics")
    assert re.search(r'unison_http_requests_total\{method="PUT",'
                     r'route="/api/v1/\{ns\}/kv/\{key\}",status="200"\} ([0-9.e+]+)', text)


def test_fast_path_connections_keep_the_header_and_idle_deadlines(tmp_path: Path) -> None:
    cfg = single_node_config(tmp_path, [NS])
    cfg.http.read_header_timeout, cfg.http.idle_timeout = 1.0, 1.5
    node = NodeProcess("deadlines", "replicator", cfg, tmp_path).start()
    try:
        def closed_after(chunks: list[bytes]) -> tuple[float, bytes]:
            with socket.create_connection((HOST, node.http_port), timeout=10) as s:
                t0 = time.monotonic()
                for chunk in chunks:
                    s.sendall(chunk)
                out = b""
                while data := s.recv(65536):
                    out += data
                return time.monotonic() - t0, out

        silent, out = closed_after([])
        assert out == b"" and 0.9 <= silent < 5, silent  # no request at all: header deadline
        idle, out = closed_after([put(key_path("z"), value("z")) + get(key_path("z"))])
        assert out.count(b"HTTP/1.1 200 OK") == 2
        assert 1.4 <= idle < 6, idle  # answered, then idle: idle_timeout
        assert fast_path_counts(node)["answered"] == 2
    finally:
        node.stop()

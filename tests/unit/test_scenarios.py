"""The seed's scenarios as data: exact requests, expected outcomes, and that
examples/curl-scenarios.sh sends the very same requests as `unison demo`."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from unison.crdt.state import CRDTState
from unison.local.cluster import plan_local
from unison.local.demo import SEED_MANIFEST
from unison.local.scenarios import RELAYER_READS, seed_scenarios, state_table

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "examples" / "curl-scenarios.sh"
NOW = 1795599090000

# The JSON the seed pipes through base64, character for character.
SEED_PAYLOADS = [
    '{"value":"online","timestamp":1698765432000,"replica":"ad-campaign-dc1"}',
    '{"value":"away","timestamp":1698765433000,"replica":"ad-campaign-dc2"}',
    f'{{"value":"DC1 wins?","timestamp":{NOW},"replica":"ad-campaign-dc1"}}',
    f'{{"value":"DC2 wins!","timestamp":{NOW},"replica":"ad-campaign-dc2"}}',
    '{"replica":"ad-campaign-dc1","count":5}',
    '{"replica":"ad-campaign-dc2","count":3}',
    '{"value":true,"timestamp":2000,"replica":"ad-campaign-dc1"}',
    '{"value":false,"timestamp":1000,"replica":"ad-campaign-dc2"}',
    '{"replica":"ad-campaign-dc1","count":100}',
    '{"replica":"ad-campaign-dc2","count":75}',
    '{"replica":"ad-campaign-dc1","count":250}',
]


def all_writes(now_ms: int = NOW):
    return [w for s in seed_scenarios(now_ms) for w in s.writes]


def test_writes_are_the_seeds_requests() -> None:
    writes = all_writes()
    assert [w.json_text for w in writes] == SEED_PAYLOADS
    assert [w.namespace for w in writes] == [
        "ad-campaign-dc1", "ad-campaign-dc2"] * 4 + ["ad-campaign-dc1", "ad-campaign-dc2",
                                                     "ad-campaign-dc1"]
    first = writes[0]
    assert first.path() == "/api/v1/ad-campaign-dc1/kv/lww:user-status"
    assert base64.b64decode(first.body()["value"]).decode() == SEED_PAYLOADS[0]


@pytest.mark.parametrize("order", ["as sent", "reversed", "interleaved"])
def test_expected_outcomes_follow_from_the_crdt_rules(order: str) -> None:
    """Merging the writes in any order yields every expectation (so the demo's
    expectations are the CRDTs' answers, not numbers typed twice)."""
    writes = all_writes()
    if order == "reversed":
        writes = writes[::-1]
    elif order == "interleaved":
        writes = writes[1::2] + writes[0::2]
    state = CRDTState()
    for w in writes:
        state.apply_json(w.key, w.json_text)
    snap = json.loads(json.dumps(state.snapshot()))
    for s in seed_scenarios(NOW):
        for e in s.expects:
            ok, held = e.check(snap)
            assert ok, (s.number, e.key, held)


def test_expectations_notice_a_wrong_state() -> None:
    state = CRDTState()
    for w in all_writes():
        if not (w.key == "counter:page-views" and w.namespace == "ad-campaign-dc2"):
            state.apply_json(w.key, w.json_text)
    state.apply_json("lww:feature-flag", '{"value":false,"timestamp":3000,"replica":"x"}')
    snap = state.snapshot()
    results = {e.key: e.check(snap) for s in seed_scenarios(NOW) for e in s.expects}
    assert results["counter:page-views"] == (False, 'total 5 {"ad-campaign-dc1":5}')
    assert results["lww:feature-flag"][0] is False
    assert results["lww:user-status"][0] is True
    # An empty or foreign /state document fails every expectation.
    assert not any(e.check({})[0] for s in seed_scenarios(NOW) for e in s.expects)


def test_state_table_shows_every_key_with_its_winner_or_total() -> None:
    state = CRDTState()
    for w in all_writes():
        state.apply_json(w.key, w.json_text)
    lines = state_table(state.snapshot())
    assert [line.split()[0] for line in lines] == [
        "lww:config", "lww:feature-flag", "lww:user-status",
        "counter:api-calls", "counter:db-queries", "counter:page-views"]
    row = dict((line.split()[0], line.split(None, 1)[1]) for line in lines)
    assert row["lww:user-status"].split() == ['"away"', "ad-campaign-dc2", "@", "1698765433000"]
    assert row["lww:feature-flag"].split() == ["true", "ad-campaign-dc1", "@", "2000"]
    assert row["counter:page-views"].split() == ["8", '{"ad-campaign-dc1":5,"ad-campaign-dc2":3}']
    assert row["counter:api-calls"].split()[0] == "175"
    assert state_table({}) == ["(empty)"]


def test_relayer_reads_match_what_each_datacenter_wrote() -> None:
    written = {(w.namespace, w.key): w.payload for w in all_writes()
               if w.key == "lww:user-status"}
    for read in RELAYER_READS:
        assert read.payload == written[(read.namespace, read.key)]


def test_builtin_seed_manifest_matches_the_example_file(tmp_path: Path) -> None:
    example = yaml.safe_load((REPO / "examples" / "ad-campaign.yaml").read_text())
    a = plan_local(example, "example", data_dir=tmp_path)
    b = plan_local(SEED_MANIFEST, "builtin", data_dir=tmp_path)
    assert a.name == b.name == "ad-campaign"
    assert [(n.name, n.role, n.config) for n in a.nodes] == \
           [(n.name, n.role, n.config) for n in b.nodes]
    assert a.client == b.client
    assert [(n.name, n.config.http_port, n.config.grpc.port) for n in a.nodes] == [
        ("dc1", 8001, 4001), ("dc2", 8002, 4002), ("relayer", 8003, 4003)]
    assert [z.bind_port for z in a.relayer.config.notifiers] == [5555, 5556]


# ---------------------------------------------------------------- the curl script


class _Recorder(BaseHTTPRequestHandler):
    """Answers like a Unison node and remembers every request."""

    seen: list[tuple[str, str, bytes]] = []
    lock = threading.Lock()

    def _answer(self, body: bytes) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_PUT(self) -> None:  # noqa: N802
        data = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        with self.lock:
            self.seen.append(("PUT", self.path, data))
        self._answer(b'{"success": true}')

    def do_GET(self) -> None:  # noqa: N802
        with self.lock:
            self.seen.append(("GET", self.path, b""))
        value = base64.b64encode(b'{"value":"online"}').decode()
        self._answer(json.dumps({"value": value, "found": True}).encode())

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.skipif(not all(shutil.which(t) for t in ("bash", "curl", "base64")),
                    reason="needs bash, curl and base64")
def test_curl_script_sends_exactly_the_demo_requests() -> None:
    servers = {}
    for name in ("DC1", "DC2", "RELAYER", "CLIENT"):
        handler = type(f"Rec{name}", (_Recorder,), {"seen": []})
        srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers[name] = srv
    try:
        env = {**os.environ, **{n: f"http://127.0.0.1:{s.server_address[1]}"
                                for n, s in servers.items()}}
        run = subprocess.run(["bash", str(SCRIPT)], env=env, capture_output=True, text=True,
                             timeout=60)
        assert run.returncode == 0, run.stderr
        sent = {n: s.RequestHandlerClass.seen for n, s in servers.items()}
    finally:
        for s in servers.values():
            s.shutdown()
            s.server_close()

    def decoded(reqs):
        return [(path, base64.b64decode(json.loads(body)["value"]).decode())
                for method, path, body in reqs if method == "PUT"]

    puts = {"DC1": decoded(sent["DC1"]), "DC2": decoded(sent["DC2"])}
    # Scenario 2's timestamp is "now": take it from what the script sent.
    now = json.loads(next(p for path, p in puts["DC1"] if path.endswith("lww:config")))["timestamp"]
    want = {"DC1": [], "DC2": []}
    for w in all_writes(now):
        want["DC1" if w.namespace.endswith("dc1") else "DC2"].append((w.path(), w.json_text))
    assert puts == want
    assert [(m, p) for m, p, _ in sent["RELAYER"]] == [
        ("GET", "/api/v1/ad-campaign-dc1/kv/lww:user-status")]
    assert [(m, p) for m, p, _ in sent["CLIENT"]] == [("GET", "/state")]
    # Every step is echoed.
    assert run.stdout.count("== ") >= 12 and "Scenario 5" in run.stdout
    assert '{"value":"online"}' in run.stdout  # the decoded relayer answer

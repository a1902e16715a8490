"""The client's live page: `/` is one self-contained HTML page, `/events` streams what it
shows (the converged state, each namespace's progress, the relayer's lag behind each
datacenter) as server-sent events: once on connect, then on every change.

Why a poll: the sync tasks change the state in place and have no change hook, so one task
(running only while a page is open) rebuilds the view a few times a second and wakes the
streams when its JSON differs. Every stream shares that one payload; a slow browser skips
to the newest view instead of queueing old ones. User data (keys, values, replica names)
only ever reaches the DOM through textContent, and the page's CSP admits no other script.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import logging
import urllib.parse
from collections.abc import Sequence
from typing import Any

import aiohttp
from aiohttp import web

from unison.client.metrics import Metrics
from unison.client.sync import NamespaceSync
from unison.crdt import CRDTState

log = logging.getLogger(__name__)

MAX_STREAMS = 16  # open pages at once; each holds a connection and a task
POLL_INTERVAL = 0.25  # seconds between view rebuilds while a page is open
RELAYER_INTERVAL = 2.0  # seconds between reads of the relayer's per-namespace stats
HEARTBEAT = 10.0  # an idle stream gets a comment this often (proxies, dead peers)
MAX_KEYS = 500  # per CRDT type: the page is for watching, /state has everything
MAX_VALUE_CHARS = 1000  # an LWW value's JSON beyond this is cut (with "…") on the page
RELAYER_TIMEOUT = aiohttp.ClientTimeout(total=3)
# the follower fields the page shows; others (contact ages) change every read
_UPSTREAM_FIELDS = ("name", "upstream", "connected", "upstream_lsn", "applied_lsn",
                    "lag_records", "caught_up", "not_ready_reason")


class LiveView:
    """Builds the page's view and serves it to a bounded number of SSE streams."""

    def __init__(self, state: CRDTState, metrics: Metrics, syncs: Sequence[NamespaceSync], *,
                 max_streams: int = MAX_STREAMS, poll_interval: float = POLL_INTERVAL,
                 heartbeat: float = HEARTBEAT) -> None:
        self.state = state
        self.metrics = metrics
        self.syncs = list(syncs)
        self.max_streams = max_streams
        self.poll_interval = poll_interval
        self.heartbeat = heartbeat
        self.streams = 0
        self.version = 0
        self.payload = b""
        self._text = ""
        self._changed = asyncio.Event()  # replaced on every change; the old one is set
        self._closing = False
        self._poller: asyncio.Task[None] | None = None
        self._relayer: dict[str, dict[str, Any]] = {}  # namespace -> stats or error

    # -- the view ---------------------------------------------------------------------

    def relayer_url(self) -> str | None:
        return self.syncs[0].api.base if self.syncs else None

    def view(self) -> dict[str, Any]:
        held: dict[str, dict[str, Any]] = {"lww": self.state.lww,
                                           "counters": self.state.counters,
                                           "pncounters": self.state.pncounters}
        state = {kind: {k: crdts[k].to_json() for k in sorted(crdts)[:MAX_KEYS]}
                 for kind, crdts in held.items()}
        state["lww"] = {k: _register(reg) for k, reg in state["lww"].items()}
        return {
            "relayer": self.relayer_url(),
            "namespaces": [self._namespace(s) for s in self.syncs],
            "state": state,
            "keys": {kind: len(crdts) for kind, crdts in held.items()},
            "max_keys": MAX_KEYS,
        }

    def _namespace(self, sync: NamespaceSync) -> dict[str, Any]:
        stats = self._relayer.get(sync.ns, {})
        lsn = stats.get("lsn")
        follower = stats.get("follower")
        resyncs = self._rescans(sync.ns)
        resyncs.pop("bootstrap", None)  # the first scan is not a resync
        return {
            "namespace": sync.ns,
            "address": sync.address,
            "synced": sync.synced,
            "last_seq": sync.last_seq,
            "relayer_lsn": lsn,
            "lag": (max(0, lsn - sync.last_seq)
                    if isinstance(lsn, int) and sync.last_seq is not None else None),
            "resyncs": sum(resyncs.values()),
            "resyncs_by_reason": resyncs,
            "upstream": ({k: follower.get(k) for k in _UPSTREAM_FIELDS}
                         if isinstance(follower, dict) else None),
            "relayer_error": stats.get("error"),
        }

    def _rescans(self, ns: str) -> dict[str, int]:
        wanted = self.metrics.registry.restricted_registry(["unison_client_rescans_total"])
        out: dict[str, int] = {}
        for family in wanted.collect():
            for sample in family.samples:
                if sample.name.endswith("_total") and sample.labels.get("namespace") == ns:
                    out[sample.labels.get("reason", "")] = int(sample.value)
        return out

    def refresh(self) -> bool:
        """Rebuild the view; on a change, publish it and wake every stream."""
        text = json.dumps(self.view(), separators=(",", ":"))  # ASCII: one `data:` line
        if text == self._text:
            return False
        self._text = text
        self.payload = f"event: state\ndata: {text}\n\n".encode()
        self.version += 1
        self._wake()
        return True

    def _wake(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    # -- the poller -------------------------------------------------------------------

    async def _poll(self) -> None:
        loop = asyncio.get_running_loop()
        next_relayer = loop.time()
        reader: asyncio.Task[None] | None = None
        try:
            while not self._closing:
                # beside the refreshes, not between them: a relayer slow to answer must
                # not hold back the state the page shows
                if (reader is None or reader.done()) and loop.time() >= next_relayer:
                    reader = asyncio.create_task(self._read_relayer())
                    next_relayer = loop.time() + RELAYER_INTERVAL
                try:
                    self.refresh()
                except Exception:  # the page is a view: a failure here must not stop it
                    log.exception("live page: could not build the view")
                await asyncio.sleep(self.poll_interval)
        finally:
            if reader is not None:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader

    async def _read_relayer(self) -> None:
        reads = [self._relayer_stats(s) for s in self.syncs]
        for sync, doc in zip(self.syncs, await asyncio.gather(*reads), strict=True):
            self._relayer[sync.ns] = doc

    async def _relayer_stats(self, sync: NamespaceSync) -> dict[str, Any]:
        url = f"{sync.api.base}/api/v1/{urllib.parse.quote(sync.ns, safe='')}/stats"
        try:
            async with sync.api.session.get(url, timeout=RELAYER_TIMEOUT) as resp:
                doc = await resp.json(content_type=None)
                if resp.status != 200 or not isinstance(doc, dict):
                    return {"error": f"HTTP {resp.status} from {url}"}
                return doc
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError, RuntimeError) as exc:
            # RuntimeError: the session closed under us while the client stops
            return {"error": f"{type(exc).__name__}: {exc}"}

    def _start_poller(self) -> None:
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll(), name="live-page")

    async def _stop_poller(self) -> None:
        poller, self._poller = self._poller, None
        if poller is not None:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller

    # -- HTTP -------------------------------------------------------------------------

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(body=PAGE_BYTES, content_type="text/html", charset="utf-8",
                            headers=PAGE_HEADERS)

    async def events(self, request: web.Request) -> web.StreamResponse:
        if self._closing:
            return _busy("the client is stopping")
        if self.streams >= self.max_streams:
            return _busy(f"too many live page streams ({self.max_streams} open); "
                         "close a page or retry later")
        self.streams += 1
        try:
            self._start_poller()
            self.refresh()  # a fresh payload for this page (the poller may be asleep)
            return await self._stream(request)
        finally:
            self.streams -= 1
            if self.streams == 0 and not self._closing:
                await self._stop_poller()

    async def _stream(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers=EVENT_HEADERS)
        await resp.prepare(request)
        sent = 0
        try:
            await resp.write(b"retry: 3000\n\n")  # the browser's reconnect delay (ms)
            while not self._closing:
                changed = self._changed  # before the write: a change during it wakes us
                if self.version != sent:
                    sent = self.version
                    await resp.write(self.payload)
                try:
                    await asyncio.wait_for(changed.wait(), self.heartbeat)
                except TimeoutError:
                    await resp.write(b": keepalive\n\n")  # also finds a vanished browser
            await resp.write(b'event: bye\ndata: {"reason":"the client is stopping"}\n\n')
            await resp.write_eof()
        except ConnectionError:  # the browser went away (aiohttp's resets subclass it)
            log.debug("live page: a stream's browser disconnected")
        return resp

    async def on_shutdown(self, app: web.Application) -> None:
        """End every stream now, so the runner's cleanup does not wait on them."""
        self._closing = True
        self._wake()
        await self._stop_poller()


def _register(reg: dict[str, Any]) -> dict[str, Any]:
    """An LWW register as the page shows it: its value as JSON text, cut to a bound (a
    value can be megabytes; every change sends the whole view to every page)."""
    text = json.dumps(reg["value"], ensure_ascii=False, separators=(",", ":"))
    if len(text) > MAX_VALUE_CHARS:
        text = text[:MAX_VALUE_CHARS] + "…"
    return {"text": text, "timestamp": reg["timestamp"], "replica": reg["replica"]}


def _busy(reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=503, headers={"Retry-After": "10"})


def add_routes(app: web.Application, view: LiveView) -> None:
    """`/` and `/events` on the client's app; streams end when the app shuts down."""
    app.router.add_get("/", view.page)
    app.router.add_get("/events", view.events)
    app.on_shutdown.append(view.on_shutdown)


# -- the page ---------------------------------------------------------------------------

_STYLE = """
:root{--bg:#f6f7f9;--card:#fff;--ink:#1d2330;--mute:#677086;--line:#e3e6ec;--ok:#1a7f4b;
--warn:#b25c00;--bad:#b3261e;--dc1:#3867d6;--dc2:#e17055;--dc3:#20bf6b;--dc4:#8854d0}
*{box-sizing:border-box}
body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
background:var(--bg);color:var(--ink)}
header{padding:16px 24px;background:#172033;color:#fff;display:flex;flex-wrap:wrap;
gap:8px 24px;align-items:baseline}
header h1{font-size:18px;margin:0}
header .sub{color:#b9c2d6}
code,.mono{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:13px}
#status{margin-left:auto;padding:2px 10px;border-radius:10px;background:#5b6477;font-size:12px}
#status.live{background:var(--ok)}#status.down{background:var(--bad)}
main{padding:16px 24px;display:grid;gap:16px;max-width:1200px}
section{background:var(--card);border:1px solid var(--line);border-radius:8px;padding:12px 16px}
h2{font-size:15px;margin:0 0 8px}
h2 small{color:var(--mute);font-weight:normal;margin-left:8px}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:5px 8px;border-bottom:1px solid var(--line);vertical-align:top}
th{color:var(--mute);font-weight:600;font-size:12px}
td.num{text-align:right;font-variant-numeric:tabular-nums}
td.value{max-width:420px;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.empty{color:var(--mute);font-style:italic}
.ok{color:var(--ok)}.warn{color:var(--warn)}.bad{color:var(--bad)}
.dc{display:inline-block;margin:0 10px 2px 0;white-space:nowrap}
.dot{display:inline-block;width:9px;height:9px;border-radius:50%;margin-right:4px}
.bar{display:flex;height:6px;border-radius:3px;overflow:hidden;background:var(--line);
margin-top:4px;max-width:320px}
.when{color:var(--mute);font-size:12px}
tr.flash td{animation:flash 2.5s ease-out}
@keyframes flash{from{background:#fff3b0}to{background:transparent}}
#changes{list-style:none;margin:0;padding:0;max-height:220px;overflow:auto}
#changes li{padding:3px 0;border-bottom:1px dashed var(--line)}
"""

_BODY = """<header><h1>Unison CRDT client</h1>
<span class="sub">following relayer <code id="relayer">…</code></span>
<span class="sub">last change <span id="updated">–</span></span>
<span id="status">connecting…</span></header>
<main>
<section><h2>Namespaces<small>client progress and the relayer's lag behind each datacenter</small></h2>
<table id="namespaces"><thead><tr><th>Namespace</th><th>Notifications</th><th>Synced</th>
<th>Last seq_num</th><th>Relayer offset</th><th>Client lag</th><th>Resyncs</th>
<th>Relayer ← datacenter</th></tr></thead><tbody></tbody></table></section>
<section><h2>LWW registers<small id="lww-note"></small></h2>
<table id="lww"><thead><tr><th>Key</th><th>Value</th><th>Written by</th><th>Timestamp</th>
</tr></thead><tbody></tbody></table></section>
<section><h2>G-counters<small id="counters-note"></small></h2>
<table id="counters"><thead><tr><th>Key</th><th>Total</th><th>Per datacenter</th></tr></thead>
<tbody></tbody></table></section>
<section><h2>PN-counters<small id="pncounters-note"></small></h2>
<table id="pncounters"><thead><tr><th>Key</th><th>Total</th><th>Per datacenter (+ / −)</th>
</tr></thead><tbody></tbody></table></section>
<section><h2>Changes<small>as they arrive, newest first</small></h2><ul id="changes"></ul></section>
</main>"""

# Data reaches the DOM only through textContent, dataset and style properties.
_SCRIPT = r"""
"use strict";
const $ = (id) => document.getElementById(id);
const COLORS = ["--dc1", "--dc2", "--dc3", "--dc4"];
const dcColor = new Map();
let previous = null, source = null, retryMs = 1000, stopped = false;

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}
function color(dc) {
  if (!dcColor.has(dc)) dcColor.set(dc, `var(${COLORS[dcColor.size % COLORS.length]})`);
  return dcColor.get(dc);
}
function dcChip(dc, text) {
  const s = el("span", null, "dc"), dot = el("span", null, "dot");
  dot.style.background = color(dc);
  s.append(dot, el("span", `${dc}: ${text}`));
  return s;
}
function bar(counts) {
  const total = Object.values(counts).reduce((a, b) => a + b, 0), b = el("div", null, "bar");
  for (const [dc, n] of Object.entries(counts)) {
    const seg = el("span");
    seg.style.width = total > 0 ? `${(100 * n) / total}%` : "0";
    seg.style.background = color(dc);
    b.append(seg);
  }
  return b;
}
function when(ms) {
  if (typeof ms !== "number" || ms < 1e11 || ms > 1e14) return "";
  return new Date(ms).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
}
function row(kind, key, cells, changed) {
  const tr = el("tr");
  tr.dataset.kind = kind;
  tr.dataset.key = key;
  if (changed) tr.className = "flash";
  tr.append(el("td", key, "mono key"), ...cells);
  return tr;
}
function fill(id, rows, noun) {
  const body = $(id).querySelector("tbody");
  if (!rows.length) {
    const td = el("td", `no ${noun} yet`, "empty");
    td.colSpan = $(id).querySelectorAll("th").length;
    rows = [el("tr")];
    rows[0].append(td);
  }
  body.replaceChildren(...rows);
}
function lwwCells(reg) {
  const stamp = el("td", null, "mono");
  stamp.append(el("div", reg.timestamp), el("div", when(reg.timestamp), "when"));
  const value = el("td", reg.text, "mono value");
  value.title = reg.text;
  return [value, el("td", reg.replica, "mono"),
          stamp];
}
function counterCells(c) {
  const per = el("td");
  for (const [dc, n] of Object.entries(c.counts)) per.append(dcChip(dc, n));
  per.append(bar(c.counts));
  return [el("td", c.total, "num total"), per];
}
function pnCells(c) {
  const per = el("td"), dcs = new Set([...Object.keys(c.p), ...Object.keys(c.n)]);
  for (const dc of dcs) per.append(dcChip(dc, `+${c.p[dc] || 0} / −${c.n[dc] || 0}`));
  return [el("td", c.total, "num total"), per];
}
function upstreamCell(ns) {
  const td = el("td");
  if (ns.relayer_error) { td.append(el("span", ns.relayer_error, "bad")); return td; }
  const up = ns.upstream;
  if (!up) { td.append(el("span", "—", "empty")); return td; }
  const state = up.caught_up ? "ok" : (up.connected ? "warn" : "bad");
  td.append(el("span", `${up.name} (${up.upstream}) `, "mono"),
            el("span", up.lag_records === null ? "lag unknown" : `lag ${up.lag_records}`, state));
  if (up.not_ready_reason) td.title = up.not_ready_reason;
  return td;
}
function namespaceRow(ns) {
  const tr = el("tr");
  tr.dataset.namespace = ns.namespace;
  const reasons = Object.entries(ns.resyncs_by_reason).map(([r, n]) => `${r}: ${n}`).join(", ");
  const resync = el("td", ns.resyncs, "num");
  if (reasons) resync.title = reasons;
  const lag = el("td", ns.lag === null ? "—" : ns.lag, "num " + (ns.lag ? "warn" : "ok"));
  tr.append(el("td", ns.namespace, "mono"), el("td", ns.address, "mono"),
            el("td", ns.synced ? "yes" : "not yet", ns.synced ? "ok" : "warn"),
            el("td", ns.last_seq ?? "—", "num last-seq"), el("td", ns.relayer_lsn ?? "—", "num"),
            lag, resync, upstreamCell(ns));
  return tr;
}
const KINDS = [
  ["lww", "LWW registers", lwwCells, (r) => r.text + " from " + r.replica],
  ["counters", "G-counters", counterCells, (c) => "total " + c.total],
  ["pncounters", "PN-counters", pnCells, (c) => "total " + c.total],
];
function logChange(text) {
  const li = el("li");
  li.append(el("span", new Date().toLocaleTimeString() + "  ", "when"), el("span", text, "mono"));
  $("changes").prepend(li);
  while ($("changes").children.length > 50) $("changes").lastChild.remove();
}
function render(view) {
  $("relayer").textContent = view.relayer || "(none)";
  fill("namespaces", view.namespaces.map(namespaceRow), "namespaces");
  let changes = 0;
  for (const [kind, noun, cells, describe] of KINDS) {
    const held = view.state[kind], before = previous ? previous.state[kind] : null;
    const rows = Object.entries(held).map(([key, v]) => {
      const changed = before !== null && JSON.stringify(before[key]) !== JSON.stringify(v);
      if (changed) { changes++; logChange(`${key} → ${describe(v)}`); }
      return row(kind, key, cells(v), changed);
    });
    fill(kind, rows, noun);
    const shown = rows.length, all = view.keys[kind];
    $(kind + "-note").textContent = all > shown ? `first ${shown} of ${all} keys (all at /state)`
                                                : `${all} key${all === 1 ? "" : "s"}`;
  }
  if (!previous) logChange("connected: state loaded");
  if (changes || !previous) $("updated").textContent = new Date().toLocaleTimeString();
  previous = view;
}
function setStatus(text, cls) { $("status").textContent = text; $("status").className = cls; }
function connect() {
  source = new EventSource("events");
  source.addEventListener("open", () => {
    retryMs = 1000;
    if (stopped) logChange("reconnected");
    stopped = false;
    setStatus("live", "live");
  });
  source.addEventListener("state", (e) => { render(JSON.parse(e.data)); });
  source.addEventListener("bye", () => {
    stopped = true;
    setStatus("client stopped; reconnecting…", "down");
    logChange("the client stopped");
  });
  source.addEventListener("error", () => {
    if (source.readyState !== EventSource.CLOSED) {  // the browser retries by itself
      setStatus(stopped ? "client stopped; reconnecting…" : "reconnecting…", "down");
      return;
    }
    // refused (e.g. 503: too many pages open): EventSource gives up, so retry ourselves
    setStatus(`live updates unavailable; retrying in ${retryMs / 1000}s`, "down");
    setTimeout(connect, retryMs);
    retryMs = Math.min(retryMs * 2, 30000);
  });
}
connect();
"""


def _csp_hash(source: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(source.encode()).digest()).decode() + "'"


PAGE_BYTES = (
    '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">\n'
    '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
    '<title>Unison CRDT client</title><link rel="icon" href="data:,">\n'
    f"<style>{_STYLE}</style></head>\n<body>\n{_BODY}\n<script>{_SCRIPT}</script>\n"
    "</body></html>\n"
).encode()
PAGE_HEADERS = {
    # only this page's own script and style run: injected markup could not execute
    "Content-Security-Policy": (
        f"default-src 'none'; script-src {_csp_hash(_SCRIPT)}; style-src {_csp_hash(_STYLE)}; "
        "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
EVENT_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",  # a buffering proxy would hold the events back
    "X-Content-Type-Options": "nosniff",
}

"""The client's live page in a real headless Chromium, against real processes: dc1, dc2,
the relayer and `unison client`. Writes go through the datacenters; the page, opened
once and never reloaded, must show each scenario's outcome as it converges, and user data
that looks like markup must stay text.

Without a Chromium the tests skip, saying so; with UNISON_REQUIRE_BROWSER=1 (CI) they
fail instead. The browser is found as tests/support/browser.py says (UNISON_CHROMIUM, or
chromium on PATH: `apt-get install -y chromium`).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from unison.local.scenarios import DC1, DC2, seed_scenarios

from tests.integration.test_client import ClientProcess
from tests.integration.test_client_seed_scenarios import client_args
from tests.support.browser import Chromium, Page, find_chromium
from tests.support.nodes import HOST, NodeProcess, running_cluster

# Every data row of the page: "kind key" -> the cells' text.
ROWS = """Object.fromEntries([...document.querySelectorAll("tr[data-key]")].map(
  (tr) => [tr.dataset.kind + " " + tr.dataset.key, [...tr.cells].map((td) => td.textContent)]))"""


STATUS = "document.getElementById('status').textContent"


def chromium_or_skip() -> str:
    path = find_chromium()
    if path:
        return path
    reason = ("no Chromium to drive (apt-get install -y chromium, or set UNISON_CHROMIUM to "
              "its path)")
    if os.environ.get("UNISON_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason}; UNISON_REQUIRE_BROWSER=1 requires the browser tests to run")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, NodeProcess]]:
    chromium_or_skip()  # before starting nodes that would go unused
    with running_cluster(tmp_path_factory.mktemp("client-page")) as nodes:
        yield nodes


@pytest.fixture
async def client(cluster: dict[str, NodeProcess]) -> AsyncIterator[ClientProcess]:
    client = ClientProcess(client_args(cluster["relayer"], "--resync-interval", "1"))
    await client.start()
    try:
        await client.wait_ready()
        yield client
    finally:
        await client.terminate()


@pytest.fixture
async def page(client: ClientProcess) -> AsyncIterator[Page]:
    """The client's live page, open in a fresh browser, connected."""
    async with Chromium(chromium_or_skip()) as browser:
        page = await browser.open(f"http://{HOST}:{client.state_port}/")
        await page.wait_for(f"{STATUS} === 'live'", "the page's event stream")
        # a reload would lose this: checked at the end of each test
        await page.evaluate("window.sameDocument = true")
        yield page


def write(node: NodeProcess, ns: str, key: str, doc: dict[str, Any]) -> None:
    status, body = node.put(ns, key, json.dumps(doc, separators=(",", ":")))
    assert status == 200, body


async def rows_where(page: Page, what: str, holds: Any) -> dict[str, list[str]]:
    """The page's rows once `holds(rows)` is true (polled under a deadline)."""
    deadline = time.monotonic() + 30
    while True:
        rows = await page.evaluate(ROWS)
        if holds(rows):
            return rows
        if time.monotonic() > deadline:
            raise AssertionError(f"the page never showed {what}; it shows {rows}")
        await asyncio.sleep(0.1)


def shows(rows: dict[str, list[str]], expect: Any) -> bool:
    if expect.register is not None:
        cells = rows.get(f"lww {expect.key}")
        reg = expect.register
        return (cells is not None and cells[1] == json.dumps(reg["value"])
                and cells[2] == reg["replica"] and cells[3].startswith(str(reg["timestamp"])))
    cells = rows.get(f"counters {expect.key}")
    return (cells is not None and cells[1] == str(sum(expect.counts.values()))
            and all(f"{dc}: {n}" in cells[2] for dc, n in expect.counts.items()))


async def test_the_page_shows_each_scenario_as_it_converges(
        cluster: dict[str, NodeProcess], page: Page) -> None:
    owner = {ns: node for node in (cluster["dc1"], cluster["dc2"])
             for ns in node.config.storage.namespaces}
    for scenario in seed_scenarios(int(time.time()) * 1000):
        for w in scenario.writes:
            write(owner[w.namespace], w.namespace, w.key, w.payload)
        for expect in scenario.expects:
            await rows_where(page, f"scenario {scenario.number}: {expect.summary}",
                             lambda rows, e=expect: shows(rows, e))

    # beyond the seed: a PN-counter with each datacenter's increments and decrements
    write(cluster["dc1"], DC1, "pncounter:stock", {"replica": DC1, "p": 10, "n": 3})
    write(cluster["dc2"], DC2, "pncounter:stock", {"replica": DC2, "p": 2, "n": 0})
    rows = await rows_where(page, "pncounter:stock = 9", lambda rows: rows.get(
        "pncounters pncounter:stock", [""] * 3)[1:] == [
            "9", f"{DC1}: +10 / −3{DC2}: +2 / −0"])
    assert sorted(k for k in rows if "<" not in k) == [  # the other test's keys have "<"
        "counters counter:api-calls", "counters counter:db-queries",
        "counters counter:page-views", "lww lww:config", "lww lww:feature-flag",
        "lww lww:user-status", "pncounters pncounter:stock"]
    changes = await page.evaluate("document.getElementById('changes').textContent")
    assert 'lww:user-status → "away" from ad-campaign-dc2' in changes
    assert "counter:api-calls → total 175" in changes
    # each namespace: synced, client lag 0 at the relayer's offset, the relayer caught up
    # with the datacenter it follows (read from the relayer every couple of seconds)
    namespaces = await page.wait_for("""(() => {
      const rows = [...document.querySelectorAll("#namespaces tr[data-namespace]")];
      const done = rows.every((tr) => tr.cells[2].textContent === "yes"
        && tr.cells[5].textContent === "0" && tr.cells[3].textContent === tr.cells[4].textContent
        && / lag 0$/.test(tr.cells[7].textContent));
      return done && rows.map((tr) => tr.dataset.namespace);
    })()""", "every namespace caught up on the page")
    assert sorted(namespaces) == sorted(owner)
    relayer = cluster["relayer"].http_port
    assert await page.evaluate("document.getElementById('relayer').textContent") == (
        f"http://{HOST}:{relayer}")
    assert await page.evaluate("window.sameDocument") is True, "the page was reloaded"
    assert not page.browser.errors(), page.browser.errors()


HOSTILE_KEY = 'lww:<img src=x onerror="window.pwned=1">'
HOSTILE_COUNTER = "counter:<svg onload=window.pwned=2>"


async def test_markup_in_keys_and_values_is_shown_as_text(
        cluster: dict[str, NodeProcess], page: Page) -> None:
    dc1 = cluster["dc1"]
    value = "<script>window.pwned=3</script><b>bold?</b>"
    write(dc1, DC1, HOSTILE_KEY, {"value": value, "timestamp": 5, "replica": "<i>dc1</i>"})
    write(dc1, DC1, HOSTILE_COUNTER, {"replica": "<img src=y onerror=window.pwned=4>",
                                      "count": 7})
    rows = await rows_where(page, "the hostile keys",
                            lambda rows: f"lww {HOSTILE_KEY}" in rows
                            and f"counters {HOSTILE_COUNTER}" in rows)
    assert rows[f"lww {HOSTILE_KEY}"][:3] == [HOSTILE_KEY, json.dumps(value), "<i>dc1</i>"]
    assert rows[f"counters {HOSTILE_COUNTER}"][:2] == [HOSTILE_COUNTER, "7"]
    assert "<img src=y onerror=window.pwned=4>: 7" in rows[f"counters {HOSTILE_COUNTER}"][2]
    injected = await page.evaluate(
        "document.querySelectorAll('main img, main svg, main b, main i, main script').length")
    assert injected == 0, "user data became markup"
    assert await page.evaluate("typeof window.pwned") == "undefined"
    assert await page.evaluate("document.scripts.length") == 1
    assert await page.evaluate("window.sameDocument") is True, "the page was reloaded"
    assert not page.browser.errors(), page.browser.errors()


async def test_the_page_says_when_the_client_stops(client: ClientProcess, page: Page) -> None:
    # the client's shutdown ends the open stream at once (a stream left open would hold
    # aiohttp's cleanup for its 60 s timeout, beyond terminate()'s bound)
    assert await client.terminate() == 0
    await page.wait_for(f"{STATUS} === 'client stopped; reconnecting…'", "the goodbye")
    assert "the client stopped" in await page.evaluate(
        "document.getElementById('changes').textContent")
    assert not page.browser.errors(), page.browser.errors()

"""Make docs/client-page.png: the CRDT client's live page after the seed's five scenarios.

Starts dc1, dc2, a relayer and `unison client` on free ports under a temporary directory
(the test suite's helpers: nothing is shared with a running `unison up`), opens the page
in headless Chromium, runs the scenarios through the datacenters while the page watches,
and captures the whole page once it has settled.

    .venv/bin/python scripts/client_page_screenshot.py [--out docs/client-page.png]

Needs the test extras (`make test` installs them) and Chromium (`apt-get install -y
chromium`, or UNISON_CHROMIUM=/path/to/chrome).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests.support: the same node and browser helpers as tests

from unison.local.scenarios import seed_scenarios  # noqa: E402

from tests.integration.test_client import ClientProcess  # noqa: E402
from tests.integration.test_client_seed_scenarios import client_args  # noqa: E402
from tests.support.browser import Chromium, Page, find_chromium  # noqa: E402
from tests.support.nodes import HOST, NodeProcess, running_cluster  # noqa: E402

log = logging.getLogger("client_page_screenshot")

# Scenario 2's timestamp, fixed so the picture does not change on every run.
SCENARIO_2_MS = 1795604797000
SETTLED = ("document.getAnimations().length === 0 && "
           "document.querySelectorAll('tr[data-key]').length === 6")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "client-page.png")
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--height", type=int, default=800)
    return parser.parse_args(argv)


def run_scenarios(nodes: dict[str, NodeProcess]) -> None:
    owner = {ns: node for node in (nodes["dc1"], nodes["dc2"])
             for ns in node.config.storage.namespaces}
    for scenario in seed_scenarios(SCENARIO_2_MS):
        log.info("scenario %d: %s", scenario.number, scenario.title)
        for w in scenario.writes:
            status, body = owner[w.namespace].put(w.namespace, w.key, w.json_text)
            if status != 200:
                raise RuntimeError(f"PUT {w.key} to {w.namespace}: HTTP {status}: {body}")


async def capture(nodes: dict[str, NodeProcess], chromium: str, args: argparse.Namespace) -> None:
    client = ClientProcess(client_args(nodes["relayer"], "--resync-interval", "1"))
    await client.start()
    try:
        await client.wait_ready()
        async with Chromium(chromium) as browser:
            page = await browser.open(f"http://{HOST}:{client.state_port}/",
                                      args.width, args.height)
            await page.wait_for("document.getElementById('status').textContent === 'live'",
                                "the page's event stream")
            await asyncio.to_thread(run_scenarios, nodes)
            await page.wait_for(SETTLED, "the seed's six keys, with animations done")
            await _check_page(page)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            await page.screenshot(args.out)
    finally:
        await client.terminate()


async def _check_page(page: Page) -> None:
    """The picture must show the converged state: say so if it does not."""
    totals = await page.evaluate("""Object.fromEntries([...document.querySelectorAll(
        "#counters tr[data-key]")].map((tr) => [tr.dataset.key, tr.cells[1].textContent]))""")
    want = {"counter:api-calls": "175", "counter:db-queries": "250", "counter:page-views": "8"}
    if totals != want:
        raise RuntimeError(f"the page shows {json.dumps(totals)}, expected {json.dumps(want)}")


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = parse_args(argv)
    chromium = find_chromium()
    if chromium is None:
        log.error("no Chromium: apt-get install -y chromium, or set UNISON_CHROMIUM")
        return 2
    with tempfile.TemporaryDirectory(prefix="unison-screenshot-") as tmp:
        with running_cluster(Path(tmp)) as nodes:
            asyncio.run(capture(nodes, chromium, args))
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

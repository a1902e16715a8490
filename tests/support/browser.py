"""A headless Chromium driven over the Chrome DevTools Protocol (CDP), with nothing but
aiohttp's WebSocket client: no driver binary, no browser download, works offline.

`find_chromium()` names the browser (env UNISON_CHROMIUM, else chromium on PATH);
`Chromium` starts it with a throwaway profile and opens pages; `Page.evaluate` runs an
expression in the page and returns its JSON value; `Page.wait_for` polls one until it
holds, under a deadline; `Page.screenshot` writes a PNG.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import logging
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any

import aiohttp

log = logging.getLogger(__name__)

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
START_LIMIT = 60.0  # a cold Chromium on a loaded 2-core machine takes seconds
CALL_LIMIT = 60.0


def find_chromium() -> str | None:
    explicit = os.environ.get("UNISON_CHROMIUM")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    for name in CANDIDATES:
        if path := shutil.which(name):
            return path
    return None


class BrowserError(RuntimeError):
    """The browser could not start, or a CDP call failed."""


class Chromium:
    """`async with Chromium(path) as browser: page = await browser.open(url)`."""

    def __init__(self, executable: str) -> None:
        self.executable = executable
        self.proc: asyncio.subprocess.Process | None = None
        # one directory for the profile and Chromium's own temporary files (its singleton
        # socket directories), removed whole on close
        self._root = Path(tempfile.mkdtemp(prefix="unison-chromium-"))
        self._profile = self._root / "profile"
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._reader: asyncio.Task[None] | None = None
        self.console: list[str] = []  # the pages' console messages and uncaught errors

    async def __aenter__(self) -> Chromium:
        try:
            await self._start()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _start(self) -> None:
        tmp = self._root / "tmp"
        tmp.mkdir()
        self.proc = await asyncio.create_subprocess_exec(
            self.executable, "--headless=new", "--no-sandbox", "--disable-gpu",
            "--no-first-run", "--no-default-browser-check", "--disable-extensions",
            "--disable-background-networking", "--disable-dev-shm-usage",
            "--hide-scrollbars", "--remote-debugging-port=0", "--remote-debugging-address=127.0.0.1",
            f"--user-data-dir={self._profile}", "about:blank",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
            env={**os.environ, "TMPDIR": str(tmp)},
            start_new_session=True,  # its helpers in one process group, ended together
        )
        # Chromium writes the port it bound (and the browser's WebSocket path) here
        active = self._profile / "DevToolsActivePort"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_LIMIT
        while not (active.exists() and len(active.read_text().splitlines()) >= 2):
            if self.proc.returncode is not None:
                raise BrowserError(f"{self.executable} exited with {self.proc.returncode}")
            if loop.time() > deadline:
                raise BrowserError(f"{self.executable}: no DevTools port after {START_LIMIT}s")
            await asyncio.sleep(0.1)
        port, path = active.read_text().splitlines()[:2]
        self._session = aiohttp.ClientSession()
        self._ws = await self._session.ws_connect(f"ws://127.0.0.1:{port}{path}",
                                                  max_msg_size=0)
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self._ws is not None
        async for msg in self._ws:
            if msg.type != aiohttp.WSMsgType.TEXT:
                continue
            doc = json.loads(msg.data)
            future = self._pending.pop(doc.get("id", -1), None)
            if future is not None and not future.done():
                future.set_result(doc)
            elif doc.get("method") in ("Runtime.consoleAPICalled", "Runtime.exceptionThrown"):
                self.console.append(json.dumps(doc.get("params"))[:500])
        for future in self._pending.values():
            if not future.done():
                future.set_exception(BrowserError("the DevTools connection closed"))

    def errors(self) -> list[str]:
        """Uncaught exceptions and console errors the pages reported so far."""
        return [c for c in self.console if "exceptionDetails" in c or '"type": "error"' in c]

    async def call(self, method: str, params: dict[str, Any] | None = None,
                   session: str | None = None) -> dict[str, Any]:
        """One CDP command; its result, or BrowserError with the browser's message."""
        if self._ws is None:
            raise BrowserError("the browser is not running")
        msg_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[msg_id] = future
        doc: dict[str, Any] = {"id": msg_id, "method": method, "params": params or {}}
        if session is not None:
            doc["sessionId"] = session
        await self._ws.send_str(json.dumps(doc))
        reply = await asyncio.wait_for(future, CALL_LIMIT)
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error']}")
        return reply.get("result", {})

    async def open(self, url: str, width: int = 1280, height: int = 900) -> Page:
        target = await self.call("Target.createTarget", {"url": "about:blank"})
        attached = await self.call("Target.attachToTarget",
                                   {"targetId": target["targetId"], "flatten": True})
        page = Page(self, attached["sessionId"])
        await page.call("Runtime.enable")
        await page.call("Page.enable")
        await page.call("Emulation.setDeviceMetricsOverride",
                        {"width": width, "height": height, "deviceScaleFactor": 1,
                         "mobile": False})
        await page.call("Page.navigate", {"url": url})
        await page.wait_for("document.readyState === 'complete'", "the page to load")
        return page

    async def close(self) -> None:
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await self.call("Browser.close")
            await self._ws.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._session is not None:
            await self._session.close()
        if self.proc is not None:
            await self._end_process(self.proc)
        shutil.rmtree(self._root, ignore_errors=True)

    @staticmethod
    async def _end_process(proc: asyncio.subprocess.Process) -> None:
        """The browser, then whatever helper of its group outlived it (a renderer still
        writing into the profile would recreate it after the removal)."""
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # the group chromium leads (own session)


class Page:
    def __init__(self, browser: Chromium, session: str) -> None:
        self.browser = browser
        self.session = session

    def errors(self) -> list[str]:
        """Uncaught exceptions and console errors the pages reported so far."""
        return [c for c in self.console if "exceptionDetails" in c or '"type": "error"' in c]

    async def call(self, method: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
        return await self.browser.call(method, params, self.session)

    async def evaluate(self, expression: str) -> Any:
        """The expression's value in the page (JSON-serialisable values only)."""
        result = await self.call("Runtime.evaluate", {
            "expression": expression, "returnByValue": True, "awaitPromise": True})
        if "exceptionDetails" in result:
            raise BrowserError(f"{expression[:80]!r} threw: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, what: str, limit: float = 30.0) -> Any:
        """Poll `expression` until it is truthy; its value. AssertionError at the deadline,
        with the expression's last value."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + limit
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if loop.time() > deadline:
                raise AssertionError(f"timed out waiting for {what}; last value {value!r}; "
                                     f"console: {self.browser.console[-5:]}")
            await asyncio.sleep(0.1)

    async def screenshot(self, path: Path, *, full_page: bool = True) -> None:
        params: dict[str, Any] = {"format": "png", "captureBeyondViewport": full_page}
        if full_page:
            metrics = await self.call("Page.getLayoutMetrics")
            size = metrics["cssContentSize"]
            params["clip"] = {"x": 0, "y": 0, "width": size["width"],
                              "height": size["height"], "scale": 1}
        shot = await self.call("Page.captureScreenshot", params)
        await asyncio.to_thread(path.write_bytes, base64.b64decode(shot["data"]))

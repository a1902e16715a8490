"""HTTP endpoints of the client: /state, /metrics, /healthz, /readyz, and the live page
(/ and its event stream /events, in unison.client.web)."""

from __future__ import annotations

from collections.abc import Sequence

from aiohttp import web

from unison.client import web as live
from unison.client.metrics import Metrics
from unison.client.sync import NamespaceSync
from unison.crdt import CRDTState


def build_app(
    state: CRDTState, metrics: Metrics, syncs: Sequence[NamespaceSync]
) -> web.Application:
    async def get_state(request: web.Request) -> web.Response:
        return web.json_response(state.snapshot())

    async def get_metrics(request: web.Request) -> web.Response:
        return web.Response(text=metrics.render(), content_type="text/plain", charset="utf-8")

    def namespaces() -> dict[str, object]:
        return {s.ns: s.status() for s in syncs}

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "namespaces": namespaces()})

    async def readyz(request: web.Request) -> web.Response:
        ready = all(s.synced for s in syncs)
        return web.json_response(
            {"ready": ready, "namespaces": namespaces()}, status=200 if ready else 503
        )

    app = web.Application()
    app.router.add_get("/state", get_state)
    app.router.add_get("/metrics", get_metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    live.add_routes(app, live.LiveView(state, metrics, syncs))
    return app


async def start(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Start serving; returns the runner and the bound port (port 0 picks a free one)."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    server = site._server
    sockets = getattr(server, "sockets", None) or []
    bound = sockets[0].getsockname()[1] if sockets else port
    return runner, bound

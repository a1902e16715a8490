"""The node's aiohttp application: routes, JSON errors, request metrics.

Every answer is JSON (except `/metrics`); errors are `{"error": "..."}` with UnisonDB's
statuses (unknown namespace 404, bad request 400, body too large 413, write to a read-only
namespace 403). Every route's handler is wrapped to turn refusals and aiohttp's own 413
into that shape, count requests by route and status, and hide internal errors behind 500;
a last catch-all route answers 404/405 the same way.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from functools import update_wrapper
from time import perf_counter

from aiohttp import web

from unison.api.auth import guard, load_tokens
from unison.api.converged import add_converged_route
from unison.api.kv import KvRoutes, body_too_large
from unison.api.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from unison.api.metrics import RequestCounter, node_registry
from unison.api.metrics import render as render_metrics
from unison.api.openapi import openapi_document
from unison.api.responses import INTERNAL_ERROR, ApiError, error_response, json_bytes, json_ok
from unison.api.watch import add_watch_routes, watch_metrics
from unison.context import NodeContext
from unison.storage import StoreClosed

log = logging.getLogger(__name__)

CTX_KEY = web.AppKey("unison_ctx", NodeContext)
REQUESTS_KEY = web.AppKey("unison_requests", RequestCounter)
_UNMATCHED = "unmatched"


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Observer:
    """Wraps each route's handler: JSON errors and request counts.

    Per-route wrappers rather than an app middleware: with any middleware aiohttp adds
    its own layer and per-request bookkeeping, which the PUT hot path pays every time.
    Requests no route takes go to `unmatched` (registered last), which answers the JSON
    404/405 the router would have raised.
    """

    def __init__(self, requests: RequestCounter, max_body: int) -> None:
        self.requests = requests
        self.max_body = max_body

    def __call__(self, handler: Handler) -> Handler:
        requests = self.requests

        async def observed(request: web.Request) -> web.StreamResponse:
            start = perf_counter()
            try:
                response = await handler(request)
            except Exception as e:
                response = self._error(request, e)
            resource = request.match_info.route.resource
            requests.add(request.method, resource.canonical if resource is not None else "unmatched",
                         response.status, perf_counter() - start)
            return response

        return update_wrapper(observed, handler)

    def _error(self, request: web.Request, error: Exception) -> web.Response:
        """The JSON answer to what a handler raised (re-raised when nothing should answer)."""
        try:
            raise error
        except ApiError as e:
            return error_response(e.status, e.message)
        except web.HTTPRequestEntityTooLarge:
            return error_response(413, body_too_large(self.max_body))
        except web.HTTPException as e:
            if e.status < 400:  # redirects and the like are not errors
                raise
            return error_response(e.status, e.reason)
        except StoreClosed as e:  # the node is stopping: try again elsewhere or later
            return error_response(503, f"unavailable: {e}")
        except ConnectionResetError:
            raise  # the client went away (e.g. mid-stream on /watch): nothing to answer
        except Exception:
            log.exception("internal error on %s %s", request.method, request.path)
            return error_response(500, INTERNAL_ERROR)

    async def unmatched(self, request: web.Request) -> web.Response:
        """404, or 405 with every method the resources matching the path allow."""
        allowed: set[str] = set()
        for resource in request.app.router.resources():
            if resource is not request.match_info.route.resource:
                allowed |= (await resource.resolve(request))[1]
        if allowed:
            methods = sorted(allowed)
            response = error_response(405, f"method {request.method} not allowed on "
                                           f"{request.path} (allowed: {', '.join(methods)})")
            response.headers["Allow"] = ",".join(methods)
        else:
            response = error_response(404, f"not found: {request.path}")
        self.requests.add(request.method, _UNMATCHED, response.status)
        return response


def build_app(ctx: NodeContext) -> web.Application:
    """The HTTP API of a running node."""
    requests = RequestCounter()
    app = web.Application(client_max_size=ctx.config.http.max_body_size)
    observe = Observer(requests, ctx.config.http.max_body_size)
    app[CTX_KEY] = ctx
    app[REQUESTS_KEY] = requests
    kv = KvRoutes(ctx)
    openapi = json.dumps(openapi_document(), indent=1).encode()

    async def healthz(request: web.Request) -> web.Response:
        return json_ok({"status": "ok", "role": ctx.role})

    async def readyz(request: web.Request) -> web.Response:
        ready, reasons = ctx.ready()
        if ready:
            return json_ok({"ready": True, "reasons": []})
        return json_ok({"ready": False, "reasons": reasons,
                        "error": "not ready: " + "; ".join(reasons)}, 503)

    registry = node_registry(ctx, requests, lambda: watch_metrics(app))

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=render_metrics(registry),
                            headers={"Content-Type": METRICS_CONTENT_TYPE})

    async def openapi_json(request: web.Request) -> web.Response:
        return json_bytes(200, openapi)

    tokens = load_tokens(ctx.config.http)  # StartupError naming the key if unreadable
    read, write = guard(tokens, "read"), guard(tokens, "write")
    base = "/api/v1/{ns}"
    r = app.router
    # Single keys first: they are the hot path, and resolution tries resources in this
    # order. One resource for the key's methods, so a GET or DELETE matches the path once
    # instead of once per method registered before it. POST .../kv/batch still reaches
    # the batch route (the key resource has no POST, so the router moves on), and
    # PUT/GET/DELETE of a key named "batch" work.
    key = r.add_resource(f"{base}/kv/{{key:.+}}")
    key.add_route("PUT", observe(write(kv.put)))
    get = observe(read(kv.get))
    key.add_route("GET", get)
    key.add_route("HEAD", get)  # as add_get() would
    key.add_route("DELETE", observe(write(kv.delete)))
    r.add_post(f"{base}/kv/batch", observe(write(kv.batch)))
    for method in ("GET", "PUT", "DELETE"):
        r.add_route(method, f"{base}/kv/", observe(read(kv.empty_key)))
    r.add_get(f"{base}/kv", observe(read(kv.scan)))
    r.add_get(f"{base}/offset", observe(read(kv.offset)))
    r.add_get(f"{base}/stats", observe(read(kv.stats)))
    r.add_get("/healthz", observe(healthz))
    r.add_get("/readyz", observe(readyz))
    r.add_get("/metrics", observe(read(metrics)))
    r.add_get("/openapi.json", observe(openapi_json))
    add_watch_routes(app, ctx, wrap=lambda handler: observe(read(handler)))
    add_converged_route(app, ctx, wrap=lambda handler: observe(read(handler)))
    r.add_route("*", "/{path:.*}", observe.unmatched)  # last: whatever no route took
    return app

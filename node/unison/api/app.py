"""The node's aiohttp application: routes, JSON errors, request metrics.

Every answer is JSON (except `/metrics`); errors are `{"error": "..."}` with the status
DESIGN section 3 names. One middleware turns refusals and aiohttp's own 404/405/413 into
that shape, counts requests by route and status, and hides internal errors behind 500.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from aiohttp import web

from unison.api.kv import KvRoutes, body_too_large
from unison.api.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from unison.api.metrics import RequestCounter, render_metrics
from unison.api.openapi import openapi_document
from unison.api.responses import ApiError, error_response, json_bytes, json_ok
from unison.api.watch import add_watch_routes, watch_metrics
from unison.storage import StoreClosed

log = logging.getLogger(__name__)

CTX_KEY = web.AppKey("unison_ctx", object)
REQUESTS_KEY = web.AppKey("unison_requests", RequestCounter)
_UNMATCHED = "unmatched"


def _middleware(ctx: Any, requests: RequestCounter) -> Any:
    limit = ctx.config.http.max_body_size

    @web.middleware
    async def observe(request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            response = await handler(request)
        except ApiError as e:
            response = error_response(e.status, e.message)
        except web.HTTPRequestEntityTooLarge:
            response = error_response(413, body_too_large(limit))
        except web.HTTPMethodNotAllowed as e:
            response = error_response(405, f"method {request.method} not allowed on "
                                           f"{request.path} (allowed: "
                                           f"{', '.join(sorted(e.allowed_methods))})")
            response.headers["Allow"] = ",".join(sorted(e.allowed_methods))
        except web.HTTPNotFound:
            response = error_response(404, f"not found: {request.path}")
        except web.HTTPException as e:
            if e.status < 400:  # redirects and the like are not errors
                raise
            response = error_response(e.status, e.reason)
        except StoreClosed as e:  # the node is stopping: try again elsewhere or later
            response = error_response(503, f"unavailable: {e}")
        except ConnectionResetError:
            raise  # the client went away (e.g. mid-stream on /watch): nothing to answer
        except Exception:
            log.exception("internal error on %s %s", request.method, request.path)
            response = error_response(500, "internal error (see the node's log)")
        resource = request.match_info.route.resource
        requests.add(request.method, resource.canonical if resource is not None else _UNMATCHED,
                     response.status)
        return response

    return observe


def build_app(ctx: Any) -> web.Application:
    """The HTTP API of a running node (`ctx` is its `unison.node.NodeContext`)."""
    requests = RequestCounter()
    app = web.Application(middlewares=[_middleware(ctx, requests)],
                          client_max_size=ctx.config.http.max_body_size)
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

    async def metrics(request: web.Request) -> web.Response:
        return web.Response(body=render_metrics(ctx, requests, watch_metrics(app)).encode(),
                            headers={"Content-Type": METRICS_CONTENT_TYPE})

    async def openapi_json(request: web.Request) -> web.Response:
        return json_bytes(200, openapi)

    base = "/api/v1/{ns}"
    r = app.router
    # Single keys first: they are the hot path, and resolution tries resources in this
    # order. POST .../kv/batch still reaches the batch route (the key resource has no
    # POST, so the router moves on), and PUT/GET/DELETE of a key named "batch" work.
    r.add_put(f"{base}/kv/{{key:.+}}", kv.put)
    r.add_get(f"{base}/kv/{{key:.+}}", kv.get)
    r.add_delete(f"{base}/kv/{{key:.+}}", kv.delete)
    r.add_post(f"{base}/kv/batch", kv.batch)
    for method in ("GET", "PUT", "DELETE"):
        r.add_route(method, f"{base}/kv/", kv.empty_key)
    r.add_get(f"{base}/kv", kv.scan)
    r.add_get(f"{base}/offset", kv.offset)
    r.add_get(f"{base}/stats", kv.stats)
    r.add_get("/healthz", healthz)
    r.add_get("/readyz", readyz)
    r.add_get("/metrics", metrics)
    r.add_get("/openapi.json", openapi_json)
    add_watch_routes(app, ctx)
    return app

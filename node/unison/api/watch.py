"""Server-sent events of committed changes (`GET /api/v1/{ns}/watch`).

Placeholder registration point: the notifications work fills this in.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web


def add_watch_routes(app: web.Application, ctx: Any) -> None:
    """Register the watch route(s) on the node's HTTP app."""

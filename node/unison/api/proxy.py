"""An HTTP worker's pass-through to the writer's own app (api/worker.py).

Everything a worker does not serve itself goes here unchanged: method, path with its raw
query, headers (tokens included: the writer's app checks them) and body; the answer
comes back as it was sent, streamed, so `/watch`'s server-sent events flow through as
they are written. Hop-by-hop headers stay on their own hop.
"""

from __future__ import annotations

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from unison.api.responses import error_response

# RFC 9110 7.6.1's hop-by-hop headers, and Host (the upstream's is its own).
_HOP = frozenset(("connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                  "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade", "host"))


class Proxy:
    """The catch-all route's handler: one pooled session to 127.0.0.1:port."""

    def __init__(self, port: int, max_connections: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.max_connections = max_connections
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_connections),
                auto_decompress=False, skip_auto_headers=("User-Agent", "Accept-Encoding"),
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=5))
        return self._session

    async def __call__(self, request: web.Request) -> web.StreamResponse:
        headers = CIMultiDict((k, v) for k, v in request.headers.items()
                              if k.lower() not in _HOP)
        data = request.content if request.body_exists else None
        url = URL(self.base + request.raw_path, encoded=True)
        try:
            async with self._client().request(request.method, url, headers=headers, data=data,
                                              allow_redirects=False) as upstream:
                return await self._relay(request, upstream)
        except aiohttp.ClientError as e:
            return error_response(503, f"unavailable: the node's writer process did not "
                                       f"answer ({type(e).__name__})")

    @staticmethod
    async def _relay(request: web.Request,
                     upstream: aiohttp.ClientResponse) -> web.StreamResponse:
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
        for k, v in upstream.headers.items():
            if k.lower() not in _HOP:
                response.headers.add(k, v)
        await response.prepare(request)
        try:
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
        except aiohttp.ClientError:
            # The writer went away mid-answer: cut the client's connection too, so it
            # sees a truncated answer rather than a complete-looking one.
            if request.transport is not None:
                request.transport.close()
            return response
        await response.write_eof()
        return response

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

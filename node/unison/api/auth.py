"""Optional bearer-token authentication for the HTTP API (off unless configured).

`http_config.read_token_file` and `write_token_file` name files holding one token each
(a Kubernetes Secret mounted as a file, say); surrounding whitespace is ignored. With a
read token, reads (`GET` of keys, scans, offsets, stats, watch, metrics) need
`Authorization: Bearer <read or write token>`; with a write token, writes need the write
token (without one, writes need the read token when that is set). `/healthz`, `/readyz`
and `/openapi.json` stay open. Tokens are compared in constant time. Routes are wrapped
only when a token is configured, so an open node pays nothing per request.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from unison.api.responses import error_response
from unison.config import HttpConfig
from unison.errors import StartupError

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Tokens:
    read: bytes | None = None
    write: bytes | None = None

    def accepted(self, need: str) -> tuple[list[bytes], str]:
        """The tokens that grant `need` ("read" or "write"), and the key to name."""
        if need == "write":
            if self.write is not None:
                return [self.write], "http_config.write_token_file"
            return ([self.read], "http_config.read_token_file") if self.read else ([], "")
        tokens = [t for t in (self.read, self.write) if t is not None]
        return (tokens, "http_config.read_token_file") if self.read else ([], "")


def _read_token(path: str, key: str) -> bytes | None:
    if not path:
        return None
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as e:
        raise StartupError(f"{key}: cannot read the token file {path}: {e}") from e
    if not token:
        raise StartupError(f"{key}: the token file {path} is empty")
    return token.encode()


def load_tokens(cfg: HttpConfig) -> Tokens:
    return Tokens(_read_token(cfg.read_token_file, "http_config.read_token_file"),
                  _read_token(cfg.write_token_file, "http_config.write_token_file"))


def _presented(request: web.Request) -> bytes | None:
    header = request.headers.get("Authorization")
    if header is None or header[:7].lower() != "bearer ":
        return None
    return header[7:].strip().encode()


def guard(tokens: Tokens, need: str) -> Callable[[Handler], Handler]:
    """A wrapper that answers 401 unless the request carries a token granting `need`;
    the identity when no token grants it (authentication off for it)."""
    accepted, key = tokens.accepted(need)
    if not accepted:
        return lambda handler: handler

    def wrap(handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            presented = _presented(request)
            ok = False
            if presented is not None:
                for token in accepted:  # every one compared: no early exit to time
                    ok |= hmac.compare_digest(token, presented)
            if ok:
                return await handler(request)
            what = "missing" if presented is None else "invalid"
            response = error_response(401, f"authorization: {what} bearer token (the {need} "
                                           f"token, see {key})")
            response.headers["WWW-Authenticate"] = 'Bearer realm="unison"'
            return response

        return guarded

    return wrap

"""JSON responses and the API's error type.

Success bodies on the hot path are pre-encoded bytes: the PUT handler should spend its
time on the write, not on serialising `{"success": true}` for the millionth time.
"""

from __future__ import annotations

import json
from typing import Any

import pybase64
from aiohttp import web

JSON = "application/json"
SUCCESS_BODY = b'{"success":true}'
UNCHANGED_BODY = b'{"success":true,"changed":false}'  # a merged CRDT PUT that changed nothing
NOT_FOUND_BODY = b'{"value":"","found":false}'  # GET of a missing key
INTERNAL_ERROR = "internal error (see the node's log)"


class ApiError(Exception):
    """A request the API refuses: becomes `{"error": message}` with `status`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def json_bytes(status: int, body: bytes) -> web.Response:
    return web.Response(status=status, body=body, content_type=JSON)


def json_ok(data: Any, status: int = 200) -> web.Response:
    return web.Response(status=status, body=json.dumps(data, separators=(",", ":")).encode(),
                        content_type=JSON)


def success() -> web.Response:
    return web.Response(body=SUCCESS_BODY, content_type=JSON)


def value_body(value: bytes | None) -> bytes:
    """A GET's answer for the stored value (None: missing). base64 needs no JSON escaping,
    so the body is assembled directly."""
    if value is None:
        return NOT_FOUND_BODY
    return b'{"value":"' + pybase64.b64encode(value) + b'","found":true}'


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}, separators=(",", ":")).encode()


def error_response(status: int, message: str) -> web.Response:
    return json_bytes(status, error_body(message))

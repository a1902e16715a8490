"""The relayer's HTTP API as the client uses it: get one key, scan a namespace, read the
namespace's position (LSN and history identity). Every failure becomes RelayerError with a
readable reason; a read at an LSN the relayer does not hold is RelayerBehind."""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp

SCAN_PAGE = 1000


class RelayerError(Exception):
    """The relayer could not be reached or answered something unusable."""


class RelayerBehind(RelayerError):
    """A read at `min_lsn` answered 503 by a relayer at `lsn` (lagging, or on a history
    that restarted below the LSN asked for)."""

    def __init__(self, message: str, lsn: int, min_lsn: int) -> None:
        super().__init__(message)
        self.lsn = lsn
        self.min_lsn = min_lsn


@dataclass(frozen=True)
class Position:
    """A namespace's latest LSN and, when the relayer says, its history identity: an LSN
    only means something within one history (a datacenter that lost its disk, or a
    follower resynced onto a new history, counts from 1 again)."""

    lsn: int | None  # None: the relayer reports no offset at all
    history: tuple[str, int] | None = None  # (history_id, history_epoch)


def _behind(url: str, status: int, text: str) -> RelayerBehind | None:
    # a node's answer to ?min_lsn it does not reach: 503 {"error", "lsn", "min_lsn"}
    if status != 503:
        return None
    try:
        doc = json.loads(text)
    except ValueError:
        return None
    if not isinstance(doc, dict):
        return None
    lsn, wanted = doc.get("lsn"), doc.get("min_lsn")
    if not (isinstance(lsn, int) and isinstance(wanted, int)):
        return None
    return RelayerBehind(f"GET {url}: HTTP 503: {text[:200]}", lsn, wanted)


def _lsn(url: str, status: int, doc: Any) -> int:
    """The integer `lsn` of a 200 answer (/offset or /stats)."""
    lsn = doc.get("lsn") if isinstance(doc, dict) else None
    if status != 200 or isinstance(lsn, bool) or not isinstance(lsn, int):
        raise RelayerError(f"GET {url}: HTTP {status}: no integer 'lsn' in {doc!r:.200}")
    return lsn


def _raise_if_namespace_missing(url: str, status: int, doc: Any) -> None:
    # a 404 naming the namespace is a wrong namespace, not a missing key or endpoint
    if status == 404 and isinstance(doc, dict) and "namespace not found" in str(doc.get("error")):
        raise RelayerError(f"GET {url}: {doc['error']}")


class RelayerAPI:
    def __init__(self, base_url: str, session: aiohttp.ClientSession) -> None:
        self.base = base_url.rstrip("/")
        self.session = session

    def _url(self, ns: str, *parts: str) -> str:
        # ':' stays readable (lww:user-status), '/' and the rest are escaped
        quoted = [urllib.parse.quote(p, safe=":@") for p in (ns, *parts)]
        return f"{self.base}/api/v1/" + "/".join(quoted)

    async def _get_json(self, url: str, params: dict[str, str] | None = None, *,
                        missing_ok: bool = False) -> tuple[int, Any]:
        """(status, JSON body); `missing_ok`: a 404/405 without JSON (an endpoint this
        relayer does not have) is (status, None) rather than an error."""
        try:
            async with self.session.get(url, params=params) as resp:
                text = await resp.text()
                if (behind := _behind(url, resp.status, text)) is not None:
                    raise behind
                if resp.status >= 500:
                    raise RelayerError(f"GET {url}: HTTP {resp.status}: {text[:200]}")
                try:
                    return resp.status, await resp.json(content_type=None)
                except ValueError:
                    if missing_ok and resp.status in (404, 405):
                        return resp.status, None
                    raise RelayerError(
                        f"GET {url}: HTTP {resp.status} with a body that is not JSON: {text[:200]!r}"
                    ) from None
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            raise RelayerError(f"GET {url}: {type(exc).__name__}: {exc}") from None

    async def get(self, ns: str, key: str, min_lsn: int | None = None) -> str | None:
        """The key's base64 value, or None when the relayer does not have it. With
        `min_lsn` (a notification's seq_num), from a relayer at that LSN at least: one
        behind waits a little, then answers 503 (a RelayerError), so a relayer replica
        that lags behind the one that notified never serves an older value."""
        url = self._url(ns, "kv", key)
        status, doc = await self._get_json(url, None if min_lsn is None
                                           else {"min_lsn": str(min_lsn)})
        _raise_if_namespace_missing(url, status, doc)
        if status == 404:
            return None
        if status != 200 or not isinstance(doc, dict):
            raise RelayerError(f"GET {url}: HTTP {status}: {doc!r:.200}")
        if not doc.get("found", "value" in doc):
            return None
        value = doc.get("value")
        if not isinstance(value, str):
            raise RelayerError(f"GET {url}: 'value' is not a string: {value!r:.100}")
        return value

    async def scan(self, ns: str, prefix: str = "",
                   min_lsn: int | None = None) -> AsyncIterator[tuple[str, Any]]:
        """Every (key, base64 value) under prefix, paging with `after`. Values are passed
        on unchecked: a bad one is the CRDT layer's to report, with its key. `min_lsn`:
        as for get()."""
        url = self._url(ns, "kv")
        after: str | None = None
        while True:
            params = {"prefix": prefix, "limit": str(SCAN_PAGE)}
            if min_lsn:
                params["min_lsn"] = str(min_lsn)
            if after is not None:
                params["after"] = after
            status, doc = await self._get_json(url, params)
            if status != 200 or not isinstance(doc, dict) or not isinstance(doc.get("items"), list):
                raise RelayerError(f"scan {url}?prefix={prefix}: HTTP {status}: {doc!r:.200}")
            items = doc["items"]
            for item in items:
                if not isinstance(item, dict) or not isinstance(item.get("key"), str):
                    raise RelayerError(f"scan {url}: item without a string 'key': {item!r:.100}")
                yield item["key"], item.get("value")
            if not doc.get("more") or not items:
                return
            after = items[-1]["key"]

    async def offset(self, ns: str) -> int | None:
        """The namespace's latest LSN, or None when the relayer has no offset endpoint."""
        url = self._url(ns, "offset")
        status, doc = await self._get_json(url)
        _raise_if_namespace_missing(url, status, doc)
        if status in (404, 405):
            return None
        return _lsn(url, status, doc)

    async def position(self, ns: str) -> Position:
        """The namespace's LSN and history identity from /stats; a relayer without /stats
        (UnisonDB) gives its /offset and no identity."""
        url = self._url(ns, "stats")
        status, doc = await self._get_json(url, missing_ok=True)
        _raise_if_namespace_missing(url, status, doc)
        if status in (404, 405):
            return Position(await self.offset(ns))
        lsn = _lsn(url, status, doc)
        hid, epoch = doc.get("history_id"), doc.get("history_epoch")
        if isinstance(hid, str) and isinstance(epoch, int) and not isinstance(epoch, bool):
            return Position(lsn, (hid, epoch))
        return Position(lsn)

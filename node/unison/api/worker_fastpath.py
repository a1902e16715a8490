"""The fast path (api/fastpath.py) in an HTTP worker process.

The fast path answers plain single-key GET, PUT and DELETE requests without aiohttp's
request and response objects, which are most of a request's CPU. In a worker the
namespaces it serves are `RemoteStore`s: a write is a frame to the writer whose answer
settles the future the fast path waits on, as a local store's group commit would; a GET,
which the fast path reads synchronously from a local store, becomes a frame too, answered
by `WorkerFastPath`. Whatever the fast path hands to aiohttp gets the worker's aiohttp
routes (api/worker.py), so the answers stay the single-process node's.
"""

from __future__ import annotations

import asyncio
import json
from functools import partial
from typing import TYPE_CHECKING, Any, cast

from unison.api import fastpath, frames
from unison.api.metrics import RequestCounter
from unison.api.responses import UNCHANGED_BODY, ApiError, error_body, value_body
from unison.crdt import stored as crdt_stored
from unison.storage import Merger, Mutation, NamespaceStore, Op, StoreClosed

if TYPE_CHECKING:
    from unison.api.worker import WriterLink



class RemoteStore:
    """A namespace served by the writer, as the fast path uses a store."""

    def __init__(self, name: str, index: int, merged: bool, link: WriterLink) -> None:
        self.name = name
        self.index = index
        self.link = link
        self.merger = Merger(crdt_stored.PREFIXES, crdt_stored.merge_stored) if merged else None

    def _send(self, op: int, key: bytes, value: bytes = b"") -> asyncio.Future[frames.Answer]:
        try:
            return self.link.request(frames.request, self.index, op, key, value)
        except ApiError as e:  # the writer is gone: aiohttp's route answers the 503
            raise StoreClosed(e.message) from None

    def submit(self, mutations: list[Mutation]) -> asyncio.Future[list[int]]:
        """One PUT or DELETE (all the fast path writes); the future settles with the
        writer's answer, after the durable commit."""
        (m,) = mutations
        answer = self._send(frames.PUT if m.op is Op.PUT else frames.DELETE, m.key, m.value)
        done: asyncio.Future[list[int]] = self.link.loop.create_future()
        answer.add_done_callback(partial(_settle, done, m))
        return done

    def fetch(self, key: bytes) -> asyncio.Future[frames.Answer]:
        return self._send(frames.GET, key)


def _settle(done: asyncio.Future[list[int]], m: Mutation,
            answer: asyncio.Future[frames.Answer]) -> None:
    error = answer.exception()
    if error is not None:
        done.set_exception(StoreClosed(getattr(error, "message", str(error))))
        return
    a = answer.result()
    if a.status == 200:
        if m.changed is not None:  # a merged CRDT PUT: did it change the state?
            m.changed.append(a.payload != UNCHANGED_BODY)
        done.set_result([])
    elif a.status == 503:  # the writer's StoreClosed, with its message
        done.set_exception(StoreClosed(json.loads(a.payload)["error"]))
    else:  # the fast path logs it and answers 500 as aiohttp's routes would
        done.set_exception(RuntimeError(f"the writer answered {a.status}: {a.payload!r}"))


class WorkerFastPath(fastpath.FastPathProtocol):
    """The fast path with GETs answered by the writer (asynchronously, like a write)."""

    def _answer(self, r: fastpath.Request, start: float) -> None:
        if r.method != b"GET":
            super()._answer(r, start)
            return
        answer = cast(RemoteStore, r.store).fetch(r.key)  # StoreClosed: handed over
        self._busy = True
        answer.add_done_callback(partial(self._fetched, start))

    def _fetched(self, start: float, answer: asyncio.Future[frames.Answer]) -> None:
        self._busy = False
        if self._gone:
            return
        error = answer.exception()
        if error is not None:
            body = error_body(getattr(error, "message", str(error)))
            self._respond("GET", 503, body, start)
        else:
            a = answer.result()
            if a.kind in (frames.FOUND, frames.MISSING):
                body = value_body(a.payload if a.kind == frames.FOUND else None)
            else:
                body = a.payload
            self._respond("GET", a.status, body, start)
        self._serve()


def worker_routes(namespaces: list[str], writable: list[str], merged: list[str],
                  link: WriterLink, max_key: int, max_body: int,
                  requests: RequestCounter) -> fastpath.Routes:
    stores: dict[str, Any] = {ns: RemoteStore(ns, i, ns in merged, link)
                              for i, ns in enumerate(namespaces)}
    return fastpath.Routes(cast(dict[str, NamespaceStore], stores), frozenset(writable),
                           max_key, max_body, requests)

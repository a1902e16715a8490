"""The running client: state server, one NamespaceSync per namespace, clean shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys

import aiohttp
import zmq
import zmq.asyncio
from aiohttp import web

from unison.client import output, server
from unison.client.metrics import Metrics
from unison.client.options import ClientOptions
from unison.client.relayer import RelayerAPI
from unison.client.sync import NamespaceSync, StdoutPrinter
from unison.crdt import CRDTState

log = logging.getLogger("unison.client")

HTTP_TIMEOUT = aiohttp.ClientTimeout(total=10, connect=3)
_SIGNALS = (signal.SIGINT, signal.SIGTERM)


async def run(opts: ClientOptions) -> int:
    """Serve the state, follow every namespace until SIGINT/SIGTERM; the exit code."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in _SIGNALS:
        loop.add_signal_handler(sig, stop.set)

    printer = StdoutPrinter(opts.quiet)
    state = CRDTState()
    metrics = Metrics()
    ctx = zmq.asyncio.Context()
    syncs: list[NamespaceSync] = []
    runner: web.AppRunner | None = None
    try:
        async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as session:
            api = RelayerAPI(opts.http, session)
            syncs = [
                NamespaceSync(ns, addr, ctx=ctx, api=api, state=state, metrics=metrics,
                              printer=printer, resync_interval=opts.resync_interval, stop=stop,
                              curve=opts.curve)
                for ns, addr in opts.zmq.items()
            ]
            try:
                runner, port = await server.start(
                    server.build_app(state, metrics, syncs), opts.state_host, opts.state_port
                )
            except OSError as exc:
                print(
                    f"unison client: cannot serve on {opts.state_host}:{opts.state_port}: {exc}",
                    file=sys.stderr,
                )
                return 1
            _announce(printer, opts, port)
            if not _connect(syncs):
                return 2
            return await _follow_until_stopped(syncs, stop, printer)
    finally:
        for s in syncs:
            s.close()
        ctx.term()
        if runner is not None:
            await runner.cleanup()
        for sig in _SIGNALS:
            loop.remove_signal_handler(sig)


def _announce(printer: StdoutPrinter, opts: ClientOptions, port: int) -> None:
    printer.show(output.banner(), always=True)
    printer.show(
        f"State server listening on http://{opts.state_host}:{port} "
        "(/ live page, /state, /metrics, /healthz, /readyz)",
        always=True,
    )
    printer.show(f"Relayer HTTP API: {opts.http}", always=True)
    printer.show("Waiting for change notifications...", always=True)


def _connect(syncs: list[NamespaceSync]) -> bool:
    """Connect every namespace's SUB socket; False (and a message) if one cannot."""
    for s in syncs:
        try:
            s.connect()
        except zmq.ZMQError as exc:
            print(f"unison client: --zmq {s.ns}={s.address}: cannot connect: {exc}",
                  file=sys.stderr)
            return False
    return True


async def _follow_until_stopped(syncs: list[NamespaceSync], stop: asyncio.Event,
                                printer: StdoutPrinter) -> int:
    """Run every namespace's task until a signal or a task fails; 1 if one failed."""
    tasks = [asyncio.create_task(s.run(), name=f"sync-{s.ns}") for s in syncs]
    stopper = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
    failed = [t for t in done if t is not stopper and t.exception() is not None]
    for t in failed:
        log.error("namespace task %s failed", t.get_name(), exc_info=t.exception())
    printer.show("\nShutting down...", always=True)
    stop.set()
    for t in [stopper, *tasks]:
        t.cancel()
    for t in [stopper, *tasks]:
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await t
    return 1 if failed else 0

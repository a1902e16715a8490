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

from unison.client import output, server
from unison.client.metrics import Metrics
from unison.client.options import ClientOptions
from unison.client.relayer import RelayerAPI
from unison.client.sync import Console, NamespaceSync
from unison.crdt import CRDTState

log = logging.getLogger("unison.client")

HTTP_TIMEOUT = aiohttp.ClientTimeout(total=10, connect=3)


async def run(opts: ClientOptions) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    console = Console(opts.quiet)
    state = CRDTState()
    metrics = Metrics()
    ctx = zmq.asyncio.Context()
    syncs: list[NamespaceSync] = []
    runner = None
    try:
        async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as session:
            api = RelayerAPI(opts.http, session)
            syncs = [
                NamespaceSync(
                    ns,
                    addr,
                    ctx=ctx,
                    api=api,
                    state=state,
                    metrics=metrics,
                    console=console,
                    resync_interval=opts.resync_interval,
                    stop=stop,
                )
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
            console.show(output.banner(), always=True)
            console.show(
                f"State server listening on http://{opts.state_host}:{port} "
                "(/state, /metrics, /healthz, /readyz)",
                always=True,
            )
            console.show(f"Relayer HTTP API: {opts.http}", always=True)
            console.show("Waiting for change notifications...", always=True)
            for s in syncs:
                try:
                    s.connect()
                except zmq.ZMQError as exc:
                    print(
                        f"unison client: --zmq {s.ns}={s.address}: cannot connect: {exc}",
                        file=sys.stderr,
                    )
                    return 2
            tasks = [asyncio.create_task(s.run(), name=f"sync-{s.ns}") for s in syncs]
            stopper = asyncio.create_task(stop.wait())
            done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
            failed = [t for t in done if t is not stopper and t.exception() is not None]
            for t in failed:
                log.error("namespace task %s failed", t.get_name(), exc_info=t.exception())
            console.show("\nShutting down...", always=True)
            stop.set()
            for t in [stopper, *tasks]:
                t.cancel()
            for t in [stopper, *tasks]:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await t
            return 1 if failed else 0
    finally:
        for s in syncs:
            s.close()
        ctx.term()
        if runner is not None:
            await runner.cleanup()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)

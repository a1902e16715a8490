"""Composition root: wires storage, HTTP, replication and notifications for a role.

`unison node -config FILE replicator|relayer`. A replicator serves its namespaces
read-write; a relayer serves them read-only and follows upstreams. Parts only meet here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web

from unison import eventloop
from unison.config import NodeConfig, load_config
from unison.context import NodeContext
from unison.crdt import stored as crdt_stored
from unison.errors import ConfigError, StartupError
from unison.logs import setup_logging
from unison.storage import Merger, NamespaceStore

if TYPE_CHECKING:  # imported when first needed: a replicator never loads the follower
    from unison.api.workers import WorkerPool
    from unison.notify.publisher import Notifier
    from unison.replication.follower import Follower
    from unison.replication.server import ReplicationServer

__all__ = ["Node", "NodeContext", "StartupError", "main"]

log = logging.getLogger("unison.node")

ROLES = ("replicator", "relayer")
# UnisonDB's current command names for the same two roles (the seed uses the ones above).
ROLE_ALIASES = {"server": "replicator", "replica": "relayer", "relay": "relayer"}


class Node:
    def __init__(self, config: NodeConfig, role: str) -> None:
        if role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, got {role!r}")
        self.config = config
        self.role = role
        self.stores: dict[str, NamespaceStore] = {}
        self._followers: dict[str, Follower] = {}
        self._notifiers: dict[str, Notifier] = {}
        self._grpc: ReplicationServer | None = None
        self._http: web.AppRunner | WorkerPool | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.ctx: NodeContext | None = None

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        cfg = self.config
        self._open_stores()
        if self.role == "relayer":
            writable: frozenset[str] = frozenset()
        else:
            writable = frozenset(self.stores)
            for store in self.stores.values():
                store.claim_history()  # a follower's copy restored here: a new epoch
                if store.name in cfg.storage.crdt_merge_namespaces:
                    store.merger = Merger(crdt_stored.PREFIXES, crdt_stored.merge_stored)
            if cfg.upstreams:
                log.warning("relayer_config is ignored by a replicator; start with 'relayer' "
                            "to follow upstreams")
        self.ctx = NodeContext(cfg, self.role, self.stores, writable)

        if cfg.notifiers:
            from unison.notify.publisher import Notifier

            for nc in cfg.notifiers:
                notifier = Notifier(self.stores[nc.namespace], nc, cfg.write_notify,
                                    bind_ip=cfg.http.listen_ip)
                await notifier.start()  # raises StartupError naming port and namespace
                self._notifiers[nc.namespace] = notifier
                self.ctx.notifiers[nc.namespace] = notifier

        if cfg.grpc.port:
            from unison.replication.server import ReplicationServer

            self._grpc = ReplicationServer(self.stores, cfg.grpc)
            await self._grpc.start()
            log.info("gRPC server listening on %s:%d", cfg.grpc.listen_ip, cfg.grpc.port)

        if self.role == "relayer":
            from unison.replication.follower import Follower

            for up in cfg.upstreams:
                for ns in up.namespaces:
                    follower = Follower(self.stores[ns], up)
                    follower.start()
                    self._followers[ns] = follower
                    self.ctx.followers[ns] = follower

        wc = cfg.storage.wal_cleanup
        if wc.enabled and (wc.max_age > 0 or wc.max_records > 0):
            self._tasks.append(asyncio.create_task(self._retention_loop(), name="retention"))

        await self._serve_http(self.ctx)
        for ns in cfg.storage.namespaces:
            mode = "read-write" if ns in writable else "read-only"
            log.info("Namespace '%s' initialized (%s, lsn %d)", ns, mode, self.stores[ns].last_lsn)

    def _open_stores(self) -> None:
        cfg = self.config
        base = Path(cfg.storage.base_dir)
        for ns in cfg.storage.namespaces:
            try:
                self.stores[ns] = NamespaceStore(
                    ns, base / ns, bytes_per_sync=cfg.storage.bytes_per_sync,
                    max_pending_writes=cfg.storage.max_pending_writes,
                    sync_timeout=cfg.storage.sync_timeout,
                    wal_fsync_interval=cfg.storage.wal_fsync_interval).open()
            except Exception as e:
                raise StartupError(f"namespace {ns}: cannot open storage in {base / ns}: {e}") from e
            self.stores[ns].start()

    async def _serve_http(self, ctx: NodeContext) -> None:
        from unison.api.app import build_app
        from unison.api.server import BoundedSite, limit_accept_errors

        cfg = self.config
        limit_accept_errors(asyncio.get_running_loop())
        if cfg.http.workers:  # worker processes serve the port; this process writes
            from unison.api.workers import WorkerPool

            self._http = WorkerPool(ctx, build_app(ctx))
            await self._http.start()  # StartupError naming the port
            return
        self._http = web.AppRunner(build_app(ctx), access_log=None, handle_signals=False,
                                   keepalive_timeout=cfg.http.idle_timeout,
                                   lingering_time=1.0)  # reading what a refused body still sends
        await self._http.setup()
        site = BoundedSite(self._http, cfg.http, cfg.http.listen_ip, cfg.http_port,
                           reuse_address=True)
        try:
            await site.start()
        except OSError as e:
            raise StartupError(f"HTTP port {cfg.http_port} on {cfg.http.listen_ip}: {e.strerror}") from e
        log.info("HTTP server listening on :%d (address %s, max %d connections)",
                 cfg.http_port, cfg.http.listen_ip, site.cap)

    async def _retention_loop(self) -> None:
        wc = self.config.storage.wal_cleanup
        while True:
            await asyncio.sleep(wc.interval)
            for store in self.stores.values():
                try:
                    await store.apply_retention(wc.max_records, wc.max_age)
                except Exception:
                    log.exception("namespace %s: retention pass failed", store.name)

    async def stop(self) -> None:
        """Stop accepting, drain, close RocksDB. Safe to call more than once."""
        if self._http is not None:
            await self._http.cleanup()
            self._http = None
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        for follower in self._followers.values():
            await follower.stop()
        self._followers.clear()
        if self._grpc is not None:
            await self._grpc.stop()
            self._grpc = None
        for notifier in self._notifiers.values():
            await notifier.stop()
        self._notifiers.clear()
        for store in self.stores.values():
            await store.close()
        self.stores.clear()


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="unison node",
        description="Run a Unison node. 'replicator' serves its namespaces read-write and "
        "streams their log over gRPC; 'relayer' follows upstreams read-only and publishes "
        "change notifications over ZeroMQ.",
        epilog="example: unison node -config dc1.toml replicator",
    )
    # UnisonDB spells it -config; keep that, and the usual --config.
    p.add_argument("-config", "--config", "-c", dest="config", required=True, metavar="FILE",
                   help="UnisonDB-style TOML config file")
    p.add_argument("role", choices=ROLES + tuple(ROLE_ALIASES),
                   help="node role (UnisonDB's newer names: server = replicator, "
                   "replica or relay = relayer)")
    p.add_argument("--loop", choices=eventloop.CHOICES, default=None,
                   help="event loop: uvloop when installed (auto, the default) or asyncio's "
                   f"own; also ${eventloop.ENV}")
    args = p.parse_args(argv)
    args.role = ROLE_ALIASES.get(args.role, args.role)
    return args


async def _serve(node: Node) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await node.start()
    log.info("node ready (role %s, config %s)", node.role, node.config.source)
    await stop.wait()
    log.info("shutting down")
    await node.stop()
    log.info("stopped cleanly")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    try:
        config = load_config(args.config)
        loop = args.loop or eventloop.choice_from_env()
    except (ConfigError, ValueError) as e:
        print(f"unison node: {e}", file=sys.stderr)
        return 2
    setup_logging(config.log.log_level, config.log.log_format,
                  timestamps=not config.log.disable_timestamp)
    node = Node(config, args.role)
    try:
        eventloop.run(_serve(node), loop, program="unison node")
    except (StartupError, eventloop.LoopUnavailable) as e:
        log.error("start-up failed: %s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

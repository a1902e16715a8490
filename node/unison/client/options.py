"""Command line and environment for `unison client`."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from unison.logs import FORMATS

if TYPE_CHECKING:
    from unison.notify.curve import ClientKeys

DEFAULT_HTTP = "http://localhost:8003"
DEFAULT_ZMQ = {
    "ad-campaign-dc1": "tcp://localhost:5555",
    "ad-campaign-dc2": "tcp://localhost:5556",
}
DEFAULT_STATE_PORT = 8090
ZMQ_TRANSPORTS = ("tcp://", "ipc://", "inproc://")


class UsageError(Exception):
    """A bad option or environment value; the message names it."""


@dataclass
class ClientOptions:
    http: str = DEFAULT_HTTP
    zmq: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_ZMQ))
    state_host: str = "0.0.0.0"
    state_port: int = DEFAULT_STATE_PORT
    resync_interval: float = 5.0
    quiet: bool = False
    log_level: str = "INFO"
    log_format: str = "text"
    curve: ClientKeys | None = None  # CURVE keys for every notifier; None: plaintext


DESCRIPTION = """\
Watch the relayer's change notifications and keep converged CRDT state.

For each namespace the client subscribes to the relayer's ZeroMQ notifier, fetches every
changed key over HTTP and merges it (lww: LWW-register, counter: G-counter, pncounter:
PN-counter), printing what happened and the CURRENT CRDT STATE block. On start it scans
each namespace so it converges even when started after the writes; it rescans a namespace
when seq_num jumps (missed notifications) or when the relayer's offset is ahead of what it
has seen. Malformed values are logged with their key and skipped. Deletes leave CRDT state
unchanged (a CRDT never forgets) and are only logged.
"""

EPILOG = """\
environment (used when the option is not given):
  UNISON_HTTP         relayer HTTP address
  UNISON_ZMQ          namespaces and notifier addresses, "ns=addr,ns=addr"
  UNISON_STATE_PORT   port of the /state, /metrics, /healthz server
  UNISON_STATE_HOST   address that server binds
  UNISON_LOG_LEVEL    log level
  UNISON_CURVE_SERVER_KEY, UNISON_CURVE_CERT   the two --curve-* files

HTTP endpoints served: /state (JSON of the converged state), /metrics (Prometheus),
/healthz (always 200 while running), /readyz (200 once every namespace was scanned).
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="unison client",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--http",
        metavar="URL",
        help=f"relayer HTTP API base address (default {DEFAULT_HTTP})",
    )
    p.add_argument(
        "--zmq",
        metavar="NS=ADDR",
        action="append",
        help="a namespace and its ZeroMQ notifier address; repeat per namespace "
        "(default: " + ", ".join(f"{k}={v}" for k, v in DEFAULT_ZMQ.items()) + ")",
    )
    p.add_argument(
        "--state-port",
        metavar="PORT",
        help=f"port for /state, /metrics, /healthz; 0 picks a free one (default {DEFAULT_STATE_PORT})",
    )
    p.add_argument(
        "--state-host",
        metavar="HOST",
        help="address the state server binds (default 0.0.0.0)",
    )
    p.add_argument(
        "--resync-interval",
        metavar="SECONDS",
        default="5",
        help="how often to compare each namespace's offset with the last seq_num seen, "
        "to catch a lost final notification (default 5; 0 disables)",
    )
    p.add_argument(
        "--quiet",
        action="store_true",
        help="do not print per-change lines and state blocks (logs and endpoints only)",
    )
    p.add_argument(
        "--log-level", metavar="LEVEL", help="DEBUG, INFO, WARNING, ERROR (default INFO)"
    )
    p.add_argument(
        "--curve-server-key", metavar="FILE",
        help="the notifiers' public CURVE certificate (NAME.key of `unison curve-keypair`): "
        "subscribe over CURVE, encrypted, to notifiers with that key (all namespaces)",
    )
    p.add_argument(
        "--curve-cert", metavar="FILE",
        help="this client's CURVE certificate with its secret key (NAME.key_secret), for "
        "notifiers with curve_authorized_keys_dir; default: a fresh key pair per run",
    )
    p.add_argument(
        "--log-format", choices=FORMATS, default="text",
        help="text for people (default), or json: one object per line for log pipelines",
    )
    return p


def parse_zmq_pairs(items: list[str], source: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        ns, sep, addr = item.strip().partition("=")
        ns, addr = ns.strip(), addr.strip()
        if not sep or not ns or not addr:
            raise UsageError(f"{source}: {item!r} is not NAMESPACE=ADDRESS")
        if not addr.startswith(ZMQ_TRANSPORTS):
            raise UsageError(
                f"{source}: address {addr!r} for {ns!r} must start with one of "
                + ", ".join(ZMQ_TRANSPORTS)
            )
        if ns in out:
            raise UsageError(f"{source}: namespace {ns!r} given twice")
        out[ns] = addr
    if not out:
        raise UsageError(f"{source}: no namespaces given")
    return out


def _http_base(url: str, source: str) -> str:
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")) or len(url.split("://", 1)[1]) == 0:
        raise UsageError(f"{source}: {url!r} is not an http:// or https:// address")
    # the seed's client spells it with the API prefix; accept both
    if url.endswith("/api/v1"):
        url = url[: -len("/api/v1")]
    return url


def _port(text: str, source: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise UsageError(f"{source}: {text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise UsageError(f"{source}: port {port} is out of range 0-65535")
    return port


def _curve(args: argparse.Namespace, env: Mapping[str, str]) -> ClientKeys | None:
    """Load the CURVE keys now, so that a bad file is a usage error naming the option."""
    server, server_src = ((args.curve_server_key, "--curve-server-key") if args.curve_server_key
                          else (env.get("UNISON_CURVE_SERVER_KEY", ""), "UNISON_CURVE_SERVER_KEY"))
    cert, cert_src = ((args.curve_cert, "--curve-cert") if args.curve_cert
                      else (env.get("UNISON_CURVE_CERT", ""), "UNISON_CURVE_CERT"))
    if not server:
        if cert:
            raise UsageError(f"{cert_src}: needs --curve-server-key (the notifiers' public "
                             "certificate)")
        return None
    from unison.notify.curve import KeyFileError, load_client_keys  # imports zmq: only here

    try:
        return load_client_keys(server, cert, server_src, cert_src)
    except KeyFileError as e:
        raise UsageError(str(e)) from None


def parse_options(argv: list[str], env: Mapping[str, str] | None = None) -> ClientOptions:
    """Options from argv, falling back to env, then defaults. Raises UsageError;
    argparse itself exits 2 for unknown options and prints --help."""
    env = os.environ if env is None else env
    args = build_parser().parse_args(argv)
    opts = ClientOptions()

    if args.http is not None:
        opts.http = _http_base(args.http, "--http")
    elif env.get("UNISON_HTTP"):
        opts.http = _http_base(env["UNISON_HTTP"], "UNISON_HTTP")

    if args.zmq:
        opts.zmq = parse_zmq_pairs(args.zmq, "--zmq")
    elif env.get("UNISON_ZMQ"):
        items = [i for i in env["UNISON_ZMQ"].split(",") if i.strip()]
        opts.zmq = parse_zmq_pairs(items, "UNISON_ZMQ")

    if args.state_port is not None:
        opts.state_port = _port(args.state_port, "--state-port")
    elif env.get("UNISON_STATE_PORT"):
        opts.state_port = _port(env["UNISON_STATE_PORT"], "UNISON_STATE_PORT")

    if args.state_host is not None:
        opts.state_host = args.state_host
    elif env.get("UNISON_STATE_HOST"):
        opts.state_host = env["UNISON_STATE_HOST"]

    try:
        opts.resync_interval = float(args.resync_interval)
    except ValueError:
        raise UsageError(f"--resync-interval: {args.resync_interval!r} is not a number") from None
    if opts.resync_interval < 0:
        raise UsageError("--resync-interval: must not be negative")

    level_text, level_source = (
        (args.log_level, "--log-level")
        if args.log_level
        else (env.get("UNISON_LOG_LEVEL", "INFO"), "UNISON_LOG_LEVEL")
    )
    level = level_text.strip().upper()
    if not isinstance(logging.getLevelName(level), int):
        raise UsageError(f"{level_source}: unknown log level {level_text!r}")
    opts.log_level = level
    opts.log_format = args.log_format
    opts.quiet = args.quiet
    opts.curve = _curve(args, env)
    return opts

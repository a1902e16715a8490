"""Optional ZeroMQ CURVE for the notifiers: keys from certificate files, the node's own
ZAP handler, a bounded-rate log of refused subscribers, and the client's keys.

Certificates are ZeroMQ's Z85 text format (what `zmq.auth.load_certificate` reads and
`unison curve-keypair` writes): `NAME.key` holds a public key, `NAME.key_secret` the
public and the secret key. With `curve_secret_key_file` a notifier speaks CURVE only:
every connection is encrypted, and a peer without CURVE, or without this notifier's
public key, fails the handshake before it can send a subscription, so nothing of it is
filed. With `curve_authorized_keys_dir` too, a ZAP handler on the node's asyncio loop
accepts only the client keys of the `*.key` certificates found there at start.

libzmq asks the ZAP handler bound at `inproc://zeromq.zap.01` in the socket's own
context; each notifier has its own context (renewed with its socket), so each one binds
its handler again in every new context. Without a handler libzmq accepts any client key.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq
import zmq.auth
from zmq.utils import z85
from zmq.utils.monitor import parse_monitor_message

log = logging.getLogger(__name__)

ZAP_ENDPOINT = "inproc://zeromq.zap.01"
ZAP_DOMAIN = b"unison"
# At most one refusal line per this many seconds per notifier; the rest are counted.
REFUSAL_LOG_INTERVAL = 10.0
_HANDSHAKE_EVENTS = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                     | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
_MAKE_ONE = "make one with `unison curve-keypair DIR NAME`"


class KeyFileError(ValueError):
    """A certificate file or directory that cannot be used; the message names the field."""


@dataclass(frozen=True)
class ServerKeys:
    public: bytes
    secret: bytes
    authorized: frozenset[bytes] | None  # None: any client key (encryption only)


@dataclass(frozen=True)
class ClientKeys:
    server_public: bytes
    public: bytes
    secret: bytes


def _z85_key(key: bytes, field: str, path: str, which: str) -> bytes:
    try:
        ok = len(key) == 40 and len(z85.decode(key)) == 32
    except (ValueError, KeyError, TypeError, struct.error):  # bad length, character, value
        ok = False
    if not ok:
        raise KeyFileError(f"{field}: {path}: the {which} is not a 40-character Z85 CURVE key")
    return key


def read_certificate(path: str, field: str, *, secret: bool) -> tuple[bytes, bytes | None]:
    """(public, secret) of a certificate file; with `secret`, the secret key must be there
    and belong to the public key."""
    try:
        public, sec = zmq.auth.load_certificate(path)
    except OSError as e:
        reason = e.strerror or "no such file"  # load_certificate's own OSError has none
        raise KeyFileError(f"{field}: cannot read the certificate {path}: {reason}") from None
    except ValueError:
        raise KeyFileError(f"{field}: {path} is not a ZeroMQ certificate (no public-key "
                           f"line); {_MAKE_ONE}") from None
    public = _z85_key(public, field, path, "public-key")
    if not secret:
        return public, None
    if not sec:
        raise KeyFileError(f"{field}: {path} has no secret-key (a public certificate? use "
                           f"the NAME.key_secret file); {_MAKE_ONE}")
    sec = _z85_key(sec, field, path, "secret-key")
    if zmq.curve_public(sec) != public:
        raise KeyFileError(f"{field}: {path}: the secret-key does not belong to its public-key")
    return public, sec


def read_authorized(directory: str, field: str) -> frozenset[bytes]:
    """The public keys of every `*.key` certificate in `directory` (dotfiles, such as a
    Kubernetes Secret volume's `..data`, are skipped)."""
    d = Path(directory)
    try:
        files = sorted(f for f in d.iterdir() if f.name.endswith(".key")
                       and not f.name.startswith(".") and f.is_file())
    except OSError as e:
        raise KeyFileError(f"{field}: cannot list {directory}: {e.strerror or e}") from None
    if not files:
        raise KeyFileError(f"{field}: {directory} holds no public certificates (*.key), so "
                           "no subscriber could connect")
    return frozenset(read_certificate(str(f), field, secret=False)[0] for f in files)


def load_server_keys(namespace: str, secret_file: str, authorized_dir: str) -> ServerKeys:
    prefix = f"notifier_config.{namespace}"
    public, secret = read_certificate(secret_file, f"{prefix}.curve_secret_key_file",
                                      secret=True)
    assert secret is not None
    authorized = (read_authorized(authorized_dir, f"{prefix}.curve_authorized_keys_dir")
                  if authorized_dir else None)
    return ServerKeys(public, secret, authorized)


def load_client_keys(server_key_file: str, cert_file: str, server_field: str,
                     cert_field: str) -> ClientKeys:
    """The client's keys; without its own certificate, a fresh key pair (enough for a
    notifier that encrypts but keeps no list of clients)."""
    server_public, _ = read_certificate(server_key_file, server_field, secret=False)
    if not cert_file:
        public, secret = zmq.curve_keypair()
        return ClientKeys(server_public, public, secret)
    public, sec = read_certificate(cert_file, cert_field, secret=True)
    assert sec is not None
    return ClientKeys(server_public, public, sec)


def secure_client(sock: zmq.Socket[Any], keys: ClientKeys) -> None:
    """Before connect: speak CURVE to the notifier whose public key this is."""
    sock.setsockopt(zmq.CURVE_SERVERKEY, keys.server_public)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, keys.public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, keys.secret)


class Refusals:
    """Counts failed handshakes; logs the first and then at most one line per
    REFUSAL_LOG_INTERVAL, so a flood of handshakes cannot flood the log."""

    def __init__(self, namespace: str, what: str = "refused a ZeroMQ subscriber") -> None:
        self.namespace = namespace
        self.what = what
        self.count = 0
        self._logged_at: float | None = None
        self._unlogged = 0

    def note(self, what: str) -> None:
        self.count += 1
        now = time.monotonic()
        if self._logged_at is not None and now - self._logged_at < REFUSAL_LOG_INTERVAL:
            self._unlogged += 1
            return
        log.warning("namespace %s: %s: %s (%d so far, %d not logged; at most one line per "
                    "%gs)", self.namespace, self.what, what, self.count, self._unlogged,
                    REFUSAL_LOG_INTERVAL)
        self._logged_at, self._unlogged = now, 0


class _Reader:
    """A socket read on the asyncio loop through its edge-triggered ZMQ_FD."""

    def __init__(self, sock: zmq.Socket[bytes], loop: asyncio.AbstractEventLoop) -> None:
        self.sock, self.loop = sock, loop
        self.fd = sock.fileno()  # ZMQ_FD
        loop.add_reader(self.fd, self._drain)

    def _drain(self) -> None:
        while True:  # until EAGAIN: the edge comes again only after that
            try:
                frames = self.sock.recv_multipart(zmq.DONTWAIT)
            except zmq.ZMQError:
                return
            self.handle(frames)

    def handle(self, frames: list[bytes]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        self.loop.remove_reader(self.fd)
        self.sock.close(linger=0)


class ZapHandler(_Reader):
    """Answers libzmq's ZAP requests (RFC 27): 200 for an authorized CURVE key, else 400."""

    def __init__(self, ctx: zmq.Context[zmq.Socket[bytes]], authorized: frozenset[bytes],
                 refusals: Refusals, loop: asyncio.AbstractEventLoop) -> None:
        sock = ctx.socket(zmq.REP)
        sock.setsockopt(zmq.LINGER, 0)
        sock.bind(ZAP_ENDPOINT)
        self.authorized = {z85.decode(k) for k in authorized}  # ZAP sends the 32 raw bytes
        self.refusals = refusals
        super().__init__(sock, loop)
        self._drain()

    def handle(self, frames: list[bytes]) -> None:
        request_id = frames[1] if len(frames) > 1 else b""
        if len(frames) < 6 or frames[0] != b"1.0":
            status, text, user = b"500", b"malformed ZAP request", b""
        else:
            address, mechanism, credentials = frames[3], frames[5], frames[6:]
            key = credentials[0] if mechanism == b"CURVE" and credentials else b""
            if key in self.authorized:
                status, text, user = b"200", b"OK", z85.encode(key)
            else:
                status, text, user = b"400", b"client key not authorized", b""
                shown = z85.encode(key).decode() if len(key) == 32 else "(none)"
                self.refusals.note(f"client key {shown} from {address.decode(errors='replace')} "
                                   "is not in curve_authorized_keys_dir")
        # A REP send never blocks (a full pipe drops the reply; libzmq then times out).
        self.sock.send_multipart([b"1.0", request_id, status, text, user, b""], zmq.DONTWAIT)


def _describe(event: int, value: int) -> str:
    if event == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
        if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
            return "a peer without CURVE (security mechanism mismatch)"
        if value in (zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC, zmq.PROTOCOL_ERROR_ZMTP_KEY_EXCHANGE):
            return "a CURVE handshake that failed (not this notifier's public key?)"
        return f"a handshake that broke the protocol (error 0x{value:x})"
    return "a handshake that failed"


class HandshakeWatch(_Reader):
    """The XPUB socket's monitor, for handshakes that fail before any ZAP request (a peer
    without CURVE, a wrong server key); ZAP refusals are logged by the handler."""

    def __init__(self, xpub: zmq.Socket[bytes], refusals: Refusals,
                 loop: asyncio.AbstractEventLoop) -> None:
        self.xpub = xpub
        self.refusals = refusals
        super().__init__(xpub.get_monitor_socket(_HANDSHAKE_EVENTS), loop)
        self._drain()

    def handle(self, frames: list[bytes]) -> None:
        event = parse_monitor_message(frames)
        if event["event"] != zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            self.refusals.note(_describe(event["event"], event["value"]))

    def close(self) -> None:
        self.xpub.disable_monitor()
        super().close()


def _client_reason(event: int, value: int) -> str:
    if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
        return (f"the notifier refused this client's key (ZAP {value}): add its NAME.key to "
                "the node's curve_authorized_keys_dir, or pass the right --curve-cert")
    if value == zmq.PROTOCOL_ERROR_ZMTP_MECHANISM_MISMATCH:
        return "the notifier does not speak CURVE (no curve_secret_key_file there)"
    # A wrong server key: the notifier cannot read our HELLO and just closes (no detail).
    if event == zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL or value in (
            zmq.PROTOCOL_ERROR_ZMTP_CRYPTOGRAPHIC, zmq.PROTOCOL_ERROR_ZMTP_KEY_EXCHANGE):
        return "the CURVE handshake failed: is --curve-server-key the notifier's NAME.key?"
    return _describe(event, value)


class ClientHandshakeWatch(_Reader):
    """Says why a CURVE subscriber receives nothing: libzmq does not retry a refused
    handshake and reports it nowhere else."""

    def __init__(self, sub: zmq.Socket[Any], namespace: str, address: str) -> None:
        self.sub = sub
        self.refusals = Refusals(namespace, f"no ZeroMQ notifications from {address}")
        endpoint = f"inproc://unison.curve-watch.{id(self)}"
        sub.monitor(endpoint, _HANDSHAKE_EVENTS)
        # A plain socket in the subscriber's own context (asyncio sockets return futures).
        mon: zmq.Socket[bytes] = zmq.Context.shadow(sub.context.underlying).socket(zmq.PAIR)
        mon.connect(endpoint)
        super().__init__(mon, asyncio.get_running_loop())
        self._drain()

    def handle(self, frames: list[bytes]) -> None:
        event = parse_monitor_message(frames)
        self.refusals.note(_client_reason(event["event"], event["value"]))

    def close(self) -> None:
        self.sub.disable_monitor()
        super().close()


class CurveServer:
    """One notifier's CURVE side: options for each socket it binds, a ZAP handler in
    each context it makes, a watch on each socket while it listens."""

    def __init__(self, namespace: str, keys: ServerKeys) -> None:
        self.keys = keys
        self.refusals = Refusals(namespace)
        self._zap: ZapHandler | None = None
        self._watch: HandshakeWatch | None = None

    def describe(self) -> str:
        who = (f"{len(self.keys.authorized)} authorized client key(s)"
               if self.keys.authorized is not None else "any client key")
        return f"CURVE on, {who}"

    def open(self, ctx: zmq.Context[zmq.Socket[bytes]], loop: asyncio.AbstractEventLoop) -> None:
        """Before the socket binds: no handshake may run without the handler."""
        if self.keys.authorized is not None:
            self._zap = ZapHandler(ctx, self.keys.authorized, self.refusals, loop)

    def secure(self, sock: zmq.Socket[bytes]) -> None:
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.keys.secret)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.keys.public)
        sock.setsockopt(zmq.ZAP_DOMAIN, ZAP_DOMAIN)

    def watch(self, sock: zmq.Socket[bytes], loop: asyncio.AbstractEventLoop) -> None:
        self._watch = HandshakeWatch(sock, self.refusals, loop)

    def unwatch(self) -> None:
        """Before the socket closes."""
        if self._watch is not None:
            self._watch.close()
            self._watch = None

    def close(self) -> None:
        """Before the context terminates (its sockets must be closed for that)."""
        self.unwatch()
        if self._zap is not None:
            self._zap.close()
            self._zap = None

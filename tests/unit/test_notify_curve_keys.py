"""ZeroMQ CURVE on the notifier: certificates made by `unison curve-keypair`, read back,
refused when wrong; a notifier over a real store with real CURVE and plain subscribers."""

from __future__ import annotations

import asyncio
import json
import socket
import stat
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import zmq
import zmq.asyncio
from unison.client.options import UsageError, parse_options
from unison.config import NotifierConfig
from unison.errors import StartupError
from unison.notify.curve import (
    ClientKeys,
    KeyFileError,
    load_client_keys,
    read_authorized,
    read_certificate,
    secure_client,
)
from unison.notify.keygen import main as keygen_main
from unison.notify.keygen import make_keypair
from unison.notify.publisher import Notifier
from unison.storage import NamespaceStore

HOST = "127.0.0.1"
NS = "curve-ns"


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    """server.key(_secret), alice.key(_secret) authorized in clients/, mallory's not."""
    (tmp_path / "clients").mkdir()
    for name in ("server", "alice", "mallory"):
        assert keygen_main([str(tmp_path), name]) == 0
    (tmp_path / "clients" / "alice.key").write_bytes((tmp_path / "alice.key").read_bytes())
    return tmp_path


# ------------------------------------------------------------------ certificates


def test_keypair_files_are_zeromq_certificates_and_the_secret_is_private(tmp_path: Path) -> None:
    pub_file, sec_file, public = make_keypair(tmp_path, "n1")
    assert stat.S_IMODE(sec_file.stat().st_mode) == 0o600
    assert read_certificate(str(pub_file), "f", secret=False) == (public.encode(), None)
    pub, sec = read_certificate(str(sec_file), "f", secret=True)
    assert pub == public.encode() and sec is not None and zmq.curve_public(sec) == pub
    with pytest.raises(FileExistsError):
        make_keypair(tmp_path, "n1")
    assert keygen_main([str(tmp_path), "n1"]) == 1  # never overwrites
    assert keygen_main([str(tmp_path), "../x"]) == 2


def test_certificate_errors_name_the_field(keys: Path) -> None:
    (keys / "junk").write_text("hello\n")
    (keys / "short").write_text('curve\n    public-key = "abc"\n')
    (keys / "overflow").write_text('curve\n    public-key = "' + "#" * 40 + '"\n')
    swapped = (keys / "server.key_secret").read_text().replace(
        (keys / "server.key").read_text().split('"')[-2],
        (keys / "alice.key").read_text().split('"')[-2])
    (keys / "swapped").write_text(swapped)
    cases = [
        (keys / "missing", True, "cannot read the certificate"),
        (keys, True, "cannot read the certificate"),
        (keys / "junk", False, "is not a ZeroMQ certificate"),
        (keys / "short", False, "public-key is not a 40-character Z85 CURVE key"),
        (keys / "overflow", False, "public-key is not a 40-character Z85 CURVE key"),
        (keys / "server.key", True, "has no secret-key"),
        (keys / "swapped", True, "the secret-key does not belong to its public-key"),
    ]
    for path, secret, message in cases:
        with pytest.raises(KeyFileError) as e:
            read_certificate(str(path), "notifier_config.x.curve_secret_key_file", secret=secret)
        assert str(e.value).startswith("notifier_config.x.curve_secret_key_file: "), e.value
        assert message in str(e.value), (path, e.value)


def test_authorized_keys_dir(keys: Path) -> None:
    (keys / "clients" / "..data").mkdir()  # a Kubernetes Secret volume's own entries
    (keys / "clients" / "README").write_text("not a key")
    alice = read_certificate(str(keys / "alice.key"), "f", secret=False)[0]
    assert read_authorized(str(keys / "clients"), "d") == {alice}
    (keys / "empty").mkdir()
    for d, message in [(keys / "empty", "holds no public certificates"),
                       (keys / "nowhere", "cannot list")]:
        with pytest.raises(KeyFileError, match=f"^d: .*{message}"):
            read_authorized(str(d), "d")


def test_client_options_load_the_keys_or_name_the_option(keys: Path) -> None:
    opts = parse_options(["--curve-server-key", str(keys / "server.key"),
                          "--curve-cert", str(keys / "alice.key_secret")], env={})
    assert opts.curve is not None
    assert opts.curve.public == read_certificate(str(keys / "alice.key"), "f", secret=False)[0]
    ephemeral = parse_options([], env={"UNISON_CURVE_SERVER_KEY": str(keys / "server.key")})
    assert ephemeral.curve is not None and ephemeral.curve.public != opts.curve.public
    assert parse_options([], env={}).curve is None
    for argv, message in [
        (["--curve-cert", str(keys / "alice.key_secret")], "--curve-cert: needs --curve-server-key"),
        (["--curve-server-key", str(keys / "nope")], "--curve-server-key: cannot read"),
        (["--curve-server-key", str(keys / "server.key"), "--curve-cert",
          str(keys / "alice.key")], "--curve-cert: "),
    ]:
        with pytest.raises(UsageError, match=f"^{message}"):
            parse_options(argv, env={})


# ------------------------------------------------------------------ the notifier


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[NamespaceStore]:
    s = NamespaceStore(NS, tmp_path / "db", sync=False).open()
    s.start()
    yield s
    await s.close()


@pytest.fixture
async def zctx() -> AsyncIterator[zmq.asyncio.Context]:
    ctx = zmq.asyncio.Context()
    yield ctx
    ctx.destroy(linger=0)


def client_keys(keys: Path, name: str) -> ClientKeys:
    return load_client_keys(str(keys / "server.key"), str(keys / f"{name}.key_secret"), "s", "c")


def sub(zctx: zmq.asyncio.Context, port: int, curve: ClientKeys | None) -> zmq.asyncio.Socket:
    s = zctx.socket(zmq.SUB)
    s.setsockopt(zmq.LINGER, 0)
    if curve is not None:
        secure_client(s, curve)
    s.setsockopt(zmq.SUBSCRIBE, NS.encode())
    s.connect(f"tcp://{HOST}:{port}")
    return s


async def until(cond: Callable[[], bool | Awaitable[bool]], what: str) -> None:
    try:
        async with asyncio.timeout(20):  # a deadline for a hung test, not a timing assertion
            while True:
                got = cond()
                if got if isinstance(got, bool) else await got:
                    return
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"not within 20 s: {what}") from None


async def receives(store: NamespaceStore, s: zmq.asyncio.Socket) -> int:
    """Write probes until `s` gets one; the LSN it got."""
    async def got() -> bool:
        await store.put(b"probe", b"")
        return bool(await s.poll(100))
    await until(got, "a notification")
    _, body = await s.recv_multipart()
    return int(json.loads(body)["seq_num"])


async def curve_notifier(store: NamespaceStore, keys: Path, authorized: bool) -> Notifier:
    n = Notifier(store, NotifierConfig(NS, free_port(),
                                       curve_secret_key_file=str(keys / "server.key_secret"),
                                       curve_authorized_keys_dir=str(keys / "clients")
                                       if authorized else ""), bind_ip=HOST)
    await n.start()
    return n


async def test_only_authorized_keys_subscribe_also_after_a_renewal(store, zctx, keys) -> None:
    notifier = await curve_notifier(store, keys, authorized=True)
    port = notifier.config.bind_port
    socks: list[zmq.asyncio.Socket] = []
    try:
        for round_ in range(2):  # before and after the socket's renewal (_bind again)
            refused = notifier.refused_handshakes
            # A refused peer is not retried by libzmq, so each round brings new ones.
            alice, mallory, plain = (sub(zctx, port, client_keys(keys, "alice")),
                                     sub(zctx, port, client_keys(keys, "mallory")),
                                     sub(zctx, port, None))
            socks += [alice, mallory, plain]
            await until(lambda r=refused: notifier.refused_handshakes >= r + 2, "two refusals")
            await receives(store, alice)
            assert not await mallory.poll(0) and not await plain.poll(0)
            if round_ == 0:
                # Nobody reconnecting while the port is unbound: a reconnect to a local
                # ephemeral port can connect to itself and hold the port.
                for s in socks:
                    s.close()
                notifier._renew()
                await until(lambda: notifier._sock is not None, "the renewed socket")
        assert notifier.renewals == 1 and notifier.refused_handshakes >= 4
    finally:
        for s in socks:
            s.close()
        await notifier.stop()


async def test_without_a_client_list_any_curve_key_but_no_plain_peer(store, zctx, keys) -> None:
    notifier = await curve_notifier(store, keys, authorized=False)
    port = notifier.config.bind_port
    ephemeral = load_client_keys(str(keys / "server.key"), "", "s", "c")
    wrong_server = ClientKeys(read_certificate(str(keys / "alice.key"), "f", secret=False)[0],
                              ephemeral.public, ephemeral.secret)
    good, plain, wrong = (sub(zctx, port, ephemeral), sub(zctx, port, None),
                          sub(zctx, port, wrong_server))
    try:
        await until(lambda: notifier.refused_handshakes >= 2, "the plain and wrong-key refusals")
        await receives(store, good)
        assert not await plain.poll(0) and not await wrong.poll(0)
    finally:
        for s in (good, plain, wrong):
            s.close()
        await notifier.stop()


async def test_bad_key_files_fail_start_naming_the_field(store, keys) -> None:
    for secret_file, clients, field in [
        (keys / "server.key", "", "curve_secret_key_file: "),
        (keys / "nope", "", "curve_secret_key_file: "),
        (keys / "server.key_secret", keys / "nope", "curve_authorized_keys_dir: "),
    ]:
        n = Notifier(store, NotifierConfig(NS, free_port(), curve_secret_key_file=str(secret_file),
                                           curve_authorized_keys_dir=str(clients) if clients else ""))
        with pytest.raises(StartupError, match=f"^notifier_config.{NS}.{field}"):
            await n.start()

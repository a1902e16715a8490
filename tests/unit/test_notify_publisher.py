"""The ZeroMQ notifier over a real RocksDB store, with real SUB sockets on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import zmq
import zmq.asyncio
from unison.config import NotifierConfig, WriteNotifyConfig
from unison.errors import StartupError
from unison.notify.publisher import Notifier
from unison.storage import Mutation, NamespaceStore, Op

HOST = "127.0.0.1"
FIELDS = {"key", "namespace", "operation", "entry_type", "seq_num"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@pytest.fixture
async def zctx() -> AsyncIterator[zmq.asyncio.Context]:
    ctx = zmq.asyncio.Context()
    yield ctx
    ctx.destroy(linger=0)


async def open_store(tmp_path: Path, name: str) -> NamespaceStore:
    store = NamespaceStore(name, tmp_path / name, sync=False).open()
    store.start()
    return store


def subscriber(zctx: zmq.asyncio.Context, port: int, prefix: bytes, **opts: int) -> zmq.asyncio.Socket:
    sub = zctx.socket(zmq.SUB)
    for opt, value in opts.items():
        sub.setsockopt(getattr(zmq, opt), value)
    sub.setsockopt(zmq.SUBSCRIBE, prefix)
    sub.connect(f"tcp://{HOST}:{port}")
    return sub


async def recv(sub: zmq.asyncio.Socket) -> tuple[bytes, dict]:
    async with asyncio.timeout(5):
        topic, body = await sub.recv_multipart()
    return topic, json.loads(body)


async def until_subscribed(store: NamespaceStore, sub: zmq.asyncio.Socket) -> int:
    """ZeroMQ subscriptions propagate asynchronously: write probes until one arrives.
    Returns the LSN of the last probe; everything after it is the test's."""
    async with asyncio.timeout(10):
        while True:
            lsn = await store.put(b"probe", b"")
            if await sub.poll(100):
                break
    while True:  # drain probes still in flight
        _, msg = await recv(sub)
        if msg["seq_num"] == lsn:
            return lsn


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[NamespaceStore]:
    s = await open_store(tmp_path, "ad-campaign-dc1")
    yield s
    await s.close()


async def started(store: NamespaceStore, port: int, **wn: float | bool) -> Notifier:
    n = Notifier(store, NotifierConfig(store.name, port), WriteNotifyConfig(**wn))
    await n.start()
    return n


async def test_each_put_delete_and_batch_item_is_notified_in_lsn_order(store, zctx):
    port = free_port()
    notifier = await started(store, port)
    sub = subscriber(zctx, port, b"ad-campaign-dc1")
    try:
        base = await until_subscribed(store, sub)
        await store.put(b"lww:user-status", b"v")
        await store.write([Mutation(Op.PUT, b"counter:a", b"1"), Mutation(Op.PUT, b"counter:b", b"2"),
                           Mutation(Op.DELETE, b"counter:a")])
        await store.delete(b"lww:user-status")
        got = [await recv(sub) for _ in range(5)]
    finally:
        sub.close(linger=0)
        await notifier.stop()
    assert {t for t, _ in got} == {b"ad-campaign-dc1.kv"}
    assert all(set(m) == FIELDS for _, m in got)
    assert [(m["key"], m["operation"], m["seq_num"]) for _, m in got] == [
        ("lww:user-status", "put", base + 1),
        ("counter:a", "put", base + 2),
        ("counter:b", "put", base + 3),
        ("counter:a", "delete", base + 4),
        ("lww:user-status", "delete", base + 5),
    ]
    assert {(m["namespace"], m["entry_type"]) for _, m in got} == {("ad-campaign-dc1", "kv")}
    assert notifier.metrics()["sent"] == base + 5  # probes included: every commit published
    assert notifier.metrics()["dropped"] == 0


async def test_non_utf8_key_is_sent_with_replacement_characters(store, zctx):
    port = free_port()
    notifier = await started(store, port)
    sub = subscriber(zctx, port, b"ad-campaign-dc1")
    try:
        await until_subscribed(store, sub)
        await store.put(b"bad-\xff-key", b"v")
        _, msg = await recv(sub)
    finally:
        sub.close(linger=0)
        await notifier.stop()
    assert msg["key"] == "bad-\ufffd-key"


async def test_coalescing_with_max_delay_keeps_every_record_in_order(store, zctx):
    port = free_port()
    notifier = await started(store, port, max_delay=0.02)
    sub = subscriber(zctx, port, b"ad-campaign-dc1")
    try:
        base = await until_subscribed(store, sub)
        await asyncio.gather(*(store.put(f"k{i}".encode(), b"v") for i in range(50)))
        got = [(await recv(sub))[1]["seq_num"] for _ in range(50)]
    finally:
        sub.close(linger=0)
        await notifier.stop()
    assert got == list(range(base + 1, base + 51))


async def test_subscriber_of_another_namespace_port_sees_none_of_its_events(tmp_path, zctx):
    dc1, dc2 = await open_store(tmp_path, "ad-campaign-dc1"), await open_store(tmp_path, "ad-campaign-dc2")
    p1, p2 = free_port(), free_port()
    n1, n2 = await started(dc1, p1), await started(dc2, p2)
    everything_on_dc2 = subscriber(zctx, p2, b"")
    try:
        await until_subscribed(dc2, everything_on_dc2)
        for i in range(20):
            await dc1.put(f"dc1-{i}".encode(), b"v")
        await dc2.put(b"dc2-marker", b"v")
        # dc2's own marker arrives; nothing of dc1's may arrive before (or instead of) it.
        topic, msg = await recv(everything_on_dc2)
    finally:
        everything_on_dc2.close(linger=0)
        await n1.stop()
        await n2.stop()
        await dc1.close()
        await dc2.close()
    assert (topic, msg["key"], msg["namespace"]) == (b"ad-campaign-dc2.kv", "dc2-marker",
                                                     "ad-campaign-dc2")


async def test_disabled_write_notify_means_no_coalescing_every_write_is_notified(
        store, zctx):
    """`enabled = false` turns coalescing off, never the notifications: all of 1000
    writes arrive, in order, each commit sent on its own (one wake-up per commit)."""
    port = free_port()
    notifier = await started(store, port, enabled=False, max_delay=0.02)
    sub = subscriber(zctx, port, b"ad-campaign-dc1", RCVHWM=0)
    try:
        base = await until_subscribed(store, sub)
        wakeups = notifier.metrics()["wakeups"]
        got: list[int] = []

        async def receive() -> None:
            while len(got) < 1000:
                got.append((await recv(sub))[1]["seq_num"])

        receiver = asyncio.create_task(receive())
        commits = 0
        for start in range(0, 1000, 10):  # a commit of 1 write, then of 9, ...
            await store.put(f"k{start}".encode(), b"v")
            await store.write([Mutation(Op.PUT, f"k{i}".encode(), b"v")
                               for i in range(start + 1, start + 10)])
            commits += 2
        await receiver
    finally:
        sub.close(linger=0)
        await notifier.stop()
    assert got == list(range(base + 1, base + 1001))
    assert notifier.metrics()["wakeups"] - wakeups == commits


async def drain_count(sub: zmq.asyncio.Socket) -> int:
    """How many messages a subscriber can still read (until 500 ms of silence)."""
    n = 0
    while await sub.poll(500):
        await sub.recv_multipart()
        n += 1
    return n


async def test_stuck_subscriber_never_blocks_commits(store, zctx):
    port = free_port()
    n = Notifier(store, NotifierConfig(store.name, port, high_water_mark=10, linger_time=0))
    await n.start()
    # A subscriber that never reads, with tiny buffers: its queue fills quickly.
    stuck = subscriber(zctx, port, b"", RCVHWM=1, RCVBUF=4096)
    try:
        await until_subscribed(store, stuck)
        before = n.metrics()
        big = b"k" * 2000
        lsns = await store.write([Mutation(Op.PUT, big + str(i).encode(), b"v") for i in range(5000)])
        after = n.metrics()
        reached_stuck = await drain_count(stuck)
    finally:
        stuck.close(linger=0)
        await n.stop()
    assert len(lsns) == 5000  # the commit completed although nobody is reading
    # A PUB accepts every send and drops per subscriber, silently: nothing counts as dropped.
    assert after["sent"] - before["sent"] == 5000
    assert after["dropped"] == 0
    assert after["last_seq_num"] == lsns[-1]
    assert reached_stuck < 5000  # the HWM was really hit: the stuck subscriber lost some


async def test_stuck_subscriber_costs_a_healthy_subscriber_nothing(store, zctx):
    port = free_port()
    n = Notifier(store, NotifierConfig(store.name, port, high_water_mark=50, linger_time=0))
    await n.start()
    stuck = subscriber(zctx, port, b"", RCVHWM=1, RCVBUF=4096)
    healthy = subscriber(zctx, port, b"ad-campaign-dc1")
    big = b"k" * 2000
    got: list[int] = []
    try:
        await until_subscribed(store, stuck)
        base = await until_subscribed(store, healthy)
        # 5,000 notifications, ten per commit. The writer waits for the healthy subscriber
        # to catch up after each commit, so it never outruns that subscriber's HWM: any loss
        # it sees is caused by the stuck one (with XPUB_NODROP it stopped receiving once
        # the stuck queue was full, and recv() times out).
        for c in range(500):
            await store.write([Mutation(Op.PUT, big + b"%d-%d" % (c, i), b"v") for i in range(10)])
            for _ in range(10):
                got.append((await recv(healthy))[1]["seq_num"])
        reached_stuck = await drain_count(stuck)
    finally:
        stuck.close(linger=0)
        healthy.close(linger=0)
        await n.stop()
    assert got == list(range(base + 1, base + 5001))  # every one, in order, no gap
    assert reached_stuck < 5000  # the stuck subscriber really was at its HWM
    assert n.metrics()["dropped"] == 0


async def test_max_delay_coalesces_on_the_leading_edge(store, zctx):
    """The first write after a quiet period is sent inside its commit, not after
    max_delay; writes within the window are gathered into one wake-up at its end.
    (max_delay is long here so the window is certainly still open while the test looks:
    the assertions are about order and counts, not about how fast anything is.)"""
    port = free_port()
    n = await started(store, port, max_delay=2.0)
    sub = subscriber(zctx, port, b"ad-campaign-dc1")
    at_commit: list[dict[str, int]] = []
    unsubscribe = store.subscribe(lambda records: at_commit.append(n.metrics()))
    try:
        base = await until_subscribed(store, sub)  # probes opened a window: let it end
        async with asyncio.timeout(10):
            while n._flush_handle is not None or n.metrics()["pending"]:  # noqa: ASYNC110
                await asyncio.sleep(0.05)
        at_commit.clear()
        before = n.metrics()
        lone = await store.put(b"lone", b"v")
        _, msg = await recv(sub)
        # Sent inside the commit path: on the socket before the commit's listeners ran on.
        assert at_commit[0]["sent"] == before["sent"] + 1 and at_commit[0]["pending"] == 0
        assert (msg["key"], msg["seq_num"]) == ("lone", lone) and lone == base + 1
        assert n._flush_handle is not None  # its window is still open (2 s)

        burst = [await store.put(f"b{i}".encode(), b"v") for i in range(30)]
        assert n.metrics()["pending"] == 30  # gathered, not sent: the window is open
        assert n.metrics()["wakeups"] == before["wakeups"] + 1
        got = [(await recv(sub))[1]["seq_num"] for _ in range(30)]  # at the window's end
    finally:
        unsubscribe()
        sub.close(linger=0)
        await n.stop()
    assert got == burst == list(range(lone + 1, lone + 31))
    # 31 writes, 31 commits: two wake-ups (the lone write's, the window's).
    assert n.metrics()["wakeups"] - before["wakeups"] == 2 < 31


async def test_zero_max_delay_sends_inside_the_commit_without_a_timer(store, zctx):
    port = free_port()
    n = await started(store, port, max_delay=0)
    sub = subscriber(zctx, port, b"ad-campaign-dc1")
    at_commit: list[tuple[dict[str, int], bool]] = []
    unsubscribe = store.subscribe(
        lambda records: at_commit.append((n.metrics(), n._flush_handle is not None)))
    try:
        base = await until_subscribed(store, sub)
        at_commit.clear()
        sent_before = n.metrics()["sent"]
        lsn = await store.put(b"now", b"v")
        _, msg = await recv(sub)
    finally:
        unsubscribe()
        sub.close(linger=0)
        await n.stop()
    assert (msg["key"], msg["seq_num"]) == ("now", lsn) and lsn == base + 1
    # Already on the socket when the commit listener returned; nothing held, no timer.
    assert [(m["sent"], m["pending"], m["last_seq_num"], timer) for m, timer in at_commit] \
        == [(sent_before + 1, 0, lsn, False)]


async def test_port_in_use_is_a_startup_error_naming_port_and_namespace(store):
    holder = socket.socket()
    holder.bind(("0.0.0.0", 0))
    holder.listen()
    port = holder.getsockname()[1]
    try:
        with pytest.raises(StartupError) as err:
            await started(store, port)
    finally:
        holder.close()
    assert str(port) in str(err.value)
    assert "ad-campaign-dc1" in str(err.value)


async def test_stop_releases_the_port(store, zctx):
    port = free_port()
    first = await started(store, port)
    await first.stop()
    second = await started(store, port)  # would raise StartupError if the port were still held
    sub = subscriber(zctx, port, b"ad-campaign-dc1")
    try:
        lsn = await until_subscribed(store, sub)
    finally:
        sub.close(linger=0)
        await second.stop()
    assert lsn == store.last_lsn

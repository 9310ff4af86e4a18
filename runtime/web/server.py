"""The dashboard's HTTP side: a Starlette app served by Hypercorn's trio worker on
127.0.0.1, and the sampler that feeds it.

The sampler asks the source for every node's snapshot once a `interval`,
keeps a short history per node (each actor's msg/s, dead letters by reason,
loop health) and wakes the pages' streams.  A page gets it all from
``/api/stream`` (server-sent events: one ``init``, then a ``frame`` a tick) and
the bus events from ``/api/events?pattern=P`` (one SSE ``event`` a batch).

A face, isolated from the tree: read-only; a request that fails is answered 500
(logged once), a page that hangs up or stops reading ends its own stream only,
at most `MAX_STREAMS` streams are served at once (the next get a 503), a source
that cannot be read shows as an error on the page, and a broken server ends the
dashboard, never the system.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import socket
import time
from collections import deque
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any, cast

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from hypercorn.typing import ASGIFramework
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from ..control import to_json
from ..logs import log_once
from ..topics import check_pattern
from .sources import Feed, Source

log = logging.getLogger("troupe.web")

DEFAULT_PORT = 8321
HISTORY = 120  # samples kept per node (two minutes at one a second)
MAX_STREAMS = 32  # pages' event streams served at once; the next get a 503
SEND_TIMEOUT = 10.0  # seconds a page may take to read one chunk before its stream ends
KEEPALIVE = 15.0  # seconds between comments on a quiet stream (finds pages gone)
ASSETS = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
LOCAL_HOSTS = ["127.0.0.1", "localhost", "[::1]"]


def _walk(node: dict[str, Any]) -> Any:
    yield node
    for sub in node.get("children") or ():
        if isinstance(sub, dict):
            yield from _walk(sub)


def _number(value: Any) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


class Sampler:
    """Every node's snapshot, once a `interval`, and a short history of each."""

    def __init__(self, source: Source, interval: float = 1.0, keep: int = HISTORY) -> None:
        self.source = source
        self.interval = interval
        self.keep = keep
        self.frame: dict[str, Any] = {"n": 0, "nodes": [], "snapshots": {}, "samples": {}}
        self.history: dict[str, deque[dict[str, Any]]] = {}
        self._previous: dict[str, dict[str, Any]] = {}
        self._changed = trio.Event()

    async def run(self) -> None:
        """Sample for ever (a failed sample is shown on the page, and sampling goes on)."""
        while True:
            await self.sample()
            await trio.sleep(self.interval)

    async def sample(self) -> None:
        error = None
        nodes: list[dict[str, Any]] = []
        snapshots: dict[str, dict[str, Any]] = {}
        try:
            nodes = await self.source.nodes()
            up = [str(n.get("name")) for n in nodes if n.get("status", "up") == "up"]
            snapshots = await self.source.snapshots(up)
        except Exception as exc:
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            log_once(
                log,
                logging.WARNING,
                "sample",
                type(exc).__name__,
                "the dashboard cannot read %s (%s); it keeps trying",
                self.source.title,
                error,
            )
        at = time.time()
        samples: dict[str, dict[str, Any]] = {}
        for name, snapshot in snapshots.items():
            try:
                samples[name] = self._sample(name, snapshot, at)
            except Exception as exc:  # an odd snapshot: shown without its rates
                log_once(
                    log,
                    logging.WARNING,
                    "odd snapshot",
                    type(exc).__name__,
                    "a snapshot of %s could not be sampled (%s: %s)",
                    name,
                    type(exc).__name__,
                    exc,
                )
                continue
            self.history.setdefault(name, deque(maxlen=self.keep)).append(samples[name])
        self.frame = {
            "n": self.frame["n"] + 1,
            "t": at,
            "mode": self.source.mode,
            "title": self.source.title,
            "interval": self.interval,
            "error": error,
            "nodes": nodes,
            "snapshots": snapshots,
            "samples": samples,
        }
        self._changed.set()
        self._changed = trio.Event()

    def _sample(self, name: str, snapshot: dict[str, Any], at: float) -> dict[str, Any]:
        processed = {
            str(node.get("path")): _number(node.get("processed"))
            for node in _walk(snapshot["root"])
            if node.get("kind") == "actor"
        }
        dead = {str(k): _number(v) for k, v in (snapshot.get("dead_letters") or {}).items()}
        loop = snapshot.get("loop") or {}
        blocked = _number(loop.get("blocked"))
        previous = self._previous.get(name)
        self._previous[name] = {"at": at, "processed": processed, "dead": dead, "blocked": blocked}
        rates: dict[str, float] = {}
        dead_new: dict[str, float] = {}
        blocked_new = 0.0
        if previous is not None and at > previous["at"]:
            span = at - previous["at"]
            for path, count in processed.items():
                before = previous["processed"].get(path, count)
                rates[path] = round(max(0.0, count - before) / span, 2)
            for reason, count in dead.items():
                if count > previous["dead"].get(reason, 0.0):
                    dead_new[reason] = count - previous["dead"].get(reason, 0.0)
            blocked_new = max(0.0, blocked - previous["blocked"])
        return {
            "t": at,
            "rates": rates,
            "dead": dead_new,
            "loop": {
                "lag": _number(loop.get("last_lag")),
                "max_lag": _number(loop.get("max_lag")),
                "longest": _number(loop.get("longest_step")),
                "longest_task": loop.get("longest_step_task"),
                "blocked": blocked_new,
            },
        }

    async def next_frame(self, after: int) -> dict[str, Any]:
        """The first frame newer than number `after` (waits for it)."""
        while self.frame["n"] <= after:
            await self._changed.wait()
        return self.frame

    def init(self) -> dict[str, Any]:
        """What a new page starts from: the latest frame and every node's history."""
        return {**self.frame, "history": {k: list(v) for k, v in self.history.items()}}


class _Gone(Exception):
    """The page left, or stopped reading: its stream ends."""


def _gone(exc: BaseException) -> bool:
    """Whether `exc` (or every error of a group) says only that the page went away."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_gone(sub) for sub in exc.exceptions)
    return isinstance(exc, _Gone | trio.BrokenResourceError | trio.ClosedResourceError | OSError)


def _json(value: Any, status: int = 200) -> Response:
    return Response(to_json(value), status_code=status, media_type="application/json")


def _listening_socket(port: int) -> socket.socket:
    """A TCP socket bound to 127.0.0.1:`port` (not yet listening) for hypercorn.

    Hypercorn sends every reply under a shielded cancel scope: a client that
    asked for more than the socket buffers hold and never reads held its
    connection task for ever, and with it the system's stop.  Where the
    platform has ``TCP_USER_TIMEOUT`` (Linux), the accepted sockets inherit
    one of `SEND_TIMEOUT` seconds: data left unacknowledged that long (a full
    window included) makes the kernel break the connection, and the send ends
    with an error hypercorn handles as a hang-up.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        user_timeout = getattr(socket, "TCP_USER_TIMEOUT", None)
        if user_timeout is not None:
            sock.setsockopt(socket.IPPROTO_TCP, user_timeout, int(SEND_TIMEOUT * 1000))
        sock.bind(("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return sock


class Dashboard:
    """The page and its API for one `Source`, served on 127.0.0.1:`port` (0 picks
    a free port: see `.port` once started)."""

    def __init__(self, source: Source, port: int = DEFAULT_PORT, interval: float = 1.0) -> None:
        self.source = source
        self.port = port
        self.sampler = Sampler(source, interval)
        self.streams = 0  # event streams being served
        self.refused = 0  # streams sent away with a 503
        self.requests = 0
        self._assets = {
            name: resources.files(__package__).joinpath("assets", name).read_bytes()
            for name in ASSETS
        }
        self.app = Starlette(
            routes=[
                Route("/", self._asset_route("index.html")),
                *(Route(f"/assets/{name}", self._asset_route(name)) for name in ASSETS),
                Route("/api/info", self._info),
                Route("/api/snapshot", self._snapshot),
                Route("/api/history", self._history),
                Route("/api/deadletters", self._dead_letters),
                Route("/api/pattern", self._pattern),
                Route("/api/stream", _Stream(self, self._stream_frames)),
                Route("/api/events", _Stream(self, self._stream_events)),
            ],
            middleware=[Middleware(TrustedHostMiddleware, allowed_hosts=LOCAL_HOSTS)],
            exception_handlers={Exception: self._failed},
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled.  Not starting is an error raised here (`OSError`
        for a port in use); once started, a failure ends the dashboard (logged),
        never its caller."""
        config = Config()
        listening = _listening_socket(self.port)  # hypercorn takes it over by its fd
        config.bind = [f"fd://{listening.detach()}"]
        config.errorlog = logging.getLogger("troupe.web.http")
        config.accesslog = None
        config.graceful_timeout = 0.5
        started = False
        try:
            async with trio.open_nursery() as nursery:
                binds: list[str] = await nursery.start(
                    functools.partial(serve, cast(ASGIFramework, self.app), config, mode="asgi"),
                    name="troupe dashboard http",
                )
                self.port = int(binds[0].rsplit(":", 1)[1])
                nursery.start_soon(self._sample, name="troupe dashboard sampler")
                log.info("dashboard on %s", self.url)
                started = True
                task_status.started(self.port)
        except Exception as exc:
            if not started:
                raise
            log.error(  # the dashboard ends; the system does not
                "the dashboard on port %d stopped (%s: %s); the system carries on without it",
                self.port,
                type(exc).__name__,
                exc,
                exc_info=exc,
            )

    async def _sample(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.source.watch, name="troupe dashboard source")
                await self.sampler.run()
        except Exception as exc:  # a bug: the page stops updating, nothing else
            log.error("the dashboard's sampler stopped (%s: %s)", type(exc).__name__, exc)

    # -- plain requests -------------------------------------------------------------
    def _asset_route(self, name: str) -> Callable[[Request], Awaitable[Response]]:
        async def asset(request: Request) -> Response:
            return Response(
                self._assets[name],
                media_type=ASSETS[name],
                headers={"Cache-Control": "no-cache"},
            )

        return asset

    async def _failed(self, request: Request, exc: Exception) -> Response:
        log_once(
            log,
            logging.ERROR,
            "request failed",
            f"{request.url.path}: {type(exc).__name__}",
            "a dashboard request for %s failed (%s: %s); it was answered 500",
            request.url.path,
            type(exc).__name__,
            exc,
            exc_info=exc,
        )
        return _json({"error": f"internal error ({type(exc).__name__}); see the log"}, 500)

    async def _info(self, request: Request) -> Response:
        self.requests += 1
        frame = self.sampler.frame
        return _json(
            {
                "mode": self.source.mode,
                "title": self.source.title,
                "interval": self.sampler.interval,
                "nodes": frame["nodes"],
                "error": frame.get("error"),
            }
        )

    def _node(self, request: Request) -> str | None:
        node = request.query_params.get("node")
        if node:
            return node
        nodes = self.sampler.frame["nodes"]
        return str(nodes[0]["name"]) if nodes else None

    async def _snapshot(self, request: Request) -> Response:
        self.requests += 1
        node = self._node(request)
        if node is None:
            node = str((await self.source.nodes())[0]["name"])
        try:
            snapshots = await self.source.snapshots([node])
        except Exception as exc:
            return _json({"error": f"cannot read {node}: {type(exc).__name__}: {exc}"}, 502)
        if node not in snapshots:
            return _json({"error": f"no node {node!r} answered"}, 404)
        return _json({"node": node, "snapshot": snapshots[node]})

    async def _history(self, request: Request) -> Response:
        self.requests += 1
        return _json({k: list(v) for k, v in self.sampler.history.items()})

    async def _dead_letters(self, request: Request) -> Response:
        self.requests += 1
        node = self._node(request) or ""
        try:
            limit = max(1, min(500, int(request.query_params.get("limit", "50"))))
        except ValueError:
            return _json({"error": "limit is a number"}, 400)
        letters = await self.source.dead_letters(node, limit)
        snapshot = self.sampler.frame["snapshots"].get(node) or {}
        return _json(
            {"node": node, "letters": letters, "counts": snapshot.get("dead_letters") or {}}
        )

    async def _pattern(self, request: Request) -> Response:
        pattern = request.query_params.get("pattern") or ">"
        try:
            check_pattern(pattern)
        except ValueError as exc:
            return _json({"ok": False, "error": f"bad pattern {pattern!r}: {exc}"})
        return _json({"ok": True, "pattern": pattern})

    # -- streams ----------------------------------------------------------------
    async def _stream_frames(
        self, request: Request, emit: Callable[[str, Any], Awaitable[None]]
    ) -> Response | Callable[[], Awaitable[None]]:
        async def run() -> None:
            await emit("init", self.sampler.init())
            seen = self.sampler.frame["n"]
            while True:
                with trio.move_on_after(KEEPALIVE):
                    frame = await self.sampler.next_frame(seen)
                    seen = frame["n"]
                    await emit("frame", frame)
                    continue
                await emit("", None)

        return run

    async def _stream_events(
        self, request: Request, emit: Callable[[str, Any], Awaitable[None]]
    ) -> Response | Callable[[], Awaitable[None]]:
        pattern = request.query_params.get("pattern") or ">"
        node = request.query_params.get("node") or None
        try:
            check_pattern(pattern)
        except ValueError as exc:
            return _json({"error": f"bad pattern {pattern!r}: {exc}"}, 400)

        async def run() -> None:
            async with contextlib.AsyncExitStack() as stack:
                try:
                    feed = await stack.enter_async_context(self.source.events(pattern, node))
                except (OSError, ConnectionError, LookupError) as exc:
                    why = f"cannot stream events: {type(exc).__name__}: {exc}"
                    await emit("ended", {"why": why})
                    return
                await emit("hello", {"pattern": pattern})
                await self._forward(feed, emit)

        return run

    @staticmethod
    async def _forward(feed: Feed, emit: Callable[[str, Any], Awaitable[None]]) -> None:
        dropped = 0
        while True:
            with trio.move_on_after(KEEPALIVE):
                batch = await feed.take()
                if feed.dropped != dropped:
                    dropped = feed.dropped
                    await emit("dropped", {"dropped": dropped})
                if batch:
                    await emit("events", batch)
                if feed.ended is not None:
                    await emit("ended", {"why": feed.ended})
                    return
                continue
            await emit("", None)


Producer = Callable[
    [Request, Callable[[str, Any], Awaitable[None]]],
    Awaitable[Response | Callable[[], Awaitable[None]]],
]


class _Stream:
    """A server-sent-events endpoint (a plain ASGI app): `produce` checks the
    request (returning an error response) or returns the loop that emits."""

    def __init__(self, dashboard: Dashboard, produce: Producer) -> None:
        self.dashboard = dashboard
        self.produce = produce

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        dashboard = self.dashboard
        dashboard.requests += 1
        request = Request(scope, receive)

        async def emit(event: str, data: Any) -> None:
            if event:
                chunk = f"event: {event}\ndata: {to_json(data).strip()}\n\n"
            else:
                chunk = ": keep-alive\n\n"
            with trio.move_on_after(SEND_TIMEOUT):
                await send(
                    {"type": "http.response.body", "body": chunk.encode(), "more_body": True}
                )
                return
            raise _Gone

        if dashboard.streams >= MAX_STREAMS:
            dashboard.refused += 1
            await _json({"error": "too many streams; close a page"}, 503)(scope, receive, send)
            return
        dashboard.streams += 1
        try:
            outcome = await self.produce(request, emit)
            if isinstance(outcome, Response):
                await outcome(scope, receive, send)
                return
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"text/event-stream; charset=utf-8"),
                        (b"cache-control", b"no-cache"),
                        (b"x-accel-buffering", b"no"),
                    ],
                }
            )
            async with trio.open_nursery() as nursery:

                async def until_gone() -> None:
                    try:
                        while (await receive())["type"] != "http.disconnect":
                            pass
                    except Exception:  # whatever the server says, the page is gone
                        pass
                    nursery.cancel_scope.cancel()

                nursery.start_soon(until_gone)
                try:
                    await outcome()
                finally:
                    nursery.cancel_scope.cancel()
            with trio.move_on_after(SEND_TIMEOUT):
                await send({"type": "http.response.body", "body": b"", "more_body": False})
        except Exception as exc:  # the page left, a bug, or a source that failed: this stream
            if not _gone(exc):
                log_once(
                    log,
                    logging.WARNING,
                    "stream failed",
                    f"{request.url.path}: {type(exc).__name__}",
                    "a dashboard stream %s ended (%s: %s)",
                    request.url.path,
                    type(exc).__name__,
                    exc,
                    exc_info=exc,
                )
        finally:
            dashboard.streams -= 1

"""Prometheus metrics, served on 127.0.0.1 by a small trio HTTP responder, with
``/healthz`` and ``/readyz`` (JSON; 200 or 503) beside ``/metrics``.

The text is made with prometheus-client from a snapshot taken on the trio
thread at scrape time, so no thread ever reads runtime state (rule 1), and
there is no exporter thread to account for at shutdown.

A face, isolated from the tree: at most `MAX_CONNECTIONS` clients at once (the
next ones get a 503), each given `TIMEOUT` seconds to send its request and take
the reply; a scrape that fails gets a 500 (logged once); a broken listener ends
the metrics, never the system.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .control import accept_retrying
from .logs import describe_failure, log_once

if TYPE_CHECKING:
    from .monitor import ActorInfo
    from .system import System

log = logging.getLogger("troupe.metrics")

MAX_HEADER = 16 * 1024
MAX_CONNECTIONS = 16  # clients served at once; the next ones get a 503
TIMEOUT = 10.0  # seconds a client has to send its request and take the reply
REFUSE_TIMEOUT = 0.1  # seconds a 503 may take to leave
STATES = ("starting", "running", "restarting", "stopping", "stopped", "failed")
BRIDGE_COUNTERS = ("submitted", "completed", "failed", "abandoned")
BRIDGE_GAUGES = ("active", "queued", "abandoned_running")
LOOP_BLOCKED = 1.0  # /healthz: a step or a lag this long (seconds) is a blocked loop
RECENT = 30.0  # /healthz: a stall or an escalation less than this long ago (seconds)


class SnapshotCollector(Collector):
    """Turns one `system.snapshot()` into Prometheus metric families."""

    def __init__(self, system: System) -> None:
        self.system = system

    def collect(self) -> Iterator[Metric]:
        snap = self.system.snapshot()
        nodes: list[ActorInfo] = list(snap.root.walk())
        by_state = GaugeMetricFamily("troupe_actors", "Actors by state", labels=["state"])
        for state in STATES:
            by_state.add_metric([state], sum(1 for n in nodes if n.state == state))
        yield by_state
        yield GaugeMetricFamily(
            "troupe_actors_hibernating",
            "Running actors with no task until their next message (hibernate_after)",
            value=sum(1 for n in nodes if n.hibernating),
        )
        processed = CounterMetricFamily(
            "troupe_messages_processed", "Messages handled", labels=["path"]
        )
        depth = GaugeMetricFamily("troupe_mailbox_depth", "Messages queued", labels=["path"])
        restarts = CounterMetricFamily("troupe_restarts", "Restarts", labels=["path"])
        for node in nodes:
            if node.kind == "actor":
                processed.add_metric([node.path], node.processed)
                depth.add_metric([node.path], node.mailbox_depth)
            restarts.add_metric([node.path], node.restarts)
        yield processed
        yield depth
        yield restarts
        dead = CounterMetricFamily("troupe_dead_letters", "Dead letters", labels=["reason"])
        for reason, count in snap.dead_letters.items():
            dead.add_metric([reason], count)
        yield dead
        yield from self._bridges(nodes)
        if snap.cluster is not None:
            yield from self._cluster(snap.cluster)
        if snap.loop is not None:
            yield GaugeMetricFamily(
                "troupe_loop_longest_step_seconds",
                "Longest task step seen (a blocked loop)",
                value=snap.loop.longest_step,
            )
            yield GaugeMetricFamily(
                "troupe_loop_max_lag_seconds", "Worst scheduling lag seen", value=snap.loop.max_lag
            )

    def _cluster(self, cluster: dict[str, Any]) -> Iterator[Metric]:
        peers = cluster.get("peers") or {}
        lost = CounterMetricFamily(
            "troupe_cluster_lost_in_transit",
            "Messages from a peer node that never arrived (gaps in its sequence numbers)",
            labels=["peer"],
        )
        up = GaugeMetricFamily(
            "troupe_cluster_node_up", "Peer nodes seen up (1) or down (0)", labels=["peer"]
        )
        outbox = GaugeMetricFamily(
            "troupe_cluster_outbox", "Messages queued for a peer node", labels=["peer"]
        )
        for name, peer in peers.items():
            if (value := _number(peer.get("lost_in_transit", 0))) is not None:
                lost.add_metric([str(name)], value)
            up.add_metric([str(name)], 1.0 if peer.get("status") == "up" else 0.0)
            if (value := _number(peer.get("outbox", 0))) is not None:
                outbox.add_metric([str(name)], value)
        yield lost
        yield up
        yield outbox

    def _bridges(self, nodes: list[ActorInfo]) -> Iterator[Metric]:
        bridges = [n for n in nodes if n.cls == "Bridge" and n.stats]
        for key in BRIDGE_COUNTERS:
            family = CounterMetricFamily(
                f"troupe_bridge_{key}", f"Bridge calls {key}", labels=["path"]
            )
            for node in bridges:
                if (value := _number(node.stats.get(key, 0))) is not None:
                    family.add_metric([node.path], value)
            yield family
        for key in BRIDGE_GAUGES:
            gauge = GaugeMetricFamily(
                f"troupe_bridge_{key}", f"Bridge calls {key}", labels=["path"]
            )
            for node in bridges:
                if (value := _number(node.stats.get(key, 0))) is not None:
                    gauge.add_metric([node.path], value)
            yield gauge


def _number(value: Any) -> float | None:
    """`value` as a sample, or None if it is not a number a sample can hold."""
    if not isinstance(value, int | float):
        return None
    try:
        return float(value)
    except OverflowError:  # an int beyond any float
        return None


class MetricsServer:
    """``GET /metrics`` on 127.0.0.1:`port` (port 0 picks a free one: see `.port`), and
    ``GET /healthz`` (`health`) and ``GET /readyz`` (`readiness`)."""

    def __init__(self, system: System, port: int) -> None:
        self.system = system
        self.port = port
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(SnapshotCollector(system))
        self.scrapes = 0
        self.connections = 0  # clients being served
        self.refused = 0  # clients sent away with a 503: too many at once

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def readiness(self) -> tuple[int, dict[str, Any]]:
        """``/readyz``: 200 once the tree has started, 503 while it starts or stops."""
        system = self.system
        if system.started_at is None:
            status = "starting"
        elif system.shutting_down or not system.is_running:
            status = "stopping"
        else:
            status = "ready"
        answer = {"status": status, "ready": status == "ready", "system": system.name}
        return (200 if status == "ready" else 503), answer

    def health(self) -> tuple[int, dict[str, Any]]:
        """``/healthz``: 200 while healthy, 503 when the tree failed or a supervisor
        escalated (less than `RECENT` seconds ago), the loop is blocked (a recent step
        held it for `LOOP_BLOCKED` seconds or more, or the loop is late by that much)
        or an actor is stuck (handling one message longer than the system's
        `stuck_after`).  JSON: ``status``, ``healthy`` and each check's findings."""
        system = self.system
        problems: dict[str, str] = {}
        snap = system.snapshot()
        failing = (  # the root gives up (not a stop that was asked for)
            system.shutting_down and system.is_running and system.root.stop_reason is None
        )
        if system.failure is not None:
            problems["tree"] = f"failed: {describe_failure('/', system.failure)}"
        else:
            for node in snap.root.children:  # a top supervisor gave up: the root fails
                if node.state == "failed" and node.last_error is not None:
                    error = node.last_error
                    problems["tree"] = f"{node.path} failed: {error.type}: {error.message}"
            if failing and "tree" not in problems:
                problems["tree"] = "the tree is failing: a supervisor escalated to the root"
        escalated = [  # recent ones, also those a parent dealt with (not the bus's history)
            f"{escalation.path}: {escalation.error}"
            for escalation in system.escalations(since=time.time() - RECENT)[:5]
        ]
        if escalated and "tree" not in problems:
            problems["tree"] = (
                f"a supervisor escalated less than {RECENT:.0f} s ago: {escalated[0]}"
            )
        loop = system.loop_monitor.health()
        now = time.time()
        last = loop.last_blocked
        if loop.last_lag >= LOOP_BLOCKED:
            problems["loop"] = f"the loop is {loop.last_lag:.1f} s late"
        elif last is not None and last.seconds >= LOOP_BLOCKED and now - last.at < RECENT:
            problems["loop"] = (
                f"blocked for {last.seconds:.1f} s by {last.task} {now - last.at:.0f} s ago"
            )
        stuck = [
            f"{node.path} handling {node.current} for {node.current_for or 0:.0f} s"
            for node in snap.root.walk()
            if node.stuck
        ]
        if stuck:
            problems["actors"] = "stuck: " + "; ".join(stuck[:5])
        checks: dict[str, dict[str, Any]] = {}
        for name in ("tree", "loop", "actors"):
            checks[name] = {"ok": name not in problems}
            if name in problems:
                checks[name]["problem"] = problems[name]
        if escalated:
            checks["tree"]["escalated"] = escalated  # the most recent first
        healthy = not problems
        answer = {
            "status": "healthy" if healthy else "unhealthy",
            "healthy": healthy,
            "system": system.name,
            "checks": checks,
        }
        return (200 if healthy else 503), answer

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        log.info("metrics on http://127.0.0.1:%d/metrics", self.port)
        async with trio.open_nursery() as nursery:
            task_status.started(self.port)
            for listener in listeners:
                nursery.start_soon(self._listen, listener, nursery)

    async def _listen(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        try:
            async with listener:
                await self._accept(listener, nursery)
        except Exception as exc:  # the metrics end; the system does not
            log.error(
                "the metrics server on port %d stopped (%s: %s); the system carries on without it",
                self.port,
                type(exc).__name__,
                exc,
                exc_info=exc,
            )

    async def _accept(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            stream = await accept_retrying(listener, "the metrics server", log)
            if self.connections >= MAX_CONNECTIONS:
                # Refused here, not in a task of its own: a flood cannot pile up tasks
                # or descriptors, and the 503 fits any fresh socket's buffer at once.
                self.refused += 1
                async with stream:
                    with (
                        trio.move_on_after(REFUSE_TIMEOUT),
                        contextlib.suppress(trio.BrokenResourceError),
                    ):
                        await stream.send_all(_response(503, b"too many connections\n"))
                continue
            self.connections += 1
            nursery.start_soon(self._handle, stream)

    async def _handle(self, stream: trio.SocketStream) -> None:
        try:
            async with stream:
                with trio.move_on_after(TIMEOUT):
                    await self._exchange(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the client hung up
        except Exception as exc:  # a bug: it ends this connection, never the system
            log_once(
                log,
                logging.ERROR,
                "metrics connection failed",
                type(exc).__name__,
                "a metrics connection failed (%s: %s); the system carries on",
                type(exc).__name__,
                exc,
                exc_info=exc,
            )
        finally:
            self.connections -= 1

    async def _exchange(self, stream: trio.SocketStream) -> None:
        head = b""
        while b"\r\n\r\n" not in head and b"\n\n" not in head:
            data = await stream.receive_some(4096)
            if not data:
                return
            head += data
            if len(head) > MAX_HEADER:
                await stream.send_all(_response(431, b"request header too large\n"))
                return
        request_line = head.split(b"\r\n", 1)[0].split(b"\n", 1)[0].split()
        if len(request_line) < 2 or request_line[0] != b"GET":
            await stream.send_all(_response(405, b"GET /metrics, /healthz or /readyz only\n"))
            return
        target = request_line[1].split(b"?", 1)[0]
        if target in (b"/healthz", b"/readyz"):
            try:
                code, answer = self.health() if target == b"/healthz" else self.readiness()
                body = json.dumps(answer, indent=1, default=str).encode() + b"\n"
            except Exception as exc:  # a check that fails says so; the system carries on
                log_once(
                    log,
                    logging.ERROR,
                    "health check failed",
                    type(exc).__name__,
                    "a health check failed (%s: %s); it was answered 500",
                    type(exc).__name__,
                    exc,
                    exc_info=exc,
                )
                code, body = 500, b'{"status": "unknown", "error": "see the log"}\n'
            await stream.send_all(_response(code, body, "application/json"))
            return
        if target not in (b"/metrics", b"/"):
            await stream.send_all(_response(404, b"see /metrics, /healthz or /readyz\n"))
            return
        self.scrapes += 1
        try:
            body = self.render()
        except Exception as exc:  # a scrape that fails says so; the system carries on
            log_once(
                log,
                logging.ERROR,
                "metrics scrape failed",
                type(exc).__name__,
                "a metrics scrape failed (%s: %s); it was answered 500",
                type(exc).__name__,
                exc,
                exc_info=exc,
            )
            await stream.send_all(_response(500, b"the metrics could not be made; see the log\n"))
            return
        await stream.send_all(_response(200, body, "text/plain; version=0.0.4; charset=utf-8"))


def _response(code: int, body: bytes, kind: str = "text/plain; charset=utf-8") -> bytes:
    reason: dict[int, str] = {
        200: "OK",
        404: "Not Found",
        405: "Method Not Allowed",
        431: "Too Large",
        500: "Internal Server Error",
        503: "Service Unavailable",
    }
    head = (
        f"HTTP/1.1 {code} {reason.get(code, 'Error')}\r\n"
        f"Content-Type: {kind}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + body

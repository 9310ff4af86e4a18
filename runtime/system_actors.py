"""The runtime's own actors around the bus: `BusActor` at ``/system/bus`` (publishes
for foreign threads) and `CallbackSubscriber` (runs one ``bus.subscribe`` callback)."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import trio

from .actor import Actor
from .bus import Bus, Lines
from .messages import UNHANDLED, DeferredReply, Event

log = logging.getLogger("troupe.bus")


@attrs.frozen
class PublishRequest:
    """A thread's publish, carried through the bus actor's mailbox."""

    topic: str
    payload: Any
    correlation_id: str | None
    metadata: Mapping[str, Any]
    timeout: float = math.inf
    """How long the thread waits in full subscribers' lines (from when the bus actor
    takes the request); past it the event is dead-lettered for those (``overflow``)."""


class BusActor(Actor):
    """``/system/bus``: publishes for foreign threads and shows the bus's stats.

    It never waits itself: it delivers where there is room and takes the
    event's places in full subscribers' lines at once (so thread publishes keep
    the order they reached it in), and a task of its own waits in those lines
    and answers the thread.  A full subscriber delays only the threads that
    publish its events.
    """

    async def receive(self, msg: Any) -> Any:
        if not isinstance(msg, PublishRequest):
            return UNHANDLED
        bus = self.ctx.system.bus
        event, count, lines = bus.start_publish(
            msg.topic,
            msg.payload,
            source="thread",
            correlation_id=msg.correlation_id,
            metadata=msg.metadata,
        )
        if lines is None:
            return count
        deadline = trio.current_time() + msg.timeout
        self.ctx.nursery.start_soon(
            self._finish, bus, event, lines, count, deadline, self.ctx.defer_reply()
        )
        return None

    @staticmethod
    async def _finish(
        bus: Bus, event: Event, lines: Lines, count: int, deadline: float, reply: DeferredReply
    ) -> None:
        try:
            await bus.wait_in_lines(event, lines, None, deadline=deadline)
        finally:  # cancelled too (the system stops): what was delivered is still the answer
            reply.send(count + bus.delivered_in(lines))

    def snapshot_stats(self) -> dict[str, Any]:
        stats = self.ctx.system.bus.stats()
        stats["topics"] = len(stats["topics"])
        return stats


class CallbackSubscriber(Actor):
    """Runs one `bus.subscribe` callback; its errors are counted, not fatal."""

    def __init__(self, fn: Callable[[Event], Any]) -> None:
        self.fn = fn
        self.calls = 0
        self.errors = 0
        self.last_error: str | None = None

    async def receive(self, msg: Any) -> Any:
        if not isinstance(msg, Event):
            return UNHANDLED
        self.calls += 1
        try:
            result = self.fn(msg)
            if hasattr(result, "__await__"):
                await result
        except Exception as exc:
            self.errors += 1
            self.last_error = f"{type(exc).__name__}: {exc}"
            log.exception("bus callback %r failed on %s", self.fn, msg.topic)
        return None

    def snapshot_stats(self) -> dict[str, Any]:
        return {"calls": self.calls, "errors": self.errors, "last_error": self.last_error}


__all__ = ["BusActor", "CallbackSubscriber", "PublishRequest"]

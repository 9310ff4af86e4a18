"""The runtime's own actors around the bus: `BusActor` at ``/system/bus`` (publishes
for foreign threads) and `CallbackSubscriber` (runs one ``bus.subscribe`` callback)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from .actor import Actor
from .messages import UNHANDLED, Event

log = logging.getLogger("troupe.bus")


@attrs.frozen
class PublishRequest:
    """A thread's publish, carried through the bus actor's mailbox."""

    topic: str
    payload: Any
    correlation_id: str | None
    metadata: Mapping[str, Any]


class BusActor(Actor):
    """``/system/bus``: publishes for foreign threads and shows the bus's stats."""

    async def receive(self, msg: Any) -> Any:
        if isinstance(msg, PublishRequest):
            return await self.ctx.system.bus.publish(
                msg.topic,
                msg.payload,
                source="thread",
                correlation_id=msg.correlation_id,
                metadata=msg.metadata,
            )
        return UNHANDLED

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

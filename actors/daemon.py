"""`Daemon`: an actor that does periodic work (`tick`) between its messages."""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import trio

from runtime import Actor

log = logging.getLogger("troupe.daemon")


class _Tick:
    """The private message that runs one tick inside the actor's message loop."""

    __slots__ = ("due", "owner")

    def __init__(self, due: float, owner: Daemon) -> None:
        self.due = due
        self.owner = owner  # a tick queued by an earlier incarnation is skipped


class Daemon(Actor):
    """Set `interval` (seconds) and implement ``async def tick(self)``.

    Ticks go through the actor's own mailbox, so they run one at a time and
    never overlap a message; the schedule is drift-free (tick *n* is due at
    ``start + n * interval``), and ticks missed while one overran are skipped,
    not queued.  A tick that raises crashes the incarnation like any handler;
    one that takes longer than `interval` is logged and counted as slow.
    Override `receive` as usual for other messages.
    """

    interval: ClassVar[float] = 1.0
    tick_at_start: ClassVar[bool] = True
    """Run the first tick right after `on_start` (else one interval later)."""

    ticks = 0
    slow_ticks = 0
    last_tick: float | None = None  # wall-clock time the last tick started
    last_tick_duration: float | None = None
    lateness: float | None = None  # how late the last tick started, seconds
    _last_tick_at: float | None = None  # trio time the last tick started (for health)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if not (isinstance(cls.interval, int | float) and cls.interval > 0):
            raise ValueError(f"{cls.__name__}.interval must be a positive number of seconds")
        own = cls.__dict__.get("receive")
        if own is not None:  # let ticks through before the subclass's own handler
            setattr(cls, "receive", _with_ticks(own))  # noqa: B010 - wrap the subclass's own

    async def tick(self) -> None:
        """The periodic work; override it."""
        raise NotImplementedError(f"{type(self).__name__} must implement `async def tick(self)`")

    async def on_start(self) -> None:
        self.ctx.nursery.start_soon(self._schedule, name=f"{self.ctx.path} ticks")

    async def receive(self, msg: Any) -> Any:
        if type(msg) is _Tick:
            return await self._run_tick(msg)
        return await super().receive(msg)

    async def _schedule(self) -> None:
        interval = float(self.interval)
        due = trio.current_time() + (0.0 if self.tick_at_start else interval)
        me = self.ctx.ref
        while True:
            await trio.sleep_until(due)
            await me.ask(_Tick(due, self), timeout=None)
            due += interval
            now = trio.current_time()
            if due <= now:  # overran: skip the ticks we missed, keep the phase
                due += math.ceil((now - due) / interval) * interval
                if due <= now:
                    due += interval

    async def _run_tick(self, msg: _Tick) -> None:
        if msg.owner is not self:
            return
        started = trio.current_time()
        self.lateness = max(0.0, started - msg.due)
        self.last_tick = time.time()
        self._last_tick_at = started
        await self.tick()
        self.ticks += 1
        took = trio.current_time() - started
        self.last_tick_duration = took
        if took > self.interval:
            self.slow_ticks += 1
            log.warning(
                "%s: tick took %.3fs, longer than its interval %.3fs",
                self.ctx.path,
                took,
                self.interval,
            )

    def snapshot_stats(self) -> dict[str, Any]:
        # trio's clock, not the wall clock: it is the one ticks are scheduled on
        overdue = (
            self._last_tick_at is not None
            and trio.current_time() - self._last_tick_at > 3 * self.interval + 1
        )
        return {
            "interval": self.interval,
            "ticks": self.ticks,
            "slow_ticks": self.slow_ticks,
            "last_tick": self.last_tick,
            "last_tick_duration": self.last_tick_duration,
            "lateness": self.lateness,
            "healthy": not overdue,
        }


def _with_ticks(receive: Callable[[Any, Any], Awaitable[Any]]) -> Callable[[Any, Any], Any]:
    @functools.wraps(receive)
    async def wrapper(self: Daemon, msg: Any) -> Any:
        if type(msg) is _Tick:
            return await self._run_tick(msg)
        return await receive(self, msg)

    return wrapper

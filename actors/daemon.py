"""`Daemon`: an actor that does periodic work (`tick`) between its messages."""

from __future__ import annotations

import decimal
import functools
import inspect
import logging
import math
import numbers
import reprlib
import time
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import trio

from runtime import Actor, Internal, MailboxFull

log = logging.getLogger("troupe.daemon")


MIN_INTERVAL = 1e-6
"""The shortest `Daemon.interval` (a microsecond): shorter ones cannot be scheduled."""


class _Tick(Internal):
    """The private message that runs one tick inside the actor's message loop.

    Told, not asked, and `Internal`: whatever becomes of it (run, skipped by a later
    incarnation, lost with a crash, a stop or a full mailbox) nothing is dead-lettered.
    `done` tells the schedule that it ran or was given up on.
    """

    __slots__ = ("done", "due", "owner")

    def __init__(self, due: float, owner: Daemon) -> None:
        self.due = due
        self.owner = owner  # a tick queued by an earlier incarnation is skipped
        self.done = trio.Event()

    def discarded(self, reason: str) -> None:
        self.done.set()


class Daemon(Actor):
    """Set `interval` (seconds) and implement ``async def tick(self)``.

    Ticks go through the actor's own mailbox, so they run one at a time and
    never overlap a message; the schedule is drift-free (tick *n* is due at
    ``start + n * interval``), and ticks missed while one overran are skipped,
    not queued, as are ticks that find the mailbox full under ``drop_new``,
    ``drop_old`` or ``fail`` (a tick never pushes a message out); under ``block``
    a tick waits its turn.  A tick that raises crashes the
    incarnation like any handler (in `failed` and `last_error`); one that takes
    longer than `interval` is logged and counted as slow.  Ticks never appear in
    dead letters: not one that crashed or was cancelled by a stop, nor one an
    earlier incarnation left queued.  Override `receive` as usual for other
    messages, and `on_start` as usual too: calling ``super().on_start()`` from it
    is optional (see `on_start`).
    """

    interval: float = 1.0
    """Seconds between ticks: a finite number (int, float, Fraction or Decimal; not a
    bool) of at least `MIN_INTERVAL`, set on the class or per
    instance (in `__init__`).  Checked when each incarnation starts: a bad one fails
    the start with `ValueError`."""
    tick_at_start: ClassVar[bool] = True
    """Run the first tick right after `on_start` (else one interval later)."""

    ticks = 0
    slow_ticks = 0
    last_tick: float | None = None  # wall-clock time the last tick started
    last_tick_duration: float | None = None
    lateness: float | None = None  # how late the last tick started, seconds
    _last_tick_at: float | None = None  # trio time the last tick started (for health)
    _seconds: float | None = None  # `interval` as checked at the start of the incarnation
    _ticking_in: trio.Nursery | None = None  # the incarnation whose schedule is started

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # A plain ``def`` is left alone, for `runtime.child` to refuse (a wrapper
        # would be ``async def`` and hide it).
        own = cls.__dict__.get("receive")
        if own is not None and inspect.iscoroutinefunction(own):
            # let ticks through before the subclass's own handler
            setattr(cls, "receive", _with_ticks(own))  # noqa: B010 - wrap the subclass's own
        # Its own, or one it inherits from a class that is not a Daemon; as found in
        # the class (a staticmethod or classmethod too), not bound.
        start = inspect.getattr_static(cls, "on_start")
        function = getattr(start, "__func__", start)  # under a staticmethod/classmethod
        if (
            function is not Daemon.on_start
            and not getattr(function, _STARTS_TICKS, False)
            and inspect.iscoroutinefunction(function)
        ):
            setattr(cls, "on_start", _then_ticks(start))  # noqa: B010 - wrap the subclass's own

    async def tick(self) -> None:
        """The periodic work; override it."""
        raise NotImplementedError(f"{type(self).__name__} must implement `async def tick(self)`")

    async def on_start(self) -> None:
        """Check `interval` and start the schedule (`_start_ticks`).

        A subclass that overrides `on_start` need not call ``await super().on_start()``:
        its `on_start` is wrapped so that the schedule starts right after it returns,
        once per incarnation whether or not it called this.  After, not before: the
        check sees an `interval` that the subclass's `on_start` set, and with
        `tick_at_start` the first tick comes right after its start work, not late
        by its length.  A subclass that does call this starts the schedule there
        (as before; calling it again does nothing).  Raises `ValueError` for a bad
        `interval`, which fails the start."""
        self._start_ticks()

    def _start_ticks(self) -> None:
        """Check `interval` and start the schedule in the incarnation's nursery,
        unless this incarnation's schedule is started already.  Raises `ValueError`
        naming ``<class>.interval`` if it is not a finite number of seconds of at
        least `MIN_INTERVAL`; the schedule is then not started."""
        nursery = self.ctx.nursery  # one per incarnation
        if self._ticking_in is nursery:
            return
        self._seconds = _check_interval(self.interval, type(self).__name__)
        nursery.start_soon(self._schedule, self._seconds, name=f"{self.ctx.path} ticks")
        self._ticking_in = nursery

    async def receive(self, msg: Any) -> Any:
        if type(msg) is _Tick:
            return await self._run_tick(msg)
        return await super().receive(msg)

    async def _schedule(self, interval: float) -> None:
        """Tick at ``start + n * interval`` (no drift from adding up intervals); a
        tick that overran skips the ticks it missed and keeps the phase."""
        start = trio.current_time()
        n = 0 if self.tick_at_start else 1
        me = self.ctx.ref
        while True:
            due = start + n * interval
            await trio.sleep_until(due)
            tick = _Tick(due, self)
            try:
                await me.send(tick)  # waits for room in a `block` mailbox
            except MailboxFull:  # a full `fail` mailbox: skip this tick
                pass
            else:
                await tick.done.wait()  # ran, or was dropped by a full dropping mailbox
            # the next n whose time is still ahead (the missed ones are skipped)
            n = max(n + 1, math.floor((trio.current_time() - start) / interval) + 1)

    async def _run_tick(self, msg: _Tick) -> None:
        if msg.owner is not self:
            return  # queued by an earlier incarnation, whose schedule is gone
        try:
            await self._tick(msg.due)
        finally:
            msg.done.set()  # the schedule goes on once the tick is over

    async def _tick(self, due: float) -> None:
        started = trio.current_time()
        self.lateness = max(0.0, started - due)
        self.last_tick = time.time()
        self._last_tick_at = started
        await self.tick()
        self.ticks += 1
        took = trio.current_time() - started
        self.last_tick_duration = took
        interval = self._seconds
        if interval is not None and took > interval:
            self.slow_ticks += 1
            log.warning(
                "%s: tick took %.3fs, longer than its interval %.3fs",
                self.ctx.path,
                took,
                interval,
            )

    def snapshot_stats(self) -> dict[str, Any]:
        # trio's clock, not the wall clock: it is the one ticks are scheduled on
        interval = self._seconds
        overdue = (
            self._last_tick_at is not None
            and interval is not None
            and trio.current_time() - self._last_tick_at > 3 * interval + 1
        )
        return {
            "interval": interval,
            "ticks": self.ticks,
            "slow_ticks": self.slow_ticks,
            "last_tick": self.last_tick,
            "last_tick_duration": self.last_tick_duration,
            "lateness": self.lateness,
            "healthy": not overdue,
        }


def _check_interval(value: object, owner: str) -> float:
    """`value` as seconds between ticks: a finite number of at least `MIN_INTERVAL` (an
    int, float, Fraction or Decimal; not a bool),
    else `ValueError` naming ``<owner>.interval``."""
    seconds = math.nan
    if isinstance(value, numbers.Real | decimal.Decimal) and not isinstance(value, bool):
        try:
            seconds = float(value)
        except (ArithmeticError, TypeError, ValueError):  # e.g. an int too large for a float
            pass
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ValueError(
            f"{owner}.interval must be a positive, finite number of seconds, "
            f"got {reprlib.repr(value)}"
        )
    if seconds < MIN_INTERVAL:
        raise ValueError(
            f"{owner}.interval must be at least {MIN_INTERVAL:g} seconds (a clock cannot "
            f"tell shorter ones apart), got {reprlib.repr(value)}"
        )
    return seconds


def _with_ticks(receive: Callable[[Any, Any], Awaitable[Any]]) -> Callable[[Any, Any], Any]:
    @functools.wraps(receive)
    async def wrapper(self: Daemon, msg: Any) -> Any:
        if type(msg) is _Tick:
            return await self._run_tick(msg)
        return await receive(self, msg)

    return wrapper


_STARTS_TICKS = "_troupe_starts_ticks"
"""Marks an `on_start` wrapped by `_then_ticks` (so a subclass that inherits it is
not wrapped again)."""


def _then_ticks(on_start: Any) -> Callable[[Any], Any]:
    """`on_start` of a Daemon subclass (as found in its class: a function, or a
    staticmethod or classmethod), then its schedule (`Daemon._start_ticks`) if
    `on_start` is the class's outermost (an inner one, reached through ``super()``
    from a subclass's, leaves it to that one, which may still set `interval`).
    Raises what `on_start` raises, and then starts nothing (a schedule it started
    through ``super()`` ends with the incarnation's nursery, as the start fails);
    `ValueError` for a bad `interval`."""

    @functools.wraps(getattr(on_start, "__func__", on_start))
    async def wrapper(self: Daemon) -> None:
        await on_start.__get__(self, type(self))()  # bound as Python would bind it
        if type(self).on_start is wrapper:
            self._start_ticks()  # does nothing if on_start called Daemon.on_start

    setattr(wrapper, _STARTS_TICKS, True)  # a mark, not a typed attribute
    return wrapper

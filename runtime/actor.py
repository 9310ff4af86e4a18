"""The `Actor` base class users subclass, and the per-incarnation `Context`."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar, cast

import trio

from .messages import DEAD_LETTER_REASONS, UNHANDLED, DeferredReply, Event, ExitReason
from .spec import Mailbox

if TYPE_CHECKING:
    from .cell import ActorBehaviour, Cell
    from .ref import ActorRef
    from .system import System


class Actor:
    """Subclass this and implement `receive`.

    The runtime creates a fresh instance for every (re)start from the child
    spec's args and kwargs, so instance state starts clean after a crash while
    the mailbox (owned by the slot) keeps its queued messages.
    """

    mailbox: ClassVar[Mailbox | None] = None
    """Default mailbox for this class; a child spec's ``mailbox=`` overrides it."""

    subscriptions: ClassVar[tuple[str, ...]] = ()
    """Bus patterns this actor is subscribed to at every (re)start."""

    _troupe_ctx: Context | None = None

    @property
    def ctx(self) -> Context:
        ctx = self._troupe_ctx
        if ctx is None:
            raise RuntimeError(
                "self.ctx is not available in __init__: it is set when the actor starts; "
                "use it from on_start, receive or on_stop"
            )
        return ctx

    async def on_start(self) -> None:
        """Runs before the first message of every incarnation."""

    async def on_stop(self, reason: ExitReason) -> None:
        """Runs when an incarnation that started ends: stop, restart or crash."""

    async def receive(self, msg: Any) -> Any:
        """Handle one message; the return value answers an ask."""
        return UNHANDLED

    def snapshot_stats(self) -> dict[str, Any]:
        """Actor-specific counters and health for `system.snapshot()` (a flat dict)."""
        return {}


class Timer:
    """A scheduled `send_after` or `every`; it dies with the incarnation."""

    def __init__(self) -> None:
        self._scope = trio.CancelScope()

    @property
    def cancelled(self) -> bool:
        return self._scope.cancel_called

    def cancel(self) -> None:
        self._scope.cancel()


class Context:
    """What an actor incarnation knows about itself and can do to the world."""

    __slots__ = ("_behaviour", "_cell", "_nursery")

    def __init__(self, cell: Cell, behaviour: ActorBehaviour, nursery: trio.Nursery | None) -> None:
        self._cell = cell
        self._behaviour = behaviour
        self._nursery = nursery

    @property
    def ref(self) -> ActorRef:
        return self._cell.ref

    @property
    def name(self) -> str:
        return self._cell.name

    @property
    def path(self) -> str:
        return self._cell.path

    @property
    def system(self) -> System:
        return cast("System", self._cell.host)

    @property
    def nursery(self) -> trio.Nursery:
        """For background tasks that die with this incarnation (an error in one crashes it).

        An actor with ``hibernate_after`` gets a fresh one each time it wakes
        (take it from ``self.ctx`` when you need it, do not keep it); while a
        task runs in it, the actor does not hibernate.  Raises RuntimeError
        while the actor hibernates (called from outside its handlers).
        """
        nursery = self._nursery
        if nursery is None:
            raise RuntimeError(
                f"{self._cell.path} is hibernating: ctx.nursery exists only while it "
                "handles a message (use it from on_start, receive or on_stop)"
            )
        return nursery

    async def publish(
        self,
        topic: str,
        payload: Any = None,
        *,
        correlation_id: str | None = None,
        msg_id: str | None = None,
        timeout: float | None = None,
        **metadata: Any,
    ) -> int:
        """Publish on the bus; returns the number of subscribers it was delivered to.

        Delivers at once to every subscriber with room and waits only in the
        lines of full ``block`` subscribers (a full subscriber of another topic
        never delays it).  A subscriber for which waiting would close a cycle
        of actors waiting on each other (e.g. this actor itself, full, on its
        own topic) gets the event dead-lettered (``deadlock``) and is not
        counted.  `timeout` bounds the wait in those lines (None: as long as
        it takes; 0: only where there is room now): past it the event is
        dead-lettered (``overflow``) for the subscribers it had not reached
        and the count delivered is returned (no exception).  Cancelled while
        it waits, the event is likewise dead-lettered for the subscribers it
        had not reached, and the cancellation propagates.  A `msg_id` seen
        within the bus's duplicate window makes it a no-op returning 0.  The
        other keywords are the event's `metadata`.  Raises `ValueError` for an
        invalid topic or one under ``system.``, or a negative or NaN
        `timeout`; `RuntimeClosed` once the system has stopped.
        """
        return await self._cell.host.publish_from(
            self._cell.path, topic, payload, correlation_id, metadata, msg_id, timeout=timeout
        )

    def publish_nowait(
        self,
        topic: str,
        payload: Any = None,
        *,
        correlation_id: str | None = None,
        msg_id: str | None = None,
        timeout: float | None = None,
        **metadata: Any,
    ) -> int:
        """Publish without waiting.  Never blocks.

        A subscriber that cannot take the event at once (full, or with
        publishers waiting in its line) gets it dead-lettered (``overflow``);
        the count says exactly how many got it.  `timeout` is checked but does
        not apply (as `System.publish` on the trio thread).  Raises as `publish`.
        """
        return self._cell.host.publish_nowait_from(
            self._cell.path, topic, payload, correlation_id, metadata, msg_id, timeout=timeout
        )

    def dead_letter(self, msg: Any, reason: str) -> None:
        """Give up on `msg`: record it in dead letters for this actor, with `reason`
        (one of the dead-letter reasons, e.g. ``"crashed"``, ``"timeout"``).

        For an actor that handles a failure itself instead of crashing; the
        message counts in this actor's ``dead_lettered`` like any other.
        Raises `ValueError` for a reason that is not one of
        `runtime.messages.DEAD_LETTER_REASONS` (nothing is recorded then).
        """
        if reason not in DEAD_LETTER_REASONS:
            known = ", ".join(DEAD_LETTER_REASONS)
            raise ValueError(f"unknown dead-letter reason {reason!r}; use one of {known}")
        self._cell.drop(msg, reason)

    def subscribe(
        self,
        pattern: str,
        *,
        once: bool = False,
        filter: Callable[[Event], bool] | None = None,
        replay: int = 0,
    ) -> None:
        """Receive events matching `pattern` (NATS syntax: ``a.*``, ``a.>``) in `receive`.

        `once`: only the next matching event; `filter(event) -> bool`;
        `replay=N`: first the last N matching events from history.  The
        subscription lasts until `unsubscribe` or the actor stops for good.
        """
        self._cell.host.subscribe_cell(self._cell, pattern, once=once, filter=filter, replay=replay)

    def unsubscribe(self, pattern: str) -> bool:
        """Drop the subscription to exactly `pattern`; False if there was none."""
        return self._cell.host.unsubscribe_cell(self._cell, pattern)

    async def run_blocking(
        self,
        fn: Callable[..., Any],
        *args: Any,
        timeout: float | None = None,
        bridge: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run blocking `fn(*args, **kwargs)` off the loop, on a bridge actor.

        `bridge`: the path of a `Bridge` (default ``/system/bridge``).  Raises
        `fn`'s own exception, or `AskTimeout` past `timeout` (the thread is
        abandoned, a worker process killed).
        """
        return await self._cell.host.run_blocking(
            fn, *args, timeout=timeout, bridge=bridge, **kwargs
        )

    async def forward(self, ref: ActorRef) -> None:
        """Hand the message in hand to `ref`; it answers the original asker directly.

        Waits for room in a ``block`` mailbox as `ActorRef.send` does.  The asker
        now waits on `ref` (rule 5; not an asker that gave up already): raises
        `Deadlock` if that, or this wait for room, would close a cycle; nothing
        was sent then, and this actor still holds the message (its return value
        answers the asker)."""
        await self._behaviour.forward(self._cell, ref._cell)

    @property
    def expects_reply(self) -> bool:
        """Whether the message in hand was asked (someone waits for the answer)."""
        return self._behaviour.reply is not None

    def defer_reply(self) -> DeferredReply:
        """Answer the message in hand later; `receive`'s return value is then ignored."""
        return self._behaviour.defer_reply(self._cell)

    def stop(self) -> None:
        """End this actor with reason ``normal`` after the current message."""
        self._cell.request_stop("normal")

    def watch(self, ref: ActorRef) -> None:
        """Get one `Terminated(ref, reason)` when `ref` stops for good (at once if it has)."""
        ref._watch_from(self._cell)

    def unwatch(self, ref: ActorRef) -> None:
        ref._unwatch_from(self._cell)

    def send_after(self, delay: float, msg: Any) -> Timer:
        """Send `msg` to this actor once, `delay` seconds from now."""
        if not delay >= 0:
            raise ValueError(f"delay must be >= 0, got {delay!r}")
        timer = Timer()
        self.nursery.start_soon(self._send_after, timer, delay, msg)
        return timer

    def every(self, interval: float, msg: Any) -> Timer:
        """Send `msg` to this actor every `interval` seconds, drift-free.

        Ticks are never queued on top of each other: a tick that comes due
        while the previous one still waits for mailbox room is skipped.
        """
        if not (interval > 0 and math.isfinite(interval)):
            raise ValueError(f"interval must be a positive number of seconds, got {interval!r}")
        timer = Timer()
        self.nursery.start_soon(self._every, timer, interval, msg)
        return timer

    async def _send_after(self, timer: Timer, delay: float, msg: Any) -> None:
        with timer._scope:
            await trio.sleep(delay)
            await self._cell.ref.send(msg)

    async def _every(self, timer: Timer, interval: float, msg: Any) -> None:
        with timer._scope:
            due = trio.current_time() + interval
            while True:
                await trio.sleep_until(due)
                await self._cell.ref.send(msg)
                due += interval
                now = trio.current_time()
                if due <= now:  # we fell behind: skip missed ticks, keep the phase
                    due += math.ceil((now - due) / interval) * interval
                    if due <= now:
                        due += interval

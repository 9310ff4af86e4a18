"""The runtime's own actors around the bus: `BusActor` at ``/system/bus`` (publishes
for foreign threads) and `CallbackSubscriber` (runs one ``bus.subscribe`` callback,
held by a `Callback`)."""

from __future__ import annotations

import inspect
import logging
import math
import types
import weakref
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import attrs
import trio

from .actor import Actor
from .errors import TroupeError
from .messages import UNHANDLED, DeferredReply, Event, describe
from .spec import name_part

if TYPE_CHECKING:  # the bus holds `Callback`s: only types go the other way
    from .bus import PendingPublish

log = logging.getLogger("troupe.bus")


@attrs.frozen
class PublishRequest:
    """A thread's publish, carried through the bus actor's mailbox."""

    topic: str
    payload: Any
    correlation_id: str | None
    metadata: Mapping[str, Any]
    msg_id: str | None = None
    timeout: float = math.inf
    """How long the thread waits in full subscribers' lines (from when the bus actor
    takes the request); past it the event is dead-lettered for those (``overflow``)."""


class BusActor(Actor):
    """``/system/bus``: publishes for foreign threads and shows the bus's stats.

    It never waits itself: it delivers where there is room and takes the
    event's places in full subscribers' lines at once (so thread publishes keep
    the order they reached it in), and a task of its own waits in those lines
    and answers the thread.  A full subscriber delays only the threads that
    publish its events.  A publish the bus refuses (`NotSerializable` for a
    cluster-wide topic, ...) is raised in the publishing thread; this actor goes on.
    """

    async def receive(self, msg: Any) -> Any:
        if not issubclass(type(msg), PublishRequest):  # (`type`: a dead proxy's __class__ raises)
            return UNHANDLED
        reply = self.ctx.defer_reply()
        try:
            pending = self.ctx.system.bus.publish_for_thread(
                msg.topic,
                msg.payload,
                correlation_id=msg.correlation_id,
                metadata=msg.metadata,
                msg_id=msg.msg_id,
            )
        except TroupeError as refused:  # NotSerializable for a cluster-wide topic, or
            reply.fail(refused)  # RuntimeClosed: the thread's error (a bug still crashes)
            return None
        if isinstance(pending, int):
            reply.send(pending)
        else:
            deadline = trio.current_time() + msg.timeout
            self.ctx.nursery.start_soon(self._answer, pending, deadline, reply)
        return None

    @staticmethod
    async def _answer(pending: PendingPublish, deadline: float, reply: DeferredReply) -> None:
        try:
            await pending.wait(None, deadline)
        finally:  # cancelled too (the system stops): what was delivered is the answer
            reply.send(pending.delivered)

    def snapshot_stats(self) -> dict[str, Any]:
        stats = self.ctx.system.bus.stats()
        stats["topics"] = len(stats["topics"])
        return stats


def bound_builtin(fn: object) -> bool:
    """Is `fn` a builtin method bound to an object (``a_deque.append``, not ``len``)?"""
    owner = getattr(fn, "__self__", None)
    return isinstance(fn, types.BuiltinMethodType) and not (
        owner is None or isinstance(owner, types.ModuleType)
    )


def _label(fn: Callable[..., Any]) -> str:
    """`fn`'s name, made fit to name its actor: ``<>`` around it gone (``<lambda>``),
    each character an actor name may not hold (a space, ``/``, a non-ASCII letter of
    a Unicode name) made ``_``; its type's name if it has no string ``__name__``."""
    name = getattr(fn, "__name__", None)
    if not isinstance(name, str) or not name.strip("<>"):
        name = type(fn).__name__
    return name_part(name.strip("<>")) or "callback"


class Callback:
    """A `bus.subscribe` callable as its subscriber actor holds it, and its timeout.

    Held strongly, or weakly (``weak=True``): a bound method through
    `weakref.WeakMethod` (``obj.method`` itself is a new object at every
    access, so a plain weak reference to it would die at once), a builtin
    one (``a_deque.append``) through a weak reference to its object, anything
    else through `weakref.ref`.  When a weakly held callable's object is
    collected, `on_gone(self)` is called -- from wherever the garbage
    collector happens to run, so it must only hand the news to the loop.
    """

    __slots__ = ("__weakref__", "_fn", "_ref", "label", "timeout")

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        timeout: float = math.inf,
        weak: bool = False,
        on_gone: Callable[[Callback], None] | None = None,
    ) -> None:
        self.label = _label(fn)
        self.timeout = timeout
        self._fn: Callable[..., Any] | None = None
        self._ref: Callable[[], Any] | None = None
        if not weak:
            self._fn = fn
            return

        def collected(_ref: object) -> None:
            if on_gone is not None:
                on_gone(self)

        try:
            if inspect.ismethod(fn):
                self._ref = weakref.WeakMethod(fn, collected)
            elif bound_builtin(fn):
                owner = weakref.ref(getattr(fn, "__self__"), collected)  # noqa: B009
                name = fn.__name__
                self._ref = lambda: None if (obj := owner()) is None else getattr(obj, name)
            else:
                self._ref = weakref.ref(fn, collected)
        except TypeError:
            raise TypeError(
                f"weak=True needs a callable that can be weakly referenced (a function, or a "
                f"method of an object that allows weak references); {fn!r} cannot"
            ) from None

    @property
    def weak(self) -> bool:
        return self._ref is not None

    def get(self) -> Callable[..., Any] | None:
        """The callable, or None once a weakly held one is gone."""
        if self._ref is None:
            return self._fn
        fn: Callable[..., Any] | None = self._ref()
        return fn

    def __repr__(self) -> str:
        how = "weak" if self.weak else "strong"
        return f"<Callback {self.label} ({how})>"


class CallbackSubscriber(Actor):
    """Runs one `bus.subscribe` callback.  A call that raises or times out does not
    crash it: the event is dead-lettered (``crashed`` / ``timeout``) and counted."""

    def __init__(self, callback: Callback) -> None:
        self.callback = callback
        self.calls = 0
        self.errors = 0
        self.timeouts = 0
        self.last_error: str | None = None

    async def receive(self, msg: Any) -> Any:
        if not issubclass(type(msg), Event):  # (`type`: a dead proxy's __class__ raises)
            return UNHANDLED
        fn = self.callback.get()
        if fn is None:  # held weakly and collected: the bus is ending the subscription
            self.ctx.dead_letter(msg, "stopped")
            return None
        self.calls += 1
        try:
            result = fn(msg)
            del fn  # a weakly held object may go while an async call waits
            if inspect.isawaitable(result):
                limit = self.callback.timeout
                if limit == math.inf:
                    await result
                else:
                    with trio.move_on_after(limit) as scope:
                        await result
                    if scope.cancelled_caught:
                        self.timeouts += 1
                        self.last_error = f"timed out after {limit:g} s on {msg.topic}"
                        self.ctx.dead_letter(msg, "timeout")
        except Exception as exc:
            self.errors += 1
            self.last_error = describe(exc)
            self.ctx.dead_letter(msg, "crashed")
            if self.errors == 1:  # once per callback: later ones are counted and dead-lettered
                log.error(
                    "bus callback %s (%s) failed on %s; whenever it raises, its event is "
                    "dead-lettered (reason 'crashed') and it goes on (logged once)",
                    self.callback.label,
                    self.ctx.path,
                    msg.topic,
                    exc_info=exc,
                )
        return None

    def snapshot_stats(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "errors": self.errors,
            "timeouts": self.timeouts,
            "last_error": self.last_error,
        }


__all__ = ["BusActor", "Callback", "CallbackSubscriber", "PublishRequest", "bound_builtin"]

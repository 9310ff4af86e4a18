"""What travels through mailboxes besides user messages: asks, replies, Terminated."""

from __future__ import annotations

import enum
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Protocol

import attrs
import trio

from .errors import AskTimeout

if TYPE_CHECKING:
    from .ref import ActorRef


class _Unhandled(enum.Enum):
    UNHANDLED = "UNHANDLED"

    def __repr__(self) -> str:
        return "runtime.UNHANDLED"


UNHANDLED: Final = _Unhandled.UNHANDLED
"""Return this from `receive` for a message the actor does not handle."""

ExitReason = str | BaseException
"""``"normal"`` (ctx.stop), ``"shutdown"`` (stopped by its supervisor or the
system), ``"killed"`` (cancelled after its shutdown timeout) or the exception
that crashed it."""


@attrs.frozen
class Terminated:
    """Sent once to each watcher when the watched actor stops for good."""

    ref: ActorRef
    reason: ExitReason


class ReplySlot(Protocol):
    """Where the answer to an ask goes: `Reply` on the loop, `ThreadReply` for threads."""

    state: str

    def send(self, value: Any) -> bool: ...

    def fail(self, error: BaseException) -> bool: ...


class InjectedCrash:
    """System-lane order to crash the actor with `error` (see `runtime.testing.crash`)."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


class Reply:
    """The one-shot slot an ask waits on.  Only the trio thread touches it.

    ``on_late`` is called with the value of a reply that arrives after the
    asker gave up, so that it can be recorded in dead letters.
    """

    __slots__ = ("_error", "_event", "_on_late", "_value", "state")

    def __init__(self, on_late: Callable[[Any], None]) -> None:
        self._event = trio.Event()
        self._value: Any = None
        self._error: BaseException | None = None
        self._on_late = on_late
        self.state = "pending"  # -> "done" | "abandoned"

    def send(self, value: Any) -> bool:
        if self.state == "pending":
            self._value = value
            self.state = "done"
            self._event.set()
            return True
        if self.state == "abandoned":
            self._on_late(value)
        return False

    def fail(self, error: BaseException) -> bool:
        if self.state != "pending":
            return False
        self._error = error
        self.state = "done"
        self._event.set()
        return True

    async def wait(self, deadline: float, what: str) -> Any:
        try:
            if deadline == math.inf:  # no timeout: no cancel scope to pay for
                await self._event.wait()
            else:
                with trio.move_on_at(deadline):
                    await self._event.wait()
        finally:
            if self.state == "pending":
                # timed out, or the asker was cancelled: a reply from now on is late
                self.state = "abandoned"
        if self.state != "done":
            raise AskTimeout(f"no reply to {what}")
        if self._error is not None:
            raise self._error
        return self._value


class Ask:
    """A user message that expects a reply."""

    __slots__ = ("msg", "reply")

    def __init__(self, msg: Any, reply: ReplySlot) -> None:
        self.msg = msg
        self.reply = reply


class DeferredReply:
    """Handed out by `ctx.defer_reply()`: answer the current ask later.

    For a message that was told (no asker) `send` and `fail` do nothing.
    If the incarnation ends first, the asker gets `ActorStopped` or
    `ActorCrashed` instead of waiting for its timeout.
    """

    __slots__ = ("_done", "_reply")

    def __init__(self, reply: ReplySlot | None, done: Callable[[DeferredReply], None]) -> None:
        self._reply = reply
        self._done = done

    @property
    def pending(self) -> bool:
        return self._reply is not None and self._reply.state == "pending"

    def send(self, value: Any) -> None:
        if self._reply is not None:
            self._reply.send(value)
        self._done(self)

    def fail(self, error: BaseException) -> None:
        if self._reply is not None:
            self._reply.fail(error)
        self._done(self)

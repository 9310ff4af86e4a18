"""What travels through mailboxes and around the runtime: events, asks, replies,
notices between slots and supervisors, and the error record of a crash.

Plain data (layer 0): nothing here knows about cells, supervisors or the system.
"""

from __future__ import annotations

import builtins
import enum
import math
import reprlib
import traceback
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Final, Protocol

import attrs
import trio
from trio.lowlevel import reschedule

from .errors import AskTimeout

if TYPE_CHECKING:
    from .deadlines import Deadlines
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


DEAD_LETTER_REASONS: tuple[str, ...] = (
    "crashed",
    "unhandled",
    "overflow",
    "stopped",
    "timeout",
    "deadlock",
    "undeliverable",
)
"""``crashed``: its handler raised; ``unhandled``: `receive` returned UNHANDLED;
``overflow``: dropped by a full mailbox; ``stopped``: the actor stopped for good
before handling it; ``timeout``: a reply that arrived after its asker gave up;
``deadlock``: delivering it would have closed a wait cycle (design rule 5);
``undeliverable``: on a cluster, its node is down or it could not be decoded."""


@attrs.frozen
class Event:
    """One published event.  `source` is the publisher's path, or ``"thread"``.

    `msg_id`: the publisher's id for duplicate suppression, if it gave one.
    `node`: the node whose bus published it (None without a cluster).
    """

    topic: str
    payload: Any = None
    source: str = "system"
    id: int = 0
    timestamp: float = 0.0
    correlation_id: str | None = None
    metadata: Mapping[str, Any] = attrs.field(factory=dict)
    msg_id: str | None = None
    node: str | None = None


def _safe_text(fn: Callable[[Any], str], value: Any) -> str:
    try:
        return fn(value)
    except Exception as exc:  # an exception whose __str__/__repr__ raises is still an error
        return f"<{type(value).__qualname__}: {fn.__name__}() raised {type(exc).__name__}>"


def describe(reason: object) -> str:
    """A short text for an exit reason or error; never raises."""
    if isinstance(reason, BaseException):
        return f"{type(reason).__name__}({_safe_text(str, reason)!r})"
    return _safe_text(str, reason)


SHORT_REPR: Final = 200
"""Characters of a dead letter's (or a control reply's) repr that are shown."""


class _ShortRepr(reprlib.Repr):
    """`reprlib.Repr` whose instance repr lets a raising ``__repr__`` raise (reprlib
    would show ``<T instance at 0x...>``): `short_repr` words it."""

    def repr_instance(self, x: Any, level: int) -> str:
        text = builtins.repr(x)
        if len(text) > self.maxother:
            keep = max(0, (self.maxother - 3) // 2)
            text = text[:keep] + "..." + text[len(text) - keep :]
        return text


_REPR = _ShortRepr()
_REPR.maxstring = SHORT_REPR
_REPR.maxother = SHORT_REPR
_REPR.maxlevel = 4


def short_repr(value: Any, limit: int = SHORT_REPR) -> str:
    """A repr of `value` at most `limit` characters long; never raises.

    Large containers are abbreviated without building their whole repr
    (`reprlib`); a repr that raises is shown as ``<T: repr() raised E>``.
    """
    try:
        text = _REPR.repr(value)
        if not isinstance(text, str):
            raise TypeError("repr() returned a non-string")
    except Exception as exc:
        return f"<{type(value).__name__}: repr() raised {type(exc).__name__}>"
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


@attrs.frozen
class ErrorInfo:
    """The last error of an actor, as the snapshot shows it."""

    type: str
    message: str
    traceback: str

    @classmethod
    def of(cls, exc: BaseException) -> ErrorInfo:
        try:
            text = "".join(traceback.format_exception(exc))
        except Exception:
            text = f"{type(exc).__qualname__}: (traceback could not be formatted)"
        return cls(type=type(exc).__qualname__, message=_safe_text(str, exc), traceback=text)


@attrs.frozen
class ChildExited:
    """System-lane notice to a supervisor: an incarnation of `cell` ended by itself."""

    cell: Any  # the child's slot (a `runtime.cell.Cell`)
    incarnation: int
    reason: ExitReason


@attrs.frozen
class Control:
    """A request for a supervisor's own task (start, adopt or terminate a child)."""

    op: str
    arg: Any
    reply: ReplySlot


@attrs.frozen
class Terminated:
    """Sent once to each watcher when the watched actor stops for good."""

    ref: ActorRef
    reason: ExitReason


class Internal:
    """Base of a message an actor sends itself for its own machinery (e.g. the tick of
    `actors.Daemon`): it never shows up in dead letters, so its class accounts for it.

    Where the runtime would dead-letter one sent bare (its handler crashed, returned
    UNHANDLED or was cancelled by a stop, a dropping mailbox overflowed, the actor
    stopped for good with it queued), it calls `discarded(reason)` instead, with the
    reason it would have recorded, and counts nothing.  It never pushes another
    message out: a full ``drop_old`` mailbox discards it (``overflow``) as
    ``drop_new`` would.  Inside an ask it is a message like any other.

    A subclass must define `discarded` (`TypeError` when the class is made
    otherwise): nothing the runtime drops goes untold.
    """

    __slots__ = ()

    def __new__(cls, *args: Any, **kwargs: Any) -> Internal:
        if cls is Internal:
            raise TypeError("Internal is a base class: subclass it and define discarded()")
        return super().__new__(cls)

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.discarded is Internal.discarded:
            raise TypeError(
                f"{cls.__qualname__} subclasses runtime.Internal but does not define "
                "discarded(reason): the runtime calls it instead of dead-lettering a "
                "dropped one, so it must say what becomes of it (or do not subclass "
                "Internal, and dropped ones are dead-lettered as usual)"
            )

    def discarded(self, reason: str) -> None:
        """Called on the trio thread, in place of the dead letter.  Subclasses define
        it; it should not raise (if it does, the error is logged and the rest of
        the mailbox is accounted for as usual)."""
        raise NotImplementedError


class ReplySlot(Protocol):
    """Where the answer to an ask goes: `Reply` on the loop, `ThreadReply` for threads."""

    asker: Any  # the slot whose handler waits on it (loop asks only), for rule 5

    @property
    def state(self) -> str:
        """``pending``, ``done`` or ``abandoned`` (the asker gave up)."""
        ...

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

    __slots__ = ("_error", "_on_late", "_on_settled", "_task", "_value", "asker", "state")

    def __init__(
        self,
        on_late: Callable[[Any], None],
        asker: Any = None,
        on_settled: Callable[[], None] | None = None,
    ) -> None:
        self.asker = asker  # the slot whose handler waits on this reply, if any (rule 5)
        self._on_settled = on_settled  # called once the reply is settled (the wait is over)
        self._task: trio.lowlevel.Task | None = None  # the task parked in `wait`
        self._value: Any = None
        self._error: BaseException | None = None
        self._on_late = on_late
        self.state = "pending"  # -> "done" | "abandoned"

    def send(self, value: Any) -> bool:
        if self.state == "pending":
            self._value = value
            self.state = "done"
            self._wake()
            if self._on_settled is not None:
                self._on_settled()
            return True
        if self.state == "abandoned":
            self._on_late(value)
        return False

    def fail(self, error: BaseException) -> bool:
        if self.state != "pending":
            return False
        self._error = error
        self.state = "done"
        self._wake()
        if self._on_settled is not None:
            self._on_settled()
        return True

    def expire(self) -> None:
        """Its deadline passed (`runtime.deadlines`): the asker gives up; a reply from
        now on is late."""
        if self.state == "pending":
            self.state = "abandoned"
            self._wake()

    def unkept(self) -> None:
        """The keeper of its deadline stopped: the waiting task keeps it itself."""
        self._wake()  # still pending: `wait` goes on with a cancel scope

    def _wake(self) -> None:
        task = self._task
        if task is not None:
            self._task = None
            reschedule(task)

    def _abort(self, _: Any) -> trio.lowlevel.Abort:
        # The waiting task is cancelled: it gave up, so a reply from now on is late
        # (even one that comes before the task runs again).
        self._task = None
        if self.state == "pending":
            self.state = "abandoned"
        return trio.lowlevel.Abort.SUCCEEDED

    async def wait(
        self, deadline: float, what: str | Callable[[], str], deadlines: Deadlines | None = None
    ) -> Any:
        """Block until the reply, or until `deadline` (a `trio.current_time` time; inf:
        none), then raise `AskTimeout` ("no reply to `what`"; a callable is asked for
        the text only then).  Returns the value, or raises the error, it was settled
        with.  Always a checkpoint.  Cancelled (or timed out), the asker gave up: a
        reply that comes later goes to ``on_late``.

        `deadlines`, while its keeper runs, keeps the deadline (no cancel scope to
        enter and leave: see `runtime.deadlines`); otherwise a cancel scope does.
        """
        if self.state == "pending":
            if deadline == math.inf:
                await self._park()
            elif deadlines is not None and deadlines.running:
                if deadline <= trio.current_time():  # due already (a timeout of 0): given
                    self.state = "abandoned"  # up at once, as a cancel scope would
                    await trio.lowlevel.checkpoint()
                else:
                    entry = deadlines.add(deadline, self)
                    try:
                        await self._park()
                    finally:
                        deadlines.discard(entry)
                    if self.state == "pending":  # unkept: the keeper stopped first
                        with trio.move_on_at(deadline):
                            await self._park()
            else:
                with trio.move_on_at(deadline):
                    await self._park()
        else:
            await trio.lowlevel.checkpoint()
        if self.state != "done":
            raise AskTimeout(f"no reply to {what if isinstance(what, str) else what()}")
        if self._error is not None:
            raise self._error
        return self._value

    async def _park(self) -> None:
        self._task = trio.lowlevel.current_task()
        await trio.lowlevel.wait_task_rescheduled(self._abort)


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

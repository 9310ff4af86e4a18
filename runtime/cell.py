"""A slot in the actor tree and the task that runs each incarnation of its actor.

The slot (`Cell`) outlives incarnations: it owns the path, the ref, the
mailbox, the watchers and the counters.  `Cell.run` is one incarnation: it
builds a fresh actor, runs `on_start`, drains the mailbox one message at a
time, and runs `on_stop`.  It never raises into its supervisor: it reports
how it ended with a `ChildExited` in the supervisor's system lane.
"""

from __future__ import annotations

import logging
import math
import traceback
from typing import TYPE_CHECKING, Any, cast

import attrs
import trio

from .actor import Actor, Context
from .errors import ActorCrashed, ActorStopped, MailboxFull, UnhandledMessage
from .mailbox import Mailbox, MailboxQueue
from .messages import (
    UNHANDLED,
    Ask,
    DeferredReply,
    ExitReason,
    InjectedCrash,
    ReplySlot,
    Terminated,
)
from .ref import ActorRef

current_task = trio.lowlevel.current_task
wait_task_rescheduled = trio.lowlevel.wait_task_rescheduled

if TYPE_CHECKING:
    from .supervisor import ChildSpec, SupervisorCell, SupervisorSpec
    from .system import System

log = logging.getLogger("troupe")

BATCH = 128
"""Messages handled between forced checkpoints when the actor never yields."""

_IDLE: Any = object()  # `current` when no message is in hand


@attrs.frozen
class ErrorInfo:
    """The last error of an actor, as the snapshot shows it."""

    type: str
    message: str
    traceback: str

    @classmethod
    def of(cls, exc: BaseException) -> ErrorInfo:
        return cls(
            type=type(exc).__qualname__,
            message=str(exc),
            traceback="".join(traceback.format_exception(exc)),
        )


@attrs.frozen
class ChildExited:
    """System-lane note to a supervisor: an incarnation of `cell` ended by itself."""

    cell: Cell
    incarnation: int
    reason: ExitReason


@attrs.frozen
class Control:
    """A request for a supervisor's own task (start or terminate a child)."""

    op: str
    arg: Any
    reply: ReplySlot


def crash_of(exc: BaseException) -> BaseException | None:
    """The error inside `exc` once cancellations are set aside; None if it was only those."""
    if isinstance(exc, trio.Cancelled):
        return None
    if isinstance(exc, BaseExceptionGroup):
        _, rest = exc.split(trio.Cancelled)
        if rest is None:
            return None
        while isinstance(rest, BaseExceptionGroup) and len(rest.exceptions) == 1:
            rest = rest.exceptions[0]
        return rest
    return exc


def describe(reason: ExitReason) -> str:
    if isinstance(reason, BaseException):
        return f"{type(reason).__name__}({str(reason)!r})"
    return reason


class Cell:
    """One slot of the tree: path, ref, mailbox and the bookkeeping of its incarnations."""

    kind = "actor"
    __slots__ = (
        "__weakref__",
        "_deferred",
        "_exit",
        "_interrupted",
        "_kill_scope",
        "_noted",
        "_reply",
        "_running",
        "_stop_reason",
        "actor",
        "current",
        "current_since",
        "dead_lettered",
        "failed",
        "final_reason",
        "finalized",
        "incarnation",
        "last_error",
        "mailbox",
        "name",
        "parent",
        "path",
        "processed",
        "ref",
        "restarts",
        "spec",
        "started_at",
        "state",
        "stopping_by_parent",
        "system",
        "watchers",
        "watching",
    )

    def __init__(
        self,
        system: System,
        parent: SupervisorCell | None,
        spec: ChildSpec | SupervisorSpec,
        path: str,
    ) -> None:
        self.system = system
        self.parent = parent
        self.spec = spec
        self.name = spec.name
        self.path = path
        self.ref = ActorRef(self)
        self.mailbox = MailboxQueue(self._mailbox_spec(), self.drop)
        self.mailbox.thread_gate = system._threads
        self.state = "starting"
        self.incarnation = 0
        self.restarts = 0
        self.processed = 0
        self.failed = 0
        self.dead_lettered = 0
        self.last_error: ErrorInfo | None = None
        self.started_at: float | None = None
        self.current: Any = _IDLE
        self.current_since = 0.0
        self.finalized = False
        self.final_reason: ExitReason = "shutdown"
        # watch bookkeeping and deferred replies are rare: made on first use
        self.watchers: dict[Cell, None] | None = None
        self.watching: dict[Cell, None] | None = None
        self.stopping_by_parent = False
        self.actor: Actor | None = None
        self._stop_reason: str | None = None
        self._kill_scope: trio.CancelScope | None = None
        self._running = False
        self._exit: trio.Event | None = None  # made only when someone waits for the end
        self._reply: ReplySlot | None = None
        self._deferred: dict[DeferredReply, None] | None = None
        self._interrupted: Any = _IDLE  # the message in hand when receive was cancelled
        self._noted: BaseException | None = None  # a crash already counted by _loop

    def _mailbox_spec(self) -> Mailbox:
        spec = self.spec.mailbox
        if spec is None:
            spec = getattr(getattr(self.spec, "factory", None), "mailbox", None)
        return spec if isinstance(spec, Mailbox) else Mailbox()

    @property
    def cls_name(self) -> str:
        factory = getattr(self.spec, "factory", None)
        return str(getattr(factory, "__qualname__", repr(factory)))

    @property
    def busy(self) -> bool:
        return self.current is not _IDLE

    @property
    def running(self) -> bool:
        return self._running

    # -- dead letters ----------------------------------------------------
    def drop(self, item: Any, reason: str, cause: BaseException | None = None) -> None:
        """Account for a message this slot will never handle."""
        if isinstance(item, Control):
            item.reply.fail(ActorStopped(f"{self.path} stopped before it could {item.op}"))
            return
        if isinstance(item, ChildExited | InjectedCrash) or (
            isinstance(item, Terminated) and reason == "stopped"
        ):
            return  # notices for an actor that is itself gone: nobody to tell
        msg = item.msg if type(item) is Ask else item
        self.dead_lettered += 1
        self.system._dead_letter(msg, reason, self.path)
        if type(item) is Ask:
            what = f"{type(msg).__name__} to {self.path}"
            error: BaseException
            if reason == "crashed":
                error = ActorCrashed(
                    f"{self.path} crashed handling {what}: {describe(cause or 'crash')}"
                )
                error.__cause__ = cause
            elif reason == "unhandled":
                error = UnhandledMessage(f"{self.path} does not handle {type(msg).__name__}")
            elif reason == "overflow":
                error = MailboxFull(f"mailbox of {self.path} overflowed; {what} was dropped")
            else:
                error = ActorStopped(f"{self.path} stopped before handling {what}")
            item.reply.fail(error)

    def late_reply(self, value: Any) -> None:
        self.dead_lettered += 1
        self.system._dead_letter(value, "timeout", self.path)

    # -- control from outside -------------------------------------------
    def request_stop(self, reason: str) -> None:
        """Ask the running incarnation to stop after the message in hand."""
        if not self.running:
            return
        if self._stop_reason is None or reason == "shutdown":
            self._stop_reason = reason
        self._arm_shutdown_timeout()
        self.mailbox.wake()

    def _arm_shutdown_timeout(self) -> None:
        timeout = self.spec.shutdown
        scope = self._kill_scope
        if scope is not None and timeout is not None and math.isfinite(timeout):
            scope.deadline = min(scope.deadline, trio.current_time() + timeout)

    async def wait_done(self) -> None:
        """Wait until the current incarnation (if any) has ended."""
        if not self._running:
            await trio.lowlevel.checkpoint()
            return
        if self._exit is None:
            self._exit = trio.Event()
        await self._exit.wait()

    def defer_reply(self) -> DeferredReply:
        if self.current is _IDLE:
            raise RuntimeError("defer_reply() can only be called while handling a message")
        reply, self._reply = self._reply, None
        handle = DeferredReply(reply, self._deferred_done)
        if reply is not None:
            if self._deferred is None:
                self._deferred = {}
            self._deferred[handle] = None
        return handle

    async def forward(self, target: Cell) -> None:
        """Pass the message in hand, with its reply slot, on to `target` (Akka's forward)."""
        if self.current is _IDLE:
            raise RuntimeError("forward() can only be called while handling a message")
        reply, self._reply = self._reply, None
        item = self.current if reply is None else Ask(self.current, reply)
        await target.mailbox.put_wait(item)

    def _deferred_done(self, handle: DeferredReply) -> None:
        if self._deferred is not None:
            self._deferred.pop(handle, None)

    # -- watching --------------------------------------------------------
    def watch(self, target: Cell) -> None:
        if target.finalized:
            self.mailbox.put_system(Terminated(target.ref, target.final_reason))
            return
        if target.watchers is None:
            target.watchers = {}
        target.watchers[self] = None
        if self.watching is None:
            self.watching = {}
        self.watching[target] = None

    def unwatch(self, target: Cell) -> None:
        if target.watchers is not None:
            target.watchers.pop(self, None)
        if self.watching is not None:
            self.watching.pop(target, None)

    # -- the end of the slot --------------------------------------------
    def finalize(self, reason: ExitReason) -> None:
        """The slot stops for good: release the name, drain the mailbox, tell watchers."""
        if self.finalized:
            return
        self.finalized = True
        self.final_reason = reason
        self.state = "stopped"
        self.system._unregister(self)
        self.system.bus.drop_all(self)
        for item in self.mailbox.close():
            self.drop(item, "stopped")
        watching, self.watching = self.watching or {}, None
        for target in watching:
            if target.watchers is not None:
                target.watchers.pop(self, None)
        watchers, self.watchers = self.watchers or {}, None
        for watcher in watchers:
            if watcher.watching is not None:
                watcher.watching.pop(self, None)
            watcher.mailbox.put_system(Terminated(self.ref, reason))
        self.lifecycle_event("stopped", reason=describe(reason))

    def lifecycle_event(self, what: str, **details: Any) -> None:
        """Publish ``system.actor.<what>`` for this slot (runtime listeners use ``system.>``)."""
        if self.system.is_running:
            self.system.bus.system_event(
                f"system.actor.{what}", {"path": self.path, "kind": self.kind, **details}
            )

    # -- one incarnation -------------------------------------------------
    def _begin(self) -> int:
        self.incarnation += 1
        self._running = True
        self._exit = None
        self._stop_reason = None
        self.stopping_by_parent = False
        self.state = "starting"
        return self.incarnation

    def _end(self, reason: ExitReason) -> None:
        for handle in list(self._deferred or ()):
            if isinstance(reason, BaseException):
                error: BaseException = ActorCrashed(f"{self.path} crashed before replying")
                error.__cause__ = reason
            else:
                error = ActorStopped(f"{self.path} stopped before replying")
            handle.fail(error)
        self._deferred = None
        self.actor = None
        self.current = _IDLE
        self._reply = None
        self._kill_scope = None
        if not self.finalized:
            self.state = "failed" if isinstance(reason, BaseException) else "stopped"
        self._running = False
        if self._exit is not None:
            self._exit.set()
        if self.system.shutting_down and self.parent is not None:
            # Nothing restarts during a shutdown: release the slot now, so that
            # senders blocked on its mailbox (a publisher, a thread) are let go
            # at once instead of waiting for the whole tree to stop.
            self.finalize(reason)

    def _drop_interrupted(self, reason: str, cause: BaseException | None = None) -> None:
        item, self._interrupted = self._interrupted, _IDLE
        if item is not _IDLE:
            self.drop(item, reason, cause)

    def _mark_started(
        self, incarnation: int, task_status: trio.TaskStatus[BaseException | None]
    ) -> None:
        self.state = "running"
        self.started_at = trio.current_time()
        self.lifecycle_event("started", incarnation=incarnation)
        task_status.started(None)

    def _record_error(self, exc: BaseException, during: str) -> None:
        self.last_error = ErrorInfo.of(exc)
        log.error("%s %s: %s", self.path, during, describe(exc), exc_info=exc)
        if during != "failed in on_stop":
            self.lifecycle_event("crashed", error=describe(exc), during=during)

    def _report(self, incarnation: int, reason: ExitReason) -> None:
        if self.parent is not None:
            self.parent.mailbox.put_system(ChildExited(self, incarnation, reason))
        else:
            self.system._root_exited(reason)

    async def run(
        self, *, task_status: trio.TaskStatus[BaseException | None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """One incarnation.  ``task_status.started`` gets None, or the start error.

        The incarnation's nursery (``ctx.nursery``) doubles as its kill scope:
        a stop arms its deadline with the child's shutdown timeout, so a
        message in hand or an `on_stop` that overruns is cancelled.
        """
        incarnation = self._begin()
        reason: ExitReason = "shutdown"
        started = False
        clean = False
        actor: Actor | None = None
        nursery: trio.Nursery | None = None
        try:
            try:
                spec = cast("ChildSpec", self.spec)
                actor = spec.factory(*spec.args, **spec.kwargs)
                if not isinstance(actor, Actor):
                    raise TypeError(
                        f"{self.cls_name} made {actor!r}, which is not an Actor; "
                        "child() takes an Actor subclass or a callable returning an Actor"
                    )
                async with trio.open_nursery() as nursery:
                    self._kill_scope = nursery.cancel_scope
                    if self._stop_reason is not None:
                        self._arm_shutdown_timeout()
                    actor._troupe_ctx = Context(self, nursery)
                    self.actor = actor
                    for pattern in type(actor).subscriptions:
                        self.system.bus.subscribe_cell(self, pattern)
                    await actor.on_start()
                    started = True
                    self._mark_started(incarnation, task_status)
                    reason = await self._loop(actor)
                    self.state = "stopping"
                    await self._on_stop(actor, reason)
                    clean = True
                    nursery.cancel_scope.cancel()  # background tasks end with the incarnation
            except BaseException as exc:
                crash = crash_of(exc)
                if crash is None:
                    raise
                reason = crash
                if not started:
                    self._record_error(crash, "failed to start")
                    return  # the supervisor hears of it below, once this incarnation is over
                if self._noted is None:  # not yet counted by _loop
                    self.failed += 1
                    self._record_error(crash, "crashed")
                self._noted = None
                # e.g. a task in ctx.nursery failed while receive was awaiting
                self._drop_interrupted("crashed", crash)
                self.state = "stopping"
                with trio.CancelScope() as scope:
                    self._kill_scope = scope
                    self._arm_shutdown_timeout()
                    await self._on_stop(actor, reason)
            if not clean and nursery is not None and nursery.cancel_scope.cancelled_caught:
                if not isinstance(reason, BaseException):
                    reason = "killed"
                    log.warning("%s did not stop within its shutdown timeout: cancelled", self.path)
        finally:
            self._drop_interrupted("stopped")
            self._end(reason)
            if not started and isinstance(reason, BaseException):
                task_status.started(reason)
        if not started:
            if isinstance(reason, BaseException):
                return
            task_status.started(ActorStopped(f"{self.path} was stopped while starting"))
            return
        if not self.stopping_by_parent:
            self._report(incarnation, reason)

    async def _on_stop(self, actor: Actor | None, reason: ExitReason) -> None:
        assert actor is not None
        try:
            await actor.on_stop(reason)
        except Exception as exc:
            self._record_error(exc, "failed in on_stop")

    async def _loop(self, actor: Actor) -> str:
        """Handle messages, system lane first, until a stop is requested.

        The hot path: one wake-up drains a batch without a checkpoint per
        message; a forced checkpoint every `BATCH` messages keeps it fair.

        `current_since` costs no clock read per message: the time is read once
        per wake-up and again only after a handler that let other tasks run
        (the loop monitor's step count moved).  A handler that never yields
        takes microseconds, so the stamp stays true to well within that.
        """
        mb = self.mailbox
        user = mb.user
        receive = actor.receive
        now = trio.lowlevel.current_clock().current_time
        monitor = self.system._loop_monitor
        assert monitor is not None, "actors run inside open_system, which installs the monitor"
        self.current_since = now()  # when the message in hand began, to within a batch
        budget = BATCH
        while True:
            if self._stop_reason is not None:
                return self._stop_reason
            if mb.system:
                item = mb.system.popleft()
                if type(item) is InjectedCrash:
                    raise item.error
            elif user:
                item = user.popleft()
                if mb.notify_take:
                    mb.room_made()
            else:
                # Park right here (not in a helper) to keep an idle actor's stack small.
                budget = BATCH
                mb._waiter = current_task()
                await wait_task_rescheduled(mb._abort)
                user = mb.user  # the first put swaps in the mailbox's own deque
                self.current_since = now()
                continue
            if type(item) is Ask:
                msg = item.msg
                self._reply = item.reply
            else:
                msg = item
                self._reply = None
            self.current = msg
            steps = monitor.steps
            try:
                result = await receive(msg)
            except BaseException as exc:
                crash = crash_of(exc)
                if crash is None:
                    # Cancelled: a stop past its timeout, or a crash elsewhere in this
                    # incarnation; `run` accounts for the message once it knows which.
                    self._interrupted = item
                else:
                    # Count it before the asker wakes up, so that what the asker sees
                    # next (a snapshot) already shows the crash.
                    self.failed += 1
                    self.state = "failed"  # this incarnation is over, whatever on_stop does
                    self._record_error(crash, "crashed")
                    self._noted = crash
                    self.drop(item, "crashed", crash)
                raise
            self.current = _IDLE
            self.processed += 1
            if monitor.steps != steps:
                self.current_since = now()
            if result is UNHANDLED:
                self.drop(item, "unhandled")
            elif self._reply is not None:
                self._reply.send(result)
            budget -= 1
            if not budget:
                budget = BATCH
                await trio.lowlevel.checkpoint()
                self.current_since = now()

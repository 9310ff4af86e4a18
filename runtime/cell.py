"""A slot in the actor tree, its incarnations, and the wait-for graph of rule 5.

The slot (`Cell`) outlives incarnations: it owns the path, the ref, the
mailbox, the watchers and the counters.  What runs in it is a *behaviour*:
`ActorBehaviour` (below) builds a fresh actor per incarnation and drains the
mailbox one message at a time; `runtime.supervisor.Supervising` starts and
restarts children.  An incarnation never raises into its supervisor: it
reports how it ended with a `ChildExited` in the supervisor's system lane.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import math
from typing import TYPE_CHECKING, Any, Protocol

import trio

from .actor import Actor, Context
from .errors import ActorCrashed, ActorStopped, MailboxFull, UnhandledMessage, unwrap_single
from .logs import describe_failure, log_crash
from .mailbox import EMPTY, MailboxQueue
from .messages import (
    UNHANDLED,
    Ask,
    ChildExited,
    Control,
    DeferredReply,
    ErrorInfo,
    ExitReason,
    InjectedCrash,
    Internal,
    ReplySlot,
    Terminated,
    describe,
)
from .ref import ActorRef, send_into
from .spec import ChildSpec, check_handlers, resolve_factory
from .waits import (
    end_wait,
    enter_incarnation,
    hand_back,
    hand_on,
    leave_incarnation,
    let_in,
)

if TYPE_CHECKING:
    from .host import Host
    from .spec import Supervisor

current_task = trio.lowlevel.current_task
wait_task_rescheduled = trio.lowlevel.wait_task_rescheduled

log = logging.getLogger("troupe")

BATCH = 128
"""Messages handled between forced checkpoints when the actor never yields."""
_BATCH_RANGE = range(BATCH)

IDLE: Any = object()
"""`ActorBehaviour.current` when no message is in hand."""

HIBERNATED: Any = object()
"""What `ActorBehaviour._loop` returns when the incarnation hibernates (its task ends)."""

AWAKE_RECHECK = 1.0
"""Seconds between looks whether an actor kept awake only by tasks of its own in
``ctx.nursery`` may hibernate yet (trio does not tell when a nursery's tasks end)."""


# -- how an incarnation ended ------------------------------------------------
class HandlerFailed(Exception):
    """Carries an exception raised by `receive` or `on_start` out of the incarnation's
    nursery.  Trio formats the ``repr`` of what crosses a nursery; a user error whose
    ``repr`` raises would corrupt the nursery, so the user's error never crosses it bare."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    def __repr__(self) -> str:
        return f"HandlerFailed({type(self.error).__qualname__})"


def classify(exc: BaseException) -> tuple[BaseException | None, BaseException | None]:
    """Split what ended an incarnation into ``(crash, interrupt)``.

    `crash` is the `Exception` that crashed it (None if there was none);
    `interrupt` a `BaseException` that is neither an `Exception` nor a
    cancellation (KeyboardInterrupt, SystemExit, ...): those are not failures
    to recover from but a request to stop everything.  Both None means it
    was only cancelled.
    """
    if isinstance(exc, BaseExceptionGroup):
        crashes, others = exc.split(Exception)
        interrupt = None
        if others is not None:
            _, interrupt = others.split(trio.Cancelled)
        crash = unwrap_single(crashes) if crashes is not None else None
        if isinstance(crash, HandlerFailed):
            crash = crash.error
        return crash, unwrap_single(interrupt) if interrupt is not None else None
    if isinstance(exc, trio.Cancelled):
        return None, None
    if isinstance(exc, HandlerFailed):
        return exc.error, None
    if isinstance(exc, Exception):
        return exc, None
    return None, exc


class Behaviour(Protocol):
    """What runs in a slot: an actor's message loop or a supervisor's."""

    kind: str

    @property
    def starting(self) -> Cell | None:
        """The child whose start this behaviour waits for now (a supervisor's), if any."""
        ...

    @property
    def hibernating(self) -> bool:
        """Whether the running incarnation has no task now (see ``hibernate_after``)."""
        ...

    async def start(self, cell: Cell, nursery: trio.Nursery) -> BaseException | None:
        """Start an incarnation in `nursery` (see `Cell.start`)."""
        ...

    def resume_soon(self, cell: Cell) -> None:
        """The mailbox of the hibernating incarnation got something: resume it."""
        ...

    def abandon(self, cell: Cell) -> None:
        """`nursery` of `start` is closing: end a hibernating incarnation there."""
        ...

    async def run(
        self,
        cell: Cell,
        task_status: trio.TaskStatus[BaseException | None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """One incarnation.  ``task_status.started`` gets None, or the start error."""
        ...

    def finalize(self, cell: Cell) -> None:
        """The slot stops for good: release what the behaviour holds (e.g. children)."""
        ...

    def stats(self) -> Any:
        """Behaviour-specific counters for the snapshot (e.g. the actor's own); the
        monitor checks what comes back."""
        ...

    def stopped_by_group_restart(self) -> None:
        """The supervisor is stopping this incarnation as a bystander of a group restart."""
        ...

    def on_stop_request(self, cell: Cell, reason: str) -> None:
        """A stop was requested for the running incarnation (see `Cell.request_stop`)."""
        ...


class Cell:
    """One slot of the tree: path, ref, mailbox and the bookkeeping of its incarnations."""

    __slots__ = (
        "__weakref__",
        "_announced",
        "_exit",
        "_kill_scope",
        "_running",
        "_stop_reason",
        "behaviour",
        "dead_lettered",
        "failed",
        "final_reason",
        "finalized",
        "host",
        "incarnation",
        "last_error",
        "mailbox",
        "name",
        "parent",
        "path",
        "processed",
        "ref",
        "restarts",
        "resting",
        "spec",
        "started_at",
        "state",
        "stopping_by_parent",
        "task",
        "waiting_for",
        "waiting_to_send",
        "watchers",
        "watching",
    )

    def __init__(
        self,
        host: Host,
        parent: Cell | None,
        spec: ChildSpec | Supervisor,
        path: str,
        behaviour: Behaviour,
    ) -> None:
        self.host = host
        self.parent = parent
        self.spec = spec
        self.name = spec.name
        self.path = path
        self.behaviour = behaviour
        self.ref = ActorRef(self)
        self.mailbox = self._new_mailbox()
        self.state = "starting"
        self.incarnation = 0
        self.restarts = 0
        self.processed = 0
        self.failed = 0
        self.dead_lettered = 0
        self.last_error: ErrorInfo | None = None
        self.started_at: float | None = None
        self.finalized = False
        # A transient child that exited normally rests (`rest`): no incarnation, its
        # mailbox closed, until a group restart that covers it is planned (`end_rest`).
        self.resting = False
        self._announced = False  # `system.actor.stopped` is out for the last incarnation
        self.final_reason: ExitReason = "shutdown"  # why it stopped for good, or rests
        # watch bookkeeping is rare: made on first use
        self.watchers: dict[Cell, None] | None = None
        self.watching: dict[Cell, None] | None = None
        self.stopping_by_parent = False
        # The wait-for graph (runtime.waits owns these three): whom this slot's handler
        # waits on, whether only for room in its mailbox, and the incarnation's task.
        self.waiting_for: Cell | None = None
        self.waiting_to_send = False
        self.task: trio.lowlevel.Task | None = None
        self._stop_reason: str | None = None
        self._kill_scope: trio.CancelScope | None = None
        self._running = False
        self._exit: trio.Event | None = None  # made only when someone waits for the end

    def _new_mailbox(self, high_water: int = 0) -> MailboxQueue:
        return MailboxQueue(self.spec.mailbox_spec(), self.drop, self.host.gate, let_in, high_water)

    @property
    def kind(self) -> str:
        return self.behaviour.kind

    @property
    def cls_name(self) -> str:
        return self.spec.cls_name

    @property
    def running(self) -> bool:
        return self._running

    @property
    def absent(self) -> bool:
        """No incarnation, and none coming: stopped for good, or resting (`rest`)."""
        return self.finalized or self.resting

    @property
    def start_wait(self) -> Cell | None:
        """The slot whose start this one waits for (the wait-for graph, rule 5): the
        child a supervisor is busy starting; for a slot with no running incarnation,
        the sibling its supervisor is busy starting (it cannot start before that
        one has).  None otherwise, also for a slot that rests (`rest`): it waits for
        no start, its closed mailbox answers an ask at once."""
        starting: Cell | None = self.behaviour.starting
        if starting is not None:
            return starting
        if self._running or self.absent or self.parent is None:
            return None
        sibling: Cell | None = self.parent.behaviour.starting
        return sibling if sibling is not self else None

    @property
    def stop_reason(self) -> str | None:
        """Why the running incarnation was asked to stop (``normal``/``shutdown``), if it was."""
        return self._stop_reason

    def guard(self, scope: trio.CancelScope) -> None:
        """`scope` is what cancels the running incarnation: a stop arms its deadline with
        the child's shutdown timeout (at once if a stop was already requested), and a
        kill cancels it."""
        self._kill_scope = scope
        if self.host.killed:  # the stop was forced: nothing runs on
            scope.cancel()
        elif self._stop_reason is not None:
            self.arm_shutdown_timeout()

    def refuse_start(self) -> None:
        """A stop came before this incarnation began: it starts nothing."""
        self._stop_reason = "shutdown"

    def __repr__(self) -> str:
        return f"<Cell {self.path} {self.state}>"

    # -- dead letters ----------------------------------------------------
    @trio.lowlevel.enable_ki_protection  # a Ctrl-C mid-way would lose the letter
    def drop(
        self, item: Any, reason: str, cause: BaseException | None = None, *, restarted: bool = False
    ) -> None:
        """Account for a message this slot will never handle (and fail its asker).

        `restarted`: the incarnation handling it was stopped by a group restart.
        Never raises for an odd message: its class is read with `type` (a proxy's
        ``__class__``, e.g. a dead weakref.proxy, raises).
        """
        kind = type(item)
        if kind is Control:
            item.reply.fail(ActorStopped(f"{self.path} stopped before it could {item.op}"))
            return
        if issubclass(kind, Internal):
            try:  # the actor's own machinery: nothing to account for
                item.discarded(reason)
            except Exception:  # it must not stop the rest of the mailbox being accounted for
                log.exception("%s: discarded() of %r raised", self.path, item)
            return
        if (
            kind is ChildExited
            or kind is InjectedCrash
            or (kind is Terminated and reason == "stopped")
        ):
            return  # notices for a slot that is itself gone: nobody to tell
        is_ask = kind is Ask
        msg = item.msg if is_ask else item
        self.dead_lettered += 1
        self.host.dead_letter(msg, reason, self.path)
        if is_ask:
            item.reply.fail(self._ask_error(msg, reason, cause, restarted))

    def _ask_error(
        self, msg: Any, reason: str, cause: BaseException | None, restarted: bool
    ) -> BaseException:
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
        elif restarted:
            error = ActorStopped(
                f"{self.path} was restarted by its supervisor "
                f"({self._group_strategy()}) while handling {what}; the ref stays valid"
            )
        else:
            error = ActorStopped(f"{self.path} stopped before handling {what}")
        return error

    def _group_strategy(self) -> str:
        parent = self.parent
        spec = parent.spec if parent is not None else None
        return str(getattr(spec, "strategy", "restart"))

    def late_reply(self, value: Any) -> None:
        self.dead_lettered += 1
        self.host.dead_letter(value, "timeout", self.path)

    # -- control from outside -------------------------------------------
    def request_stop(self, reason: str) -> None:
        """Ask the running incarnation to stop after the message in hand."""
        if not self.running:
            return
        if self._stop_reason is None or reason == "shutdown":
            self._stop_reason = reason
        self.arm_shutdown_timeout()
        self.behaviour.on_stop_request(self, reason)
        self.mailbox.wake()

    def arm_shutdown_timeout(self) -> None:
        """From now, the running incarnation has at most its shutdown timeout left."""
        timeout = self.spec.shutdown
        scope = self._kill_scope
        if scope is not None and timeout is not None and math.isfinite(timeout):
            scope.deadline = min(scope.deadline, trio.current_time() + timeout)

    def kill(self) -> None:
        """Cancel the running incarnation at once (a second Ctrl-C; see `System.kill`)."""
        if self._kill_scope is not None:
            self._kill_scope.cancel()

    async def wait_done(self) -> None:
        """Wait until the current incarnation (if any) has ended."""
        if not self._running:
            await trio.lowlevel.checkpoint()
            return
        if self._exit is None:
            self._exit = trio.Event()
        await self._exit.wait()

    async def start(self, nursery: trio.Nursery) -> BaseException | None:
        """Start an incarnation in `nursery`; return None once started, or the start error.

        Blocks until the incarnation has started (its `on_start` returned) or
        failed to; cancelled meanwhile, the starting incarnation is cancelled
        with it (`nursery.start`).  The incarnation's task runs the behaviour
        directly (no frame of its own here: an idle actor's stack stays small)
        and is named by the path.  An actor that starts hibernating (see
        `ActorBehaviour.starts_hibernating`) gets no task until its first
        message: its start takes one schedule point, not cancelled.
        """
        return await self.behaviour.start(self, nursery)

    # -- hibernation (the actor behaviour's; see `ActorBehaviour`) --------------
    def wake_up(self) -> None:
        """The mailbox of a hibernating incarnation got something: resume it in a task
        (started, not run yet: never blocks)."""
        self.behaviour.resume_soon(self)

    def abandon(self) -> None:
        """The nursery this slot's incarnations run in is closing: a hibernating
        incarnation ends as a cancelled task does (no `on_stop`, no report).
        Never blocks."""
        self.behaviour.abandon(self)

    @property
    def hibernating(self) -> bool:
        """Whether the running incarnation has no task now (see ``hibernate_after``)."""
        return self.behaviour.hibernating

    # -- watching --------------------------------------------------------
    def watch(self, target: Cell) -> None:
        if target.absent:
            self.mailbox.put_system(Terminated(target.ref, target.final_reason))
            return
        if target.watchers is None:
            target.watchers = {}
        target.watchers[self] = None
        if self.watching is None:
            self.watching = {}
        self.watching[target] = None

    def remote_terminated(self, ref: ActorRef, reason: ExitReason) -> None:
        """An actor on another node that this slot watched stopped for good (or its
        node went down): one `Terminated`, unless this slot is gone itself."""
        if not self.finalized:
            self.mailbox.put_system(Terminated(ref, reason))

    def unwatch(self, target: Cell) -> None:
        if target.watchers is not None:
            target.watchers.pop(self, None)
        if self.watching is not None:
            self.watching.pop(target, None)

    # -- the end of the slot --------------------------------------------
    def finalize(self, reason: ExitReason, hand_over_to: Cell | None = None) -> None:
        """The slot stops for good: release the name, drain the mailbox, tell watchers.

        What was still queued (or waiting for room) is dead-lettered as
        ``stopped``; with `hand_over_to`, its user messages (asks with their
        askers) are put into that slot's mailbox instead, in order, past its
        capacity if need be (they were counted here: nothing is dropped).
        """
        if self.finalized:
            return
        self.behaviour.finalize(self)
        self.finalized = True
        self.resting = False
        self.final_reason = reason
        self.state = "stopped"
        self.host.slot_released(self)
        # once per incarnation: a rest announced its end already (also when a restart
        # was planned since, and did not begin)
        self._close(reason, hand_over_to, announce=not self._announced)

    def rest(self, reason: ExitReason) -> None:
        """The incarnation ended normally and the slot keeps its place, stopped, with
        no incarnation (a ``transient`` child: OTP keeps its spec with no pid).

        As for a slot stopped for good, what was queued is dead-lettered as
        ``stopped`` (asks fail with `ActorStopped`), watchers get `Terminated`,
        and its subscriptions and watches end; but the path stays taken.  Until
        an incarnation is coming (a group restart that covers it is planned, or
        its supervisor restarts: `end_rest` gives it a fresh mailbox), messages
        are dead-lettered as ``stopped`` and asks fail with `ActorStopped` at
        once.  Never blocks.
        """
        if self.absent or self._running:
            return
        self.resting = True
        self.final_reason = reason
        self.state = "stopped"
        self.host.slot_stopped(self)
        self._close(reason, None)
        self._announced = True

    def _close(
        self, reason: ExitReason, hand_over_to: Cell | None, *, announce: bool = True
    ) -> None:
        """Close the mailbox and account for what it held, end this slot's watches and
        tell its watchers (`finalize`, `rest`)."""
        system, user = self.mailbox.close(hand_over=hand_over_to is not None)
        for item in system:
            self.drop(item, "stopped")
        if hand_over_to is None:
            for item in user:
                self.drop(item, "stopped")
        else:  # taken whole, past its capacity if need be (a closed one dead-letters them)
            hand_over_to.mailbox.put_handed_over(list(user))
        watching, self.watching = self.watching or {}, None
        for target in watching:
            if target.watchers is not None:
                target.watchers.pop(self, None)
        watchers, self.watchers = self.watchers or {}, None
        for watcher in watchers:
            if watcher.watching is not None:
                watcher.watching.pop(self, None)
            watcher.mailbox.put_system(Terminated(self.ref, reason))
        if announce:
            self.lifecycle_event("stopped", reason=describe(reason))

    def lifecycle_event(self, what: str, **details: Any) -> None:
        """Publish ``system.actor.<what>`` for this slot (runtime listeners use ``system.>``)."""
        if self.host.is_running:
            self.host.system_event(
                f"system.actor.{what}", {"path": self.path, "kind": self.kind, **details}
            )

    # -- incarnation bookkeeping shared by the behaviours ------------------
    def end_rest(self) -> None:
        """An incarnation is coming for this slot (a group restart that covers it is
        planned, maybe behind a backoff; or `begin`): if it rests, it takes messages
        again from now, in a fresh mailbox, queued for that incarnation as for any
        child waiting for its restart.  What was sent while it rested was
        dead-lettered, and room threads held in the closed mailbox stays with it
        (their messages to it are dead-lettered as they arrive).  Never blocks.
        """
        if self.resting:
            # The mailbox first: a foreign thread that sees `ref.is_alive` true then
            # reads `mailbox`, and must find the fresh one.
            self.mailbox = self._new_mailbox(self.mailbox.high_water)
            self.resting = False

    def begin(self, in_task: bool = True) -> int:
        """A new incarnation begins (in the current task, unless not `in_task`); a slot
        that still rests gets a fresh mailbox (`end_rest`)."""
        self.end_rest()
        self._announced = False
        self.incarnation += 1
        self._running = True
        self._exit = None
        self._stop_reason = None
        self.stopping_by_parent = False
        if in_task:
            enter_incarnation(self)
        self.state = "starting"
        return self.incarnation

    def hibernated(self) -> None:
        """The running incarnation keeps going without a task: nothing to cancel."""
        self._kill_scope = None
        leave_incarnation(self)

    def resumed(self) -> None:
        """The running incarnation continues in the current task."""
        enter_incarnation(self)

    def end(self, reason: ExitReason) -> None:
        self._kill_scope = None
        leave_incarnation(self)
        if not self.finalized:
            self.state = "failed" if isinstance(reason, BaseException) else "stopped"
        self._running = False
        if self._exit is not None:
            self._exit.set()
        if self.host.shutting_down and self.parent is not None:
            # Nothing restarts during a shutdown: release the slot now, so that
            # senders blocked on its mailbox (a publisher, a thread) are let go
            # at once instead of waiting for the whole tree to stop.
            self.finalize(reason)

    def mark_started(
        self, incarnation: int, task_status: trio.TaskStatus[BaseException | None]
    ) -> None:
        self.state = "running"
        self.started_at = trio.current_time()
        self.lifecycle_event("started", incarnation=incarnation)
        task_status.started(None)

    def record_error(self, exc: BaseException, during: str) -> None:
        self.last_error = ErrorInfo.of(exc)
        # Once, with its traceback, however many supervisors the failure goes through
        log_crash(log, self.path, during, exc, describe_failure(self.path, exc))
        if during != "failed in on_stop":
            self.lifecycle_event("crashed", error=describe(exc), during=during)

    def report(self, incarnation: int, reason: ExitReason) -> None:
        """Tell the parent (or the host, for the root) that an incarnation ended by itself."""
        if self.parent is not None:
            self.parent.mailbox.put_system(ChildExited(self, incarnation, reason))
        else:
            self.host.root_exited(reason)


class ActorBehaviour:
    """An actor's incarnations: make the actor, `on_start`, the message loop, `on_stop`.

    Hibernation (``child(..., hibernate_after=)``): an incarnation idle for
    that long, with no task of its own in ``ctx.nursery``, ends its trio task
    and registers the slot with its mailbox instead (`MailboxQueue.hibernate`).
    The next item queued there starts a fresh task in the same nursery
    (`resume_soon`), which carries on with the same actor.  One task at most
    runs the incarnation's handlers at any time: the mailbox wakes a sleeper
    once, and the task that left runs none after registering it.
    """

    kind = "actor"
    starting = None  # an actor starts no children
    __slots__ = (
        "_context",
        "_counted_crash",
        "_deferred",
        "_home",
        "_interrupted",
        "_restarted",
        "actor",
        "current",
        "current_since",
        "reply",
        "spec",
    )

    def __init__(self, spec: ChildSpec) -> None:
        self.spec = spec
        self.actor: Actor | None = None
        self.current: Any = IDLE
        self.current_since = 0.0
        self.reply: ReplySlot | None = None
        self._deferred: dict[DeferredReply, None] | None = None
        self._interrupted: Any = IDLE  # the message in hand when receive was cancelled
        self._counted_crash: BaseException | None = None  # a crash already counted by the loop
        self._restarted = False  # stopped by a group restart (the asker is told so)
        # Where a hibernating incarnation resumes, and the contextvars its task gets a
        # copy of: those of the task it left, as if that task had gone on (for one that
        # starts hibernating, the supervisor's, as `nursery.start` would give).  Set
        # exactly while it hibernates (see `hibernating`).
        self._home: trio.Nursery | None = None
        self._context: contextvars.Context | None = None

    @property
    def hibernating(self) -> bool:
        """Whether the running incarnation has no task now, until woken."""
        return self._home is not None

    @property
    def busy(self) -> bool:
        return self.current is not IDLE

    def stats(self) -> Any:
        """What the actor's `snapshot_stats()` returns, unchecked (the monitor checks it)."""
        return self.actor.snapshot_stats() if self.actor is not None else {}

    def finalize(self, cell: Cell) -> None:
        pass

    # -- helpers for the context -------------------------------------------
    def defer_reply(self, cell: Cell) -> DeferredReply:
        if self.current is IDLE:
            raise RuntimeError("defer_reply() can only be called while handling a message")
        reply, self.reply = self.reply, None
        if reply is not None and reply.asker is not None:
            # The answer now depends on work elsewhere: not an edge of the graph.
            end_wait(reply.asker, cell)
        handle = DeferredReply(reply, self._deferred_done)
        if reply is not None:
            if self._deferred is None:
                self._deferred = {}
            self._deferred[handle] = None
        return handle

    async def forward(self, cell: Cell, target: Cell) -> None:
        """Pass the message in hand, with its reply slot, on to `target` (Akka's forward)."""
        if self.current is IDLE:
            raise RuntimeError("forward() can only be called while handling a message")
        what = type(self.current).__name__
        reply = self.reply
        # Only an asker still waiting: one that gave up (timeout, cancelled) waits on
        # nobody for this ask, maybe on this very actor again for another.
        asker = None if reply is None or reply.state != "pending" else reply.asker
        if asker is not None:
            # The asker now waits for the target's answer (rule 5): refused if that
            # closes a cycle, e.g. the target waits on the asker.
            hand_on(asker, cell, target, f"{asker.path} asking {what} (forwarded by {cell.path})")
        self.reply = None
        item = self.current if reply is None else Ask(self.current, reply)
        try:
            await send_into(target, item, f"forwarding {what}")
        except BaseException:
            self.reply = reply  # nothing was queued: the asker is still this actor's
            if asker is not None and reply is not None and reply.state == "pending":
                hand_back(asker, target, cell)
            raise

    def _deferred_done(self, handle: DeferredReply) -> None:
        if self._deferred is not None:
            self._deferred.pop(handle, None)

    def stopped_by_group_restart(self) -> None:
        """The supervisor stops this incarnation as a bystander of a group restart."""
        self._restarted = True

    def on_stop_request(self, cell: Cell, reason: str) -> None:
        """A hibernating actor whose class has no `on_stop` of its own ends at once:
        its task would only find the stop and end, so none is started for it."""
        actor = self.actor
        if not self.hibernating or actor is None:
            return
        if getattr(actor.on_stop, "__func__", None) is Actor.on_stop:  # not even per instance
            incarnation = cell.incarnation
            stop = cell.stop_reason or reason
            cell.state = "stopping"
            self._end_hibernating(cell, stop)
            if not cell.stopping_by_parent:
                cell.report(incarnation, stop)

    # -- one incarnation -------------------------------------------------
    def _make_actor(self, cell: Cell) -> Actor:
        spec = self.spec
        actor = resolve_factory(spec.factory)(*spec.args, **spec.kwargs)
        if not isinstance(actor, Actor):
            raise TypeError(
                f"{cell.cls_name} made {actor!r}, which is not an Actor; "
                "child() takes an Actor subclass or a callable returning an Actor"
            )
        check_handlers(type(actor))
        return actor

    def _adopt(self, cell: Cell, actor: Actor) -> None:
        """`actor` is the new incarnation's: subscribe it to its class's `subscriptions`."""
        self.actor = actor
        for pattern in type(actor).subscriptions:
            cell.host.subscribe_cell(cell, pattern)

    def _end(self, cell: Cell, reason: ExitReason) -> None:
        for handle in list(self._deferred or ()):
            if isinstance(reason, BaseException):
                error: BaseException = ActorCrashed(f"{cell.path} crashed before replying")
                error.__cause__ = reason
            else:
                error = ActorStopped(f"{cell.path} stopped before replying")
            handle.fail(error)
        self._deferred = None
        self.actor = None
        self.current = IDLE
        self.reply = None
        self._restarted = False
        cell.end(reason)

    def _drop_interrupted(
        self, cell: Cell, reason: str, cause: BaseException | None = None
    ) -> None:
        item, self._interrupted = self._interrupted, IDLE
        if item is not IDLE:
            cell.drop(item, reason, cause, restarted=self._restarted and reason == "stopped")

    async def run(
        self,
        cell: Cell,
        task_status: trio.TaskStatus[BaseException | None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """One incarnation, from the making of its actor.

        The incarnation's nursery (``ctx.nursery``) doubles as its kill scope:
        a stop arms its deadline with the child's shutdown timeout, so a
        message in hand or an `on_stop` that overruns is cancelled.
        """
        await self._incarnation(cell, cell.begin(), task_status, None)

    async def resume(self, cell: Cell) -> None:
        """The hibernating incarnation goes on in this task (started by `resume_soon`);
        returns when it ends, or hibernates again."""
        actor = self.actor
        assert actor is not None and cell.running
        cell.resumed()
        await self._incarnation(cell, cell.incarnation, trio.TASK_STATUS_IGNORED, actor)

    async def _incarnation(
        self,
        cell: Cell,
        incarnation: int,
        task_status: trio.TaskStatus[BaseException | None],
        actor: Actor | None,
    ) -> None:
        """Run incarnation `incarnation` in this task: from its start if `actor` is None,
        else resuming it after hibernation (its actor started already).  Returns when
        the incarnation ends, or hibernates again."""
        reason: ExitReason = "shutdown"
        started = actor is not None
        clean = False
        hibernated = False
        nursery: trio.Nursery | None = None
        start_error: BaseException | None = None
        interrupted = False
        try:
            try:
                if actor is None:
                    actor = self._make_actor(cell)
                async with trio.open_nursery() as nursery:
                    cell.guard(nursery.cancel_scope)
                    actor._troupe_ctx = Context(cell, self, nursery)
                    if not started:
                        self._adopt(cell, actor)
                        try:
                            await actor.on_start()
                        except Exception as exc:
                            raise HandlerFailed(exc) from None
                        started = True
                        cell.mark_started(incarnation, task_status)
                    ended = await self._loop(cell, actor, nursery)
                    if ended is HIBERNATED:
                        # The slot is registered with its mailbox: from here on a new
                        # task may run the incarnation; this one only leaves.
                        hibernated = True
                    else:
                        reason = ended
                        cell.state = "stopping"
                        await self._on_stop(cell, actor, reason)
                        clean = True
                        nursery.cancel_scope.cancel()  # background tasks end with it
            except BaseException as exc:
                crash, interrupt = classify(exc)
                if interrupt is not None:
                    # Ctrl-C, SystemExit, ...: not a failure to recover from.  The
                    # system stops gracefully and the entry point raises it.
                    cell.host.interrupted(interrupt)
                    interrupted = True
                    reason = "shutdown"
                    if started:
                        await self._stop_shielded(cell, actor, reason)
                elif crash is None:
                    raise
                else:
                    reason = crash
                    if not started:
                        start_error = crash
                        cell.record_error(crash, "failed to start")
                    else:
                        if self._counted_crash is None:  # not yet counted by the loop
                            cell.failed += 1
                            cell.record_error(crash, "crashed")
                        self._counted_crash = None
                        # e.g. a task in ctx.nursery failed while receive was awaiting
                        self._drop_interrupted(cell, "crashed", crash)
                        await self._stop_shielded(cell, actor, reason)
            if not clean and nursery is not None and nursery.cancel_scope.cancelled_caught:
                if not isinstance(reason, BaseException) and not interrupted:
                    reason = "killed"
                    log.warning("%s did not stop within its shutdown timeout: cancelled", cell.path)
        finally:
            if not hibernated:
                self._counted_crash = None
                self._drop_interrupted(cell, "stopped")
                self._end(cell, reason)
                if not started and start_error is not None:
                    task_status.started(start_error)  # the supervisor hears of it now
        if hibernated:
            return
        if not started:
            if start_error is None:
                task_status.started(ActorStopped(f"{cell.path} was stopped while starting"))
            return
        if not cell.stopping_by_parent:
            cell.report(incarnation, reason)

    # -- hibernation -----------------------------------------------------------
    async def start(self, cell: Cell, nursery: trio.Nursery) -> BaseException | None:
        """Start an incarnation in `nursery` (see `Cell.start`): in a task of its own,
        or with none if it starts hibernating (one schedule point, not cancelled)."""
        if self.starts_hibernating():
            error = self.start_hibernating(cell, nursery)
            await trio.lowlevel.cancel_shielded_checkpoint()  # a long start_in_order stays fair
            return error
        started: BaseException | None = await nursery.start(self.run, cell, name=cell.path)
        return started

    def starts_hibernating(self) -> bool:
        """Whether a new incarnation can start without a task: it may hibernate
        (``hibernate_after`` is set) and its actor class has no `on_start` of its own."""
        if self.spec.hibernate_after is None:
            return False
        try:
            factory = resolve_factory(self.spec.factory)
        except Exception:
            return False  # the task's start reports it
        return isinstance(factory, type) and getattr(factory, "on_start", None) is Actor.on_start

    def start_hibernating(self, cell: Cell, nursery: trio.Nursery) -> BaseException | None:
        """Start a new incarnation with no task (it resumes in `nursery` when mail
        comes); return None, or the start error (recorded, the incarnation ended).
        Never blocks."""
        incarnation = cell.begin(in_task=False)
        try:
            self._adopt(cell, self._make_actor(cell))  # its context: `_hibernate`'s
        except Exception as exc:
            cell.record_error(exc, "failed to start")
            self._end(cell, exc)
            return exc
        except BaseException as exc:
            # Ctrl-C, SystemExit, ... while the actor was made: as in a task (see
            # `_incarnation`), the system stops gracefully and this start did not happen.
            cell.host.interrupted(exc)
            self._end(cell, "shutdown")
            return ActorStopped(f"{cell.path} was stopped while starting")
        cell.mark_started(incarnation, trio.TASK_STATUS_IGNORED)
        # The supervisor task's own context, shared by its children that start without a
        # task (no copy each: `resume_soon` copies it, and a supervisor sets no contextvars).
        self._hibernate(cell, nursery, current_task().context)
        return None

    def _hibernate(self, cell: Cell, home: trio.Nursery, context: contextvars.Context) -> None:
        """The incarnation leaves its task: the mailbox wakes the slot (`resume_soon`),
        which starts a task in `home` with a copy of `context`."""
        self._home = home
        self._context = context
        cell.hibernated()
        actor = self.actor
        assert actor is not None
        actor._troupe_ctx = Context(cell, self, None)  # the old nursery closes with the task
        cell.mailbox.hibernate(cell)  # wakes it at once if something is queued

    def resume_soon(self, cell: Cell) -> None:
        """Start the task that resumes the hibernating incarnation (`resume`).  Never blocks."""
        home, context = self._home, self._context
        self._home = self._context = None
        assert home is not None and context is not None
        # Not in the waker's context: `start_soon` copies the current one.  (A partial,
        # not `run`'s own arguments: mypy cannot match those to `start_soon`'s.)
        start = functools.partial(home.start_soon, self.resume, cell, name=cell.path)
        context.copy().run(start)

    def abandon(self, cell: Cell) -> None:
        """The nursery the incarnation resumes in is closing: a hibernating
        incarnation ends as a cancelled task's does (no `on_stop`, no report)."""
        if self.hibernating:
            self._end_hibernating(cell, "shutdown")

    def _end_hibernating(self, cell: Cell, reason: ExitReason) -> None:
        """End the hibernating incarnation where it is, without a task."""
        self._home = self._context = None
        cell.mailbox.forget_sleeper()
        self._end(cell, reason)

    async def _idle(self, cell: Cell, nursery: trio.Nursery, idle_after: float) -> bool:
        """Wait for mail, at most `idle_after` seconds; return False once the
        incarnation hibernated (the task is to end), True to go on.

        The actor stays awake while a stop is requested, something is queued,
        or a task of its own runs in ``ctx.nursery`` (a timer, a background
        job): then it looks again after `idle_after`, or `AWAKE_RECHECK`
        seconds if that is longer (a short `idle_after` is no busy loop, and
        0 does not wait for mail only).
        """
        mailbox = cell.mailbox
        if idle_after > 0:
            with trio.move_on_after(idle_after) as idle:
                await wait_task_rescheduled(mailbox.parking())
            if not idle.cancelled_caught:
                return True
        if cell._stop_reason is not None or mailbox.depth:
            return True
        if nursery.child_tasks:
            if idle_after < AWAKE_RECHECK:
                with trio.move_on_after(AWAKE_RECHECK - idle_after):
                    await wait_task_rescheduled(mailbox.parking())
            return True
        await trio.lowlevel.checkpoint_if_cancelled()  # a cancelled incarnation ends instead
        # It resumes where this task runs: the supervisor's nursery (a task begun with
        # `nursery.start` has moved there by now).
        task = current_task()
        assert task.parent_nursery is not None
        self._hibernate(cell, task.parent_nursery, task.context)
        return False

    async def _stop_shielded(self, cell: Cell, actor: Actor | None, reason: ExitReason) -> None:
        """Run `on_stop` after a crash or an interrupt, within the shutdown timeout."""
        cell.state = "stopping"
        with trio.CancelScope(shield=True) as scope:
            cell.guard(scope)
            cell.arm_shutdown_timeout()
            await self._on_stop(cell, actor, reason)

    async def _on_stop(self, cell: Cell, actor: Actor | None, reason: ExitReason) -> None:
        assert actor is not None
        try:
            await actor.on_stop(reason)
        except Exception as exc:
            cell.record_error(exc, "failed in on_stop")
        except BaseException as exc:
            _, interrupt = classify(exc)
            if interrupt is None:
                raise  # cancelled: past the shutdown timeout
            # Ctrl-C in on_stop: this incarnation is stopping anyway; stop the rest too
            cell.host.interrupted(interrupt)

    async def _loop(self, cell: Cell, actor: Actor, nursery: trio.Nursery) -> Any:
        """Handle messages, system lane first, until a stop is requested (return its
        reason) or the incarnation hibernates (return `HIBERNATED`).

        The hot path: one wake-up drains a batch without a checkpoint per
        message; a forced checkpoint every `BATCH` messages keeps it fair.
        Per message it does only what an observer can tell apart: other tasks
        run only while a handler waits, or while this loop parks or
        checkpoints, so `current` goes back to `IDLE` and `reply` to None
        there and after an ask, not after every message.

        `current_since` costs no clock read per message: the time is read once
        per wake-up and again only after a handler that let other tasks run
        (the loop monitor's step count moved).  A handler that never yields
        takes microseconds, so the stamp stays true to well within that.
        """
        mailbox = cell.mailbox
        parking = mailbox.parking
        receive = actor.receive
        now = trio.lowlevel.current_clock().current_time
        monitor = cell.host.steps
        idle_after = self.spec.hibernate_after
        self.current_since = now()  # when the message in hand began, to within a batch
        while True:
            for _ in _BATCH_RANGE:
                if cell._stop_reason is not None:  # same module: no property call
                    self.current = IDLE
                    return cell._stop_reason
                # The mailbox's own ready/take: C-level calls while there is only user mail.
                if not mailbox.ready or (item := mailbox.take()) is EMPTY:
                    break
                kind = type(item)
                if kind is Ask:
                    msg = item.msg
                    self.reply = item.reply
                elif kind is InjectedCrash:
                    self.current = IDLE
                    raise item.error
                else:
                    msg = item
                self.current = msg
                steps = monitor.steps
                try:
                    result = await receive(msg)
                except BaseException as exc:
                    self._failed(cell, item, exc)
                    raise
                cell.processed += 1
                if monitor.steps != steps:
                    self.current_since = now()
                if kind is Ask:
                    reply, self.reply = self.reply, None  # None if deferred or forwarded
                    if result is UNHANDLED:
                        cell.drop(item, "unhandled")
                    elif reply is not None:
                        reply.send(result)
                elif result is UNHANDLED:
                    cell.drop(item, "unhandled")
            else:
                # `BATCH` messages without a wait: let the others run.
                self.current = IDLE
                await trio.lowlevel.checkpoint()
                self.current_since = now()
                continue
            # Nothing to do: park right here (not in a helper) to keep an idle
            # actor's stack small.
            self.current = IDLE
            if idle_after is None:
                await wait_task_rescheduled(parking())
            elif not await self._idle(cell, nursery, idle_after):
                return HIBERNATED
            self.current_since = now()

    # Protected from Ctrl-C (trio hands it to the main task instead): an interrupt in
    # the middle of the crash's accounting (formatting its traceback takes a while)
    # would lose the message in hand.
    @trio.lowlevel.enable_ki_protection
    def _failed(self, cell: Cell, item: Any, exc: BaseException) -> None:
        """Account for the message in hand when its handler raised `exc` (the caller
        re-raises it; a crash is re-raised here as `HandlerFailed`).  The message
        is no longer in hand: `on_stop` and snapshots see none, and no reply."""
        self.current = IDLE
        self.reply = None  # the asker is answered with the message (`drop`)
        crash, _ = classify(exc)
        if crash is None:
            # Cancelled or interrupted: a stop past its timeout, a crash elsewhere in
            # this incarnation, Ctrl-C; `run` accounts for the message.
            self._interrupted = item
            return
        # Count it before the asker wakes up, so that what the asker sees next (a
        # snapshot) already shows the crash.
        cell.failed += 1
        cell.state = "failed"  # this incarnation is over, whatever on_stop does
        cell.record_error(crash, "crashed")
        self._counted_crash = crash
        cell.drop(item, "crashed", crash)
        if isinstance(exc, Exception):
            raise HandlerFailed(exc) from None


__all__ = [
    "IDLE",
    "ActorBehaviour",
    "Behaviour",
    "Cell",
    "classify",
]

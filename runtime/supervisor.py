"""The supervising behaviour: start children in order, restart what exits, give up
when the restart intensity is exceeded (OTP's ``supervisor``).

Specs and their validation live in `runtime.spec`; this module never
re-checks them.  A supervisor is a slot (`Cell`) whose behaviour is
`Supervising`: its task reads only its system lane (`ChildExited` notices and
`Control` requests) and decides, one small function per strategy, which
children a restart covers.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import trio

from .cell import Cell, classify
from .errors import ActorStopped, RestartIntensityExceeded
from .logs import note_root_cause, root_cause
from .mailbox import EMPTY
from .messages import ChildExited, Control, ExitReason, describe
from .spec import ChildInfo, Supervisor


# -- restart decisions: one small function per restart type and strategy -------
def should_restart(restart: str, reason: object) -> bool:
    """OTP: permanent always, transient only after a crash, temporary never."""
    if restart == "permanent":
        return True
    if restart == "transient":
        return isinstance(reason, BaseException)
    return False


def keeps_place(restart: str, reason: object) -> bool:
    """OTP keeps the spec of a transient child that exited normally (with no pid): it
    stays in its place, stopped, and a group restart that covers it starts it again."""
    return restart == "transient" and not isinstance(reason, BaseException)


def exit_reason(child_cell: Cell, reason: ExitReason) -> ExitReason:
    """The reason a restart decision goes by: a child supervisor that gave up
    (`RestartIntensityExceeded`) exits as OTP's does, with ``shutdown``."""
    if (
        child_cell.kind == "supervisor"
        and isinstance(reason, RestartIntensityExceeded)
        and reason.path == child_cell.path
    ):
        return "shutdown"
    return reason


def _one_for_one(children: list[Cell], cell: Cell) -> list[Cell]:
    return [cell]


def _one_for_all(children: list[Cell], cell: Cell) -> list[Cell]:
    return list(children)


def _rest_for_one(children: list[Cell], cell: Cell) -> list[Cell]:
    return children[children.index(cell) :]


GROUPS: dict[str, Callable[[list[Cell], Cell], list[Cell]]] = {
    "one_for_one": _one_for_one,
    "one_for_all": _one_for_all,
    "rest_for_one": _rest_for_one,
}
"""Which children a restart of `cell` covers, by strategy."""


log = logging.getLogger("troupe")


class Supervising:
    """The behaviour of a supervisor's slot: its children and their restarts."""

    kind = "supervisor"
    __slots__ = (
        "_handled",
        "_nursery",
        "_pending",
        "_restart_times",
        "_starting",
        "children",
        "dynamic",
        "root",
        "sup",
    )

    def __init__(self, spec: Supervisor, *, root: bool = False) -> None:
        self.sup = spec
        self.root = root
        self.children: list[Cell] = []
        self.dynamic: set[Cell] = set()
        self._restart_times: deque[float] = deque()
        self._pending: list[tuple[float, list[Cell]]] = []
        # The last incarnation of each child that a restart has dealt with: an exit
        # that incarnation reports later (a sibling that crashed as a group restart
        # stopped it) is absorbed into that restart, as in OTP.
        self._handled: dict[Cell, int] = {}
        self._nursery: trio.Nursery | None = None
        self._starting: Cell | None = None  # the child whose start this supervisor awaits

    hibernating = False  # a supervisor keeps its task while it runs

    @property
    def starting(self) -> Cell | None:
        """The child whose start this supervisor's task waits for now, if any (its
        own start, a restart, a `start_child`): an edge of the wait-for graph."""
        return self._starting

    def stats(self) -> dict[str, Any]:
        return {}

    async def start(self, cell: Cell, nursery: trio.Nursery) -> BaseException | None:
        """Start an incarnation in a task of its own in `nursery` (see `Cell.start`)."""
        started: BaseException | None = await nursery.start(self.run, cell, name=cell.path)
        return started

    def resume_soon(self, cell: Cell) -> None:
        raise RuntimeError(f"{cell.path} is a supervisor: it never hibernates")

    def abandon(self, cell: Cell) -> None:
        pass  # it never hibernates: its task ends with the nursery

    def stopped_by_group_restart(self) -> None:
        pass

    def on_stop_request(self, cell: Cell, reason: str) -> None:
        """The supervisor's task may be waiting for a child's start (its own start, a
        restart, a `start_child`): pass the stop on, so that an `on_start` that hangs is
        cancelled after its shutdown timeout and the stop goes on."""
        if self._starting is not None:
            self._starting.request_stop(reason)

    async def _start(self, child_cell: Cell) -> BaseException | None:
        """Start `child_cell` (see `Cell.start`); a stop requested of this supervisor
        meanwhile is passed on to it (`on_stop_request`)."""
        assert self._nursery is not None
        self._starting = child_cell
        try:
            return await child_cell.start(self._nursery)
        finally:
            self._starting = None

    def which_children(self) -> list[ChildInfo]:
        return [
            ChildInfo(
                name=cell.name,
                path=cell.path,
                ref=cell.ref,
                kind=cell.kind,
                state=cell.state,
                restart=cell.spec.restart,
                dynamic=cell in self.dynamic,
            )
            for cell in self.children
        ]

    def child_named(self, name: str) -> Cell | None:
        return next((c for c in self.children if c.name == name), None)

    def finalize(self, cell: Cell) -> None:
        for child_cell in reversed(self.children):
            child_cell.finalize("shutdown")
        self.children = []
        self.dynamic.clear()
        self._handled.clear()

    # -- the supervisor's own incarnation --------------------------------
    # Protected from Ctrl-C (trio hands it to the main task, whose graceful stop runs
    # every on_stop): raised here, it would tear down this supervisor's nursery and
    # cancel its children without one.  Its children's tasks are not protected.
    @trio.lowlevel.enable_ki_protection
    async def run(
        self,
        cell: Cell,
        task_status: trio.TaskStatus[BaseException | None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        incarnation = cell.begin()
        if self.root and cell.host.shutting_down:
            cell.refuse_start()
        # The restart history belongs to the incarnation (as in OTP): a supervisor
        # restarted by its parent tolerates max_restarts again.
        self._restart_times.clear()
        self._handled.clear()
        reason: Any = "shutdown"
        started = False
        start_error: BaseException | None = None
        try:
            with trio.CancelScope() as scope:
                cell.guard(scope)
                try:
                    async with trio.open_nursery() as nursery:
                        self._nursery = nursery
                        try:
                            self._prepare_children(cell)
                            if cell.stop_reason is not None:
                                start_error = ActorStopped(
                                    f"{cell.path} was stopped while starting"
                                )
                            else:
                                start_error = await self._start_in_order(self.children)
                            if start_error is None:
                                started = True
                                cell.mark_started(incarnation, task_status)
                                reason = await self._supervise(cell)
                        finally:
                            # Children hibernating without a task would outlive the
                            # nursery: they end here, as the cancelled tasks do.
                            for child_cell in self.children:
                                child_cell.abandon()
                except BaseException as exc:
                    crash, interrupt = classify(exc)
                    if interrupt is not None:
                        cell.host.interrupted(interrupt)
                        reason = "shutdown"
                    elif crash is None:
                        raise
                    else:
                        reason = crash
                        if started:
                            cell.failed += 1
                            cell.record_error(crash, "failed")
                        else:
                            start_error = crash
            if scope.cancelled_caught and not isinstance(reason, BaseException):
                reason = "killed"
        finally:
            self._nursery = None
            self._pending.clear()
            # Dynamic children end with this incarnation (they are not re-created):
            # release them now, not when (or if) this supervisor is restarted.
            for child_cell in reversed(self.children):
                if child_cell in self.dynamic:
                    self._remove(child_cell, "shutdown")
            if start_error is not None:
                reason = start_error
                if isinstance(start_error, ActorStopped) and cell.host.shutting_down:
                    log.info("%s: start abandoned, the system is stopping", cell.path)
                else:
                    cell.record_error(start_error, "failed to start")
            cell.end(reason)
        # Whoever started us hears of the outcome only once this incarnation is
        # over, so that a restart it tries next never finds us still running.
        if not started:
            task_status.started(
                start_error or ActorStopped(f"{cell.path} was stopped while starting")
            )
            return
        if not cell.stopping_by_parent:
            cell.report(incarnation, reason)

    def _prepare_children(self, cell: Cell) -> None:
        """Reuse the slots of static children; dynamic ones die with the old incarnation."""
        old = {child_cell.name: child_cell for child_cell in self.children}
        fresh: list[Cell] = []
        for spec in self.sup.children:
            child_cell = old.pop(spec.name, None)
            if child_cell is None or child_cell.finalized:
                child_cell = cell.host.new_cell(spec, cell)
            fresh.append(child_cell)
        for child_cell in reversed(list(old.values())):
            child_cell.finalize("shutdown")
        self.dynamic.clear()
        self.children = fresh

    async def _start_in_order(self, cells: Sequence[Cell]) -> BaseException | None:
        """Start `cells` in order; on a failure stop the ones just started and return it."""
        assert self._nursery is not None
        started: list[Cell] = []
        for child_cell in cells:
            error = await self._start(child_cell)
            if error is not None:
                for done in reversed(started):
                    await self._stop_child(done)
                return error
            started.append(child_cell)
        return None

    async def _stop_child(self, child_cell: Cell, *, bystander: bool = False) -> None:
        if child_cell.running:
            child_cell.stopping_by_parent = True
            if bystander:
                child_cell.behaviour.stopped_by_group_restart()
            child_cell.request_stop("shutdown")
            await child_cell.wait_done()

    async def _stop_all(self) -> None:
        self._pending.clear()
        for child_cell in reversed(self.children):
            await self._stop_child(child_cell)

    async def _supervise(self, cell: Cell) -> str:
        mb = cell.mailbox
        while True:
            if cell.stop_reason is not None:
                await self._stop_all()
                return cell.stop_reason
            item = mb.get()
            if item is not EMPTY:
                kind = type(item)  # (a message told to a supervisor may be any odd value)
                if kind is ChildExited:
                    await self._child_exited(cell, item)
                elif kind is Control:
                    await self._control(cell, item)
                else:
                    cell.drop(item, "unhandled")
                continue
            if self._pending:
                due, group = min(self._pending, key=lambda entry: entry[0])
                if due <= trio.current_time():
                    self._pending.remove((due, group))
                    await self._restart_group(cell, group)
                    continue
                with trio.move_on_at(due):
                    await mb.wait()
                continue
            await mb.wait()

    async def _child_exited(self, cell: Cell, note: ChildExited) -> None:
        child_cell: Cell = note.cell
        if (
            child_cell.parent is not cell
            or child_cell.finalized
            or note.incarnation != child_cell.incarnation
            or note.incarnation <= self._handled.get(child_cell, 0)
        ):
            return  # stale: that incarnation was already dealt with
        if child_cell not in self.children:
            return
        reason = note.reason
        if self.root:
            cell.host.root_failing()
            await self._stop_all()
            raise _escalated(reason)
        restart = child_cell.spec.restart
        if should_restart(restart, exit_reason(child_cell, reason)):
            await self._restart(cell, child_cell, reason)
        elif keeps_place(restart, reason) and child_cell not in self.dynamic:
            child_cell.rest(reason)  # stopped, in its place, until a group restart covers it
        else:
            self._remove(child_cell, reason)

    async def _restart(self, cell: Cell, child_cell: Cell, reason: object) -> None:
        """Plan the restart that `child_cell`'s exit calls for (or give up).

        An exit that arrives before a pending restart of an overlapping group has
        run is part of the same incident: it is merged into that restart, at no
        new charge, and the merged group starts once, in the order of `children`.
        """
        group = GROUPS[self.sup.strategy](self.children, child_cell)
        members = set(group)
        merged: list[tuple[float, list[Cell]]] = []
        for entry in list(self._pending):
            if not members.isdisjoint(entry[1]):
                self._pending.remove(entry)
                merged.append(entry)
        if merged:
            due = max(entry[0] for entry in merged)
        else:
            due = trio.current_time() + await self._charge(cell, child_cell, reason)
        for other in reversed(group):
            # This restart deals with the member's incarnation, however it ends: an
            # exit it reports by itself (already queued, or sent while it is being
            # stopped) is part of this incident, not a restart of its own.
            self._handled[other] = other.incarnation
            if other is not child_cell:
                await self._stop_child(other, bystander=True)
        for other in group:
            if other is not child_cell and other.spec.restart == "temporary":
                self._remove(other, "shutdown")
                members.discard(other)
            else:
                other.end_rest()  # a resting one: its messages queue for the restart
                other.state = "restarting"
        for _, pending in merged:
            members.update(pending)
        self._pending.append((due, [c for c in self.children if c in members]))

    async def _charge(self, cell: Cell, child_cell: Cell, reason: object) -> float:
        """Count one restart; give up past the intensity, else return its backoff delay."""
        now = trio.current_time()
        times = self._restart_times
        times.append(now)
        # OTP keeps the restarts with R >= Now - Period: one exactly `within` old counts.
        while now - times[0] > self.sup.within:
            times.popleft()
        if len(times) > self.sup.max_restarts:
            await self._stop_all()
            for other in self.children:
                if not other.finalized:
                    other.state = "stopped"
            last = f"{child_cell.path}: {describe(reason)}"
            if isinstance(reason, BaseException):
                # name the root cause: never an exception group, and for a child
                # supervisor that gave up, the failure that made it give up
                where, cause = root_cause(child_cell.path, reason)
                if where == child_cell.path:
                    last = f"{where}: {describe(cause)}"
                else:
                    last = f"{child_cell.path} gave up; root cause {where}: {describe(cause)}"
            error = RestartIntensityExceeded(
                cell.path, self.sup.max_restarts, self.sup.within, last
            )
            if isinstance(reason, BaseException):
                error.__cause__ = reason
                note_root_cause(error, where, cause)
            cell.host.supervisor_escalated(cell.path, error)
            raise error
        if self.sup.backoff is None:
            return 0.0
        return self.sup.backoff.delay(len(times), cell.host.rng)

    async def _restart_group(self, cell: Cell, group: list[Cell]) -> None:
        assert self._nursery is not None
        for child_cell in group:
            if child_cell.finalized or child_cell not in self.children or child_cell.running:
                continue
            child_cell.restarts += 1
            error = await self._start(child_cell)
            if error is not None:
                # A failed restart counts toward the intensity like any crash.
                for rest in group[group.index(child_cell) + 1 :]:
                    if not rest.running:
                        rest.state = "stopped"
                await self._restart(cell, child_cell, error)
                return
            child_cell.lifecycle_event("restarted", restarts=child_cell.restarts)

    def _remove(self, child_cell: Cell, reason: object, hand_over_to: Cell | None = None) -> None:
        if child_cell in self.children:
            self.children.remove(child_cell)
        self.dynamic.discard(child_cell)
        self._handled.pop(child_cell, None)
        for _, group in self._pending:
            if child_cell in group:
                group.remove(child_cell)
        child_cell.finalize(reason, hand_over_to)  # type: ignore[arg-type]

    # -- requests: dynamic children ----------------------------------------
    async def _control(self, cell: Cell, item: Control) -> None:
        try:
            if item.op == "start_child":
                if self.child_named(item.arg.name) is not None:
                    raise ValueError(f"{cell.path} already has a child named {item.arg.name!r}")
                item.reply.send(await self._adopt(cell.host.new_cell(item.arg, cell)))
            elif item.op == "adopt":  # a slot made ahead of time (bus callbacks)
                item.reply.send(await self._adopt(item.arg))
            elif item.op == "terminate_child":  # arg: (child, slot to hand its mail to)
                target, hand_over_to = item.arg
                if target in self.children:
                    await self._stop_child(target)
                    self._remove(target, "shutdown", hand_over_to)
                item.reply.send(None)
            else:  # pragma: no cover - internal misuse
                raise ValueError(f"unknown supervisor request {item.op!r}")
        except Exception as exc:
            item.reply.fail(exc)

    async def _adopt(self, child_cell: Cell) -> Any:
        """Start a dynamic child in an existing slot and keep it."""
        assert self._nursery is not None
        if child_cell.finalized:
            raise ValueError(f"{child_cell.path} was stopped before it could start")
        error = await self._start(child_cell)
        if error is not None:
            child_cell.finalize(error)
            raise error
        self.children.append(child_cell)
        self.dynamic.add(child_cell)
        return child_cell.ref


def _escalated(reason: ExitReason) -> BaseException:
    if isinstance(reason, BaseException):
        return reason
    return RuntimeError(f"the actor tree exited unexpectedly ({describe(reason)})")


__all__ = ["GROUPS", "Supervising", "exit_reason", "keeps_place", "should_restart"]

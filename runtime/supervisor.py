"""OTP-style supervision: child specs, restart strategies, intensity and backoff."""

from __future__ import annotations

import math
import random
import re
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import attrs
import trio

from .actor import Actor
from .cell import Cell, ChildExited, Control, crash_of, describe
from .errors import RestartIntensityExceeded
from .mailbox import Mailbox

if TYPE_CHECKING:
    from .ref import ActorRef
    from .system import System

Strategy = Literal["one_for_one", "one_for_all", "rest_for_one"]
Restart = Literal["permanent", "transient", "temporary"]
STRATEGIES: tuple[str, ...] = ("one_for_one", "one_for_all", "rest_for_one")
RESTARTS: tuple[str, ...] = ("permanent", "transient", "temporary")

_NAME = re.compile(r"^[A-Za-z0-9_.\-:@+]+$")


def check_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME.match(name) or name in (".", ".."):
        raise ValueError(
            f"invalid actor name {name!r}: use a non-empty string of letters, digits "
            "and _ . - : @ + (no '/' or spaces)"
        )
    return name


def _check_name(_i: object, _a: object, value: Any) -> None:
    check_name(value)


def _one_of(choices: tuple[str, ...], what: str) -> Any:
    def check(_i: object, _a: object, value: object) -> None:
        if value not in choices:
            raise ValueError(f"unknown {what} {value!r}; use one of {', '.join(choices)}")

    return check


def _check_shutdown(_i: object, _a: object, value: float | None) -> None:
    if value is not None and not (isinstance(value, int | float) and value >= 0):
        raise ValueError(f"shutdown must be seconds >= 0 or None (wait forever), got {value!r}")


@attrs.frozen
class ChildSpec:
    """How a supervisor makes, restarts and stops one worker. Build it with `child()`."""

    factory: Callable[..., Actor]
    name: str = attrs.field(validator=_check_name)
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = attrs.field(factory=dict)
    restart: Restart = attrs.field(default="permanent", validator=_one_of(RESTARTS, "restart type"))
    shutdown: float | None = attrs.field(default=5.0, validator=_check_shutdown)
    mailbox: Mailbox | None = None
    kind = "actor"


def _default_name(factory: Callable[..., Any]) -> str:
    raw = getattr(factory, "__name__", "actor")
    return re.sub(r"(?<!^)(?=[A-Z])", "-", raw).lower()


def child(
    factory: Callable[..., Actor],
    *,
    name: str | None = None,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    restart: Restart = "permanent",
    shutdown: float | None = 5.0,
    mailbox: Mailbox | None = None,
) -> ChildSpec:
    """A worker child: `factory(*args, **kwargs)` makes a fresh actor at every (re)start.

    `restart`: ``permanent`` (always), ``transient`` (only after a crash),
    ``temporary`` (never).  `shutdown`: seconds `on_stop` may take before the
    incarnation is cancelled (None waits forever).
    """
    if not callable(factory):
        raise TypeError(f"child() needs an Actor subclass or factory, got {factory!r}")
    return ChildSpec(
        factory=factory,
        name=name if name is not None else _default_name(factory),
        args=tuple(args),
        kwargs=dict(kwargs or {}),
        restart=restart,
        shutdown=shutdown,
        mailbox=mailbox,
    )


@attrs.frozen
class Backoff:
    """Exponential delay before each restart: ``min * 2**(n-1)`` capped at ``max``,
    plus up to ``jitter`` of itself at random (n = restarts in the intensity window)."""

    min: float = 0.1
    max: float = 10.0
    jitter: float = 0.2

    def __attrs_post_init__(self) -> None:
        if not (0 <= self.min <= self.max) or not (0 <= self.jitter <= 1):
            raise ValueError("Backoff needs 0 <= min <= max and 0 <= jitter <= 1")

    def delay(self, attempt: int, rng: random.Random) -> float:
        base = min(self.max, self.min * 2.0 ** max(0, attempt - 1))
        return float(base * (1 + self.jitter * rng.random()))


def _children(value: Iterable[ChildSpec | Supervisor]) -> tuple[ChildSpec | Supervisor, ...]:
    specs = tuple(value)
    seen: set[str] = set()
    for spec in specs:
        if not isinstance(spec, ChildSpec | Supervisor):
            raise TypeError(
                f"supervisor children must be child(...) specs or Supervisors, got {spec!r}"
            )
        if spec.name in seen:
            raise ValueError(
                f"two children are named {spec.name!r}; names are unique per supervisor"
            )
        seen.add(spec.name)
    return specs


def _check_intensity(_i: object, _a: object, value: int) -> None:
    if not isinstance(value, int) or value < 0:
        raise ValueError(f"max_restarts must be an int >= 0, got {value!r}")


def _check_within(_i: object, _a: object, value: float) -> None:
    if not (isinstance(value, int | float) and value > 0 and math.isfinite(value)):
        raise ValueError(f"within must be a positive number of seconds, got {value!r}")


@attrs.frozen
class Supervisor:
    """A supervisor spec: usable as a tree's root or as a child of another supervisor."""

    name: str = attrs.field(validator=_check_name)
    strategy: Strategy = attrs.field(
        default="one_for_one", kw_only=True, validator=_one_of(STRATEGIES, "strategy")
    )
    max_restarts: int = attrs.field(default=3, kw_only=True, validator=_check_intensity)
    within: float = attrs.field(default=5.0, kw_only=True, validator=_check_within)
    children: tuple[ChildSpec | Supervisor, ...] = attrs.field(
        default=(), kw_only=True, converter=_children
    )
    backoff: Backoff | None = attrs.field(default=None, kw_only=True)
    restart: Restart = attrs.field(
        default="permanent", kw_only=True, validator=_one_of(RESTARTS, "restart type")
    )
    shutdown: float | None = attrs.field(default=None, kw_only=True, validator=_check_shutdown)
    front: str | None = attrs.field(default=None, kw_only=True)
    """The child that messages to this supervisor's path go to (e.g. a pool's router):
    `system.ref(path)` of this supervisor returns that child's ref."""
    kind: ClassVar[str] = "supervisor"

    def __attrs_post_init__(self) -> None:
        if self.front is not None and self.front not in {c.name for c in self.children}:
            raise ValueError(f"front={self.front!r} is not one of {self.name!r}'s children")

    mailbox: ClassVar[Mailbox] = Mailbox(capacity=1000, overflow="fail")
    """Supervisors handle no user messages; a few are kept for dead letters."""


SupervisorSpec = Supervisor


@attrs.frozen
class ChildInfo:
    """One row of `system.which_children(path)` (OTP's which_children)."""

    name: str
    path: str
    ref: ActorRef
    kind: str
    state: str
    restart: str
    dynamic: bool


def should_restart(restart: str, reason: object) -> bool:
    if restart == "permanent":
        return True
    if restart == "transient":
        return isinstance(reason, BaseException)
    return False


class SupervisorCell(Cell):
    """A supervisor's slot.  Its task starts, watches and restarts its children."""

    kind = "supervisor"
    __slots__ = ("_nursery", "_pending", "_restart_times", "children", "dynamic", "root", "sup")

    def __init__(
        self,
        system: System,
        parent: SupervisorCell | None,
        spec: Supervisor,
        path: str,
        *,
        root: bool = False,
    ) -> None:
        super().__init__(system, parent, spec, path)
        self.sup: Supervisor = spec
        self.root = root
        self.children: list[Cell] = []
        self.dynamic: set[Cell] = set()
        self._restart_times: deque[float] = deque()
        self._pending: list[tuple[float, list[Cell]]] = []
        self._nursery: trio.Nursery | None = None

    @property
    def cls_name(self) -> str:
        return "Supervisor"

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

    def finalize(self, reason: object) -> None:
        for cell in reversed(self.children):
            cell.finalize("shutdown")
        self.children = []
        self.dynamic.clear()
        super().finalize(reason)  # type: ignore[arg-type]

    # -- the supervisor's own incarnation --------------------------------
    async def run(
        self, *, task_status: trio.TaskStatus[BaseException | None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        incarnation = self._begin()
        # The restart history belongs to the incarnation (as in OTP): a supervisor
        # restarted by its parent tolerates max_restarts again.
        self._restart_times.clear()
        reason: Any = "shutdown"
        started = False
        start_error: BaseException | None = None
        try:
            with trio.CancelScope() as scope:
                self._kill_scope = scope
                try:
                    async with trio.open_nursery() as nursery:
                        self._nursery = nursery
                        self._prepare_children()
                        start_error = await self._start_in_order(self.children)
                        if start_error is None:
                            started = True
                            self._mark_started(incarnation, task_status)
                            reason = await self._supervise()
                except BaseException as exc:
                    crash = crash_of(exc)
                    if crash is None:
                        raise
                    reason = crash
                    if started:
                        self.failed += 1
                        self._record_error(crash, "failed")
                    else:
                        start_error = crash
            if scope.cancelled_caught and not isinstance(reason, BaseException):
                reason = "killed"
        finally:
            self._nursery = None
            self._pending.clear()
            # Dynamic children end with this incarnation (they are not re-created):
            # release them now, not when (or if) this supervisor is restarted.
            for cell in reversed(self.children):
                if cell in self.dynamic:
                    self._remove(cell, "shutdown")
            if start_error is not None:
                reason = start_error
                self._record_error(start_error, "failed to start")
            self._end(reason)
        # Whoever started us hears of the outcome only once this incarnation is
        # over, so that a restart it tries next never finds us still running.
        if not started:
            task_status.started(
                start_error or RuntimeError(f"{self.path} was stopped while starting")
            )
            return
        if not self.stopping_by_parent:
            self._report(incarnation, reason)

    def _prepare_children(self) -> None:
        """Reuse the slots of static children; dynamic ones die with the old incarnation."""
        old = {cell.name: cell for cell in self.children}
        fresh: list[Cell] = []
        for spec in self.sup.children:
            cell = old.pop(spec.name, None)
            if cell is None or cell.finalized:
                cell = self.system._new_cell(spec, self)
            fresh.append(cell)
        for cell in reversed(list(old.values())):
            cell.finalize("shutdown")
        self.dynamic.clear()
        self.children = fresh

    async def _start_in_order(self, cells: Sequence[Cell]) -> BaseException | None:
        """Start `cells` in order; on a failure stop the ones just started and return it."""
        assert self._nursery is not None
        started: list[Cell] = []
        for cell in cells:
            error: BaseException | None = await self._nursery.start(cell.run, name=cell.path)
            if error is not None:
                for done in reversed(started):
                    await self._stop_child(done)
                return error
            started.append(cell)
        return None

    async def _stop_child(self, cell: Cell) -> None:
        if cell.running:
            cell.stopping_by_parent = True
            cell.request_stop("shutdown")
            await cell.wait_done()

    async def _stop_all(self) -> None:
        self._pending.clear()
        for cell in reversed(self.children):
            await self._stop_child(cell)

    async def _supervise(self) -> str:
        mb = self.mailbox
        while True:
            if self._stop_reason is not None:
                await self._stop_all()
                return self._stop_reason
            if mb.system:
                item = mb.system.popleft()
                if isinstance(item, ChildExited):
                    await self._child_exited(item)
                else:
                    await self._control(item)
                continue
            if mb.user:
                self.drop(mb.take(), "unhandled")
                continue
            if self._pending:
                due, group = min(self._pending, key=lambda entry: entry[0])
                if due <= trio.current_time():
                    self._pending.remove((due, group))
                    await self._restart_group(group)
                    continue
                with trio.move_on_at(due):
                    await mb.wait()
                continue
            await mb.wait()

    async def _child_exited(self, note: ChildExited) -> None:
        cell = note.cell
        if cell.parent is not self or cell.finalized or note.incarnation != cell.incarnation:
            return  # stale: that incarnation was already dealt with
        if cell not in self.children:
            return
        reason = note.reason
        if self.root:
            self.system.shutting_down = True
            await self._stop_all()
            raise _escalated(reason)
        if not should_restart(cell.spec.restart, reason):
            self._remove(cell, reason)
            return
        await self._restart(cell, reason)

    async def _restart(self, cell: Cell, reason: object) -> None:
        now = trio.current_time()
        times = self._restart_times
        times.append(now)
        while times and times[0] <= now - self.sup.within:
            times.popleft()
        if len(times) > self.sup.max_restarts:
            await self._stop_all()
            for child_cell in self.children:
                if not child_cell.finalized:
                    child_cell.state = "stopped"
            last = f"{cell.path}: {describe(reason)}"  # type: ignore[arg-type]
            error = RestartIntensityExceeded(
                self.path, self.sup.max_restarts, self.sup.within, last
            )
            if isinstance(reason, BaseException):
                error.__cause__ = reason
            if self.system.is_running:
                self.system.bus.system_event(
                    "system.supervisor.escalated", {"path": self.path, "error": str(error)}
                )
            raise error
        group = self._group(cell)
        for other in reversed(group):
            if other is not cell:
                await self._stop_child(other)
        survivors: list[Cell] = []
        for other in group:
            if other is not cell and other.spec.restart == "temporary":
                self._remove(other, "shutdown")
            else:
                other.state = "restarting"
                survivors.append(other)
        delay = 0.0
        if self.sup.backoff is not None:
            delay = self.sup.backoff.delay(len(times), self.system._rng)
        self._pending.append((now + delay, survivors))

    def _group(self, cell: Cell) -> list[Cell]:
        strategy = self.sup.strategy
        if strategy == "one_for_all":
            return list(self.children)
        if strategy == "rest_for_one":
            return self.children[self.children.index(cell) :]
        return [cell]

    async def _restart_group(self, group: list[Cell]) -> None:
        assert self._nursery is not None
        for cell in group:
            if cell.finalized or cell not in self.children or cell.running:
                continue
            cell.restarts += 1
            error = await self._nursery.start(cell.run, name=cell.path)
            if error is not None:
                # A failed restart counts toward the intensity like any crash.
                for rest in group[group.index(cell) + 1 :]:
                    if not rest.running:
                        rest.state = "stopped"
                await self._restart(cell, error)
                return
            cell.lifecycle_event("restarted", restarts=cell.restarts)

    def _remove(self, cell: Cell, reason: object) -> None:
        if cell in self.children:
            self.children.remove(cell)
        self.dynamic.discard(cell)
        for _, group in self._pending:
            if cell in group:
                group.remove(cell)
        cell.finalize(reason)  # type: ignore[arg-type]

    # -- requests from the system: dynamic children ----------------------
    async def _control(self, item: Control) -> None:
        try:
            if item.op == "start_child":
                if any(cell.name == item.arg.name for cell in self.children):
                    raise ValueError(f"{self.path} already has a child named {item.arg.name!r}")
                item.reply.send(await self._adopt(self.system._new_cell(item.arg, self)))
            elif item.op == "adopt":  # a slot made ahead of time (bus callbacks)
                item.reply.send(await self._adopt(item.arg))
            elif item.op == "terminate_child":
                cell = item.arg
                if cell in self.children:
                    await self._stop_child(cell)
                    self._remove(cell, "shutdown")
                item.reply.send(None)
            else:  # pragma: no cover - internal misuse
                raise ValueError(f"unknown supervisor request {item.op!r}")
        except Exception as exc:
            item.reply.fail(exc)

    async def _adopt(self, cell: Cell) -> Any:
        """Start a dynamic child in an existing slot and keep it."""
        assert self._nursery is not None
        if cell.finalized:
            raise ValueError(f"{cell.path} was stopped before it could start")
        error = await self._nursery.start(cell.run, name=cell.path)
        if error is not None:
            cell.finalize(error)
            raise error
        self.children.append(cell)
        self.dynamic.add(cell)
        return cell.ref


def _escalated(reason: object) -> BaseException:
    if isinstance(reason, BaseException):
        return reason
    return RuntimeError(f"the actor tree exited unexpectedly ({describe(reason)})")  # type: ignore[arg-type]


__all__ = [
    "Backoff",
    "ChildInfo",
    "ChildSpec",
    "Restart",
    "Strategy",
    "Supervisor",
    "SupervisorCell",
    "child",
]

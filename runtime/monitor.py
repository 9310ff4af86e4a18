"""Snapshots of the live tree and of the loop's health, for people and for tools."""

from __future__ import annotations

import json
import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterator, Sized
from typing import TYPE_CHECKING, Any

import attr
import attrs
import trio

from .cell import ActorBehaviour, Cell
from .errors import ActorNotFound
from .logs import log_once
from .messages import ErrorInfo, describe
from .supervisor import Supervising

if TYPE_CHECKING:
    from .system import System

log = logging.getLogger("troupe.monitor")
perf_counter = time.perf_counter


@attrs.frozen
class ActorInfo:
    """One node of a `TreeSnapshot`."""

    path: str
    name: str
    kind: str  # "actor" | "supervisor"
    cls: str
    state: str  # starting | running | restarting | stopping | stopped | failed
    restarts: int
    mailbox_depth: int
    mailbox_capacity: int
    mailbox_high_water: int
    processed: int
    failed: int
    dead_lettered: int
    current: str | None
    current_for: float | None
    stuck: bool  # handling one message for longer than the system's `stuck_after`
    last_error: ErrorInfo | None
    uptime: float | None
    subscriptions: tuple[str, ...]
    stats: dict[str, Any]
    children: tuple[ActorInfo, ...]
    hibernating: bool = False  # running with no task of its own until its next message

    def walk(self) -> Iterator[ActorInfo]:
        yield self
        for node in self.children:
            yield from node.walk()


@attrs.frozen
class BlockedStep:
    """One task step that held the loop longer than the threshold."""

    task: str
    seconds: float
    at: float  # wall-clock time it ended


@attrs.frozen
class Escalation:
    """A supervisor that gave up (restart intensity exceeded): see `System.escalations`."""

    at: float  # wall-clock time it gave up
    path: str  # the supervisor's path
    error: str  # its `RestartIntensityExceeded`, as text (names the root cause)


@attrs.frozen
class LoopHealth:
    """How responsive the trio loop has been (see `LoopMonitor`).

    `longest_step_task` names who blocked the loop longest (see `attribute`): an
    actor's path (a task it started counts as its own), or the runtime's part
    (``runtime: bus``, ``runtime: bridge /system/bridge``, ...).  `blocked` counts
    steps over the threshold (each one is also published as ``system.loop.blocked``).
    """

    longest_step: float
    longest_step_task: str | None
    longest_step_at: float | None
    max_lag: float
    last_lag: float
    steps: int
    blocked: int
    last_blocked: BlockedStep | None


class LoopMonitor(trio.abc.Instrument):
    """Records the longest task step (who blocked the loop) and scheduling lag.

    A step is the run of one task between two checkpoints; a long one means
    that task blocked everybody else.  Lag is measured by a probe task that
    sleeps `interval` and notes how late it woke.  Steps longer than
    `blocked_after` are handed to `on_blocked` through `run_sync_soon`
    (batched), never from inside the instrument hook itself.

    Two hooks, because trio's call of a hook costs more than the hook's own
    work: `after_io_wait` (once per turn of the loop) and `after_task_step`
    (once per step).  A step is timed from the end of the one before it in the
    same batch, or from the loop's wake-up for the first one; so a step's time
    also holds trio's own bookkeeping just before it (microseconds; with
    many cancel scopes expiring at once, their wake-ups), never the loop's
    sleep.  The wake-up hook also admits the asks foreign threads handed the
    loop that go straight into a mailbox (`serve_handoffs`), so that the
    receiving actor runs in the very batch the wake-up starts rather than the
    next one.
    """

    # Slots: the actor loop reads `steps` around every message, and a slot is the
    # fastest attribute there is (a plain instance's attribute was measured at
    # about 20 ns per message more there).
    __slots__ = (
        "_admit",
        "_blocked_after",
        "_flush_scheduled",
        "_handoffs",
        "_notable",
        "_pending",
        "_t0",
        "_token",
        "_unwarned",
        "_warned_at",
        "blocked",
        "last_blocked",
        "last_lag",
        "longest_step",
        "longest_step_at",
        "longest_step_task",
        "max_lag",
        "on_blocked",
        "steps",
        "warn_every",
    )

    def __init__(
        self,
        blocked_after: float = 0.05,
        on_blocked: Callable[[list[BlockedStep]], None] | None = None,
    ) -> None:
        self.on_blocked = on_blocked
        self.longest_step = 0.0
        self.longest_step_task: str | None = None
        self.longest_step_at: float | None = None
        self.max_lag = 0.0
        self.last_lag = 0.0
        self.steps = 0
        self.blocked = 0
        self.last_blocked: BlockedStep | None = None
        self._pending: deque[BlockedStep] = deque(maxlen=100)
        self._flush_scheduled = False
        self._token: trio.lowlevel.TrioToken | None = None
        self._t0 = math.inf  # when the step now running began (inf: unknown, not timed)
        self._blocked_after = blocked_after
        self._notable = 0.0  # a step longer than this is the longest yet, or blocked
        self.warn_every: float | None = None
        """Seconds between warnings (logged) of a blocked loop; None: none (`troupe run`
        sets it).  Only when `on_blocked` is set (never under a mock clock)."""
        self._warned_at: float | None = None
        self._unwarned = 0
        self._handoffs: Sized = ()
        self._admit: Callable[[], None] | None = None

    @property
    def blocked_after(self) -> float:
        """Seconds: a longer step counts as blocking the loop (`on_blocked` is told)."""
        return self._blocked_after

    @blocked_after.setter
    def blocked_after(self, seconds: float) -> None:
        self._blocked_after = seconds
        self._notable = min(self.longest_step, seconds)

    def install(self) -> None:
        """Start measuring the current trio run's loop (`trio.lowlevel.add_instrument`)."""
        self._t0 = math.inf  # the first step is timed from the first wake-up after this
        self._token = None  # this run's, looked up when first needed
        self._flush_scheduled = False  # a flush promised by an earlier run never comes
        trio.lowlevel.add_instrument(self)

    def uninstall(self) -> None:
        """Stop measuring (`trio.lowlevel.remove_instrument`); `install` may follow.

        Does nothing if trio dropped the monitor already (it drops an instrument
        whose hook raised, e.g. a `BaseException` out of `serve_handoffs`'s
        `admit`): the caller's own error, if any, is the one to see.
        """
        try:
            trio.lowlevel.remove_instrument(self)
        except KeyError:
            pass  # dropped by trio after a hook raised (logged by trio)
        self._t0 = math.inf  # a later install must not count the time between as a step

    def serve_handoffs(self, handoffs: Sized, admit: Callable[[], None]) -> None:
        """Call `admit()` each time the loop wakes up and `handoffs` is not empty
        (the asks foreign threads handed the loop: `ThreadGate.admit_direct_handoffs`).

        `admit` runs in the loop, outside any task, before trio starts the batch of
        tasks the wake-up made runnable: the tasks it reschedules run in that batch.
        Its time counts in no step, so it must be short and must not block, run
        user code or need a task.  An `Exception` it raises is logged and the
        monitor carries on; trio drops a monitor whose hook lets anything else out.
        Only a shortcut: whatever `admit` leaves must reach the loop another way.
        """
        self._handoffs = handoffs
        self._admit = admit

    def after_io_wait(self, timeout: float) -> None:
        if self._handoffs:
            try:
                self._admit()  # type: ignore[misc]  # set with _handoffs
            except Exception:  # an exception here would remove the instrument
                log.exception("admitting what threads handed the loop failed")
        self._t0 = perf_counter()  # the batch starts (after our own work)

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        # Kept to the least work: it runs after every step of every task.
        self.steps += 1
        now = perf_counter()
        took = now - self._t0  # -inf if the start is unknown (installed mid-step)
        self._t0 = now  # the next step of this batch starts here
        if took > self._notable:
            self._note(task, took)

    def _note(self, task: trio.lowlevel.Task, took: float) -> None:
        """A step the longest yet, or longer than `blocked_after`, or both."""
        if took > self.longest_step:
            self.longest_step = took
            self.longest_step_task = attribute(task)
            self.longest_step_at = time.time()
        if took > self._blocked_after:
            self._blocked(BlockedStep(attribute(task), took, time.time()))
        self._notable = min(self.longest_step, self._blocked_after)

    def _blocked(self, step: BlockedStep) -> None:
        self.blocked += 1
        self.last_blocked = step
        self._pending.append(step)
        if self.on_blocked is not None and not self._flush_scheduled:
            if self._token is None:
                self._token = trio.lowlevel.current_trio_token()
            self._flush_scheduled = True
            self._token.run_sync_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        steps = list(self._pending)
        self._pending.clear()
        if steps and self.warn_every is not None:
            self._warn(steps)
        if self.on_blocked is not None and steps:
            try:
                self.on_blocked(steps)
            except Exception:  # never let a report take the loop down
                logging.getLogger("troupe").exception("reporting a blocked loop failed")

    def _warn(self, steps: list[BlockedStep]) -> None:
        """One warning line for the worst of `steps`, at most one per `warn_every`
        seconds; the stalls not shown meanwhile are counted in the next one."""
        now = time.monotonic()
        assert self.warn_every is not None
        if self._warned_at is not None and now - self._warned_at < self.warn_every:
            self._unwarned += len(steps)
            return
        worst = max(steps, key=lambda step: step.seconds)
        others = self._unwarned + len(steps) - 1
        since = f" in the last {now - self._warned_at:.0f} s" if self._warned_at else ""
        log.warning(
            "the loop was blocked for %.3f s by %s (more than %g s: every actor waited)%s",
            worst.seconds,
            worst.task,
            self.blocked_after,
            f"; {others} other stall{'s' if others != 1 else ''}{since}" if others else "",
        )
        self._warned_at = now
        self._unwarned = 0

    async def probe(self, interval: float = 0.05) -> None:
        """Run forever, measuring how late the loop wakes a sleeping task (wall clock)."""
        while True:
            start = time.perf_counter()
            await trio.sleep(interval)
            lag = max(0.0, time.perf_counter() - start - interval)
            self.last_lag = lag
            self.max_lag = max(self.max_lag, lag)

    def health(self) -> LoopHealth:
        return LoopHealth(
            longest_step=self.longest_step,
            longest_step_task=self.longest_step_task,
            longest_step_at=self.longest_step_at,
            max_lag=self.max_lag,
            last_lag=self.last_lag,
            steps=self.steps,
            blocked=self.blocked,
            last_blocked=self.last_blocked,
        )


RUNTIME_PATHS = {
    "/": "runtime: root supervisor /",
    "/system": "runtime: supervisor /system",
    "/system/bus": "runtime: bus",
    "/system/deadletters": "runtime: dead letters",
    "/system/bridge": "runtime: bridge /system/bridge",
    "/system/callbacks": "runtime: supervisor /system/callbacks",
}
"""How loop health names the runtime's own actors."""

RUNTIME_TASKS = {
    "troupe loop probe": "runtime: loop probe",
    "troupe cluster node": "runtime: cluster node",
    "troupe control socket": "runtime: control socket",
    "troupe metrics": "runtime: metrics server",
    "troupe tree": "runtime: actor tree",
    "troupe outer cancel": "runtime: actor tree",
    "<TrioToken.run_sync_soon task>": "runtime: calls from other threads",
}
"""How loop health names the runtime's tasks that are not actors."""


def attribute(task: trio.lowlevel.Task) -> str:
    """Who a task's step belongs to, for loop health: the path of the actor it runs
    for (its own task, or one it started: the nearest ancestor named by a path), e.g.
    ``/app/worker``; for the runtime's own work ``runtime: bus``, ``runtime: bridge
    /system/bridge``, ``runtime: control socket``...; a task outside the tree keeps
    its name, an unnamed one of the runtime's is ``runtime: <function>``.  Never
    raises."""
    try:
        leaf = task.name
        current: trio.lowlevel.Task | None = task
        depth = 0
        while current is not None and depth < 50:
            name = current.name
            if name.startswith("/"):
                path = name.split(" ", 1)[0]  # e.g. "/app/d ticks": a daemon's schedule
                if path in RUNTIME_PATHS:
                    return RUNTIME_PATHS[path]
                if leaf.startswith("runtime.bridge."):
                    return f"runtime: bridge {path}"
                return path
            if name in RUNTIME_TASKS:
                return RUNTIME_TASKS[name]
            nursery = current.parent_nursery
            current = nursery.parent_task if nursery is not None else None
            depth += 1
        if leaf.startswith("<") and leaf.endswith(">"):
            return f"trio: {leaf[1:-1]}"
        if leaf.startswith(("runtime.", "actors.")):
            return f"runtime: {leaf.rsplit('.', 1)[-1].strip('_') or leaf}"
        return leaf
    except Exception:  # an instrument must never fail
        return str(getattr(task, "name", "?"))


@attrs.frozen
class TreeSnapshot:
    """The whole tree at one instant: `root` is ``/`` (``/system`` and the user's tree)."""

    system: str
    root: ActorInfo
    dead_letters: dict[str, int]
    loop: LoopHealth | None
    taken_at: float
    cluster: dict[str, Any] | None = None  # this node's view of its cluster, when on one

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TreeSnapshot:
        """The snapshot `to_dict` made (e.g. one that came from another node).

        Raises `KeyError`, `TypeError` or `ValueError` for data that is not one.
        """
        loop = data.get("loop")
        return cls(
            system=str(data["system"]),
            root=_info_from(data["root"]),
            dead_letters={str(k): int(v) for k, v in data["dead_letters"].items()},
            loop=None if loop is None else _loop_from(loop),
            taken_at=float(data["taken_at"]),
            cluster=data.get("cluster"),
        )

    def find(self, path: str) -> ActorInfo:
        for node in self.root.walk():
            if node.path == path:
                return node
        raise ActorNotFound(f"no actor at {path!r} in this snapshot")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: plain dicts, lists, strings and numbers, same names as the attrs."""
        # `attrs.asdict` always keeps tuples; the classic `attr.asdict` can turn them into lists.
        return attr.asdict(self, recurse=True, retain_collection_types=False)

    def render(self) -> str:
        """A text tree, one actor a line."""
        lines = [f"{self.system}  dead letters: " + _counts(self.dead_letters)]
        if self.loop is not None:
            loop = self.loop
            lines.append(
                f"loop: longest step {loop.longest_step * 1000:.1f} ms "
                f"({loop.longest_step_task or '-'}), max lag {loop.max_lag * 1000:.1f} ms, "
                f"blocked {loop.blocked}"
            )

        def draw(node: ActorInfo, prefix: str, last: bool, top: bool) -> None:
            branch = "" if top else ("└─ " if last else "├─ ")
            bits = [f"{node.name} [{node.state}]"]
            if node.hibernating:
                bits.append("hibernating")
            if node.kind == "actor":
                bits.append(f"mailbox {node.mailbox_depth}/{node.mailbox_capacity}")
                bits.append(f"processed {node.processed}")
            if node.restarts:
                bits.append(f"restarts {node.restarts}")
            if node.dead_lettered:
                bits.append(f"dead {node.dead_lettered}")
            if node.last_error is not None:
                bits.append(f"last error {node.last_error.type}: {node.last_error.message}")
            lines.append(prefix + branch + "  ".join(bits))
            inner = prefix + ("" if top else ("   " if last else "│  "))
            for i, sub in enumerate(node.children):
                draw(sub, inner, i == len(node.children) - 1, False)

        draw(self.root, "", True, True)
        return "\n".join(lines)


def _info_from(data: dict[str, Any]) -> ActorInfo:
    error = data.get("last_error")
    return ActorInfo(
        path=str(data["path"]),
        name=str(data["name"]),
        kind=str(data["kind"]),
        cls=str(data["cls"]),
        state=str(data["state"]),
        restarts=int(data["restarts"]),
        mailbox_depth=int(data["mailbox_depth"]),
        mailbox_capacity=int(data["mailbox_capacity"]),
        mailbox_high_water=int(data["mailbox_high_water"]),
        processed=int(data["processed"]),
        failed=int(data["failed"]),
        dead_lettered=int(data["dead_lettered"]),
        current=data.get("current"),
        current_for=data.get("current_for"),
        stuck=bool(data.get("stuck", False)),
        last_error=None if error is None else ErrorInfo(**error),
        uptime=data.get("uptime"),
        subscriptions=tuple(data.get("subscriptions", ())),
        stats=dict(data.get("stats", {})),
        children=tuple(_info_from(c) for c in data.get("children", ())),
        hibernating=bool(data.get("hibernating", False)),
    )


def _loop_from(data: dict[str, Any]) -> LoopHealth:
    last = data.get("last_blocked")
    return LoopHealth(
        longest_step=float(data["longest_step"]),
        longest_step_task=data.get("longest_step_task"),
        longest_step_at=data.get("longest_step_at"),
        max_lag=float(data["max_lag"]),
        last_lag=float(data["last_lag"]),
        steps=int(data["steps"]),
        blocked=int(data["blocked"]),
        last_blocked=None if last is None else BlockedStep(**last),
    )


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k} {v}" for k, v in counts.items() if v) or "none"


def describe_cell(cell: Cell, now: float, stuck_after: float) -> ActorInfo:
    behaviour = cell.behaviour
    children: tuple[ActorInfo, ...] = ()
    if isinstance(behaviour, Supervising):
        children = tuple(describe_cell(sub, now, stuck_after) for sub in behaviour.children)
    mb = cell.mailbox
    busy = isinstance(behaviour, ActorBehaviour) and behaviour.busy
    since = behaviour.current_since if isinstance(behaviour, ActorBehaviour) else now
    current = behaviour.current if isinstance(behaviour, ActorBehaviour) else None
    return ActorInfo(
        path=cell.path,
        name=cell.name,
        kind=cell.kind,
        cls=cell.cls_name,
        state=cell.state,
        restarts=cell.restarts,
        mailbox_depth=mb.depth,
        mailbox_capacity=mb.capacity,
        mailbox_high_water=mb.high_water,
        processed=cell.processed,
        failed=cell.failed,
        dead_lettered=cell.dead_lettered,
        current=type(current).__qualname__ if busy else None,
        current_for=now - since if busy else None,
        stuck=busy and now - since > stuck_after,
        last_error=cell.last_error,
        uptime=now - cell.started_at if cell.running and cell.started_at is not None else None,
        subscriptions=cell.host.subscriptions_of(cell),
        stats=actor_stats(cell),
        children=children,
        hibernating=cell.hibernating,
    )


def actor_stats(cell: Cell) -> dict[str, Any]:
    """What the cell's actor's `snapshot_stats()` says: a dict, str keys, JSON values.

    If it raises or returns anything else, the stats are ``{"error": "..."}``
    instead (logged once per actor class): one odd actor never breaks a
    snapshot, the control socket or the metrics.
    """
    try:
        stats = cell.behaviour.stats()
        problem = _stats_problem(stats)
    except Exception as exc:
        problem = f"snapshot_stats() raised {_short(describe(exc))}"
    if problem is None:
        return dict(stats)
    log_once(
        log,
        logging.WARNING,
        "snapshot_stats",
        cell.cls_name,
        "the stats of %s (%s) cannot be shown: %s; they show the error instead",
        cell.cls_name,
        cell.path,
        problem,
    )
    return {"error": problem}


def _stats_problem(stats: object) -> str | None:
    """What is wrong with what `snapshot_stats()` returned, or None."""
    if stats is None:
        return "snapshot_stats() returned None, not a dict"
    if not isinstance(stats, dict):
        return f"snapshot_stats() returned a {type(stats).__name__}, not a dict"
    for key in stats:
        if not isinstance(key, str):
            return f"snapshot_stats() returned a {type(key).__name__} key, not a str"
    try:
        json.dumps(stats)
    except Exception as exc:  # a value JSON has no type for, a huge int, a cycle ...
        return f"snapshot_stats() returned a value JSON cannot encode ({_short(describe(exc))})"
    odd = _not_plain(stats)
    if odd is not None:
        return f"snapshot_stats() returned {odd}: only plain values travel (JSON, MessagePack)"
    return None


_PLAIN = (type(None), bool, float, str)
_INT_RANGE = (-(1 << 63), (1 << 64) - 1)  # what MessagePack (the cluster's wire) can carry


def _not_plain(value: object, depth: int = 0) -> str | None:
    """What in `value` is not a plain value of an exact builtin type, or None."""
    kind = type(value)
    if kind in _PLAIN:
        return None
    if kind is int:
        low, high = _INT_RANGE
        return None if low <= value <= high else "an int too large for the wire"  # type: ignore[operator]
    if depth > 32:
        return "values nested too deep"
    if kind is list or kind is tuple:
        for item in value:  # type: ignore[attr-defined]
            odd = _not_plain(item, depth + 1)
            if odd is not None:
                return odd
        return None
    if kind is dict:
        for key, item in value.items():  # type: ignore[attr-defined]
            odd = "a dict key that is not a str" if type(key) is not str else None
            odd = odd or _not_plain(item, depth + 1)
            if odd is not None:
                return odd
        return None
    return f"a {kind.__name__}"


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def take_snapshot(system: System) -> TreeSnapshot:
    now = trio.current_time()
    return TreeSnapshot(
        system=system.name,
        root=describe_cell(system.root, now, system.stuck_after),
        dead_letters=dict(system.dead_letters.counts),
        loop=system.loop_monitor.health(),
        taken_at=time.time(),
        cluster=None if system.cluster is None else system.cluster.stats(),
    )

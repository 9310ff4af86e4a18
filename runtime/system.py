"""The actor system: the root of the tree, the registry of paths, and the `Host` the
layers below it use.  Entry points (`open_system`, `run`, `start_in_thread`)
compose a `System` with its faces in `runtime.entry`."""

from __future__ import annotations

import itertools
import logging
import math
import os
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from typing import TYPE_CHECKING, Any

import trio

from .bridge import BlockingCall, Bridge
from .bus import Bus
from .cell import ActorBehaviour, Cell
from .deadletters import DeadLetterOffice, DeadLetters
from .deadlines import Deadlines
from .errors import ActorNotFound, AskTimeout, RuntimeClosed
from .messages import Control, Event, ExitReason, Reply
from .monitor import BlockedStep, Escalation, LoopMonitor, TreeSnapshot, take_snapshot
from .ref import ActorRef
from .spec import (
    URL_SCHEME,
    ChildInfo,
    ChildSpec,
    Supervisor,
    check_correlation_id,
    check_msg_id,
    check_since,
    check_timeout,
    child,
)
from .supervisor import Supervising
from .system_actors import BusActor, Callback, CallbackSubscriber, PublishRequest
from .threads import ThreadGate
from .topics import check_user_topic

if TYPE_CHECKING:
    from .cluster.node import Cluster

RESERVED = "system"
ESCALATIONS_KEPT = 10  # the most recent supervisor escalations a system remembers
log = logging.getLogger("troupe")


def _system_tree() -> Supervisor:
    return Supervisor(
        RESERVED,
        strategy="one_for_one",
        children=[
            child(DeadLetters, name="deadletters"),
            child(BusActor, name="bus"),
            child(Bridge, name="bridge"),
            # bus.subscribe() callbacks run here; they never crash, so restarts are rare
            Supervisor("callbacks", strategy="one_for_one", max_restarts=100, within=1.0),
        ],
    )


class _NoReply:
    """A reply slot for requests whose outcome nobody awaits (it is logged instead)."""

    state = "pending"
    asker = None

    def __init__(self, what: str) -> None:
        self.what = what

    def send(self, value: Any) -> bool:
        return True

    def fail(self, error: BaseException) -> bool:
        log.error("%s failed: %s", self.what, error)
        return True


class System:
    """A running actor tree.  Its methods are for the trio thread unless they say otherwise.

    Implements `runtime.host.Host` for the layers below.
    """

    def __init__(
        self,
        tree: Supervisor,
        *,
        name: str | None = None,
        history: int = 1000,
        duplicate_window: float = 120.0,
        stuck_after: float = 10.0,
    ) -> None:
        if not isinstance(tree, Supervisor):
            raise TypeError(
                f"the root of a tree must be a Supervisor, got {tree!r}; "
                "wrap your actors: Supervisor('app', children=[child(MyActor)])"
            )
        if tree.name == RESERVED:
            raise ValueError(
                f"the name {RESERVED!r} is reserved for the runtime's own actors at /{RESERVED}; "
                "name your root supervisor something else"
            )
        self.tree = tree
        self.name = name or tree.name
        self.node: str | None = None  # a node's name on a cluster (none yet)
        self.cluster: Cluster | None = None  # this system's node, when on a cluster
        self.rng = random.Random()
        self.stuck_after = stuck_after
        self.dead_letters = DeadLetterOffice()
        self.bus = Bus(self, history, duplicate_window)
        self.started_at: float | None = None
        self.control: Any = None  # the control server, when served (runtime.control)
        self.metrics: Any = None  # the metrics server, when served (runtime.metrics)
        self.dashboard: Any = None  # the web dashboard, when served (runtime.web)
        self.gate = ThreadGate(self.name)  # a plain attribute: read on every tell
        self.deadlines = Deadlines()  # of asks' reply waits; kept by a task of `_serving`
        self._monitor = LoopMonitor()
        # a thread's ask reaches its actor in the batch the loop's wake-up starts
        self._monitor.serve_handoffs(self.gate.handoffs, self.gate.admit_direct_handoffs)
        self.steps = self._monitor
        self._cells: dict[str, Cell] = {}
        self._bus_cell: Cell | None = None
        self._bridge_cell: Cell | None = None
        self._callback_ids = itertools.count(1)
        self._state = "new"  # -> running -> closed
        self._shutting_down = False  # from here on, whatever stops is stopped for good
        self._killed = False  # the stop was forced: every incarnation is cancelled
        self._failure: BaseException | None = None
        self._escalations: deque[Escalation] = deque(maxlen=ESCALATIONS_KEPT)
        self._interrupt: BaseException | None = None
        self._on_root_exit: Callable[[], None] | None = None
        root_spec = Supervisor("root", strategy="one_for_one", children=[_system_tree(), tree])
        self._root = Cell(self, None, root_spec, "/", Supervising(root_spec, root=True))
        self._root.name = "/"
        self._register(self._root)

    # -- Host: state ---------------------------------------------------------
    @property
    def is_running(self) -> bool:
        return self._state == "running"

    @property
    def shutting_down(self) -> bool:
        return self._shutting_down

    @property
    def killed(self) -> bool:
        return self._killed

    @property
    def loop_monitor(self) -> LoopMonitor:
        """The trio instrument that measures the loop's health."""
        return self._monitor

    @property
    def root(self) -> Cell:
        """The slot of ``/`` (its children: ``/system`` and the user's tree)."""
        return self._root

    @property
    def failure(self) -> BaseException | None:
        """What the tree failed with (e.g. `RestartIntensityExceeded`), if it did."""
        return self._failure

    def escalations(self, since: float | None = None) -> list[Escalation]:
        """The supervisors that gave up (restart intensity exceeded), newest first: the
        last `ESCALATIONS_KEPT`, also those a parent restarted, kept whatever the bus's
        ``history=`` (``/healthz`` reads them).  `since`: only those at or after this
        wall-clock time (``time.time()``).  Raises `ValueError` for a `since` that is
        not a timestamp or None (as ``bus.history`` does)."""
        check_since(since)
        return [e for e in reversed(self._escalations) if since is None or e.at >= since]

    @property
    def interrupt(self) -> BaseException | None:
        """A KeyboardInterrupt/SystemExit raised by a handler, to raise from the entry point."""
        return self._interrupt

    # -- Host: slots -----------------------------------------------------------
    def _register(self, cell: Cell) -> None:
        if cell.path in self._cells:
            raise ValueError(f"there is already an actor at {cell.path}")
        self._cells[cell.path] = cell

    def new_cell(self, spec: ChildSpec | Supervisor, parent: Cell) -> Cell:
        path = parent.path.rstrip("/") + "/" + spec.name
        cell: Cell
        if isinstance(spec, Supervisor):
            cell = Cell(self, parent, spec, path, Supervising(spec))
        else:
            cell = Cell(self, parent, spec, path, ActorBehaviour(spec))
        self._register(cell)
        if path == f"/{RESERVED}/bus":
            self._bus_cell = cell
        return cell

    def slot_released(self, cell: Cell) -> None:
        if self._cells.get(cell.path) is cell:
            del self._cells[cell.path]
        self.slot_stopped(cell)

    def slot_stopped(self, cell: Cell) -> None:
        self.bus.drop_all(cell)
        if self.cluster is not None:
            self.cluster.slot_stopped(cell)
        if cell.parent is self._root and cell.path != f"/{RESERVED}":
            # The user's tree has stopped for good, and `/system` stops next: end the
            # streams now, so that a reader the runtime waits for (a bridge worker)
            # is let go, having seen every actor of the tree stop.
            self.bus.end_streams()

    def root_exited(self, reason: ExitReason) -> None:
        self.gate.stopping()
        if isinstance(reason, BaseException):
            self._failure = reason
        if self._on_root_exit is not None:
            self._on_root_exit()

    def root_failing(self) -> None:
        """The root supervisor is giving up: nothing restarts from now on."""
        self._shutting_down = True

    def interrupted(self, error: BaseException) -> None:
        if self._interrupt is None:
            self._interrupt = error
        self.stop()

    def on_root_exit(self, callback: Callable[[], None]) -> None:
        """Call `callback` when the root's incarnation ends by itself (entry points)."""
        self._on_root_exit = callback

    # -- Host: accounting and events ---------------------------------------------
    def dead_letter(self, message: Any, reason: str, recipient: str) -> None:
        self.dead_letters.record(message, reason, recipient)
        if self.is_running:
            self.bus.dead_letter_event(message, reason, recipient)

    def system_event(self, topic: str, payload: Mapping[str, Any]) -> None:
        self.bus.system_event(topic, payload)

    def supervisor_escalated(self, path: str, error: BaseException) -> None:
        """Remember that the supervisor at `path` gave up with `error` (see `escalations`),
        and publish ``system.supervisor.escalated`` while the system runs."""
        escalation = Escalation(at=time.time(), path=path, error=str(error))
        self._escalations.append(escalation)
        if self.is_running:
            self.bus.system_event(
                "system.supervisor.escalated", {"path": path, "error": escalation.error}
            )

    def publish_blocked(self, steps: list[BlockedStep]) -> None:
        """Publish ``system.loop.blocked`` for long steps the loop monitor saw."""
        if self.is_running:
            for step in steps:
                self.bus.system_event(
                    "system.loop.blocked",
                    {"task": step.task, "seconds": step.seconds, "at": step.at},
                )

    # -- Host: services for actors -----------------------------------------------
    async def publish_from(
        self,
        source: str,
        topic: str,
        payload: Any,
        correlation_id: str | None,
        metadata: Mapping[str, Any],
        msg_id: str | None = None,
        timeout: float | None = None,
    ) -> int:
        return await self.bus.publish(
            topic,
            payload,
            source=source,
            correlation_id=correlation_id,
            metadata=metadata,
            msg_id=msg_id,
            timeout=timeout,
        )

    def publish_nowait_from(
        self,
        source: str,
        topic: str,
        payload: Any,
        correlation_id: str | None,
        metadata: Mapping[str, Any],
        msg_id: str | None = None,
        timeout: float | None = None,
    ) -> int:
        return self.bus.publish_nowait(
            topic,
            payload,
            source=source,
            correlation_id=correlation_id,
            metadata=metadata,
            msg_id=msg_id,
            timeout=timeout,
        )

    def subscribe_cell(
        self,
        cell: Cell,
        pattern: str,
        *,
        once: bool = False,
        filter: Callable[[Event], bool] | None = None,
        replay: int = 0,
    ) -> None:
        self.bus.subscribe_cell(cell, pattern, once=once, filter=filter, replay=replay)

    def unsubscribe_cell(self, cell: Cell, pattern: str) -> bool:
        return self.bus.unsubscribe_cell(cell, pattern)

    def subscriptions_of(self, cell: Cell) -> tuple[str, ...]:
        return self.bus.patterns_of(cell)

    def adopt_callback(self, callback: Callback) -> Cell:
        """Make the actor that runs a bus callback; it starts as soon as its supervisor can."""
        parent = self._cells.get(f"/{RESERVED}/callbacks")
        if parent is None or not self.is_running:
            raise RuntimeClosed(f"system {self.name!r} is not running: cannot subscribe callbacks")
        name = f"{callback.label}-{next(self._callback_ids)}"  # (a label is fit for a name)
        cell = self.new_cell(child(CallbackSubscriber, name=name, args=(callback,)), parent)
        parent.mailbox.put_system(Control("adopt", cell, _NoReply(f"starting callback {name}")))
        return cell

    def release_callback(self, cell: Cell) -> None:
        if cell.parent is not None:
            what = f"stopping callback {cell.name}"
            request = Control("terminate_child", (cell, None), _NoReply(what))
            cell.parent.mailbox.put_system(request)

    # -- public API ------------------------------------------------------
    def _check_running(self, what: str) -> None:
        if not self.is_running:
            raise RuntimeClosed(f"actor system {self.name!r} is not running: cannot {what}")

    def _lookup(self, path: str) -> Cell:
        if not isinstance(path, str):
            raise TypeError(f"an actor path is a string like '/app/worker', got {path!r}")
        if not path.strip("/") and path != "/":
            raise ValueError(f"an actor path looks like '/app/worker', got {path!r}")
        if self._state == "closed":
            raise RuntimeClosed(f"actor system {self.name!r} is not running: cannot look up {path}")
        norm = "/" + path.strip("/") if path != "/" else "/"
        cell = self._cells.get(norm)
        if cell is None:
            parent = norm.rsplit("/", 1)[0] or "/"
            near = self._cells.get(parent)
            hint = ""
            if near is not None and isinstance(near.behaviour, Supervising):
                names = (
                    ", ".join(c.name for c in near.behaviour.children if not c.finalized) or "none"
                )
                hint = f" ({parent} has: {names})"
            raise ActorNotFound(f"no actor at {norm}{hint}")
        return cell

    def _supervising(self, cell: Cell, what: str) -> Supervising:
        behaviour = cell.behaviour
        if not isinstance(behaviour, Supervising):
            raise ValueError(f"{cell.path} is an actor, not a supervisor: {what}")
        return behaviour

    def ref(self, path_or_url: str) -> ActorRef:
        """The ref of the actor at a path (``/app/worker``); `ActorNotFound` if none.

        On a cluster it may also be a URL, ``troupe://node/app/worker``: a ref
        to an actor of another node (not checked here: an unknown path shows
        when it is used) or of this one.  Without a cluster a URL raises
        `ValueError`.  A supervisor with a `receiver` child (e.g. a pool) is
        addressed through it.
        """
        if isinstance(path_or_url, str) and path_or_url.startswith(URL_SCHEME):
            return self._remote(path_or_url).resolve(path_or_url)
        return self._receiving(self._lookup(path_or_url)).ref

    def _receiving(self, cell: Cell) -> Cell:
        """`cell`, or the receiver child that takes what is sent to it (e.g. a pool's
        router)."""
        while isinstance(cell.behaviour, Supervising) and cell.behaviour.sup.receiver is not None:
            receiver = cell.behaviour.child_named(cell.behaviour.sup.receiver)
            if receiver is None:
                raise ActorNotFound(
                    f"{cell.path} has no running {cell.behaviour.sup.receiver!r} now"
                )
            cell = receiver
        return cell

    def slot(self, path: str) -> Cell:
        """The slot at `path` itself (no receiver followed, no cluster URL): for the
        faces, which look at it as it is (e.g. ``troupe kill`` refuses a supervisor).
        Raises `ActorNotFound`, `RuntimeClosed`, `ValueError` as `ref` does."""
        return self._lookup(path)

    def _remote(self, url: str) -> Cluster:
        """The cluster, to reach `url` through; `ValueError` without one."""
        if self.cluster is None:
            raise ValueError(
                f"{url!r} names an actor on a cluster node, but system {self.name!r} is not on "
                "a cluster: start it with open_system(..., node=NAME, cluster=NATS_URL)"
            )
        return self.cluster

    def snapshot(self) -> TreeSnapshot:
        """The whole tree, its dead-letter counts and the loop's health, right now."""
        return take_snapshot(self)

    def which_children(self, path: str) -> list[ChildInfo]:
        """The children of the supervisor at `path`, in start order."""
        cell = self._lookup(path)
        return self._supervising(cell, "it has no children").which_children()

    async def start_child(self, parent: str, spec: ChildSpec | Supervisor) -> ActorRef:
        """Add a dynamic child under the supervisor at `parent` and start it.

        Raises the child's start error, ValueError if the name is taken,
        `RuntimeClosed` once the system has stopped.  Dynamic children are
        not re-created when their supervisor restarts.
        """
        self._check_running("start a child")
        if isinstance(parent, str) and parent.startswith(URL_SCHEME):
            return await self._remote(parent).start_child(parent, spec)
        cell = self._lookup(parent)
        self._supervising(cell, "it cannot have children")
        if cell is self._root or cell.path.startswith("/" + RESERVED):
            raise ValueError(
                f"{cell.path} is managed by the runtime; add children to your own tree"
            )
        if not isinstance(spec, ChildSpec | Supervisor):
            raise TypeError(f"start_child needs a child(...) spec or a Supervisor, got {spec!r}")
        return await self._ask_supervisor(cell, "start_child", spec)  # type: ignore[no-any-return]

    async def terminate_child(self, path: str, *, hand_over_to: ActorRef | None = None) -> None:
        """Stop the actor at `path` (graceful, within its shutdown timeout) and remove it.

        Messages still queued for it are dead-lettered as ``stopped``; with
        `hand_over_to` (a running actor other than it and its descendants) they
        are put into that actor's mailbox instead, in their order (past its
        capacity if need be: nothing is dropped), asks with their askers
        (e.g. a router re-routes what was queued at a worker it removes).
        Blocks until the actor has stopped.  On a cluster, `path` may be a
        ``troupe://node/...`` URL (that node must allow it).  Raises
        `ActorNotFound`, `ValueError` for the runtime's own actors or an unfit
        `hand_over_to`, `RuntimeClosed` once the system has stopped.
        """
        self._check_running("terminate a child")
        if isinstance(path, str) and path.startswith(URL_SCHEME):
            if hand_over_to is not None:
                raise ValueError("hand_over_to works only for actors of this node")
            await self._remote(path).terminate_child(path)
            return
        cell = self._lookup(path)
        parent = cell.parent
        if parent is None or parent is self._root or cell.path.startswith("/" + RESERVED):
            raise ValueError(f"{cell.path} is managed by the runtime and cannot be terminated")
        target: Cell | None = None
        if hand_over_to is not None:
            if not isinstance(hand_over_to, ActorRef):
                raise TypeError(f"hand_over_to must be an ActorRef, got {hand_over_to!r}")
            if type(hand_over_to) is not ActorRef:
                raise ValueError(
                    f"hand_over_to must be an actor of this node, got {hand_over_to!r}"
                )
            target = self._lookup(hand_over_to.path)
            if target is cell or target.path.startswith(cell.path + "/"):
                raise ValueError(
                    f"cannot hand {cell.path}'s messages over to {target.path}: "
                    "it stops with it; choose an actor outside its subtree"
                )
        await self._ask_supervisor(parent, "terminate_child", (cell, target))

    async def _ask_supervisor(self, cell: Cell, op: str, arg: Any) -> Any:
        reply = Reply(lambda _value: None)
        cell.mailbox.put_system(Control(op, arg, reply))
        return await reply.wait(float("inf"), f"{op} at {cell.path}")

    def publish(
        self,
        topic: str,
        payload: Any = None,
        *,
        correlation_id: str | None = None,
        msg_id: str | None = None,
        timeout: float | None = None,
        **metadata: Any,
    ) -> int:
        """Publish an event; callable from the trio thread and from any other thread.

        On the trio thread it never waits (like `ctx.publish_nowait`; `timeout`
        is checked but does not apply).  From a foreign thread it goes through
        the bus actor, and blocks that thread while subscribers' ``block``
        mailboxes are full, up to `timeout` seconds counted from when the bus
        actor takes the request (None: as long as it takes; 0: only where there
        is room now); past it, the event is dead-lettered (``overflow``) for
        the subscribers it had not reached.  Returns the number of subscribers
        it was delivered to (0 for a duplicate `msg_id`).  Raises
        `RuntimeClosed` once the system has stopped, `ValueError` for an
        invalid topic (or one under ``system.``) or timeout, `TypeError` for a
        `msg_id` or `correlation_id` that is not a string.
        """
        limit = check_timeout(timeout)
        if self.gate.on_loop_thread():
            return self.bus.publish_nowait(
                topic, payload, correlation_id=correlation_id, metadata=metadata, msg_id=msg_id
            )
        check_user_topic(topic)
        check_msg_id(msg_id)
        check_correlation_id(correlation_id)
        bus = self._bus_cell
        if bus is None or not self.is_running:
            raise RuntimeClosed(f"system {self.name!r} is not running")
        request = PublishRequest(topic, payload, correlation_id, dict(metadata), msg_id, limit)
        return self.gate.ask(bus, request, math.inf)  # type: ignore[no-any-return]

    async def run_blocking(
        self,
        fn: Callable[..., Any],
        *args: Any,
        timeout: float | None = None,
        bridge: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """Run blocking `fn(*args, **kwargs)` on a bridge (default ``/system/bridge``).

        Returns its result or raises its own exception; past `timeout` seconds
        (queueing included) raises `AskTimeout` and abandons the call.  Raises
        `RuntimeClosed` once the system has stopped.  A thread bridge that
        would take the call at once (running, nothing in its mailbox, room to
        spare) starts it without a message (`Bridge.start_now`); otherwise the
        call is asked of the bridge and queues in its mailbox, in order.
        """
        limit = check_timeout(timeout)
        if not self.is_running:
            self._check_running(f"run {getattr(fn, '__qualname__', fn)!r}")
        cell: Cell | None
        if not bridge:
            cell = self._default_bridge()
            target = cell.ref
        elif isinstance(bridge, str) and bridge.startswith(URL_SCHEME):
            cell = None  # another node's bridge: always a message
            target = self.ref(bridge)
        else:
            cell = self._receiving(self._lookup(bridge))
            target = cell.ref
        deadline = trio.current_time() + limit
        call = BlockingCall(fn, args, kwargs, deadline)
        try:
            reply = None if cell is None else _start_now(cell, call)
            if reply is None:
                return await target.ask(call, timeout=timeout)
            return await reply.wait(deadline, "a blocking call")
        except AskTimeout as exc:
            call.cancel()
            name = getattr(fn, "__qualname__", repr(fn))
            raise AskTimeout(
                f"{name} did not finish within {timeout}s on {target.path}; it was abandoned"
            ) from exc.__cause__
        except BaseException:
            call.cancel()  # cancelled here: the bridge lets go of it
            raise

    def _default_bridge(self) -> Cell:
        cell = self._bridge_cell
        if cell is None or cell.finalized:
            cell = self._lookup(f"/{RESERVED}/bridge")
            self._bridge_cell = cell
        return cell

    def stop(self) -> None:
        """Begin a graceful stop: children in reverse start order, then ``/system``.

        Also while the tree is starting: the children being started are asked
        to stop (an `on_start` that hangs is cancelled after its shutdown
        timeout) and the start fails.
        """
        if self._state != "closed":
            self._shutting_down = True
            self.gate.stopping()
            self._root.request_stop("shutdown")

    def kill(self) -> None:
        """Cancel the whole tree at once (a second Ctrl-C): no more graceful stop.

        Every incarnation is cancelled, also an `on_stop` that runs shielded
        after a crash (the root's cancellation does not reach it) or that
        begins later."""
        self._killed = True
        for cell in list(self._cells.values()):
            cell.kill()

    def info(self) -> dict[str, Any]:
        """Who this system is: name, pid, uptime (s) and how many actors it has."""
        return {
            "name": self.name,
            "pid": os.getpid(),
            "uptime": time.time() - self.started_at if self.started_at else 0.0,
            "actors": len(self._cells),
            "running": self.is_running,
        }

    # -- lifecycle, for runtime.entry ---------------------------------------------
    def open(self, token: trio.lowlevel.TrioToken) -> None:
        """On the trio thread: from now on the system runs and threads may call in."""
        self.gate.open(token)
        self._state = "running"

    def close(self) -> None:
        """Everything stops for good: what is still queued goes to dead letters, waiting
        asks fail, and threads still calling in get `RuntimeClosed`.  Idempotent."""
        if self._state == "closed":
            return
        self._state = "closed"
        self._shutting_down = True
        self._root.finalize("shutdown")
        self.gate.close()
        self.bus.end_streams()

    async def serve_signals(self, signals: AsyncIterator[int]) -> None:
        """A first signal stops the system gracefully, a second kills it."""
        seen = 0
        async for _ in signals:
            seen += 1
            if seen == 1:
                self.stop()
            else:
                self.kill()
                raise KeyboardInterrupt


def _start_now(cell: Cell, call: BlockingCall) -> Reply | None:
    """Start `call` on the bridge at `cell` without a message, if it would take it at once.

    Only a running `Bridge` (its own `receive`, not a subclass's) with no stop
    requested and nothing in its mailbox qualifies, so the call overtakes no
    message; the bridge itself decides whether it has room (`Bridge.start_now`).
    Returns the reply to wait on, or None: ask the bridge instead.
    """
    if cell.mailbox.depth or not cell.running or cell.stop_reason is not None:
        return None
    actor = getattr(cell.behaviour, "actor", None)
    if not isinstance(actor, Bridge) or type(actor).receive is not Bridge.receive:
        return None
    return actor.start_now(call, cell.late_reply)


__all__ = ["RESERVED", "System"]

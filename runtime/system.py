"""The actor system: the root of the tree, the registry of paths, and its entry points."""

from __future__ import annotations

import itertools
import logging
import os
import pathlib
import random
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import trio
import trio.testing

from .bridge import BlockingCall, Bridge
from .bus import Bus, BusActor, CallbackSubscriber, Event, PublishRequest
from .cell import Cell
from .control import ControlServer
from .deadletters import DeadLetterOffice, DeadLetters
from .errors import ActorNotFound, AskTimeout, RuntimeClosed
from .messages import ExitReason, Reply
from .metrics import MetricsServer
from .monitor import BlockedStep, LoopMonitor, TreeSnapshot, take_snapshot
from .ref import ActorRef
from .supervisor import ChildInfo, ChildSpec, Supervisor, SupervisorCell, child
from .threads import ThreadGate

RESERVED = "system"
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

    def __init__(self, what: str) -> None:
        self.what = what

    def send(self, value: Any) -> bool:
        return True

    def fail(self, error: BaseException) -> bool:
        log.error("%s failed: %s", self.what, error)
        return True


class System:
    """A running actor tree.  Its methods are for the trio thread unless they say otherwise."""

    def __init__(self, tree: Supervisor, *, name: str | None = None) -> None:
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
        self.dead_letters = DeadLetterOffice()
        self.bus = Bus(self)
        self._bus_cell: Cell | None = None
        self._bridge_cell: Cell | None = None
        self._callback_ids = itertools.count(1)
        self._cells: dict[str, Cell] = {}
        self._rng = random.Random()
        self._state = "new"  # -> running -> closed
        self._failure: BaseException | None = None
        self._body_scope: trio.CancelScope | None = None
        self._loop_monitor: LoopMonitor | None = None
        self._loop_thread: int | None = None  # ident of the trio thread, once running
        self.started_at: float | None = None
        self.shutting_down = False  # from here on, whatever stops is stopped for good
        self.stuck_after = 10.0
        self.control: ControlServer | None = None
        self.metrics: MetricsServer | None = None
        self._threads = ThreadGate(self)
        root_spec = Supervisor("root", strategy="one_for_one", children=[_system_tree(), tree])
        self._root = SupervisorCell(self, None, root_spec, "/", root=True)
        self._root.name = "/"
        self._register(self._root)

    # -- registry --------------------------------------------------------
    def _register(self, cell: Cell) -> None:
        if cell.path in self._cells:
            raise ValueError(f"there is already an actor at {cell.path}")
        self._cells[cell.path] = cell

    def _unregister(self, cell: Cell) -> None:
        if self._cells.get(cell.path) is cell:
            del self._cells[cell.path]

    def _new_cell(self, spec: ChildSpec | Supervisor, parent: SupervisorCell) -> Cell:
        path = parent.path.rstrip("/") + "/" + spec.name
        cell: Cell
        if isinstance(spec, Supervisor):
            cell = SupervisorCell(self, parent, spec, path)
        else:
            cell = Cell(self, parent, spec, path)
        self._register(cell)
        if path == f"/{RESERVED}/bus":
            self._bus_cell = cell
        return cell

    def _lookup(self, path: str) -> Cell:
        if not isinstance(path, str):
            raise TypeError(f"an actor path is a string like '/app/worker', got {path!r}")
        norm = "/" + path.strip("/") if path != "/" else "/"
        cell = self._cells.get(norm)
        if cell is None:
            parent = norm.rsplit("/", 1)[0] or "/"
            near = self._cells.get(parent)
            hint = ""
            if isinstance(near, SupervisorCell):
                names = ", ".join(c.name for c in near.children) or "none"
                hint = f" ({parent} has: {names})"
            raise ActorNotFound(f"no actor at {norm}{hint}")
        return cell

    # -- internal hooks used by cells -----------------------------------
    def _dead_letter(self, msg: Any, reason: str, recipient: str) -> None:
        self.dead_letters.record(msg, reason, recipient)
        if self.is_running:
            self.bus.dead_letter_event(msg, reason, recipient)

    def _adopt_callback(self, fn: Callable[[Event], Any]) -> Cell:
        """Make the actor that runs a bus callback; it starts as soon as its supervisor can."""
        from .cell import Control

        parent = self._cells.get(f"/{RESERVED}/callbacks")
        if not isinstance(parent, SupervisorCell) or not self.is_running:
            raise RuntimeClosed(f"system {self.name!r} is not running: cannot subscribe callbacks")
        label = getattr(fn, "__name__", "callback").strip("<>") or "callback"
        name = f"{label}-{next(self._callback_ids)}"
        cell = self._new_cell(child(CallbackSubscriber, name=name, args=(fn,)), parent)
        parent.mailbox.put_system(Control("adopt", cell, _NoReply(f"starting callback {name}")))
        return cell

    def _release_callback(self, cell: Cell) -> None:
        from .cell import Control

        if cell.parent is not None:
            what = f"stopping callback {cell.name}"
            cell.parent.mailbox.put_system(Control("terminate_child", cell, _NoReply(what)))

    def _root_exited(self, reason: ExitReason) -> None:
        self._threads.stopping()
        if isinstance(reason, BaseException):
            self._failure = reason
        if self._body_scope is not None:
            self._body_scope.cancel()

    def _on_loop_thread(self) -> bool:
        return self._threads.on_loop_thread()

    # -- public API ------------------------------------------------------
    @property
    def is_running(self) -> bool:
        return self._state == "running"

    def ref(self, path: str) -> ActorRef:
        """The ref of the actor at `path` (``/app/worker``); `ActorNotFound` if none.

        A supervisor with a `front` child (e.g. a pool) is addressed through it.
        """
        cell = self._lookup(path)
        while isinstance(cell, SupervisorCell) and cell.sup.front is not None:
            front = next((c for c in cell.children if c.name == cell.sup.front), None)
            if front is None:
                raise ActorNotFound(f"{cell.path} has no running {cell.sup.front!r} child now")
            cell = front
        return cell.ref

    def snapshot(self) -> TreeSnapshot:
        """The whole tree, its dead-letter counts and the loop's health, right now."""
        return take_snapshot(self)

    def which_children(self, path: str) -> list[ChildInfo]:
        """The children of the supervisor at `path`, in start order."""
        cell = self._lookup(path)
        if not isinstance(cell, SupervisorCell):
            raise ValueError(f"{cell.path} is an actor, not a supervisor: it has no children")
        return cell.which_children()

    async def start_child(self, parent: str, spec: ChildSpec | Supervisor) -> ActorRef:
        """Add a dynamic child under the supervisor at `parent` and start it.

        Raises the child's start error, or ValueError if the name is taken.
        Dynamic children are not re-created when their supervisor restarts.
        """
        cell = self._lookup(parent)
        if not isinstance(cell, SupervisorCell):
            raise ValueError(f"{cell.path} is an actor, not a supervisor: it cannot have children")
        if cell is self._root or cell.path.startswith("/" + RESERVED):
            raise ValueError(
                f"{cell.path} is managed by the runtime; add children to your own tree"
            )
        if not isinstance(spec, ChildSpec | Supervisor):
            raise TypeError(f"start_child needs a child(...) spec or a Supervisor, got {spec!r}")
        return await self._ask_supervisor(cell, "start_child", spec)  # type: ignore[no-any-return]

    async def terminate_child(self, path: str) -> None:
        """Stop the actor at `path` (graceful, within its shutdown timeout) and remove it."""
        cell = self._lookup(path)
        parent = cell.parent
        if parent is None or parent is self._root or cell.path.startswith("/" + RESERVED):
            raise ValueError(f"{cell.path} is managed by the runtime and cannot be terminated")
        await self._ask_supervisor(parent, "terminate_child", cell)

    async def _ask_supervisor(self, cell: SupervisorCell, op: str, arg: Any) -> Any:
        from .cell import Control

        if not self.is_running:
            raise RuntimeClosed(f"system {self.name!r} is not running")
        reply = Reply(lambda _value: None)
        cell.mailbox.put_system(Control(op, arg, reply))
        return await reply.wait(float("inf"), f"{op} at {cell.path}")

    def publish(
        self,
        topic: str,
        payload: Any = None,
        *,
        correlation_id: str | None = None,
        **metadata: Any,
    ) -> int:
        """Publish an event; callable from the trio thread and from any other thread.

        On the trio thread it never waits (like `ctx.publish_nowait`).  From a
        foreign thread it goes through the bus actor's mailbox, blocks that
        thread while subscribers' ``block`` mailboxes are full, and returns
        once delivered.  Returns the number of subscribers delivered to.
        """
        if self._on_loop_thread():
            return self.bus.publish_nowait(
                topic, payload, correlation_id=correlation_id, metadata=metadata
            )
        from .bus import check_topic

        check_topic(topic)
        bus = self._bus_cell
        if bus is None:
            raise RuntimeClosed(f"system {self.name!r} is not running")
        request = PublishRequest(topic, payload, correlation_id, dict(metadata))
        return self._threads.ask(bus, request, None)  # type: ignore[no-any-return]

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
        (queueing included) raises `AskTimeout` and abandons the call.
        """
        target = self.ref(bridge) if bridge else self._default_bridge()
        deadline = float("inf") if timeout is None else trio.current_time() + timeout
        call = BlockingCall(fn, args, kwargs, deadline)
        try:
            return await target.ask(call, timeout=timeout)
        except AskTimeout as exc:
            call.cancel()
            name = getattr(fn, "__qualname__", repr(fn))
            raise AskTimeout(
                f"{name} did not finish within {timeout}s on {target.path}; it was abandoned"
            ) from exc.__cause__
        except BaseException:
            call.cancel()  # cancelled here: the bridge lets go of it
            raise

    def _default_bridge(self) -> ActorRef:
        cell = self._bridge_cell
        if cell is None or cell.finalized:
            cell = self._lookup(f"/{RESERVED}/bridge")
            self._bridge_cell = cell
        return cell.ref

    def stop(self) -> None:
        """Begin a graceful stop: children in reverse start order, then ``/system``."""
        if self.is_running:
            self.shutting_down = True
            self._threads.stopping()
            self._root.request_stop("shutdown")

    # -- running ---------------------------------------------------------
    def info(self) -> dict[str, Any]:
        """Who this system is: name, pid, uptime (s) and how many actors it has."""
        return {
            "name": self.name,
            "pid": os.getpid(),
            "uptime": time.time() - self.started_at if self.started_at else 0.0,
            "actors": len(self._cells),
            "running": self.is_running,
        }

    def _publish_blocked(self, steps: list[BlockedStep]) -> None:
        """Publish ``system.loop.blocked`` for long steps the loop monitor saw."""
        if self.is_running:
            for step in steps:
                self.bus.system_event(
                    "system.loop.blocked",
                    {"task": step.task, "seconds": step.seconds, "at": step.at},
                )

    async def _serve(self, signals: AsyncIterator[int] | None) -> None:
        """Wait until the system stops; a first signal stops it gracefully, a second kills it."""
        if signals is None:
            await trio.sleep_forever()
            return
        seen = 0
        async for _ in signals:
            seen += 1
            if seen == 1:
                self.stop()
            else:
                self._kill()
                raise KeyboardInterrupt

    def _kill(self) -> None:
        scope = self._root._kill_scope
        if scope is not None:
            scope.cancel()


def _unwrap(group: BaseExceptionGroup[BaseException]) -> BaseException:
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


@asynccontextmanager
async def open_system(
    tree: Supervisor,
    *,
    name: str | None = None,
    control: bool = False,
    control_dir: str | os.PathLike[str] | None = None,
    metrics_port: int | None = None,
    blocked_after: float = 0.05,
    stuck_after: float = 10.0,
) -> AsyncIterator[System]:
    """Run `tree` for the body of the ``async with``; stop it gracefully on exit.

    If the tree fails (e.g. `RestartIntensityExceeded` at its root supervisor)
    the body is cancelled and that error is raised here, unwrapped.

    `control`: serve the JSON control socket (``troupe ls/tree/top/events``).
    `metrics_port`: serve Prometheus metrics on 127.0.0.1 (0 picks a port:
    `system.metrics.port`).  `blocked_after`: a task step longer than this
    publishes ``system.loop.blocked``.  `stuck_after`: a handler running longer
    is flagged ``stuck`` in the snapshot.
    """
    system = System(tree, name=name)
    system.stuck_after = stuck_after
    # Under a mock clock (tests) steps are still measured and counted, but not
    # published: virtual time and how fast this machine runs have nothing in common.
    mock = isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock)
    monitor = LoopMonitor(
        blocked_after=blocked_after, on_blocked=None if mock else system._publish_blocked
    )
    system._loop_monitor = monitor
    trio.lowlevel.add_instrument(monitor)
    start_error: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            system._threads.open(trio.lowlevel.current_trio_token())
            system._loop_thread = threading.get_ident()
            system._state = "running"
            if not mock:
                nursery.start_soon(monitor.probe, name="troupe loop probe")
            start_error = await nursery.start(system._root.run, name="/")
            if start_error is None:
                system.started_at = time.time()
                if control:
                    folder = pathlib.Path(control_dir) if control_dir is not None else None
                    system.control = ControlServer(system, folder)
                    await nursery.start(system.control.serve, name="troupe control socket")
                if metrics_port is not None:
                    system.metrics = MetricsServer(system, metrics_port)
                    await nursery.start(system.metrics.serve, name="troupe metrics")
                system._body_scope = nursery.cancel_scope
                try:
                    yield system
                finally:
                    system.stop()
                    await system._root.wait_done()
            nursery.cancel_scope.cancel()
            # Everything stops for good: what is still queued goes to dead letters,
            # waiting asks fail, and threads still calling in get RuntimeClosed.
            system._state = "closed"
            system._root.finalize("shutdown")
            system._threads.close()
    except BaseExceptionGroup as group:
        if system._failure is not None:
            raise system._failure from None
        raise _unwrap(group) from None
    finally:
        if system._state != "closed":
            system._state = "closed"
            system._root.finalize("shutdown")
            system._threads.close()
        trio.lowlevel.remove_instrument(monitor)
    if system._failure is not None:
        raise system._failure
    if start_error is not None:
        raise start_error


def run(
    tree: Supervisor,
    *,
    name: str | None = None,
    control: bool = False,
    metrics_port: int | None = None,
) -> None:
    """Run `tree` until it is stopped (SIGINT/SIGTERM: gracefully; a second one: at once).

    `control=True` serves the control socket for ``troupe tree/top/events``;
    `metrics_port` serves Prometheus metrics.  Raises the tree's failure,
    e.g. `RestartIntensityExceeded`.
    """
    options: dict[str, Any] = {"name": name, "control": control, "metrics_port": metrics_port}

    async def main() -> None:
        if threading.current_thread() is not threading.main_thread():
            async with open_system(tree, **options) as system:
                await system._serve(None)
            return
        # Listen before the tree starts, so that a signal during start-up is not fatal.
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with open_system(tree, **options) as system:
                await system._serve(signals)

    trio.run(main)

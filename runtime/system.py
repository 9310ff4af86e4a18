"""The actor system: the root of the tree, the registry of paths, and its entry points."""

from __future__ import annotations

import random
import signal
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio
import trio.testing

from .cell import Cell
from .deadletters import DeadLetterOffice, DeadLetters
from .errors import ActorNotFound, RuntimeClosed
from .messages import ExitReason, Reply
from .monitor import LoopMonitor, TreeSnapshot, take_snapshot
from .ref import ActorRef
from .supervisor import ChildInfo, ChildSpec, Supervisor, SupervisorCell, child
from .threads import ThreadGate

RESERVED = "system"


def _system_tree() -> Supervisor:
    return Supervisor(
        RESERVED,
        strategy="one_for_one",
        children=[child(DeadLetters, name="deadletters")],
    )


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
        self._cells: dict[str, Cell] = {}
        self._rng = random.Random()
        self._state = "new"  # -> running -> closed
        self._failure: BaseException | None = None
        self._body_scope: trio.CancelScope | None = None
        self._loop_monitor: LoopMonitor | None = None
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
        """The ref of the actor at `path` (``/app/worker``); `ActorNotFound` if none."""
        return self._lookup(path).ref

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

    def stop(self) -> None:
        """Begin a graceful stop: children in reverse start order, then ``/system``."""
        if self.is_running:
            self._threads.stopping()
            self._root.request_stop("shutdown")

    # -- running ---------------------------------------------------------
    async def _serve(self, *, handle_signals: bool) -> None:
        """Wait until the system stops; SIGINT/SIGTERM stop it gracefully, twice kills it."""
        if not handle_signals or threading.current_thread() is not threading.main_thread():
            await trio.sleep_forever()
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
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
async def open_system(tree: Supervisor, *, name: str | None = None) -> AsyncIterator[System]:
    """Run `tree` for the body of the ``async with``; stop it gracefully on exit.

    If the tree fails (e.g. `RestartIntensityExceeded` at its root supervisor)
    the body is cancelled and that error is raised here, unwrapped.
    """
    system = System(tree, name=name)
    monitor = LoopMonitor()
    system._loop_monitor = monitor
    trio.lowlevel.add_instrument(monitor)
    start_error: BaseException | None = None
    try:
        async with trio.open_nursery() as nursery:
            system._threads.open(trio.lowlevel.current_trio_token())
            system._state = "running"
            if not isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock):
                nursery.start_soon(monitor.probe, name="troupe loop probe")
            start_error = await nursery.start(system._root.run, name="/")
            if start_error is None:
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


def run(tree: Supervisor, *, name: str | None = None) -> None:
    """Run `tree` until it is stopped (SIGINT/SIGTERM: gracefully; a second one: at once).

    Raises the tree's failure, e.g. `RestartIntensityExceeded`.
    """

    async def main() -> None:
        async with open_system(tree, name=name) as system:
            await system._serve(handle_signals=True)

    trio.run(main)

"""`ActorRef`: the handle to a slot in the tree, valid across restarts."""

from __future__ import annotations

from threading import get_ident
from typing import TYPE_CHECKING, Any

import trio

from .errors import ActorStopped, AskTimeout
from .messages import Ask, Reply

if TYPE_CHECKING:
    from .cell import Cell


class ActorRef:
    """Send messages to the actor at `path`.

    A ref names a slot, not an incarnation: it keeps working while the actor
    restarts, and its messages wait in the slot's mailbox meanwhile.
    """

    __slots__ = ("_cell",)

    def __init__(self, cell: Cell) -> None:
        self._cell = cell

    @property
    def path(self) -> str:
        return self._cell.path

    @property
    def name(self) -> str:
        return self._cell.name

    @property
    def is_alive(self) -> bool:
        """True while the slot exists (also while it restarts) and the system runs."""
        cell = self._cell
        return not cell.finalized and cell.system.is_running

    @property
    def is_busy(self) -> bool:
        """Whether the actor is handling a message right now (trio thread only)."""
        return self._cell.busy

    @property
    def mailbox_depth(self) -> int:
        """Messages waiting in the mailbox now (trio thread only; e.g. for routing)."""
        return self._cell.mailbox.depth

    def __repr__(self) -> str:
        return f"<ActorRef {self._cell.path}>"

    def tell(self, msg: Any, *, timeout: float | None = None) -> None:
        """Fire and forget, from the trio thread or any other thread.

        On the trio thread it never waits: a full ``block`` mailbox raises
        `MailboxFull` (use `send` to wait).  From another thread a full
        ``block`` mailbox blocks *that* thread until there is room, or
        `timeout` seconds, then `MailboxFull`; `RuntimeClosed` once the
        system has stopped.
        """
        cell = self._cell
        if get_ident() != cell.system._loop_thread:
            cell.system._threads._inject(cell.mailbox, msg, timeout, cell.path)
            return
        mb = cell.mailbox
        user = mb.user
        if len(user) + mb.reserved < mb.capacity and user and not mb.closed:
            # The hot path, inlined from MailboxQueue.put: a non-empty, open
            # mailbox with room (an empty one may still need its own deque).
            user.append(msg)
            if len(user) > mb.high_water:
                mb.high_water = len(user)
            return
        mb.put(msg)

    async def send(self, msg: Any) -> None:
        """Like `tell`, but waits for mailbox room when the policy is ``block``."""
        await self._cell.mailbox.put_wait(msg)

    async def ask(self, msg: Any, timeout: float | None = 5.0) -> Any:
        """Send `msg` and wait for the value `receive` returns.

        Raises `AskTimeout`, `ActorCrashed` (the handler's error as
        ``__cause__``), `UnhandledMessage`, `ActorStopped` or `MailboxFull`.
        """
        cell = self._cell
        if cell.finalized:
            raise ActorStopped(f"{cell.path} has stopped; cannot ask it {type(msg).__name__}")
        deadline = trio.current_time() + timeout if timeout is not None else float("inf")
        reply = Reply(cell.late_reply)
        item = Ask(msg, reply)
        mailbox = cell.mailbox
        if mailbox.overflow != "block" or mailbox.has_room():
            mailbox.put(item)  # the fast path; waiting for the reply is the checkpoint
        else:
            with trio.move_on_at(deadline) as scope:
                await mailbox.put_wait(item)
            if scope.cancelled_caught:  # cancelled only before the message was enqueued
                reply.state = "abandoned"
                raise AskTimeout(
                    f"{cell.path}'s mailbox stayed full for {timeout:g}s; "
                    f"{type(msg).__name__} was not sent"
                )
        return await reply.wait(
            deadline, f"{type(msg).__name__} from {cell.path} within {timeout}s"
        )

    def ask_blocking(self, msg: Any, timeout: float | None = 5.0) -> Any:
        """`ask` for plain threads: blocks the calling thread, never the loop."""
        cell = self._cell
        if cell.system._on_loop_thread():
            raise RuntimeError(
                "ask_blocking() would deadlock on the trio thread: use `await ref.ask(msg)` "
                "there, and keep ask_blocking() for plain threads"
            )
        return cell.system._threads.ask(cell, msg, timeout)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ActorRef) and other._cell is self._cell

    def __hash__(self) -> int:
        return id(self._cell)

"""`ActorRef`: the handle to a slot in the tree, valid across restarts."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from functools import partial
from threading import get_ident
from typing import TYPE_CHECKING, Any

import trio

from .errors import ActorStopped, AskTimeout, MailboxFull, RuntimeClosed
from .messages import Ask, Reply, ReplySlot
from .spec import check_timeout
from .waits import begin_wait, end_ask, end_wait, waiting_slot

if TYPE_CHECKING:
    from .cell import Cell
    from .host import Host


class ActorRef:
    """Send messages to the actor at `path`.

    A ref names a slot, not an incarnation: it keeps working while the actor
    restarts, and its messages wait in the slot's mailbox meanwhile.
    """

    __slots__ = ("__weakref__", "_cell")  # weak: e.g. a pool's size, kept per router slot

    def __init__(self, cell: Cell) -> None:
        self._cell = cell

    @property
    def path(self) -> str:
        return self._cell.path

    @property
    def name(self) -> str:
        return self._cell.name

    @property
    def node(self) -> str | None:
        """The cluster node the actor lives on (None without a cluster)."""
        return self._cell.host.node

    @property
    def url(self) -> str | None:
        """``troupe://<node>/<path>`` on a cluster (None without one)."""
        node = self._cell.host.node
        return None if node is None else f"troupe://{node}{self._cell.path}"

    @property
    def is_alive(self) -> bool:
        """True while the slot has an incarnation or one is coming (also while it
        restarts) and the system runs; False once it stopped for good, and while a
        ``transient`` child that exited normally rests."""
        cell = self._cell
        return not cell.absent and cell.host.is_running

    @property
    def is_busy(self) -> bool:
        """Whether the actor is handling a message right now (trio thread only)."""
        return bool(getattr(self._cell.behaviour, "busy", False))

    @property
    def mailbox_depth(self) -> int:
        """Messages waiting in the mailbox now (trio thread only; e.g. for routing)."""
        return self._cell.mailbox.depth

    def __repr__(self) -> str:
        return f"<ActorRef {self._cell.path}>"

    def _check_open(self, what: Any) -> None:
        if not self._cell.host.is_running:
            raise RuntimeClosed(
                f"actor system {self._cell.host.name!r} is not running: "
                f"{type(what).__name__} to {self._cell.path} was not sent"
            )

    def tell(self, msg: Any, *, timeout: float | None = None) -> None:
        """Fire and forget, from the trio thread or any other thread.

        On the trio thread it never waits: a full ``block`` mailbox raises
        `MailboxFull` (use `send` to wait).  From another thread a full
        ``block`` mailbox blocks *that* thread until there is room, or
        `timeout` seconds (0: only if there is room now; None or ``inf``: no
        limit), then `MailboxFull`; interrupted while it waits (Ctrl-C), the
        message is taken back unless the loop had delivered it already.
        Raises `RuntimeClosed` once the system has stopped (nothing is
        dead-lettered then), `ValueError` for a negative or NaN timeout.
        """
        cell = self._cell
        gate = cell.host.gate
        if get_ident() != gate.loop_thread:
            gate.tell(cell.mailbox, msg, check_timeout(timeout), cell.path)
            return
        if timeout is not None:
            check_timeout(timeout)
        if cell.finalized:
            self._check_open(msg)
        cell.mailbox.put(msg)

    async def send(self, msg: Any) -> None:
        """Like `tell`, but waits for mailbox room when the policy is ``block``.

        Waits in the mailbox's FIFO line of senders.  Cancelled while waiting,
        nothing was sent.  If the actor stops for good meanwhile, the message
        is dead-lettered as ``stopped`` (and `send` returns).  Raises
        `Deadlock` (a `MailboxFull`) if this wait would close a cycle of
        actors waiting on each other, `MailboxFull` under ``fail``,
        `RuntimeClosed` once the system has stopped.
        """
        cell = self._cell
        if cell.finalized:
            self._check_open(msg)
        await send_into(cell, msg, f"sending {type(msg).__name__}")

    async def ask(self, msg: Any, timeout: float | None = 5.0) -> Any:
        """Send `msg` and wait for the value `receive` returns, all within `timeout`.

        Waits for mailbox room like `send`, then for the reply.  Raises
        `AskTimeout` (a `TimeoutError`), `ActorCrashed` (the handler's error as
        ``__cause__``), `UnhandledMessage`, `ActorStopped`, `MailboxFull`,
        `Deadlock` (the wait would close a cycle: nothing was sent),
        `RuntimeClosed`, or `ValueError` for a negative or NaN timeout (before
        anything is queued).  Cancelled, the reply is dropped (a late reply
        goes to dead letters as ``timeout``).
        """
        limit = check_timeout(timeout)
        cell = self._cell
        if cell.finalized:
            self._check_open(msg)
            raise ActorStopped(f"{cell.path} has stopped; cannot ask it {type(msg).__name__}")
        deadline = trio.current_time() + limit if limit != math.inf else math.inf
        me = waiting_slot()
        if me is not None:
            begin_wait(me, cell, f"{me.path} asking {type(msg).__name__}")
        try:
            # the reply ends the edge at once, not when this task next runs (the edge may
            # lead elsewhere by then: a forward hands the ask on)
            reply = Reply(cell.late_reply, me, None if me is None else partial(end_ask, me))
            item = Ask(msg, reply)
            mailbox = cell.mailbox
            if not mailbox.must_wait():
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
                deadline,
                lambda: f"{type(msg).__name__} from {cell.path} within {timeout}s",
                cell.host.deadlines,
            )
        finally:
            if me is not None:
                end_ask(me)

    def ask_blocking(self, msg: Any, timeout: float | None = 5.0) -> Any:
        """`ask` for plain threads: blocks the calling thread, never the loop.

        Blocks until the reply, for at most `timeout` seconds in all (waiting for
        mailbox room included; None or ``inf``: no limit).  Like `tell`, it keeps
        this thread's order: the ask arrives after what the thread sent before.
        Raises what `ask` raises, and `RuntimeClosed` when the system stops
        before the answer; given up on (a timeout, or the thread interrupted,
        e.g. by Ctrl-C), a reply that comes later is dead-lettered as
        ``timeout``.  On the trio thread it raises `RuntimeError` at once
        instead of deadlocking.
        """
        cell = self._cell
        gate = cell.host.gate
        if get_ident() == gate.loop_thread:
            raise RuntimeError(
                "ask_blocking() would deadlock on the trio thread: use `await ref.ask(msg)` "
                "there, and keep ask_blocking() for plain threads"
            )
        return gate.ask(cell, msg, check_timeout(timeout))

    def ask_future(self, msg: Any, timeout: float | None = 5.0) -> Future[Any]:
        """`ask` for plain threads that do not want to block: a `concurrent.futures.Future`.

        Returns once the message is on its way, without waiting for the reply:
        at once, unless this thread must wait for mailbox room the way its
        `tell` would (a full ``block`` mailbox).  The future then completes
        with the reply, or fails with what `ask_blocking` would raise
        (`AskTimeout` after `timeout` seconds, measured on the loop's clock;
        `ActorCrashed`, `UnhandledMessage`, `ActorStopped`, `MailboxFull`,
        `RuntimeClosed`).  No thread is used per call: the loop settles the
        future, so futures from one thread can be waited on together
        (`concurrent.futures.wait`, `as_completed`).  Like `tell`, it keeps
        this thread's order: the ask arrives after what the thread sent before.
        ``future.cancel()`` gives up on the reply (a late one is dead-lettered
        as ``timeout``); the message is not taken back.

        Raises at once only `ValueError` (a negative or NaN timeout) and, on
        the trio thread, `RuntimeError` (use ``await ref.ask(msg)`` there).
        """
        cell = self._cell
        host = cell.host
        gate = host.gate
        if gate.on_loop_thread():
            raise RuntimeError(
                "ask_future() is for plain threads: on the trio thread use `await ref.ask(msg)`"
            )
        limit = check_timeout(timeout)
        deadline = math.inf if limit == math.inf else time.monotonic() + limit
        reply = FutureReply(host, cell.late_reply)
        try:
            # Not gate.ask's way (a request the loop answers, while this thread waits
            # for the reply): a thread's lane holds one request at a time, and a
            # second future from this thread would overwrite the first.  So a thread
            # with no credit waits, as for a tell, for the loop to answer its request.
            gate.tell(cell.mailbox, Ask(msg, reply), limit, cell.path)
        except MailboxFull as exc:
            error: BaseException = exc
            if cell.mailbox.overflow == "block":
                error = AskTimeout(
                    f"{cell.path}'s mailbox stayed full for {limit:g}s; "
                    f"{type(msg).__name__} was not sent"
                )
                error.__cause__ = exc
            reply.future.set_exception(error)
            return reply.future
        except RuntimeClosed as exc:
            reply.future.set_exception(exc)
            return reply.future
        remaining = max(0.0, deadline - time.monotonic())
        what = f"{type(msg).__name__} from {cell.path} within {timeout}s"
        gate.call_soon(partial(reply.start_timer, remaining, what))  # False: the loop is gone,
        # and closing the system failed every reply it held (this one too)
        return reply.future

    def deliver_ask(self, msg: Any, reply: ReplySlot) -> None:
        """Queue an ask whose answer goes to `reply` (e.g. one that came from another
        node), without waiting: the loop thread only.  Raises `MailboxFull` when
        the mailbox cannot take it now, `RuntimeClosed` once the system stopped;
        for an actor that stopped for good it is dead-lettered and `reply` fails."""
        cell = self._cell
        if cell.finalized:
            self._check_open(msg)
        cell.mailbox.put(Ask(msg, reply))

    async def send_ask(self, msg: Any, reply: ReplySlot) -> None:
        """`deliver_ask`, waiting for room in a ``block`` mailbox as `send` does: in the
        mailbox's line of senders.  Cancelled while waiting, nothing was queued.
        Raises `MailboxFull` under ``fail``, `Deadlock`, `RuntimeClosed`."""
        cell = self._cell
        if cell.finalized:
            self._check_open(msg)
        await send_into(cell, Ask(msg, reply), f"asking {type(msg).__name__}")

    # how a local actor watches this ref (a remote ref's node watches for it)
    def _watch_from(self, cell: Cell) -> None:
        cell.watch(self._cell)

    def _unwatch_from(self, cell: Cell) -> None:
        cell.unwatch(self._cell)

    def __eq__(self, other: object) -> bool:
        return other.__class__ is ActorRef and other._cell is self._cell

    def __hash__(self) -> int:
        return id(self._cell)


def _notify_cancel(future: Future[Any]) -> None:
    if future.cancelled():
        try:
            future.set_running_or_notify_cancel()
        except RuntimeError:  # already told
            pass


class FutureReply:
    """The `ReplySlot` of `ActorRef.ask_future`: a `concurrent.futures.Future` settled
    on the loop thread, with a timer (a trio system task) that fails it with
    `AskTimeout` at its deadline.  Its owner may cancel the future: both count as
    giving up, and a reply that comes later goes to `on_late`."""

    __slots__ = ("_abandoned", "_host", "_on_late", "_timer", "future")
    asker = None  # a thread is outside the wait-for graph (rule 5)

    def __init__(self, host: Host, on_late: Callable[[Any], None]) -> None:
        self.future: Future[Any] = Future()
        # a cancel by its owner must wake concurrent.futures.wait/as_completed: they
        # are told only through set_running_or_notify_cancel
        self.future.add_done_callback(_notify_cancel)
        self._host = host
        self._on_late = on_late
        self._abandoned = False  # timed out (a cancelled future is abandoned too)
        self._timer: trio.CancelScope | None = None

    @property
    def state(self) -> str:
        """``pending``, ``done``, or ``abandoned`` (timed out, or cancelled by its owner)."""
        future = self.future
        if self._abandoned or future.cancelled():
            return "abandoned"
        return "done" if future.done() else "pending"

    def send(self, value: Any) -> bool:
        if not self._abandoned:
            try:
                self.future.set_result(value)
            except InvalidStateError:  # cancelled by its owner
                pass
            else:
                self._settled()
                return True
        if self.state == "abandoned":
            self._on_late(value)
        return False

    def fail(self, error: BaseException) -> bool:
        if isinstance(error, ActorStopped) and self._host.shutting_down:
            closed = RuntimeClosed("the actor system stopped before replying")
            closed.__cause__ = error
            error = closed
        if self._abandoned:
            return False
        try:
            self.future.set_exception(error)
        except InvalidStateError:
            return False
        self._settled()
        return True

    def _settled(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def start_timer(self, seconds: float, what: str) -> None:
        """Loop thread (from `call_soon`): fail the future at the deadline, or with
        `RuntimeClosed` if the trio run ends first; nothing once it is settled."""
        if self.state != "pending":
            return
        try:
            trio.lowlevel.spawn_system_task(self._expire, seconds, what, name="troupe ask_future")
        except RuntimeError:  # the run is ending
            self.fail(RuntimeClosed("the actor system stopped before replying"))

    async def _expire(self, seconds: float, what: str) -> None:
        try:
            with trio.CancelScope() as scope:
                self._timer = scope
                if self.state == "pending":  # settled before this task ran: done
                    if seconds == math.inf:
                        await trio.sleep_forever()
                    await trio.sleep(seconds)
                    if self.state == "pending":
                        self._abandoned = True
                        try:
                            self.future.set_exception(AskTimeout(f"no reply to {what}"))
                        except InvalidStateError:  # cancelled by its owner meanwhile
                            pass
        except trio.Cancelled:  # the run ends: nobody will reply any more
            self.fail(RuntimeClosed("the actor system stopped before replying"))
            raise


async def send_into(cell: Cell, item: Any, what: str) -> None:
    """Put `item` into `cell`'s mailbox, waiting in its line if it must (see `put_wait`).

    A handler that must wait is an edge of the wait-for graph for as long as
    it waits, and a wait that would close a cycle raises `Deadlock` before
    anything is queued (rule 5).  A wait that is not needed costs nothing.
    """
    mailbox = cell.mailbox
    if not mailbox.must_wait():
        await mailbox.put_wait(item)
        return
    me = waiting_slot()
    if me is None:
        await mailbox.put_wait(item)
        return
    begin_wait(me, cell, f"{me.path} {what}", to_send=True)
    try:
        await mailbox.put_wait(item)
    finally:
        end_wait(me, cell)

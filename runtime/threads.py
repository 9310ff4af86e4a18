"""The foreign-thread gate: the one place where foreign threads hand messages to the loop.

The only module of the runtime that uses threading locks.

Rule 3 of the design: a foreign thread never touches runtime state.  It
appends to a small injection queue guarded by one `threading.Lock` and wakes
the loop with `TrioToken.run_sync_soon`, once per batch.  The lock is never
held across anything that can block (waiting on the condition releases it).

Backpressure without touching mailboxes from threads: for a ``block`` or
``fail`` mailbox a thread needs a *credit* before it may enqueue.  Credits are
handed out by the loop thread, which reserves that much room in the mailbox
(`MailboxQueue.reserve`), so messages in flight from threads are counted
against capacity and can always be delivered in order.  A thread without
credit asks the loop for some and waits; ``fail`` gets `MailboxFull` if the
loop has no room, ``block`` waits until the actor frees some.
"""

from __future__ import annotations

import heapq
import itertools
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn

import trio

from .errors import ActorStopped, AskTimeout, MailboxFull, RuntimeClosed
from .mailbox import MailboxQueue
from .messages import Ask

if TYPE_CHECKING:
    from .cell import Cell

LANE_CAPACITY = 16_384
"""Messages one thread may have waiting for the loop, at most (for dropping
mailboxes; for ``block`` and ``fail`` ones the mailbox's own room is the bound)."""

CREDIT_CHUNK = 64
"""Room a thread takes for itself at once, so that most tells need no lock."""

GRANT_MAX = 1024
"""Most credits the loop hands out per mailbox at a time."""

DRAIN_MAX = 2048
"""Most messages from threads delivered in one step of the loop."""


class ThreadReply:
    """What a thread in `ask_blocking` waits on.  Settled on the loop thread.

    The wait is a plain lock, held from creation until the reply is settled.
    """

    __slots__ = ("_done", "_error", "_gate", "_on_late", "_value", "state")
    asker = None  # a thread is outside the wait-for graph (rule 5)

    def __init__(self, gate: ThreadGate, on_late: Callable[[Any], None]) -> None:
        self._gate = gate
        self._done = threading.Lock()
        self._done.acquire()
        self._value: Any = None
        self._error: BaseException | None = None
        self._on_late = on_late
        self.state = "pending"

    def send(self, value: Any) -> bool:
        with self._gate._lock:
            if self.state == "pending":
                self._value = value
                self.state = "done"
                self._done.release()
                return True
            late = self.state == "abandoned"
        if late:
            self._on_late(value)
        return False

    def fail(self, error: BaseException) -> bool:
        if isinstance(error, ActorStopped) and self._gate._stopping:
            closed = RuntimeClosed("the actor system stopped before replying")
            closed.__cause__ = error
            error = closed
        with self._gate._lock:
            if self.state != "pending":
                return False
            self._error = error
            self.state = "done"
            self._done.release()
            return True

    def wait(self, deadline: float, what: str) -> Any:
        _sleep(self._done, deadline)
        with self._gate._lock:
            if self.state != "done":
                self.state = "abandoned"
                raise AskTimeout(f"no reply to {what}")
        if self._error is not None:
            raise self._error
        return self._value


def _sleep(lock: threading.Lock, deadline: float) -> bool:
    """Acquire `lock`, giving up at `deadline` (a `time.monotonic` time; inf: never).

    A wait longer than the platform allows (`threading.TIMEOUT_MAX`) is made of
    several, rather than failing with OverflowError.
    """
    while True:
        if deadline == math.inf:
            return lock.acquire()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return lock.acquire(blocking=False)
        if lock.acquire(timeout=min(remaining, threading.TIMEOUT_MAX)):
            return True


def _number(entry: tuple[int, MailboxQueue, Any]) -> int:
    return entry[0]


class _Lane:
    """One foreign thread's own FIFO into the loop: only that thread appends to it,
    only the loop pops from it, so a tell takes no lock (deque ops are atomic)."""

    __slots__ = ("credits", "items", "thread")

    def __init__(self) -> None:
        self.items: deque[tuple[int, MailboxQueue, Any]] = deque()
        self.credits: dict[MailboxQueue, int] = {}  # room this thread holds, per mailbox
        self.thread = threading.current_thread()


class ThreadGate:
    """Carries tells and asks from foreign threads onto the trio thread.

    Each foreign thread appends to its own lane (FIFO per thread, no lock);
    the lock guards only what threads share: the lane list, the credits not
    yet handed to a thread, requests for credit, and the wake-up flag.  One
    `run_sync_soon` wakes the loop for everything queued since the last one.

    Causal order across threads is kept too: every message takes a number
    from one atomic counter, and a drain delivers, in number order, only
    messages numbered before the drain began.  A message whose sender's
    `tell` returned before another thread's `tell` began has the smaller
    number and was already in its lane, so it is delivered first.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._local = threading.local()
        self._lanes: list[_Lane] = []
        self._numbers = itertools.count()
        self._wake_scheduled = False
        self._wants: dict[MailboxQueue, None] = {}
        self._round = 0
        self._space_waiters = 0
        self._replies: set[ThreadReply] = set()
        self._granted: dict[MailboxQueue, int] = {}  # room granted, not yet taken by a thread
        self._token: trio.lowlevel.TrioToken | None = None
        self.loop_thread: int | None = None  # ident of the trio thread, once open
        self._open = False
        self._stopping = False
        self.wakeups = 0
        self.delivered = 0

    # -- lifecycle (loop thread) -----------------------------------------
    def on_loop_thread(self) -> bool:
        return threading.get_ident() == self.loop_thread

    def open(self, token: trio.lowlevel.TrioToken) -> None:
        self._token = token
        self.loop_thread = threading.get_ident()
        with self._lock:
            self._open = True

    def stopping(self) -> None:
        """The system began to stop: asks it can no longer answer fail with RuntimeClosed."""
        self._stopping = True

    def close(self) -> None:
        """Refuse new calls, account for what is still queued, release every waiting thread."""
        self._stopping = True
        with self._lock:
            self._open = False
            lanes = list(self._lanes)
            replies = list(self._replies)
            self._replies.clear()
            self._wants.clear()
            self._granted.clear()
            self._cond.notify_all()
        # Threads that append after this point see the gate closed and take their
        # message back (see _inject); what is here now is delivered (and, the
        # mailboxes being closed, dead-lettered as `stopped`).
        leftover: list[tuple[int, MailboxQueue, Any]] = []
        for lane in lanes:
            while True:
                try:
                    leftover.append(lane.items.popleft())
                except IndexError:
                    break
        leftover.sort(key=_number)
        self._deliver_run(leftover)
        for reply in replies:
            reply.fail(RuntimeClosed("the actor system stopped before replying"))

    @property
    def queued(self) -> int:
        """Messages from threads not yet handed to their mailboxes (loop thread)."""
        return sum(len(lane.items) for lane in self._lanes)

    # -- the foreign side --------------------------------------------------
    def ask(self, cell: Cell, msg: Any, timeout: float) -> Any:
        """`ask_blocking`: block this thread until the reply, within `timeout` (inf: none)."""
        deadline = math.inf if timeout == math.inf else time.monotonic() + timeout
        reply = ThreadReply(self, cell.late_reply)
        with self._lock:
            self._replies.add(reply)
        try:
            try:
                self.tell(cell.mailbox, Ask(msg, reply), timeout, cell.path)
            except MailboxFull as exc:
                if cell.mailbox.overflow == "block":
                    raise AskTimeout(
                        f"{cell.path}'s mailbox stayed full for {timeout:g}s; "
                        f"{type(msg).__name__} was not sent"
                    ) from exc
                raise
            return reply.wait(deadline, f"{type(msg).__name__} from {cell.path} within {timeout}s")
        finally:
            with self._lock:
                self._replies.discard(reply)

    def _lane(self) -> _Lane:
        lane: _Lane | None = getattr(self._local, "lane", None)
        if lane is None:
            lane = self._local.lane = _Lane()
            with self._lock:
                self._lanes.append(lane)
        return lane

    def tell(self, mailbox: MailboxQueue, item: Any, timeout: float, path: str) -> None:
        """A foreign thread's tell (`ActorRef.tell` calls this directly).

        Blocks this thread while a ``block`` mailbox is full, up to `timeout`
        seconds (inf: no limit; 0: only if there is room now), then raises
        `MailboxFull`; raises `RuntimeClosed` once the gate is closed.
        """
        if not self._open:
            self._closed()
        lane = getattr(self._local, "lane", None) or self._lane()
        if mailbox.credited:  # block / fail: spend room reserved for this thread
            held = lane.credits.get(mailbox, 0)
            if held:
                lane.credits[mailbox] = held - 1
            else:
                self._take_credit(lane, mailbox, timeout, path)
        elif len(lane.items) >= LANE_CAPACITY:
            self._wait_for_lane(lane, timeout, path)
        entry = (next(self._numbers), mailbox, item)
        lane.items.append(entry)
        if not self._open:  # closed meanwhile: take it back unless close() took it
            self._take_back(lane, entry)
        if not self._wake_scheduled:
            with self._lock:
                if self._wake_scheduled:
                    return
                self._wake_scheduled = True
            try:
                self._token_call(self._drain)
            except RuntimeClosed:
                self._take_back(lane, entry)

    def _take_back(self, lane: _Lane, entry: tuple[int, MailboxQueue, Any]) -> None:
        """The gate closed under us: undo our append, or accept that close() has it."""
        items = lane.items
        try:
            if items and items[-1] is entry:
                items.pop()
                self._closed()
        except IndexError:
            pass  # the closing drain took it: it is accounted for as a dead letter

    def _closed(self) -> NoReturn:
        raise RuntimeClosed(f"actor system {self._name!r} is not running")

    def _check_open(self) -> None:
        if not self._open:
            self._closed()

    def _wait(self, deadline: float, what: str) -> None:
        """Lock held: wait on the condition (lock released meanwhile); MailboxFull past
        the deadline, RuntimeClosed if the gate closed."""
        remaining = None if deadline == math.inf else deadline - time.monotonic()
        if remaining is not None and remaining <= 0:
            raise MailboxFull(what)
        self._cond.wait(None if remaining is None else min(remaining, threading.TIMEOUT_MAX))
        self._check_open()

    def _wait_for_lane(self, lane: _Lane, timeout: float, path: str) -> None:
        deadline = math.inf if timeout == math.inf else time.monotonic() + timeout
        with self._lock:
            self._space_waiters += 1
            try:
                while len(lane.items) >= LANE_CAPACITY:
                    self._request_wake()
                    self._wait(deadline, f"this thread's queue is full; {path} was not sent to")
            finally:
                self._space_waiters -= 1

    def _take_credit(self, lane: _Lane, mailbox: MailboxQueue, timeout: float, path: str) -> None:
        """Get room for one message (and a few more for later) from what the loop granted."""
        deadline = math.inf if timeout == math.inf else time.monotonic() + timeout
        chunk = max(1, min(CREDIT_CHUNK, mailbox.capacity // 16))
        with self._lock:
            while True:
                self._check_open()
                granted = self._granted.get(mailbox, 0)
                if granted:
                    take = min(granted, chunk)
                    if granted > take:
                        self._granted[mailbox] = granted - take
                    else:
                        del self._granted[mailbox]
                    lane.credits[mailbox] = take - 1
                    return
                asked = self._round
                self._wants[mailbox] = None
                self._request_wake()
                if mailbox.overflow == "fail":
                    while self._round == asked:  # wait for the loop's answer, not for room
                        self._cond.wait()
                        self._check_open()
                    if not self._granted.get(mailbox):
                        raise MailboxFull(f"mailbox of {path} is full (overflow='fail')")
                else:
                    self._wait(deadline, f"mailbox of {path} stayed full (overflow='block')")

    def _request_wake(self) -> None:
        """Lock held: make sure a drain is coming."""
        if not self._wake_scheduled:
            self._wake_scheduled = True
            self._token_call(self._drain)

    def _token_call(self, fn: Callable[[], None]) -> None:
        """Wake the loop (non-blocking; safe with or without the lock held)."""
        assert self._token is not None
        try:
            self._token.run_sync_soon(fn)
        except trio.RunFinishedError:
            self._closed()

    # -- the loop side ---------------------------------------------------
    def _drain(self) -> None:
        """Loop thread: deliver a batch from the lanes, then answer requests for credit.

        At most `DRAIN_MAX` messages per call, so that a flood from threads
        never makes one long step of the loop; the rest gets another call.
        """
        self.wakeups += 1
        with self._lock:
            self._wake_scheduled = False  # before draining: a later append wakes us again
            lanes = self._lanes
            wants = self._wants
            self._wants = {}
            notify = bool(self._space_waiters)
        horizon = next(self._numbers)  # deliver only what was numbered before now
        batch: list[tuple[int, MailboxQueue, Any]] = []
        dead: list[_Lane] = []
        busy = [lane.items for lane in lanes if lane.items]
        if len(busy) == 1:
            items = busy[0]
            take = min(len(items), DRAIN_MAX)
            if items[take - 1][0] < horizon:  # the common case: all of it
                batch = [items.popleft() for _ in range(take)]
            else:
                while items and len(batch) < DRAIN_MAX and items[0][0] < horizon:
                    batch.append(items.popleft())
        elif busy:
            heads = [(items[0][0], i) for i, items in enumerate(busy)]
            heapq.heapify(heads)
            while heads and len(batch) < DRAIN_MAX:
                number, i = heads[0]
                if number >= horizon:
                    break
                items = busy[i]
                batch.append(items.popleft())
                if items:
                    heapq.heapreplace(heads, (items[0][0], i))
                else:
                    heapq.heappop(heads)
        for lane in lanes:
            if not lane.items and not lane.thread.is_alive():
                dead.append(lane)
        self._deliver_run(batch)
        self.delivered += len(batch)
        if dead:
            self._forget(dead)
        if any(lane.items for lane in lanes):
            with self._lock:
                self._request_wake()
        if not wants and not notify:
            return
        grants = [(mailbox, mailbox.reserve(GRANT_MAX)) for mailbox in wants]
        with self._lock:
            for mailbox, granted in grants:
                if granted:
                    self._granted[mailbox] = self._granted.get(mailbox, 0) + granted
                elif mailbox.overflow == "block":
                    mailbox.wait_for_threads()  # room_freed() will grant later
            self._round += 1
            self._cond.notify_all()

    def _forget(self, dead: list[_Lane]) -> None:
        """Lanes of threads that ended: drop them and give back the room they held."""
        with self._lock:
            self._lanes = [lane for lane in self._lanes if lane not in dead]
        for lane in dead:
            for mailbox, held in lane.credits.items():
                mailbox.unreserve(held)
            lane.credits.clear()

    def _deliver_run(self, entries: list[tuple[int, MailboxQueue, Any]]) -> None:
        """Deliver in order, handing runs for the same mailbox over together."""
        run: list[Any] = []
        target: MailboxQueue | None = None
        for _, mailbox, item in entries:
            if mailbox is not target:
                if run:
                    self._deliver(target, run)  # type: ignore[arg-type]
                    run = []
                target = mailbox
            run.append(item)
        if run:
            self._deliver(target, run)  # type: ignore[arg-type]

    @staticmethod
    def _deliver(mailbox: MailboxQueue, items: list[Any]) -> None:
        # put() cannot raise for the dropping policies and put_many_reserved() never
        # does: an error here would take the whole trio run down.
        if mailbox.credited:
            mailbox.put_many_reserved(items)
        else:
            for item in items:
                mailbox.put(item)

    def room_freed(self, mailbox: MailboxQueue) -> bool:
        """Loop thread, from `MailboxQueue`: room was made; grant some to blocked threads.

        Returns True once the threads need no more telling (room was granted).
        """
        low_water = max(1, min(GRANT_MAX, mailbox.capacity // 4))
        if mailbox.room() < low_water:
            return False
        granted = mailbox.reserve(GRANT_MAX)
        with self._lock:
            self._granted[mailbox] = self._granted.get(mailbox, 0) + granted
            self._cond.notify_all()
        return True

    def reclaim(self, mailbox: MailboxQueue) -> int:
        """Loop thread: take back granted room no thread has claimed (the loop needs it)."""
        with self._lock:
            return self._granted.pop(mailbox, 0)

__all__ = ["ThreadGate", "ThreadReply"]

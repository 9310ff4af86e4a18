"""The foreign-thread gate: the one place where foreign threads hand messages to the loop.

(Threads the runtime runs itself, the bridge's workers, the NATS client's and
the dashboard's, put their results in queues of their own and wake the loop
with one `run_sync_soon`; the loop drains them.  None touches runtime state.)

The other way, from the loop to a thread, goes `ThreadStream`: the bus's events
for a plain thread reading a stream (`ThreadedBus.stream`), in a bounded queue
that the loop appends to without ever waiting.

Rule 3 of the design: a foreign thread never touches runtime state.  It
appends to a small injection queue (its own *lane*) and wakes the loop with
`TrioToken.run_sync_soon`, once per batch.  The gate's lock is never held
across anything that can block (a waiting thread sleeps on a lock of its own,
with the gate's lock released).

Backpressure without touching mailboxes from threads: for a ``block`` or
``fail`` mailbox a thread needs a *credit* before it may enqueue, and only
the loop hands them out, reserving that much room in the mailbox
(`MailboxQueue.reserve`), so that messages in flight from threads are counted
against capacity and can always be delivered in order.

The loop lends room for a mailbox in a pool (up to `GRANT_MAX`), from which
threads take a chunk at a time (`CREDIT_CHUNK`) under the lock.  A thread
that finds no credit and an empty pool sends its message as a *request*: it
goes down the lane in its place, and the thread sleeps until the loop's drain
reaches it and answers that request.  Room (in the pool or the mailbox): the
loop delivers the message there and then, refills the pool and lends the
thread a chunk for its next tells.  No room: under ``fail`` the thread raises
`MailboxFull`; under ``block`` the message waits with its thread in the
mailbox's line, asleep, until the actor makes room (`room_freed`), the
thread's timeout passes, or the gate closes.  Nothing wakes a waiting thread
otherwise: no polling, no wake-up storms.

Credits are only lent, until the loop's next drain: every drain (or a
loop-side sender that finds the mailbox full, through `reclaim`) takes back
the pool and what threads did not use.  A thread spends a credit without the
lock, so it and the loop synchronise with a Dekker handshake on two plain
attributes of the lane: the thread raises ``busy``, then reads ``live``; the
loop clears ``live``, then reads ``busy``.  Either the thread sees its
credits are no longer live (and takes the lock) or the loop sees the flag
(and leaves that lane for its next drain, which the thread's tell is about
to schedule).  This relies on the interpreter running one bytecode at a time
(the GIL), as the lanes' lock-free deques do.

An `ask_blocking` takes no credit: its thread waits for the reply anyway, so
into a ``block`` or ``fail`` mailbox the ask always goes as a request
(delivered into free room with a plain put, failed, or lined up as above),
and the reply tells the outcome (into a dropping one it goes like a tell).
When nothing from any thread is on its way to the loop (no drain pending or
running), the request skips the lane: it goes in the gate's `handoffs`, and
one `run_sync_soon`, the thread's last step before it blocks, wakes the loop
to admit it.  The loop monitor admits it sooner, as the loop wakes up,
before trio runs the task that calls back (`LoopMonitor.serve_handoffs`), if
it goes straight into its mailbox: the actor is then scheduled in that very
batch of tasks, a whole turn of the loop earlier (one batch per ask, as
`trio.from_thread.run_sync` takes, not two).  The thread waits on its lane's
own `queue.SimpleQueue`; the loop settles the reply and puts it there.  One
token per reply (taken with an atomic `list.pop`) decides between the loop
settling it and the thread giving up at its deadline, without a lock.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from queue import Empty, SimpleQueue
from typing import TYPE_CHECKING, Any, NoReturn

import trio

from .errors import ActorStopped, AskTimeout, MailboxFull, RuntimeClosed
from .mailbox import MailboxQueue
from .messages import Ask, Event
from .spec import check_stream_capacity, check_timeout

if TYPE_CHECKING:
    from .cell import Cell

log = logging.getLogger("troupe")

LANE_CAPACITY = 16_384
"""Messages one thread may have waiting for the loop, at most (for dropping
mailboxes; for ``block`` and ``fail`` ones the mailbox's own room is the bound)."""

CREDIT_CHUNK = 64
"""Room a thread takes from the pool at once (at most 1/16 of the capacity), so
that most tells need no lock; what it does not use is taken back."""

GRANT_MAX = 1024
"""Most room the loop lends threads for one mailbox at a time (the pool and the
chunks taken from it).  It also bounds how long threads that never have to wait
can keep the interpreter from the loop: when it is spent, they ask, and wait."""

DRAIN_MAX = 2048
"""Most messages from threads delivered in one step of the loop."""

# Where a lane's request (a message sent without credit) stands (`_Lane.state`).
_IDLE = 0  # no request
_ASKED = 1  # in the lane, waiting for a drain to reach it
_WAITING = 2  # reached, no room yet: waiting in the mailbox's line (``block`` only)
_SENT = 3  # delivered (and maybe credits lent for later)
_FULL = 4  # reached, no room (``fail``): not delivered
_CLOSED = 5  # the gate closed: not delivered


def _sleep(lock: threading.Lock, deadline: float) -> bool:
    """Acquire `lock`, giving up at `deadline` (a `time.monotonic` time; inf: never)."""
    while True:
        if deadline == math.inf:
            return lock.acquire()
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return lock.acquire(blocking=False)
        if lock.acquire(timeout=min(remaining, threading.TIMEOUT_MAX)):
            return True


class ThreadReply:
    """What a thread in `ask_blocking` waits on: settled on the loop thread (`send`,
    `fail`), waited on by the asking thread (`wait`), on that thread's own waiter
    (a `queue.SimpleQueue` kept by its lane for all its asks: nothing is made per
    call but this object).

    Whoever takes its one token decides: the loop settling it, or the thread giving
    up at its deadline; the other one then knows (a reply the loop brings after the
    thread gave up is late).  Taking it is one `list.pop`, atomic without a lock.
    """

    __slots__ = ("_error", "_gate", "_on_late", "_settled", "_token", "_value", "_waiter")
    asker = None  # a thread is outside the wait-for graph (rule 5)

    def __init__(
        self, gate: ThreadGate, on_late: Callable[[Any], None], waiter: SimpleQueue[Any]
    ) -> None:
        self._gate = gate
        self._on_late = on_late
        self._waiter = waiter
        self._token: list[None] = [None]
        self._settled = False  # the loop took the token (loop thread only)
        self._value: Any = None
        self._error: BaseException | None = None

    def _take(self) -> bool:
        try:
            self._token.pop()
        except IndexError:
            return False
        return True

    @property
    def state(self) -> str:
        """``pending``, ``done``, or ``abandoned`` (the asker gave up).  Loop thread."""
        if self._settled:
            return "done"
        return "pending" if self._token else "abandoned"

    def send(self, value: Any) -> bool:
        """Loop thread: the answer.  A late one (the asker gave up) goes to ``on_late``."""
        if self._settled:
            return False
        self._value = value  # before the token: a thread that finds it gone reads this
        try:
            self._token.pop()  # `_take`, inline: every answer comes this way
        except IndexError:
            self._on_late(value)
            return False
        self._settled = True
        self._waiter.put(self)
        return True

    def fail(self, error: BaseException) -> bool:
        """Loop thread: the ask failed (`ActorStopped` while the system stops is
        `RuntimeClosed`)."""
        if self._settled:
            return False
        if isinstance(error, ActorStopped) and self._gate._stopping:
            closed = RuntimeClosed("the actor system stopped before replying")
            closed.__cause__ = error
            error = closed
        self._error = error
        if self._take():
            self._settled = True
            self._waiter.put(self)
            return True
        return False

    def wait(
        self, deadline: float, what: Callable[[], str], wake: Callable[[], None] | None = None
    ) -> Any:
        """The asking thread: block until the reply, or until `deadline` (a
        `time.monotonic` time; inf: none), then give up: `AskTimeout`, and a reply
        that comes later is late (also when this thread is interrupted while it
        waits, e.g. by Ctrl-C).  Returns the value or raises the error.

        With `wake`, calls it first (it wakes the loop), as the last thing before
        blocking: the loop then finds the interpreter free rather than waiting
        for this thread to let go of it (`RuntimeClosed` if the loop is gone and
        never settled this reply; one it settled before it went stands, e.g. an
        ask the loop monitor admitted and the actor answered before this call).
        """
        waiter = self._waiter
        try:
            if deadline == math.inf:
                remaining = threading.TIMEOUT_MAX
            else:
                remaining = min(max(0.0, deadline - time.monotonic()), threading.TIMEOUT_MAX)
        finally:  # whatever happens (Ctrl-C): the loop was promised a wake-up
            if wake is not None:
                try:
                    wake()
                except RuntimeClosed:
                    if self._take():  # nobody settled it, and nobody will
                        raise
                    # settled before the loop went: its outcome is in the waiter
        while True:
            try:
                got = waiter.get(timeout=remaining)
            except Empty:
                now = time.monotonic()
                if deadline == math.inf or deadline > now:  # longer than a wait can be
                    remaining = min(deadline - now, threading.TIMEOUT_MAX)
                    continue
                if self._take():  # given up: from now on a reply is late
                    raise AskTimeout(f"no reply to {what()}") from None
                break  # settled meanwhile: its outcome is written (its wake-up comes later)
            except BaseException:  # interrupted (Ctrl-C): this thread gives up too, so
                self._take()  # a reply from now on is late
                raise
            if got is self:
                break
            # else: the wake-up of an earlier ask of this thread, settled as it gave up
        if self._error is not None:
            raise self._error
        return self._value


Entry = tuple[int, "MailboxQueue | _Lane", Any]
"""What a lane holds: (number, mailbox, message), or (number, lane, message) for a
message sent without credit (a request: the lane says which mailbox, `want`)."""


def _chunk(mailbox: MailboxQueue) -> int:
    """Room a thread takes from the pool at once, for one mailbox."""
    return max(1, min(CREDIT_CHUNK, mailbox.capacity // 16))


def _number(entry: Entry) -> int:
    return entry[0]


class _Lane:
    """One foreign thread's own FIFO into the loop: only that thread appends to it,
    only the loop pops from it, so a tell takes no lock (deque ops are atomic).

    Also the thread's credits (room it holds, per mailbox, valid while `live`)
    and its one request at a time (`state`, `want`, `path`, `deadline`, `item`,
    and `reply` for an `ask_blocking`, which waits for its reply instead), with
    the lock the thread sleeps on (`wake`, released once per `signal`).

    An `ask_blocking` of the thread waits on `replies` (its answers, one at a
    time), and `asking` is that ask's reply until it returns, so that closing
    the gate can fail it.

    A thread has one lane of its own.  A call made while its own request or ask
    is still in flight (from a signal handler that runs in the middle of it)
    gets a `spare` lane for that call, forgotten once the call is over: one
    request per lane, and the one in flight is never overwritten.
    """

    __slots__ = (
        "asking",
        "busy",
        "credits",
        "deadline",
        "item",
        "items",
        "live",
        "path",
        "replies",
        "reply",
        "signalled",
        "spare",
        "state",
        "thread",
        "wake",
        "want",
    )

    def __init__(self, spare: bool = False) -> None:
        self.spare = spare  # made for one call of a signal handler (see above)
        self.items: deque[Entry] = deque()
        self.credits: dict[MailboxQueue, int] = {}
        self.live = False  # whether `credits` may be spent without the lock
        self.busy = False  # spending a credit right now (see the module's docstring)
        self.thread = threading.current_thread()
        self.state = _IDLE
        self.want: MailboxQueue | None = None
        self.deadline = math.inf
        self.item: Any = None
        self.path = ""
        self.reply: ThreadReply | None = None
        self.wake = threading.Lock()
        self.wake.acquire()
        self.signalled = False  # `wake` is released and nobody took it yet
        self.replies: SimpleQueue[Any] = SimpleQueue()  # written by the loop, read by the thread
        self.asking: ThreadReply | None = None  # written by the thread, read by close()

    def signal(self, state: int) -> None:
        """Gate lock held: answer the request and wake the thread (once)."""
        self.state = state
        if not self.signalled:
            self.signalled = True
            self.wake.release()


class ThreadGate:
    """Carries tells and asks from foreign threads onto the trio thread.

    Each foreign thread appends to its own lane (FIFO per thread, no lock);
    the lock guards only what threads share: the lane list, requests for
    room and the lines of threads waiting for it, lanes' credits (except
    their owner's lock-free spending, see the module's docstring), and the
    wake-up flag.  One `run_sync_soon` wakes the loop for everything queued
    since the last one.

    Causal order across threads is kept too: every message takes a number
    from one atomic counter, and a drain delivers, in number order, only
    messages numbered before the drain began.  A message whose sender's
    `tell` returned before another thread's `tell` began has the smaller
    number and was already in its lane, so it is delivered first.
    """

    def __init__(self, name: str) -> None:
        self._name = name
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)  # threads whose own lane is full
        self._local = threading.local()
        self._lanes: list[_Lane] = []
        self._numbers = itertools.count()
        self._wake_scheduled = False
        self._draining = False  # a drain runs (its leftovers not yet handed on)
        self.handoffs: deque[tuple[_Lane, Any]] = deque()
        """Asks handed to the loop outside the lanes (`_post_ask`): appended by their
        threads under the lock, taken by `admit_handoffs` and `admit_direct_handoffs`
        on the loop thread.  Public only for the loop monitor's emptiness test
        (`LoopMonitor.serve_handoffs`); nothing else touches it."""
        self._holders: set[_Lane] = set()  # lanes that may hold credits
        self._pools: dict[MailboxQueue, int] = {}  # room lent, not yet taken by a thread
        self._lines: dict[MailboxQueue, deque[_Lane]] = {}  # threads waiting for room
        self._space_waiters = 0
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
            for lane in lanes:  # requests not answered yet are not delivered either
                if lane.state in (_ASKED, _WAITING):
                    self._done(lane)
                    lane.signal(_CLOSED)
            self._lines.clear()
            self._holders.clear()
            self._pools.clear()
            self._cond.notify_all()
        # Threads that append after this point see the gate closed and take their
        # message back (see tell); what is here now is delivered (and, the
        # mailboxes being closed, dead-lettered as `stopped`).
        leftover: list[Entry] = []
        for lane in lanes:
            while True:
                try:
                    leftover.append(lane.items.popleft())
                except IndexError:
                    break
        leftover.sort(key=_number)
        self._deliver_run(leftover)
        # A thread sets `asking` before it sends: if it sent, the ask is failed here
        # unless it was answered already; if not, its send finds the gate closed.
        for lane in lanes:
            reply = lane.asking
            if reply is not None:
                reply.fail(RuntimeClosed("the actor system stopped before replying"))
        self.handoffs.clear()  # their requests are over (``_done`` above): nothing to admit

    @property
    def queued(self) -> int:
        """Messages from threads not yet handed to their mailboxes (loop thread)."""
        return sum(len(lane.items) for lane in self._lanes)

    # -- the foreign side --------------------------------------------------
    def ask(self, cell: Cell, msg: Any, timeout: float) -> Any:
        """`ask_blocking`: block this thread until the reply, within `timeout` (inf: none).

        The ask keeps this thread's order and the causal order of `tell`: it goes
        down this thread's lane after what it sent before, or, when nothing from
        any thread is on its way to the loop, straight to the loop (`_post_ask`).
        The loop answers it as a request (it needs no credit: the thread waits
        anyway): delivered if there is room, else failed (``fail``) or waiting in
        the mailbox's line (``block``) until there is room or the deadline.  One
        `run_sync_soon` wakes the loop, as the thread's last step before it
        blocks; the loop writes the answer to this thread's waiter.  Nothing is
        made per call but the reply, the `Ask` and the closure that words a
        timeout (formatted only then).  Raises what `ActorRef.ask_blocking`
        documents; `RuntimeClosed` at once if the gate is closed, or when it
        closes before the answer.
        """
        deadline = math.inf if timeout == math.inf else time.monotonic() + timeout
        lane = getattr(self._local, "lane", None) or self._lane()
        if lane.asking is not None or lane.state != _IDLE:
            # A signal handler's ask while this thread's own ask or tell is in flight:
            # a lane of its own, so that the one in flight is left as it is.
            lane = _Lane(spare=True)
            reply = ThreadReply(self, cell.late_reply, lane.replies)
            lane.asking = reply  # before the drain can see it (an idle spare is forgotten)
            with self._lock:
                self._lanes.append(lane)
        else:
            reply = ThreadReply(self, cell.late_reply, lane.replies)
            lane.asking = reply  # before sending: see close()
        try:
            wake = self._post_ask(lane, cell.mailbox, Ask(msg, reply), reply, deadline, cell.path)
            try:
                return reply.wait(
                    deadline,
                    lambda: f"{type(msg).__name__} from {cell.path} within {timeout}s",
                    wake,
                )
            except AskTimeout:
                if self._withdraw(lane, reply):
                    raise AskTimeout(
                        f"{type(msg).__name__} was not sent to {cell.path} within "
                        f"{timeout:g}s (its mailbox was full, or the loop did not get to it)"
                    ) from None
                raise
            except BaseException:  # the loop is gone (RuntimeClosed), Ctrl-C, or the
                self._withdraw(lane, reply)  # answer was an error: nothing is left on its way
                raise
        finally:
            lane.asking = None

    def _lane(self) -> _Lane:
        lane: _Lane | None = getattr(self._local, "lane", None)
        if lane is None:
            with self._lock:
                lane = self._local.lane = _Lane()
                self._lanes.append(lane)
        return lane

    def tell(
        self,
        mailbox: MailboxQueue,
        item: Any,
        timeout: float,
        path: str,
    ) -> None:
        """A foreign thread's tell (`ActorRef.tell` calls this directly).

        Blocks this thread while a ``block`` mailbox is full, up to `timeout`
        seconds (inf: no limit; 0: only if the loop finds room now), then
        raises `MailboxFull`; raises `RuntimeClosed` once the gate is closed.
        """
        if not self._open:
            self._closed()
        lane = getattr(self._local, "lane", None) or self._lane()
        if mailbox.reserves_room:  # block / fail: spend room reserved for this thread
            lane.busy = True  # then read `live`: the loop does the converse
            held = lane.credits.get(mailbox, 0) if lane.live else 0
            if held:
                lane.credits[mailbox] = held - 1
                lane.busy = False
            else:
                lane.busy = False
                if self._request(lane, mailbox, item, timeout, path):
                    return  # delivered by the loop
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

    def _take_back(self, lane: _Lane, entry: Entry) -> None:
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

    def _wait_for_lane(self, lane: _Lane, timeout: float, path: str) -> None:
        """This thread's own lane is full (dropping mailboxes): wait for the loop to drain it."""
        deadline = math.inf if timeout == math.inf else time.monotonic() + timeout
        with self._lock:
            self._space_waiters += 1
            try:
                while len(lane.items) >= LANE_CAPACITY:
                    self._request_wake()
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise MailboxFull(f"this thread's queue is full; {path} was not sent to")
                    self._cond.wait(min(remaining, threading.TIMEOUT_MAX))
                    self._check_open()
            finally:
                self._space_waiters -= 1

    def _request(
        self,
        lane: _Lane,
        mailbox: MailboxQueue,
        item: Any,
        timeout: float,
        path: str,
    ) -> bool:
        """Send `item` without credit: as a request the loop answers (see the module's
        docstring).  Returns True once the loop delivered it; False if this thread
        still had credit after all (the caller then sends as usual).

        Waits for the loop's answer however short `timeout` is; then, under
        ``block``, sleeps on in the mailbox's line until the loop delivers the
        message or the deadline passes (`MailboxFull`, nothing sent).
        """
        deadline = math.inf if timeout == math.inf else time.monotonic() + timeout
        with self._lock:
            self._check_open()
            # Credits still here were left to us by the loop (we were spending one
            # as it took the rest back): still reserved, so still ours until the
            # next drain.
            lane.live = True
            held = lane.credits.get(mailbox, 0)
            if held:
                lane.credits[mailbox] = held - 1
                return False
            pool = self._pools.get(mailbox)
            if pool:  # take a chunk of what the loop lent
                take = min(pool, _chunk(mailbox))
                if take < pool:
                    self._pools[mailbox] = pool - take
                else:
                    del self._pools[mailbox]
                lane.credits[mailbox] = take - 1
                self._holders.add(lane)
                return False
            if lane.state != _IDLE:
                # A signal handler's tell while this thread's own request is in flight:
                # a lane of its own (see `_Lane`), the one in flight is left as it is.
                lane = _Lane(spare=True)
                self._lanes.append(lane)
            try:
                self._post(lane, mailbox, item, deadline, path, None)
                entry = (next(self._numbers), lane, item)  # in its turn down the lane
                lane.items.append(entry)
                self._request_wake()
            except RuntimeClosed:  # the loop is gone: nobody took it
                lane.items.remove(entry)
                self._done(lane)
                raise
            except BaseException:  # interrupted as it posts: taken back, as in the wait
                self._give_up(lane)
                raise
        try:
            while True:
                # Until the first answer, wait for it whatever the deadline; then no longer.
                woke = _sleep(lane.wake, math.inf if lane.state == _ASKED else deadline)
                with self._lock:
                    if woke:
                        lane.signalled = False
                    state = lane.state
                    if state == _ASKED or (state == _WAITING and time.monotonic() < deadline):
                        continue
                    if state == _WAITING:
                        self._leave_line(lane)
                    self._done(lane)
                    if state == _SENT:
                        return True
                    if state == _CLOSED:
                        self._closed()
                    if state == _WAITING:
                        raise MailboxFull(f"mailbox of {path} stayed full (overflow='block')")
                    raise MailboxFull(f"mailbox of {path} is full (overflow='fail')")
        except BaseException:
            # Interrupted while it waits (Ctrl-C, a signal handler that raises): the
            # message is taken back unless the loop delivered it already, and the lane
            # is left ready for the thread's next request.
            with self._lock:
                self._give_up(lane)
            raise

    def _post(
        self,
        lane: _Lane,
        mailbox: MailboxQueue,
        item: Any,
        deadline: float,
        path: str,
        reply: ThreadReply | None,
    ) -> None:
        """Lock held: make `item` this thread's request (its one at a time), for the
        loop to answer (`_admit`); the caller sends it on its way (down the lane, or
        handed to the loop: `_post_ask`)."""
        if lane.signalled:  # a wake-up left over from an earlier request
            lane.wake.acquire(blocking=False)  # (held already if its taker was interrupted)
            lane.signalled = False
        lane.state = _ASKED
        lane.want = mailbox
        lane.path = path
        lane.deadline = deadline
        lane.item = item
        lane.reply = reply

    def _post_ask(
        self,
        lane: _Lane,
        mailbox: MailboxQueue,
        ask: Ask,
        reply: ThreadReply,
        deadline: float,
        path: str,
    ) -> Callable[[], None] | None:
        """Send an ask on its way without waking the loop; return how the caller must
        wake it (the last thing it does before it blocks), or None if a drain is
        coming anyway.

        Into a ``block`` or ``fail`` mailbox it goes as a request (no credit is
        taken: the loop finds it room, fails it, or puts it in the mailbox's line,
        and the reply tells the outcome); into a dropping one, like a tell.  When
        nothing from any thread is on its way to the loop (no drain pending or
        running, and the drains hand what they leave to another), it skips the
        lane: the loop admits it from `handoffs` (`admit_handoffs`), in a call of
        its own or as it wakes up.  Nothing sent earlier by any thread can be
        overtaken then.  Raises `RuntimeClosed` if the gate is closed,
        `MailboxFull` if this thread's own lane stays full (dropping mailboxes)
        until `deadline`.
        """
        if not mailbox.reserves_room:
            timeout = math.inf if deadline == math.inf else max(0.0, deadline - time.monotonic())
            self.tell(mailbox, ask, timeout, path)
            return None
        with self._lock:
            if not self._open:
                self._closed()
            self._post(lane, mailbox, ask, deadline, path, reply)
            if not (self._wake_scheduled or self._draining or lane.items):
                self.handoffs.append((lane, ask))
                return self._hand_off
            lane.items.append((next(self._numbers), lane, ask))
            if self._wake_scheduled:
                return None
            self._wake_scheduled = True
            return self._wake

    def _wake(self) -> None:
        """Any thread: run a drain soon (the caller set `_wake_scheduled`)."""
        self._token_call(self._drain)

    def _hand_off(self) -> None:
        """Any thread: wake the loop to admit the asks in `handoffs` (what
        `_token_call` does, written out: this runs on every thread ask's way)."""
        assert self._token is not None
        try:
            self._token.run_sync_soon(self.admit_handoffs)
        except trio.RunFinishedError:
            self._closed()

    @staticmethod
    def _done(lane: _Lane) -> None:
        """Lock held: the lane's request is over."""
        lane.state = _IDLE
        lane.want = None
        lane.item = None
        lane.reply = None

    def _leave_line(self, lane: _Lane) -> None:
        """Lock held: a waiting request gives up its place in its mailbox's line."""
        assert lane.want is not None
        line = self._lines[lane.want]
        line.remove(lane)
        if not line:
            del self._lines[lane.want]

    def _give_up(self, lane: _Lane) -> None:
        """Lock held: the thread stopped posting its request, or waiting for its answer
        (interrupted): take the message back unless it was delivered, and end the
        request.  Safe whatever step of the post or the wait was interrupted."""
        if lane.signalled:  # its wake-up came: take it (held already if taken)
            lane.wake.acquire(blocking=False)
            lane.signalled = False
        if lane.state == _WAITING and lane.want is not None:
            line = self._lines.get(lane.want)
            if line is not None and lane in line:
                self._leave_line(lane)
        self._done(lane)  # a drain that reaches it (still _ASKED) leaves it

    def _withdraw(self, lane: _Lane, reply: ThreadReply) -> bool:
        """An `ask` timed out: if its message still waits for room (or for the loop),
        take it back; True if it was not sent."""
        with self._lock:
            if lane.reply is not reply or lane.state not in (_ASKED, _WAITING):
                return False
            if lane.state == _WAITING:
                self._leave_line(lane)
            self._done(lane)  # a drain that reaches it (still _ASKED) leaves it
            return True

    def _request_wake(self) -> None:
        """Lock held: make sure a drain is coming."""
        if not self._wake_scheduled:
            self._wake_scheduled = True
            self._token_call(self._drain)

    @property
    def token(self) -> trio.lowlevel.TrioToken | None:
        """The loop's token while the gate is open (None before, and once closed)."""
        return self._token if self._open else None

    def call_soon(self, fn: Callable[[], None]) -> bool:
        """Any thread: run `fn` on the loop thread soon (one `run_sync_soon`).

        For code that batches on its own side and wakes the loop once per batch
        (the cluster's NATS thread).  `fn` must not raise.  Returns False, and
        `fn` does not run, once the loop has finished.
        """
        token = self._token
        if token is None:
            return False
        try:
            token.run_sync_soon(fn)
        except trio.RunFinishedError:
            return False
        return True

    def _token_call(self, fn: Callable[[], None]) -> None:
        """Wake the loop to run ``fn()`` (non-blocking; with or without the lock)."""
        assert self._token is not None
        try:
            self._token.run_sync_soon(fn)
        except trio.RunFinishedError:
            self._closed()

    # -- the loop side ---------------------------------------------------
    def _drain(self) -> None:
        """Loop thread: take back unused credits, deliver a batch from the lanes
        (answering requests on the way), then let waiting threads in if room was made.

        At most `DRAIN_MAX` messages per call, so that a flood from threads
        never makes one long step of the loop; the rest gets another call.
        """
        self.wakeups += 1
        with self._lock:
            self._wake_scheduled = False  # before draining: a later append wakes us again
            self._draining = True  # until what it leaves is handed to the next drain
            lanes = self._lanes
            returned = self._take_back_credits(None) if self._holders or self._pools else None
        if returned:  # first, so that requests in this batch find that room
            for mailbox, count in returned.items():
                mailbox.unreserve(count)  # may let waiting threads in (room_freed)
        horizon = next(self._numbers)  # deliver only what was numbered before now
        batch: list[Entry] = []
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
            # Merge by number.  Threads take turns on the interpreter, so a lane's
            # numbers come in long runs: take a whole run (up to the next lane's
            # head) per step of the heap, not one message.
            heads = [(items[0][0], i) for i, items in enumerate(busy)]
            heapq.heapify(heads)
            room = DRAIN_MAX
            while heads and room:
                number, i = heads[0]
                if number >= horizon:
                    break
                items = busy[i]
                limit = horizon  # this run ends where the next smallest head is
                if len(heads) > 1:
                    limit = min(limit, heads[1][0])
                    if len(heads) > 2:
                        limit = min(limit, heads[2][0])
                # items[0] is in the run; find where it ends (numbers only grow)
                lo, hi = 1, min(len(items), room)
                while lo < hi:
                    mid = (lo + hi) // 2
                    if items[mid][0] < limit:
                        lo = mid + 1
                    else:
                        hi = mid
                batch += [items.popleft() for _ in range(lo)]
                room -= lo
                if items:
                    heapq.heapreplace(heads, (items[0][0], i))
                else:
                    heapq.heappop(heads)
        for lane in lanes:
            if (
                not lane.items
                and lane.state == _IDLE
                and (not lane.thread.is_alive() or (lane.spare and lane.asking is None))
            ):
                dead.append(lane)
        self._deliver_run(batch)
        self.delivered += len(batch)
        if dead:
            self._forget(dead)
        if any(lane.items for lane in lanes):
            with self._lock:
                self._request_wake()
        if self._space_waiters:
            with self._lock:
                self._cond.notify_all()
        if self._lines:
            self._serve_lines()
        self._draining = False

    def admit_handoffs(self) -> None:
        """Loop thread: admit the asks threads handed over outside the lanes (`_post_ask`).

        Each such ask wakes the loop to call this (its `run_sync_soon`
        callback, which runs in trio's own task).  Never raises: an ask whose
        admission fails (a bug) fails with that error, so that its thread hears
        of it at once instead of at its deadline (or never, without one); the
        others are admitted as usual.
        """
        self._admit_handoffs(direct_only=False)

    def admit_direct_handoffs(self) -> None:
        """Loop thread, outside any task: admit the handed-over asks that go
        straight into their mailbox (room, nobody ahead of them), in order, up to
        the first that does not; that one and the rest wait for `admit_handoffs`.

        The loop monitor calls this as soon as the loop wakes up
        (`LoopMonitor.serve_handoffs`), before trio runs the tasks the wake-up
        made runnable: the actor then runs in that same batch, rather than a
        turn of the loop later.  A plain put runs no user code and takes no time
        worth measuring; what an ask may set off beyond it (dead letters and
        their subscribers' filters, a line, `MailboxFull`) runs in a task, in
        a step the monitor times.  Never raises, as `admit_handoffs`.
        """
        self._admit_handoffs(direct_only=True)

    def _admit_handoffs(self, direct_only: bool) -> None:
        handoffs = self.handoffs
        while handoffs:  # only the loop takes from it: not empty means [0] is there
            lane, item = handoffs[0]
            try:
                if not self._admit(lane, item, direct_only):
                    return  # not a plain put: it and those behind it wait
            except Exception as exc:
                log.exception("admitting an ask from a thread failed")
                item.reply.fail(exc)
            handoffs.popleft()
            self.wakeups += 1
            self.delivered += 1

    def _take_back_credits(self, only: MailboxQueue | None) -> dict[MailboxQueue, int]:
        """Lock held: take back the credits lanes hold and the pools (all of them, or
        only those for `only`); return how much, per mailbox.

        A lane spending a credit right now keeps its credits: its tell schedules a
        drain, which takes them back if they are still unused then.
        """
        returned: dict[MailboxQueue, int] = {}
        kept: list[_Lane] = []
        for lane in self._holders:
            lane.live = False  # first: a thread that raises `busy` after this sees it
            if lane.busy:
                kept.append(lane)
                continue
            credits = lane.credits
            if only is None:
                for mailbox, count in credits.items():
                    if count:
                        returned[mailbox] = returned.get(mailbox, 0) + count
                credits.clear()
            else:
                count = credits.pop(only, 0)
                if count:
                    returned[only] = returned.get(only, 0) + count
                if credits:
                    kept.append(lane)
        self._holders = set(kept)
        if only is None:
            for mailbox, count in self._pools.items():
                returned[mailbox] = returned.get(mailbox, 0) + count
            self._pools.clear()
        else:
            count = self._pools.pop(only, 0)
            if count:
                returned[only] = returned.get(only, 0) + count
        return returned

    def _admit(self, lane: _Lane, item: Any, direct_only: bool = False) -> bool:
        """Loop thread, in a drain: answer a request (a message sent without credit,
        or an ask): deliver it if there is room (and lend a telling thread some for
        later), else fail it (``fail``) or put it in the mailbox's line (``block``).

        With `direct_only`, only an ask that goes straight into free room is
        admitted; for anything else it returns False and changes nothing.
        Otherwise it returns True (the request is answered, or was over already).
        """
        full: ThreadReply | None = None
        with self._lock:
            if lane.state != _ASKED or lane.item is not item:
                return True  # the gate closed, or the ask gave up: nothing is sent
            mailbox = lane.want
            assert mailbox is not None
            lines = self._lines  # (mostly empty: then no lookup)
            line = None if not lines or mailbox.overflow == "fail" else lines.get(mailbox)
            if not line and lane.reply is not None and mailbox.has_room():
                # An ask, and room nobody holds: it goes in as a loop-side ask would
                # (its thread waits for the reply, so it is lent nothing).
                self._done(lane)
                free = True
            elif direct_only:
                return False
            elif not line and self._room_for_one(mailbox):  # and no thread ahead of it
                free = False
                self._lend(mailbox, [lane])  # (an ask is only done: it takes no credit)
            elif line is None and mailbox.overflow == "fail":
                if lane.reply is None:
                    lane.signal(_FULL)
                    return True
                full = lane.reply
                self._done(lane)
            else:  # block: wait in line, asleep
                if line is None:
                    line = self._lines[mailbox] = deque()
                line.append(lane)
                mailbox.wait_for_threads()  # room_freed() will let it in
                if lane.deadline == math.inf or lane.reply is not None:
                    lane.state = _WAITING
                else:  # wake it to sleep until its deadline (or to give up now)
                    lane.signal(_WAITING)
                return True
        if full is not None:
            full.fail(MailboxFull(f"mailbox of {lane.path} is full (overflow='fail')"))
        elif free:
            mailbox.put(item)  # there is room: it neither waits nor raises
        else:
            mailbox.put_many_reserved([item])
        return True

    def _room_for_one(self, mailbox: MailboxQueue) -> bool:
        """Lock held: reserve room for one message, from the pool or the mailbox, or
        else from credits lent to threads and not spent (e.g. chunks lent earlier in
        this very drain to threads that will not tell again): that room is still
        reserved in the mailbox, so it moves back to the pool."""
        pool = self._pools.get(mailbox)
        if not pool:
            if mailbox.reserve(1):
                return True
            pool = self._take_back_credits(mailbox).get(mailbox, 0)
            if not pool:
                return False
        if pool > 1:
            self._pools[mailbox] = pool - 1
        else:
            self._pools.pop(mailbox, None)
        return True

    def _lend(self, mailbox: MailboxQueue, served: list[_Lane]) -> None:
        """Lock held: room was reserved for the message each of `served` sent; tell
        them, refill the pool (threads asking for room want more) and lend each a
        chunk of it for their next tells (not a thread that asked: it waits for
        its reply)."""
        tellers = []
        for lane in served:
            if lane.reply is None:
                tellers.append(lane)
            else:  # an ask: its thread waits for the reply, not for this, and asks
                self._done(lane)  # take no credit
        if not tellers:
            return
        pool = self._pools.get(mailbox, 0)
        if pool < GRANT_MAX:
            pool += mailbox.reserve(GRANT_MAX - pool)
        chunk = _chunk(mailbox) - 1
        holders = self._holders
        for lane in tellers:
            take = min(pool, chunk)
            pool -= take
            lane.credits[mailbox] = lane.credits.get(mailbox, 0) + take  # (never overwrite)
            lane.live = True
            holders.add(lane)
            lane.signal(_SENT)
        if pool:
            self._pools[mailbox] = pool
        else:
            self._pools.pop(mailbox, None)

    def _let_in(self, mailbox: MailboxQueue, line: deque[_Lane]) -> list[Any]:
        """Lock held: room for the threads at the head of `line`, oldest first; return
        their messages, to be delivered (in this order) once the lock is released."""
        served: list[_Lane] = []
        while line and mailbox.reserve(1):
            served.append(line.popleft())
        if not served:
            return []
        items = [lane.item for lane in served]
        self._lend(mailbox, served)
        if not line:
            del self._lines[mailbox]
        return items

    def _serve_lines(self) -> None:
        """Loop thread, after a drain: let waiting threads in where room was made
        without `room_freed` being told (e.g. the mailbox closed: it takes anything)."""
        with self._lock:
            admitted = [
                (mailbox, self._let_in(mailbox, line))
                for mailbox, line in list(self._lines.items())
                if self._roomy(mailbox)
            ]
        for mailbox, items in admitted:
            if items:
                mailbox.put_many_reserved(items)

    def _forget(self, dead: list[_Lane]) -> None:
        """Lanes of threads that ended: drop them and give back the room they held."""
        returned: dict[MailboxQueue, int] = {}
        with self._lock:
            self._lanes = [lane for lane in self._lanes if lane not in dead]
            for lane in dead:
                self._holders.discard(lane)
                for mailbox, count in lane.credits.items():
                    returned[mailbox] = returned.get(mailbox, 0) + count
                lane.credits.clear()
        for mailbox, count in returned.items():
            if count:
                mailbox.unreserve(count)

    def _deliver_run(self, entries: list[Entry]) -> None:
        """Deliver in order, handing runs for the same mailbox over together, and
        answering requests where they come."""
        run: list[Any] = []
        target: MailboxQueue | None = None
        for _, to, item in entries:
            if to is not target:
                if run:
                    assert target is not None
                    self._deliver(target, run)
                    run = []
                if isinstance(to, _Lane):
                    self._admit(to, item)
                    target = None
                    continue
                target = to
            run.append(item)
        if run:
            assert target is not None
            self._deliver(target, run)

    @staticmethod
    def _deliver(mailbox: MailboxQueue, items: list[Any]) -> None:
        # put() cannot raise for the dropping policies and put_many_reserved() never
        # does: an error here would take the whole trio run down.
        if mailbox.reserves_room:
            mailbox.put_many_reserved(items)
        else:
            for item in items:
                mailbox.put(item)

    def room_freed(self, mailbox: MailboxQueue, force: bool = False) -> bool:
        """Loop thread, from `MailboxQueue`: room was made; let waiting threads in.

        Waits until a quarter of the mailbox (at most `GRANT_MAX`) is free, so
        that threads are woken in batches, not once per message handled; with
        `force` (the threads' turn while loop senders wait too) it lets in as
        many as fit now.  Returns True once no thread waits for this mailbox
        any more.
        """
        with self._lock:
            line = self._lines.get(mailbox)
            if not line:
                return True
            if not force and not self._roomy(mailbox):
                return False
            items = self._let_in(mailbox, line)
            done = mailbox not in self._lines
        if items:
            mailbox.put_many_reserved(items)
        return done

    @staticmethod
    def _roomy(mailbox: MailboxQueue) -> bool:
        """Whether enough room was made to wake waiting threads: a quarter of the
        mailbox (at most `GRANT_MAX`), or anything once it closed (it takes all)."""
        return mailbox.closed or mailbox.room() >= max(1, min(GRANT_MAX, mailbox.capacity // 4))

    def reclaim(self, mailbox: MailboxQueue) -> int:
        """Loop thread: take back the room threads hold for `mailbox` and have not used
        (the loop needs it now); return how much."""
        with self._lock:
            if not self._pools.get(mailbox) and not any(
                lane.credits.get(mailbox) for lane in self._holders
            ):
                return 0  # (only the loop adds credits: none can appear meanwhile)
            return self._take_back_credits(mailbox).get(mailbox, 0)


class ThreadStream:
    """A bus stream read by a plain thread: what ``handle.bus.stream(...)`` yields.

    The one piece of state the loop and the reader share: a queue of at most
    `capacity` events (plus one for each reader waiting), under a
    `threading.Condition` held only for a few deque operations (rule 3).  The
    reader never touches runtime state, and the loop never waits on it.

    The reader's side: `receive`, and iteration (``for event in events``),
    which ends when the stream has ended and nothing is left.  Both block
    the calling thread (never the loop) and may be interrupted there (e.g.
    Ctrl-C on the main thread): leaving the ``with`` block then ends the
    subscription as ever.

    The loop's side, called by the bus only (`Bus.add_thread_stream`):
    `send_nowait`, `close` and `take_unread`.
    """

    __slots__ = (
        "_closed",
        "_events",
        "_gate",
        "_ready",
        "_waiting",
        "capacity",
        "pattern",
    )

    def __init__(self, pattern: str, capacity: int, gate: ThreadGate) -> None:
        """ValueError for a bad `capacity` (as for ``system.bus.stream``); `pattern`
        is checked when the bus subscribes it.  `gate`: the system's, which tells
        the loop's thread (where reading is refused)."""
        self.pattern = pattern
        self.capacity = check_stream_capacity(capacity)
        self._gate = gate
        self._ready = threading.Condition(threading.Lock())
        self._events: deque[Event] = deque()
        self._waiting = 0  # readers blocked in `receive` (each may take one more event)
        self._closed = False

    # -- the reader's side (any thread but the loop's) ----------------------
    def receive(self, timeout: float | None = None) -> Event:
        """The next event, blocking this thread until there is one.

        Raises `TimeoutError` if none came within `timeout` seconds (None: wait
        as long as it takes; 0: only one already queued), and
        `trio.EndOfChannel` once the stream has ended (its block ended, or the
        system stopped) and every event queued before was received.
        `ValueError` for a negative or NaN `timeout`, `TypeError` for one that
        is not a number.  An interruption (e.g. KeyboardInterrupt) while it
        waits propagates, and no event is taken.  On the loop's thread it
        raises `RuntimeError` at once: only the loop delivers the events it
        would wait for.
        """
        if self._gate.on_loop_thread():
            raise RuntimeError(
                "a thread stream is read by plain threads: on the trio thread use "
                "`async with system.bus.stream(...)`"
            )
        limit = check_timeout(timeout)
        deadline = math.inf if limit == math.inf else time.monotonic() + limit
        with self._ready:
            self._waiting += 1
            try:
                while True:
                    if self._events:
                        return self._events.popleft()
                    if self._closed:
                        raise trio.EndOfChannel
                    if deadline == math.inf:
                        self._ready.wait()
                        continue
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise TimeoutError(
                            f"no event on the stream of {self.pattern!r} within {limit}s"
                        )
                    self._ready.wait(min(remaining, threading.TIMEOUT_MAX))
            finally:
                self._waiting -= 1

    def __iter__(self) -> ThreadStream:
        return self

    def __next__(self) -> Event:
        """`receive` with no timeout; the iteration stops where it would raise
        `trio.EndOfChannel`."""
        try:
            return self.receive()
        except trio.EndOfChannel:
            raise StopIteration from None

    # -- the loop's side (the bus) ------------------------------------------
    def send_nowait(self, event: Event) -> None:
        """Queue `event` for the reader.  Never blocks.  `trio.WouldBlock` if
        `capacity` events wait already (a waiting reader adds room for one),
        `trio.ClosedResourceError` once closed: the bus dead-letters it then."""
        with self._ready:
            if self._closed:
                raise trio.ClosedResourceError("the stream has ended")
            if len(self._events) >= self.capacity + self._waiting:
                raise trio.WouldBlock
            self._events.append(event)
            self._ready.notify()

    def close(self) -> None:
        """End the stream: nothing more is queued; readers get what is, then
        `trio.EndOfChannel`.  Never blocks; idempotent."""
        with self._ready:
            self._closed = True
            self._ready.notify_all()

    def take_unread(self) -> list[Event]:
        """Close, and take the events no reader received (oldest first), for the bus
        to dead-letter.  Never blocks."""
        with self._ready:
            self._closed = True
            unread = list(self._events)
            self._events.clear()
            self._ready.notify_all()
        return unread

    def __repr__(self) -> str:
        state = "ended" if self._closed else "open"
        return f"<ThreadStream {self.pattern!r} capacity={self.capacity} {state}>"


__all__ = ["ThreadGate", "ThreadReply", "ThreadStream"]

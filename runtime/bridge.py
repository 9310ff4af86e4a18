"""The bridge actor: blocking work in worker threads or processes, off the loop.

Rule 4 of the design: blocking work never runs on the loop thread.  An actor
calls ``await self.ctx.run_blocking(fn, *args)``; that hands the call to a
bridge (by default ``/system/bridge``): a thread bridge that would take it at
once starts it without a message (`Bridge.start_now`), otherwise the call is
asked of the bridge, which answers through `ctx.defer_reply()`, so many calls
run at once while the bridge keeps handling messages.

Thread mode (the default): a bridge has worker threads of its own, at most
``max_workers``, started when calls need them.  The bridge puts each call it
takes into its job queue; a free worker takes the next call itself, without
waiting for the loop, and finished calls go back to the loop in batches (one
`TrioToken.run_sync_soon` for all that finished since the loop last took a
batch).  The bridge takes calls from its mailbox while fewer than
``2 * max_workers`` of its calls are queued or in its threads, so each worker
has its next call waiting; past that it stops taking messages, and further
calls queue in its bounded mailbox, in order, until ``max_workers // 2`` (at
least one) places are free again, which it then fills in one go.  A worker
idle for `IDLE_TIMEOUT` seconds exits; the bridge's stop ends the idle ones at
once and joins them, and a worker still running an abandoned call exits as
soon as that call returns.

The bound is strict: a bridge never has more than ``max_workers`` threads, so
at most that many work for it at any moment, abandoned ones included.  A call
abandoned by a timeout or by its caller keeps its thread (its worker slot)
until the call really returns, so a bridge whose slots are all held by
abandoned threads queues new calls, and says so in its health.

Timeouts: a call whose deadline has passed when the bridge takes it fails with
`AskTimeout` and never runs.  Later its caller's own timeout (the same
deadline) gives it up through `BlockingCall.cancel`: a call still queued is
dropped and never runs; a running one is abandoned, its thread runs on.

Process mode (``mode="process"``, trio-parallel): the bridge starts each call
in its own nursery under a `trio.CapacityLimiter` of ``max_workers`` and waits
for a free worker before it takes the next message.  The call is pickled when
the bridge takes it, so an argument that cannot be pickled is the caller's
`NotSerializable` before anything runs.  In the worker, `_run_pickled` runs it
and pickles what comes of it: a result, or an exception together with its type
name, message and traceback text, which the caller gets as a `RemoteError` when
the exception itself cannot cross.  A worker that finds itself started by a
main script without an ``if __name__ == "__main__":`` guard exits with
`NO_MAIN_GUARD_EXIT`, which the bridge turns into an error that says so.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import itertools
import logging
import math
import os
import pickle
import sys
import threading
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from time import perf_counter
from typing import Any, Literal

import attrs
import outcome
import trio

from .actor import Actor
from .errors import ActorStopped, AskTimeout, NotSerializable, RemoteError
from .messages import UNHANDLED, DeferredReply, Reply

log = logging.getLogger("troupe.bridge")

Mode = Literal["thread", "process"]
SAMPLES = 1000
SATURATION_WARNING = 5.0  # seconds all workers busy before health says so
IDLE_TIMEOUT = 10.0  # seconds a worker thread waits for a call before it exits (as trio's)
JOIN_TIMEOUT = 5.0  # at a bridge's stop: the longest it waits for its idle threads to end
NO_MAIN_GUARD_EXIT = 78  # a worker process's exit status: "the main script has no guard"
PROCESS_NEEDS = (
    "process-mode work must be a module-level function with picklable arguments "
    "(no lambdas, nested functions, locks, open files or sockets)"
)
MAIN_GUARD = 'if __name__ == "__main__":'


class BlockingCall:
    """A request to a bridge.  `cancel()` (the asker gave up) abandons it.

    `deadline` (trio time, queueing included): a call already past it when the
    bridge takes it fails with `AskTimeout` without running; afterwards the
    asker, whose ask has the same deadline, gives up by calling `cancel()`.
    """

    __slots__ = ("args", "cancelled", "deadline", "fn", "kwargs", "on_cancel")

    def __init__(
        self,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: Mapping[str, Any],
        deadline: float = math.inf,
    ) -> None:
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.deadline = deadline
        self.cancelled = False
        self.on_cancel: Callable[[], None] | None = None  # set by the bridge while it holds it

    def cancel(self) -> None:
        """Loop thread: the asker gave up; the bridge drops or abandons the call."""
        self.cancelled = True
        if self.on_cancel is not None:
            self.on_cancel()

    def __repr__(self) -> str:
        return f"BlockingCall({getattr(self.fn, '__qualname__', self.fn)!r})"


@attrs.define(eq=False)
class _Job:
    """One call the bridge took: queued for or in a worker thread, or a process task.

    The loop owns `state` and `scope`; `_Workers` owns `taken` (under its
    lock).  In thread mode the worker running the job owns `ran_at`,
    `ended_at` and `result` until it hands the job back under that lock; the
    times are `time.perf_counter` readings, real time whatever the loop's clock.
    """

    call: BlockingCall
    reply: DeferredReply | Reply  # a message's deferred reply, or that of a call started now
    started: float = 0.0  # process mode: loop time the call started
    queued_at: float = 0.0  # thread mode: when the bridge took it
    ran_at: float = 0.0  # thread mode: when its thread started it
    ended_at: float = 0.0  # thread mode: when it returned
    state: str = "pending"  # -> "done" | "dropped" | "abandoned" (-> "returned": thread ended)
    taken: bool = False  # thread mode: a worker thread has it (it runs, or ran)
    scope: trio.CancelScope | None = None  # process mode: its task's scope
    result: outcome.Outcome[Any] | None = None


@attrs.define(eq=False)
class _Worker:
    """One worker thread.  `wake` is held while it idles; releasing it hands over `job`."""

    thread: threading.Thread | None = None
    wake: threading.Lock = attrs.field(factory=threading.Lock)
    job: _Job | None = None  # handed to it while idle; None with `wake` released: exit
    running: bool = False  # a call of its own is in its hands (taken, not handed back)


class _Workers:
    """A thread bridge's worker threads and the queue they take calls from themselves.

    At most `size` threads, started by `submit` when a call finds no idle one:
    the thread bound is structural.  A worker runs a call, hands it back and
    takes the next queued call in the same turn of the lock; with nothing
    queued it idles, up to `IDLE_TIMEOUT` seconds, then exits.  Calls handed
    back reach the loop in batches: the first hand-back schedules one
    ``run_sync_soon(self._flush)`` and later ones join its batch until the loop
    has taken it, so `deliver` gets every call that returned, once.

    Every field below is shared by the loop thread and the workers and guarded
    by `_lock`, which is only ever held for a few list operations: the loop
    thread never waits on a worker's call.
    """

    def __init__(
        self,
        size: int,
        name: str,
        token: trio.lowlevel.TrioToken,
        deliver: Callable[[list[_Job]], None],
    ) -> None:
        self._size = size
        self._name = name
        self._token = token
        self._deliver = deliver  # loop thread: called with each batch of calls handed back
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()
        self._queue: deque[_Job] = deque()  # taken by the bridge, not yet by a thread
        self._idle: list[_Worker] = []  # LIFO: the thread that idled last runs next
        self._workers: set[_Worker] = set()  # every thread that has not yet exited
        self._done: list[_Job] = []  # handed back, not yet flushed to the loop
        self._flush_scheduled = False
        self._closed = False
        self._busy = 0  # threads running a call
        self._peak = 0

    # -- the loop's side --------------------------------------------------
    def submit(self, job: _Job) -> None:
        """Loop thread: queue `job`; an idle thread (or a new one) takes it.

        Never waits for a call; starting a thread waits only until it has begun
        (as trio's thread cache does).  Raises `RuntimeError` (and queues
        nothing) when the bridge has no thread and none can be started.
        """
        worker: _Worker | None = None
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self._name} is stopped: it takes no more calls")
            if self._idle and not self._queue:
                idle = self._idle.pop()
                idle.job = self._assign(job, idle)
                idle.wake.release()
                return
            self._queue.append(job)
            if len(self._workers) < self._size:
                worker = _Worker()
                self._workers.add(worker)
        if worker is not None:
            self._start(worker, job)

    def _start(self, worker: _Worker, job: _Job) -> None:
        worker.wake.acquire()  # it idles with `wake` held
        worker.thread = threading.Thread(
            target=self._work,
            args=(worker,),
            name=f"{self._name} worker {next(self._numbers)}",
            daemon=True,  # as trio's: a thread abandoned at exit does not hold the process
        )
        try:
            worker.thread.start()
        except RuntimeError as exc:  # the OS refused a thread
            with self._lock:
                self._workers.discard(worker)
                if self._workers or job not in self._queue:
                    return  # another thread will take it
                self._queue.remove(job)
            raise RuntimeError(
                f"{self._name} could not start a worker thread ({exc}): the process has "
                "too many threads; give this bridge a smaller max_workers, or use fewer threads"
            ) from exc

    def drop(self, job: _Job) -> bool:
        """Loop thread: take back `job` if no thread has taken it (it never runs)."""
        with self._lock:
            if job.taken:
                return False
            self._queue.remove(job)
            return True

    def close(self) -> tuple[list[_Job], list[threading.Thread]]:
        """Loop thread: refuse further calls; every thread exits once its call returns.

        Returns the calls still queued (they never run) and the threads with no
        call in hand, which end at once (see `join`); nothing the second time.
        """
        with self._lock:
            if self._closed:
                return [], []
            dropped = self._close_locked()
            ending = [w.thread for w in self._workers if not w.running and w.thread is not None]
        return dropped, ending

    def _close_locked(self) -> list[_Job]:
        """Lock held: refuse further calls, wake the idle threads to exit; the calls
        still queued (taken out: they never run)."""
        self._closed = True
        dropped = list(self._queue)
        self._queue.clear()
        for idle in self._idle:
            idle.job = None
            idle.wake.release()
        self._idle.clear()
        return dropped

    @staticmethod
    def join(threads: Iterable[threading.Thread], timeout: float) -> None:
        """In a thread of its own (never the loop's): join `threads` within `timeout` in all."""
        deadline = perf_counter() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - perf_counter()))

    def counts(self) -> tuple[int, int]:
        """Loop thread: (calls queued, the most threads that ever ran calls at once)."""
        with self._lock:
            return len(self._queue), self._peak

    def _flush(self) -> None:
        """Loop thread (`run_sync_soon`): deliver the batch handed back since the last one."""
        with self._lock:
            done, self._done = self._done, []
            self._flush_scheduled = False
        self._deliver(done)

    # -- the worker threads ------------------------------------------------
    def _work(self, worker: _Worker) -> None:
        """A worker thread's life: take calls and run them until idle too long or closed.

        The finished job is handed back before the thread waits for the next
        one, so an idle thread keeps nothing of a call alive (its function,
        arguments or result).
        """
        try:
            with self._lock:
                job = self._next(worker)
                closed = self._closed
            while True:
                if job is None:
                    if closed:
                        return
                    job = self._wait(worker)
                    if job is None:
                        return
                job.ran_at = perf_counter()
                call = job.call
                # whatever fn raises, BaseException included, is the caller's
                job.result = outcome.capture(call.fn, *call.args, **call.kwargs)
                job.ended_at = perf_counter()
                del call
                job, closed = self._hand_back(job, worker)
        finally:
            with self._lock:
                self._workers.discard(worker)
                if worker in self._idle:  # pragma: no cover - only if _wait itself failed
                    self._idle.remove(worker)

    def _next(self, worker: _Worker) -> _Job | None:
        """Lock held: the next queued call for `worker`; None: it idles (open) or exits."""
        if self._queue:
            return self._assign(self._queue.popleft(), worker)
        if not self._closed:
            self._idle.append(worker)
        return None

    def _assign(self, job: _Job, worker: _Worker) -> _Job:
        """Lock held: `worker` has `job` now (it runs it next); counted busy."""
        job.taken = True
        worker.running = True
        self._busy += 1
        self._peak = max(self._peak, self._busy)
        return job

    def _hand_back(self, job: _Job, worker: _Worker) -> tuple[_Job | None, bool]:
        """Worker thread: give `job` back to the loop; (the next call, whether closed).

        With no next call and the pool open, `worker` is registered idle.
        """
        with self._lock:
            self._done.append(job)
            self._busy -= 1
            worker.running = False
            flush = not self._flush_scheduled
            self._flush_scheduled = True
            following = self._next(worker)
            closed = self._closed
        if flush:
            try:
                self._token.run_sync_soon(self._flush)
            except trio.RunFinishedError:  # the loop is gone: nobody will take a call again
                self._abandon_ship()
                return None, True
        return following, closed

    def _wait(self, worker: _Worker) -> _Job | None:
        """Worker thread, registered idle by `_next`: the next call, or None to exit."""
        if worker.wake.acquire(timeout=IDLE_TIMEOUT):
            job, worker.job = worker.job, None
            return job  # None: the pool closed
        with self._lock:
            if worker in self._idle:  # nobody handed it a call: it leaves, counted out at once
                self._idle.remove(worker)
                self._workers.discard(worker)
                return None
        worker.wake.acquire()  # a call was handed to it as it timed out: it is on its way
        job, worker.job = worker.job, None
        return job

    def _abandon_ship(self) -> None:
        """Worker thread, the trio run over: close, so that every thread exits."""
        with self._lock:
            self._close_locked()
            self._done.clear()


def _median_and_p99_ms(samples: deque[float]) -> tuple[float | None, float | None]:
    """The 50th and 99th percentiles of `samples` (seconds) in milliseconds, sorted
    once; (None, None) with no samples."""
    if not samples:
        return None, None
    ordered = sorted(samples)
    n = len(ordered)  # nearest rank: the ceil(q * n)-th, never past the last (q < 1)
    return ordered[math.ceil(0.5 * n) - 1] * 1000.0, ordered[math.ceil(0.99 * n) - 1] * 1000.0


@attrs.frozen
class BridgeStatistics:
    """What `Bridge.statistics` reports (like trio's `MemoryChannelStatistics`).

    Counts since the bridge started; times in milliseconds.  `to_dict` is
    `Bridge.snapshot_stats`, the same as the plain dict the snapshot shows as
    its ``stats``.
    """

    mode: Mode
    """``thread`` (worker threads) or ``process`` (worker processes)."""
    max_workers: int
    """The most worker threads or processes the bridge runs calls in at once."""
    submitted: int
    """Calls the bridge was given: call messages it took (those already past
    their deadline or given up included) and calls started without a message."""
    completed: int
    """Calls that returned: their callers got the value."""
    failed: int
    """Calls that raised (their callers got the error), and calls that could not
    start: no thread could be started, or (process mode) they could not be pickled."""
    abandoned: int
    """Calls given up: dropped before they ran (their callers gave up, their
    deadline passed, or the bridge stopped), or left running (a timeout, a caller
    that gave up, the bridge's stop)."""
    abandoned_running: int
    """Thread mode: abandoned calls whose threads still run; each holds a worker
    slot until it returns."""
    active: int
    """Calls running now for a caller that still waits (queued ones are not active)."""
    peak_active: int
    """The most calls that ever ran at once."""
    queued: int
    """Calls waiting to run: taken by the bridge and waiting for a worker, or
    waiting in its mailbox."""
    run_ms_p50: float | None
    """Median run time of the last 1,000 calls that ran to the end (returned or
    raised), in milliseconds; None before the first."""
    run_ms_p99: float | None
    """99th percentile of the same run times, in milliseconds; None before the first."""
    wait_ms_p50: float | None
    """Median of the last 1,000 waits for a worker, from when the bridge took a
    call to when a worker started it (time in the mailbox not included; thread
    mode counts the calls that ran to the end), in milliseconds; None before
    the first."""
    wait_ms_p99: float | None
    """99th percentile of the same waits, in milliseconds; None before the first."""
    healthy: bool
    """Whether `Bridge.health` found nothing wrong (``warnings`` is empty)."""
    warnings: str
    """What `Bridge.health` found wrong, joined with ``"; "``: all workers busy for
    more than 5 s, a failure rate over 10 % of the last 100 calls, abandoned
    threads still running; empty when healthy."""

    def to_dict(self) -> dict[str, Any]:
        """The same values as a plain dict: what `Bridge.snapshot_stats` returns, and
        what a snapshot's ``stats`` of a bridge holds (``BridgeStatistics(**stats)``
        makes the object again)."""
        return attrs.asdict(self, recurse=False)


class Bridge(Actor):
    """Runs blocking callables for other actors (``mode="thread"`` or ``"process"``).

    The caller gets the result or the callable's own exception (a
    `BaseException` such as `SystemExit` included); a failing callable never
    crashes the bridge.  A `timeout` raises `AskTimeout` in the caller and
    abandons the thread (it runs on, counted as ``abandoned``, and keeps its
    worker slot until it returns) or kills the worker process.  The bridge
    never blocks the loop: it waits only for room (in `receive`) and, at its
    stop, for calls in flight (see `on_stop`).
    """

    def __init__(self, max_workers: int = 8, mode: Mode = "thread") -> None:
        if not isinstance(max_workers, int) or max_workers < 1:
            raise ValueError(f"max_workers must be a positive int, got {max_workers!r}")
        if mode not in ("thread", "process"):
            raise ValueError(f"mode must be 'thread' or 'process', got {mode!r}")
        self.max_workers = max_workers
        self.mode = mode
        self.submitted = 0
        self.completed = 0
        self.failed = 0
        self.abandoned = 0
        self.abandoned_running = 0  # abandoned calls whose threads still run: each holds a slot
        self.peak_active = 0  # process mode; thread mode asks its workers
        self.waiting = 0  # process mode: calls in hand waiting for a free worker
        self._durations: deque[float] = deque(maxlen=SAMPLES)
        self._waits: deque[float] = deque(maxlen=SAMPLES)
        self._outcomes: deque[bool] = deque(maxlen=100)  # True = failed
        self._saturated_since: float | None = None
        self._jobs: set[_Job] = set()  # calls taken and not yet answered nor abandoned
        self._idle: trio.Event | None = None  # on_stop waits on it for _jobs to empty
        self._workers: _Workers | None = None  # thread mode
        self._in_threads = 0  # thread mode: calls queued or in a thread, abandoned ones included
        self._room: trio.Event | None = None  # thread mode: receive waits on it for room
        self._capacity = 2 * max_workers  # thread mode: calls it holds (each worker's next too)
        self._refill = max(1, max_workers // 2)  # thread mode: places free before it takes more
        self._closing = False  # on_stop began: no call starts without a message any more
        self._workers_ok = False  # process mode: a worker process was seen to start and serve

    async def on_start(self) -> None:
        if self.mode == "process":
            _exit_if_a_worker_runs_an_unguarded_main()
            # Imported on a thread: done on the loop by the first call, the import
            # held every actor up for tens of milliseconds (more on a cold disk).
            await trio.to_thread.run_sync(importlib.import_module, "trio_parallel")
            self._limiter = trio.CapacityLimiter(self.max_workers)
        else:
            self._workers = _Workers(
                self.max_workers,
                f"bridge {self.ctx.path}",
                trio.lowlevel.current_trio_token(),
                self._returned,
            )
            self.ctx.nursery.start_soon(self._shut_at_the_end)

    async def receive(self, msg: Any) -> Any:
        """Take one call and start it; blocks only while the bridge has no room.

        Thread mode: the call is queued for the worker threads at once; if that
        makes ``2 * max_workers`` calls queued or in threads, this waits until
        ``max_workers // 2`` (at least one) of them have returned, the next
        messages staying in the mailbox meanwhile; cancelled there (a stop
        past the shutdown timeout), the call stays queued until the bridge lets
        go of it as the incarnation ends (`_shut_at_the_end`).  Process mode:
        this waits for a free worker (within the call's deadline), then starts
        the call; cancelled there, the call never starts and its caller hears
        that the bridge stopped.
        """
        if not isinstance(msg, BlockingCall):
            return UNHANDLED
        reply = self.ctx.defer_reply()
        self.submitted += 1
        workers = self._workers
        if workers is None:
            await self._receive_for_a_process(msg, reply)
            return None
        if msg.cancelled or (msg.deadline != math.inf and msg.deadline <= trio.current_time()):
            self._not_taken(msg, reply)
            return None
        self._take(workers, msg, reply)
        if self._in_threads >= self._capacity:
            # Waiting here (not in a task) is what bounds the queue: while it is
            # full, further calls stay in this actor's bounded mailbox.  Waking
            # for several places at once spares a task step per call.
            self._room = trio.Event()
            await self._room.wait()
        return None

    def start_now(self, call: BlockingCall, late_reply: Callable[[Any], None]) -> Reply | None:
        """Loop thread: start `call` now, without a message, if taking it would do just that.

        For `System.run_blocking`, which has checked that this bridge runs, has
        no stop requested and nothing in its mailbox, so the call overtakes
        none.  This needs a thread bridge that is not stopping, a deadline not
        yet past, and room to spare: fewer than ``2 * max_workers - 1`` calls
        queued or in threads, one place being kept for the call the mailbox may
        bring next, so the bridge holds no more calls than when every call
        comes as a message.  Returns the reply to wait on (``late_reply`` gets
        a value that comes after its asker gave up), or None: ask instead.
        Never blocks.
        """
        workers = self._workers
        if workers is None or self._closing or self._in_threads >= self._capacity - 1:
            return None
        if call.deadline != math.inf and call.deadline <= trio.current_time():
            return None  # the message path says it timed out
        reply = Reply(late_reply)
        self.submitted += 1
        self._take(workers, call, reply)
        return reply

    # -- thread mode (loop thread) ----------------------------------------------
    def _take(self, workers: _Workers, call: BlockingCall, reply: DeferredReply | Reply) -> None:
        """Queue a live call for the worker threads (a free one starts it at once)."""
        job = _Job(call, reply, queued_at=perf_counter())
        try:
            workers.submit(job)
        except RuntimeError as exc:  # not one thread could be started
            self.failed += 1
            self._outcomes.append(True)
            reply.fail(exc)
            return
        self._jobs.add(job)
        call.on_cancel = functools.partial(self._give_up, job)
        self._in_threads += 1
        if self._saturated_since is None and self._in_threads >= self.max_workers:
            self._saturated_since = trio.current_time()

    def _returned(self, jobs: list[_Job]) -> None:
        """`_Workers`' batch: calls whose threads returned, abandoned ones included."""
        for job in jobs:
            try:
                self._thread_returned(job)
            except Exception:  # a bug here must not lose the rest of the batch
                log.exception("bridge %s: handing back %r failed", self.ctx.path, job.call)
        self._threads_changed()

    def _thread_returned(self, job: _Job) -> None:
        self._in_threads -= 1
        result, job.result = job.result, None
        if job.state == "abandoned":
            # Only now, with its thread returned, does an abandoned call give back its slot.
            self.abandoned_running -= 1
            job.state = "returned"
            return
        if job.state != "pending":  # pragma: no cover - a returned call was never dropped
            return
        job.state = "done"
        job.call.on_cancel = None
        self._forget(job)
        self._durations.append(job.ended_at - job.ran_at)
        self._waits.append(job.ran_at - job.queued_at)
        assert result is not None  # a worker hands a job back with its outcome
        self._answer(job, result)

    def _give_up(self, job: _Job, error: BaseException | None = None) -> None:
        """The caller gave up (or the bridge stops): drop a queued call, abandon a running one."""
        if job.state != "pending":
            return
        assert self._workers is not None
        if not self._workers.drop(job):
            self._abandon(job, error)
            return
        self._dropped(job, error)
        self._threads_changed()

    def _dropped(self, job: _Job, error: BaseException | None) -> None:
        """A call taken back from the queue before any thread ran it: counted abandoned."""
        self.abandoned += 1
        self._in_threads -= 1
        self._let_go(job, "dropped", error)

    def _threads_changed(self) -> None:
        """Calls left the threads or the queue: end saturation, make room."""
        if self._in_threads < self.max_workers:
            self._saturated_since = None
        room = self._room
        if room is not None and self._in_threads <= self._capacity - self._refill:
            self._room = None
            room.set()

    def _let_go(self, job: _Job, state: str, error: BaseException | None) -> None:
        """A call the bridge no longer answers for: its caller gets `error` (or gave up)."""
        job.state = state
        job.call.on_cancel = None
        self._forget(job)
        job.reply.fail(error if error is not None else _gave_up(job.call))

    def _forget(self, job: _Job) -> None:
        """The bridge no longer answers for `job`; the last one wakes `on_stop`."""
        self._jobs.discard(job)
        if self._idle is not None and not self._jobs:
            self._idle.set()

    # -- process mode ----------------------------------------------------------
    async def _receive_for_a_process(self, msg: BlockingCall, reply: DeferredReply) -> None:
        payload = b""
        if not msg.cancelled:
            try:
                payload = _pickle_call(msg)  # now: a caller's mistake never waits for a worker
            except NotSerializable as exc:
                self.failed += 1
                self._outcomes.append(True)
                reply.fail(exc)
                return
        queued_at = trio.current_time()
        acquired = False
        if not msg.cancelled and msg.deadline > queued_at:
            try:
                self._limiter.acquire_on_behalf_of_nowait(msg)
                acquired = True
            except trio.WouldBlock:
                # Waiting here (not in a task) is what bounds the queue: while every
                # worker is busy, further calls stay in this actor's bounded mailbox.
                self.waiting += 1
                try:
                    with trio.move_on_at(msg.deadline):
                        await self._limiter.acquire_on_behalf_of(msg)
                        acquired = True
                finally:
                    self.waiting -= 1
        if acquired:
            if not msg.cancelled:
                self._waits.append(trio.current_time() - queued_at)
                self._start(msg, reply, payload)
                return
            self._limiter.release_on_behalf_of(msg)  # gave up while we waited for a worker
        self._not_taken(msg, reply)

    def _not_taken(self, call: BlockingCall, reply: DeferredReply) -> None:
        """A call that never starts: its caller gave up, or its time ran out, while it queued."""
        self.abandoned += 1
        reply.fail(_gave_up(call) if call.cancelled else AskTimeout(f"{call!r} timed out queued"))

    def _start(self, call: BlockingCall, reply: DeferredReply, payload: bytes) -> None:
        job = _Job(call, reply, started=trio.current_time())
        self._jobs.add(job)
        self.peak_active = max(self.peak_active, len(self._jobs))
        if self._saturated_since is None and len(self._jobs) >= self.max_workers:
            self._saturated_since = job.started
        self.ctx.nursery.start_soon(self._run_in_process, job, payload)

    def _answer(self, job: _Job, result: outcome.Outcome[Any]) -> None:
        """Count how a call ended and answer its caller with it."""
        if isinstance(result, outcome.Value):
            self.completed += 1
            self._outcomes.append(False)
            job.reply.send(result.value)
        else:
            assert isinstance(result, outcome.Error)
            self.failed += 1
            self._outcomes.append(True)
            job.reply.fail(result.error)

    def _finish(self, job: _Job, result: outcome.Outcome[Any]) -> None:
        """A process call ended."""
        if job.state != "pending":
            return
        self._answer(job, result)
        self._durations.append(trio.current_time() - job.started)
        self._release(job, "done")

    def _abandon(self, job: _Job, error: BaseException | None) -> None:
        """Stop waiting for a running call; its thread (if any) runs on, counted.

        A thread keeps its worker slot until it returns (`_thread_returned`
        gives it back); a worker process is killed before its slot is given back.
        """
        if job.state != "pending":
            return
        self.abandoned += 1
        if self.mode == "thread":
            self.abandoned_running += 1
            self._let_go(job, "abandoned", error)
            return
        if job.scope is not None:
            job.scope.cancel()
        job.reply.fail(error if error is not None else _gave_up(job.call))
        self._release(job, "abandoned")

    def _release(self, job: _Job, state: str) -> None:
        job.state = state
        job.call.on_cancel = None
        self._forget(job)
        self._limiter.release_on_behalf_of(job.call)
        if len(self._jobs) < self.max_workers:
            self._saturated_since = None

    async def _run_in_process(self, job: _Job, payload: bytes) -> None:
        import trio_parallel  # only process bridges pay for the import

        call = job.call
        with trio.CancelScope(deadline=call.deadline) as job.scope:
            call.on_cancel = job.scope.cancel
            result: outcome.Outcome[Any]
            try:
                if not self._workers_ok:
                    # A tiny first job: a worker that dies before it runs anything is
                    # told apart from one that died in the call, whatever its size.
                    await trio_parallel.run_sync(_worker_ready, kill_on_cancel=True)
                    self._workers_ok = True
                done, body = await trio_parallel.run_sync(
                    _run_pickled, payload, kill_on_cancel=True
                )
                result = _unpickle_outcome(call, done, body)
            except trio_parallel.BrokenWorkerError as exc:  # the worker died
                result = outcome.Error(self._explain_dead_worker(exc))
            except Exception as exc:
                result = outcome.Error(exc)
            job.scope = None
            self._finish(job, result)
            return
        # cancelled: the worker process was killed
        error = _gave_up(call) if call.cancelled else AskTimeout(f"{call!r} timed out")
        self._abandon(job, error)

    def _explain_dead_worker(self, exc: BaseException) -> BaseException:
        process = exc.args[-1] if exc.args else None
        if getattr(process, "exitcode", None) != NO_MAIN_GUARD_EXIT:
            return exc
        error = RuntimeError(
            f"process bridge {self.ctx.path} cannot start worker processes: each one "
            f"imports the main script {_main_script()} again, and that script, having no "
            f"`{MAIN_GUARD}` guard, starts the actor system again inside the worker. "
            f"Move the code that starts the system into an `{MAIN_GUARD}` block."
        )
        error.__cause__ = exc
        return error

    # -- stop, health, stats ------------------------------------------------------
    async def on_stop(self, reason: object) -> None:
        """Let calls in flight finish, up to this child's shutdown timeout; then let go.

        Blocks until every call the bridge took is answered (queued calls still
        run) or the shutdown timeout cancels the wait.  Then calls still queued
        fail with `ActorStopped` without running, running ones are abandoned
        (their callers get `ActorStopped`), and the worker threads are told to
        exit: idle ones end at once and are joined (off the loop, for at most
        `JOIN_TIMEOUT` seconds, shielded); one running an abandoned call exits
        as soon as that call returns.
        """
        self._closing = True
        try:
            if self._jobs:
                log.info(
                    "bridge %s waiting for %d call(s) to finish", self.ctx.path, len(self._jobs)
                )
                self._idle = trio.Event()
                await self._idle.wait()
        finally:
            await self._shut()

    async def _shut_at_the_end(self) -> None:
        """Thread mode, in ``ctx.nursery``: `_shut` when the incarnation ends without `on_stop`.

        `on_stop` does not run when the incarnation is cancelled first: a stop
        past the shutdown timeout while `receive` waits for room, a kill, an
        outer cancel scope; then this lets go of every call (their callers
        hear the bridge stopped) and ends the threads.  A crash or an interrupt
        (cancelled with source ``nursery`` or ``KeyboardInterrupt``) runs
        `on_stop` next, which first lets the calls in flight finish; after a
        normal `on_stop` this does nothing.
        """
        try:
            await trio.sleep_forever()
        except trio.Cancelled as cancelled:
            if getattr(cancelled, "source", "unknown") not in ("nursery", "KeyboardInterrupt"):
                await self._shut()
            raise

    async def _shut(self) -> None:
        """Let go of every call, close the queue, and join the idle threads (shielded).

        Returns at once the second time.  The join runs off the loop and takes
        at most `JOIN_TIMEOUT` seconds (idle threads end at once).
        """
        self._closing = True
        ending = self._close()
        if ending:
            with trio.CancelScope(shield=True), trio.move_on_after(JOIN_TIMEOUT):
                await trio.to_thread.run_sync(
                    _Workers.join, ending, JOIN_TIMEOUT, abandon_on_cancel=True
                )

    def _close(self) -> list[threading.Thread]:
        """Let go of every call; close the worker threads' queue; the threads to join."""
        ending: list[threading.Thread] = []
        if self._workers is not None:
            dropped, ending = self._workers.close()
            for job in dropped:
                self._dropped(job, None)
        if self._jobs:
            log.warning(
                "bridge %s abandoned %d call(s) still running at shutdown",
                self.ctx.path,
                len(self._jobs),
            )
            for job in list(self._jobs):
                self._abandon(job, None)
        return ending

    def health(self) -> tuple[bool, list[str]]:
        """(healthy, what is wrong): every worker busy for more than
        `SATURATION_WARNING` seconds; more than 10 % of the last 100 calls failed
        (once there are 10); abandoned threads still running (when they hold every
        worker, new calls queue).  Healthy when the list is empty.  Never blocks;
        loop thread only."""
        warnings: list[str] = []
        now = trio.current_time()
        if self._saturated_since is not None and now - self._saturated_since > SATURATION_WARNING:
            warnings.append(
                f"saturated: all {self.max_workers} workers busy for "
                f"{now - self._saturated_since:.1f}s"
            )
        if len(self._outcomes) >= 10:
            rate = sum(self._outcomes) / len(self._outcomes)
            if rate > 0.10:
                warnings.append(
                    f"failure rate {rate:.0%} over the last {len(self._outcomes)} calls"
                )
        if self.abandoned_running >= self.max_workers:
            warnings.append(
                f"all {self.max_workers} workers held by abandoned threads: "
                "new calls queue until one returns"
            )
        elif self.abandoned_running:
            warnings.append(f"{self.abandoned_running} abandoned thread(s) still running")
        return not warnings, warnings

    def statistics(self) -> BridgeStatistics:
        """The bridge's counters, latencies and health now, as a `BridgeStatistics`.

        Never blocks.  Loop thread only; once the bridge stopped, its final
        counts.  Users who hold no bridge instance read the same values from a
        snapshot: ``BridgeStatistics(**system.snapshot().find(path).stats)``.
        """
        healthy, warnings = self.health()
        run_p50, run_p99 = _median_and_p99_ms(self._durations)
        wait_p50, wait_p99 = _median_and_p99_ms(self._waits)
        in_queue, peak = 0, self.peak_active  # in_queue: taken, waiting for a worker thread
        if self._workers is not None:
            in_queue, peak = self._workers.counts()
        return BridgeStatistics(
            mode=self.mode,
            max_workers=self.max_workers,
            submitted=self.submitted,
            completed=self.completed,
            failed=self.failed,
            abandoned=self.abandoned,
            abandoned_running=self.abandoned_running,
            # calls running for a caller that still waits (queued ones are not active)
            active=len(self._jobs) - in_queue,
            peak_active=peak,
            queued=self.waiting + in_queue + self.ctx.ref.mailbox_depth,
            run_ms_p50=run_p50,
            run_ms_p99=run_p99,
            wait_ms_p50=wait_p50,
            wait_ms_p99=wait_p99,
            healthy=healthy,
            warnings="; ".join(warnings),
        )

    def snapshot_stats(self) -> dict[str, Any]:
        """`statistics` as a plain dict (`BridgeStatistics.to_dict`), for the snapshot."""
        return self.statistics().to_dict()


# -- process mode: what crosses the pipe ----------------------------------------


def _module(name: Any) -> str:
    # a worker process imports the main script as __mp_main__: to the caller it is __main__
    return "__main__" if name == "__mp_main__" else str(name)


def _name(fn: Any) -> str:
    qualname = getattr(fn, "__qualname__", None)
    if not isinstance(qualname, str):
        return _what(fn)
    module = getattr(fn, "__module__", None)
    return f"{_module(module)}.{qualname}" if module else qualname


def _type_name(cls: type) -> str:
    if cls.__module__ == "builtins":
        return cls.__qualname__
    return f"{_module(cls.__module__)}.{cls.__qualname__}"


def _what(value: Any) -> str:
    """A short description of `value` for an error message: its type (and name)."""
    if isinstance(getattr(value, "__qualname__", None), str) and callable(value):
        return f"{type(value).__name__} {_name(value)}"
    return f"a {_type_name(type(value))}"


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _pickle_call(call: BlockingCall) -> bytes:
    """The call as the worker will get it; `NotSerializable` naming what cannot be pickled.

    Pickling runs the values' own code (``__reduce__``): whatever that raises,
    a `SystemExit` or `GeneratorExit` included, is the caller's mistake and
    never leaves the bridge's handler (where it would stop the system); only a
    `KeyboardInterrupt` (Ctrl-C may land here) goes on.
    """
    try:
        return pickle.dumps((call.fn, call.args, call.kwargs), pickle.HIGHEST_PROTOCOL)
    except KeyboardInterrupt:
        raise
    except BaseException as exc:
        raise NotSerializable(_unpicklable(call, exc)) from None


def _unpicklable(call: BlockingCall, exc: BaseException) -> str:
    """Which part of `call` cannot be pickled (pickled one by one, on this error path only)."""
    name = _name(call.fn)
    parts: list[tuple[str, Any]] = [(f"args[{i}] of {name}", a) for i, a in enumerate(call.args)]
    parts += [(f"keyword argument {k!r} of {name}", a) for k, a in call.kwargs.items()]
    culprit, why = f"the call to {name}", _why(exc)
    try:
        pickle.dumps(call.fn, pickle.HIGHEST_PROTOCOL)
    except KeyboardInterrupt:
        raise
    except BaseException as error:
        culprit, why = f"the function {name}", _why(error)
    else:
        for what, value in parts:
            try:
                pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
            except KeyboardInterrupt:
                raise
            except BaseException as error:
                culprit, why = f"{what} ({_what(value)})", _why(error)
                break
    return f"{culprit} cannot be pickled for a worker process ({why}): {PROCESS_NEEDS}"


def _pickled_error(exc: BaseException) -> tuple[bytes | None, str, str, str]:
    """Worker process: an exception as its pickle (None if it has none) and as text."""
    text = "".join(traceback.format_exception(exc))
    try:
        message = str(exc)
    except BaseException:  # the worker process: whatever the error's own code raises
        message = f"<str() of {type(exc).__qualname__} failed>"
    try:
        # tracebacks, causes and attributes travel too, as trio-parallel sends them
        importlib.import_module("tblib.pickling_support").install(exc)
        blob: bytes | None = pickle.dumps(exc, pickle.HIGHEST_PROTOCOL)
    except BaseException:
        blob = None
    return blob, _type_name(type(exc)), message, text


def _run_pickled(payload: bytes) -> tuple[bool, Any]:
    """Worker process: unpickle the call, run it, and pickle what comes of it; never raises.

    Returns ``(True, pickled result)`` or ``(False, _pickled_error(exc))``.
    Unpickling the call and pickling its result run the values' own code: what
    that raises, a `BaseException` included, is the caller's `NotSerializable`
    (escaping to trio-parallel, it would be raised in the bridge's task).
    """
    try:
        fn, args, kwargs = pickle.loads(payload)
    except BaseException as exc:
        return False, _pickled_error(
            NotSerializable(
                f"the call could not be unpickled in the worker process ({_why(exc)}): "
                f"{PROCESS_NEEDS}"
            )
        )
    try:
        result = fn(*args, **kwargs)
        if inspect.iscoroutine(result):
            result.close()
            raise TypeError(f"{_name(fn)} is async: a bridge runs plain (sync) functions")
    except BaseException as exc:  # the callable's own error travels back, whatever it is
        if exc.__traceback__ is not None and exc.__traceback__.tb_next is not None:
            exc.__traceback__ = exc.__traceback__.tb_next  # from the callable down
        return False, _pickled_error(exc)
    try:
        return True, pickle.dumps(result, pickle.HIGHEST_PROTOCOL)
    except BaseException as exc:
        return False, _pickled_error(
            NotSerializable(
                f"the result of {_name(fn)} ({_what(result)}) cannot be pickled "
                f"to come back from the worker process ({_why(exc)})"
            )
        )


def _unpickle_outcome(call: BlockingCall, done: bool, body: Any) -> outcome.Outcome[Any]:
    """Loop thread: what `_run_pickled` sent back, as the caller's outcome.

    Unpickling runs the values' own code: what that raises (a `SystemExit`
    included, not a `KeyboardInterrupt`) is the caller's, never the bridge's.
    """
    if done:
        try:
            return outcome.Value(pickle.loads(body))
        except KeyboardInterrupt:
            raise
        except BaseException as exc:
            return outcome.Error(
                NotSerializable(
                    f"the result of {_name(call.fn)} could not be unpickled here ({_why(exc)})"
                )
            )
    blob, type_name, message, text = body
    if blob is not None:
        try:
            error = pickle.loads(blob)
        except KeyboardInterrupt:
            raise
        except BaseException:
            error = None
        if isinstance(error, BaseException):
            return outcome.Error(error)
    return outcome.Error(RemoteError(type_name, message, text))


def _worker_ready() -> bool:
    return True


def _main_script() -> str:
    # while a worker imports it again, the main script is __mp_main__
    for name in ("__mp_main__", "__main__"):
        path = getattr(sys.modules.get(name), "__file__", None)
        if path:
            return repr(path)
    return "(unknown)"


def _exit_if_a_worker_runs_an_unguarded_main() -> None:
    """A process bridge starting while multiprocessing bootstraps this process.

    A spawned worker imports the main script again; one without a main guard
    starts its actor system there again, and its process bridge would start
    workers of its own (multiprocessing refuses), forever.  Such a worker can
    never serve: it says why and exits with `NO_MAIN_GUARD_EXIT`, which the
    bridge in the parent turns into an error that says so.
    """
    import multiprocessing

    if not getattr(multiprocessing.current_process(), "_inheriting", False):
        return
    sys.stderr.write(
        f"troupe: worker process {os.getpid()} of a process bridge exits: importing the "
        f"main script {_main_script()} again started the actor system inside the worker, "
        f"because the script has no `{MAIN_GUARD}` guard. Move the code that starts "
        f"the system into an `{MAIN_GUARD}` block.\n"
    )
    sys.stderr.flush()
    os._exit(NO_MAIN_GUARD_EXIT)


def _gave_up(call: BlockingCall) -> BaseException:
    return ActorStopped(f"{call!r} was abandoned: its caller or the bridge stopped")


__all__ = ["BlockingCall", "Bridge", "BridgeStatistics"]

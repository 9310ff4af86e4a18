"""The bridge actor: blocking work in worker threads or processes, off the loop.

Rule 4 of the design: blocking work never runs on the loop thread.  An actor
calls ``await self.ctx.run_blocking(fn, *args)``; that asks a bridge (by
default ``/system/bridge``), which starts the call in its own nursery under a
`trio.CapacityLimiter` and answers through `ctx.defer_reply()`, so many calls
run at once while the bridge keeps handling messages.  When every worker is
busy the bridge stops taking messages, so waiting calls queue in its bounded
mailbox, in order.

The bound is strict: at most ``max_workers`` threads work for a bridge at any
moment, abandoned ones included.  A call abandoned by a timeout or by its
caller keeps its worker slot until its thread really returns (as
`trio.to_thread.run_sync` keeps its limiter token), so a bridge whose slots are
all held by abandoned threads queues new calls, and says so in its health.

Process mode (``mode="process"``, trio-parallel): the call is pickled when the
bridge takes it, so an argument that cannot be pickled is the caller's
`NotSerializable` before anything runs.  In the worker, `_run_pickled` runs it
and pickles what comes of it: a result, or an exception together with its type
name, message and traceback text, which the caller gets as a `RemoteError` when
the exception itself cannot cross.  A worker that finds itself started by a
main script without an ``if __name__ == "__main__":`` guard exits with
`NO_MAIN_GUARD_EXIT`, which the bridge turns into an error that says so.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import inspect
import logging
import math
import os
import pickle
import sys
import traceback
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Literal

import outcome
import trio

from .actor import Actor
from .errors import AskTimeout, NotSerializable, RemoteError
from .messages import UNHANDLED, DeferredReply

log = logging.getLogger("troupe.bridge")

Mode = Literal["thread", "process"]
SAMPLES = 1000
SATURATION_WARNING = 5.0  # seconds all workers busy before health says so
NO_MAIN_GUARD_EXIT = 78  # a worker process's exit status: "the main script has no guard"
PROCESS_NEEDS = (
    "process-mode work must be a module-level function with picklable arguments "
    "(no lambdas, nested functions, locks, open files or sockets)"
)
MAIN_GUARD = 'if __name__ == "__main__":'


class BlockingCall:
    """A request to a bridge.  `cancel()` (the asker gave up) abandons it."""

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
        self.deadline = deadline  # trio time; queueing counts against it too
        self.cancelled = False
        self.on_cancel: Callable[[], None] | None = None  # set by the bridge while it runs

    def cancel(self) -> None:
        self.cancelled = True
        if self.on_cancel is not None:
            self.on_cancel()

    def __repr__(self) -> str:
        return f"BlockingCall({getattr(self.fn, '__qualname__', self.fn)!r})"


class _Job:
    """One call the bridge has started: in a worker thread, or a process task."""

    __slots__ = ("call", "reply", "scope", "started", "state")

    def __init__(self, call: BlockingCall, reply: DeferredReply, started: float) -> None:
        self.call = call
        self.reply = reply
        self.started = started
        self.state = "running"  # -> "done" | "abandoned" (-> "returned": its thread ended)
        self.scope: trio.CancelScope | None = None  # its timer, or its process task


def _percentile(samples: deque[float], q: float) -> float | None:
    if not samples:
        return None
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


class Bridge(Actor):
    """Runs blocking callables for other actors (``mode="thread"`` or ``"process"``).

    The caller gets the result or the callable's own exception; a failing
    callable never crashes the bridge.  A `timeout` raises `AskTimeout` in the
    caller and abandons the thread (it runs on, counted as ``abandoned``, and
    keeps its worker slot until it returns) or kills the worker process.
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
        self.abandoned_running = 0  # abandoned threads still running: each holds a slot
        self.active = 0
        self.peak_active = 0
        self.waiting = 0
        self._durations: deque[float] = deque(maxlen=SAMPLES)
        self._waits: deque[float] = deque(maxlen=SAMPLES)
        self._outcomes: deque[bool] = deque(maxlen=100)  # True = failed
        self._saturated_since: float | None = None
        self._idle = trio.Event()
        self._idle.set()
        self._workers_ok = False  # process mode: a worker process was seen to start and serve

    async def on_start(self) -> None:
        if self.mode == "process":
            _exit_if_a_worker_runs_an_unguarded_main()
            # Imported on a thread: done on the loop by the first call, the import
            # held every actor up for tens of milliseconds (more on a cold disk).
            await trio.to_thread.run_sync(importlib.import_module, "trio_parallel")
        self._limiter = trio.CapacityLimiter(self.max_workers)
        self._token = trio.lowlevel.current_trio_token()
        self._jobs: set[_Job] = set()

    async def receive(self, msg: Any) -> Any:
        if not isinstance(msg, BlockingCall):
            return UNHANDLED
        reply = self.ctx.defer_reply()
        self.submitted += 1
        payload = b""
        if self.mode == "process" and not msg.cancelled:
            try:
                payload = _pickle_call(msg)  # now: a caller's mistake never waits for a worker
            except NotSerializable as exc:
                self.failed += 1
                self._outcomes.append(True)
                reply.fail(exc)
                return None
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
                return None
            self._limiter.release_on_behalf_of(msg)  # gave up while we waited for a worker
        # the caller gave up, or its time ran out, while the call was queued
        self.abandoned += 1
        reply.fail(_gave_up(msg) if msg.cancelled else AskTimeout(f"{msg!r} timed out queued"))
        return None

    def _start(self, call: BlockingCall, reply: DeferredReply, payload: bytes) -> None:
        job = _Job(call, reply, trio.current_time())
        self._jobs.add(job)
        self.active += 1
        self.peak_active = max(self.peak_active, self.active)
        if self._saturated_since is None and self._slots_held() >= self.max_workers:
            self._saturated_since = job.started
        if self._idle.is_set():
            self._idle = trio.Event()
        if self.mode == "process":
            self.ctx.nursery.start_soon(self._run_in_process, job, payload)
            return
        fn: Callable[..., Any] = call.fn
        if call.kwargs:
            fn = functools.partial(fn, **call.kwargs)
        call.on_cancel = functools.partial(self._abandon, job, None)
        if call.deadline < math.inf:
            self.ctx.nursery.start_soon(self._expire, job)
        # No task per call: trio's thread cache runs it, and the worker thread
        # hands the outcome back with one run_sync_soon.
        trio.lowlevel.start_thread_soon(
            functools.partial(fn, *call.args), functools.partial(self._thread_done, job)
        )

    def _thread_done(self, job: _Job, result: outcome.Outcome[Any]) -> None:
        """Worker thread: pass the outcome to the loop (never touch state from here)."""
        with contextlib.suppress(trio.RunFinishedError):
            self._token.run_sync_soon(self._finish, job, result)

    def _finish(self, job: _Job, result: outcome.Outcome[Any]) -> None:
        """Loop thread: a call ended (or an abandoned thread finally did)."""
        if job.state == "abandoned":
            # Only now, with its thread returned, does an abandoned call give back its slot.
            self.abandoned_running -= 1
            job.state = "returned"
            self._limiter.release_on_behalf_of(job.call)
            self._slots_freed()
            return
        if job.state != "running":
            return
        if job.scope is not None:
            job.scope.cancel()  # its timer
        if isinstance(result, outcome.Value):
            self.completed += 1
            self._outcomes.append(False)
            job.reply.send(result.value)
        else:
            assert isinstance(result, outcome.Error)
            self.failed += 1
            self._outcomes.append(True)
            job.reply.fail(result.error)
        self._durations.append(trio.current_time() - job.started)
        self._release(job, "done")

    def _abandon(self, job: _Job, error: BaseException | None) -> None:
        """Loop thread: stop waiting for a call; its thread (if any) runs on, counted.

        A thread keeps its worker slot until it returns (`_finish` gives it
        back); a worker process is killed before its slot is given back.
        """
        if job.state != "running":
            return
        self.abandoned += 1
        if job.scope is not None:
            job.scope.cancel()
        job.reply.fail(error if error is not None else _gave_up(job.call))
        if self.mode == "thread":
            self.abandoned_running += 1
            self._release(job, "abandoned", keep_slot=True)
        else:
            self._release(job, "abandoned")

    def _release(self, job: _Job, state: str, keep_slot: bool = False) -> None:
        job.state = state
        job.call.on_cancel = None
        self._jobs.discard(job)
        if not keep_slot:
            self._limiter.release_on_behalf_of(job.call)
        self.active -= 1
        self._slots_freed()
        if self.active == 0:
            self._idle.set()

    def _slots_held(self) -> int:
        return self.active + self.abandoned_running

    def _slots_freed(self) -> None:
        if self._slots_held() < self.max_workers:
            self._saturated_since = None

    async def _expire(self, job: _Job) -> None:
        with trio.CancelScope() as job.scope:
            await trio.sleep_until(job.call.deadline)
            self._abandon(job, AskTimeout(f"{job.call!r} did not finish within its timeout"))

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

    async def on_stop(self, reason: object) -> None:
        """Let calls in flight finish, up to this child's shutdown timeout; then let go."""
        try:
            if self.active:
                log.info("bridge %s waiting for %d call(s) to finish", self.ctx.path, self.active)
                await self._idle.wait()
        finally:
            if self._jobs:
                log.warning(
                    "bridge %s abandoned %d call(s) still running at shutdown",
                    self.ctx.path,
                    len(self._jobs),
                )
                for job in list(self._jobs):
                    self._abandon(job, None)

    def health(self) -> tuple[bool, list[str]]:
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

    def snapshot_stats(self) -> dict[str, Any]:
        healthy, warnings = self.health()
        ms = 1000.0

        def p(samples: deque[float], q: float) -> float | None:
            value = _percentile(samples, q)
            return None if value is None else value * ms

        return {
            "mode": self.mode,
            "max_workers": self.max_workers,
            "submitted": self.submitted,
            "completed": self.completed,
            "failed": self.failed,
            "abandoned": self.abandoned,
            "abandoned_running": self.abandoned_running,
            "active": self.active,
            "peak_active": self.peak_active,
            "queued": self.waiting + self.ctx.ref.mailbox_depth,
            "run_ms_p50": p(self._durations, 0.5),
            "run_ms_p99": p(self._durations, 0.99),
            "wait_ms_p50": p(self._waits, 0.5),
            "wait_ms_p99": p(self._waits, 0.99),
            "healthy": healthy,
            "warnings": "; ".join(warnings),
        }


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
    """The call as the worker will get it; `NotSerializable` naming what cannot be pickled."""
    try:
        return pickle.dumps((call.fn, call.args, call.kwargs), pickle.HIGHEST_PROTOCOL)
    except Exception as exc:
        raise NotSerializable(_unpicklable(call, exc)) from None


def _unpicklable(call: BlockingCall, exc: BaseException) -> str:
    """Which part of `call` cannot be pickled (pickled one by one, on this error path only)."""
    name = _name(call.fn)
    parts: list[tuple[str, Any]] = [(f"args[{i}] of {name}", a) for i, a in enumerate(call.args)]
    parts += [(f"keyword argument {k!r} of {name}", a) for k, a in call.kwargs.items()]
    culprit, why = f"the call to {name}", _why(exc)
    try:
        pickle.dumps(call.fn, pickle.HIGHEST_PROTOCOL)
    except Exception as error:
        culprit, why = f"the function {name}", _why(error)
    else:
        for what, value in parts:
            try:
                pickle.dumps(value, pickle.HIGHEST_PROTOCOL)
            except Exception as error:
                culprit, why = f"{what} ({_what(value)})", _why(error)
                break
    return f"{culprit} cannot be pickled for a worker process ({why}): {PROCESS_NEEDS}"


def _pickled_error(exc: BaseException) -> tuple[bytes | None, str, str, str]:
    """Worker process: an exception as its pickle (None if it has none) and as text."""
    text = "".join(traceback.format_exception(exc))
    try:
        message = str(exc)
    except Exception:
        message = f"<str() of {type(exc).__qualname__} failed>"
    try:
        # tracebacks, causes and attributes travel too, as trio-parallel sends them
        importlib.import_module("tblib.pickling_support").install(exc)
        blob: bytes | None = pickle.dumps(exc, pickle.HIGHEST_PROTOCOL)
    except Exception:
        blob = None
    return blob, _type_name(type(exc)), message, text


def _run_pickled(payload: bytes) -> tuple[bool, Any]:
    """Worker process: unpickle the call, run it, and pickle what comes of it; never raises.

    Returns ``(True, pickled result)`` or ``(False, _pickled_error(exc))``.
    """
    try:
        fn, args, kwargs = pickle.loads(payload)
    except Exception as exc:
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
    except Exception as exc:
        return False, _pickled_error(
            NotSerializable(
                f"the result of {_name(fn)} ({_what(result)}) cannot be pickled "
                f"to come back from the worker process ({_why(exc)})"
            )
        )


def _unpickle_outcome(call: BlockingCall, done: bool, body: Any) -> outcome.Outcome[Any]:
    """Loop thread: what `_run_pickled` sent back, as the caller's outcome."""
    if done:
        try:
            return outcome.Value(pickle.loads(body))
        except Exception as exc:
            return outcome.Error(
                NotSerializable(
                    f"the result of {_name(call.fn)} could not be unpickled here ({_why(exc)})"
                )
            )
    blob, type_name, message, text = body
    if blob is not None:
        try:
            error = pickle.loads(blob)
        except Exception:
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
    from .errors import ActorStopped

    return ActorStopped(f"{call!r} was abandoned: its caller or the bridge stopped")


__all__ = ["BlockingCall", "Bridge"]

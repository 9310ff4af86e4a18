"""The bridge actor: blocking work in worker threads or processes, off the loop.

Rule 4 of the design: blocking work never runs on the loop thread.  An actor
calls ``await self.ctx.run_blocking(fn, *args)``; that asks a bridge (by
default ``/system/bridge``), which starts the call in its own nursery under a
`trio.CapacityLimiter` and answers through `ctx.defer_reply()`, so many calls
run at once while the bridge keeps handling messages.  When every worker is
busy the bridge stops taking messages, so waiting calls queue in its bounded
mailbox, in order.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Literal

import trio

from .actor import Actor
from .errors import AskTimeout
from .messages import UNHANDLED, DeferredReply

log = logging.getLogger("troupe.bridge")

Mode = Literal["thread", "process"]
SAMPLES = 1000
SATURATION_WARNING = 5.0  # seconds all workers busy before health says so


class BlockingCall:
    """A request to a bridge; `cancel()` abandons it (from the asker's side)."""

    __slots__ = ("args", "cancelled", "deadline", "fn", "kwargs", "scope")

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
        self.scope: trio.CancelScope | None = None

    def cancel(self) -> None:
        self.cancelled = True
        if self.scope is not None:
            self.scope.cancel()

    def __repr__(self) -> str:
        return f"BlockingCall({getattr(self.fn, '__qualname__', self.fn)!r})"


def _percentile(samples: deque[float], q: float) -> float | None:
    if not samples:
        return None
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


class Bridge(Actor):
    """Runs blocking callables for other actors (``mode="thread"`` or ``"process"``).

    The caller gets the result or the callable's own exception; a failing
    callable never crashes the bridge.  A `timeout` raises `AskTimeout` in the
    caller and abandons the thread (it runs on, counted as ``abandoned``) or
    kills the worker process.
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
        self.abandoned_running = 0
        self.active = 0
        self.peak_active = 0
        self.waiting = 0
        self._durations: deque[float] = deque(maxlen=SAMPLES)
        self._waits: deque[float] = deque(maxlen=SAMPLES)
        self._outcomes: deque[bool] = deque(maxlen=100)  # True = failed
        self._saturated_since: float | None = None
        self._idle = trio.Event()
        self._idle.set()

    async def on_start(self) -> None:
        self._limiter = trio.CapacityLimiter(self.max_workers)
        # `_limiter` bounds the workers; trio's default thread limiter (40 per run,
        # still held by abandoned threads) must not bound them a second time.
        self._threads = trio.CapacityLimiter(math.inf)
        self._token = trio.lowlevel.current_trio_token()

    async def receive(self, msg: Any) -> Any:
        if not isinstance(msg, BlockingCall):
            return UNHANDLED
        reply = self.ctx.defer_reply()
        self.submitted += 1
        if msg.cancelled or msg.deadline <= trio.current_time():
            # the caller gave up (or its time ran out) while the call was queued
            self.abandoned += 1
            reply.fail(_gave_up(msg) if msg.cancelled else AskTimeout(f"{msg!r} timed out queued"))
            return None
        queued_at = trio.current_time()
        token = object()
        # Waiting here (not in a task) is what bounds the queue: while every
        # worker is busy, further calls stay in this actor's bounded mailbox.
        self.waiting += 1
        try:
            await self._limiter.acquire_on_behalf_of(token)
        finally:
            self.waiting -= 1
        self._waits.append(trio.current_time() - queued_at)
        self.ctx.nursery.start_soon(self._run, msg, reply, token)
        return None

    async def _run(self, call: BlockingCall, reply: DeferredReply, token: object) -> None:
        self.active += 1
        self.peak_active = max(self.peak_active, self.active)
        if self.active >= self.max_workers and self._saturated_since is None:
            self._saturated_since = trio.current_time()
        if self._idle.is_set():
            self._idle = trio.Event()
        started = trio.current_time()
        try:
            with trio.CancelScope(deadline=call.deadline) as scope:
                call.scope = scope
                if call.cancelled:
                    scope.cancel()
                try:
                    result = await self._call(call)
                except Exception as exc:  # the callable's own error goes to the caller
                    self.failed += 1
                    self._outcomes.append(True)
                    reply.fail(exc)
                else:
                    self.completed += 1
                    self._outcomes.append(False)
                    reply.send(result)
                self._durations.append(trio.current_time() - started)
            if scope.cancelled_caught:
                self.abandoned += 1
                if call.cancelled:
                    reply.fail(_gave_up(call))
                else:
                    reply.fail(AskTimeout(f"{call!r} did not finish within its timeout"))
        finally:
            self._limiter.release_on_behalf_of(token)
            self.active -= 1
            if self.active < self.max_workers:
                self._saturated_since = None
            if self.active == 0:
                self._idle.set()
            if reply.pending:  # cancelled from outside: the bridge is being stopped
                self.abandoned += 1
                reply.fail(_gave_up(call))

    async def _call(self, call: BlockingCall) -> Any:
        fn: Callable[..., Any] = call.fn
        if call.kwargs:
            fn = functools.partial(fn, **call.kwargs)
        if self.mode == "process":
            import trio_parallel  # only process bridges pay for the import

            return await trio_parallel.run_sync(fn, *call.args, kill_on_cancel=True)
        ended: dict[str, str] = {}

        def run() -> Any:
            try:
                return fn(*call.args)
            finally:
                # setdefault is atomic: whoever comes first (this thread ending,
                # or the loop abandoning it) decides who accounts for the thread.
                if ended.setdefault("by", "thread") == "abandoned":
                    with contextlib.suppress(trio.RunFinishedError):
                        self._token.run_sync_soon(self._abandoned_thread_ended)

        # Cancelled before a thread started: nothing runs on, nothing to account for.
        await trio.lowlevel.checkpoint_if_cancelled()
        try:
            return await trio.to_thread.run_sync(run, abandon_on_cancel=True, limiter=self._threads)
        except trio.Cancelled:
            if ended.setdefault("by", "abandoned") == "abandoned":
                self.abandoned_running += 1
            raise

    def _abandoned_thread_ended(self) -> None:
        self.abandoned_running -= 1

    async def on_stop(self, reason: object) -> None:
        """Let calls in flight finish, up to this child's shutdown timeout."""
        if self.active:
            log.info("bridge %s waiting for %d call(s) to finish", self.ctx.path, self.active)
            await self._idle.wait()

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
        if self.abandoned_running:
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


def _gave_up(call: BlockingCall) -> BaseException:
    from .errors import ActorStopped

    return ActorStopped(f"{call!r} was abandoned: its caller or the bridge stopped")


__all__ = ["BlockingCall", "Bridge"]

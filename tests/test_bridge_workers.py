"""A thread bridge's own worker threads: their bound, their end, and no call lost.

Each thread-mode bridge has at most ``max_workers`` threads (named
``bridge <path> worker <n>``) that take queued calls themselves and hand
results back to the loop in batches.  These tests count threads, calls and
tasks, never durations; real threads need real time, so every wait is bounded
by `WAIT` and every gate is opened when a test ends.
"""

from __future__ import annotations

import gc
import random
import threading
import time
import weakref
from typing import Any

import pytest
import trio
import trio.testing
from test_bridge import WAIT, Counter, app, eventually, gates, stats
from test_chaos import all_tasks

import runtime
from runtime import child


def worker_threads(path: str) -> list[threading.Thread]:
    """The live worker threads of the bridge at `path`."""
    prefix = f"bridge {path} worker "
    return [t for t in threading.enumerate() if t.name.startswith(prefix)]


def task_count() -> int:
    """How many tasks the trio run has now."""
    return len(all_tasks())


class Bail(BaseException):
    """Not an Exception: what a callable might raise to get out of everything."""


def bail() -> None:
    raise Bail("out")


def leave() -> None:
    raise SystemExit(3)


async def test_worker_threads_end_when_the_bridge_stops() -> None:
    tree = app(child(runtime.Bridge, name="ending", kwargs={"max_workers": 4}))
    barrier = threading.Barrier(4, timeout=WAIT)  # four calls at once: four threads

    def meet(i: int) -> int:
        barrier.wait()
        return i

    with trio.fail_after(WAIT):
        async with runtime.open_system(tree) as system:
            async with trio.open_nursery() as nursery:
                for i in range(4):
                    nursery.start_soon(
                        lambda i=i: system.run_blocking(meet, i, bridge="/app/ending")
                    )
            assert len(worker_threads("/app/ending")) == 4  # idle now, not yet timed out
        # the stop told every idle worker to exit and joined it
        assert worker_threads("/app/ending") == []


async def test_idle_worker_threads_exit_after_the_idle_timeout(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(runtime.bridge, "IDLE_TIMEOUT", 0.05)
    tree = app(child(runtime.Bridge, name="idling", kwargs={"max_workers": 1}))
    with trio.fail_after(WAIT):
        async with runtime.open_system(tree) as system:

            def name() -> str:
                return threading.current_thread().name

            first = await system.run_blocking(name, bridge="/app/idling")
            assert first == "bridge /app/idling worker 1"
            await eventually(lambda: not worker_threads("/app/idling"), "the idle worker exited")
            # a new call starts a new thread
            assert (
                await system.run_blocking(name, bridge="/app/idling")
                == "bridge /app/idling worker 2"
            )
            s = stats(system, "/app/idling")
            assert (s["completed"], s["active"], s["queued"]) == (2, 0, 0)


async def test_no_more_threads_than_max_workers_with_abandoned_and_queued_calls() -> None:
    counter = Counter()
    tree = app(child(runtime.Bridge, name="bound", kwargs={"max_workers": 2}))
    with gates() as g, trio.fail_after(WAIT):
        gate = g.new()
        async with runtime.open_system(tree) as system:
            for tag in ("stuck1", "stuck2"):
                with pytest.raises(runtime.AskTimeout):
                    await system.run_blocking(
                        counter.job, tag, gate, bridge="/app/bound", timeout=0.1
                    )
            results: list[str] = []

            async def call(tag: str) -> None:
                results.append(
                    await system.run_blocking(counter.job, tag, None, bridge="/app/bound")
                )

            async with trio.open_nursery() as nursery:
                for i in range(6):
                    nursery.start_soon(call, f"new{i}")
                await eventually(lambda: stats(system, "/app/bound")["queued"] == 6, "six queued")
                assert len(worker_threads("/app/bound")) == 2  # held by the abandoned calls
                assert counter.started == ["stuck1", "stuck2"]
                gate.set()
            assert sorted(results) == [f"new{i}" for i in range(6)]
            assert counter.peak == 2
            assert len(worker_threads("/app/bound")) <= 2
            await eventually(
                lambda: stats(system, "/app/bound")["abandoned_running"] == 0, "stuck calls ended"
            )


async def test_a_worker_running_an_abandoned_call_exits_once_it_returns() -> None:
    counter = Counter()
    tree = app(child(runtime.Bridge, name="abandoning", kwargs={"max_workers": 1}, shutdown=0.2))
    with gates() as g, trio.fail_after(WAIT):
        gate = g.new()
        outcomes: dict[str, BaseException] = {}
        async with runtime.open_system(tree) as system:

            async def call(tag: str) -> None:
                try:
                    await system.run_blocking(counter.job, tag, gate, bridge="/app/abandoning")
                except BaseException as exc:
                    outcomes[tag] = exc
                    if not isinstance(exc, runtime.TroupeError):
                        raise

            async with trio.open_nursery() as nursery:
                nursery.start_soon(call, "running")
                await eventually(lambda: counter.now == 1, "the first call runs")
                nursery.start_soon(call, "queued")  # taken by the bridge, queued for the worker
                await eventually(
                    lambda: (stats(system, "/app/abandoning")["submitted"], counter.now) == (2, 1),
                    "the bridge took the second call",
                )
                # The stop waits for the call in hand past the shutdown timeout, then the
                # bridge is cancelled (on_stop does not run) and lets go of both calls.
                system.stop()
        # the queued call never ran; both callers heard the bridge stopped
        assert counter.started == ["running"]
        assert set(outcomes) == {"running", "queued"}
        assert all(isinstance(e, runtime.ActorStopped) for e in outcomes.values()), outcomes
        (thread,) = worker_threads("/app/abandoning")  # still in the abandoned call
        gate.set()
        await trio.to_thread.run_sync(thread.join, WAIT)
        assert not thread.is_alive()
        assert counter.done == 1  # it ran nothing more once its call returned


async def test_a_graceful_stop_runs_the_calls_already_queued_for_a_thread() -> None:
    counter = Counter()
    tree = app(child(runtime.Bridge, name="graceful", kwargs={"max_workers": 2}))
    with gates() as g, trio.fail_after(WAIT):
        gate = g.new()
        results: list[str] = []
        async with runtime.open_system(tree) as system:

            async def call(tag: str, gate: threading.Event | None) -> None:
                results.append(
                    await system.run_blocking(counter.job, tag, gate, bridge="/app/graceful")
                )

            async with trio.open_nursery() as nursery:
                nursery.start_soon(call, "a", gate)
                nursery.start_soon(call, "b", gate)
                await eventually(lambda: counter.now == 2, "both workers busy")
                nursery.start_soon(call, "c", None)  # queued for a thread
                await eventually(lambda: stats(system, "/app/graceful")["queued"] == 1, "c queued")
                system.stop()  # waits for the calls in flight, the queued one included
                await trio.sleep(0.05)
                assert sorted(counter.started) == ["a", "b"]  # c still queued
                gate.set()
        assert sorted(results) == ["a", "b", "c"]
        assert worker_threads("/app/graceful") == []


async def test_a_base_exception_from_the_callable_is_the_callers_and_the_worker_lives_on() -> None:
    tree = app(child(runtime.Bridge, name="bailing", kwargs={"max_workers": 1}))
    with trio.fail_after(WAIT):
        async with runtime.open_system(tree) as system:
            before = await system.run_blocking(threading.get_ident, bridge="/app/bailing")
            with pytest.raises(Bail):
                await system.run_blocking(bail, bridge="/app/bailing")
            with pytest.raises(SystemExit) as info:
                await system.run_blocking(leave, bridge="/app/bailing")
            assert info.value.code == 3
            after = await system.run_blocking(threading.get_ident, bridge="/app/bailing")
            assert after == before  # the same thread served every call
            assert len(worker_threads("/app/bailing")) == 1
            s = stats(system, "/app/bailing")
            assert (s["submitted"], s["completed"], s["failed"]) == (4, 2, 2)
            assert system.snapshot().find("/app/bailing").restarts == 0


async def test_no_result_is_lost_when_callers_are_cancelled_at_any_point() -> None:
    """Callers cancelled at random points: queued in the mailbox, queued for a
    thread, running, or with their result on its way back in a batch."""
    rng = random.Random(17)
    tree = app(child(runtime.Bridge, name="cancels", kwargs={"max_workers": 4}))
    n = 200
    ran: list[int] = []
    lock = threading.Lock()

    def job(i: int) -> int:
        time.sleep(0.0005)
        with lock:
            ran.append(i)
        return i

    results: dict[int, int] = {}
    cancelled: set[int] = set()
    with trio.fail_after(WAIT):
        async with runtime.open_system(tree) as system:

            async def call(i: int, scope: trio.CancelScope) -> None:
                with scope:
                    results[i] = await system.run_blocking(job, i, bridge="/app/cancels")
                if scope.cancelled_caught:
                    cancelled.add(i)

            async def cancel_later(scope: trio.CancelScope, delay: float) -> None:
                await trio.sleep(delay)
                scope.cancel()

            async with trio.open_nursery() as nursery:
                for i in range(n):
                    scope = trio.CancelScope()
                    nursery.start_soon(call, i, scope)
                    if i % 3 == 0:
                        nursery.start_soon(cancel_later, scope, rng.uniform(0, 0.05))
            await eventually(
                lambda: stats(system, "/app/cancels")["abandoned_running"] == 0, "every thread back"
            )
            s = stats(system, "/app/cancels")
        # every caller either got its own result or was cancelled, never both or neither
        assert set(results) | cancelled == set(range(n))
        assert not set(results) & cancelled
        assert all(results[i] == i for i in results)
        assert all(i in results for i in range(n) if i % 3)  # never cancelled: answered
        # the bridge's books balance: nothing in flight, every call accounted for once
        assert s["submitted"] == n
        assert s["completed"] + s["failed"] + s["abandoned"] == n
        # (a caller cancelled just as its result came back may still miss it: counted
        # completed, the value dropped with the cancelled wait, as for any ask)
        assert s["completed"] >= len(results)
        assert (s["active"], s["queued"], s["failed"]) == (0, 0, 0)
        assert set(results) <= set(ran)  # what was answered really ran


async def test_no_task_outlives_its_call() -> None:
    """A call with a timeout leaves nothing behind (each used to leave a timer task
    sleeping out its whole timeout, with the call and its result)."""
    tree = app(child(runtime.Bridge, name="tasks", kwargs={"max_workers": 4}))
    with trio.fail_after(WAIT):
        async with runtime.open_system(tree) as system:
            await system.run_blocking(len, "warm", bridge="/app/tasks", timeout=30)
            await trio.testing.wait_all_tasks_blocked()
            before = task_count()
            for i in range(50):
                assert await system.run_blocking(abs, -i, bridge="/app/tasks", timeout=30) == i
            async with trio.open_nursery() as nursery:
                for i in range(50):
                    nursery.start_soon(
                        lambda i=i: system.run_blocking(abs, i, bridge="/app/tasks", timeout=30)
                    )
            await trio.testing.wait_all_tasks_blocked()
            assert task_count() == before
            assert stats(system, "/app/tasks")["completed"] == 101


class Box:
    """Something a call takes, makes or raises that a weak reference can watch."""


class Boom(Exception):
    pass


async def test_an_idle_worker_thread_keeps_nothing_of_its_calls_alive() -> None:
    """Long-lived workers keep memory flat: once a call is answered, the thread that
    ran it (idle now, not exited) holds neither its function, its arguments, its
    result nor its error."""
    tree = app(child(runtime.Bridge, name="flat", kwargs={"max_workers": 1}))
    with trio.fail_after(WAIT):
        async with runtime.open_system(tree) as system:
            arg, bad = Box(), Box()

            def make(box: Box) -> Box:
                return Box()

            def fail(box: Box) -> None:
                raise Boom(box)

            result = await system.run_blocking(make, arg, bridge="/app/flat")
            with pytest.raises(Boom) as info:
                await system.run_blocking(fail, bad, bridge="/app/flat")
            watched = [weakref.ref(x) for x in (make, fail, arg, bad, result, info.value)]
            del make, fail, arg, bad, result, info

            def all_gone() -> bool:
                gc.collect()
                return all(ref() is None for ref in watched)

            await eventually(all_gone, "the idle worker let go of its calls")
            assert len(worker_threads("/app/flat")) == 1  # idle, not exited
            s = stats(system, "/app/flat")
            assert (s["submitted"], s["completed"], s["failed"]) == (2, 1, 1)


class CountingBridge(runtime.Bridge):
    """A bridge subclass with a receive of its own: it sees every call as a message."""

    def __init__(self, seen: list[Any], max_workers: int = 8) -> None:
        super().__init__(max_workers=max_workers)
        self.seen = seen

    async def receive(self, msg: Any) -> Any:
        self.seen.append(msg)
        return await super().receive(msg)


async def test_calls_start_without_a_message_only_on_a_plain_bridge() -> None:
    seen: list[Any] = []
    tree = app(
        child(runtime.Bridge, name="plain", kwargs={"max_workers": 2}),
        child(CountingBridge, name="counting", kwargs={"seen": seen, "max_workers": 2}),
    )
    with trio.fail_after(WAIT):
        async with runtime.open_system(tree) as system:
            for i in range(5):
                assert await system.run_blocking(abs, -i, bridge="/app/counting") == i
                assert await system.run_blocking(abs, -i, bridge="/app/plain") == i
            assert len(seen) == 5  # the subclass's receive saw every call
            assert system.snapshot().find("/app/counting").processed == 5
            plain = system.snapshot().find("/app/plain")
            assert plain.stats["submitted"] == plain.stats["completed"] == 5


async def test_a_restarted_bridge_lets_go_of_its_calls_and_serves_on_new_threads() -> None:
    """A crash with two calls running and one queued for a thread (all started without a
    message, so nothing is in hand and the crash is taken at once)."""
    counter = Counter()
    spec = child(runtime.Bridge, name="restarting", kwargs={"max_workers": 2}, shutdown=0.2)
    with gates() as g, trio.fail_after(WAIT):
        gate = g.new()
        outcomes: dict[str, BaseException] = {}
        async with runtime.open_system(app(spec)) as system:
            ref = system.ref("/app/restarting")

            async def call(tag: str) -> None:
                try:
                    await system.run_blocking(counter.job, tag, gate, bridge="/app/restarting")
                except runtime.TroupeError as exc:
                    outcomes[tag] = exc

            async with trio.open_nursery() as nursery:
                for tag in ("running1", "running2"):
                    nursery.start_soon(call, tag)
                await eventually(lambda: counter.now == 2, "two calls run")
                nursery.start_soon(call, "queued")
                await eventually(
                    lambda: stats(system, "/app/restarting")["queued"] == 1, "one queued"
                )
                old = worker_threads("/app/restarting")
                assert len(old) == 2
                runtime.testing.crash(ref, RuntimeError("injected"))
            # past its shutdown timeout the crashed incarnation let go of all three
            assert set(outcomes) == {"running1", "running2", "queued"}
            assert all(isinstance(e, runtime.ActorStopped) for e in outcomes.values()), outcomes
            await eventually(
                lambda: system.snapshot().find("/app/restarting").restarts == 1, "restarted"
            )
            # the new incarnation serves at once, on threads of its own
            assert await system.run_blocking(abs, -7, bridge="/app/restarting") == 7
            assert sorted(counter.started) == ["running1", "running2"]  # queued never ran
            gate.set()
            for thread in old:
                await trio.to_thread.run_sync(thread.join, WAIT)
                assert not thread.is_alive()
            assert counter.done == 2


async def test_a_crashed_bridge_still_lets_the_calls_in_flight_finish() -> None:
    """A crash runs on_stop, which waits (up to the shutdown timeout) for calls in flight."""
    counter = Counter()
    spec = child(runtime.Bridge, name="crashing", kwargs={"max_workers": 2}, shutdown=WAIT)
    with gates() as g, trio.fail_after(WAIT):
        gate = g.new()
        results: list[str] = []
        async with runtime.open_system(app(spec)) as system:
            ref = system.ref("/app/crashing")

            async def call(tag: str) -> None:
                results.append(
                    await system.run_blocking(counter.job, tag, gate, bridge="/app/crashing")
                )

            async with trio.open_nursery() as nursery:
                for tag in ("a", "b", "c"):  # two run, one queued for a thread
                    nursery.start_soon(call, tag)
                await eventually(lambda: counter.now == 2, "two calls run")
                runtime.testing.crash(ref, RuntimeError("injected"))
                await trio.sleep(0.05)
                assert results == []  # the crashed incarnation waits for them
                gate.set()
            assert sorted(results) == ["a", "b", "c"]
            await eventually(
                lambda: system.snapshot().find("/app/crashing").restarts == 1, "restarted"
            )
            assert await system.run_blocking(abs, -7, bridge="/app/crashing") == 7

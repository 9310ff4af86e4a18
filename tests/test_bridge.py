"""The bridge actor: blocking work off the loop, in threads (and processes), with stats.

Thread tests run on real time with generous bounds and assert on counts, never
on durations.  Blocking jobs wait on `threading.Event`s that the test sets, and
every test releases its gates in a ``finally`` so that no thread outlives it.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from test_statistics import BRIDGE_KEYS

import runtime
from runtime import Actor, Supervisor, child

WAIT = 30.0  # generous bound for anything a real thread or process must do


# -- helpers -------------------------------------------------------------------


def app(*children: Any) -> Supervisor:
    return Supervisor("app", children=list(children))


class Gates:
    """Threading events a test opens; all of them are opened when the test ends."""

    def __init__(self) -> None:
        self.events: list[threading.Event] = []

    def new(self) -> threading.Event:
        event = threading.Event()
        self.events.append(event)
        return event

    def open_all(self) -> None:
        for event in self.events:
            event.set()


@contextmanager
def gates() -> Iterator[Gates]:
    g = Gates()
    try:
        yield g
    finally:
        g.open_all()


def wait_gate(gate: threading.Event) -> None:
    if not gate.wait(WAIT):
        raise TimeoutError("test gate never opened")


async def eventually(check: Callable[[], bool], what: str, timeout: float = WAIT) -> None:
    """Poll `check` on the loop (real time) until it holds; fail after `timeout`."""
    with trio.move_on_after(timeout):
        while not check():
            await trio.sleep(0.005)
        return
    raise AssertionError(f"timed out waiting for: {what}")


def stats(system: runtime.System, path: str = "/system/bridge") -> dict[str, Any]:
    return system.snapshot().find(path).stats


class Counter:
    """Counts how many jobs run at once (thread-safe) and the peak."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.now = 0
        self.peak = 0
        self.done = 0
        self.started: list[Any] = []

    def enter(self, tag: Any = None) -> None:
        with self.lock:
            self.now += 1
            self.peak = max(self.peak, self.now)
            self.started.append(tag)

    def leave(self) -> None:
        with self.lock:
            self.now -= 1
            self.done += 1

    def job(self, tag: Any, gate: threading.Event | None) -> Any:
        """A counted blocking job: waits on `gate` (if any), then returns `tag`."""
        self.enter(tag)
        try:
            if gate is not None:
                wait_gate(gate)
            return tag
        finally:
            self.leave()


class Ticker(Actor):
    """Counts ticks from `ctx.every`: proof that the loop keeps running."""

    def __init__(self) -> None:
        self.ticks = 0

    async def on_start(self) -> None:
        self.ctx.every(0.005, "tick")

    async def receive(self, msg: Any) -> Any:
        if msg == "tick":
            self.ticks += 1
            return None
        if msg == "ticks":
            return self.ticks
        return runtime.UNHANDLED


class Caller(Actor):
    """Runs blocking work through `ctx.run_blocking` from inside a handler."""

    async def receive(self, msg: Any) -> Any:
        match msg:
            case ("run", fn, args, kwargs):
                return await self.ctx.run_blocking(fn, *args, **kwargs)
            case _:
                return runtime.UNHANDLED


class Recorder(Actor):
    """Records what it got; answers ("get",) with the list."""

    subscriptions = ("jobs.*",)

    def __init__(self) -> None:
        self.got: list[Any] = []

    async def receive(self, msg: Any) -> Any:
        match msg:
            case ("get",):
                return list(self.got)
            case ("double", n):
                return 2 * n
            case runtime.Event(topic=topic, payload=payload):
                self.got.append((topic, payload))
            case _:
                self.got.append(msg)


class CustomError(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(f"custom failure {code}")
        self.code = code


def fail_with(code: int) -> None:
    raise CustomError(code)


# -- results and errors --------------------------------------------------------


async def test_run_blocking_returns_the_result_from_a_worker_thread() -> None:
    loop_thread = threading.get_ident()
    with trio.fail_after(WAIT):
        async with runtime.open_system(app(child(Caller, name="caller"))) as system:
            result = await system.run_blocking(
                lambda a, b=0: (a + b, threading.get_ident()), 2, b=3
            )
            assert result[0] == 5
            assert result[1] != loop_thread  # it really ran off the loop thread

            caller = system.ref("/app/caller")
            assert await caller.ask(("run", pow, (2, 10), {}), timeout=WAIT) == 1024
            backwards = ("run", sorted, ([3, 1, 2],), {"reverse": True})
            assert await caller.ask(backwards, timeout=WAIT) == [3, 2, 1]


async def test_callable_exception_propagates_with_its_type_and_the_bridge_survives() -> None:
    with trio.fail_after(WAIT):
        async with runtime.open_system(app(child(Caller, name="caller"))) as system:
            with pytest.raises(CustomError) as info:
                await system.run_blocking(fail_with, 7)
            assert info.value.code == 7
            # through an actor too: the actor's handler sees the callable's own error
            caller = system.ref("/app/caller")
            with pytest.raises(runtime.ActorCrashed) as crashed:
                await caller.ask(("run", fail_with, (8,), {}), timeout=WAIT)
            assert isinstance(crashed.value.__cause__, CustomError)
            assert crashed.value.__cause__.code == 8

            assert await system.run_blocking(len, "still works") == 11
            info_ = system.snapshot().find("/system/bridge")
            assert info_.restarts == 0
            assert info_.state == "running"
            assert info_.stats["failed"] == 2
            assert info_.stats["completed"] == 1
            assert info_.stats["submitted"] == 3


async def test_bridge_with_bad_arguments_fails_to_start() -> None:
    for kwargs, error in (
        ({"max_workers": 0}, ValueError),
        ({"max_workers": 2.5}, ValueError),
        ({"mode": "fibre"}, ValueError),
    ):
        with trio.fail_after(WAIT), pytest.raises(error):
            async with runtime.open_system(app(child(runtime.Bridge, name="b", kwargs=kwargs))):
                pass  # pragma: no cover - the start fails


# -- timeouts and cancellation -------------------------------------------------


async def test_timeout_raises_ask_timeout_and_abandons_the_running_thread() -> None:
    finished = threading.Event()

    def block(gate: threading.Event) -> str:
        wait_gate(gate)
        finished.set()
        return "late"

    with gates() as g, trio.fail_after(WAIT):
        gate = g.new()
        async with runtime.open_system(app()) as system:
            with pytest.raises(runtime.AskTimeout) as info:
                await system.run_blocking(block, gate, timeout=0.2)
            assert isinstance(info.value, TimeoutError)
            assert "abandoned" in str(info.value)

            await eventually(lambda: stats(system)["abandoned"] == 1, "abandoned counted")
            s = stats(system)
            assert not finished.is_set()  # the thread keeps running
            assert s["abandoned_running"] == 1
            assert s["active"] == 0  # no caller waits for it (it keeps its slot until it returns)
            assert s["completed"] == 0 and s["failed"] == 0
            assert s["healthy"] is False
            assert "abandoned" in s["warnings"]

            # the bridge still serves while the abandoned thread runs on
            assert await system.run_blocking(lambda: "fresh") == "fresh"

            gate.set()
            await eventually(lambda: stats(system)["abandoned_running"] == 0, "thread ended")
            assert finished.is_set()
            s = stats(system)
            assert s["healthy"] is True
            assert s["warnings"] == ""
            assert s["abandoned"] == 1


async def test_cancelling_the_caller_abandons_the_thread() -> None:
    started = threading.Event()

    def block(gate: threading.Event) -> None:
        started.set()
        wait_gate(gate)

    with gates() as g, trio.fail_after(WAIT):
        gate = g.new()
        async with runtime.open_system(app()) as system:
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:

                    async def cancel_when_started() -> None:
                        await trio.to_thread.run_sync(started.wait, WAIT)
                        scope.cancel()

                    nursery.start_soon(cancel_when_started)
                    await system.run_blocking(block, gate)
                    raise AssertionError("run_blocking returned instead of being cancelled")
            assert scope.cancelled_caught
            await eventually(lambda: stats(system)["abandoned"] == 1, "abandoned counted")
            assert stats(system)["abandoned_running"] == 1
            gate.set()
            await eventually(lambda: stats(system)["abandoned_running"] == 0, "thread ended")


async def test_a_call_cancelled_while_queued_never_runs_and_leaves_no_ghost() -> None:
    """max_workers=1: A runs, B waits for the worker, C waits in the mailbox.

    Cancelling B and C before A finishes must count both as abandoned, never
    run them, and leave no "abandoned thread still running" behind (none ran).
    """
    counter = Counter()

    job = counter.job

    tree = app(child(runtime.Bridge, name="one", kwargs={"max_workers": 1}))
    with gates() as g, trio.fail_after(WAIT):
        gate = g.new()
        async with runtime.open_system(tree) as system:
            results: dict[str, Any] = {}

            async def call(tag: str, gate: threading.Event | None, scope: trio.CancelScope) -> None:
                with scope:
                    results[tag] = await system.run_blocking(job, tag, gate, bridge="/app/one")

            async with trio.open_nursery() as nursery:
                scopes = {tag: trio.CancelScope() for tag in "ABC"}
                nursery.start_soon(call, "A", gate, scopes["A"])
                await eventually(lambda: counter.now == 1, "A running")
                for tag in "BC":
                    nursery.start_soon(call, tag, None, scopes[tag])
                    await trio.testing.wait_all_tasks_blocked()
                await eventually(lambda: stats(system, "/app/one")["queued"] == 2, "B, C queued")
                scopes["B"].cancel()
                scopes["C"].cancel()
                await trio.testing.wait_all_tasks_blocked()
                gate.set()
            assert results == {"A": "A"}
            assert counter.started == ["A"]
            await eventually(lambda: stats(system, "/app/one")["abandoned"] == 2, "B, C abandoned")
            s = stats(system, "/app/one")
            assert s["abandoned_running"] == 0
            assert s["healthy"] is True, s["warnings"]
            assert s["completed"] == 1


# -- concurrency ---------------------------------------------------------------


async def test_eight_jobs_on_four_workers_run_four_at_a_time_while_the_loop_ticks() -> None:
    counter = Counter()
    barrier = threading.Barrier(4, timeout=WAIT)  # passes only with 4 jobs in at once

    def job(i: int, gate: threading.Event) -> int:
        counter.enter(i)
        try:
            barrier.wait()
            wait_gate(gate)
            return i * i
        finally:
            counter.leave()

    tree = app(
        child(Ticker, name="ticker"),
        child(runtime.Bridge, name="four", kwargs={"max_workers": 4}),
    )
    with gates() as g, trio.fail_after(WAIT):
        gate = g.new()
        async with runtime.open_system(tree) as system:
            ticker = system.ref("/app/ticker")
            results: dict[int, int] = {}

            async def call(i: int) -> None:
                results[i] = await system.run_blocking(job, i, gate, bridge="/app/four")

            async with trio.open_nursery() as nursery:
                for i in range(8):
                    nursery.start_soon(call, i)
                await eventually(lambda: counter.now == 4, "four jobs running")
                await eventually(lambda: stats(system, "/app/four")["queued"] == 4, "four queued")
                # the four running jobs block their threads; the loop must keep going
                before = await ticker.ask("ticks")
                with trio.move_on_after(WAIT) as waited:
                    while await ticker.ask("ticks") < before + 20:
                        await trio.sleep(0.005)
                assert not waited.cancelled_caught, "the ticker stalled while the bridge was full"
                assert counter.now == 4
                s = stats(system, "/app/four")
                assert s["active"] == 4 and s["queued"] == 4
                gate.set()
            assert results == {i: i * i for i in range(8)}
            assert counter.peak == 4
            assert counter.done == 8
            s = stats(system, "/app/four")
            assert s["peak_active"] == 4
            assert s["completed"] == 8 and s["active"] == 0 and s["queued"] == 0


async def test_a_wide_bridge_runs_all_its_workers_at_once() -> None:
    """max_workers above trio's default thread limit (40) is honoured."""
    width = 48
    counter = Counter()
    barrier = threading.Barrier(width, timeout=WAIT)

    def job(i: int) -> int:
        counter.enter(i)
        try:
            barrier.wait()
            return i
        finally:
            counter.leave()

    tree = app(child(runtime.Bridge, name="wide", kwargs={"max_workers": width}))
    with trio.fail_after(WAIT):
        async with runtime.open_system(tree) as system:
            results: list[int] = []

            async def call(i: int) -> None:
                results.append(await system.run_blocking(job, i, bridge="/app/wide"))

            async with trio.open_nursery() as nursery:
                for i in range(width):
                    nursery.start_soon(call, i)
            assert sorted(results) == list(range(width))
            assert counter.peak == width


async def test_a_saturated_bridge_starts_queued_calls_in_order() -> None:
    counter = Counter()

    def job(tag: int, gate: threading.Event | None) -> int:
        counter.enter(tag)
        try:
            if gate is not None:
                wait_gate(gate)
            return tag
        finally:
            counter.leave()

    tree = app(child(runtime.Bridge, name="one", kwargs={"max_workers": 1}))
    with gates() as g, trio.fail_after(WAIT):
        gate = g.new()
        async with runtime.open_system(tree) as system:
            results: dict[int, int] = {}

            async def call(tag: int, gate: threading.Event | None) -> None:
                results[tag] = await system.run_blocking(job, tag, gate, bridge="/app/one")

            async with trio.open_nursery() as nursery:
                nursery.start_soon(call, 0, gate)
                await eventually(lambda: counter.now == 1, "first job running")
                for tag in range(1, 11):
                    nursery.start_soon(call, tag, None)
                    await trio.testing.wait_all_tasks_blocked()  # submitted in this order
                await eventually(lambda: stats(system, "/app/one")["queued"] == 10, "ten queued")
                assert counter.started == [0]
                gate.set()
            assert counter.started == list(range(11))
            assert results == {t: t for t in range(11)}
            assert counter.peak == 1


# -- named bridges, non-actor callers, callbacks into the runtime -------------


async def test_named_bridge_child_is_chosen_by_path() -> None:
    def where() -> str:
        return threading.current_thread().name

    tree = app(
        child(runtime.Bridge, name="db", kwargs={"max_workers": 2}),
        child(Caller, name="caller"),
    )
    with trio.fail_after(WAIT):
        async with runtime.open_system(tree) as system:
            caller = system.ref("/app/caller")
            for _ in range(3):
                await caller.ask(("run", where, (), {"bridge": "/app/db"}), timeout=WAIT)
            await caller.ask(("run", where, (), {}), timeout=WAIT)
            db = stats(system, "/app/db")
            assert db["max_workers"] == 2
            assert db["submitted"] == 3 and db["completed"] == 3
            default = stats(system)
            assert default["submitted"] == 1 and default["completed"] == 1
            assert system.snapshot().find("/app/db").cls == "Bridge"
            with pytest.raises(runtime.ActorNotFound):
                await system.run_blocking(where, bridge="/app/nope")


async def test_worker_threads_call_back_into_the_runtime_without_deadlock() -> None:
    tree = app(child(Recorder, name="rec"), child(Caller, name="caller"))
    with trio.fail_after(WAIT):
        async with runtime.open_system(tree) as system:
            rec = system.ref("/app/rec")

            def callback(n: int) -> tuple[int, int]:
                for i in range(n):
                    rec.tell(("told", i))
                doubled = rec.ask_blocking(("double", n), timeout=WAIT)
                delivered = system.publish("jobs.done", n)
                return doubled, delivered

            # from an actor's handler, and from plain async code, on two bridges at once
            caller = system.ref("/app/caller")
            async with trio.open_nursery() as nursery:
                out: dict[str, Any] = {}

                async def via_actor() -> None:
                    out["actor"] = await caller.ask(("run", callback, (5,), {}), timeout=WAIT)

                async def via_system() -> None:
                    out["system"] = await system.run_blocking(callback, 3)

                nursery.start_soon(via_actor)
                nursery.start_soon(via_system)
            assert out == {"actor": (10, 1), "system": (6, 1)}
            got = await rec.ask(("get",))
            told = [m for m in got if m[0] == "told"]
            expected = [("told", i) for i in range(5)] + [("told", i) for i in range(3)]
            assert sorted(told) == sorted(expected)
            done = sorted(m for m in got if m[0] == "jobs.done")
            assert done == [("jobs.done", 3), ("jobs.done", 5)]


# -- stats and health ----------------------------------------------------------


async def test_stats_count_what_happened() -> None:
    with trio.fail_after(WAIT):
        async with runtime.open_system(app()) as system:
            s = stats(system)
            assert list(s) == BRIDGE_KEYS
            assert s["submitted"] == 0 and s["peak_active"] == 0
            assert s["run_ms_p50"] is None and s["wait_ms_p99"] is None
            assert s["healthy"] is True

            for _ in range(3):
                assert await system.run_blocking(time.sleep, 0.001) is None
            with pytest.raises(CustomError):
                await system.run_blocking(fail_with, 1)
            s = stats(system)
            assert (s["submitted"], s["completed"], s["failed"], s["abandoned"]) == (4, 3, 1, 0)
            assert s["active"] == 0 and s["queued"] == 0
            assert s["peak_active"] == 1
            for key in ("run_ms_p50", "run_ms_p99", "wait_ms_p50", "wait_ms_p99"):
                assert isinstance(s[key], float) and s[key] >= 0.0, key
            assert s["run_ms_p99"] >= s["run_ms_p50"] >= 1.0  # time.sleep(0.001) took >= 1 ms
            assert s["healthy"] is True  # 1 failure in 4 is too few calls to judge

            # the same numbers in the JSON-ready form
            def walk(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
                yield node
                for sub in node["children"]:
                    yield from walk(sub)

            tree = system.snapshot().to_dict()
            (entry,) = [n for n in walk(tree["root"]) if n["path"] == "/system/bridge"]
            assert json.loads(json.dumps(entry["stats"])) == stats(system)


async def test_failure_rate_above_ten_percent_makes_the_bridge_unhealthy() -> None:
    with trio.fail_after(WAIT):
        async with runtime.open_system(app()) as system:
            for _ in range(9):
                await system.run_blocking(int, "1")
            with pytest.raises(CustomError):
                await system.run_blocking(fail_with, 1)
            s = stats(system)
            assert s["healthy"] is True, s["warnings"]  # exactly 10 %: not above
            with pytest.raises(CustomError):
                await system.run_blocking(fail_with, 2)
            s = stats(system)
            assert s["healthy"] is False
            assert "failure rate" in s["warnings"]


# -- shutdown ------------------------------------------------------------------


async def test_shutdown_waits_for_calls_in_flight() -> None:
    started = threading.Event()

    def slow() -> str:
        started.set()
        time.sleep(0.2)
        return "finished"

    tree = app(child(runtime.Bridge, name="db", kwargs={"max_workers": 2}))
    outcome: list[Any] = []
    with trio.fail_after(WAIT):
        async with runtime.open_system(tree) as system:
            async with trio.open_nursery() as nursery:

                async def call() -> None:
                    outcome.append(await system.run_blocking(slow, bridge="/app/db"))

                nursery.start_soon(call)
                await trio.to_thread.run_sync(started.wait, WAIT)
                system.stop()
    assert outcome == ["finished"]


async def test_shutdown_abandons_calls_past_the_shutdown_timeout_and_never_hangs() -> None:
    started = threading.Event()

    def stuck(gate: threading.Event) -> None:
        started.set()
        wait_gate(gate)

    tree = app(child(runtime.Bridge, name="db", kwargs={"max_workers": 2}, shutdown=0.3))
    outcome: list[BaseException] = []
    with gates() as g, trio.fail_after(WAIT):
        gate = g.new()
        async with runtime.open_system(tree) as system:
            async with trio.open_nursery() as nursery:

                async def call() -> None:
                    try:
                        await system.run_blocking(stuck, gate, bridge="/app/db")
                    except runtime.TroupeError as exc:
                        outcome.append(exc)

                nursery.start_soon(call)
                await trio.to_thread.run_sync(started.wait, WAIT)
                system.stop()
        # the system is gone although the thread still blocks
        assert not gate.is_set()
    assert len(outcome) == 1
    assert isinstance(outcome[0], runtime.ActorStopped)
    assert "abandoned" in str(outcome[0])


# -- errors that cross process boundaries ---------------------------------------


def test_not_serializable_and_remote_error_are_troupe_errors() -> None:
    assert issubclass(runtime.NotSerializable, runtime.TroupeError)
    assert issubclass(runtime.NotSerializable, TypeError)  # what pickle itself raises
    assert issubclass(runtime.RemoteError, runtime.TroupeError)
    assert not issubclass(runtime.RemoteError, TypeError)

    error = runtime.RemoteError("mylib.ParseError", "bad token 'x'", "Traceback ...\n")
    assert (error.type, error.message, error.traceback) == (
        "mylib.ParseError",
        "bad token 'x'",
        "Traceback ...\n",
    )
    assert str(error) == "mylib.ParseError: bad token 'x'"
    assert str(runtime.RemoteError("KeyboardInterrupt", "")) == "KeyboardInterrupt"
    # it travels as its three strings
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is runtime.RemoteError
    assert (again.type, again.message, again.traceback) == (
        error.type,
        error.message,
        error.traceback,
    )


# -- process mode --------------------------------------------------------------
# Functions run in worker processes must be importable: they live at module level.


def cpu_bound(n: int) -> int:
    return sum(i * i for i in range(n))


def meet(marker_dir: str, me: str, other: str) -> int:
    """Announce `me`, then wait (bounded) until `other` has announced itself."""
    here = Path(marker_dir)
    (here / me).write_text(str(os.getpid()))
    deadline = time.monotonic() + WAIT
    while not (here / other).exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{other} never started while {me} ran")
        time.sleep(0.01)
    cpu_bound(20_000)
    return os.getpid()


def crash_hard() -> None:
    os._exit(1)


def write_pid_and_sleep(path: str) -> None:
    Path(path).write_text(str(os.getpid()))
    time.sleep(WAIT)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


PROCESS_TREE = app(child(runtime.Bridge, name="cpu", kwargs={"max_workers": 2, "mode": "process"}))


async def test_process_mode_runs_cpu_bound_work_in_parallel_processes(tmp_path: Path) -> None:
    with trio.fail_after(2 * WAIT):
        async with runtime.open_system(PROCESS_TREE) as system:
            assert await system.run_blocking(cpu_bound, 1000, bridge="/app/cpu") == cpu_bound(1000)
            pids: dict[str, int] = {}

            async def call(me: str, other: str) -> None:
                pids[me] = await system.run_blocking(
                    meet, str(tmp_path), me, other, bridge="/app/cpu", timeout=WAIT
                )

            async with trio.open_nursery() as nursery:
                nursery.start_soon(call, "a", "b")
                nursery.start_soon(call, "b", "a")
            # each waited for the other to start: two processes ran at the same time
            assert pids["a"] != pids["b"]
            assert os.getpid() not in pids.values()
            assert {int((tmp_path / n).read_text()) for n in "ab"} == set(pids.values())
            s = stats(system, "/app/cpu")
            assert s["mode"] == "process"
            assert s["completed"] == 3 and s["peak_active"] == 2


async def test_process_worker_that_dies_is_a_clear_error_and_the_bridge_keeps_working(
    tmp_path: Path,
) -> None:
    with trio.fail_after(2 * WAIT):
        async with runtime.open_system(PROCESS_TREE) as system:
            with pytest.raises(Exception) as info:
                await system.run_blocking(crash_hard, bridge="/app/cpu")
            assert "BrokenWorker" in type(info.value).__name__ or "died" in str(info.value).lower()
            assert await system.run_blocking(cpu_bound, 100, bridge="/app/cpu") == cpu_bound(100)

            # a timeout kills the worker process
            pid_file = tmp_path / "pid"
            with pytest.raises(runtime.AskTimeout):
                await system.run_blocking(
                    write_pid_and_sleep, str(pid_file), bridge="/app/cpu", timeout=3.0
                )
            assert pid_file.exists(), "the worker never started within the timeout"
            pid = int(pid_file.read_text())
            await eventually(lambda: not pid_alive(pid), "the timed-out worker was killed")

            info_ = system.snapshot().find("/app/cpu")
            assert info_.restarts == 0
            assert info_.stats["failed"] == 1
            assert info_.stats["completed"] == 1
            await eventually(lambda: stats(system, "/app/cpu")["abandoned"] == 1, "abandoned")
            assert await system.run_blocking(cpu_bound, 10, bridge="/app/cpu") == cpu_bound(10)


async def test_saturation_for_a_sustained_period_is_a_health_warning(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Virtual time jumps while the only worker blocks its thread (no deadlines pending)."""
    started = threading.Event()

    def block(gate: threading.Event) -> str:
        started.set()
        wait_gate(gate)
        return "done"

    tree = app(child(runtime.Bridge, name="one", kwargs={"max_workers": 1}))
    with gates() as g:
        gate = g.new()
        async with runtime.open_system(tree) as system:
            async with trio.open_nursery() as nursery:
                results: list[str] = []

                async def call() -> None:
                    results.append(await system.run_blocking(block, gate, bridge="/app/one"))

                nursery.start_soon(call)
                await trio.to_thread.run_sync(started.wait, WAIT)
                await trio.sleep(1.0)
                assert stats(system, "/app/one")["healthy"] is True  # busy, not yet sustained
                await trio.sleep(10.0)
                s = stats(system, "/app/one")
                assert s["healthy"] is False
                assert "saturated" in s["warnings"]
                gate.set()
            assert results == ["done"]
            s = stats(system, "/app/one")
            assert s["healthy"] is True and s["warnings"] == ""


async def test_the_bridge_queue_is_bounded_by_its_mailbox() -> None:
    started = threading.Event()

    def job(gate: threading.Event | None) -> str:
        if gate is not None:
            started.set()
            wait_gate(gate)
        return "ok"

    spec = child(
        runtime.Bridge,
        name="one",
        kwargs={"max_workers": 1},
        mailbox=runtime.Mailbox(capacity=2, overflow="fail"),
    )
    with gates() as g, trio.fail_after(WAIT):
        gate = g.new()
        async with runtime.open_system(app(spec)) as system:
            results: list[str] = []

            async def call(gate: threading.Event | None) -> None:
                results.append(await system.run_blocking(job, gate, bridge="/app/one"))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(call, gate)
                await trio.to_thread.run_sync(started.wait, WAIT)
                for _ in range(3):  # one waits for the worker, two fill the mailbox
                    nursery.start_soon(call, None)
                    await trio.testing.wait_all_tasks_blocked()
                await eventually(lambda: stats(system, "/app/one")["queued"] == 3, "three queued")
                with pytest.raises(runtime.MailboxFull):
                    await system.run_blocking(job, None, bridge="/app/one")
                gate.set()
            assert results == ["ok"] * 4


# -- process mode: what crosses the pipe ------------------------------------------


def touch(path: str, *args: Any, **kwargs: Any) -> str:
    """Leaves a mark if it ever runs."""
    Path(path).write_text("ran")
    return "touched"


class UnpicklableError(Exception):
    """An exception that cannot be pickled: it holds a lock."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


def raise_unpicklable(n: int) -> None:
    raise UnpicklableError(f"boom {n}")


def make_lock() -> Any:
    return threading.Lock()


async def test_process_mode_unpicklable_arguments_raise_not_serializable_before_running(
    tmp_path: Path,
) -> None:
    mark = tmp_path / "ran"
    with trio.fail_after(2 * WAIT):
        async with runtime.open_system(PROCESS_TREE) as system:
            cases: list[tuple[tuple[Any, ...], dict[str, Any], str]] = [
                ((touch, str(mark), threading.Lock()), {}, "args[1]"),
                ((touch, str(mark)), {"key": lambda: 1}, "keyword argument 'key'"),
                ((lambda: touch(str(mark)),), {}, "the function"),
            ]
            for args, kwargs, culprit in cases:
                with pytest.raises(runtime.NotSerializable) as info:
                    await system.run_blocking(*args, bridge="/app/cpu", **kwargs)
                error = info.value
                assert isinstance(error, TypeError) and isinstance(error, runtime.TroupeError)
                message = str(error)
                assert culprit in message, message
                assert "module-level function" in message, message
                assert "picklable arguments" in message, message
            assert not mark.exists()  # nothing ran
            s = stats(system, "/app/cpu")
            assert (s["submitted"], s["failed"], s["completed"], s["active"]) == (3, 3, 0, 0)
            # the bridge keeps working
            assert await system.run_blocking(touch, str(mark), bridge="/app/cpu") == "touched"
            assert mark.exists()


async def test_process_mode_errors_come_back_typed_or_as_remote_error() -> None:
    with trio.fail_after(2 * WAIT):
        async with runtime.open_system(PROCESS_TREE) as system:
            # a picklable exception comes back as itself, attributes and all
            with pytest.raises(CustomError) as custom:
                await system.run_blocking(fail_with, 5, bridge="/app/cpu")
            assert custom.value.code == 5

            # one that cannot be pickled comes back as text: type, message, traceback
            with pytest.raises(runtime.RemoteError) as remote:
                await system.run_blocking(raise_unpicklable, 3, bridge="/app/cpu")
            error = remote.value
            assert error.type.endswith("UnpicklableError"), error.type
            assert error.message == "boom 3"
            assert "UnpicklableError" in str(error) and "boom 3" in str(error)
            assert "raise_unpicklable" in error.traceback, error.traceback
            assert "UnpicklableError: boom 3" in error.traceback, error.traceback

            # a result that cannot be pickled is the caller's NotSerializable, naming it
            with pytest.raises(runtime.NotSerializable) as result:
                await system.run_blocking(make_lock, bridge="/app/cpu")
            assert "result of" in str(result.value) and "make_lock" in str(result.value)

            info_ = system.snapshot().find("/app/cpu")
            assert info_.restarts == 0
            assert (info_.stats["failed"], info_.stats["completed"]) == (3, 0)
            assert await system.run_blocking(cpu_bound, 10, bridge="/app/cpu") == cpu_bound(10)


MAIN_SCRIPT = """\
import os
import sys

import trio

import runtime
from runtime import Supervisor, child

with open("runs.txt", "a") as runs:  # every process that runs this module body
    runs.write(f"{os.getpid()}\\n")


def square(n):
    return n * n


async def main():
    bridge = child(runtime.Bridge, name="cpu", kwargs={"mode": "process", "max_workers": 1})
    async with runtime.open_system(Supervisor("app", children=[bridge])) as system:
        return await system.run_blocking(square, 7, bridge="/app/cpu", timeout=60)


def entry():
    try:
        print(os.getpid(), "RESULT", trio.run(main), flush=True)
    except Exception as exc:
        message = str(exc).replace("\\n", " ")
        print(os.getpid(), "ERROR", type(exc).__name__, message, flush=True)
        sys.exit(3)


"""


def run_script(folder: Path, body: str) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """Run a script that starts a process bridge; return its result and its own output lines."""
    script = folder / "app.py"
    script.write_text(MAIN_SCRIPT + body)
    root = str(Path(runtime.__file__).resolve().parent.parent)
    env = {**os.environ, "PYTHONPATH": root}
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=4 * WAIT,
    )
    mine = [line for line in proc.stdout.splitlines() if line.startswith(f"{proc_pid(folder)} ")]
    return proc, mine


def proc_pid(folder: Path) -> str:
    """The pid of the script's own process: the first that ran its module body."""
    return (folder / "runs.txt").read_text().split()[0]


def test_a_script_without_a_main_guard_gets_an_error_that_says_so(tmp_path: Path) -> None:
    guarded = tmp_path / "guarded"
    guarded.mkdir()
    proc, mine = run_script(guarded, 'if __name__ == "__main__":\n    entry()\n')
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert mine == [f"{proc_pid(guarded)} RESULT 49"], proc.stdout + proc.stderr

    unguarded = tmp_path / "unguarded"
    unguarded.mkdir()
    proc, mine = run_script(unguarded, "entry()\n")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert len(mine) == 1, proc.stdout + proc.stderr
    assert mine[0].startswith(f"{proc_pid(unguarded)} ERROR RuntimeError"), mine[0]
    assert 'if __name__ == "__main__":' in mine[0], mine[0]
    assert "/app/cpu" in mine[0], mine[0]
    # the workers said it too, and the script did not run over and over
    assert 'if __name__ == "__main__":' in proc.stderr, proc.stderr
    assert len((unguarded / "runs.txt").read_text().split()) <= 3

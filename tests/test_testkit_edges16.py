"""Attack on issue 16's TestKit additions: `ref.ask_future` from many threads,
cancelled futures, futures outliving the system; `expect_crashes` blocks that
overlap; `within` nested."""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time
from typing import Any

import pytest
import trio

import runtime
from runtime import Actor, Supervisor, child
from runtime.errors import RuntimeClosed
from runtime.testing import crash, expect_crashes, within

WAIT = 10.0  # real seconds: a bound only a hang reaches


class Slow(Actor):
    async def receive(self, msg: Any) -> Any:
        if msg == "never":
            await trio.sleep_forever()
        await trio.sleep(0.001)
        return msg


class Boom(Actor):
    async def receive(self, msg: Any) -> Any:
        if isinstance(msg, BaseException):
            raise msg
        return msg


def _tree() -> Supervisor:
    # a short shutdown: a stop does not wait long for the message the slow one holds
    return Supervisor(
        "af",
        children=[child(Slow, name="slow", shutdown=0.2), child(Slow, name="quick", shutdown=0.2)],
    )


def test_a_cancelled_ask_future_is_done_for_concurrent_futures_wait() -> None:
    # README "Testing your actors": "ref.ask_future(...) returns a
    # concurrent.futures.Future ... so one thread can wait on several with
    # concurrent.futures.wait", and ref.py: "future.cancel() gives up on the reply".
    #
    # A future its owner cancelled must count as done for `concurrent.futures.wait`
    # and `as_completed` too (they are told only through set_running_or_notify_cancel).
    with runtime.start_in_thread(_tree()) as system:
        ref = system.ref("/af/slow")
        gave_up = ref.ask_future("never", timeout=30)
        answered = system.ref("/af/quick").ask_future("ok", timeout=30)
        assert gave_up.cancel()
        assert gave_up.done()
        done, pending = cf.wait([gave_up, answered], timeout=3.0)
        assert answered in done
        assert not pending, "a cancelled future is done, yet wait() still waits for it"
        assert len(list(cf.as_completed([gave_up], timeout=3.0))) == 1


def test_ask_futures_from_many_threads_all_settle_when_the_system_stops() -> None:
    # holds: 8 threads asking as fast as they can while the system stops; every
    # future completes (a reply, or RuntimeClosed), none is left pending.
    made: list[cf.Future[Any]] = []
    lock = threading.Lock()
    stop = threading.Event()
    odd: list[BaseException] = []
    cm = runtime.start_in_thread(_tree())
    system = cm.__enter__()
    try:
        ref = system.ref("/af/slow")

        def asker() -> None:
            while not stop.is_set():
                try:
                    future = ref.ask_future(1, timeout=30)
                except RuntimeClosed:
                    return
                except BaseException as exc:  # pragma: no cover - a finding
                    odd.append(exc)
                    return
                with lock:
                    made.append(future)

        threads = [threading.Thread(target=asker) for _ in range(8)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + WAIT
        while len(made) < 500 and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        cm.__exit__(None, None, None)
        stop.set()
    for t in threads:
        t.join(WAIT)
        assert not t.is_alive()
    assert not odd
    pending = [f for f in made if not f.done()]
    deadline = time.monotonic() + WAIT
    while pending and time.monotonic() < deadline:
        time.sleep(0.05)
        pending = [f for f in pending if not f.done()]
    assert not pending
    kinds = {type(f.exception()) for f in made if f.exception() is not None}
    assert kinds <= {RuntimeClosed}, kinds
    with pytest.raises(RuntimeClosed):
        system.ref("/af/slow")


async def test_nested_expect_crashes_the_inner_block_sees_its_own_crash() -> None:
    # README: "async with expect_crashes(ValueError, count=1, path=None, ...): asserts
    # on crashes like Akka's EventFilter"; nested filters in Akka: the innermost one
    # intercepts first.
    # outer one, added first, matches the crash and returns False, and logging stops
    # at the first False filter, so the inner block never sees it ("expected 1 crash
    # with ValueError within 3.0s").  runtime/testing.py:505 (filter returns False)
    # and :519 (addFilter appends: the outer filter runs first).
    tree = Supervisor("nest", max_restarts=100, children=[child(Boom, name="b")])
    async with runtime.open_system(tree) as system:
        ref = system.ref("/nest/b")
        async with expect_crashes(ValueError, count=1, timeout=1.0) as outer:
            async with expect_crashes(ValueError, count=1, timeout=1.0) as inner:
                crash(ref, ValueError("inner"))
            assert len(inner.matched) == 1
        assert len(outer.matched) == 1


async def test_overlapping_expect_crashes_of_different_errors() -> None:
    #
    # the ValueError meant for the inner block is an "other crash" for the outer one,
    # which fails "... and nothing else" although the inner block expected it.
    tree = Supervisor("nest2", max_restarts=100, children=[child(Boom, name="b")])
    async with runtime.open_system(tree) as system:
        ref = system.ref("/nest2/b")
        async with expect_crashes(KeyError, count=1, timeout=1.0):
            async with expect_crashes(ValueError, count=1, timeout=1.0):
                crash(ref, ValueError("for the inner block"))
            crash(ref, KeyError("for the outer block"))


async def test_within_nested_the_tighter_deadline_wins(autojump_clock: Any) -> None:
    # holds: an inner `within` longer than the outer one is cut by the outer deadline,
    # and the outer says so; an inner shorter one fails on its own.
    with pytest.raises(AssertionError, match="did not finish within 1"):
        with within(1.0):
            with within(5.0):
                await trio.sleep(3.0)
    with pytest.raises(AssertionError, match=r"did not finish within 0\.5"):
        with within(5.0):
            with within(0.5):
                await trio.sleep(3.0)
    async with within(2.0) as outer:
        async with within(1.0, min=0.5):
            await trio.sleep(0.75)
    assert outer.elapsed is not None and outer.elapsed < 2.0

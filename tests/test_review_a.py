"""Promises of the thread bridge that had no test of their own.

When the OS refuses it a worker thread (`_Workers.submit`): with no thread of its
own, the call fails at once with a `RuntimeError` that says why, nothing stays
queued, and the bridge serves the next call once threads can be started again;
with a thread of its own, the call waits for that thread instead.

A call already past its deadline when the bridge would take it never runs, on the
path without a message (`Bridge.start_now`) too.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing
from test_bridge import WAIT, app, eventually, stats

import runtime
from runtime import child

PATH = "/app/refused"


def refuse_bridge_threads(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Make the OS refuse every new worker thread of the bridge at `PATH`; the
    returned function lifts the refusal.  Other threads start as usual."""
    start = threading.Thread.start
    refusing = [True]

    def refused(self: threading.Thread) -> None:
        if refusing[0] and self.name.startswith(f"bridge {PATH} worker"):
            raise RuntimeError("can't start new thread")
        start(self)

    monkeypatch.setattr(threading.Thread, "start", refused)
    return lambda: refusing.__setitem__(0, False)


async def test_a_bridge_refused_its_first_thread_fails_the_call_and_keeps_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tree = app(child(runtime.Bridge, name="refused", kwargs={"max_workers": 2}))
    with trio.fail_after(WAIT):
        async with runtime.open_system(tree) as system:
            allow = refuse_bridge_threads(monkeypatch)
            with pytest.raises(RuntimeError, match="could not start a worker thread"):
                await system.run_blocking(abs, -1, bridge=PATH)
            refused = stats(system, PATH)
            assert (refused["failed"], refused["queued"], refused["active"]) == (1, 0, 0)
            allow()
            assert await system.run_blocking(abs, -2, bridge=PATH) == 2
            assert stats(system, PATH)["completed"] == 1


async def test_a_call_refused_a_new_thread_waits_for_the_bridges_running_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tree = app(child(runtime.Bridge, name="refused", kwargs={"max_workers": 2}))
    gate = threading.Event()
    running = threading.Event()
    results: list[Any] = []

    def hold() -> bool:
        running.set()
        return gate.wait(WAIT)

    try:
        with trio.fail_after(WAIT):
            async with runtime.open_system(tree) as system:

                async def call(fn: Callable[..., Any], *args: Any) -> None:
                    results.append(await system.run_blocking(fn, *args, bridge=PATH))

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(call, hold)  # its one thread, held
                    await eventually(running.is_set, "the first call runs in a thread")
                    refuse_bridge_threads(monkeypatch)
                    nursery.start_soon(call, abs, -3)  # no second thread: it queues
                    await trio.testing.wait_all_tasks_blocked()
                    assert stats(system, PATH)["queued"] == 1
                    assert results == []
                    gate.set()
                assert sorted(results) == [True, 3]  # in either order: one batch
                assert stats(system, PATH)["failed"] == 0
    finally:
        gate.set()


async def test_a_blocking_call_with_a_timeout_of_zero_never_runs() -> None:
    ran: list[int] = []
    with trio.fail_after(WAIT):
        async with runtime.open_system(app()) as system:
            for i in range(3):
                with pytest.raises(runtime.AskTimeout):
                    await system.run_blocking(ran.append, i, timeout=0)
            assert await system.run_blocking(ran.append, 3, timeout=WAIT) is None
            assert ran == [3]
            assert stats(system)["abandoned"] == 3

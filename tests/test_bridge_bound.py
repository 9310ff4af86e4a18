"""The bridge's bound is strict: at most `max_workers` threads work for it, abandoned ones included.

An abandoned call (timed out, or its caller cancelled) keeps its worker slot
until its thread really returns, as `trio.to_thread.run_sync` keeps its limiter
token; while every slot is held by an abandoned thread, new calls queue and the
bridge reports itself unhealthy.  Real threads, real time, generous bounds:
the tests assert counts, never durations, and open every gate when they end.
"""

from __future__ import annotations

import pytest
import trio
import trio.testing
from test_bridge import WAIT, Counter, app, eventually, gates, stats

import runtime
from runtime import child

PATH = "/app/two"


def two_workers() -> runtime.Supervisor:
    return app(child(runtime.Bridge, name="two", kwargs={"max_workers": 2}))


async def test_abandoned_threads_keep_their_slots_until_they_return() -> None:
    counter = Counter()

    job = counter.job

    with gates() as g, trio.fail_after(WAIT):
        gate = g.new()
        async with runtime.open_system(two_workers()) as system:
            # two calls time out while their threads block: both are abandoned
            for tag in ("stuck1", "stuck2"):
                with pytest.raises(runtime.AskTimeout):
                    await system.run_blocking(job, tag, gate, bridge=PATH, timeout=0.2)
            await eventually(lambda: stats(system, PATH)["abandoned"] == 2, "two abandoned")
            s = stats(system, PATH)
            assert counter.now == 2  # both threads still run...
            assert s["abandoned_running"] == 2  # ...and hold both slots
            assert s["active"] == 0  # no caller waits for them any more
            assert s["healthy"] is False
            assert "all 2 workers held by abandoned threads" in s["warnings"], s["warnings"]

            # new calls queue: no third thread starts while the abandoned ones run
            results: dict[str, str] = {}

            async def call(tag: str) -> None:
                results[tag] = await system.run_blocking(job, tag, None, bridge=PATH)

            async with trio.open_nursery() as nursery:
                for tag in ("new1", "new2", "new3"):
                    nursery.start_soon(call, tag)
                    await trio.testing.wait_all_tasks_blocked()
                await eventually(
                    lambda: stats(system, PATH)["queued"] == 3 or len(counter.started) > 2,
                    "the new calls queued (or, wrongly, started)",
                )
                await trio.sleep(0.1)  # room for a wrong implementation to start one anyway
                assert counter.started == ["stuck1", "stuck2"]
                assert counter.peak == 2
                assert stats(system, PATH)["queued"] == 3

                # a queued call's timeout runs out in the queue: it never runs
                with pytest.raises(runtime.AskTimeout):
                    await system.run_blocking(job, "late", None, bridge=PATH, timeout=0.2)
                assert "late" not in counter.started

                # the abandoned threads return: their slots go to the queued calls
                gate.set()
            assert results == {t: t for t in ("new1", "new2", "new3")}
            assert counter.peak == 2  # never more than max_workers threads at once
            await eventually(
                lambda: (
                    (stats(system, PATH)["abandoned_running"], stats(system, PATH)["abandoned"])
                    == (0, 3)
                ),
                "the abandoned threads ended and the late call was counted",
            )
            s = stats(system, PATH)
            assert s["healthy"] is True, s["warnings"]
            assert s["warnings"] == ""
            assert (s["completed"], s["abandoned"], s["active"]) == (3, 3, 0)
            # every thread is accounted for: two abandoned, three completed, none running
            assert counter.now == 0
            assert counter.done == 5
            assert sorted(counter.started) == ["new1", "new2", "new3", "stuck1", "stuck2"]


async def test_a_cancelled_caller_leaves_its_slot_held_until_the_thread_returns() -> None:
    counter = Counter()

    job = counter.job

    tree = app(child(runtime.Bridge, name="one", kwargs={"max_workers": 1}))
    with gates() as g, trio.fail_after(WAIT):
        gate = g.new()
        async with runtime.open_system(tree) as system:
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:

                    async def cancel_when_running() -> None:
                        await eventually(lambda: counter.now == 1, "stuck running")
                        scope.cancel()

                    nursery.start_soon(cancel_when_running)
                    await system.run_blocking(job, "stuck", gate, bridge="/app/one")
            assert scope.cancelled_caught
            await eventually(lambda: stats(system, "/app/one")["abandoned"] == 1, "abandoned")
            s = stats(system, "/app/one")
            assert s["abandoned_running"] == 1
            assert s["healthy"] is False
            assert "all 1 workers held by abandoned threads" in s["warnings"], s["warnings"]

            results: list[str] = []
            async with trio.open_nursery() as nursery:

                async def call() -> None:
                    results.append(await system.run_blocking(job, "next", None, bridge="/app/one"))

                nursery.start_soon(call)
                await eventually(
                    lambda: stats(system, "/app/one")["queued"] == 1 or len(counter.started) > 1,
                    "next queued (or, wrongly, started)",
                )
                assert counter.started == ["stuck"]
                gate.set()
            assert results == ["next"]
            assert counter.peak == 1
            assert counter.now == 0 and counter.done == 2
            await eventually(lambda: stats(system, "/app/one")["healthy"], "healthy again")

"""Edge cases: `system.publish` from many foreign threads with timeouts 0, tiny and None,
while subscribers are full; and threads publishing while the system stops.

Contract (DESIGN, Event bus; `System.publish`): from a foreign thread the call
blocks while ``block`` subscribers are full, up to `timeout`; past it the event is
dead-lettered (``overflow``) for the subscribers it had not reached and the call
returns the count delivered.  Every event is handled or dead-lettered exactly once
for every matching subscriber.  Once the system has stopped, `RuntimeClosed`.
"""

from __future__ import annotations

import collections
import random
import threading
from typing import Any

import pytest

import runtime
from runtime import UNHANDLED, Actor, Event, Mailbox, Supervisor, child

JOIN = 30.0  # real-time bound on every join

handled: collections.Counter[tuple[str, Any]] = collections.Counter()
lock = threading.Lock()


class Slow(Actor):
    """Subscribes to ``t``; handling an event takes a moment (without blocking the loop)."""

    subscriptions = ("t",)

    def __init__(self, pause: float) -> None:
        self.pause = pause

    async def receive(self, msg: Any) -> Any:
        if isinstance(msg, Event):
            import trio

            await trio.sleep(self.pause)
            with lock:
                handled[(self.ctx.name, msg.payload)] += 1
            return None
        return UNHANDLED


def letters_by_event(system: runtime.System) -> dict[tuple[str, Any], list[str]]:
    out: dict[tuple[str, Any], list[str]] = collections.defaultdict(list)
    for letter in system.dead_letters.recent(100_000):
        if isinstance(letter.message, Event):
            name = letter.recipient.rsplit("/", 1)[-1]
            out[(name, letter.message.payload)].append(letter.reason)
    return out


def test_many_threads_with_mixed_timeouts_account_for_every_event_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    handled.clear()
    tree = Supervisor(
        "app",
        children=[
            child(Slow, name="slow", args=(0.002,), mailbox=Mailbox(capacity=2)),
            child(Slow, name="fast", args=(0.0,), mailbox=Mailbox(capacity=1000)),
        ],
    )
    results: dict[Any, int] = {}
    errors: dict[Any, BaseException] = {}
    rng = random.Random(12)
    plans = {k: [rng.choice([0, 0.001, 0.01, None]) for _ in range(40)] for k in range(8)}

    def publisher(k: int, system: Any) -> None:
        for i, timeout in enumerate(plans[k]):
            try:
                results[(k, i)] = system.publish("t", (k, i), timeout=timeout)
            except BaseException as exc:
                errors[(k, i)] = exc

    with runtime.start_in_thread(tree) as handle:
        system: runtime.System = handle._system
        threads = [threading.Thread(target=publisher, args=(k, handle)) for k in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(JOIN)
        assert not any(t.is_alive() for t in threads)
        assert errors == {}
        # let the subscribers finish what was delivered
        for _ in range(200):
            stats = handle.snapshot()
            if all(
                stats.find(p).mailbox_depth == 0 and stats.find(p).current is None
                for p in ("/app/slow", "/app/fast")
            ):
                break
            threading.Event().wait(0.05)
        letters = letters_by_event(system)
        bus_stats = system.bus.stats()
        box = system.ref("/app/slow")._cell.mailbox.statistics()
    total = 8 * 40
    assert len(results) == total
    problems = []
    for key, count in results.items():
        fast = (handled[("fast", key)], letters.get(("fast", key), []))
        slow = (handled[("slow", key)], letters.get(("slow", key), []))
        if fast != (1, []):
            problems.append((key, "fast", fast))
        if count == 2 and slow != (1, []):
            problems.append((key, "slow got it", slow))
        if count == 1 and slow != (0, ["overflow"]):
            problems.append((key, "slow missed it", slow))
        if count not in (1, 2):
            problems.append((key, "count", count))
        if plans[key[0]][key[1]] is None and count != 2:
            problems.append((key, "no timeout but not delivered", count))
    assert problems == []
    spread = collections.Counter(results.values())
    assert spread[1] > 0 and spread[2] > 0, spread  # the scenario did overflow and deliver
    assert bus_stats["published"] == total
    assert bus_stats["delivered"] == sum(results.values())
    assert bus_stats["dropped"] == 2 * total - sum(results.values())
    assert box.senders_waiting == 0
    assert "did not stop within its shutdown timeout" not in caplog.text


def test_threads_publishing_while_the_system_stops_are_all_released(
    caplog: pytest.LogCaptureFixture,
) -> None:
    handled.clear()
    tree = Supervisor(
        "app",
        children=[child(Slow, name="slow", args=(0.005,), mailbox=Mailbox(capacity=1))],
    )
    results: dict[Any, int] = {}
    errors: dict[Any, BaseException] = {}
    started = threading.Barrier(5)

    def publisher(k: int, system: Any) -> None:
        started.wait(JOIN)
        for i in range(200):
            try:
                results[(k, i)] = system.publish("t", (k, i), timeout=None if k % 2 else 0.05)
            except BaseException as exc:
                errors[(k, i)] = exc

    with runtime.start_in_thread(tree) as handle:
        system: runtime.System = handle._system
        threads = [threading.Thread(target=publisher, args=(k, handle)) for k in range(4)]
        for t in threads:
            t.start()
        started.wait(JOIN)
        threading.Event().wait(0.1)
    for t in threads:
        t.join(JOIN)
    assert not any(t.is_alive() for t in threads)
    unexpected = {k: e for k, e in errors.items() if not isinstance(e, runtime.RuntimeClosed)}
    assert unexpected == {}
    letters = letters_by_event(system)
    history = {e.payload for e in system.bus.history(">", 100_000)}
    for key, count in results.items():
        got = handled[("slow", key)], letters.get(("slow", key), [])
        # delivered (into the mailbox): handled, or dead-lettered as stopped at the end
        assert count in (0, 1)
        if count == 1:
            assert got in ((1, []), (0, ["stopped"])), (key, got)
        else:  # no subscriber any more, or overflow / stopped in the line
            assert got[0] == 0 and len(got[1]) <= 1, (key, got)
    for key in errors:
        got = handled[("slow", key)], letters.get(("slow", key), [])
        if key not in history:
            assert got == (0, []), (key, got)
    assert len(results) > 0
    # one-of-each: nothing handled twice, nothing dead-lettered twice
    assert all(n == 1 for n in handled.values())
    assert all(len(v) == 1 for v in letters.values())
    with pytest.raises(runtime.RuntimeClosed):
        handle.publish("t", "after")
    assert "did not stop within its shutdown timeout" not in caplog.text
    assert "crashed" not in caplog.text


def test_a_thread_waiting_in_a_line_is_released_when_the_bus_actor_crashes() -> None:
    """`/system/bus` crashing (its tasks are cancelled) answers the waiting thread with
    the count so far (0); the event is dead-lettered (``overflow``) where it waited."""
    import trio

    from runtime.testing import crash

    gate = threading.Event()

    class Gated(Actor):
        subscriptions = ("t",)

        async def receive(self, msg: Any) -> Any:
            if isinstance(msg, Event):
                await trio.to_thread.run_sync(gate.wait, JOIN)
                return None
            return UNHANDLED

    tree = Supervisor("app", children=[child(Gated, name="g", mailbox=Mailbox(capacity=1))])
    out: dict[str, Any] = {}
    with runtime.start_in_thread(tree) as handle:
        system: runtime.System = handle._system
        box = system.ref("/app/g")._cell.mailbox
        assert handle.publish("t", "in-hand") == 1
        for _ in range(100):
            if box.depth == 0:
                break
            threading.Event().wait(0.01)
        assert handle.publish("t", "queued") == 1

        def waiter() -> None:
            out["count"] = handle.publish("t", "waits", timeout=None)

        thread = threading.Thread(target=waiter)
        thread.start()
        for _ in range(100):
            if box.statistics().senders_waiting:
                break
            threading.Event().wait(0.01)
        trio.from_thread.run_sync(crash, system.ref("/system/bus"), trio_token=handle._token)
        thread.join(JOIN)
        alive = thread.is_alive()
        gate.set()
        assert not alive
        assert out == {"count": 0}
        letters = [
            (x.reason, x.message.payload)
            for x in system.dead_letters.recent(100)
            if isinstance(x.message, Event)
        ]
        assert letters == [("overflow", "waits")]
        assert box.statistics().senders_waiting == 0

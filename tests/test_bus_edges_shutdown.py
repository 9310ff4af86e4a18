"""Edge cases: the system stopping (or a subscriber being stopped, crashing, restarting)
while publishers -- actors, plain tasks -- wait in subscribers' lines.

Contract: graceful stop finishes; every (event, matching subscriber) is handled or
dead-lettered exactly once; nothing is left in a line (`senders_waiting` 0); no
actor needs its shutdown timeout when nothing is stuck.
"""

from __future__ import annotations

import collections
from typing import Any

import pytest
import trio
import trio.testing

import runtime
from runtime import UNHANDLED, Actor, Event, Mailbox, Supervisor, child


class Ledger:
    def __init__(self) -> None:
        self.handled: collections.Counter[tuple[str, Any]] = collections.Counter()
        self.published: list[Any] = []


class Sub(Actor):
    def __init__(self, ledger: Ledger, pause: float, crash_on: Any = None) -> None:
        self.ledger = ledger
        self.pause = pause
        self.crash_on = crash_on

    async def on_start(self) -> None:
        self.ctx.subscribe("t.>")

    async def receive(self, msg: Any) -> Any:
        if isinstance(msg, Event):
            await trio.sleep(self.pause)
            if self.crash_on is not None and msg.payload == self.crash_on:
                raise RuntimeError("boom")
            self.ledger.handled[(self.ctx.name, msg.payload)] += 1
            return None
        return UNHANDLED


class Pub(Actor):
    def __init__(self, ledger: Ledger, n: int) -> None:
        self.ledger = ledger
        self.n = n

    async def receive(self, msg: Any) -> Any:
        for i in range(self.n):
            payload = (self.ctx.name, i)
            self.ledger.published.append(payload)
            await self.ctx.publish("t.x", payload)
        return None


def letters(system: runtime.System) -> collections.Counter[tuple[str, Any]]:
    out: collections.Counter[tuple[str, Any]] = collections.Counter()
    for letter in system.dead_letters.recent(100_000):
        if isinstance(letter.message, Event):
            out[(letter.recipient.rsplit("/", 1)[-1], letter.message.payload)] += 1
    return out


async def test_graceful_stop_with_actors_and_tasks_waiting_in_lines(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    ledger = Ledger()
    tree = Supervisor(
        "app",
        children=[
            child(Sub, name="s1", args=(ledger, 0.1), mailbox=Mailbox(capacity=1)),
            child(Sub, name="s2", args=(ledger, 0.3), mailbox=Mailbox(capacity=2)),
            child(Pub, name="p1", args=(ledger, 3)),
            child(Pub, name="p2", args=(ledger, 3)),
        ],
    )
    subs = ("s1", "s2")
    async with runtime.open_system(tree) as system:
        system.ref("/app/p1").tell("go")
        system.ref("/app/p2").tell("go")

        async def task(k: int) -> None:
            for i in range(50):
                payload = ("task", k, i)
                ledger.published.append(payload)
                await system.bus.publish("t.y", payload)

        with trio.move_on_after(1.5):
            async with trio.open_nursery() as nursery:
                for k in range(3):
                    nursery.start_soon(task, k)
        boxes = [system.ref(f"/app/{s}")._cell.mailbox for s in subs]
    # stopped
    dead = letters(system)
    problems = []
    for payload in ledger.published:
        for s in subs:
            n = ledger.handled[(s, payload)] + dead[(s, payload)]
            if n != 1:
                problems.append((s, payload, ledger.handled[(s, payload)], dead[(s, payload)]))
    assert problems == []
    assert sum(dead.values()) > 0 and len(ledger.handled) > 0  # both outcomes happened
    assert [box.statistics().senders_waiting for box in boxes] == [0, 0]
    assert "did not stop within its shutdown timeout" not in caplog.text


async def test_a_subscriber_crashing_and_restarting_while_publishers_wait(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    """The mailbox survives the restart and its line is served by the next instance:
    only the event it crashed on is dead-lettered."""
    ledger = Ledger()
    tree = Supervisor(
        "app",
        max_restarts=100,
        children=[
            child(Sub, name="s", args=(ledger, 0.1, ("p", 2)), mailbox=Mailbox(capacity=1)),
            child(Pub, name="p", args=(ledger, 6)),
        ],
    )
    async with runtime.open_system(tree) as system:
        system.ref("/app/p").tell("go")
        with trio.fail_after(30):
            while len(ledger.handled) + letters(system)[("s", ("p", 2))] < 6:
                await trio.sleep(0.1)
        box = system.ref("/app/s")._cell.mailbox
        assert box.statistics().senders_waiting == 0
    dead = letters(system)
    for i in range(6):
        assert ledger.handled[("s", ("p", i))] + dead[("s", ("p", i))] == 1
    assert dead == {("s", ("p", 2)): 1}

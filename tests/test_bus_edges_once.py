"""Edge cases: ``once=True`` combined with ``replay=N``, waiting publishers and cancellation.

DESIGN (Event bus): options ``once=True`` ("only the next matching event",
`ctx.subscribe`'s docstring), ``replay=N`` (deliver the last N matching events
from history first).
"""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

import runtime
from runtime import Actor, Event, Mailbox, Supervisor, child


class Sub(Actor):
    def __init__(self, gate: trio.Event | None = None) -> None:
        self.seen: list[Any] = []
        self.gate = gate

    async def receive(self, msg: Any) -> Any:
        match msg:
            case Event():
                self.seen.append(msg.payload)
                return None
            case ("subscribe", kwargs):
                self.ctx.subscribe("t", **kwargs)
                return None
            case "seen":
                return list(self.seen)
            case "hold":
                assert self.gate is not None
                await self.gate.wait()
                return None
            case _:
                self.seen.append(msg)
                return None


async def test_once_with_replay_delivers_one_event(autojump_clock: trio.abc.Clock) -> None:
    """``once=True`` with ``replay=3`` takes exactly one event: replay stops once the
    subscription is served, and a later publish finds no subscriber."""
    tree = Supervisor("app", children=[child(Sub, name="s")])
    async with runtime.open_system(tree) as system:
        for i in range(5):
            await system.bus.publish("t", i)
        ref = system.ref("/app/s")
        await ref.ask(("subscribe", {"once": True, "replay": 3}))
        assert await system.bus.publish("t", "later") == 0  # served: no subscription left
        await trio.testing.wait_all_tasks_blocked()
        seen = await ref.ask("seen")
        assert len(seen) == 1, seen
        assert system.bus.stats()["delivered"] == 1  # the 5 publishes found no subscriber


async def test_callback_once_with_replay_calls_once(autojump_clock: trio.abc.Clock) -> None:
    tree = Supervisor("app", children=[])
    async with runtime.open_system(tree) as system:
        for i in range(5):
            await system.bus.publish("t", i)
        got: list[Any] = []
        system.bus.subscribe("t", once=True, replay=3)(lambda e: got.append(e.payload))
        await system.bus.publish("t", "later")
        await trio.sleep(1)
        assert len(got) == 1, got


async def test_once_subscriber_keeps_its_subscription_when_a_cancelled_publish_never_reached_it(
    autojump_clock: trio.abc.Clock,
) -> None:
    """A full once-subscriber keeps its subscription when an event does not reach it:
    after a `publish_nowait` overflow, and after a publish that waited in its line and
    was cancelled (the held subscription is given back).  It takes the next event."""
    gate = trio.Event()
    tree = Supervisor(
        "app",
        children=[child(Sub, name="s", args=(gate,), mailbox=Mailbox(capacity=1))],
    )
    async with runtime.open_system(tree) as system:
        ref = system.ref("/app/s")
        await ref.ask(("subscribe", {"once": True}))
        ref.tell("hold")  # in hand, waiting for the gate
        await trio.testing.wait_all_tasks_blocked()
        ref.tell("filler")  # the mailbox (capacity 1) is full
        # nowait: overflow, the once subscription stays
        assert system.bus.publish_nowait("t", "nowait") == 0
        assert system.bus.stats()["subscriptions"] == 1
        with trio.move_on_after(1):
            await system.bus.publish("t", "cancelled")
        assert system.bus.stats()["subscriptions"] == 1  # nothing was delivered to it
        gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert await system.bus.publish("t", "next") == 1
        await trio.testing.wait_all_tasks_blocked()
        assert (await ref.ask("seen"))[-1] == "next"

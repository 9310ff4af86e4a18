"""A ``once`` subscription held by a publish waiting in its line is given back
(`Bus._resubscribe`) when the event never gets there, unless the actor has
unsubscribed or subscribed that pattern again meanwhile.

Contract: `ctx.unsubscribe(pattern)` drops the subscription ("False if there was
none"); subscribing the same pattern again replaces the options
(`Bus.subscribe_cell`); README: "`once=True` takes exactly one event: a publish
waiting in the line of a full `once` subscriber holds the subscription, and gives it
back if its event never gets there".
"""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

import runtime
from runtime import Actor, Event, Mailbox, Supervisor, child


class Sub(Actor):
    """Capacity-1 subscriber whose ``hold`` handler runs `then` between two gates."""

    def __init__(self, first: trio.Event, second: trio.Event) -> None:
        self.first = first
        self.second = second
        self.seen: list[Any] = []
        self.results: list[Any] = []

    async def receive(self, msg: Any) -> Any:
        match msg:
            case Event():
                self.seen.append(msg.payload)
            case ("subscribe", kwargs):
                self.ctx.subscribe("t", **kwargs)
            case ("hold", then):
                await self.first.wait()
                if then == "unsubscribe":
                    self.results.append(self.ctx.unsubscribe("t"))
                elif then == "subscribe-once":
                    self.ctx.subscribe("t", once=True)
                await self.second.wait()
            case "seen":
                return list(self.seen)
            case _:
                pass
        return None


def _tree(first: trio.Event, second: trio.Event) -> Supervisor:
    return Supervisor(
        "app",
        children=[child(Sub, name="s", args=(first, second), mailbox=Mailbox(capacity=1))],
    )


async def test_a_once_subscription_unsubscribed_while_held_does_not_come_back(
    autojump_clock: trio.abc.Clock,
) -> None:
    """An actor that unsubscribes its pattern while a publish holds its once
    subscription stays unsubscribed when that publish is cancelled: the subscription
    is not given back, and the next event finds no subscriber."""
    first, second = trio.Event(), trio.Event()
    async with runtime.open_system(_tree(first, second)) as system:
        ref = system.ref("/app/s")
        await ref.ask(("subscribe", {"once": True}))
        ref.tell(("hold", "unsubscribe"))
        await trio.testing.wait_all_tasks_blocked()
        ref.tell("filler")  # capacity 1: full
        cancel = trio.CancelScope()

        async def publish() -> None:
            with cancel:
                await system.bus.publish("t", "held")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(publish)
            await trio.testing.wait_all_tasks_blocked()
            assert system.bus.stats()["subscriptions"] == 0  # held by the publish
            first.set()  # the actor unsubscribes "t"
            await trio.testing.wait_all_tasks_blocked()
            cancel.cancel()  # the held event never gets there
        await trio.testing.wait_all_tasks_blocked()
        assert system.bus.stats()["subscriptions"] == 0, "the unsubscribed pattern came back"
        second.set()
        await trio.testing.wait_all_tasks_blocked()
        assert await system.bus.publish("t", "later") == 0
        await trio.testing.wait_all_tasks_blocked()
        assert "later" not in await ref.ask("seen")


async def test_a_replaced_once_subscription_does_not_come_back_after_its_successor_served(
    autojump_clock: trio.abc.Clock,
) -> None:
    """Subscribing the same pattern again replaces the options: P1 holds
    once-subscription S1, the actor subscribes ``t`` once again (S2), P2 holds S2.
    When P1 is cancelled, the replaced S1 is not given back: P2's event is the only
    one delivered and no subscription is left."""
    first, second = trio.Event(), trio.Event()
    async with runtime.open_system(_tree(first, second)) as system:
        ref = system.ref("/app/s")
        await ref.ask(("subscribe", {"once": True}))
        ref.tell(("hold", "subscribe-once"))
        await trio.testing.wait_all_tasks_blocked()
        ref.tell("filler")
        results: dict[str, Any] = {}
        async with trio.open_nursery() as nursery:
            p1 = trio.CancelScope()

            async def publish(name: str, scope: trio.CancelScope | None = None) -> None:
                with scope or trio.CancelScope():
                    results[name] = await system.bus.publish("t", name)

            nursery.start_soon(publish, "p1", p1)
            await trio.testing.wait_all_tasks_blocked()
            first.set()  # the actor subscribes "t" once again: S2
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(publish, "p2")  # holds S2
            await trio.testing.wait_all_tasks_blocked()
            p1.cancel()
            await trio.testing.wait_all_tasks_blocked()
            second.set()
        assert results == {"p2": 1}
        await trio.testing.wait_all_tasks_blocked()
        assert system.bus.stats()["subscriptions"] == 0
        assert await system.bus.publish("t", "later") == 0
        await trio.testing.wait_all_tasks_blocked()
        assert await ref.ask("seen") == ["p2"]

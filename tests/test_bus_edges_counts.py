"""The bus's counters when a ``drop_old`` subscriber pushes out a queued message.

README: `system.bus.stats()`: `published`, `delivered`, `dropped`, ... count
*events*; a plain message pushed out of a mailbox is the mailbox's dead letter.
"""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

import runtime
from runtime import Actor, Event, Mailbox, Supervisor, child


class Held(Actor):
    subscriptions = ("t",)

    def __init__(self, gate: trio.Event) -> None:
        self.gate = gate
        self.seen: list[Any] = []

    async def receive(self, msg: Any) -> Any:
        if msg == "hold":
            await self.gate.wait()
        elif msg == "seen":
            return list(self.seen)
        else:
            self.seen.append(msg.payload if isinstance(msg, Event) else msg)
        return None


async def test_a_plain_message_pushed_out_by_an_event_is_not_a_dropped_event(
    autojump_clock: trio.abc.Clock,
) -> None:
    """An event pushes a queued `tell` out of a full ``drop_old`` subscriber: the event
    is delivered, the tell is dead-lettered by the mailbox (``overflow``), and
    ``stats()["dropped"]`` stays 0 (the pushed-out tell was once counted as a bus drop)."""
    gate = trio.Event()
    tree = Supervisor(
        "app",
        children=[
            child(Held, name="s", args=(gate,), mailbox=Mailbox(capacity=1, overflow="drop_old"))
        ],
    )
    async with runtime.open_system(tree) as system:
        ref = system.ref("/app/s")
        ref.tell("hold")
        await trio.testing.wait_all_tasks_blocked()
        ref.tell("plain")  # queued: the mailbox is full
        assert await system.bus.publish("t", "e") == 1  # pushes "plain" out
        stats = system.bus.stats()
        assert (stats["published"], stats["delivered"]) == (1, 1)
        gate.set()
        await trio.testing.wait_all_tasks_blocked()
        assert await ref.ask("seen") == ["e"]
        assert system.snapshot().dead_letters["overflow"] == 1  # "plain", by the mailbox
        assert stats["dropped"] == 0, "a tell pushed out counted as a dropped bus event"

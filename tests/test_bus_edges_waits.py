"""Edge cases: the wait-for graph with publishes (rule 5): no false ``deadlock`` where no
cycle exists, no hang where one does."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

import runtime
from runtime import Actor, Event, Mailbox, Supervisor, child
from runtime.deadletters import DeadLettersQuery


class Node(Actor):
    """Subscribes `mine`; while handling an event it may publish `then` (once per event).
    Handling waits for `gate` first."""

    mailbox = Mailbox(capacity=1)

    def __init__(self, mine: str, then: str | None, gate: trio.Event) -> None:
        self.mine, self.then, self.gate = mine, then, gate
        self.seen: list[Any] = []
        self.count: Any = None

    async def on_start(self) -> None:
        self.ctx.subscribe(self.mine)

    async def receive(self, msg: Any) -> Any:
        match msg:
            case "seen":
                return list(self.seen), self.count
            case ("publish", topic, payload):
                self.count = await self.ctx.publish(topic, payload)
                return None
            case Event():
                await self.gate.wait()
                self.seen.append(msg.payload)
                if self.then is not None and msg.payload == "E":
                    await self.ctx.publish(self.then, f"from-{self.ctx.name}")
                return None
            case _:
                await self.gate.wait()
                self.seen.append(msg)
                return None


async def deadlocks(system: runtime.System) -> list[Any]:
    letters = await system.ref("/system/deadletters").ask(DeadLettersQuery(reason="deadlock"))
    return [(x.recipient, getattr(x.message, "payload", x.message)) for x in letters]


async def test_a_line_that_let_the_event_in_while_the_publisher_waited_elsewhere_is_no_edge(
    autojump_clock: trio.abc.Clock,
) -> None:
    """p publishes E to a and b (both full), waiting in a's line.  b is freed first,
    lets E in, and its handler publishes to p's topic while p is full: b waits on p,
    p waits on a (not on b any more), a waits on nothing: no cycle."""
    ga, gb, gp = trio.Event(), trio.Event(), trio.Event()
    tree = Supervisor(
        "app",
        children=[
            child(Node, name="a", args=("ab", None, ga)),
            child(Node, name="b", args=("ab", "to-p", gb)),
            child(Node, name="p", args=("to-p", None, gp)),
        ],
    )
    async with runtime.open_system(tree) as system:
        a, b, p = (system.ref(f"/app/{n}") for n in "abp")
        for ref in (a, b):  # one in hand, one queued: full
            ref.tell("h")
            await trio.testing.wait_all_tasks_blocked()
            ref.tell("q")
        p.tell(("publish", "ab", "E"))
        await trio.testing.wait_all_tasks_blocked()
        p.tell("filler")  # p is full while its handler waits
        gp.set()  # p's own handler does not wait for the gate for the publish
        gb.set()  # b drains, lets E in, handles it and publishes to p (full)
        await trio.testing.wait_all_tasks_blocked()
        ga.set()
        with trio.fail_after(30):
            await trio.testing.wait_all_tasks_blocked()
            seen_p, count = await p.ask("seen")
            seen_b, _ = await b.ask("seen")
        assert await deadlocks(system) == []
        assert count == 2
        assert "E" in seen_b
        assert "from-b" in seen_p


async def test_a_three_way_publish_cycle_is_refused_once_and_nothing_hangs(
    autojump_clock: trio.abc.Clock,
) -> None:
    """x -> y -> z -> x, each publishing to the next one's topic from its handler while
    all three are full: exactly one wait closes the cycle and is refused."""
    gate = trio.Event()
    tree = Supervisor(
        "app",
        children=[
            child(Node, name="x", args=("to-x", "to-y", gate)),
            child(Node, name="y", args=("to-y", "to-z", gate)),
            child(Node, name="z", args=("to-z", "to-x", gate)),
        ],
    )
    async with runtime.open_system(tree) as system:
        refs = [system.ref(f"/app/{n}") for n in "xyz"]
        for ref in refs:
            ref.tell(Event("kick", "E", "test", 0, 0.0))  # in hand: will publish
        await trio.testing.wait_all_tasks_blocked()
        for ref in refs:
            ref.tell("filler")  # full
        gate.set()
        with trio.fail_after(30):
            await trio.testing.wait_all_tasks_blocked()
            for ref in refs:
                await ref.ask("seen")
        assert len(await deadlocks(system)) == 1
        for ref in refs:
            assert ref._cell.mailbox.statistics().senders_waiting == 0

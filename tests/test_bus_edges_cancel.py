"""Edge cases: cancelling publishes at every moment of their waits (autojump clock).

Contract: "Cancel-safe: a publish cancelled while it waits dead-letters the event
(reason ``overflow``) for each subscriber it had not reached; nothing is stranded."
So for every (event, matching subscriber): handled xor dead-lettered, exactly once;
every line empty afterwards; stats consistent.
"""

from __future__ import annotations

import collections
from typing import Any

import pytest
import trio
import trio.testing

import runtime
from runtime import UNHANDLED, Actor, Event, Mailbox, Supervisor, child

SUBS = {"a": 1.0, "b": 2.0, "c": 3.0}  # seconds each takes per event


class Slow(Actor):
    subscriptions = ("t",)

    def __init__(self, pause: float, handled: collections.Counter[tuple[str, Any]]) -> None:
        self.pause = pause
        self.handled = handled

    async def receive(self, msg: Any) -> Any:
        if isinstance(msg, Event):
            await trio.sleep(self.pause)
            self.handled[(self.ctx.name, msg.payload)] += 1
            return None
        return UNHANDLED


class Publisher(Actor):
    """Publishes on "go"; its handler is an edge of the wait-for graph."""

    async def receive(self, msg: Any) -> Any:
        return await self.ctx.publish("t", msg)


def tree(handled: collections.Counter[tuple[str, Any]]) -> Supervisor:
    return Supervisor(
        "app",
        children=[
            *(
                child(Slow, name=n, args=(p, handled), mailbox=Mailbox(capacity=1))
                for n, p in SUBS.items()
            ),
            child(Publisher, name="pub", shutdown=0.25),
        ],
    )


def letters(system: runtime.System) -> collections.Counter[tuple[str, Any, str]]:
    out: collections.Counter[tuple[str, Any, str]] = collections.Counter()
    for letter in system.dead_letters.recent(100_000):
        if isinstance(letter.message, Event):
            out[(letter.recipient.rsplit("/", 1)[-1], letter.message.payload, letter.reason)] += 1
    return out


@pytest.mark.parametrize("cancel_at", [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 6.0, 9.0])
@pytest.mark.parametrize("how", ["task", "actor-terminated"])
async def test_a_publish_cancelled_at_any_moment_accounts_for_every_subscriber(
    autojump_clock: trio.abc.Clock, cancel_at: float, how: str
) -> None:
    handled: collections.Counter[tuple[str, Any]] = collections.Counter()
    async with runtime.open_system(tree(handled)) as system:
        # each subscriber: one event in hand, one queued: full
        await system.bus.publish("t", "e0")
        await trio.testing.wait_all_tasks_blocked()
        await system.bus.publish("t", "e1")
        scope = trio.CancelScope()
        result: list[Any] = []

        async def publish() -> None:
            with scope:
                if how == "task":
                    result.append(await system.bus.publish("t", "x"))
                else:
                    system.ref("/app/pub").tell("x")  # the actor's handler publishes

        async def canceller() -> None:
            await trio.sleep(cancel_at)
            if how == "task":
                scope.cancel()
            else:  # stopped for good: its handler is cancelled after its shutdown timeout
                await system.terminate_child("/app/pub")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(publish)
            nursery.start_soon(canceller)
        with trio.fail_after(60):
            while any(
                system.ref(f"/app/{n}")._cell.mailbox.depth
                or system.snapshot().find(f"/app/{n}").current is not None
                for n in SUBS
            ):
                await trio.sleep(0.5)
        dead = letters(system)
        waiting = [system.ref(f"/app/{n}")._cell.mailbox.statistics().senders_waiting for n in SUBS]
        stats = system.bus.stats()
    for n in SUBS:
        for payload in ("e0", "e1"):
            assert handled[(n, payload)] == 1
        got = handled[(n, "x")]
        lost = dead[(n, "x", "overflow")]
        assert got + lost == 1, (n, got, lost, dict(dead))
    assert waiting == [0, 0, 0]
    assert stats["delivered"] + stats["dropped"] == 3 * 3
    if result and how == "task":
        assert result == [sum(handled[(n, "x")] for n in SUBS)]

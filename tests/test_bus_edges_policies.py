"""Edge cases: capacity-1 subscribers of every overflow policy side by side, a stream,
publish / publish_nowait / cancelled publishes: exact accounting."""

from __future__ import annotations

import collections
import random
from typing import Any

import pytest
import trio
import trio.testing

import runtime
from runtime import UNHANDLED, Actor, Event, Mailbox, Supervisor, child

POLICIES = ("block", "drop_old", "drop_new", "fail")


class Sub(Actor):
    subscriptions = ("t",)

    def __init__(self, handled: collections.Counter[tuple[str, Any]]) -> None:
        self.handled = handled

    async def receive(self, msg: Any) -> Any:
        if isinstance(msg, Event):
            await trio.sleep(0.3)
            self.handled[(self.ctx.name, msg.payload)] += 1
            return None
        return UNHANDLED


@pytest.mark.parametrize("seed", range(6))
async def test_every_policy_side_by_side_accounts_for_every_event(
    autojump_clock: trio.abc.Clock, seed: int
) -> None:
    handled: collections.Counter[tuple[str, Any]] = collections.Counter()
    tree = Supervisor(
        "app",
        children=[
            child(Sub, name=p, args=(handled,), mailbox=Mailbox(capacity=1, overflow=p))
            for p in POLICIES
        ],
    )
    rng = random.Random(seed)
    counts: dict[Any, int] = {}
    async with runtime.open_system(tree) as system:
        streamed: list[Any] = []
        async with system.bus.stream("t", capacity=1) as stream:

            async def reader() -> None:
                async for event in stream:
                    streamed.append(event.payload)
                    await trio.sleep(0.2)

            async def publisher(k: int) -> None:
                for i in range(15):
                    payload = (k, i)
                    kind = rng.choice(["wait", "nowait", "cancel"])
                    if kind == "nowait":
                        counts[payload] = system.bus.publish_nowait("t", payload)
                    elif kind == "wait":
                        counts[payload] = await system.bus.publish("t", payload)
                    else:
                        with trio.move_on_after(rng.choice([0, 0.1, 0.5])):
                            counts[payload] = await system.bus.publish("t", payload)
                        counts.setdefault(payload, -1)  # cancelled: count unknown
                    await trio.sleep(rng.choice([0, 0.05, 0.2]))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(reader)
                async with trio.open_nursery() as pubs:
                    for k in range(4):
                        pubs.start_soon(publisher, k)
                with trio.fail_after(100):
                    while any(
                        system.ref(f"/app/{p}")._cell.mailbox.depth
                        or system.snapshot().find(f"/app/{p}").current is not None
                        for p in POLICIES
                    ):
                        await trio.sleep(0.5)
                    await trio.sleep(5)
                nursery.cancel_scope.cancel()
        letters: collections.Counter[tuple[str, Any]] = collections.Counter()
        for letter in system.dead_letters.recent(100_000):
            if isinstance(letter.message, Event):
                letters[(letter.recipient.rsplit("/", 1)[-1], letter.message.payload)] += 1
        stats = system.bus.stats()
        published = {e.payload for e in system.bus.history("t", limit=1000)}
        waiting = [
            system.ref(f"/app/{p}")._cell.mailbox.statistics().senders_waiting for p in POLICIES
        ]
    problems = []
    for payload, count in counts.items():
        if payload not in published:  # cancelled before it was published: nowhere at all
            assert count == -1
            assert not any(key[1] == payload for key in (*handled, *letters)), payload
            assert payload not in streamed
            continue
        got = 0
        for p in POLICIES:
            n = handled[(p, payload)] + letters[(p, payload)]
            if n != 1:
                problems.append((p, payload, handled[(p, payload)], letters[(p, payload)]))
            got += handled[(p, payload)]
        s = (payload in streamed) + letters[("stream:t", payload)]
        if s != 1:
            problems.append(("stream", payload, payload in streamed, s))
        got += payload in streamed
        pushed_out = letters[("drop_old", payload)]  # delivered, then pushed out
        if count != -1 and count != got + pushed_out:
            problems.append(("count", payload, count, got, pushed_out))
    assert problems == []
    assert stats["published"] == len(published)
    pairs = len(published) * (len(POLICIES) + 1)
    pushes = sum(n for (p, _), n in letters.items() if p == "drop_old")
    assert stats["delivered"] + stats["dropped"] == pairs + pushes
    assert waiting == [0, 0, 0, 0]

"""A subscriber whose patterns overlap gets each event once, and a publish counts it
once: `publish` returns the number of subscribers the event reached."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

import runtime
from runtime import Actor, Event, Supervisor, child


class Recorder(Actor):
    subscriptions = ("x.*", "x.>")

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def receive(self, msg: Any) -> Any:
        if isinstance(msg, Event):
            self.seen.append(msg.topic)
            return None
        if msg == "seen":
            return list(self.seen)
        if isinstance(msg, tuple) and msg[0] == "subscribe":
            self.ctx.subscribe(msg[1], filter=msg[2])
            return None
        if isinstance(msg, tuple) and msg[0] == "subscribe_once":
            self.ctx.subscribe(msg[1], once=True)
            return None
        if isinstance(msg, tuple) and msg[0] == "unsubscribe":
            self.ctx.unsubscribe(msg[1])
            return None
        return msg


def tree() -> Supervisor:
    return Supervisor("app", children=[child(Recorder, name="rec")])


async def test_an_actor_with_overlapping_patterns_gets_an_event_once() -> None:
    async with runtime.open_system(tree()) as system:
        rec = system.ref("/app/rec")
        assert await system.bus.publish("x.y", 1) == 1
        assert await system.bus.publish("x.y.z", 2) == 1  # only x.> matches
        assert system.bus.publish_nowait("x.q", 3) == 1
        assert await rec.ask("seen") == ["x.y", "x.y.z", "x.q"]


async def test_a_callback_with_overlapping_patterns_is_called_once() -> None:
    calls: list[str] = []
    async with runtime.open_system(tree()) as system:
        done = trio.Event()

        @system.bus.subscribe("y.*", "y.>")
        def on_event(event: Event) -> None:
            calls.append(event.topic)
            if event.topic == "y.end":
                done.set()

        assert await system.bus.publish("y.a", None) == 1
        assert await system.bus.publish("y.end", None) == 1
        with trio.fail_after(5):
            await done.wait()
    assert calls == ["y.a", "y.end"]


async def test_a_pattern_whose_filter_refuses_leaves_the_event_to_another_pattern() -> None:
    async with runtime.open_system(tree()) as system:
        rec = system.ref("/app/rec")
        await rec.ask(("subscribe", "z.*", lambda event: False))
        await rec.ask(("subscribe", "z.>", lambda event: True))
        assert await system.bus.publish("z.a", None) == 1
        await rec.ask(("unsubscribe", "z.>"))
        assert await system.bus.publish("z.b", None) == 0  # z.*'s filter refuses it
        assert [t for t in await rec.ask("seen") if t.startswith("z.")] == ["z.a"]


async def test_the_count_stays_per_subscriber_across_subscribers() -> None:
    tree2 = Supervisor("app", children=[child(Recorder, name="one"), child(Recorder, name="two")])
    async with runtime.open_system(tree2) as system:
        assert await system.bus.publish("x.y", None) == 2
        assert await system.ref("/app/one").ask("seen") == ["x.y"]
        assert await system.ref("/app/two").ask("seen") == ["x.y"]


async def test_a_thread_publish_reaches_an_overlapping_subscriber_once() -> None:
    async with runtime.open_system(tree()) as system:
        rec = system.ref("/app/rec")
        count = await trio.to_thread.run_sync(lambda: system.publish("x.t", None))
        assert count == 1
        assert await rec.ask("seen") == ["x.t"]


def boom(event: Event) -> bool:
    raise RuntimeError("filter bug")


async def test_a_raising_filter_dead_letters_the_event_for_its_actor_once_and_only() -> None:
    """The first pattern that takes the event decides for its actor: a filter that
    raises dead-letters it (``crashed``) and the actor's other patterns do not
    deliver it as well (it would be both handled and lost)."""
    async with runtime.open_system(tree()) as system:
        rec = system.ref("/app/rec")
        await rec.ask(("subscribe", "z.*", boom))
        await rec.ask(("subscribe", "z.>", None))
        assert await system.bus.publish("z.a", None) == 0
        assert [t for t in await rec.ask("seen") if t.startswith("z.")] == []
        crashed = [d for d in system.dead_letters.recent() if d.reason == "crashed"]
        assert len(crashed) == 1


async def test_a_once_pattern_serves_before_an_overlapping_one_and_is_used_up() -> None:
    async with runtime.open_system(tree()) as system:
        rec = system.ref("/app/rec")
        await rec.ask(("subscribe", "z.>", None))
        await rec.ask(("subscribe_once", "z.*", None))
        assert await system.bus.publish("z.a", None) == 1  # through the once: used up
        assert system.snapshot().find("/app/rec").subscriptions.count("z.*") == 0
        await rec.ask(("unsubscribe", "z.>"))
        assert await system.bus.publish("z.b", None) == 0
        assert [t for t in await rec.ask("seen") if t.startswith("z.")] == ["z.a"]

"""The reference design's EventBus race, redone.

There, subscribing and unsubscribing while other threads published made an
always-subscribed listener miss events (19,914 of 20,000 lost).  Here several
actors (and streams, and short-lived actors) subscribe and unsubscribe in a
tight loop while threads and actors publish 20,000 events; the always
subscribed actor must get every one of them, in per-publisher order.
"""

from __future__ import annotations

import threading
from typing import Any

import trio
import trio.testing

import runtime
from runtime import UNHANDLED, Actor, Event, Mailbox, Supervisor, child

WAIT = 60.0  # generous bound for anything involving real threads
CHURN_PAUSE = 0.001  # each churning task still makes hundreds of changes a second
TOTAL = 20_000


class Sink(Actor):
    """Always subscribed: checks it gets everything, in order per publisher."""

    subscriptions = ("race.>",)

    def __init__(self) -> None:
        self.last: dict[str, int] = {}
        self.count = 0
        self.out_of_order = 0

    async def receive(self, msg: Any) -> Any:
        match msg:
            case Event(payload=(str(publisher), int(i))):
                if i != self.last.get(publisher, -1) + 1:
                    self.out_of_order += 1
                self.last[publisher] = i
                self.count += 1
                return None
            case "report":
                return self.count, self.out_of_order, dict(self.last)
            case _:
                return UNHANDLED


class Churner(Actor):
    """Subscribes and unsubscribes in a tight loop until told to stop."""

    PATTERNS = ("race.*", "race.>", ">", "race.t0", "*.a0", "race.n0")

    def __init__(self, seed: int) -> None:
        self.seed = seed
        self.rounds = 0
        self.events = 0
        self.running = True

    async def on_start(self) -> None:
        self.ctx.nursery.start_soon(self.churn)

    async def churn(self) -> None:
        ctx = self.ctx
        patterns = self.PATTERNS
        k = self.seed
        while self.running:
            pattern = patterns[k % len(patterns)]
            k += 1
            mode = k % 4
            if k % 64 == 0:  # replay scans the history: now and then
                ctx.subscribe(pattern, replay=3)
            elif mode == 0:
                ctx.subscribe(pattern)
            elif mode == 1:
                ctx.subscribe(pattern, once=True)
            else:
                ctx.subscribe(pattern, filter=lambda e: e.id % 2 == 0)
            if k % 3:
                await trio.lowlevel.checkpoint()
            ctx.unsubscribe(pattern)
            ctx.unsubscribe(patterns[(k * 7) % len(patterns)])
            self.rounds += 1
            # Leave the loop idle a moment each round: a loop that never sleeps
            # starves the publishing threads (of the GIL and of scheduler turns),
            # and the race is about churn *while* they publish, not about that.
            await trio.sleep(CHURN_PAUSE)

    async def receive(self, msg: Any) -> Any:
        if isinstance(msg, Event):
            self.events += 1
            return None
        if msg == "stop":
            self.running = False
            return self.rounds
        return UNHANDLED


class Blip(Actor):
    """A short-lived subscriber: started and terminated over and over."""

    subscriptions = ("race.>", "race.*")

    async def receive(self, msg: Any) -> Any:
        return None


class Publisher(Actor):
    async def receive(self, msg: Any) -> Any:
        match msg:
            case ("await", n):
                for i in range(n):
                    await self.ctx.publish("race.a", (self.ctx.name, i))
            case ("nowait", n):
                for i in range(n):
                    self.ctx.publish_nowait("race.n", (self.ctx.name, i))
                    if i % 4 == 0:
                        await trio.lowlevel.checkpoint()
            case _:
                return UNHANDLED
        return n


def tree() -> Supervisor:
    return Supervisor(
        "app",
        children=[
            # room for everything: no publish_nowait may overflow the sink
            child(Sink, name="sink", mailbox=Mailbox(capacity=TOTAL)),
            *[child(Churner, name=f"churn{k}", args=(k,)) for k in range(4)],
            child(Publisher, name="a0"),
            child(Publisher, name="a1"),
            child(Publisher, name="n0"),
            Supervisor("blips", children=[]),
        ],
    )


async def test_always_subscribed_actor_gets_all_20000_events_despite_churn() -> None:
    # a0, a1 (await ctx.publish), n0 (publish_nowait), t0, t1 (threads: system.publish)
    share = {"a0": 6_000, "a1": 6_000, "n0": 4_000, "t0": 2_000, "t1": 2_000}
    assert sum(share.values()) == TOTAL
    async with runtime.open_system(tree()) as system:
        base_subs = system.bus.stats()["subscriptions"]
        done = trio.Event()
        stream_rounds = 0
        blip_rounds = 0

        def thread_publisher(name: str) -> None:
            for i in range(share[name]):
                system.publish("race.t", (name, i))

        async def stream_churn() -> None:
            nonlocal stream_rounds
            while not done.is_set():
                async with system.bus.stream("race.*", capacity=10) as events:
                    await trio.lowlevel.checkpoint()
                    try:
                        events.receive_nowait()
                    except trio.WouldBlock:
                        pass
                stream_rounds += 1
                await trio.sleep(CHURN_PAUSE)

        async def actor_churn() -> None:
            nonlocal blip_rounds
            while not done.is_set():
                await system.start_child("/app/blips", child(Blip, name="blip"))
                await system.terminate_child("/app/blips/blip")
                blip_rounds += 1
                await trio.sleep(CHURN_PAUSE)  # see Churner.churn

        async def publishers() -> None:
            async with trio.open_nursery() as inner:
                inner.start_soon(system.ref("/app/a0").ask, ("await", share["a0"]), WAIT)
                inner.start_soon(system.ref("/app/a1").ask, ("await", share["a1"]), WAIT)
                inner.start_soon(system.ref("/app/n0").ask, ("nowait", share["n0"]), WAIT)
                for name in ("t0", "t1"):
                    inner.start_soon(trio.to_thread.run_sync, thread_publisher, name)
            done.set()

        with trio.fail_after(WAIT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stream_churn)
                nursery.start_soon(actor_churn)
                nursery.start_soon(publishers)
            rounds = [await system.ref(f"/app/churn{k}").ask("stop") for k in range(4)]
            count, out_of_order, last = await system.ref("/app/sink").ask("report")

        assert count == TOTAL
        assert out_of_order == 0
        assert last == {name: n - 1 for name, n in share.items()}
        # the churn really happened while publishing
        assert min(rounds) > 100 and stream_rounds > 10 and blip_rounds > 10
        assert system.dead_letters.by_recipient.get("/app/sink", 0) == 0
        # no leak: every subscription left belongs to a live actor (no streams, no blips)
        await trio.testing.wait_all_tasks_blocked()
        snapshot = system.snapshot()
        held = sum(len(info.subscriptions) for info in snapshot.root.walk())
        assert system.bus.stats()["subscriptions"] == held
        assert snapshot.find("/app/sink").subscriptions == ("race.>",)
        assert system.which_children("/app/blips") == []
        assert held <= base_subs + 4 * len(Churner.PATTERNS)


async def test_every_subscriber_alive_throughout_sees_the_same_sequence() -> None:
    """Two always-subscribed actors with tiny block mailboxes, publishers under
    backpressure, churn all around: both see identical sequences of ids."""

    class Recorder(Actor):
        subscriptions = ("race.>",)

        def __init__(self) -> None:
            self.ids: list[int] = []

        async def receive(self, msg: Any) -> Any:
            if isinstance(msg, Event):
                self.ids.append(msg.id)
                if msg.id % 5 == 0:
                    await trio.sleep(0)
                return None
            return list(self.ids)

    t = Supervisor(
        "app",
        children=[
            child(Recorder, name="r1", mailbox=Mailbox(capacity=1)),
            child(Recorder, name="r2", mailbox=Mailbox(capacity=3)),
            *[child(Churner, name=f"churn{k}", args=(k,)) for k in range(3)],
            child(Publisher, name="a0"),
            child(Publisher, name="a1"),
        ],
    )
    per = 1_000
    async with runtime.open_system(t) as system:

        def thread_publisher(name: str) -> None:
            for i in range(per):
                system.publish("race.t", (name, i))

        with trio.fail_after(WAIT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(system.ref("/app/a0").ask, ("await", per), WAIT)
                nursery.start_soon(system.ref("/app/a1").ask, ("await", per), WAIT)
                for name in ("t0", "t1"):
                    nursery.start_soon(trio.to_thread.run_sync, thread_publisher, name)
            for k in range(3):
                await system.ref(f"/app/churn{k}").ask("stop")
            r1 = await system.ref("/app/r1").ask("ids", timeout=WAIT)
            r2 = await system.ref("/app/r2").ask("ids", timeout=WAIT)
        assert len(r1) == 4 * per
        assert r1 == r2
        assert system.snapshot().dead_letters["overflow"] == 0


def test_start_in_thread_handle_publishes_from_any_thread() -> None:
    with runtime.start_in_thread(Supervisor("app", children=[child(Sink, name="sink")])) as system:
        errors: list[BaseException] = []

        def produce(name: str) -> None:
            try:
                for i in range(500):
                    assert system.publish("race.x", (name, i)) == 1  # type: ignore[attr-defined]
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=produce, args=(f"t{k}",)) for k in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(WAIT)
            assert not th.is_alive(), "a publishing thread hung"
        assert errors == []
        count, out_of_order, _ = system.ref("/app/sink").ask_blocking("report", timeout=WAIT)
        assert (count, out_of_order) == (2_000, 0)

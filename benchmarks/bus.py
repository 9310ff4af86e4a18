"""Event-bus scenarios (issue 4): publish fan-out and pattern-matching cost.

Driven through the public API (`open_system`, actors, `ctx.publish`,
`ctx.subscribe`) plus `system.bus.publish_nowait` for the matching scenario.
The fan-out baseline is the kernel's own tell throughput, measured in the same
run; the matching baseline is the same bus with 10 subscriptions instead of
10,000.
"""

from __future__ import annotations

from time import perf_counter
from typing import Any

import trio
import trio.testing

import runtime
from runtime import Actor, Mailbox, Supervisor, child

from .harness import Bench, Figures, Row, Size, Target
from .kernel import run_trio, troupe_tell

ROOT = "bench"
FANOUT_TOPIC = "bench.fanout"


# -- 1. fan-out ------------------------------------------------------------------
class Countdown:
    """Set `done` once `left` subscribers have each seen their last event."""

    def __init__(self, subscribers: int) -> None:
        self.left = subscribers
        self.done = trio.Event()

    def finished(self) -> None:
        self.left -= 1
        if not self.left:
            self.done.set()


class FanoutSubscriber(Actor):
    subscriptions = (FANOUT_TOPIC,)

    def __init__(self, target: int, countdown: Countdown) -> None:
        self.n = 0
        self.target = target
        self.countdown = countdown

    async def receive(self, msg: Any) -> None:
        self.n += 1
        if self.n == self.target:
            self.countdown.finished()


class Publisher(Actor):
    async def receive(self, msg: Any) -> None:
        publish = self.ctx.publish
        for i in range(msg):
            await publish(FANOUT_TOPIC, i)


async def troupe_fanout(subscribers: int, events: int) -> float:
    """Seconds for an actor to `await ctx.publish` `events` events and every one of
    `subscribers` subscriber actors to handle all of them."""
    countdown = Countdown(subscribers)
    subs = [
        child(
            FanoutSubscriber,
            name=f"s{i}",
            kwargs={"target": events, "countdown": countdown},
            mailbox=Mailbox(capacity=events),
        )
        for i in range(subscribers)
    ]
    tree = Supervisor(ROOT, children=[*subs, child(Publisher, name="publisher")])
    async with runtime.open_system(tree) as system:
        publisher = system.ref(f"/{ROOT}/publisher")
        await trio.testing.wait_all_tasks_blocked()
        start = perf_counter()
        publisher.tell(events)
        await countdown.done.wait()
        return perf_counter() - start


FANOUTS = (1, 10, 100)


def fanout_once(size: Size) -> Figures:
    deliveries = size.pick(200_000, 2_000)
    m = size.pick(200_000, 2_000)
    figures: Figures = {"tell": m / run_trio(troupe_tell, m, 0)}
    for n in FANOUTS:
        events = deliveries // n
        figures[f"fanout_{n}"] = events * n / run_trio(troupe_fanout, n, events)
    return figures


def _fanout_row(n: int) -> Row:
    who = "1 subscriber" if n == 1 else f"{n} subscribers"
    return Row(
        f"publish fan-out to {who} (deliveries/s)",
        f"fanout_{n}",
        "tell",
        "the kernel's tell throughput (one in-loop sender, M = 200,000 told at once, "
        "counting actor), measured in the same run",
        Target(">=", 0.5) if n == 100 else None,
    )


FANOUT = Bench(
    name="fanout",
    run_once=fanout_once,
    rows=[_fanout_row(n) for n in FANOUTS],
    notes=[
        "fanout: 200,000 deliveries per case (full): a Publisher actor awaits ctx.publish "
        "200,000/N times on one topic, N subscriber actors (class attribute subscriptions, "
        "Mailbox capacity = events, so publish never waits) count them; timed from the tell "
        "that starts the publisher to the last subscriber's last event.",
    ],
)


# -- 2. pattern-matching cost ------------------------------------------------------
CACHE_BUSTER = 8192  # distinct topics in rotation: more than the bus's match cache holds


class Holder(Actor):
    """Holds `n` distinct, non-matching subscriptions ``sensor.<i>.*``."""

    def __init__(self, n: int) -> None:
        self.n = n

    async def on_start(self) -> None:
        for i in range(self.n):
            self.ctx.subscribe(f"sensor.{i}.*")

    async def receive(self, msg: Any) -> None:
        pass


class MatchSink(Actor):
    subscriptions = ("sensor.*.temp",)

    def __init__(self) -> None:
        self.n = 0

    async def receive(self, msg: Any) -> None:
        self.n += 1


async def troupe_match(subscriptions: int, events: int) -> tuple[float, float]:
    """(publishes/s on one fixed topic, publishes/s on rotating distinct topics) with
    `subscriptions` user subscriptions, of which one matches each published topic."""
    tree = Supervisor(
        ROOT,
        children=[
            child(Holder, name="holder", kwargs={"n": subscriptions - 1}),
            child(MatchSink, name="sink", mailbox=Mailbox(capacity=2 * events + 1)),
        ],
    )
    fixed = "sensor.r0.temp"
    rotating = [f"sensor.r{i}.temp" for i in range(CACHE_BUSTER)]
    async with runtime.open_system(tree) as system:
        await trio.testing.wait_all_tasks_blocked()
        bus = system.bus
        count = bus.stats()["subscriptions"]
        if count < subscriptions:
            raise AssertionError(f"only {count} subscriptions")
        publish = bus.publish_nowait
        # the first publish of a topic fills the match cache; time cache hits after it
        if publish(fixed, 0) != 1:
            raise AssertionError("the fixed topic should reach exactly the sink")
        start = perf_counter()
        for i in range(events):
            publish(fixed, i)
        hits = events / (perf_counter() - start)
        await trio.testing.wait_all_tasks_blocked()
        start = perf_counter()
        for i in range(events):
            publish(rotating[i % CACHE_BUSTER], i)
        misses = events / (perf_counter() - start)
        await trio.testing.wait_all_tasks_blocked()
    return hits, misses


def match_once(size: Size) -> Figures:
    events = size.pick(50_000, 500)
    big = size.pick(10_000, 1_000)
    small_hits, small_misses = run_trio(troupe_match, 10, events)
    big_hits, big_misses = run_trio(troupe_match, big, events)
    return {
        "big_hits": big_hits,
        "small_hits": small_hits,
        "big_misses": big_misses,
        "small_misses": small_misses,
    }


MATCH = Bench(
    name="match",
    run_once=match_once,
    rows=[
        Row(
            "publish rate, 10,000 subscriptions, fixed topic: match-cache hits (publish/s)",
            "big_hits",
            "small_hits",
            "the same bus with 10 subscriptions, same topic",
            Target(">=", 0.5),
        ),
        Row(
            "publish rate, 10,000 subscriptions, rotating topics: cache misses (publish/s)",
            "big_misses",
            "small_misses",
            f"the same bus with 10 subscriptions, same {CACHE_BUSTER:,} rotating topics",
            Target(">=", 0.5),
        ),
    ],
    notes=[
        "match: 50,000 system.bus.publish_nowait calls per case (full) from the system's "
        "body task, timed without checkpoints (delivery into the sink's mailbox included, "
        "handling not). Subscriptions: one actor holds N-1 distinct patterns "
        "'sensor.<i>.*' (none matches), a sink holds 'sensor.*.temp' (matches every "
        "published topic: 1 delivery per publish). Fixed topic 'sensor.r0.temp' is served "
        f"from the bus's match cache; the rotating case cycles {CACHE_BUSTER:,} distinct "
        "topics 'sensor.r<k>.temp', more than the cache holds, so every publish walks the trie.",
    ],
)


BENCHES = [FANOUT, MATCH]

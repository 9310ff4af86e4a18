"""Fourth attack pass on the event bus: streams, callbacks, history and metrics text.

Each test here failed before the fix it came with (see the commit that added it).
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import trio
import trio.testing

import runtime
from runtime import Event, Supervisor

WAIT = 5.0


def empty() -> Supervisor:
    return Supervisor("app", children=[])


def stream_letters(system: runtime.System) -> list[tuple[Any, str, str]]:
    """(payload, reason, recipient) of the dead-lettered events, oldest first."""
    return [
        (letter.message.payload, letter.reason, letter.recipient)
        for letter in reversed(system.dead_letters.recent(1000))
        if isinstance(letter.message, Event) and not letter.message.topic.startswith("system.")
    ]


# -- streams: what is left in a stream when it closes ------------------------------
@pytest.mark.parametrize("how", ["break", "cancelled", "raises"])
async def test_events_left_in_a_stream_that_closes_are_dead_lettered_as_stopped(
    autojump_clock: trio.abc.Clock, how: str
) -> None:
    # "Never silently lost": an actor that stops dead-letters what is left in its
    # mailbox (``stopped``); a stream that closes with events queued did drop them
    # without a word.
    async with runtime.open_system(empty()) as system:
        with trio.fail_after(WAIT):
            with trio.CancelScope() as scope:
                try:
                    async with system.bus.stream("s.*", capacity=5) as events:
                        for i in range(4):
                            assert await system.bus.publish("s.x", i) == 1
                        assert (await events.receive()).payload == 0
                        if how == "cancelled":
                            scope.cancel()
                            await trio.sleep_forever()
                        elif how == "raises":
                            raise KeyError("the reader fails")
                except KeyError:
                    assert how == "raises"
            assert stream_letters(system) == [(i, "stopped", "stream:s.*") for i in (1, 2, 3)]
            assert system.snapshot().dead_letters["stopped"] == 3
            stats = system.bus.stats()
            # as for an actor's mailbox: they were delivered (into the stream) and
            # then dead-lettered when it closed; the bus's `dropped` is not theirs
            assert (stats["published"], stats["delivered"], stats["dropped"]) == (4, 4, 0)
            assert stats["subscriptions"] == 0


# -- callbacks: any callable can be subscribed, whatever its name ------------------
def _named(name: object) -> Any:
    def fn(event: Event) -> None:
        fn.seen.append(event.payload)  # type: ignore[attr-defined]

    fn.seen = []  # type: ignore[attr-defined]
    fn.__name__ = name  # type: ignore[assignment]
    return fn


class _OddName:
    """A callable object whose ``__name__`` is not a string."""

    __name__ = 5

    def __init__(self) -> None:
        self.seen: list[Any] = []

    def __call__(self, event: Event) -> None:
        self.seen.append(event.payload)


def größe(event: Event) -> None:  # a valid Python name, not an ASCII one
    größe.seen.append(event.payload)  # type: ignore[attr-defined]


größe.seen = []  # type: ignore[attr-defined]


@pytest.mark.parametrize("which", ["unicode", "space", "slash", "dots", "not a string"])
async def test_a_callback_is_subscribed_whatever_its_name(
    autojump_clock: trio.abc.Clock, which: str
) -> None:
    # Its actor is named after the callable: a function named in Unicode (valid
    # Python) or a callable whose __name__ has a space, a '/' or is not a string
    # got ValueError ("invalid actor name") or AttributeError from subscribe.
    fn: Any = {
        "unicode": größe,
        "space": _named("two words"),
        "slash": _named("a/b"),
        "dots": _named(".."),
        "not a string": _OddName(),
    }[which]
    fn.seen.clear()
    async with runtime.open_system(empty()) as system:
        with trio.fail_after(WAIT):
            system.bus.subscribe("named")(fn)
            assert await system.bus.publish("named", 1) == 1
            while not fn.seen:
                await trio.sleep(0.01)
            assert fn.seen == [1]
            (node,) = system.snapshot().find("/system/callbacks").children
            assert node.cls == "CallbackSubscriber"
            runtime.spec.check_name(node.name)
            system.bus.unsubscribe(fn)
            assert system.bus.stats()["subscriptions"] == 0


# -- filters: one that cannot say yes or no is refused ---------------------------
class _AsyncFilter:
    """A callable object whose call is a coroutine (inspect cannot tell beforehand)."""

    async def __call__(self, event: Event) -> bool:
        return False


class Filtered(runtime.Actor):
    def __init__(self, seen: list[Any]) -> None:
        self.seen = seen

    async def receive(self, msg: Any) -> Any:
        if isinstance(msg, Event):
            self.seen.append(msg.payload)
            return None
        if msg == "subscribe async filter":

            async def never(event: Event) -> bool:
                return False

            self.ctx.subscribe("f", filter=never)
        elif msg == "subscribe non-callable filter":
            self.ctx.subscribe("f", filter="no")  # type: ignore[arg-type]
        return None


async def test_an_async_or_non_callable_filter_is_refused_at_subscribe(
    autojump_clock: trio.abc.Clock,
) -> None:
    # filter(event) -> bool runs inside the publish: an ``async def`` filter
    # returned a coroutine, which is true, so every event passed it (and Python
    # warned of a coroutine never awaited); a filter that is not callable was
    # taken and then dead-lettered every event as ``crashed``.
    async def never(event: Event) -> bool:
        return False

    seen: list[Any] = []
    tree = Supervisor("app", children=[runtime.child(Filtered, name="f", args=(seen,))])
    async with runtime.open_system(tree) as system:
        with trio.fail_after(WAIT):
            bus = system.bus
            for bad in (never, "no"):
                with pytest.raises(TypeError, match="filter"):
                    bus.subscribe("f", filter=bad)(seen.append)  # type: ignore[arg-type]
            ref = system.ref("/app/f")
            for request in ("subscribe async filter", "subscribe non-callable filter"):
                with pytest.raises(runtime.ActorCrashed) as caught:
                    await ref.ask(request, timeout=WAIT)
                assert isinstance(caught.value.__cause__, TypeError)
            assert bus.stats()["subscriptions"] == 0
            assert not system.snapshot().find("/system/callbacks").children
            # one that inspect cannot see through: its coroutine is closed (never
            # left unawaited) and the event dead-lettered for it, as a filter that raises
            bus.subscribe("g", filter=_AsyncFilter())(seen.append)
            assert await bus.publish("g", 1) == 0
            assert stream_letters(system) == [(1, "crashed", "/system/callbacks/append-1")]
            assert seen == []


@pytest.mark.parametrize("capacity", [math.inf, True, -1, 2.0, "10"])
async def test_a_stream_is_bounded_its_capacity_a_whole_number(
    autojump_clock: trio.abc.Clock, capacity: Any
) -> None:
    # Every queue is bounded (as a mailbox's capacity, a positive int):
    # stream(capacity=math.inf) made an unbounded channel, which a reader that
    # stops reading lets grow for ever; capacity=True made a stream of one.
    async with runtime.open_system(empty()) as system:
        with pytest.raises(ValueError, match="capacity"):
            async with system.bus.stream("s", capacity=capacity):
                pass
        assert system.bus.stats()["subscriptions"] == 0


# -- history: odd but valid values ------------------------------------------------
async def test_history_takes_any_timestamp_for_since(autojump_clock: trio.abc.Clock) -> None:
    # since=10**400 (an int no float holds) raised OverflowError from math.isnan
    async with runtime.open_system(empty(), history=3) as system:
        bus = system.bus
        for i in range(5):
            await bus.publish("h.x", i)
        assert [e.payload for e in bus.history("h.*", limit=10)] == [4, 3, 2]
        assert bus.history("h.*", since=10**400) == []
        assert [e.payload for e in bus.history("h.*", since=-(10**400))] == [4, 3, 2]
        assert [e.payload for e in bus.history("h.*", since=-math.inf)] == [4, 3, 2]
        assert bus.history("h.*", since=math.inf) == []
        assert [e.payload for e in bus.history("h.*", limit=10**30)] == [4, 3, 2]
        assert bus.history("h.*", limit=0) == []
        for bad in (math.nan, True, "1"):
            with pytest.raises(ValueError, match="since"):
                bus.history("h.*", since=bad)
        bus.clear_history()
        assert bus.history() == []
    async with runtime.open_system(empty(), history=0) as system:
        await system.bus.publish("h.x", 0)
        assert system.bus.history() == []
        seen: list[Any] = []
        system.bus.subscribe("h.x", replay=5)(seen.append)
        assert system.bus.stats()["delivered"] == 0


# -- dead letters: a query for none gets none --------------------------------------
async def test_a_dead_letters_query_for_none_gets_none(autojump_clock: trio.abc.Clock) -> None:
    # recent(limit) took a letter before it looked at the limit: limit=0 (or a
    # negative one) answered one letter
    async with runtime.open_system(empty()) as system:
        with trio.fail_after(WAIT):
            for i in range(3):
                system.dead_letters.record(i, "unhandled", "/app/x")
            office = system.dead_letters
            assert [letter.message for letter in office.recent(2)] == [2, 1]
            assert office.recent(0) == []
            assert office.recent(-1) == []
            ref = system.ref("/system/deadletters")
            assert await ref.ask(runtime.DeadLettersQuery(limit=0), timeout=WAIT) == []
            assert len(await ref.ask(runtime.DeadLettersQuery(limit=1), timeout=WAIT)) == 1


async def test_history_checks_its_pattern_whatever_the_limit(
    autojump_clock: trio.abc.Clock,
) -> None:
    # the pattern was checked only as the history was walked: with limit=0 an
    # invalid one ('a..b', 'a*', 5) answered [] instead of ValueError
    async with runtime.open_system(empty()) as system:
        for bad in ("a..b", "a*", "", 5):
            for limit in (0, 1):
                with pytest.raises(ValueError, match="pattern"):
                    system.bus.history(bad, limit=limit)  # type: ignore[arg-type]


async def test_a_raising_filter_is_logged_once_per_subscription_and_every_event_counted(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    # A filter that raises dead-letters its event (``crashed``) every time, but a busy
    # topic must not flood the log with a traceback per event: logged once per
    # subscription, as a raising callback is.
    def broken(event: Event) -> bool:
        raise KeyError("no such field")

    seen: list[Any] = []
    async with runtime.open_system(empty()) as system:
        system.bus.subscribe("a.b", filter=broken)(seen.append)
        with caplog.at_level("ERROR", logger="troupe"):
            for n in range(5):
                await system.bus.publish("a.b", n)
        with trio.fail_after(WAIT):
            while len(stream_letters(system)) < 5:
                await trio.sleep(0.01)
        assert [(p, r) for p, r, _ in stream_letters(system)] == [(n, "crashed") for n in range(5)]
        assert seen == []
    logged = [r for r in caplog.records if "filter" in r.getMessage()]
    assert len(logged) == 1 and logged[0].exc_info is not None

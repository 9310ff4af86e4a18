"""What the reference design's users look for on the bus (issue 12): `Event.msg_id`
and `node`, duplicate suppression, history size and `since`, runtime topics kept
apart, and callback subscribers (several patterns, failures, timeouts, weak
references)."""

from __future__ import annotations

import gc
import logging
import math
import pathlib
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st
from test_bus import Collector, app, payloads, subs, topics, wait_for
from test_control import Conn, control_system

import runtime
import runtime.bus
from runtime import Event, child
from runtime.bus import Subscription
from runtime.deadletters import DeadLettersQuery
from runtime.topics import PatternIndex, matches

WAIT = 30.0


async def letters(system: runtime.System, reason: str) -> list[Any]:
    return list(await system.ref("/system/deadletters").ask(DeadLettersQuery(reason=reason)))


def callback_path(system: runtime.System) -> str:
    [row] = system.which_children("/system/callbacks")
    return row.path


# -- Event fields ------------------------------------------------------------------


def test_event_ends_with_msg_id_and_node() -> None:
    names = [f.name for f in attrs.fields(Event)]
    assert names == [
        "topic",
        "payload",
        "source",
        "id",
        "timestamp",
        "correlation_id",
        "metadata",
        "msg_id",
        "node",
    ]
    event = Event("a.b")
    assert event.msg_id is None and event.node is None


async def test_published_events_carry_their_msg_id_and_no_node(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with runtime.open_system(app(child(Collector, name="c", args=(("m.*",),)))) as system:
        assert await system.bus.publish("m.a", 1, msg_id="one") == 1
        assert system.bus.publish_nowait("m.b", 2, msg_id="two") == 1
        assert system.bus.publish_nowait("m.c", 3) == 1
        events = await system.ref("/app/c").ask("events")
        assert [e.msg_id for e in events] == ["one", "two", None]
        assert [e.node for e in events] == [None, None, None]  # no cluster: no node
        assert [e.msg_id for e in system.bus.history("m.*")] == [None, "two", "one"]


# -- duplicate suppression -----------------------------------------------------------


async def test_a_second_publish_with_the_same_msg_id_is_dropped(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with runtime.open_system(app(child(Collector, name="c", args=(("d.*",),)))) as system:
        base = system.bus.stats()
        assert await system.bus.publish("d.x", 1, msg_id="job-1") == 1
        assert await system.bus.publish("d.x", 2, msg_id="job-1") == 0
        assert system.bus.publish_nowait("d.y", 3, msg_id="job-1") == 0  # either way, any topic
        assert await system.bus.publish("d.x", 4, msg_id="job-2") == 1
        assert await system.bus.publish("d.x", 5) == 1  # no msg_id: never a duplicate
        assert await system.bus.publish("d.x", 6) == 1
        stats = system.bus.stats()
        assert stats["duplicates"] - base["duplicates"] == 2
        assert stats["published"] - base["published"] == 4  # duplicates are not published
        assert payloads(await system.ref("/app/c").ask("events")) == [1, 4, 5, 6]
        assert payloads(system.bus.history("d.*")) == [6, 5, 4, 1]  # nor kept


async def test_the_duplicate_window_runs_from_the_first_publish(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with runtime.open_system(app()) as system:
        assert system.bus.stats()["duplicates"] == 0
        system.bus.publish_nowait("w", 1, msg_id="x")
        await trio.sleep(100)
        assert system.bus.publish_nowait("w", 2, msg_id="x") == 0  # within 120 s
        await trio.sleep(19.9)
        assert system.bus.publish_nowait("w", 3, msg_id="x") == 0  # still (119.9 s)
        await trio.sleep(0.2)
        # 120.1 s after the first: a new event, although a duplicate came 20 s ago
        system.bus.publish_nowait("w", 4, msg_id="x")
        assert payloads(system.bus.history("w")) == [4, 1]
        assert system.bus.stats()["duplicates"] == 2


async def test_the_duplicate_window_is_set_per_system(autojump_clock: trio.abc.Clock) -> None:
    async with runtime.open_system(app(), duplicate_window=5) as system:
        system.bus.publish_nowait("w", 1, msg_id="x")
        await trio.sleep(4)
        system.bus.publish_nowait("w", 2, msg_id="x")
        await trio.sleep(1.5)
        system.bus.publish_nowait("w", 3, msg_id="x")
        assert payloads(system.bus.history("w")) == [3, 1]
    async with runtime.open_system(app(), duplicate_window=0) as system:  # off
        for i in range(3):
            system.bus.publish_nowait("w", i, msg_id="x")
        assert payloads(system.bus.history("w")) == [2, 1, 0]
        assert system.bus.stats()["duplicates"] == 0


async def test_remembered_msg_ids_are_bounded_by_time_and_by_count(
    autojump_clock: trio.abc.Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime.bus, "DUPLICATES", 10)
    async with runtime.open_system(app(), duplicate_window=60) as system:
        bus = system.bus
        for i in range(25):
            bus.publish_nowait("w", i, msg_id=f"id-{i}")
        bus.publish_nowait("w", 0, msg_id="id-0")  # forgotten early: new again
        assert bus.stats()["duplicates"] == 0
        bus.publish_nowait("w", 0, msg_id="id-24")  # still remembered
        assert bus.stats()["duplicates"] == 1
        await trio.sleep(61)
        for i in (0, 20, 24):  # expired with time
            bus.publish_nowait("w", 0, msg_id=f"id-{i}")
        assert bus.stats()["duplicates"] == 1
        assert [e.msg_id for e in bus.history("w", limit=3)] == ["id-24", "id-20", "id-0"]


async def test_a_msg_id_must_be_a_string(autojump_clock: trio.abc.Clock) -> None:
    async with runtime.open_system(app()) as system:
        with pytest.raises(TypeError, match="msg_id"):
            system.bus.publish_nowait("w", 1, msg_id=7)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="msg_id"):
            await system.bus.publish("w", 1, msg_id=b"x")  # type: ignore[arg-type]
        assert system.bus.history("w") == []


@pytest.mark.parametrize("bad", [-1, -0.5, math.nan, "120", None, True])
async def test_an_invalid_duplicate_window_is_refused(bad: Any) -> None:
    with pytest.raises(ValueError, match="duplicate_window"):
        async with runtime.open_system(app(), duplicate_window=bad):
            pytest.fail("the system must not start")  # pragma: no cover


async def test_an_infinite_duplicate_window_is_allowed(autojump_clock: trio.abc.Clock) -> None:
    async with runtime.open_system(app(), duplicate_window=math.inf) as system:
        system.bus.publish_nowait("w", 1, msg_id="x")
        await trio.sleep(1e6)
        assert system.bus.publish_nowait("w", 2, msg_id="x") == 0


# -- history size and since ------------------------------------------------------------


async def test_history_size_is_set_per_system(autojump_clock: trio.abc.Clock) -> None:
    async with runtime.open_system(app(), history=3) as system:
        for i in range(5):
            system.publish("h", i)
        assert payloads(system.bus.history("h", limit=10)) == [4, 3, 2]


async def test_history_zero_keeps_none(autojump_clock: trio.abc.Clock) -> None:
    async with runtime.open_system(app(child(Collector, name="c")), history=0) as system:
        system.publish("h", 1)
        assert system.bus.history("h") == []
        assert system.bus.history("system.>") == []
        await system.ref("/app/c").ask(("subscribe", "h", {"replay": 10}))
        assert system.publish("h", 2) == 1
        assert payloads(await system.ref("/app/c").ask("events")) == [2]  # nothing to replay


@pytest.mark.parametrize("bad", [-1, 1.5, math.nan, "10", None, True])
async def test_an_invalid_history_is_refused(bad: Any) -> None:
    with pytest.raises(ValueError, match="history must be a whole number"):
        async with runtime.open_system(app(), history=bad):
            pytest.fail("the system must not start")  # pragma: no cover


def test_run_and_start_in_thread_take_and_check_the_bus_options() -> None:
    with pytest.raises(ValueError, match="history"):
        runtime.run(app(), history=-1)
    with pytest.raises(ValueError, match="duplicate_window"):
        runtime.run(app(), duplicate_window=-1)
    with pytest.raises(ValueError, match="history"):
        with runtime.start_in_thread(app(), history=-1):
            pytest.fail("the system must not start")  # pragma: no cover
    with runtime.start_in_thread(app(), history=2, duplicate_window=1.0) as system:
        for i in range(4):
            system.publish("h", i)


async def test_history_since_compares_with_the_event_timestamp(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with runtime.open_system(app()) as system:
        system.publish("s.a", 1)
        [first] = system.bus.history("s.a")
        while time.time() <= first.timestamp:  # the wall clock moves on (a few µs)
            pass
        system.publish("s.b", 2)
        system.publish("s.a", 3)
        [second, _] = system.bus.history("s.*", limit=2)[::-1]
        assert payloads(system.bus.history("s.*", since=second.timestamp)) == [3, 2]
        assert payloads(system.bus.history("s.*", since=first.timestamp)) == [3, 2, 1]
        assert payloads(system.bus.history("s.*", limit=1, since=first.timestamp)) == [3]
        assert payloads(system.bus.history("s.a", since=second.timestamp)) == [3]
        assert system.bus.history(since=time.time() + 60) == []
        assert payloads(system.bus.history(since=0)) == [3, 2, 1]


async def test_history_checks_limit_and_since(autojump_clock: trio.abc.Clock) -> None:
    async with runtime.open_system(app()) as system:
        system.publish("h", 1)
        assert system.bus.history(limit=0) == []
        for bad_limit in (-1, 1.5, None, True):
            with pytest.raises(ValueError, match="limit"):
                system.bus.history(limit=bad_limit)  # type: ignore[arg-type]
        for bad_since in ("yesterday", math.nan, True):
            with pytest.raises(ValueError, match="since"):
                system.bus.history(since=bad_since)  # type: ignore[arg-type]


# -- runtime topics kept apart ------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "topic", "expected"),
    [
        (">", "system.actor.started", False),
        ("*.actor.started", "system.actor.started", False),
        ("*.>", "system.deadletter", False),
        ("*", "system", False),
        ("*.*", "system.deadletter", False),
        ("system.>", "system.actor.started", True),
        ("system.actor.*", "system.actor.started", True),
        ("system.*", "system.deadletter", True),
        ("system", "system", True),
        (">", "systems.x", True),  # not the runtime's: another first segment
        (">", "a.system", True),
        ("*.system", "a.system", True),
        ("a.>", "a.system.x", True),
    ],
)
def test_patterns_that_begin_with_a_wildcard_leave_out_system_topics(
    pattern: str, topic: str, expected: bool
) -> None:
    assert matches(pattern, topic) is expected
    index: PatternIndex[Subscription] = PatternIndex()
    sub = Subscription(pattern)
    index.add(sub)
    assert (index.match(topic, tuple(topic.split("."))) == [sub]) is expected


WORDS = ["system", "a", "b"]


def ref_match(pattern: list[str], topic: list[str]) -> bool:
    """NATS matching, then the runtime's rule, written from their definitions."""
    if topic[0] == "system" and pattern[0] in ("*", ">"):
        return False

    def nats(p: list[str], t: list[str]) -> bool:
        if not p:
            return not t
        if p[0] == ">":
            return len(t) >= 1
        return bool(t) and p[0] in ("*", t[0]) and nats(p[1:], t[1:])

    return nats(pattern, topic)


@st.composite
def pattern_parts(draw: st.DrawFn) -> list[str]:
    parts = draw(st.lists(st.sampled_from([*WORDS, "*"]), min_size=0, max_size=3))
    if not parts or draw(st.booleans()):
        parts.append(">")
    return parts


@given(
    st.lists(pattern_parts(), max_size=20),
    st.lists(st.lists(st.sampled_from(WORDS), min_size=1, max_size=4), min_size=1, max_size=20),
)
@settings(max_examples=300, deadline=None)
def test_the_index_and_matches_agree_with_the_rule(
    patterns: list[list[str]], topic_list: list[list[str]]
) -> None:
    index: PatternIndex[Subscription] = PatternIndex()
    subscriptions = [Subscription(".".join(p), seq=i) for i, p in enumerate(patterns)]
    for sub in subscriptions:
        index.add(sub)
    for topic in topic_list:
        text = ".".join(topic)
        want = [s for s in subscriptions if ref_match(s.pattern.split("."), topic)]
        assert index.match(text, tuple(topic)) == want
        assert index.match(text, tuple(topic)) == want  # the cached answer
        for sub in subscriptions:
            assert matches(sub.pattern, text) is ref_match(sub.pattern.split("."), topic)


class CatchAll(Collector):
    subscriptions = (">",)


async def test_a_catch_all_subscriber_sees_only_application_events(
    autojump_clock: trio.abc.Clock,
) -> None:
    class Watcher(Collector):
        subscriptions = ("system.>",)

    tree = app(child(CatchAll, name="all"), child(Watcher, name="w"), child(Collector, name="x"))
    async with runtime.open_system(tree) as system:
        with pytest.raises(runtime.ActorCrashed):
            await system.ref("/app/x").ask("crash")  # system.actor.crashed, restarted
        await system.ref("/app/x").ask("events")
        assert system.publish("app.event", 1) == 1
        assert topics(await system.ref("/app/all").ask("events")) == ["app.event"]
        seen = topics(await system.ref("/app/w").ask("events"))
        assert "system.actor.started" in seen and "system.actor.crashed" in seen


async def test_a_fresh_bus_has_clean_history_and_counts(autojump_clock: trio.abc.Clock) -> None:
    async with runtime.open_system(app(child(Collector, name="c"))) as system:
        stats = system.bus.stats()
        assert stats["published"] == 0  # start-up published only the runtime's events
        assert stats["system_published"] > 0
        assert stats["topics"]["system.actor.started"] > 0  # per topic: both kinds
        assert system.bus.history() == []
        assert system.bus.history("system.>") != []
        system.publish("mine", 1)
        assert payloads(system.bus.history()) == [1]
        stats = system.bus.stats()
        assert stats["published"] == 1
        assert system.snapshot().find("/system/bus").stats["system_published"] > 0


async def test_streams_leave_out_system_topics_unless_named(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with runtime.open_system(app()) as system:
        async with (
            system.bus.stream(">") as everything,
            system.bus.stream("*.actor.*") as wild,
            system.bus.stream("system.actor.*") as named,
        ):
            ref = await system.start_child("/app", child(Collector, name="dyn"))
            await ref.ask("events")
            system.publish("app.actor.x", 1)
            await trio.testing.wait_all_tasks_blocked()
            assert [everything.receive_nowait().topic] == ["app.actor.x"]
            assert [wild.receive_nowait().topic] == ["app.actor.x"]
            for channel in (everything, wild):
                with pytest.raises(trio.WouldBlock):
                    channel.receive_nowait()
            assert named.receive_nowait().topic == "system.actor.started"


async def test_troupe_events_leave_out_system_topics_unless_named(
    folder: pathlib.Path,
) -> None:
    with trio.fail_after(WAIT):
        async with control_system(folder) as system:
            every = await Conn.open(system)
            named = await Conn.open(system)
            assert (await every.request("events", pattern=">"))["ok"]
            assert (await named.request("events", pattern="system.>"))["ok"]
            ref = await system.start_child("/app", child(Collector, name="dyn"))
            await ref.ask("events")
            system.publish("app.done", 1)
            line = await every.line()  # the first line: no runtime event came before
            assert line is not None and line["event"]["topic"] == "app.done"
            while True:  # the runtime's events (e.g. system.loop.blocked) come this way
                line = await named.line()
                assert line is not None
                event = line["event"]
                if event["topic"] == "system.actor.started":
                    break
            assert event["payload"]["path"] == "/app/dyn"
            assert event["node"] is None and event["msg_id"] is None
            await every.aclose()
            await named.aclose()


SYSTEM_TOPICS = ["system", "system.deadletter", "system.actor.started", "system.mine"]


@pytest.mark.parametrize("topic", SYSTEM_TOPICS)
async def test_users_may_not_publish_on_system_topics(
    topic: str, autojump_clock: trio.abc.Clock
) -> None:
    class Watcher(Collector):
        subscriptions = ("system.>", "system")

    async with runtime.open_system(app(child(Watcher, name="c"))) as system:
        before = system.bus.stats()
        with pytest.raises(ValueError, match="belong to the runtime"):
            await system.bus.publish(topic, 1)
        with pytest.raises(ValueError, match="belong to the runtime"):
            system.bus.publish_nowait(topic, 1)
        with pytest.raises(ValueError, match="belong to the runtime"):
            system.publish(topic, 1)
        ref = system.ref("/app/c")
        assert isinstance(await ref.ask(("publish", topic, 1, {})), ValueError)
        assert isinstance(await ref.ask(("publish_nowait", topic, 1, {})), ValueError)
        with trio.fail_after(WAIT):
            with pytest.raises(ValueError, match="belong to the runtime"):
                await trio.to_thread.run_sync(system.publish, topic, 1)
        after = system.bus.stats()
        assert after["topics"].get(topic, 0) == before["topics"].get(topic, 0)
        assert after["system_published"] == before["system_published"]
        assert system.snapshot().find("/system/bus").restarts == 0
        # the runtime's own events still flow
        await system.start_child("/app", child(Collector, name="dyn"))
        events = await ref.ask("events")
        assert "system.actor.started" in topics(events)
        assert not any(e.payload == 1 for e in events)


async def test_topics_that_only_look_like_system_topics_are_the_users(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with runtime.open_system(app(child(CatchAll, name="all"))) as system:
        for topic in ("systems", "systemx.y", "a.system", "a.system.b"):
            assert system.publish(topic, topic) == 1
        assert system.bus.stats()["published"] == 4


# -- callback subscribers ---------------------------------------------------------------


async def test_one_callback_on_several_patterns(autojump_clock: trio.abc.Clock) -> None:
    got: list[str] = []
    async with runtime.open_system(app()) as system:
        base = await subs(system)

        @system.bus.subscribe("a.*", "b.>")
        def both(event: Event) -> None:
            got.append(event.topic)

        # active at once: the actor that runs it may not have started yet
        assert await system.bus.publish("a.x", None) == 1
        assert await system.bus.publish("b.x.y", None) == 1
        assert await system.bus.publish("c.x", None) == 0
        assert await subs(system) == base + 2
        await wait_for(lambda: len(got) == 2)
        assert got == ["a.x", "b.x.y"]
        assert system.snapshot().find(callback_path(system)).subscriptions == ("a.*", "b.>")


async def test_subscribing_again_adds_patterns_with_that_calls_options(
    autojump_clock: trio.abc.Clock,
) -> None:
    got: list[tuple[str, int]] = []
    async with runtime.open_system(app()) as system:
        system.publish("old.x", -1)
        system.publish("old.x", -2)

        def fn(event: Event) -> None:
            got.append((event.topic, event.payload))

        assert system.bus.subscribe("a.*")(fn) is fn
        system.bus.subscribe("b.*", filter=lambda e: e.payload > 0)(fn)
        system.bus.subscribe("c", once=True)(fn)
        system.bus.subscribe("old.*", replay=1)(fn)
        assert len(system.which_children("/system/callbacks")) <= 1
        for payload in (0, 1):
            for topic in ("a.x", "b.x", "c"):
                system.publish(topic, payload)
        await wait_for(lambda: len(got) == 5)
        assert got == [("old.x", -2), ("a.x", 0), ("c", 0), ("a.x", 1), ("b.x", 1)]
        await wait_for(lambda: len(system.which_children("/system/callbacks")) == 1)
        info = system.snapshot().find(callback_path(system))
        assert info.subscriptions == ("a.*", "b.*", "old.*")  # "c" was once
        system.bus.unsubscribe(fn)
        assert system.publish("a.x", 2) == 0


async def test_decorators_stack_on_one_callback(autojump_clock: trio.abc.Clock) -> None:
    got: list[str] = []
    async with runtime.open_system(app()) as system:

        @system.bus.subscribe("x.*", timeout=5)
        @system.bus.subscribe("y.*", timeout=5)
        async def fn(event: Event) -> None:
            got.append(event.topic)

        system.publish("x.1")
        system.publish("y.1")
        await wait_for(lambda: len(got) == 2)
        assert sorted(got) == ["x.1", "y.1"]
        await wait_for(lambda: len(system.which_children("/system/callbacks")) == 1)


async def test_timeout_and_weak_belong_to_the_callable(autojump_clock: trio.abc.Clock) -> None:
    async with runtime.open_system(app()) as system:

        async def fn(event: Event) -> None:
            pass

        system.bus.subscribe("a", timeout=1.0)(fn)
        with pytest.raises(ValueError, match="already subscribed"):
            system.bus.subscribe("b")(fn)
        with pytest.raises(ValueError, match="already subscribed"):
            system.bus.subscribe("b", timeout=1.0, weak=True)(fn)
        system.bus.subscribe("b", timeout=1.0)(fn)
        assert system.publish("b") == 1


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((), {}, ValueError, "at least one pattern"),
        (("a..b",), {}, ValueError, "invalid pattern"),
        (("a.*", "b*"), {}, ValueError, "wildcard"),
        (("a.*",), {"timeout": -1}, ValueError, "timeout"),
        (("a.*",), {"timeout": math.nan}, ValueError, "timeout"),
        (("a.*",), {"timeout": "1"}, TypeError, "timeout"),
        (("a.*",), {"replay": -1}, ValueError, "replay"),
    ],
)
async def test_subscribe_checks_everything_before_subscribing(
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    error: type[Exception],
    match: str,
    autojump_clock: trio.abc.Clock,
) -> None:
    async with runtime.open_system(app()) as system:
        base = await subs(system)
        with pytest.raises(error, match=match):
            system.bus.subscribe(*args, **kwargs)(lambda e: None)
        await trio.testing.wait_all_tasks_blocked()
        assert await subs(system) == base
        assert system.which_children("/system/callbacks") == []


async def test_subscribe_says_how_to_use_it(autojump_clock: trio.abc.Clock) -> None:
    async with runtime.open_system(app()) as system:

        def fn(event: Event) -> None:
            pass

        with pytest.raises(ValueError, match=r"patterns first.*@bus.subscribe\('a\.\*'\)"):
            system.bus.subscribe(fn, "a.*")  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="decorates a callable"):
            system.bus.subscribe("a.*")("not callable")  # type: ignore[arg-type]
        assert system.which_children("/system/callbacks") == []


async def test_a_failing_callback_dead_letters_its_event_and_goes_on(
    autojump_clock: trio.abc.Clock, caplog: pytest.LogCaptureFixture
) -> None:
    good: list[int] = []
    async with runtime.open_system(app()) as system:

        @system.bus.subscribe("f")
        def flaky(event: Event) -> None:
            if event.payload % 2:
                raise ValueError(f"odd {event.payload}")
            good.append(event.payload)

        with caplog.at_level(logging.ERROR, logger="troupe.bus"):
            for i in range(6):
                system.publish("f", i)
            await wait_for(lambda: len(good) == 3)
            await trio.testing.wait_all_tasks_blocked()
        assert good == [0, 2, 4]
        path = callback_path(system)
        crashed = await letters(system, "crashed")
        assert sorted(letter.message.payload for letter in crashed) == [1, 3, 5]
        assert {letter.recipient for letter in crashed} == {path}
        info = system.snapshot().find(path)
        assert info.stats["errors"] == 3 and info.stats["calls"] == 6
        assert "odd 5" in info.stats["last_error"]
        assert info.dead_lettered == 3
        assert info.restarts == 0 and info.state == "running"
        assert system.snapshot().dead_letters["crashed"] == 3
        failures = [r for r in caplog.records if "flaky" in r.getMessage()]
        assert len(failures) == 1  # logged once, not once per event
        assert failures[0].exc_info is not None


async def test_a_slow_async_callback_is_cancelled_after_its_timeout(
    autojump_clock: trio.abc.Clock,
) -> None:
    done: list[int] = []
    cancelled: list[int] = []
    async with runtime.open_system(app()) as system:

        @system.bus.subscribe("t", timeout=2.0)
        async def slow(event: Event) -> None:
            try:
                await trio.sleep(event.payload)
            except trio.Cancelled:
                cancelled.append(event.payload)
                raise
            done.append(event.payload)

        start = trio.current_time()
        for seconds in (1, 10, 1.5, 30):
            system.publish("t", seconds)
        await wait_for(lambda: len(done) + len(cancelled) == 4, timeout=100)
        assert done == [1, 1.5] and cancelled == [10, 30]
        assert trio.current_time() - start == pytest.approx(1 + 2 + 1.5 + 2, abs=0.1)
        timed_out = await letters(system, "timeout")
        assert sorted(letter.message.payload for letter in timed_out) == [10, 30]
        info = system.snapshot().find(callback_path(system))
        assert info.stats["timeouts"] == 2 and info.stats["errors"] == 0
        assert info.dead_lettered == 2


async def test_a_timeout_does_not_interrupt_a_plain_function(
    autojump_clock: trio.abc.Clock,
) -> None:
    got: list[int] = []
    async with runtime.open_system(app()) as system:

        @system.bus.subscribe("t", timeout=0)
        def quick(event: Event) -> None:
            got.append(event.payload)

        system.publish("t", 1)
        await wait_for(lambda: got == [1])
        assert system.snapshot().dead_letters["timeout"] == 0


class Owner:
    def __init__(self) -> None:
        self.got: list[Any] = []

    def on_event(self, event: Event) -> None:
        self.got.append(event.payload)

    async def on_event_async(self, event: Event) -> None:
        self.got.append(event.payload)


async def ended(system: runtime.System, base: int) -> None:
    await wait_for(
        lambda: (
            system.bus.stats()["subscriptions"] == base
            and system.which_children("/system/callbacks") == []
        )
    )


@pytest.mark.parametrize("method", ["on_event", "on_event_async"])
async def test_a_weak_bound_method_ends_with_its_object(
    method: str, autojump_clock: trio.abc.Clock
) -> None:
    async with runtime.open_system(app()) as system:
        base = await subs(system)
        owner = Owner()
        system.bus.subscribe("w.*", "v", weak=True)(getattr(owner, method))
        assert system.publish("w.x", 1) == 1
        got = owner.got
        await wait_for(lambda: got == [1])
        await wait_for(lambda: len(system.which_children("/system/callbacks")) == 1)
        alive = weakref.ref(owner)
        del owner
        gc.collect()
        assert alive() is None  # the subscription did not keep it alive
        await ended(system, base)
        assert system.publish("w.x", 2) == 0
        assert system.publish("v", 2) == 0


async def test_a_weak_plain_function_ends_when_collected(autojump_clock: trio.abc.Clock) -> None:
    got: list[Any] = []
    async with runtime.open_system(app()) as system:
        base = await subs(system)

        def make() -> Callable[[Event], None]:
            def handler(event: Event) -> None:
                got.append(event.payload)

            return handler

        handler = make()
        system.bus.subscribe("w", weak=True)(handler)
        system.publish("w", 1)
        await wait_for(lambda: got == [1])
        del handler
        gc.collect()
        await ended(system, base)
        assert system.publish("w", 2) == 0


async def test_an_object_collected_in_another_thread_ends_its_subscription_on_the_loop(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with runtime.open_system(app()) as system:
        base = await subs(system)
        box = [Owner()]
        system.bus.subscribe("w", weak=True)(box[0].on_event)
        threads: list[str] = []

        def drop() -> None:
            threads.append(threading.current_thread().name)
            box.clear()
            gc.collect()

        with trio.fail_after(WAIT):
            await trio.to_thread.run_sync(drop)
        assert threads and threads[0] != threading.current_thread().name
        await ended(system, base)


async def test_strong_callbacks_keep_their_object_and_unsubscribe_by_bound_method(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with runtime.open_system(app()) as system:
        base = await subs(system)
        owner = Owner()
        system.bus.subscribe("s")(owner.on_event)
        system.bus.subscribe("t")(owner.on_event)  # the same callable: one actor
        alive = weakref.ref(owner)
        del owner
        gc.collect()
        assert alive() is not None
        assert system.publish("s", 1) == 1
        owner = alive()
        assert owner is not None
        await wait_for(lambda: owner.got == [1])
        await wait_for(lambda: len(system.which_children("/system/callbacks")) == 1)
        system.bus.unsubscribe(owner.on_event)  # a new bound method object: the same callable
        await ended(system, base)


async def test_a_weak_callback_can_be_unsubscribed_before_it_is_collected(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with runtime.open_system(app()) as system:
        base = await subs(system)
        owner = Owner()
        system.bus.subscribe("w", weak=True)(owner.on_event)
        system.bus.unsubscribe(owner.on_event)
        await ended(system, base)
        del owner
        gc.collect()
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(ValueError, match="not a subscribed callback"):
            system.bus.unsubscribe(Owner().on_event)


async def test_weak_needs_a_callable_that_can_be_weakly_referenced(
    autojump_clock: trio.abc.Clock,
) -> None:
    class Slotted:
        __slots__ = ()  # no __weakref__

        def on_event(self, event: Event) -> None:
            pass

        def __call__(self, event: Event) -> None:
            pass

    async with runtime.open_system(app()) as system:
        base = await subs(system)
        for fn in (Slotted().on_event, Slotted()):
            with pytest.raises(TypeError, match="weakly referenced"):
                system.bus.subscribe("w", weak=True)(fn)
        assert await subs(system) == base
        assert system.which_children("/system/callbacks") == []


async def test_callbacks_end_with_the_system() -> None:
    owner = Owner()
    async with runtime.open_system(app()) as system:
        system.bus.subscribe("w", weak=True)(owner.on_event)
    del owner
    gc.collect()  # after the run: nothing to tell, nothing raised
    with pytest.raises(runtime.RuntimeClosed):
        system.bus.subscribe("w")(lambda e: None)


async def test_a_weak_builtin_method_lives_as_long_as_its_object(
    autojump_clock: trio.abc.Clock,
) -> None:
    """`a_deque.append` is a new object at every access, like a bound method: held
    weakly by its object, not by itself (which would die at once)."""
    import collections

    async with runtime.open_system(app()) as system:
        base = await subs(system)
        holder: list[collections.deque[Any]] = [collections.deque()]
        system.bus.subscribe("w", weak=True)(holder[0].append)
        gc.collect()
        assert await system.bus.publish("w", 1) == 1
        await wait_for(lambda: len(holder[0]) == 1)
        holder.clear()  # the deque's last reference
        gc.collect()
        await ended(system, base)
        with pytest.raises(TypeError, match="weakly referenced"):
            system.bus.subscribe("w", weak=True)([].append)  # a list allows no weak refs

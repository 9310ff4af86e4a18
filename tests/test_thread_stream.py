"""`ThreadedBus.stream`: the blocking analog of ``async with system.bus.stream(...)``
for plain threads (``with handle.bus.stream("t.*") as events: for e in events``).

Every wait on a thread is bounded (`WAIT`); nothing asserts on how long a call took.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

import pytest
import trio

import runtime
from runtime import Actor, Event, Supervisor, child
from runtime.deadletters import DeadLettersQuery
from runtime.entry import ThreadedBus, ThreadedSystem

WAIT = 10.0  # a real-time bound for anything involving threads


def empty() -> Supervisor:
    return Supervisor("app", children=[])


def in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    """Run `fn` on a plain thread; `out` gets what it returned or raised."""
    out: dict[str, Any] = {}

    def main() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # handed to the test
            out["error"] = exc

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    return thread, out


def joined(thread: threading.Thread) -> None:
    thread.join(WAIT)
    assert not thread.is_alive(), "the reader thread hangs"


def letters(handle: ThreadedSystem, reason: str) -> list[tuple[str, Any]]:
    """(recipient, payload) of the dead letters of `reason`, oldest first."""
    found = handle.ref("/system/deadletters").ask_blocking(DeadLettersQuery(reason=reason))
    return [(x.recipient, x.message.payload) for x in reversed(found)]


def test_the_thread_bus_has_every_method_the_contract_names() -> None:
    with runtime.start_in_thread(empty()) as handle:
        bus = handle.bus
    assert isinstance(bus, ThreadedBus)
    for name in (
        "publish",
        "publish_nowait",
        "subscribe",
        "unsubscribe",
        "stream",
        "history",
        "clear_history",
        "stats",
    ):
        assert callable(getattr(bus, name, None)), name


def test_a_thread_reads_the_events_in_order_and_the_subscription_ends_with_the_block() -> None:
    with runtime.start_in_thread(empty()) as handle:
        ready = threading.Event()

        def read() -> list[Any]:
            got: list[Any] = []
            with handle.bus.stream("t.*", capacity=100) as events:
                ready.set()
                for event in events:
                    assert isinstance(event, Event)
                    got.append(event.payload)
                    if len(got) == 20:
                        break
            return got

        reader, out = in_thread(read)
        assert ready.wait(WAIT)
        # active when __enter__ returned: every publish reaches it
        assert [handle.publish("t.x", i) for i in range(20)] == [1] * 20
        joined(reader)
        assert out == {"value": list(range(20))}
        assert handle.bus.stats()["subscriptions"] == 0
        assert handle.publish("t.x", "after") == 0
        assert handle.snapshot().dead_letters.get("stopped", 0) == 0


def test_past_its_capacity_the_newest_events_are_dead_lettered_overflow_and_counted() -> None:
    with runtime.start_in_thread(empty()) as handle:
        with handle.bus.stream("t.*", capacity=2) as events:
            assert [handle.publish("t.x", i) for i in range(5)] == [1, 1, 0, 0, 0]
            assert handle.bus.publish_nowait("t.x", 5) == 0
            assert events.receive(timeout=WAIT).payload == 0
            assert events.receive(timeout=WAIT).payload == 1
            with pytest.raises(TimeoutError):
                events.receive(timeout=0.05)
            stats = handle.bus.stats()
            assert stats["dropped"] == 4
            assert stats["delivered"] == 2
            assert stats["subscriptions"] == 1
        assert handle.snapshot().dead_letters["overflow"] == 4
        assert letters(handle, "overflow") == [("stream:t.*", i) for i in (2, 3, 4, 5)]


def test_capacity_zero_gives_an_event_only_to_a_reader_already_waiting() -> None:
    with runtime.start_in_thread(empty()) as handle:
        with handle.bus.stream("t", capacity=0) as events:
            assert handle.publish("t", "nobody waits") == 0  # dead-lettered: overflow
            reader, out = in_thread(lambda: events.receive(timeout=WAIT).payload)
            delivered = None
            for i in range(2000):  # until the reader is waiting (bounded)
                if handle.publish("t", i) == 1:
                    delivered = i
                    break
                reader.join(0.005)
            joined(reader)
            assert delivered is not None
            assert out == {"value": delivered}
            dropped = handle.bus.stats()["dropped"]
            assert dropped == delivered + 1  # every publish before it
        assert handle.snapshot().dead_letters["overflow"] == dropped


def test_leaving_the_block_early_dead_letters_the_unread_events_stopped() -> None:
    with runtime.start_in_thread(empty()) as handle:
        with handle.bus.stream("t.>", capacity=10) as events:
            for i in range(4):
                handle.publish("t.a.b", i)
            for event in events:
                assert event.payload == 0
                break
        # ended on the loop before the block's end returned
        assert handle.bus.stats()["subscriptions"] == 0
        assert handle.snapshot().dead_letters["stopped"] == 3
        assert letters(handle, "stopped") == [("stream:t.>", i) for i in (1, 2, 3)]
        assert handle.bus.stats()["dropped"] == 0  # as for the async stream
        assert handle.publish("t.a.b", "later") == 0


def test_an_exception_in_the_block_ends_the_subscription_too() -> None:
    with runtime.start_in_thread(empty()) as handle:
        with pytest.raises(LookupError):
            with handle.bus.stream("t") as events:
                handle.publish("t", 1)
                raise LookupError("the reader failed")
        assert handle.bus.stats()["subscriptions"] == 0
        assert letters(handle, "stopped") == [("stream:t", 1)]
        with pytest.raises(trio.EndOfChannel):
            events.receive(timeout=0)


def test_a_keyboard_interrupt_in_the_reader_thread_still_ends_the_subscription() -> None:
    with runtime.start_in_thread(empty()) as handle:

        def read() -> None:
            with handle.bus.stream("t.*") as events:
                handle.publish("t.x", "read")
                handle.publish("t.x", "unread")
                assert events.receive(timeout=WAIT).payload == "read"
                raise KeyboardInterrupt  # Ctrl-C, as the reader thread sees it

        reader, out = in_thread(read)
        joined(reader)
        assert isinstance(out.get("error"), KeyboardInterrupt)
        assert handle.bus.stats()["subscriptions"] == 0
        assert letters(handle, "stopped") == [("stream:t.*", "unread")]
        assert handle.publish("t.x", "later") == 0


def test_a_stop_ends_the_streams_after_their_readers_got_what_was_queued() -> None:
    with runtime.start_in_thread(empty()) as handle:
        ready = threading.Event()
        go = threading.Event()

        def read_late() -> list[Any]:
            with handle.bus.stream("t.*") as events:
                ready.set()
                assert go.wait(WAIT)
                return [event.payload for event in events]

        def wait_forever() -> list[Any]:
            with handle.bus.stream("nothing.comes") as events:
                return [event.payload for event in events]  # blocked until the stop

        late, late_out = in_thread(read_late)
        assert ready.wait(WAIT)
        blocked, blocked_out = in_thread(wait_forever)
        assert [handle.publish("t.x", i) for i in range(3)] == [1, 1, 1]
        handle.stop()
        blocked.join(WAIT)
        go.set()
        joined(blocked)
        joined(late)
    assert blocked_out == {"value": []}
    assert late_out == {"value": [0, 1, 2]}


def test_a_stream_opened_once_the_system_stopped_raises_runtime_closed() -> None:
    with runtime.start_in_thread(empty()) as handle:
        pass
    with pytest.raises(runtime.RuntimeClosed):
        with handle.bus.stream("t"):
            pytest.fail("the block must not run")


def test_events_left_when_the_loop_is_gone_are_discarded_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ready = threading.Event()
    go = threading.Event()
    with runtime.start_in_thread(empty()) as handle:

        def read() -> Any:
            with handle.bus.stream("t") as events:
                ready.set()
                assert go.wait(WAIT)
                return events.receive(timeout=WAIT).payload  # 1 read, 2 left

        reader, out = in_thread(read)
        assert ready.wait(WAIT)
        assert [handle.publish("t", i) for i in range(3)] == [1, 1, 1]
    # the system stopped and its loop ended: nobody can record what is left
    with caplog.at_level(logging.WARNING, logger="troupe"):
        go.set()
        joined(reader)
    assert out == {"value": 0}
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("2 events" in text and "'t'" in text for text in warnings), warnings


@pytest.mark.parametrize("capacity", [-1, 1.5, True, None, "10", float("inf")])
def test_a_bad_capacity_is_a_value_error_as_for_the_async_stream(capacity: Any) -> None:
    with runtime.start_in_thread(empty()) as handle:
        with pytest.raises(ValueError, match="capacity is a whole number of events >= 0"):
            with handle.bus.stream("t", capacity=capacity):
                pytest.fail("the block must not run")
        assert handle.bus.stats()["subscriptions"] == 0


def test_a_bad_pattern_is_a_value_error() -> None:
    with runtime.start_in_thread(empty()) as handle:
        with pytest.raises(ValueError):
            with handle.bus.stream("a..b"):
                pytest.fail("the block must not run")
        assert handle.bus.stats()["subscriptions"] == 0


class Quiet(Actor):
    pass


def test_a_catch_all_leaves_out_system_topics_that_system_patterns_name() -> None:
    with runtime.start_in_thread(empty()) as handle:
        with handle.bus.stream(">") as everything, handle.bus.stream("system.>") as runtime_own:
            handle.start_child("/app", child(Quiet, name="quiet"))  # system.actor.started
            handle.publish("user.x", "mine")
            first = everything.receive(timeout=WAIT)
            assert (first.topic, first.payload) == ("user.x", "mine")
            topics = []
            while "system.actor.started" not in topics:
                topics.append(runtime_own.receive(timeout=WAIT).topic)
            assert all(topic.startswith("system.") for topic in topics)
            with pytest.raises(TimeoutError):
                everything.receive(timeout=0.05)


def test_receive_with_a_timeout_raises_timeout_error_and_the_stream_goes_on() -> None:
    with runtime.start_in_thread(empty()) as handle:
        with handle.bus.stream("t") as events:
            with pytest.raises(TimeoutError):
                events.receive(timeout=0.05)
            with pytest.raises(TimeoutError):
                events.receive(timeout=0)
            with pytest.raises(ValueError):
                events.receive(timeout=-1)
            handle.publish("t", "next")
            assert events.receive(timeout=WAIT).payload == "next"
            handle.publish("t", "queued")
            assert events.receive().payload == "queued"  # no timeout: already there


def test_on_the_loop_thread_it_is_a_runtime_error_that_names_the_async_stream() -> None:
    with runtime.start_in_thread(empty()) as handle:
        seen: dict[str, Any] = {}
        done = threading.Event()

        def on_loop(event: Event) -> None:  # a plain callback runs on the loop thread
            try:
                with handle.bus.stream("t"):
                    seen["entered"] = True
            except BaseException as exc:
                seen["error"] = exc
            finally:
                done.set()

        handle.bus.subscribe("probe")(on_loop)
        handle.publish("probe")
        assert done.wait(WAIT)
        error = seen.get("error")
        assert isinstance(error, RuntimeError), seen
        assert "async with system.bus.stream(" in str(error)
        assert handle.bus.stats()["subscriptions"] == 1  # the callback's alone


def test_a_stream_read_on_a_bridge_worker_ends_before_the_bridge_stops() -> None:
    """Streams end once the user's tree has stopped, before ``/system`` (the bridge
    among it) stops: a reader in ``run_blocking`` returns what it read rather than
    holding the bridge's stop until it abandons the call (found by attack)."""
    entered = threading.Event()
    with runtime.start_in_thread(empty()) as handle:

        def read() -> list[Any]:
            with handle.bus.stream("t") as events:
                entered.set()
                return [event.payload for event in events]

        caller, out = in_thread(lambda: handle.run_blocking(read))
        assert entered.wait(WAIT)
        handle.publish("t", 1)
    caller.join(WAIT)
    assert out == {"value": [1]}, out


def test_receive_on_the_loop_thread_raises_runtime_error() -> None:
    """Only the loop can deliver the event such a receive would wait for: it would
    stall the loop (for ever without a timeout)."""
    with runtime.start_in_thread(empty()) as handle:
        seen: dict[str, Any] = {}
        done = threading.Event()
        with handle.bus.stream("t") as events:

            def on_loop(event: Event) -> None:  # a plain callback runs on the loop thread
                for attempt in (lambda: events.receive(timeout=1.0), lambda: events.receive(0)):
                    try:
                        attempt()
                    except BaseException as exc:
                        seen.setdefault("errors", []).append(exc)
                done.set()

            handle.bus.subscribe("probe")(on_loop)
            handle.publish("probe")
            assert done.wait(WAIT)
    errors = seen["errors"]
    assert len(errors) == 2 and all(isinstance(e, RuntimeError) for e in errors), errors
    assert "async with system.bus.stream" in str(errors[0])


def test_an_interruption_while_subscribing_still_ends_the_subscription(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ctrl-C landing as the loop answers `__enter__`'s call (the subscription is
    made, the thread never hears of it): the stream is ended all the same."""
    with runtime.start_in_thread(empty()) as handle:
        before = handle.bus.stats()["subscriptions"]
        real_call = handle._call
        calls = 0

        def interrupted_once(fn: Callable[..., Any], *args: Any) -> Any:
            nonlocal calls
            calls += 1
            result = real_call(fn, *args)
            if calls == 1:
                raise KeyboardInterrupt  # after the loop subscribed it
            return result

        monkeypatch.setattr(handle, "_call", interrupted_once)
        with pytest.raises(KeyboardInterrupt):
            with handle.bus.stream("t"):
                pytest.fail("the block is never entered")  # pragma: no cover
        monkeypatch.undo()
        assert calls == 2  # the subscribing call, then the one that ended it
        assert handle.bus.stats()["subscriptions"] == before
        assert handle.publish("t", 1) == 0

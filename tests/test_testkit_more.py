"""More of `runtime.testing`, after Akka TestKit: `fish_for_message`, `receive_while`,
`expect_message_all_of`, `within`, `expect_crashes`; and `ref.ask_future` for threads."""

from __future__ import annotations

import concurrent.futures
import logging
import threading
from typing import Any

import pytest
import trio
import trio.testing

import runtime
from runtime import Actor, child
from runtime.testing import ANY, TestProbe, crash, expect_crashes, within

WAIT = 10.0  # real-time bound for the thread tests


class Worker(Actor):
    """Echoes asks; "boom" raises ValueError, ("sleep", s) sleeps first."""

    def __init__(self, log: list[Any] | None = None) -> None:
        self.log = log

    async def receive(self, msg: Any) -> Any:
        if self.log is not None:
            self.log.append(msg)
        if msg == "boom":
            raise ValueError("boom")
        if msg == "key":
            raise KeyError("key")
        if isinstance(msg, (tuple, list)) and msg[0] == "sleep":  # a list once it crossed
            await trio.sleep(msg[1])
        return msg


# -- fish_for_message ------------------------------------------------------


async def test_fish_for_message_skips_until_the_predicate_is_true(
    system: runtime.System, probe: TestProbe, autojump_clock: trio.testing.MockClock
) -> None:
    for msg in ["tick", "tick", ("done", 3), "after"]:
        probe.ref.tell(msg)
    caught = await probe.fish_for_message(lambda m: isinstance(m, tuple) and m[0] == "done")
    assert caught == ("done", 3)
    assert probe.skipped == ["tick", "tick"]  # consumed: not seen again
    await probe.expect_message("after")
    # a value (ANY inside) or a type works as in expect_message
    probe.ref.tell(1)
    probe.ref.tell(("done", 4))
    assert await probe.fish_for_message(("done", ANY)) == ("done", 4)
    assert probe.skipped == [1]


async def test_fish_for_message_fails_saying_what_it_skipped(
    system: runtime.System, probe: TestProbe, autojump_clock: trio.testing.MockClock
) -> None:
    probe.ref.tell("a")
    probe.ref.tell("b")

    def is_done(msg: Any) -> bool:
        return msg == "done"

    with pytest.raises(AssertionError) as failure:
        await probe.fish_for_message(is_done, timeout=2.0)
    text = str(failure.value)
    assert "fished for a message for which is_done(msg) is true for 2.0s" in text
    assert "caught nothing; skipped ['a', 'b']" in text
    assert probe.skipped == ["a", "b"]
    with pytest.raises(AssertionError, match="fished for a int"):
        await probe.fish_for_message(int, timeout=1.0)


async def test_fish_for_message_lets_a_predicates_error_through(
    system: runtime.System, probe: TestProbe, autojump_clock: trio.testing.MockClock
) -> None:
    probe.ref.tell("x")
    with pytest.raises(ZeroDivisionError):
        await probe.fish_for_message(lambda m: 1 / 0)


# -- receive_while ---------------------------------------------------------


async def test_receive_while_keeps_the_first_message_that_does_not_match(
    system: runtime.System, probe: TestProbe, autojump_clock: trio.testing.MockClock
) -> None:
    for msg in [1, 2, 3, "stop", 4]:
        probe.ref.tell(msg)
    start = trio.current_time()
    assert await probe.receive_while(int) == [1, 2, 3]
    assert trio.current_time() == start  # ended by "stop", not by waiting
    with pytest.raises(AssertionError, match="expected no message, got 'stop'"):
        await probe.expect_no_message()
    await probe.expect_message("stop")  # kept, as in Akka
    await probe.expect_message(4)


async def test_receive_while_is_bounded_by_count_idle_and_timeout_without_failing(
    system: runtime.System, probe: TestProbe, autojump_clock: trio.testing.MockClock
) -> None:
    for i in range(5):
        probe.ref.tell(i)
    assert await probe.receive_while(ANY, max_messages=2) == [0, 1]
    start = trio.current_time()
    assert await probe.receive_while(lambda m: m < 10, idle=0.5) == [2, 3, 4]
    assert trio.current_time() - start == pytest.approx(0.5)  # idle for 0.5 s: done

    async def drip() -> None:
        for i in range(100):
            probe.ref.tell(i)
            await trio.sleep(0.3)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(drip)
        start = trio.current_time()
        got = await probe.receive_while(int, timeout=2.0, idle=1.0)
        assert trio.current_time() - start == pytest.approx(2.0)  # the timeout: no error
        assert got == list(range(7))  # sent at 0, 0.3, ..., 1.8 s
        nursery.cancel_scope.cancel()
    assert await probe.receive_while(int, timeout=1.0) == []
    with pytest.raises(ValueError, match="max_messages"):
        await probe.receive_while(int, max_messages=-1)


# -- expect_message_all_of -------------------------------------------------


async def test_expect_message_all_of_in_any_order(
    system: runtime.System, probe: TestProbe, autojump_clock: trio.testing.MockClock
) -> None:
    for msg in [("b", 2), "a", 3.5, "after"]:
        probe.ref.tell(msg)
    # ANY inside a value, a type, a predicate: one message each
    got = await probe.expect_message_all_of("a", ("b", ANY), float)
    assert got == [("b", 2), "a", 3.5]  # in the order they came
    await probe.expect_message("after")  # not consumed
    # the assignment is a real matching: "x" fits both str and "x"; 1 only ANY
    for msg in ["x", "y", 1]:
        probe.ref.tell(msg)
    assert await probe.expect_message_all_of(str, ANY, "x") == ["x", "y", 1]
    assert await probe.expect_message_all_of() == []


async def test_expect_message_all_of_fails_at_once_on_a_message_that_fits_none(
    system: runtime.System, probe: TestProbe, autojump_clock: trio.testing.MockClock
) -> None:
    for msg in ["a", "c", "b"]:
        probe.ref.tell(msg)
    start = trio.current_time()
    with pytest.raises(AssertionError) as failure:
        await probe.expect_message_all_of("a", "b")
    assert trio.current_time() == start
    assert str(failure.value).endswith(
        "expected all of ['a', 'b'] in any order, got 'c' after ['a']: "
        "it matches none of those still expected"
    )
    probe.ref.tell("a")
    with pytest.raises(AssertionError) as failure:
        await probe.expect_message_all_of("b", "b", timeout=2.0)  # a duplicate needs two
    assert str(failure.value).endswith(
        "expected all of ['b', 'b'] in any order, got 'a' after ['b']: "
        "it matches none of those still expected"
    )
    probe.ref.tell("z")
    with pytest.raises(AssertionError, match="got 'z' first: it matches none"):
        await probe.expect_message_all_of("a")


async def test_expect_message_all_of_fails_at_the_timeout_saying_what_is_missing(
    system: runtime.System, probe: TestProbe, autojump_clock: trio.testing.MockClock
) -> None:
    probe.ref.tell(2)
    with pytest.raises(AssertionError) as failure:
        await probe.expect_message_all_of(1, 2, str, timeout=2.0)
    assert str(failure.value).endswith(
        "expected all of [1, 2, a str] within 2.0s, got [2]; missing [1, a str]"
    )


# -- within ----------------------------------------------------------------


async def test_within_passes_a_block_that_takes_between_min_and_max(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with within(2.0, min=1.0) as timing:
        await trio.sleep(1.5)
    assert timing.elapsed == pytest.approx(1.5)
    async with within(1.0):  # also as an async context manager
        await trio.sleep(0.5)


async def test_within_cancels_a_block_at_max_and_fails(
    system: runtime.System, probe: TestProbe, autojump_clock: trio.testing.MockClock
) -> None:
    start = trio.current_time()
    with pytest.raises(AssertionError, match=r"did not finish within 1.0s"):
        async with within(1.0):
            await probe.expect_message(timeout=3.0)  # its own timeout is later
    assert trio.current_time() - start == pytest.approx(1.0)


async def test_within_fails_a_block_quicker_than_min_and_lets_errors_through(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with pytest.raises(AssertionError, match=r"took 0.25s, expected at least 1.0s"):
        with within(2.0, min=1.0):
            await trio.sleep(0.25)
    with pytest.raises(KeyError):
        with within(1.0, min=0.5):
            raise KeyError("mine")
    with pytest.raises(ValueError, match="min is above max"):
        within(1.0, min=2.0)


def test_within_fails_a_block_that_overran_without_a_checkpoint() -> None:
    clock = trio.testing.MockClock()

    async def main() -> None:
        with pytest.raises(AssertionError, match=r"took 5s, more than 1.0s"):
            with within(1.0):
                clock.jump(5)  # no checkpoint: nothing could cancel it

    trio.run(main, clock=clock)


# -- expect_crashes --------------------------------------------------------


async def test_expect_crashes_waits_for_the_crash_and_keeps_it_out_of_the_log(
    system: runtime.System, autojump_clock: trio.testing.MockClock, caplog: Any
) -> None:
    ref = await system.start_child("/test", child(Worker, name="w"))
    with caplog.at_level(logging.ERROR, logger="troupe"):
        async with expect_crashes(ValueError, path="/test/w", match="on purpose") as seen:
            crash(ref, ValueError("on purpose"))  # queued: it comes after the block's end
        assert [(c.path, c.during, type(c.error)) for c in seen.matched] == [
            ("/test/w", "crashed", ValueError)
        ]
        assert not [r for r in caplog.records if "on purpose" in r.getMessage()]
        # a handler's error (an ask gets ActorCrashed), twice, any ValueError
        async with expect_crashes(ValueError, count=2):
            for _ in range(2):
                with pytest.raises(runtime.ActorCrashed):
                    await ref.ask("boom")
        assert await ref.ask("fine") == "fine"
        crash(ref, KeyError("logged as usual"))
        await trio.sleep(0.1)
        assert [r for r in caplog.records if "logged as usual" in r.getMessage()]


async def test_expect_crashes_fails_when_the_crash_does_not_come(
    system: runtime.System, autojump_clock: trio.testing.MockClock
) -> None:
    await system.start_child("/test", child(Worker, name="w"))
    start = trio.current_time()
    with pytest.raises(AssertionError) as failure:
        async with expect_crashes(ValueError, path="/test/w", timeout=2.0):
            pass
    assert trio.current_time() - start == pytest.approx(2.0, abs=0.02)
    assert str(failure.value) == (
        "expected 1 crash with ValueError at /test/w within 2.0s; the runtime logged []"
    )


async def test_expect_crashes_fails_on_other_crashes_and_on_too_many(
    system: runtime.System, autojump_clock: trio.testing.MockClock
) -> None:
    ref = await system.start_child("/test", child(Worker, name="w"))
    with pytest.raises(AssertionError) as failure:
        async with expect_crashes(ValueError):
            crash(ref, KeyError("other"))
            crash(ref, ValueError("wanted"))
            await trio.sleep(0.5)
    assert str(failure.value) == (
        "expected 1 crash with ValueError and nothing else; the runtime logged "
        "[\"/test/w crashed: KeyError('other')\", \"/test/w crashed: ValueError('wanted')\"]"
    )
    with pytest.raises(AssertionError, match=r"expected 1 crash with ValueError but 2 matched"):
        async with expect_crashes(ValueError):
            crash(ref, ValueError("one"))
            crash(ref, ValueError("two"))
            await trio.sleep(0.5)
    with pytest.raises(AssertionError, match=r"expected no crash; the runtime logged \[\"/test/w"):
        async with expect_crashes(count=0):  # no crash at all in this block
            with pytest.raises(runtime.ActorCrashed):
                await ref.ask("key")
    async with expect_crashes(count=0):
        assert await ref.ask("fine") == "fine"


async def test_expect_crashes_checks_nothing_when_the_block_raises(
    system: runtime.System, autojump_clock: trio.testing.MockClock
) -> None:
    start = trio.current_time()
    with pytest.raises(KeyError):
        async with expect_crashes(ValueError):
            raise KeyError("mine")
    assert trio.current_time() == start
    assert not any(isinstance(f, expect_crashes) for f in logging.getLogger("troupe").filters)


async def test_expect_crashes_sees_crashes_on_a_silenced_logger(
    system: runtime.System, autojump_clock: trio.testing.MockClock
) -> None:
    logger = logging.getLogger("troupe")
    old = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        ref = await system.start_child("/test", child(Worker, name="w"))
        async with expect_crashes(ValueError):
            crash(ref, ValueError())
        assert logger.level == logging.CRITICAL
    finally:
        logger.setLevel(old)


# -- ask_future ------------------------------------------------------------


async def test_ask_future_lets_a_thread_wait_for_several_asks_together(
    system: runtime.System,
) -> None:
    log: list[Any] = []
    ref = await system.start_child("/test", child(Worker, name="w", args=(log,)))

    def in_thread() -> list[Any]:
        ref.tell("first")  # a thread's messages keep their order, asks too
        futures = [ref.ask_future(i) for i in range(200)]
        ref.tell("last")
        _, pending = concurrent.futures.wait(futures, timeout=WAIT)
        assert not pending
        slow = ref.ask_future(("sleep", 0.3))
        quick = ref.ask_future("quick")  # queued behind the slow one
        first = concurrent.futures.wait([slow, quick], timeout=WAIT, return_when="FIRST_COMPLETED")
        assert first.done == {slow, quick} or first.done == {slow}
        assert quick.result(WAIT) == "quick"
        return [f.result() for f in futures]

    with trio.fail_after(WAIT):
        assert await trio.to_thread.run_sync(in_thread) == list(range(200))
    assert log[0] == "first" and log[1:201] == list(range(200)) and log[201] == "last"


async def test_ask_future_fails_with_what_ask_blocking_raises(system: runtime.System) -> None:
    ref = await system.start_child("/test", child(Worker, name="w"))

    def in_thread() -> None:
        crashed = ref.ask_future("boom")
        timed_out = ref.ask_future(("sleep", 1.0), timeout=0.1)
        error = crashed.exception(WAIT)
        assert isinstance(error, runtime.ActorCrashed)
        assert isinstance(error.__cause__, ValueError)
        error = timed_out.exception(WAIT)
        assert isinstance(error, runtime.AskTimeout)
        assert str(error) == "no reply to tuple from /test/w within 0.1s"
        with pytest.raises(ValueError):
            ref.ask_future("x", timeout=-1)  # arguments are checked at once

    with trio.fail_after(WAIT):
        async with expect_crashes(ValueError):
            await trio.to_thread.run_sync(in_thread)


async def test_ask_future_a_late_reply_is_dead_lettered_as_timeout(
    system: runtime.System,
) -> None:
    ref = await system.start_child("/test", child(Worker, name="w"))

    def in_thread() -> tuple[concurrent.futures.Future[Any], concurrent.futures.Future[Any]]:
        late = ref.ask_future(("sleep", 0.2), timeout=0.05)
        assert isinstance(late.exception(WAIT), runtime.AskTimeout)
        given_up = ref.ask_future(("sleep", 0.2))
        assert given_up.cancel()  # its owner gives up: a reply is late too
        return late, given_up

    with trio.fail_after(WAIT):
        _, given_up = await trio.to_thread.run_sync(in_thread)
        assert await ref.ask("sync", timeout=WAIT) == "sync"  # both replies came meanwhile
        assert system.snapshot().dead_letters.get("timeout") == 2
    assert given_up.cancelled()


async def test_ask_future_on_the_trio_thread_says_to_await_ask(system: runtime.System) -> None:
    ref = await system.start_child("/test", child(Worker, name="w"))
    with pytest.raises(RuntimeError, match=r"await ref.ask\(msg\)"):
        ref.ask_future("x")


def test_ask_future_after_the_system_stopped_and_while_it_stops() -> None:
    tree = runtime.Supervisor("app", children=[child(Worker, name="w", shutdown=0.2)])
    with runtime.start_in_thread(tree) as system:
        ref = system.ref("/app/w")
        pending = ref.ask_future(("sleep", 60.0), timeout=None)
        waiting = ref.ask_future("after the sleep", timeout=None)
        assert ref.ask_future(("sleep", 0), timeout=None) is not pending
    # the sleep was cut short by the stop; what waited behind it was never answered:
    # no timeout, yet both futures are settled
    assert isinstance(pending.exception(0), runtime.RuntimeClosed)
    assert isinstance(waiting.exception(0), runtime.RuntimeClosed)
    assert isinstance(ref.ask_future("x").exception(0), runtime.RuntimeClosed)


def test_ask_future_on_a_full_block_mailbox_fails_with_ask_timeout() -> None:
    tree = runtime.Supervisor(
        "app",
        children=[child(Worker, name="w", mailbox=runtime.Mailbox(capacity=2, overflow="block"))],
    )
    with runtime.start_in_thread(tree) as system:
        ref = system.ref("/app/w")
        busy = ref.ask_future(("sleep", 1.0), timeout=WAIT)
        fill = [ref.ask_future(i, timeout=WAIT) for i in range(2)]
        full = ref.ask_future("no room", timeout=0.1)
        error = full.exception(WAIT)
        assert isinstance(error, runtime.AskTimeout)
        assert "mailbox stayed full for 0.1s; str was not sent" in str(error)
        assert busy.result(WAIT) == ("sleep", 1.0)
        assert [f.result(WAIT) for f in fill] == [0, 1]


def test_ask_future_from_many_threads_at_once() -> None:
    tree = runtime.Supervisor("app", children=[child(Worker, name="w")])
    results: dict[int, list[Any]] = {}
    with runtime.start_in_thread(tree) as system:
        ref = system.ref("/app/w")

        def work(i: int) -> None:
            futures = [ref.ask_future((i, k), timeout=WAIT) for k in range(300)]
            results[i] = [f.result(WAIT) for f in futures]

        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT)
    assert results == {i: [(i, k) for k in range(300)] for i in range(4)}


def test_ask_future_to_a_remote_actor(nats_server: Any) -> None:
    cluster = f"fut{threading.get_ident() % 10_000}"
    options = {"cluster": nats_server.url, "cluster_name": cluster, "heartbeat": 0.2}
    tree = runtime.Supervisor("app", children=[child(Worker, name="w")])
    with runtime.start_in_thread(tree, node=f"{cluster}-b", **options):
        with runtime.start_in_thread(tree, node=f"{cluster}-a", **options) as a:
            remote = a.ref(f"troupe://{cluster}-b/app/w")
            for _ in range(200):  # until b is seen up
                error = remote.ask_future("hello").exception(WAIT)
                if not isinstance(error, runtime.NodeDown):
                    assert error is None
                    break
                threading.Event().wait(0.05)
            else:
                raise AssertionError("b never came up")
            futures = [remote.ask_future(i) for i in range(50)]
            concurrent.futures.wait(futures, timeout=WAIT)
            assert [f.result() for f in futures] == list(range(50))
            crashed = remote.ask_future("boom").exception(WAIT)
            assert isinstance(crashed, runtime.ActorCrashed)
            late = remote.ask_future(("sleep", 0.5), timeout=0.1).exception(WAIT)
            assert isinstance(late, runtime.AskTimeout)
            with pytest.raises(runtime.NotSerializable):
                remote.ask_future({1}).result(WAIT)
        assert isinstance(remote.ask_future("x").exception(WAIT), runtime.RuntimeClosed)


async def test_ask_future_to_a_remote_ref_on_the_trio_thread_says_to_await_ask(
    nats_server: Any,
) -> None:
    cluster = f"futl{threading.get_ident() % 10_000}"
    tree = runtime.Supervisor("app", children=[child(Worker, name="w")])
    async with runtime.open_system(
        tree, node=f"{cluster}-a", cluster=nats_server.url, cluster_name=cluster
    ) as a:
        remote = a.ref(f"troupe://{cluster}-b/app/w")
        with pytest.raises(RuntimeError, match=r"await ref.ask\(msg\)"):
            remote.ask_future("x")


@pytest.mark.parametrize("error", [1, "ValueError", (ValueError, 2), ()])
def test_expect_crashes_refuses_what_is_not_an_exception_type_at_once(error: Any) -> None:
    # A count passed where the type goes used to fail later, inside the logging
    # filter in the middle of a supervisor's crash handling.
    with pytest.raises(TypeError, match="exception type"):
        expect_crashes(error)

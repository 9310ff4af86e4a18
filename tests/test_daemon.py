"""`actors.Daemon`: periodic ticks through the actor's own mailbox, on a drift-free schedule.

All time here is trio's virtual time (`autojump_clock`): every assertion on
when a tick ran is exact.
"""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction
from typing import Any, ClassVar

import pytest
import trio
import trio.testing

import runtime
from actors import Daemon
from runtime import RestartIntensityExceeded, Supervisor, child

WAIT = 1_000.0  # virtual seconds: a bound that only a hang reaches


def app(*children: Any, **kw: Any) -> Supervisor:
    return Supervisor("app", children=list(children), **kw)


def stats(system: runtime.System, path: str) -> dict[str, Any]:
    return system.snapshot().find(path).stats


def assert_dead_letters(system: runtime.System, **expected: int) -> None:
    """The dead-letter counts are `expected` (reason=count), every other reason 0."""
    counts = system.snapshot().dead_letters
    assert counts == {reason: expected.get(reason, 0) for reason in counts}
    assert sum(counts.values()) == len(system.dead_letters.recent(limit=1000))


class Clocked(Daemon):
    """Records the trio time of each tick; a tick may take `work` seconds."""

    interval = 1.0

    def __init__(self, log: list[float], work: dict[int, float] | None = None) -> None:
        self.log = log
        self.work = work or {}

    async def tick(self) -> None:
        n = len(self.log)
        self.log.append(trio.current_time())
        await trio.sleep(self.work.get(n, 0.0))


async def test_ticks_follow_a_drift_free_schedule(autojump_clock: trio.testing.MockClock) -> None:
    log: list[float] = []
    with trio.fail_after(WAIT):
        async with runtime.open_system(app(child(Clocked, name="d", args=(log,)))) as system:
            await trio.sleep(10.5)
            start = log[0]
            assert log == [start + n * 1.0 for n in range(11)]
            s = stats(system, "/app/d")
            assert s["ticks"] == 11
            assert s["lateness"] == 0.0
            assert s["slow_ticks"] == 0


class Busy(Daemon):
    """Ticks take 0.4 s of the 1 s interval: the schedule still does not drift."""

    interval = 1.0

    def __init__(self, log: list[float]) -> None:
        self.log = log

    async def tick(self) -> None:
        self.log.append(trio.current_time())
        await trio.sleep(0.4)


async def test_tick_duration_does_not_shift_the_schedule(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[float] = []
    with trio.fail_after(WAIT):
        async with runtime.open_system(app(child(Busy, name="d", args=(log,)))) as _system:
            await trio.sleep(20.5)
    start = log[0]
    assert log == [start + n for n in range(21)]  # not start + n * 1.4


async def test_a_slow_tick_delays_the_next_skips_missed_ones_and_is_counted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[float] = []
    work = {2: 2.5}  # the third tick (due at start + 2) runs until start + 4.5
    with trio.fail_after(WAIT):
        tree = app(child(Clocked, name="d", args=(log, work)))
        async with runtime.open_system(tree) as system:
            await trio.sleep(7.5)
            start = log[0]
            # no overlap: nothing ran during the slow tick; ticks due at +3 and +4 were
            # skipped, not queued; the phase is kept (+5, not +5.5)
            assert [t - start for t in log] == [0.0, 1.0, 2.0, 5.0, 6.0, 7.0]
            s = stats(system, "/app/d")
            assert s["slow_ticks"] == 1
            assert s["ticks"] == 6
            assert s["last_tick_duration"] == 0.0


class Worker(Daemon):
    """Handles messages that take a while; records ticks and message handling."""

    interval = 1.0

    def __init__(self, log: list[tuple[str, float]]) -> None:
        self.log = log
        self.in_receive = False

    async def tick(self) -> None:
        assert not self.in_receive, "a tick ran while a message was being handled"
        self.log.append(("tick", trio.current_time()))

    async def receive(self, msg: Any) -> Any:
        match msg:
            case ("work", seconds):
                self.in_receive = True
                self.log.append(("work", trio.current_time()))
                await trio.sleep(seconds)
                self.in_receive = False
                return "worked"
            case "ping":
                return "pong"
            case _:
                return runtime.UNHANDLED


async def test_ticks_run_between_messages_and_a_subclass_handles_its_own(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[tuple[str, float]] = []
    with trio.fail_after(WAIT):
        async with runtime.open_system(app(child(Worker, name="d", args=(log,)))) as system:
            ref = system.ref("/app/d")
            start = trio.current_time()
            await trio.sleep(0.5)
            assert await ref.ask(("work", 3.0), timeout=None) == "worked"  # +0.5 .. +3.5
            assert await ref.ask("ping") == "pong"
            await trio.sleep(2.0)  # until +5.5
            with pytest.raises(runtime.UnhandledMessage):
                await ref.ask("unknown")
            s = stats(system, "/app/d")
            info = system.snapshot().find("/app/d")
    rel = [(what, t - start) for what, t in log]
    # the tick due at +1 waited behind the message and ran at +3.5 (2.5 late);
    # those due at +2 and +3 were skipped; the schedule went on at +4, +5
    assert rel == [
        ("tick", 0.0),
        ("work", 0.5),
        ("tick", 3.5),
        ("tick", 4.0),
        ("tick", 5.0),
    ]
    assert s["ticks"] == 4
    assert s["lateness"] == 0.0  # of the last tick
    assert info.restarts == 0 and info.failed == 0


async def test_lateness_of_a_tick_held_up_by_a_message_is_reported(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[tuple[str, float]] = []
    with trio.fail_after(WAIT):
        async with runtime.open_system(app(child(Worker, name="d", args=(log,)))) as system:
            ref = system.ref("/app/d")
            await trio.sleep(0.25)
            ref.tell(("work", 2.5))  # +0.25 .. +2.75; the tick due at +1 waits
            await trio.sleep(2.6)  # +2.85: the late tick has run
            s = stats(system, "/app/d")
            assert s["ticks"] == 2
            assert s["lateness"] == pytest.approx(1.75)
            assert s["slow_ticks"] == 0  # late is not slow
            assert s["healthy"] is True


class Flaky(Daemon):
    """Its third tick of the first incarnation raises."""

    interval = 1.0

    def __init__(self, log: list[tuple[int, float]], starts: list[float]) -> None:
        self.log = log
        self.starts = starts

    async def on_start(self) -> None:
        self.starts.append(trio.current_time())
        await super().on_start()

    async def tick(self) -> None:
        self.log.append((len(self.starts), trio.current_time()))
        if len(self.starts) == 1 and self.ticks == 2:
            raise ConnectionError("tick failed")


async def test_a_failing_tick_crashes_the_incarnation_and_the_supervisor_restarts_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[tuple[int, float]] = []
    starts: list[float] = []
    with trio.fail_after(WAIT):
        tree = app(child(Flaky, name="d", args=(log, starts)))
        async with runtime.open_system(tree) as system:
            await trio.sleep(5.5)
            info = system.snapshot().find("/app/d")
            assert info.restarts == 1
            assert info.state == "running"
            assert info.last_error is not None
            assert info.last_error.type == "ConnectionError"
            assert info.stats["ticks"] >= 3  # the new incarnation ticks on
            # the crash is in `failed`, `last_error` and the restart, not in dead letters:
            # the tick is the daemon's own machinery, not a message anyone sent
            assert_dead_letters(system)
            assert info.failed == 1 and info.dead_lettered == 0
    assert len(starts) == 2
    first = [t for inc, t in log if inc == 1]
    second = [t for inc, t in log if inc == 2]
    assert len(first) == 3  # the third one raised
    assert second[0] == starts[1]  # the new incarnation ticks at its start
    assert [t - second[0] for t in second] == [float(n) for n in range(len(second))]


class Crashy(Daemon):
    """Handles ``("work", seconds)``; ``"boom"`` crashes it; its ticks are instant."""

    interval = 1.0

    def __init__(self, log: list[float]) -> None:
        self.log = log

    async def tick(self) -> None:
        self.log.append(trio.current_time())

    async def receive(self, msg: Any) -> Any:
        match msg:
            case ("work", seconds):
                await trio.sleep(seconds)
                return "worked"
            case "boom":
                raise ConnectionError("boom")
            case _:
                return runtime.UNHANDLED


async def test_a_crash_with_a_tick_queued_leaves_no_dead_letter_for_the_tick(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[float] = []
    with trio.fail_after(WAIT):
        tree = app(child(Crashy, name="d", args=(log,)), max_restarts=100, within=60.0)
        async with runtime.open_system(tree) as system:
            ref = system.ref("/app/d")
            for n in range(3):
                # an incarnation ticks at its start (t); at t+0.5 a message takes one
                # second, "boom" waits behind it, and the tick due at t+1 behind "boom"
                start = log[-1]
                await trio.sleep_until(start + 0.5)
                ref.tell(("work", 1.0))
                ref.tell("boom")
                await trio.sleep_until(start + 1.75)  # crashed at t+1.5, restarted
                info = system.snapshot().find("/app/d")
                assert info.restarts == n + 1 and info.state == "running"
                assert log[-1] == start + 1.5  # the new incarnation's own first tick
            # each crash dead-lettered its own message, and only that: the tick queued
            # behind it (asked by an incarnation that is gone) left no `timeout`
            assert_dead_letters(system, crashed=3)
            assert [d.message for d in system.dead_letters.recent()] == ["boom"] * 3
            assert system.snapshot().find("/app/d").dead_lettered == 3


class Slow(Daemon):
    """Its ticks take ten seconds."""

    interval = 1.0

    async def tick(self) -> None:
        await trio.sleep(10.0)


async def test_stopping_during_a_long_tick_dead_letters_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(WAIT):
        tree = app(child(Slow, name="d", shutdown=1.0), child(Slow, name="e", shutdown=1.0))
        async with runtime.open_system(tree) as system:
            await trio.sleep(0.5)  # both are in their first tick
            await system.terminate_child("/app/d")  # the tick is cancelled after 1 s
            assert system.which_children("/app")[0].name == "e"
            assert_dead_letters(system)
        # the system's own stop cancels e's tick the same way
        assert_dead_letters(system)


async def test_a_tick_queued_when_the_daemon_stops_is_not_dead_lettered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[float] = []
    with trio.fail_after(WAIT):
        async with runtime.open_system(app(child(Crashy, name="d", args=(log,)))) as system:
            ref = system.ref("/app/d")
            await trio.sleep(0.5)
            ref.tell(("work", 2.0))  # until +2.5; the tick due at +1 waits behind it
            await trio.sleep(1.0)
            await system.terminate_child("/app/d")  # after the message in hand
            assert log == [0.0]
            assert_dead_letters(system)


@pytest.mark.parametrize("overflow", ["drop_new", "fail"])
async def test_a_tick_that_finds_the_mailbox_full_is_skipped_quietly(
    autojump_clock: trio.testing.MockClock, overflow: Any
) -> None:
    class Small(Crashy):
        mailbox = runtime.Mailbox(capacity=1, overflow=overflow)

    log: list[float] = []
    with trio.fail_after(WAIT):
        async with runtime.open_system(app(child(Small, name="d", args=(log,)))) as system:
            ref = system.ref("/app/d")
            start = log[0]
            await trio.sleep(0.5)
            ref.tell(("work", 2.0))  # in hand until +2.5
            await trio.sleep(0.25)
            ref.tell(("work", 0.0))  # and the mailbox is full
            await trio.sleep(3.75)
            # the ticks due at +1 and +2 found no room: skipped, like ticks missed
            # while one overran; the schedule goes on at +3
            assert [t - start for t in log] == [0.0, 3.0, 4.0]
            info = system.snapshot().find("/app/d")
            assert info.restarts == 0 and info.failed == 0
            assert_dead_letters(system)


class Late(Daemon):
    interval = 2.0
    tick_at_start = False

    def __init__(self, log: list[float]) -> None:
        self.log = log

    async def tick(self) -> None:
        self.log.append(trio.current_time())


async def test_tick_at_start_false_waits_one_interval(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[float] = []
    with trio.fail_after(WAIT):
        async with runtime.open_system(app(child(Late, name="d", args=(log,)))) as system:
            start = trio.current_time()
            await trio.sleep(1.9)
            assert log == []
            s = stats(system, "/app/d")
            assert s["ticks"] == 0 and s["last_tick"] is None and s["healthy"] is True
            await trio.sleep(4.2)
    assert [t - start for t in log] == [2.0, 4.0, 6.0]


class Stuck(Daemon):
    """Its second tick waits forever."""

    interval = 1.0

    async def tick(self) -> None:
        if self.ticks == 1:
            await trio.sleep_forever()


async def test_snapshot_stats_and_a_stuck_daemon_is_unhealthy(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(WAIT):
        async with runtime.open_system(app(child(Stuck, name="d", shutdown=1.0))) as system:
            await trio.sleep(0.5)
            s = stats(system, "/app/d")
            for key in ("interval", "ticks", "slow_ticks", "last_tick", "lateness", "healthy"):
                assert key in s, key
            assert s["interval"] == 1.0
            assert s["ticks"] == 1
            assert isinstance(s["last_tick"], float)
            assert s["healthy"] is True
            await trio.sleep(30.0)  # the second tick has hung for ~29 intervals
            s = stats(system, "/app/d")
            assert s["ticks"] == 1
            assert s["healthy"] is False


BAD_INTERVALS = [0, 0.0, -0.5, -1, math.nan, math.inf, -math.inf, True, "1", None, 10**400]


def bad_daemon(value: Any, *, per_instance: bool) -> type[Daemon]:
    """A Daemon whose `interval` is `value`, set on the class or in `__init__`."""

    class Bad(Daemon):
        def __init__(self, log: list[float]) -> None:
            self.log = log
            if per_instance:
                self.interval = value

        async def tick(self) -> None:
            self.log.append(trio.current_time())

    if not per_instance:
        Bad.interval = value  # set after the class statement, as a plain class attribute
    return Bad


@pytest.mark.parametrize("per_instance", [False, True], ids=["class", "instance"])
@pytest.mark.parametrize("bad", BAD_INTERVALS, ids=lambda v: repr(v)[:12])
async def test_a_bad_interval_fails_the_start_with_a_value_error_naming_it(
    autojump_clock: trio.testing.MockClock, bad: Any, per_instance: bool
) -> None:
    log: list[float] = []
    with trio.fail_after(WAIT):
        async with runtime.open_system(app()) as system:
            spec = child(bad_daemon(bad, per_instance=per_instance), name="d", args=(log,))
            with pytest.raises(ValueError, match=r"Bad\.interval must be a positive, finite"):
                await system.start_child("/app", spec)
            await trio.sleep(5.0)
            assert system.which_children("/app") == []  # a dynamic child that never started
    assert log == []  # not a single tick, let alone a busy loop


@pytest.mark.parametrize("tiny", [5e-324, 1e-300, 1e-7])
async def test_an_interval_too_short_for_the_clock_is_refused_not_busy_looped(
    autojump_clock: trio.testing.MockClock, tiny: float
) -> None:
    log: list[float] = []
    with trio.fail_after(WAIT):
        async with runtime.open_system(app()) as system:
            spec = child(bad_daemon(tiny, per_instance=True), name="d", args=(log,))
            with pytest.raises(ValueError, match=r"Bad\.interval must be at least 1e-06"):
                await system.start_child("/app", spec)
    assert log == []


def test_a_bad_class_interval_can_be_defined_and_is_refused_only_when_started() -> None:
    # A base class may leave `interval` to its subclasses or to `__init__`: the check
    # is made where it matters, when an incarnation starts.
    class Configured(Daemon):
        interval: ClassVar[Any] = None

        def __init__(self, seconds: float) -> None:
            self.interval = seconds

        async def tick(self) -> None: ...

    assert Configured.interval is None


@pytest.mark.parametrize("good", [1, 0.25, 1e-3, Fraction(1, 4), Decimal("0.5"), 50])
async def test_a_good_interval_of_any_real_type_is_accepted(
    autojump_clock: trio.testing.MockClock, good: Any
) -> None:
    log: list[float] = []
    with trio.fail_after(WAIT):
        async with runtime.open_system(app()) as system:
            spec = child(bad_daemon(good, per_instance=True), name="d", args=(log,))
            await system.start_child("/app", spec)
            await trio.sleep(float(good) * 2.5)
            assert stats(system, "/app/d")["interval"] == float(good)  # JSON-ready
    start = log[0]
    assert log == [start, start + float(good), start + 2 * float(good)]


async def test_a_bad_static_interval_fails_the_system_start(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[float] = []
    with trio.fail_after(WAIT), pytest.raises(ValueError, match=r"interval .*got 0"):
        tree = app(child(bad_daemon(0, per_instance=True), name="d", args=(log,)))
        async with runtime.open_system(tree):
            await trio.sleep_forever()  # pragma: no cover - the start fails
    assert log == []


class Reconfigured(Daemon):
    """Takes its interval from `config` at every start: valid at first, 0 later."""

    def __init__(self, config: list[float], starts: list[float]) -> None:
        self.interval = config[0]
        self.starts = starts

    async def on_start(self) -> None:
        self.starts.append(trio.current_time())
        await super().on_start()

    async def tick(self) -> None:
        pass

    async def receive(self, msg: Any) -> Any:
        raise ConnectionError(msg)


async def test_a_restart_that_finds_a_bad_interval_is_a_crash_the_supervisor_counts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A failing start is a crash like any other: the supervisor restarts (with its
    # backoff) and gives up past its intensity; it never becomes a tick loop.
    config = [1.0]
    starts: list[float] = []
    tree = app(
        child(Reconfigured, name="d", args=(config, starts)),
        max_restarts=3,
        within=60.0,
        backoff=runtime.Backoff(min=1.0, max=1.0, jitter=0),
    )
    with trio.fail_after(WAIT), pytest.raises(RestartIntensityExceeded) as gave_up:
        async with runtime.open_system(tree) as system:
            await trio.sleep(2.5)
            assert stats(system, "/app/d")["ticks"] == 3
            config[0] = 0.0
            system.ref("/app/d").tell("fail")
            await trio.sleep_forever()  # until /app gives up
    # one good start, then the crash and three restarts that failed to start
    assert len(starts) == 4
    assert [t - starts[1] for t in starts[1:]] == [0.0, 1.0, 2.0]  # the backoff, not a loop
    cause = gave_up.value.__cause__
    assert isinstance(cause, ValueError) and "Reconfigured.interval" in str(cause)


async def test_a_daemon_without_tick_fails_on_its_first_tick(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class NoTick(Daemon):
        interval = 1.0

    with trio.fail_after(WAIT):
        tree = app(child(NoTick, name="d"), backoff=runtime.Backoff(min=1.0, max=1.0, jitter=0))
        async with runtime.open_system(tree) as system:
            await trio.sleep(0.5)
            info = system.snapshot().find("/app/d")
            assert info.failed == 1
            assert info.last_error is not None
            assert info.last_error.type == "NotImplementedError"

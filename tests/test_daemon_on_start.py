"""`actors.Daemon` subclasses with an `on_start` of their own: the interval is checked
and the schedule started whether or not that `on_start` calls ``super().on_start()``,
once per incarnation, after the subclass's own start work.

All time here is trio's virtual time (`autojump_clock`).
"""

from __future__ import annotations

from typing import Any, ClassVar

import pytest
import trio
import trio.testing

import runtime
from actors import Daemon
from runtime import Supervisor, child

WAIT = 1_000.0  # virtual seconds: a bound that only a hang reaches


def app(*children: Any, **kw: Any) -> Supervisor:
    return Supervisor("app", children=list(children), **kw)


def stats(system: runtime.System, path: str) -> dict[str, Any]:
    return system.snapshot().find(path).stats


def on_schedule(log: list[float], start: float, interval: float) -> bool:
    """`log` holds exactly one tick at each of ``start + n * interval`` (n = 0, 1, ...):
    one schedule, not two, and none missing."""
    return log == [start + n * interval for n in range(len(log))]


class Ticking(Daemon):
    """Logs the trio time of each tick in `log`, once a second; the subclasses below
    override `on_start` in the ways under test."""

    interval = 1.0

    def __init__(self, log: list[Any]) -> None:
        self.log = log

    async def tick(self) -> None:
        self.log.append(trio.current_time())


class Quiet(Ticking):
    """Overrides `on_start` (taking `prepare` seconds) and never calls super."""

    def __init__(self, log: list[float], starts: list[float], prepare: float = 0.0) -> None:
        super().__init__(log)
        self.starts = starts
        self.prepare = prepare

    async def on_start(self) -> None:
        await trio.sleep(self.prepare)
        self.starts.append(trio.current_time())  # the end of this on_start

    async def receive(self, msg: Any) -> Any:
        raise ConnectionError(msg)


async def test_an_on_start_without_super_still_ticks_from_its_end(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[float] = []
    starts: list[float] = []
    with trio.fail_after(WAIT):
        tree = app(child(Quiet, name="d", args=(log, starts, 2.0)))
        async with runtime.open_system(tree) as system:
            await trio.sleep(5.5)
            s = stats(system, "/app/d")
    assert len(starts) == 1
    assert log[0] == starts[0]  # the first tick right after on_start
    assert on_schedule(log, starts[0], 1.0)
    assert len(log) == 6  # the system opened when on_start ended: +0 .. +5 after it
    assert s["interval"] == 1.0 and s["ticks"] == len(log)


async def test_a_restarted_on_start_without_super_gets_one_schedule_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[float] = []
    starts: list[float] = []
    with trio.fail_after(WAIT):
        async with runtime.open_system(app(child(Quiet, name="d", args=(log, starts)))) as system:
            await trio.sleep(2.5)
            system.ref("/app/d").tell("crash")
            await trio.sleep(3.25)
            info = system.snapshot().find("/app/d")
    assert info.restarts == 1 and len(starts) == 2
    first = [t for t in log if t < starts[1]]
    second = [t for t in log if t >= starts[1]]
    assert first == [starts[0], starts[0] + 1.0, starts[0] + 2.0]
    assert second[0] == starts[1]
    assert on_schedule(second, starts[1], 1.0)


class SetsItsInterval(Ticking):
    """Sets `interval` in its `on_start` (no super call): that value is the one used."""

    def __init__(self, log: list[float], seconds: Any) -> None:
        super().__init__(log)
        self.seconds = seconds

    async def on_start(self) -> None:
        self.interval = self.seconds


async def test_the_interval_an_on_start_sets_is_the_one_checked_and_used(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[float] = []
    with trio.fail_after(WAIT):
        tree = app(child(SetsItsInterval, name="d", args=(log, 0.25)))
        async with runtime.open_system(tree) as system:
            await trio.sleep(1.1)
            assert stats(system, "/app/d")["interval"] == 0.25
    assert len(log) == 5 and on_schedule(log, log[0], 0.25)


async def start_is_refused(spec: Any, match: str) -> None:
    """Starting `spec` fails with a ValueError matching `match`, and nothing of it is
    left: no child, and (5 s on) no tick."""
    with trio.fail_after(WAIT):
        async with runtime.open_system(app()) as system:
            with pytest.raises(ValueError, match=match):
                await system.start_child("/app", spec)
            await trio.sleep(5.0)
            assert system.which_children("/app") == []


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), "1", None, True, 1e-9])
async def test_a_bad_interval_an_on_start_sets_fails_the_start(
    autojump_clock: trio.testing.MockClock, bad: Any
) -> None:
    log: list[float] = []
    spec = child(SetsItsInterval, name="d", args=(log, bad))
    await start_is_refused(spec, r"SetsItsInterval\.interval must be")
    assert log == []


async def test_a_bad_class_interval_fails_the_start_without_a_super_call(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class Zero(Quiet):
        interval = 0.0

    log: list[float] = []
    starts: list[float] = []
    spec = child(Zero, name="d", args=(log, starts))
    await start_is_refused(spec, r"Zero\.interval must be a positive, finite")
    assert starts != [] and log == []  # its on_start ran; then the check refused the start


class Polite(Ticking):
    """Calls ``super().on_start()`` as the docs used to ask: `where` says when."""

    where: ClassVar[str] = "first"

    def __init__(self, log: list[float], starts: list[float]) -> None:
        super().__init__(log)
        self.starts = starts

    async def on_start(self) -> None:
        if self.where == "first":
            await super().on_start()
        self.starts.append(trio.current_time())
        if self.where == "last":
            await super().on_start()
        if self.where == "twice":
            await super().on_start()
            await super().on_start()

    async def receive(self, msg: Any) -> Any:
        raise ConnectionError(msg)


@pytest.mark.parametrize("where", ["first", "last", "twice"])
async def test_an_on_start_that_calls_super_gets_exactly_one_schedule(
    autojump_clock: trio.testing.MockClock, where: str
) -> None:
    cls = type(f"Polite_{where}", (Polite,), {"where": where})
    log: list[float] = []
    starts: list[float] = []
    with trio.fail_after(WAIT):
        async with runtime.open_system(app(child(cls, name="d", args=(log, starts)))) as system:
            await trio.sleep(3.5)
            system.ref("/app/d").tell("crash")  # and once more in the next incarnation
            await trio.sleep(3.5)
            info = system.snapshot().find("/app/d")
    assert info.restarts == 1 and len(starts) == 2
    first = [t for t in log if t < starts[1]]
    second = [t for t in log if t >= starts[1]]
    assert first == [starts[0] + n for n in range(4)]
    assert second == [starts[1] + n for n in range(4)]
    assert info.stats["ticks"] == 4


class Base(Ticking):
    """A library's daemon: its `on_start` sets things up, without a super call."""

    async def on_start(self) -> None:
        self.log.append("base")


class Calls(Base):
    """Calls its base's `on_start`, then sets its own interval."""

    async def on_start(self) -> None:
        await super().on_start()
        self.log.append("calls")
        self.interval = 0.5


class Skips(Base):
    """Replaces its base's `on_start` entirely."""

    async def on_start(self) -> None:
        self.log.append("skips")


class PoliteBase(Base):
    """Calls super all the way up to `Daemon.on_start`."""

    async def on_start(self) -> None:
        self.log.append("polite")
        await super().on_start()
        await Daemon.on_start(self)


class Leaf(PoliteBase):
    """Overrides nothing more."""


class PoliteLeaf(PoliteBase):
    async def on_start(self) -> None:
        await super().on_start()
        self.log.append("leaf")


@pytest.mark.parametrize(
    ("cls", "marks", "interval"),
    [
        (Calls, ["base", "calls"], 0.5),
        (Skips, ["skips"], 1.0),
        (PoliteBase, ["polite", "base"], 1.0),
        (Leaf, ["polite", "base"], 1.0),
        (PoliteLeaf, ["polite", "base", "leaf"], 1.0),
    ],
    ids=lambda v: getattr(v, "__name__", None),
)
async def test_a_deeper_hierarchy_gets_one_schedule(
    autojump_clock: trio.testing.MockClock, cls: type[Base], marks: list[str], interval: float
) -> None:
    log: list[Any] = []
    with trio.fail_after(WAIT):
        async with runtime.open_system(app(child(cls, name="d", args=(log,)))) as system:
            await trio.sleep(2.25)
            s = stats(system, "/app/d")
    assert log[: len(marks)] == marks  # each on_start ran once, in order
    ticks = log[len(marks) :]
    assert len(ticks) == int(2.25 / interval) + 1 and on_schedule(ticks, ticks[0], interval)
    assert s["interval"] == interval and s["ticks"] == len(ticks)


class Mixin:
    """Not a Daemon: an `on_start` that a Daemon subclass inherits from elsewhere."""

    log: list[Any]

    async def on_start(self) -> None:
        self.log.append("mixin")


class Mixed(Mixin, Ticking):
    """Its `on_start` is the mixin's."""


async def test_an_on_start_from_a_mixin_still_gets_the_schedule(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    with trio.fail_after(WAIT):
        async with runtime.open_system(app(child(Mixed, name="d", args=(log,)))):
            await trio.sleep(2.5)
    assert log[0] == "mixin" and len(log) == 4 and on_schedule(log[1:], log[1], 1.0)


class FailsToStart(Ticking):
    """Its `on_start` raises, before or after calling super (or without calling it)."""

    call_super: ClassVar[str] = "never"

    async def on_start(self) -> None:
        if self.call_super == "before":
            await super().on_start()
        await trio.sleep(0.5)
        raise ConnectionError("cannot start")


@pytest.mark.parametrize("call_super", ["never", "before"])
async def test_an_on_start_that_raises_fails_the_start_and_leaves_no_schedule(
    autojump_clock: trio.testing.MockClock, call_super: str
) -> None:
    cls = type(f"FailsToStart_{call_super}", (FailsToStart,), {"call_super": call_super})
    log: list[float] = []
    with trio.fail_after(WAIT):
        async with runtime.open_system(app()) as system:
            with pytest.raises(ConnectionError, match="cannot start"):
                await system.start_child("/app", child(cls, name="d", args=(log,)))
            await trio.sleep(5.0)
            assert system.which_children("/app") == []
    assert log == []


LOG: list[str] = []


class StaticStart(Daemon):
    interval = 1.0

    @staticmethod
    async def on_start() -> None:
        LOG.append("static start")

    async def tick(self) -> None:
        LOG.append("tick")


class ClassStart(Daemon):
    interval = 1.0

    @classmethod
    async def on_start(cls) -> None:
        LOG.append(f"{cls.__name__} start")

    async def tick(self) -> None:
        LOG.append("tick")


@pytest.mark.parametrize(
    ("cls", "first"), [(StaticStart, "static start"), (ClassStart, "ClassStart start")]
)
async def test_a_static_or_class_method_on_start_starts_and_ticks(
    cls: type[Daemon], first: str, autojump_clock: trio.abc.Clock
) -> None:
    """They were wrapped as instance methods, and the start failed with TypeError
    (found by attack)."""
    LOG.clear()
    with trio.fail_after(WAIT):
        async with runtime.open_system(app(child(cls, name="d"))):
            await trio.sleep(2.5)
    assert LOG[0] == first
    assert LOG.count("tick") == 3  # at 0, 1 and 2 s


async def test_tick_at_start_false_waits_one_interval_after_the_on_start(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class Later(Quiet):
        tick_at_start = False

    log: list[float] = []
    starts: list[float] = []
    with trio.fail_after(WAIT):
        async with runtime.open_system(app(child(Later, name="d", args=(log, starts, 2.0)))):
            await trio.sleep(5.5)
    assert [t - starts[0] for t in log] == [1.0, 2.0, 3.0, 4.0, 5.0]


@pytest.mark.parametrize("method", ["on_start", "receive"])
def test_a_plain_def_handler_on_a_daemon_is_refused(method: str) -> None:
    def handler(self: Any, *args: Any) -> None:
        pass

    cls = type("Plain", (Daemon,), {method: handler, "interval": 1.0})
    with pytest.raises(TypeError, match=rf"Plain\.{method} must be 'async def"):
        child(cls, name="d")

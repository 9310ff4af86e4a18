"""Timers: ctx.send_after, ctx.every (drift-free), Timer.cancel, and death with the incarnation."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import trio
import trio.testing

import runtime
from runtime import Actor, Supervisor, child

# -- helper actors -----------------------------------------------------------


@attrs.frozen
class Tick:
    incarnation: int


@attrs.frozen
class After:
    delay: float
    msg: Any


@attrs.frozen
class Every:
    interval: float
    msg: Any


class Clocked(Actor):
    """Starts timers on request and records (time, message) for every timer message."""

    def __init__(
        self,
        seen: list[tuple[float, Any]],
        timers: dict[str, runtime.Timer],
        work: float = 0.0,
    ) -> None:
        self.seen = seen
        self.timers = timers
        self.work = work

    async def receive(self, msg: Any) -> Any:
        match msg:
            case After(delay=d, msg=m):
                self.timers[str(m)] = self.ctx.send_after(d, m)
            case Every(interval=i, msg=m):
                self.timers[str(m)] = self.ctx.every(i, m)
            case ("cancel", name):
                self.timers[name].cancel()
            case "crash":
                raise RuntimeError("crash")
            case "stop":
                self.ctx.stop()
            case _:
                self.seen.append((trio.current_time(), msg))
                if self.work:
                    await trio.sleep(self.work)
        return None


class TicksFromOnStart(Actor):
    """Each incarnation starts an `every` and a `send_after` tagged with its number."""

    def __init__(self, seen: list[tuple[float, Any]], counter: dict[str, int]) -> None:
        self.seen = seen
        counter["n"] += 1
        self.n = counter["n"]

    async def on_start(self) -> None:
        self.ctx.every(1.0, Tick(self.n))
        self.ctx.send_after(2.5, ("once", self.n))

    async def receive(self, msg: Any) -> Any:
        if msg == "crash":
            raise RuntimeError("crash")
        self.seen.append((trio.current_time(), msg))
        return None


def app(*children: Any, **kw: Any) -> Supervisor:
    return Supervisor("app", children=list(children), **kw)


def clocked(seen: list[Any], timers: dict[str, Any], **kw: Any) -> Supervisor:
    return app(child(Clocked, name="c", args=(seen, timers), **kw))


# -- send_after --------------------------------------------------------------------


async def test_send_after_delivers_once_after_the_delay(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[Any] = []
    timers: dict[str, Any] = {}
    with trio.fail_after(60):
        async with runtime.open_system(clocked(seen, timers)) as system:
            ref = system.ref("/app/c")
            t0 = trio.current_time()
            await ref.ask(After(3.0, "ding"))
            await trio.sleep(2.9)
            assert seen == []
            await trio.sleep(0.2)
            assert [m for _, m in seen] == ["ding"]
            assert seen[0][0] - t0 == pytest.approx(3.0)
            await trio.sleep(30)
            assert len(seen) == 1


async def test_send_after_cancelled_before_it_fires(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[Any] = []
    timers: dict[str, Any] = {}
    with trio.fail_after(60):
        async with runtime.open_system(clocked(seen, timers)) as system:
            ref = system.ref("/app/c")
            await ref.ask(After(3.0, "never"))
            await ref.ask(After(3.0, "kept"))
            assert not timers["never"].cancelled
            await trio.sleep(1.0)
            await ref.ask(("cancel", "never"))
            assert timers["never"].cancelled
            await trio.sleep(10)
            assert [m for _, m in seen] == ["kept"]
            assert sum(system.snapshot().dead_letters.values()) == 0


# -- every ------------------------------------------------------------------------


@pytest.mark.parametrize("work", [0.0, 0.3])
async def test_every_is_drift_free(autojump_clock: trio.testing.MockClock, work: float) -> None:
    seen: list[Any] = []
    timers: dict[str, Any] = {}
    tree = app(child(Clocked, name="c", args=(seen, timers), kwargs={"work": work}))
    with trio.fail_after(600):
        async with runtime.open_system(tree) as system:
            ref = system.ref("/app/c")
            t0 = trio.current_time()
            await ref.ask(Every(0.5, "tick"))
            await trio.sleep(100.25)
            ticks = [t - t0 for t, m in seen if m == "tick"]
            assert len(ticks) == 200
            # every tick on its phase: k * interval after the start, not later and later
            for k, t in enumerate(ticks, start=1):
                assert t == pytest.approx(0.5 * k, abs=1e-6)


async def test_every_cancel_stops_the_ticks(autojump_clock: trio.testing.MockClock) -> None:
    seen: list[Any] = []
    timers: dict[str, Any] = {}
    with trio.fail_after(60):
        async with runtime.open_system(clocked(seen, timers)) as system:
            ref = system.ref("/app/c")
            await ref.ask(Every(1.0, "a"))
            await ref.ask(Every(1.0, "b"))
            await trio.sleep(5.5)
            await ref.ask(("cancel", "a"))
            assert timers["a"].cancelled and not timers["b"].cancelled
            await trio.sleep(5.0)
            assert len([m for _, m in seen if m == "a"]) == 5
            assert len([m for _, m in seen if m == "b"]) == 10


@pytest.mark.parametrize(
    ("call", "value"),
    [
        ("send_after", -1.0),
        ("send_after", float("nan")),
        ("every", 0),
        ("every", -1.0),
        ("every", float("inf")),
    ],
)
async def test_invalid_timer_arguments_raise_value_error(call: str, value: float) -> None:
    errors: list[BaseException] = []

    class Bad(Actor):
        async def receive(self, msg: Any) -> Any:
            try:
                getattr(self.ctx, call)(value, "x")
            except ValueError as exc:
                errors.append(exc)
            return None

    with trio.fail_after(10):
        async with runtime.open_system(app(child(Bad, name="bad"))) as system:
            await system.ref("/app/bad").ask("go")
    assert len(errors) == 1


# -- timers die with the incarnation ----------------------------------------------------


async def test_timers_die_with_the_incarnation(autojump_clock: trio.testing.MockClock) -> None:
    seen: list[Any] = []
    counter = {"n": 0}
    tree = app(child(TicksFromOnStart, name="t", args=(seen, counter)))
    with trio.fail_after(600):
        async with runtime.open_system(tree) as system:
            ref = system.ref("/app/t")
            await trio.sleep(1.5)  # one tick from incarnation 1; its send_after is pending
            crashed_at = trio.current_time()
            ref.tell("crash")
            await trio.sleep(10.2)
            assert counter["n"] == 2
            msgs = [m for _, m in seen]
            assert msgs.count(Tick(1)) == 1
            assert ("once", 1) not in msgs  # the old send_after died with its incarnation
            assert msgs.count(("once", 2)) == 1
            assert msgs.count(Tick(2)) == 10
            # no tick of the old incarnation after the crash
            assert all(t < crashed_at for t, m in seen if m == Tick(1))


async def test_timers_stop_when_the_actor_stops_for_good(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[Any] = []
    timers: dict[str, Any] = {}
    with trio.fail_after(60):
        async with runtime.open_system(clocked(seen, timers, restart="temporary")) as system:
            ref = system.ref("/app/c")
            await ref.ask(Every(1.0, "tick"))
            await ref.ask(After(5.0, "later"))
            await trio.sleep(2.5)
            ref.tell("stop")
            while ref.is_alive:
                await trio.sleep(0.1)
            await trio.sleep(20)
            assert [m for _, m in seen] == ["tick", "tick"]
            # dead timers do not keep sending into the closed mailbox
            assert system.snapshot().dead_letters["stopped"] == 0


async def test_every_does_not_pile_up_behind_a_full_mailbox(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gate = trio.Event()
    seen: list[Any] = []

    class Stuck(Actor):
        async def on_start(self) -> None:
            self.ctx.every(1.0, "tick")

        async def receive(self, msg: Any) -> Any:
            if msg == "hold":
                await gate.wait()
            else:
                seen.append((trio.current_time(), msg))
            return None

    tree = app(child(Stuck, name="s", mailbox=runtime.Mailbox(capacity=1)))
    with trio.fail_after(600):
        async with runtime.open_system(tree) as system:
            ref = system.ref("/app/s")
            t0 = trio.current_time()
            ref.tell("hold")
            await trio.sleep(10.5)  # ten ticks come due while the actor is stuck
            assert system.snapshot().find("/app/s").mailbox_depth == 1
            gate.set()
            await trio.sleep(0.1)
            # one queued tick and at most the one waiting for room: no burst of ten
            assert 1 <= len(seen) <= 2
            await trio.sleep(10.0)
            later = [t - t0 for t, _ in seen if t - t0 > 10.75]
            assert len(later) == 10
            for t in later:  # back on the original phase
                assert t == pytest.approx(round(t), abs=1e-6)
            assert system.snapshot().dead_letters["overflow"] == 0

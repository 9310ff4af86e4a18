"""Edges of `actors.Daemon`: intervals of every kind and size, ticks at a full
mailbox, and crashes and stops at every point around a tick."""

from __future__ import annotations

import logging
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
import trio
import trio.testing

import runtime
from actors import Daemon
from runtime import Mailbox, Supervisor, child
from runtime.testing import crash

WAIT = 1_000.0


class Logged(Daemon):
    """Logs ("tick", time) per tick; a message is seconds of work, or "boom"."""

    interval = 1.0

    def __init__(self, log: list[Any], interval: Any = 1.0, tick_work: float = 0.0) -> None:
        self.log = log
        self.interval = interval
        self.tick_work = tick_work

    async def tick(self) -> None:
        self.log.append(("tick", trio.current_time()))
        await trio.sleep(self.tick_work)

    async def receive(self, msg: Any) -> Any:
        if msg == "boom":
            raise RuntimeError("boom")
        await trio.sleep(msg)
        self.log.append(("msg", msg))
        return "ok"


async def test_a_tick_never_evicts_a_user_message_from_a_full_drop_old_mailbox(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A tick that finds a full `drop_old` mailbox is skipped: it never pushes the
    # user's queued message out (no `overflow` dead letter because of a tick).
    class Small(Logged):
        mailbox = Mailbox(capacity=1, overflow="drop_old")

    log: list[Any] = []
    with trio.fail_after(WAIT):
        tree = Supervisor("app", children=[child(Small, name="d", args=(log,))])
        async with runtime.open_system(tree) as system:
            ref = system.ref("/app/d")
            await trio.sleep(0.5)
            ref.tell(2.0)  # in hand until 2.5
            await trio.sleep(0.1)
            ref.tell(0.0)  # queued: the mailbox is full; the tick due at 1.0 comes next
            await trio.sleep(4)
            dead = {k: v for k, v in system.snapshot().dead_letters.items() if v}
    assert ("msg", 0.0) in log, log
    assert dead == {}


@pytest.mark.parametrize("tiny", [5e-324, 1e-300, 1e-7])
async def test_an_interval_below_a_microsecond_fails_the_start(
    autojump_clock: trio.testing.MockClock, tiny: float
) -> None:
    # Intervals the clock cannot step by (5e-324 used to crash-loop on an overflow,
    # 1e-300 to tick back to back) are refused when the incarnation starts.
    log: list[Any] = []
    with trio.fail_after(WAIT):
        async with runtime.open_system(Supervisor("app")) as system:
            with pytest.raises(ValueError, match="at least 1e-06 seconds"):
                await system.start_child("/app", child(Logged, name="d", args=(log, tiny)))
    assert log == []


@pytest.mark.parametrize("good", [Decimal("0.5"), Fraction(1, 2), 10**300])
async def test_a_positive_finite_number_of_any_kind_is_an_interval(
    autojump_clock: trio.testing.MockClock, good: Any
) -> None:
    # Any positive, finite number is an interval: a Decimal (not a `numbers.Real`), a
    # Fraction and an int far beyond a float's integers all start and tick.
    log: list[Any] = []
    with trio.fail_after(WAIT):
        async with runtime.open_system(Supervisor("app")) as system:
            await system.start_child("/app", child(Logged, name="d", args=(log, good)))
            await trio.sleep(0.75)
    assert len(log) >= 1


# -- crashes, stops and a full block mailbox -------------------------------------


@pytest.mark.parametrize("action", ["crash", "boom", "terminate", "tell_then_crash"])
@pytest.mark.parametrize("at", [i * 0.125 for i in range(17)])
async def test_a_crash_or_stop_at_any_point_around_a_tick_leaves_no_trace(
    autojump_clock: trio.testing.MockClock,
    caplog: pytest.LogCaptureFixture,
    action: str,
    at: float,
) -> None:
    # A crash (injected, or a message that raises) or a stop at any moment around a
    # tick leaves no trace of the tick: no dead letter but the raising message's own
    # `crashed`, no warning, and (unless stopped) the next incarnation keeps ticking.
    log: list[Any] = []
    tree = Supervisor(
        "app",
        max_restarts=100,
        within=1,
        children=[child(Logged, name="d", args=(log,), kwargs={"tick_work": 0.5})],
    )
    with trio.fail_after(WAIT):
        async with runtime.open_system(tree) as system:
            ref = system.ref("/app/d")
            await trio.sleep(at)
            if action == "crash":
                crash(ref)
            elif action == "boom":
                ref.tell("boom")
            elif action == "tell_then_crash":
                ref.tell(0.3)
                crash(ref)
            else:
                await system.terminate_child("/app/d")
            await trio.sleep(3.3)
            dead = {k: v for k, v in system.snapshot().dead_letters.items() if v}
    assert dead == ({"crashed": 1} if action == "boom" else {}), (dead, log)
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and "crash" not in r.getMessage()
    ]
    assert warnings == []
    if action != "terminate":
        assert len([e for e in log if e[0] == "tick" and e[1] > at + 0.01]) >= 3, log


async def test_a_tick_waits_its_turn_in_a_full_block_mailbox(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Under `block` a tick that finds the mailbox full waits its turn behind the
    # queued message (the tick due at 1.0 runs at 2.5); the schedule then skips the
    # ticks it missed and keeps its phase (3.0, 4.0).
    class Small(Logged):
        mailbox = Mailbox(capacity=1, overflow="block")

    log: list[Any] = []
    with trio.fail_after(WAIT):
        tree = Supervisor("app", children=[child(Small, name="d", args=(log,))])
        async with runtime.open_system(tree) as system:
            ref = system.ref("/app/d")
            await trio.sleep(0.5)
            ref.tell(2.0)
            await trio.sleep(0.1)
            ref.tell(0.0)
            await trio.sleep(4)
            assert not any(system.snapshot().dead_letters.values())
    assert log == [
        ("tick", 0.0),
        ("msg", 2.0),
        ("msg", 0.0),
        ("tick", 2.5),
        ("tick", 3.0),
        ("tick", 4.0),
    ]

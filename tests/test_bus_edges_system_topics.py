"""Edge cases: subscribers of the runtime's own topics (``system.deadletter``).

Every dead letter is also published as a ``system.deadletter`` event
(`Bus.dead_letter_event`).  A listener that fails on such an event (a raising
callback, issue 12, or an actor that leaves it unhandled) has that failure
recorded as a dead letter but not published again: one dead letter yields a
handful, not a storm of letters feeding on themselves.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio

import runtime
from runtime import UNHANDLED, Actor, Supervisor, child


class Picky(Actor):
    """Listens to dead letters, handles nothing (a `case _: return UNHANDLED` actor)."""

    subscriptions = ("system.deadletter",)

    async def receive(self, msg: Any) -> Any:
        return UNHANDLED


async def one_dead_letter_then_count(system: runtime.System) -> int:
    await trio.sleep(0.05)
    before = system.dead_letters.total
    system.ref("/system/deadletters").tell("nonsense")  # one `unhandled` dead letter
    await trio.sleep(0.3)  # real time: a storm would leave an autojump clock no idle loop
    return system.dead_letters.total - before


async def test_a_failing_dead_letter_callback_does_not_feed_on_its_own_dead_letters(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.CRITICAL)
    async with runtime.open_system(Supervisor("app", children=[])) as system:

        @system.bus.subscribe("system.deadletter")
        def log_dead_letter(event: runtime.Event) -> None:
            raise RuntimeError("the log sink is down")

        new = await one_dead_letter_then_count(system)
        published = system.bus.stats()["system_published"]
    # the original letter, and the callback's own failure on it: a handful, not a storm
    assert new <= 3, f"{new} dead letters ({published} system events) from one"


async def test_an_unhandling_dead_letter_subscriber_does_not_feed_on_its_own_dead_letters(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The same through an actor that leaves the events unhandled (the kernel's
    `unhandled` path)."""
    caplog.set_level(logging.CRITICAL)
    async with runtime.open_system(Supervisor("app", children=[child(Picky, name="p")])) as system:
        new = await one_dead_letter_then_count(system)
    assert new <= 3, f"{new} dead letters from one"

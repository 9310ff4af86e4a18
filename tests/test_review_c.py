"""Behaviours of the loop monitor and of snapshots that no other test pinned down."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
import trio.testing
from test_monitoring import MonitorClock

import runtime
import runtime.monitor
from runtime import Actor, Supervisor, child
from runtime.monitor import LoopMonitor, TreeSnapshot


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> MonitorClock:
    """The monitor's clock, moved by hand (not installed: the loop's waits take no time)."""
    return MonitorClock.patched(monkeypatch)


async def test_blocked_after_lowered_after_a_long_step_flags_the_shorter_steps_above_it(
    clock: MonitorClock,
) -> None:
    # The monitor looks closer only at steps longer than the longest yet or than
    # `blocked_after`, whichever is less: lowering `blocked_after` once a long step
    # was seen must lower that bar too.
    long = clock.LONG
    monitor = LoopMonitor(blocked_after=10 * long)
    monitor.install()
    try:
        await trio.sleep(0)
        clock.jump()  # this step seems to take `long` seconds
        await trio.sleep(0)
        assert monitor.longest_step >= long
        assert monitor.blocked == 0
        monitor.blocked_after = long / 4
        await trio.sleep(0)
        clock.offset += long / 2  # shorter than the longest, over the new bar
        await trio.sleep(0)
    finally:
        monitor.uninstall()
    assert monitor.blocked == 1
    assert monitor.last_blocked is not None
    assert long / 4 < monitor.last_blocked.seconds < long


class Idle(Actor):
    async def receive(self, msg: Any) -> Any:
        return msg


async def test_a_snapshot_read_back_from_json_still_says_hibernating(autojump_clock: Any) -> None:
    # `troupe tree` draws the snapshot it reads from the control socket's JSON.
    tree = Supervisor("app", children=[child(Idle, name="idle", hibernate_after=0)])
    with trio.fail_after(60):
        async with runtime.open_system(tree) as system:
            await trio.testing.wait_all_tasks_blocked()
            sent = json.loads(json.dumps(system.snapshot().to_dict()))
    read = TreeSnapshot.from_dict(sent)
    assert read.find("/app/idle").hibernating
    assert "idle [running]  hibernating" in read.render()

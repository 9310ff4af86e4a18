"""Second attack on the kernel, Ctrl-C under a plain ``trio.run``: trio raises
KeyboardInterrupt wherever unprotected code runs when the signal comes, so the
runtime's own bookkeeping must be protected (trio then hands the interrupt to the
main task, the body of ``open_system``, which stops the system gracefully).

The signal is raised from a bus filter, which runs synchronously where the event
is published: inside the runtime's code at a known point, as a real Ctrl-C could
land there (during a crash storm it did, one run in four: the message being
recorded as crashed was lost).
"""

from __future__ import annotations

import signal
from typing import Any

import pytest
import trio
import trio.testing

from runtime import Actor, Event, Supervisor, child, open_system

pytestmark = [
    pytest.mark.skipif(not hasattr(signal, "raise_signal"), reason="needs raise_signal"),
    pytest.mark.usefixtures("default_sigint"),
]


def ctrl_c_on(topic: str) -> Any:
    """An actor that presses Ctrl-C when `topic` is published (from its publisher's code)."""

    class CtrlC(Actor):
        async def on_start(self) -> None:
            def press(_event: Event) -> bool:
                signal.raise_signal(signal.SIGINT)
                return False

            self.ctx.subscribe(topic, filter=press, once=True)

        async def on_stop(self, reason: Any) -> None:
            stops.append((self.ctx.path, reason))

    stops: list[Any] = []
    CtrlC.stops = stops  # type: ignore[attr-defined]
    return CtrlC


class Crashes(Actor):
    async def receive(self, msg: Any) -> Any:
        raise RuntimeError("boom")


def run_until_interrupted(tree: Supervisor, send: Any) -> Any:
    box: dict[str, Any] = {}

    async def main() -> None:
        async with open_system(tree) as system:
            box["system"] = system
            send(system)
            await trio.sleep(30)
            box["not interrupted"] = True

    with pytest.raises(KeyboardInterrupt):
        trio.run(main)
    assert "not interrupted" not in box
    return box["system"]


def test_ctrl_c_while_a_crash_is_recorded_loses_no_message() -> None:
    """Ctrl-C as the runtime records a crash (the traceback is formatted, the event
    published): the message is still dead-lettered as ``crashed`` (it was lost)."""
    CtrlC = ctrl_c_on("system.actor.crashed")
    tree = Supervisor("app", children=[child(CtrlC, name="l"), child(Crashes, name="c")])
    system = run_until_interrupted(tree, lambda s: s.ref("/app/c").tell("boom"))
    assert system.dead_letters.counts["crashed"] == 1
    assert system.dead_letters.by_recipient == {"/app/c": 1}
    assert CtrlC.stops == [("/app/l", "shutdown")]


class Keeper(Actor):
    stops: list[Any] = []

    async def receive(self, msg: Any) -> Any:
        if msg == "crash":
            raise RuntimeError("boom")
        return msg

    async def on_stop(self, reason: Any) -> None:
        Keeper.stops.append((self.ctx.path, type(reason).__name__))


def test_ctrl_c_in_a_supervisor_restart_still_stops_its_children_gracefully() -> None:
    """Ctrl-C as a supervisor restarts a child: every child still gets its `on_stop`
    (the supervisor's nursery was torn down by the interrupt: its children were
    cancelled without one)."""
    Keeper.stops = []
    CtrlC = ctrl_c_on("system.actor.restarted")
    tree = Supervisor(
        "app",
        children=[
            child(CtrlC, name="l"),
            Supervisor("sub", children=[child(Keeper, name="k"), child(Keeper, name="c")]),
        ],
    )
    system = run_until_interrupted(tree, lambda s: s.ref("/app/sub/c").tell("crash"))
    assert sorted(Keeper.stops) == [
        ("/app/sub/c", "RuntimeError"),  # the crashed incarnation
        ("/app/sub/c", "str"),  # the restarted one, stopped with the rest
        ("/app/sub/k", "str"),
    ]
    assert CtrlC.stops == [("/app/l", "shutdown")]
    assert system.dead_letters.counts["crashed"] == 1


class Stubborn(Actor):
    """Its on_stop never ends; once it began, Ctrl-C is pressed (again)."""

    async def on_stop(self, reason: Any) -> None:
        async def press() -> None:
            signal.raise_signal(signal.SIGINT)  # (a system task: trio hands it to main)

        trio.lowlevel.spawn_system_task(press)
        await trio.sleep_forever()


def test_a_second_ctrl_c_forces_the_graceful_stop_under_a_plain_trio_run() -> None:
    """Ctrl-C, then Ctrl-C again while an on_stop with no shutdown timeout hangs: the
    second forces the stop, as under `run` (it was swallowed: the program hung)."""
    tree = Supervisor("app", children=[child(Stubborn, name="s", shutdown=None)])

    async def main() -> None:
        async with open_system(tree):
            signal.raise_signal(signal.SIGINT)  # the first: ends the body
            await trio.sleep(30)

    with pytest.raises(KeyboardInterrupt):
        trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


class CrashThenHang(Actor):
    """Crashes on its first message; its on_stop (shielded, after the crash) hangs."""

    log: list[str] = []

    async def receive(self, msg: Any) -> Any:
        raise RuntimeError("boom")

    async def on_stop(self, reason: Any) -> None:
        CrashThenHang.log.append("on_stop")
        try:
            await trio.sleep_forever()
        finally:
            CrashThenHang.log.append("on_stop cancelled")


async def test_kill_cancels_an_on_stop_that_runs_after_a_crash(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """`System.kill` (a second Ctrl-C) cancels every incarnation, also an `on_stop`
    running shielded after a crash: the root's cancellation did not reach it, and a
    forced stop waited for its shutdown timeout (for ever with None)."""
    CrashThenHang.log = []
    tree = Supervisor(
        "app",
        children=[child(CrashThenHang, name="c", shutdown=1000.0, restart="temporary")],
    )
    async with open_system(tree) as system:
        system.ref("/app/c").tell("crash")
        with trio.fail_after(10):
            while CrashThenHang.log != ["on_stop"]:
                await trio.sleep(0.01)
        started = trio.current_time()
        system.kill()
        with trio.fail_after(10):
            while "on_stop cancelled" not in CrashThenHang.log:
                await trio.sleep(0.01)
    assert trio.current_time() - started < 10  # not its 1,000 s shutdown timeout

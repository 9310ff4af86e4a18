"""Attacks on a resting `transient` child (one that stopped normally and keeps its
place with its mailbox closed, see `Cell.rest`): what others see while it rests.

Every test runs on trio's autojump clock; none asserts on a duration.
"""

from __future__ import annotations

from typing import Any

import trio
import trio.testing
from test_otp_semantics import settle, started, w
from test_transient_rest import letters, restart_group, stopped_events

from runtime import Actor, Backoff, Supervisor, Terminated, child, open_system
from runtime.cell import Cell
from runtime.testing import crash


class AsksOnStart(Actor):
    """Asks ``/app/t`` in its `on_start` (once `out["ask"]` is set) and notes what came
    back, or the error's class name, in `out["answer"]`; "crash" crashes it."""

    def __init__(self, out: dict[str, Any]) -> None:
        self.out = out

    async def on_start(self) -> None:
        if self.out.get("ask"):
            try:
                self.out["answer"] = await self.ctx.system.ref("/app/t").ask("ping", timeout=None)
            except Exception as exc:
                self.out["answer"] = type(exc).__name__

    async def receive(self, msg: Any) -> Any:
        if msg == "crash":
            raise RuntimeError("crash on purpose")
        return msg


async def test_an_on_start_that_asks_a_resting_sibling_gets_actor_stopped_not_deadlock(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A resting slot starts no more when its supervisor is done starting another
    child: an ask to it fails at once with `ActorStopped`.  Rule 5 must not count it
    as waiting for that start (a cycle: `Deadlock`), neither for a sibling restarted
    by rest_for_one nor for a dynamic child."""
    log: list[Any] = []
    out: dict[str, Any] = {}
    tree = Supervisor(
        "app",
        strategy="rest_for_one",
        children=[w("t", log, restart="transient"), child(AsksOnStart, name="b", args=(out,))],
    )
    with trio.fail_after(60):
        async with open_system(tree) as system:
            assert await system.ref("/app/t").ask("stop") == "stopping"
            await settle()
            out["ask"] = True
            system.ref("/app/b").tell("crash")  # b restarts; t (before it) rests on
            await settle()
            assert out.pop("answer") == "ActorStopped"
            await system.start_child("/app", child(AsksOnStart, name="d", args=(out,)))
            assert out.pop("answer") == "ActorStopped"


class Seen(Actor):
    """Keeps the `Terminated` notices it gets; ``("watch", path)`` watches `path`."""

    def __init__(self, seen: list[Any]) -> None:
        self.seen = seen

    async def receive(self, msg: Any) -> Any:
        if isinstance(msg, Terminated):
            self.seen.append((msg.ref.path, msg.reason))
        elif isinstance(msg, tuple) and msg[0] == "watch":
            self.ctx.watch(self.ctx.system.ref(msg[1]))
        return None


async def test_a_resting_child_whose_group_restart_waits_out_a_backoff_takes_messages(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Once a group restart that covers it is planned, a resting child is restarting:
    messages queue for its next incarnation meanwhile (DESIGN: "messages queue
    meanwhile, and the child's state is restarting"), its ref is alive (one is
    coming), a watch waits for it to stop, and `crash` crashes that incarnation.
    Before, its mailbox stayed closed until the restart began: all of it was
    dead-lettered, the watcher was told it had stopped, the crash was lost."""
    log: list[Any] = []
    seen: list[Any] = []
    group = restart_group(log, backoff=Backoff(min=30.0, max=30.0, jitter=0.0))
    tree = Supervisor("top", children=[group, child(Seen, name="watcher", args=(seen,))])
    with trio.fail_after(120):
        async with open_system(tree) as system:
            t = system.ref("/top/app/t")
            assert await t.ask("stop") == "stopping"
            await settle()
            t.tell("while resting")  # dead-lettered: it rests
            system.ref("/top/app/a").tell("crash")
            await settle()
            assert [c.state for c in system.which_children("/top/app")] == ["restarting"] * 2
            assert t.is_alive
            await system.ref("/top/watcher").ask(("watch", "/top/app/t"))
            t.tell("during the backoff")
            crash(t)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_ask_and_note, t, log)  # queued for a later incarnation
                await settle()
                assert letters(system, "/top/app/t") == [("while resting", "stopped")]
                await trio.sleep(31)  # the restart: the injected crash comes first ...
                assert started(log).count("t") == 2
                await trio.sleep(31)  # ... and its restart handles what was queued
            assert started(log).count("t") == 3
            assert ("asked", "pong") in log
            assert seen == []  # it never stopped: it restarted
            assert letters(system, "/top/app/t") == [("while resting", "stopped")]


async def _ask_and_note(ref: Any, log: list[Any]) -> None:
    try:
        log.append(("asked", await ref.ask("ping", timeout=None)))
    except Exception as exc:
        log.append(("asked", type(exc).__name__))


async def test_a_rest_ended_by_a_pending_restart_then_terminated_is_announced_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """One ``system.actor.stopped`` per incarnation: the rest announced it, and the
    slot is removed during the restart's backoff, with no incarnation since."""
    log: list[Any] = []
    tree = restart_group(log, backoff=Backoff(min=30.0, max=30.0, jitter=0.0))
    with trio.fail_after(120):
        async with open_system(tree) as system:
            assert await system.ref("/app/t").ask("stop") == "stopping"
            await settle()
            system.ref("/app/a").tell("crash")
            await settle()
            assert system.ref("/app/t").is_alive  # restarting
            await system.terminate_child("/app/t")
            assert stopped_events(system, "/app/t") == ["normal"]


async def test_a_thread_that_sees_the_rest_over_finds_the_fresh_mailbox(
    autojump_clock: trio.testing.MockClock, monkeypatch: Any
) -> None:
    """A foreign thread reads `ref.is_alive`, then tells into the slot's mailbox: once
    is_alive says the rest is over, the mailbox must be the fresh one (else its tell
    is dead-lettered by the closed one).  Checked at the moment the fresh one is made,
    which is when a thread could look: the rest must not look over yet."""
    seen: list[tuple[bool, bool]] = []
    made = Cell._new_mailbox

    def spying(cell: Cell, *args: Any) -> Any:
        if cell.path == "/app/t" and getattr(cell, "incarnation", 0):  # not its first
            seen.append((cell.ref.is_alive, cell.mailbox.closed))
        return made(cell, *args)

    monkeypatch.setattr(Cell, "_new_mailbox", spying)
    log: list[Any] = []
    tree = restart_group(log)
    with trio.fail_after(60):
        async with open_system(tree) as system:
            assert await system.ref("/app/t").ask("stop") == "stopping"
            await settle()
            seen.clear()
            system.ref("/app/a").tell("crash")
            await settle()
            assert await system.ref("/app/t").ask("ping") == "pong"
    assert seen == [(False, True)]  # made while the rest still showed, closed mailbox and all

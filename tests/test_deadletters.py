"""Dead letters: counted by reason, queryable at /system/deadletters, per-actor counts."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import runtime
from runtime import UNHANDLED, Actor, DeadLettersQuery, Mailbox, Supervisor, child

# -- helper actors -----------------------------------------------------------


class Worker(Actor):
    def __init__(self, gate: trio.Event | None = None) -> None:
        self.gate = gate

    async def receive(self, msg: Any) -> Any:
        match msg:
            case "hold":
                assert self.gate is not None
                await self.gate.wait()
            case "crash":
                raise ValueError("crash")
            case "unknown":
                return UNHANDLED
            case "stop":
                self.ctx.stop()
            case ("sleep", seconds, value):
                await trio.sleep(seconds)
                return value
        return msg


def app(*children: Any, **kw: Any) -> Supervisor:
    return Supervisor("app", children=list(children), **kw)


REASONS = ("crashed", "unhandled", "overflow", "stopped", "timeout", "deadlock", "undeliverable")


async def test_counts_by_reason_in_the_snapshot(autojump_clock: trio.testing.MockClock) -> None:
    gate = trio.Event()
    tree = app(
        child(Worker, name="w"),
        child(Worker, name="small", args=(gate,), mailbox=Mailbox(1, "drop_new")),
        child(Worker, name="temp", restart="temporary"),
    )
    with trio.fail_after(60):
        async with runtime.open_system(tree) as system:
            assert system.snapshot().dead_letters == dict.fromkeys(REASONS, 0)
            w = system.ref("/app/w")
            # crashed x1
            w.tell("crash")
            # unhandled x2
            w.tell("unknown")
            with pytest.raises(runtime.UnhandledMessage):
                await w.ask("unknown")
            # timeout x1
            with pytest.raises(runtime.AskTimeout):
                await w.ask(("sleep", 5.0, "too late"), timeout=1.0)
            await w.ask("flush", timeout=30)
            # overflow x3
            small = system.ref("/app/small")
            small.tell("hold")
            await trio.testing.wait_all_tasks_blocked()
            for i in range(4):
                small.tell(i)
            gate.set()
            # stopped x2 (queued behind the stop) + 1 (told afterwards)
            temp = system.ref("/app/temp")
            for msg in ("stop", "left-1", "left-2"):
                temp.tell(msg)
            while temp.is_alive:
                await trio.sleep(0.1)
            temp.tell("after")
            snap = system.snapshot()
            assert snap.dead_letters == {
                "crashed": 1,
                "unhandled": 2,
                "overflow": 3,
                "stopped": 3,
                "timeout": 1,
                "deadlock": 0,
                "undeliverable": 0,
            }
            assert snap.find("/app/w").dead_lettered == 4
            assert snap.find("/app/small").dead_lettered == 3
            with pytest.raises(runtime.ActorNotFound):
                snap.find("/app/temp")  # a stopped temporary child leaves the tree
            office = system.ref("/system/deadletters")
            stopped = await office.ask(DeadLettersQuery(reason="stopped"))
            assert [d.message for d in stopped] == ["after", "left-2", "left-1"]
            assert {d.recipient for d in stopped} == {"/app/temp"}
            assert snap.to_dict()["dead_letters"] == snap.dead_letters


async def test_deadletters_actor_exists_and_answers_queries() -> None:
    with trio.fail_after(10):
        async with runtime.open_system(app(child(Worker, name="w"))) as system:
            office = system.ref("/system/deadletters")
            assert office.path == "/system/deadletters"
            assert office.is_alive
            assert await office.ask(DeadLettersQuery()) == []
            w = system.ref("/app/w")
            for msg in ("unknown", "crash", "unknown"):
                w.tell(msg)
            await w.ask("flush")
            letters = await office.ask(DeadLettersQuery())
            assert all(isinstance(d, runtime.DeadLetter) for d in letters)
            assert [(d.message, d.reason, d.recipient) for d in letters] == [
                ("unknown", "unhandled", "/app/w"),
                ("crash", "crashed", "/app/w"),
                ("unknown", "unhandled", "/app/w"),
            ]
            only_crashed = await office.ask(DeadLettersQuery(reason="crashed"))
            assert [d.message for d in only_crashed] == ["crash"]
            newest = await office.ask(DeadLettersQuery(limit=1))
            assert len(newest) == 1 and newest[0].reason == "unhandled"
            assert all(isinstance(d.timestamp, float) for d in letters)
            # the office itself does not handle other messages
            with pytest.raises(runtime.UnhandledMessage):
                await office.ask("what?")


async def test_deadletters_snapshot_stats_show_totals() -> None:
    with trio.fail_after(10):
        async with runtime.open_system(app(child(Worker, name="w"))) as system:
            w = system.ref("/app/w")
            w.tell("unknown")
            w.tell("crash")
            await w.ask("flush")
            stats = system.snapshot().find("/system/deadletters").stats
            assert stats["total"] == 2
            assert stats["unhandled"] == 1 and stats["crashed"] == 1


async def test_the_record_is_bounded_but_counts_are_not() -> None:
    with trio.fail_after(30):
        async with runtime.open_system(app(child(Worker, name="w"))) as system:
            w = system.ref("/app/w")
            n = 2500
            for i in range(n):
                if i % 500 == 0:
                    await w.ask("flush")
                w.tell("unknown")
            await w.ask("flush")
            assert system.snapshot().dead_letters["unhandled"] == n
            kept = await system.ref("/system/deadletters").ask(DeadLettersQuery(limit=10**6))
            assert 0 < len(kept) < n


async def test_every_told_message_is_handled_or_dead_lettered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tree = app(child(Worker, name="w", mailbox=Mailbox(20, "drop_old")), max_restarts=100)
    with trio.fail_after(60):
        async with runtime.open_system(tree) as system:
            w = system.ref("/app/w")
            sent = 0
            for i in range(300):
                w.tell("crash" if i % 37 == 0 else ("sleep", 0.01, i))
                sent += 1
                if i % 10 == 0:
                    await trio.sleep(0.05)
            await w.ask("flush", timeout=60)
            sent += 1
            snap = system.snapshot()
            info = snap.find("/app/w")
            assert info.restarts == snap.dead_letters["crashed"] > 0
            assert snap.dead_letters["overflow"] > 0
            assert info.processed + info.dead_lettered == sent
            assert info.dead_lettered == sum(snap.dead_letters.values())


class GivesUp(Actor):
    """Handles its own failures: gives up on a message with `ctx.dead_letter`."""

    async def receive(self, msg: Any) -> Any:
        match msg:
            case ("give up", reason):
                try:
                    self.ctx.dead_letter(msg, reason)
                except ValueError as exc:
                    return str(exc)
                return "given up"
        return UNHANDLED


async def test_an_actor_can_dead_letter_a_message_itself() -> None:
    async with runtime.open_system(app(child(GivesUp, name="g"))) as system:
        g = system.ref("/app/g")
        assert await g.ask(("give up", "timeout")) == "given up"
        error = await g.ask(("give up", "bogus"))
        assert "unknown dead-letter reason 'bogus'" in error and "crashed" in error
        snap = system.snapshot()
        assert snap.dead_letters["timeout"] == 1
        assert snap.find("/app/g").dead_lettered == 1  # the refused one is not counted
        letters = await system.ref("/system/deadletters").ask(DeadLettersQuery())
        assert [(x.message, x.reason, x.recipient) for x in letters] == [
            (("give up", "timeout"), "timeout", "/app/g")
        ]

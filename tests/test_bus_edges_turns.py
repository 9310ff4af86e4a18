"""Loop senders and foreign threads sharing a full mailbox (`MailboxQueue._room_made`,
`wait_for_threads`, `ThreadGate.room_freed`).

README (threads): "When loop senders and publishers wait in the same mailbox's
line too, the two sides take turns (the line gets up to a quarter of the mailbox,
then the threads get what is free), so neither can starve the other."  DESIGN
rule 2: each mailbox has its own FIFO-fair line.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
import trio
import trio.testing

import runtime
from runtime import Actor, Event, Mailbox, Supervisor, child

JOIN = 30.0


class Slow(Actor):
    """Takes a (real) millisecond per message: threads always have a request ready."""

    subscriptions = ("t",)

    def __init__(self) -> None:
        self.loop_seen = 0

    async def receive(self, msg: Any) -> Any:
        await trio.sleep(0.001)
        if msg == "loop" or isinstance(msg, Event):
            self.loop_seen += 1
        return None


def _hammer(ref: runtime.ActorRef, stop: threading.Event, sent: list[int]) -> None:
    n = 0
    while not stop.is_set():
        try:
            ref.tell(("thread", n), timeout=0.5)
            n += 1
        except runtime.MailboxFull:
            pass
        except runtime.RuntimeClosed:
            break
    sent.append(n)


async def _starved(capacity: int, how: str, threads: int) -> tuple[str, list[int]]:
    tree = Supervisor("app", children=[child(Slow, name="s", mailbox=Mailbox(capacity=capacity))])
    async with runtime.open_system(tree) as system:
        ref = system.ref("/app/s")
        stop = threading.Event()
        sent: list[int] = []
        workers = [
            threading.Thread(target=_hammer, args=(ref, stop, sent), daemon=True)
            for _ in range(threads)
        ]
        for w in workers:
            w.start()
        outcome = "starved"
        try:
            await trio.sleep(0.1)  # the threads keep the mailbox full now
            # a fair mailbox lets a loop sender in within a few messages (ms)
            with trio.move_on_after(2.0):
                if how == "send":
                    await ref.send("loop")
                else:
                    await system.bus.publish("t", "loop")
                outcome = "in"
        finally:
            stop.set()
            for w in workers:
                await trio.to_thread.run_sync(w.join, JOIN)
        return outcome, sent


@pytest.mark.parametrize("capacity", [1, 8])
@pytest.mark.parametrize("how", ["send", "publish"])
async def test_a_loop_sender_is_not_starved_by_threads_telling_a_full_mailbox(
    capacity: int, how: str
) -> None:
    """An `await ref.send()` or `await publish()` gets into a mailbox that four threads
    keep full by telling in a loop, within 2 s against a 1 ms consumer: the line and
    the threads take turns (room kept for waiting threads once kept the loop line out
    for as long as they told)."""
    outcome, sent = await _starved(capacity, how, threads=4)
    assert outcome == "in", f"loop {how} starved while threads sent {sum(sent)} messages"


class SelfSender(Actor):
    """``hold`` waits for `gate`; ``self-send`` sends to itself (a handler waiting on its
    own mailbox: rule 5 refuses the wait, so it must not be needed when there is room)."""

    def __init__(self, gate: trio.Event, outcomes: list[str]) -> None:
        self.gate = gate
        self.outcomes = outcomes  # read by the test directly: an ask would wait in line

    async def receive(self, msg: Any) -> Any:
        match msg:
            case "hold":
                await self.gate.wait()
            case "self-send":
                try:
                    await self.ctx.ref.send("x")
                    self.outcomes.append("sent")
                except runtime.Deadlock:
                    self.outcomes.append("deadlock")
            case "self-tell":
                try:
                    self.ctx.ref.tell("y")
                    self.outcomes.append("told")
                except runtime.MailboxFull as exc:
                    self.outcomes.append(f"full: {exc}")
        return None


@pytest.mark.parametrize("how", ["send", "tell"])
async def test_a_waiting_thread_makes_a_send_to_self_with_free_room_a_deadlock(how: str) -> None:
    """Capacity 8, full, a thread waiting for room; the actor takes one message, so
    1 place is free (less than the quarter the thread waits for).  The handler's
    `await ctx.ref.send(x)` to itself gets in without `Deadlock`, and a loop `tell`
    takes the free place without `MailboxFull` (room kept for the waiting thread was
    once counted as full).  The outcome is read from a shared list: an `ask` would
    wait in the full mailbox's line."""
    gate = trio.Event()
    outcomes: list[str] = []
    tree = Supervisor(
        "app",
        children=[child(SelfSender, name="s", args=(gate, outcomes), mailbox=Mailbox(capacity=8))],
    )
    async with runtime.open_system(tree) as system:
        ref = system.ref("/app/s")
        box = ref._cell.mailbox
        ref.tell("hold")
        await trio.testing.wait_all_tasks_blocked()
        ref.tell(f"self-{how}")
        for i in range(7):
            ref.tell(i)  # full: 8 queued
        thread = threading.Thread(target=lambda: ref.tell("thread", timeout=JOIN), daemon=True)
        thread.start()
        with trio.fail_after(JOIN):
            while not box.statistics().threads_waiting:
                await trio.sleep(0.01)
        gate.set()
        with trio.fail_after(JOIN):
            while not outcomes:
                await trio.sleep(0.01)
        await trio.to_thread.run_sync(thread.join, JOIN)
        assert not thread.is_alive()
        assert outcomes == [{"send": "sent", "tell": "told"}[how]], outcomes


class Gated(Actor):
    def __init__(self, gate: trio.Event) -> None:
        self.gate = gate

    async def receive(self, msg: Any) -> Any:
        await self.gate.wait()
        return None

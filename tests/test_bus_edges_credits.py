"""Edge cases: room lent to foreign threads (credits) and the bus / send paths.

README ("How threads get room"): "room is never pinned by threads: once
everything sent has been handled, the mailbox takes `capacity` messages from
the loop again, however many threads told it before".  After one `tell` from a
thread has been handled, the bus and `send` take that room as a loop `tell` does:

- `publish_nowait` delivers where a `tell` fits (no ``overflow`` dead letter);
- a subscriber publishing to its own topic with room gets no ``deadlock``;
- `await ctx.ref.send(x)` to itself with room does not raise `Deadlock`.

(Guards against room lent to threads once counted as full.)
"""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

import runtime
from runtime import Actor, Event, Mailbox, Supervisor, child

WAIT = 10.0  # real time: these tests use a real thread


class Sub(Actor):
    """Subscribes to ``t``; "hold" keeps the handler busy until `release` is set."""

    def __init__(self, release: trio.Event) -> None:
        self.seen: list[Any] = []
        self.release = release

    async def on_start(self) -> None:
        self.ctx.subscribe("t")

    async def receive(self, msg: Any) -> Any:
        match msg:
            case Event():
                self.seen.append(msg.payload)
                return None
            case "hold":
                await self.release.wait()
                return None
            case "seen":
                return list(self.seen)
            case "filler_then_publish":
                self.ctx.ref.tell("filler")  # one queued; capacity 3 leaves room for 2
                return await self.ctx.publish("t", "self")
            case "filler_then_send":
                self.ctx.ref.tell("filler")
                await self.ctx.ref.send("sent")  # room for it: must not wait at all
                return "sent"
            case _:
                self.seen.append(msg)
                return None


def tree(release: trio.Event, overflow: str = "block") -> Supervisor:
    box = Mailbox(capacity=3, overflow=overflow)
    return Supervisor("app", children=[child(Sub, name="s", args=(release,), mailbox=box)])


async def thread_told_once(system: runtime.System) -> runtime.ActorRef:
    """One tell from a plain thread, then wait until it has been handled."""
    ref = system.ref("/app/s")
    with trio.fail_after(WAIT):
        await trio.to_thread.run_sync(ref.tell, "from-thread")
        while "from-thread" not in await ref.ask("seen"):
            await trio.sleep(0.01)
    return ref


async def test_publish_to_own_topic_with_room_is_not_a_deadlock() -> None:
    async with runtime.open_system(tree(trio.Event())) as system:
        ref = await thread_told_once(system)
        # everything sent so far is handled: the mailbox takes 3 from the loop again
        with trio.fail_after(WAIT):
            count = await ref.ask("filler_then_publish")
        assert system.snapshot().dead_letters["deadlock"] == 0
        assert count == 1
        assert "self" in await ref.ask("seen")


async def test_send_to_self_with_room_does_not_raise_deadlock() -> None:
    async with runtime.open_system(tree(trio.Event())) as system:
        ref = await thread_told_once(system)
        with trio.fail_after(WAIT):
            assert await ref.ask("filler_then_send") == "sent"
            seen = await ref.ask("seen")
        assert "sent" in seen


async def test_publish_nowait_takes_room_a_tell_would_take() -> None:
    async with runtime.open_system(tree(release := trio.Event())) as system:
        ref = await thread_told_once(system)
        ref.tell("hold")  # in hand: the 3 places of the mailbox are free
        await trio.testing.wait_all_tasks_blocked()
        counts = [system.bus.publish_nowait("t", i) for i in range(3)]
        overflow = system.snapshot().dead_letters["overflow"]
        release.set()
        assert overflow == 0
        assert counts == [1, 1, 1]
        with trio.fail_after(WAIT):
            assert (await ref.ask("seen"))[-3:] == [0, 1, 2]


async def test_publish_nowait_to_a_fail_subscriber_takes_room_a_tell_would_take() -> None:
    async with runtime.open_system(tree(release := trio.Event(), "fail")) as system:
        ref = await thread_told_once(system)
        ref.tell("hold")
        await trio.testing.wait_all_tasks_blocked()
        counts = [system.bus.publish_nowait("t", i) for i in range(3)]
        overflow = system.snapshot().dead_letters["overflow"]
        release.set()
        assert overflow == 0
        assert counts == [1, 1, 1]


async def test_control_a_loop_tell_does_take_that_room() -> None:
    """Control: in the same situation loop `tell`s take the same room."""
    async with runtime.open_system(tree(release := trio.Event())) as system:
        ref = await thread_told_once(system)
        ref.tell("hold")
        await trio.testing.wait_all_tasks_blocked()
        for i in range(3):
            ref.tell(("told", i))  # would raise MailboxFull if there were no room
        overflow = system.snapshot().dead_letters["overflow"]
        release.set()
        assert overflow == 0

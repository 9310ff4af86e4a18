"""Edge cases: fairness and FIFO of a mailbox's line across publishers, `send`, `ask`
and foreign threads.

DESIGN rule 2: "Each subscriber (and each actor mailbox) has its own FIFO-fair line:
a publisher or `send` that must wait for room in a `block` mailbox waits in *that*
mailbox's line, and later deliveries to the same mailbox queue behind it."
"""

from __future__ import annotations

from typing import Any

import trio
import trio.testing

import runtime
from runtime import Actor, Event, Mailbox, Supervisor, child


class Sub(Actor):
    subscriptions = ("t",)

    def __init__(self, pause: float = 0.0, gate: trio.Event | None = None) -> None:
        self.pause = pause
        self.gate = gate
        self.seen: list[Any] = []

    async def receive(self, msg: Any) -> Any:
        if msg == "seen":
            return list(self.seen)
        if self.gate is not None:
            await self.gate.wait()
        await trio.sleep(self.pause)
        self.seen.append(msg.payload if isinstance(msg, Event) else msg)
        return "answer"


async def test_a_thread_tell_is_not_starved_by_loop_publishers_that_came_later() -> None:
    """A thread's `tell` waiting for room gets in within its timeout while a steady loop
    publisher keeps the mailbox's line busy (guards against room always going to the
    loop line first, which made the thread wait out its whole timeout)."""
    tree = Supervisor(
        "app", children=[child(Sub, name="s", args=(0.002,), mailbox=Mailbox(capacity=4))]
    )
    async with runtime.open_system(tree) as system:
        ref = system.ref("/app/s")
        done = False

        async def publisher() -> None:
            i = 0
            while not done:
                await system.bus.publish("t", i)
                i += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(publisher)
            await trio.sleep(0.05)  # the line is busy now
            try:
                # a fair line lets it in after a few messages (milliseconds)
                await trio.to_thread.run_sync(lambda: ref.tell("thread", timeout=1.0))
                outcome = "sent"
            except runtime.MailboxFull as exc:
                outcome = repr(exc)
            finally:
                done = True
        assert outcome == "sent"


async def test_send_ask_publish_share_one_fifo_line_with_withdrawals(
    autojump_clock: trio.abc.Clock,
) -> None:
    """`publish`, `ask` and `send` are served FIFO in one line; a cancelled publish, a
    timed-out ask and a cancelled send are withdrawn from the middle of it."""
    gate = trio.Event()
    tree = Supervisor(
        "app", children=[child(Sub, name="s", args=(0.0, gate), mailbox=Mailbox(capacity=1))]
    )
    async with runtime.open_system(tree) as system:
        ref = system.ref("/app/s")
        await system.bus.publish("t", "in-hand")
        await trio.testing.wait_all_tasks_blocked()
        await system.bus.publish("t", "queued")
        cancel = trio.CancelScope()
        outcomes: dict[str, Any] = {}

        async def run(name: str, fn: Any) -> None:
            try:
                outcomes[name] = await fn()
            except Exception as exc:
                outcomes[name] = type(exc).__name__

        async def cancellable_send() -> None:
            with cancel:
                await ref.send("send-cancelled")

        async def cancellable_publish() -> Any:
            with trio.move_on_after(5):
                return await system.bus.publish("t", "publish-cancelled")
            return "cancelled"

        steps = [
            ("p1", lambda: system.bus.publish("t", "p1")),
            ("a1", lambda: ref.ask("a1", timeout=None)),
            ("pc", cancellable_publish),
            ("s1", lambda: ref.send("s1")),
            ("at", lambda: ref.ask("ask-timeout", timeout=3)),
            ("sc", cancellable_send),
            ("p2", lambda: system.bus.publish("t", "p2")),
            ("a2", lambda: ref.ask("a2", timeout=None)),
        ]
        async with trio.open_nursery() as nursery:
            for name, fn in steps:
                nursery.start_soon(run, name, fn)
                await trio.testing.wait_all_tasks_blocked()
            box = ref._cell.mailbox
            assert box.statistics().senders_waiting == len(steps)
            await trio.sleep(10)  # the ask times out, the publish is cancelled
            cancel.cancel()
            await trio.testing.wait_all_tasks_blocked()
            assert box.statistics().senders_waiting == len(steps) - 3
            gate.set()
        assert outcomes == {
            "p1": 1,
            "a1": "answer",
            "pc": "cancelled",
            "s1": None,
            "at": "AskTimeout",
            "sc": None,
            "p2": 1,
            "a2": "answer",
        }
        seen = await ref.ask("seen")
        assert seen == ["in-hand", "queued", "p1", "a1", "s1", "p2", "a2"]
        assert box.statistics().senders_waiting == 0

"""Bounded mailboxes: specs, overflow policies, high water, the system lane, restarts."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import runtime
from runtime import Actor, Mailbox, Supervisor, child

# -- helper actors -----------------------------------------------------------


class Gated(Actor):
    """Blocks on the shared gate while handling "hold"; records everything else."""

    def __init__(self, seen: list[Any], gate: trio.Event) -> None:
        self.seen = seen
        self.gate = gate

    async def receive(self, msg: Any) -> Any:
        if msg == "hold":
            await self.gate.wait()
            return "released"
        if msg == "boom":
            raise RuntimeError("boom")
        self.seen.append(msg)
        return msg


class Small(Actor):
    mailbox = Mailbox(capacity=3, overflow="drop_new")

    async def receive(self, msg: Any) -> Any:
        return msg


class Plain(Actor):
    async def receive(self, msg: Any) -> Any:
        return msg


class Watcher(Actor):
    """Watches `target` in on_start; blocks on the gate for "hold"; logs the rest."""

    mailbox = Mailbox(capacity=2, overflow="block")

    def __init__(self, seen: list[Any], gate: trio.Event) -> None:
        self.seen = seen
        self.gate = gate

    async def on_start(self) -> None:
        self.ctx.watch(self.ctx.system.ref("/app/target"))

    async def receive(self, msg: Any) -> Any:
        if msg == "hold":
            await self.gate.wait()
            return None
        self.seen.append(type(msg).__name__ if isinstance(msg, runtime.Terminated) else msg)
        return None


class StopOnAsk(Actor):
    async def receive(self, msg: Any) -> Any:
        self.ctx.stop()
        return msg


def app(*children: Any, **kw: Any) -> Supervisor:
    return Supervisor("app", children=list(children), **kw)


def gated(overflow: str, capacity: int = 2, **kw: Any) -> tuple[Supervisor, list[Any], trio.Event]:
    seen: list[Any] = []
    gate = trio.Event()
    spec = child(
        Gated,
        name="g",
        args=(seen, gate),
        mailbox=Mailbox(capacity=capacity, overflow=overflow),  # type: ignore[arg-type]
        **kw,
    )
    return app(spec), seen, gate


async def hold(ref: runtime.ActorRef) -> None:
    """Make the actor busy on "hold" so that further messages stay queued."""
    ref.tell("hold")
    await trio.testing.wait_all_tasks_blocked()


# -- specs ---------------------------------------------------------------------


def test_default_mailbox_is_10000_block() -> None:
    assert Mailbox() == Mailbox(capacity=10_000, overflow="block")


@pytest.mark.parametrize("capacity", [0, -1, 1.5, "10", True, None])
def test_invalid_capacity_is_a_value_error(capacity: Any) -> None:
    with pytest.raises(ValueError, match="capacity"):
        Mailbox(capacity=capacity)


@pytest.mark.parametrize("overflow", ["drop", "BLOCK", "", None, "drop-new"])
def test_invalid_overflow_is_a_value_error(overflow: Any) -> None:
    with pytest.raises(ValueError, match="overflow"):
        Mailbox(overflow=overflow)


async def test_mailbox_from_child_spec_class_attribute_and_default() -> None:
    tree = app(
        child(Plain, name="default"),
        child(Small, name="by-class"),
        child(Small, name="by-spec", mailbox=Mailbox(capacity=7, overflow="fail")),
        child(Plain, name="plain-spec", mailbox=Mailbox(capacity=5)),
    )
    with trio.fail_after(10):
        async with runtime.open_system(tree) as system:
            snap = system.snapshot()
            assert snap.find("/app/default").mailbox_capacity == 10_000
            assert snap.find("/app/by-class").mailbox_capacity == 3
            assert snap.find("/app/by-spec").mailbox_capacity == 7
            assert snap.find("/app/plain-spec").mailbox_capacity == 5
            # the class attribute's policy is used: drop_new
            by_class = system.ref("/app/by-class")
            for i in range(5):
                by_class.tell(i)
            assert system.snapshot().dead_letters["overflow"] == 2
            # by-spec overrides the class policy with "fail"
            by_spec = system.ref("/app/by-spec")
            for i in range(7):
                by_spec.tell(i)
            with pytest.raises(runtime.MailboxFull):
                by_spec.tell("one too many")


async def test_default_block_mailbox_tell_raises_when_full() -> None:
    tree, _, gate = gated("block", capacity=10_000)
    with trio.fail_after(10):
        async with runtime.open_system(tree) as system:
            ref = system.ref("/app/g")
            await hold(ref)
            for i in range(10_000):
                ref.tell(i)
            with pytest.raises(runtime.MailboxFull) as info:
                ref.tell("overflow")
            assert "send" in str(info.value)  # it says what to do instead
            gate.set()


# -- overflow policies ---------------------------------------------------------


async def test_block_send_waits_for_room_and_tell_raises(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tree, seen, gate = gated("block", capacity=2)
    with trio.fail_after(60):
        async with runtime.open_system(tree) as system:
            ref = system.ref("/app/g")
            await hold(ref)
            ref.tell(1)
            await ref.send(2)
            with pytest.raises(runtime.MailboxFull):
                ref.tell("refused")
            sent = trio.Event()

            async def blocked_sender() -> None:
                await ref.send(3)
                sent.set()

            async with trio.open_nursery() as nursery:
                nursery.start_soon(blocked_sender)
                await trio.sleep(10)
                assert not sent.is_set()  # still waiting for room
                assert system.snapshot().find("/app/g").mailbox_depth == 2
                gate.set()
            assert sent.is_set()
            assert await ref.ask("done") == "done"
            assert seen == [1, 2, 3, "done"]
            snap = system.snapshot()
            assert snap.dead_letters["overflow"] == 0
            assert snap.find("/app/g").dead_lettered == 0


async def test_block_many_blocked_senders_all_get_in_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tree, seen, gate = gated("block", capacity=1)
    with trio.fail_after(60):
        async with runtime.open_system(tree) as system:
            ref = system.ref("/app/g")
            await hold(ref)

            async def sender(who: int) -> None:
                for i in range(20):
                    await ref.send((who, i))

            async with trio.open_nursery() as nursery:
                for who in range(4):
                    nursery.start_soon(sender, who)
                await trio.testing.wait_all_tasks_blocked()
                gate.set()
            await ref.ask("flush")
            for who in range(4):
                assert [i for w, i in seen[:-1] if w == who] == list(range(20))
            assert len(seen) == 81
            assert system.snapshot().find("/app/g").mailbox_high_water == 1


async def test_block_ask_times_out_when_the_mailbox_stays_full(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tree, seen, gate = gated("block", capacity=1)
    with trio.fail_after(60):
        async with runtime.open_system(tree) as system:
            ref = system.ref("/app/g")
            await hold(ref)
            ref.tell("queued")
            with pytest.raises(runtime.AskTimeout):
                await ref.ask("never-sent", timeout=2.0)
            gate.set()
            assert await ref.ask("flush") == "flush"
            assert seen == ["queued", "flush"]


async def test_drop_new_drops_the_newest_into_dead_letters() -> None:
    tree, seen, gate = gated("drop_new", capacity=2)
    with trio.fail_after(10):
        async with runtime.open_system(tree) as system:
            ref = system.ref("/app/g")
            await hold(ref)
            for i in range(1, 6):
                ref.tell(i)
            await ref.send(6)
            gate.set()
            await trio.testing.wait_all_tasks_blocked()
            assert seen == [1, 2]
            dropped = await system.ref("/system/deadletters").ask(
                runtime.DeadLettersQuery(reason="overflow")
            )
            assert sorted(d.message for d in dropped) == [3, 4, 5, 6]
            assert all(d.recipient == "/app/g" for d in dropped)
            snap = system.snapshot()
            assert snap.dead_letters["overflow"] == 4
            assert snap.find("/app/g").dead_lettered == 4


async def test_drop_old_drops_the_oldest_into_dead_letters() -> None:
    tree, seen, gate = gated("drop_old", capacity=2)
    with trio.fail_after(10):
        async with runtime.open_system(tree) as system:
            ref = system.ref("/app/g")
            await hold(ref)
            for i in range(1, 6):
                ref.tell(i)
            await ref.send(6)
            gate.set()
            await trio.testing.wait_all_tasks_blocked()
            assert seen == [5, 6]
            dropped = system.dead_letters.recent(100, "overflow")
            assert [d.message for d in dropped] == [4, 3, 2, 1]  # newest first
            assert system.snapshot().dead_letters["overflow"] == 4


async def test_drop_old_of_an_ask_fails_that_asker() -> None:
    tree, _, gate = gated("drop_old", capacity=1)
    with trio.fail_after(10):
        async with runtime.open_system(tree) as system:
            ref = system.ref("/app/g")
            await hold(ref)
            outcome: list[BaseException] = []

            async def asker() -> None:
                try:
                    await ref.ask("pushed-out", timeout=None)
                except runtime.TroupeError as exc:
                    outcome.append(exc)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(asker)
                await trio.testing.wait_all_tasks_blocked()
                ref.tell("newer")
            assert len(outcome) == 1 and isinstance(outcome[0], runtime.MailboxFull)
            gate.set()


async def test_fail_raises_mailbox_full_to_the_sender() -> None:
    tree, seen, gate = gated("fail", capacity=2)
    with trio.fail_after(10):
        async with runtime.open_system(tree) as system:
            ref = system.ref("/app/g")
            await hold(ref)
            ref.tell(1)
            ref.tell(2)
            with pytest.raises(runtime.MailboxFull):
                ref.tell(3)
            with pytest.raises(runtime.MailboxFull):
                await ref.send(4)
            with pytest.raises(runtime.MailboxFull):
                await ref.ask(5)
            gate.set()
            await trio.testing.wait_all_tasks_blocked()
            assert await ref.ask("flush") == "flush"
            assert seen == [1, 2, "flush"]
            # refused messages stay with the sender: they are not dead letters
            assert system.snapshot().dead_letters["overflow"] == 0


async def test_mailbox_high_water_and_depth_in_the_snapshot() -> None:
    tree, _, gate = gated("block", capacity=100)
    with trio.fail_after(10):
        async with runtime.open_system(tree) as system:
            ref = system.ref("/app/g")
            assert system.snapshot().find("/app/g").mailbox_high_water == 0
            await hold(ref)
            for i in range(17):
                ref.tell(i)
            info = system.snapshot().find("/app/g")
            assert info.mailbox_depth == 17
            assert info.mailbox_high_water == 17
            gate.set()
            await trio.testing.wait_all_tasks_blocked()
            await ref.ask("flush")
            for i in range(3):
                ref.tell(i)
            await ref.ask("flush")
            info = system.snapshot().find("/app/g")
            assert info.mailbox_depth == 0
            assert info.mailbox_high_water == 17


# -- restarts and the system lane ---------------------------------------------


async def test_mailbox_survives_a_restart() -> None:
    tree, seen, gate = gated("block", capacity=10)
    with trio.fail_after(10):
        async with runtime.open_system(tree) as system:
            ref = system.ref("/app/g")
            await hold(ref)
            ref.tell(1)
            ref.tell("boom")
            ref.tell(2)
            ref.tell(3)
            gate.set()
            assert await ref.ask("flush") == "flush"
            assert seen == [1, 2, 3, "flush"]
            info = system.snapshot().find("/app/g")
            assert info.restarts == 1
            crashed = system.dead_letters.recent(10, "crashed")
            assert [d.message for d in crashed] == ["boom"]


async def test_terminated_uses_the_system_lane_and_comes_first(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[Any] = []
    gate = trio.Event()
    tree = app(
        child(StopOnAsk, name="target", restart="temporary"),
        child(Watcher, name="w", args=(seen, gate)),
    )
    with trio.fail_after(60):
        async with runtime.open_system(tree) as system:
            w = system.ref("/app/w")
            await hold(w)
            w.tell("u1")
            w.tell("u2")
            with pytest.raises(runtime.MailboxFull):
                w.tell("u3")  # the user lane is full
            await system.ref("/app/target").ask("stop now")
            await trio.testing.wait_all_tasks_blocked()
            # delivered although the user lane is full
            assert system.snapshot().find("/app/w").mailbox_depth == 3
            gate.set()
            await trio.sleep(1)
            assert seen == ["Terminated", "u1", "u2"]
            assert system.snapshot().dead_letters["overflow"] == 0


async def test_drop_old_never_exceeds_capacity_when_its_dead_letters_come_back() -> None:
    """Dropping the oldest publishes system.deadletter; if the same full mailbox
    subscribes to it, that event must meet a mailbox that is already whole."""

    class Hoarder(runtime.Actor):
        subscriptions = (">", "system.>")  # '>' alone leaves out the runtime's topics

        def __init__(self, gate: trio.Event) -> None:
            self.gate = gate

        async def receive(self, msg: object) -> object:
            await self.gate.wait()
            return None

    gate = trio.Event()
    spec = runtime.child(
        Hoarder, name="h", args=(gate,), mailbox=runtime.Mailbox(capacity=5, overflow="drop_old")
    )
    with trio.fail_after(10):
        async with runtime.open_system(runtime.Supervisor("app", children=[spec])) as system:
            for i in range(30):
                await system.bus.publish("s.x", i)
            info = system.snapshot().find("/app/h")
            assert info.mailbox_high_water <= 5
            assert info.mailbox_depth <= 5
            gate.set()

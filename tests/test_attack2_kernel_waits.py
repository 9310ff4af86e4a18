"""Second attack on the kernel, the wait-for graph (design rule 5) through
``ctx.forward``: the asker of a forwarded message waits for the new holder's answer,
so a cycle closed through a forward is refused with `Deadlock` (it hung for ever
with no timeout), and the edge ends with the ask wherever the ask went."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import trio
import trio.testing

import runtime
from runtime import Actor, Deadlock, Supervisor, child


@attrs.frozen
class AskOf:
    """Ask the actor at `path` for `msg` (no timeout) and answer with its answer."""

    path: str
    msg: Any


@attrs.frozen
class Via:
    """To `forwarder`: forward this message to `to` (after `delay` s).  To anyone
    else: do `then` (an `AskOf`, or answer it)."""

    forwarder: str
    to: str
    then: Any
    delay: float = 0.0


class Node(Actor):
    """Asks, forwards or answers as told; records the Deadlock it meets."""

    def __init__(self, seen: dict[str, Any]) -> None:
        self.seen = seen

    async def receive(self, msg: Any) -> Any:
        if isinstance(msg, Via):
            if msg.forwarder == self.ctx.name:
                await trio.sleep(msg.delay)
                try:
                    await self.ctx.forward(self.ctx.system.ref(msg.to))
                except Deadlock as error:
                    self.seen[self.ctx.name] = error
                    return "forward refused"
                return None
            msg = msg.then
        if isinstance(msg, AskOf):
            try:
                return await self.ctx.system.ref(msg.path).ask(msg.msg, timeout=None)
            except Deadlock as error:
                self.seen[self.ctx.name] = error
                return "deadlock"
        if msg == "slow":
            await trio.sleep(1)
        return ("answer", self.ctx.name, msg)


def three(seen: dict[str, Any], a: type[Node] = Node) -> Supervisor:
    """/app/a (of class `a`), /app/b and /app/c, all sharing `seen`."""
    return Supervisor(
        "app",
        children=[child(a if n == "a" else Node, name=n, args=(seen,)) for n in "abc"],
    )


async def test_a_cycle_closed_through_a_forward_is_refused(autojump_clock: Any) -> None:
    """a asks b, b forwards the ask to c, c asks a: a waits on c now, so c's ask is
    refused (it hung for ever: a's edge went to b, which had let go of the ask)."""
    seen: dict[str, Any] = {}
    async with runtime.open_system(three(seen)) as system:
        a = system.ref("/app/a")
        ask = AskOf("/app/b", Via("b", "/app/c", AskOf("/app/a", "hello")))
        with trio.fail_after(60):
            assert await a.ask(ask, timeout=None) == "deadlock"
        assert "/app/c -> /app/a -> /app/c" in str(seen["c"])
        assert await a.ask("ping", timeout=10) == ("answer", "a", "ping")


async def test_a_forward_that_would_close_a_cycle_is_refused(autojump_clock: Any) -> None:
    """c already waits on a when b forwards a's ask to c: the forward raises
    `Deadlock` (nothing is sent, b keeps the ask and answers it)."""
    seen: dict[str, Any] = {}
    async with runtime.open_system(three(seen)) as system:
        a, c = system.ref("/app/a"), system.ref("/app/c")
        async with trio.open_nursery() as nursery:
            ask = AskOf("/app/b", Via("b", "/app/c", "unused", delay=1.0))
            answers: list[Any] = []

            async def a_asks() -> None:
                answers.append(await a.ask(ask, timeout=None))

            nursery.start_soon(a_asks)
            await trio.sleep(0.5)  # a waits on b, which sleeps before forwarding
            c.tell(AskOf("/app/a", "hi"))  # c waits on a (a is busy: queued)
            with trio.fail_after(60):
                while not answers:
                    await trio.sleep(0.1)
        assert answers == ["forward refused"]
        assert "/app/a -> /app/c -> /app/a" in str(seen["b"])
        assert "c" not in seen  # c's ask was not a cycle: it is answered once a is free
        assert await c.ask("ping", timeout=10) == ("answer", "c", "ping")


async def test_a_forwarded_ask_leaves_no_edge_once_answered(autojump_clock: Any) -> None:
    """After c answered a's forwarded ask, a waits on nothing: c asking a later is not
    a cycle (an edge left over from the forward would refuse it)."""
    seen: dict[str, Any] = {}
    async with runtime.open_system(three(seen)) as system:
        a, c = system.ref("/app/a"), system.ref("/app/c")
        ask = AskOf("/app/b", Via("b", "/app/c", "slow"))
        assert await a.ask(ask, timeout=10) == ("answer", "c", "slow")
        assert await c.ask(AskOf("/app/a", "hi"), timeout=10) == ("answer", "a", "hi")
        assert seen == {}


async def test_a_forwarded_ask_given_up_leaves_no_edge(autojump_clock: Any) -> None:
    """a gives up on a forwarded ask (its timeout): it waits on nothing after that."""
    seen: dict[str, Any] = {}

    class Impatient(Node):
        async def receive(self, msg: Any) -> Any:
            if msg == "ask and give up":
                with trio.move_on_after(0.5):
                    await self.ctx.system.ref("/app/b").ask(Via("b", "/app/c", "slow"))
                return "gave up"
            return await super().receive(msg)

    async with runtime.open_system(three(seen, a=Impatient)) as system:
        a, c = system.ref("/app/a"), system.ref("/app/c")
        assert await a.ask("ask and give up", timeout=10) == "gave up"
        assert await c.ask(AskOf("/app/a", "hi"), timeout=10) == ("answer", "a", "hi")
        assert seen == {}


async def test_forwarding_an_ask_its_asker_gave_up_is_no_deadlock(autojump_clock: Any) -> None:
    """a gave up on its ask of b (timeout) and is busy with something else; c waits on
    a; b then forwards a's old ask to c.  a waits on nobody for it: the forward goes
    through (its answer is late), it is no `Deadlock` (nor is a's wait moved to c)."""
    seen: dict[str, Any] = {}

    class Impatient(Node):
        async def receive(self, msg: Any) -> Any:
            if msg == "ask, give up, stay busy":
                with trio.move_on_after(0.5):
                    await self.ctx.system.ref("/app/b").ask(
                        Via("b", "/app/c", "late", delay=1.0), timeout=None
                    )
                await trio.sleep(2)  # busy, waiting on nobody
                return "done"
            return await super().receive(msg)

    async with runtime.open_system(three(seen, a=Impatient)) as system:
        a, c = system.ref("/app/a"), system.ref("/app/c")
        async with trio.open_nursery() as nursery:
            answers: list[Any] = []

            async def a_asks() -> None:
                answers.append(await a.ask("ask, give up, stay busy", timeout=None))

            nursery.start_soon(a_asks)
            await trio.sleep(0.75)  # a gave up on b, which forwards at t=1
            c.tell(AskOf("/app/a", "hi"))  # c waits on a (busy: queued)
        assert answers == ["done"]
        assert seen == {}  # neither b's forward nor c's ask met a Deadlock
        # c answered the forwarded ask: late, so a dead letter (``timeout``)
        assert [d.message for d in system.dead_letters.recent(reason="timeout")] == [
            ("answer", "c", "late")
        ]


# -- a wait for a start: an on_start that asks a sibling started after it ----------------
class AsksInOnStart(Actor):
    """Asks `path` (no timeout) in its on_start, and answers with what it got."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.got: Any = None

    async def on_start(self) -> None:
        self.got = await self.ctx.system.ref(self.path).ask("config", timeout=None)

    async def receive(self, msg: Any) -> Any:
        return self.got


class Config(Actor):
    async def receive(self, msg: Any) -> Any:
        return {"from": self.ctx.path}


async def test_an_on_start_asking_a_later_sibling_is_a_deadlock(autojump_clock: Any) -> None:
    """b starts only once a's on_start returned, and a's on_start waits for b's answer:
    `Deadlock` at once (it hung for ever, the whole start with it)."""
    tree = Supervisor(
        "app",
        children=[child(AsksInOnStart, name="a", args=("/app/b",)), child(Config, name="b")],
    )
    with trio.fail_after(60), pytest.raises(Deadlock, match="/app/a -> /app/b -> /app/a"):
        async with runtime.open_system(tree):
            pass


async def test_an_on_start_deep_in_a_subtree_asking_a_later_sibling_of_it(
    autojump_clock: Any,
) -> None:
    """The same one level down: /app/b waits for /app/sub's start, which waits for
    /app/sub/a's, which waits for /app/b."""
    tree = Supervisor(
        "app",
        children=[
            Supervisor("sub", children=[child(AsksInOnStart, name="a", args=("/app/b",))]),
            child(Config, name="b"),
        ],
    )
    with trio.fail_after(60), pytest.raises(Deadlock, match="/app/sub/a -> /app/b -> /app/sub"):
        async with runtime.open_system(tree):
            pass


async def test_an_on_start_asking_an_earlier_sibling_is_answered(autojump_clock: Any) -> None:
    tree = Supervisor(
        "app",
        children=[child(Config, name="b"), child(AsksInOnStart, name="a", args=("/app/b",))],
    )
    async with runtime.open_system(tree) as system:
        assert await system.ref("/app/a").ask("what", timeout=10) == {"from": "/app/b"}


class AsksWhenRestarted(AsksInOnStart):
    """Asks `path` in its on_start from its second start on; crashes on "crash"."""

    starts = 0

    async def on_start(self) -> None:
        AsksWhenRestarted.starts += 1
        if AsksWhenRestarted.starts > 1:
            await super().on_start()

    async def receive(self, msg: Any) -> Any:
        if msg == "crash":
            raise RuntimeError("boom")
        return await super().receive(msg)


async def test_a_restarted_on_start_asking_a_sibling_the_group_restarts_after_it(
    autojump_clock: Any,
) -> None:
    """one_for_all: after a's crash the group restarts a first, b after it, and a's
    on_start now asks b: a `Deadlock`, a failed restart that counts toward the
    intensity (the restart hung for ever, the supervisor with it)."""
    AsksWhenRestarted.starts = 0
    tree = Supervisor(
        "app",
        strategy="one_for_all",
        max_restarts=1,
        children=[child(AsksWhenRestarted, name="a", args=("/app/b",)), child(Config, name="b")],
    )
    with trio.fail_after(60), pytest.raises(runtime.RestartIntensityExceeded, match="Deadlock"):
        async with runtime.open_system(tree) as system:
            system.ref("/app/a").tell("crash")
            await trio.sleep_forever()


class Holder(Actor):
    """Forwards what it gets to /app/full (a full ``fail`` mailbox); when that fails,
    it still holds the ask: it asks its asker back (a cycle again) and answers."""

    def __init__(self, seen: dict[str, Any]) -> None:
        self.seen = seen

    async def receive(self, msg: Any) -> Any:
        try:
            await self.ctx.forward(self.ctx.system.ref("/app/full"))
        except runtime.MailboxFull as error:
            self.seen["forward"] = error
        try:
            await self.ctx.system.ref("/app/a").ask("back", timeout=None)
        except Deadlock as error:
            self.seen["back"] = error
        return "held"


class Busy(Actor):
    async def receive(self, msg: Any) -> Any:
        await trio.sleep_forever()


async def test_a_failed_forward_leaves_the_asker_waiting_on_the_holder(
    autojump_clock: Any,
) -> None:
    """The forward fails (the target's ``fail`` mailbox is full): the asker waits on
    the holder again, so the holder asking it back is a `Deadlock` (with the edge
    left at the target it hung for ever)."""
    seen: dict[str, Any] = {}
    tree = Supervisor(
        "app",
        children=[
            child(Node, name="a", args=(seen,)),
            child(Holder, name="b", args=(seen,)),
            child(Busy, name="full", mailbox=runtime.Mailbox(1, "fail")),
        ],
    )
    async with runtime.open_system(tree) as system:
        full = system.ref("/app/full")
        full.tell("hold")
        await trio.testing.wait_all_tasks_blocked()
        full.tell("fills")
        with trio.fail_after(60):
            got = await system.ref("/app/a").ask(AskOf("/app/b", "x"), timeout=None)
        assert got == "held"
        assert not isinstance(seen["forward"], Deadlock)
        assert "/app/b -> /app/a -> /app/b" in str(seen["back"])

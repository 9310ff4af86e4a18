"""Dynamic child administration, after Erlang/OTP's supervisor_SUITE:
`system.start_child`, `terminate_child`, `which_children`, and a supervisor
with 1,000 children."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from runtime import (
    Actor,
    ActorNotFound,
    ActorStopped,
    Backoff,
    ChildInfo,
    Supervisor,
    child,
    open_system,
)

# -- helpers -----------------------------------------------------------------


class Boom(Exception):
    """The crash our test actors raise."""


def why(reason: object) -> str:
    return "crash" if isinstance(reason, BaseException) else str(reason)


class Worker(Actor):
    """Logs ("start", name) / ("stop", name, why); "crash" raises, "stop" stops,
    "ping" -> "pong"."""

    def __init__(self, log: list[Any]) -> None:
        self.log = log

    async def on_start(self) -> None:
        self.log.append(("start", self.ctx.name))

    async def on_stop(self, reason: object) -> None:
        self.log.append(("stop", self.ctx.name, why(reason)))

    async def receive(self, msg: Any) -> Any:
        if msg == "crash":
            raise Boom(self.ctx.name)
        if msg == "stop":
            self.ctx.stop()
        return "pong" if msg == "ping" else msg


class FailsToStart(Actor):
    async def on_start(self) -> None:
        raise Boom("cannot start")


class Quiet(Actor):
    """A do-nothing actor for the 1,000-children tests."""

    def __init__(self, stopped: list[str]) -> None:
        self.stopped = stopped

    async def on_stop(self, reason: object) -> None:
        self.stopped.append(self.ctx.name)

    async def receive(self, msg: Any) -> Any:
        return msg


def w(name: str, log: list[Any], **kw: Any) -> Any:
    return child(Worker, name=name, kwargs={"log": log}, **kw)


async def settle() -> None:
    await trio.testing.wait_all_tasks_blocked()


def names(system: Any, path: str) -> list[str]:
    return [c.name for c in system.which_children(path)]


def starts(log: list[Any], name: str) -> int:
    return sum(1 for entry in log if entry[0] == "start" and entry[1] == name)


async def assert_gone(system: Any, ref: Any) -> None:
    with pytest.raises(ActorNotFound):
        system.ref(ref.path)
    assert not ref.is_alive
    stopped = system.snapshot().dead_letters["stopped"]
    ref.tell("anyone?")
    assert system.snapshot().dead_letters["stopped"] == stopped + 1
    with pytest.raises(ActorStopped):
        await ref.ask("ping")


# -- start_child / which_children ---------------------------------------------


async def test_start_child_adds_a_running_child_after_the_static_ones(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    async with open_system(Supervisor("app", children=[w("s", log)])) as system:
        ref = await system.start_child("/app", w("d", log, restart="transient"))
        assert ref.path == "/app/d" and ref.name == "d"
        assert system.ref("/app/d") == ref
        assert await ref.ask("ping") == "pong"
        rows = system.which_children("/app")
        assert rows == [
            ChildInfo("s", "/app/s", system.ref("/app/s"), "actor", "running", "permanent", False),
            ChildInfo("d", "/app/d", ref, "actor", "running", "transient", True),
        ]
        assert [n.name for n in system.snapshot().find("/app").children] == ["s", "d"]
    assert log == [
        ("start", "s"),
        ("start", "d"),
        ("stop", "d", "shutdown"),  # dynamic children stop first: reverse start order
        ("stop", "s", "shutdown"),
    ]


async def test_which_children_of_nested_and_invalid_paths(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    tree = Supervisor("app", children=[w("a", log), Supervisor("inner", children=[w("b", log)])])
    async with open_system(tree) as system:
        assert names(system, "/app") == ["a", "inner"]
        assert [c.kind for c in system.which_children("/app")] == ["actor", "supervisor"]
        assert names(system, "/app/inner") == ["b"]
        with pytest.raises(ValueError):
            system.which_children("/app/a")  # an actor has no children
        with pytest.raises(ActorNotFound):
            system.which_children("/app/nope")


async def test_duplicate_name_is_refused(autojump_clock: trio.testing.MockClock) -> None:
    log: list[Any] = []
    async with open_system(Supervisor("app", children=[w("s", log)])) as system:
        d = await system.start_child("/app", w("d", log))
        with pytest.raises(ValueError, match="'s'"):
            await system.start_child("/app", w("s", log))
        with pytest.raises(ValueError, match="'d'"):
            await system.start_child("/app", w("d", log))
        assert names(system, "/app") == ["s", "d"]
        assert starts(log, "s") == starts(log, "d") == 1  # nothing was started twice
        assert await d.ask("ping") == "pong"


async def test_concurrent_start_child_with_one_name_starts_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    outcomes: list[str] = []

    async def attempt() -> None:
        try:
            await system.start_child("/app", w("d", log))
            outcomes.append("started")
        except ValueError:
            outcomes.append("refused")

    async with open_system(Supervisor("app")) as system:
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(attempt)
        assert sorted(outcomes) == ["refused"] * 4 + ["started"]
        assert starts(log, "d") == 1


async def test_start_child_misuse(autojump_clock: trio.testing.MockClock) -> None:
    log: list[Any] = []
    async with open_system(Supervisor("app", children=[w("a", log)])) as system:
        with pytest.raises(ActorNotFound):
            await system.start_child("/nope", w("d", log))
        with pytest.raises(ValueError):
            await system.start_child("/app/a", w("d", log))  # not a supervisor
        with pytest.raises(ActorNotFound):
            await system.terminate_child("/app/nope")
        with pytest.raises(ValueError):
            await system.terminate_child("/app")  # the tree's own root
        with pytest.raises(ValueError):
            await system.start_child("/system", w("d", log))  # the runtime's actors
        assert names(system, "/app") == ["a"]


async def test_child_failing_to_start_is_not_added(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    async with open_system(Supervisor("app", children=[w("a", log)])) as system:
        with pytest.raises(Boom):
            await system.start_child("/app", child(FailsToStart, name="bad"))
        with pytest.raises(ActorNotFound):
            system.ref("/app/bad")
        assert names(system, "/app") == ["a"]
        # the supervisor is unharmed and the name is free again
        assert await system.ref("/app/a").ask("ping") == "pong"
        await system.start_child("/app", w("bad", log))
        assert names(system, "/app") == ["a", "bad"]
        assert system.snapshot().find("/app/a").restarts == 0


# -- terminate_child ----------------------------------------------------------


async def test_terminate_child_stops_and_removes_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    async with open_system(Supervisor("app", children=[w("s", log)])) as system:
        d = await system.start_child("/app", w("d", log))
        await system.terminate_child("/app/d")
        assert log[-1] == ("stop", "d", "shutdown")
        assert names(system, "/app") == ["s"]
        await assert_gone(system, d)
        # the name can be used again
        again = await system.start_child("/app", w("d", log))
        assert await again.ask("ping") == "pong"
        assert starts(log, "d") == 2


async def test_terminate_child_fails_queued_asks_with_actor_stopped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class Busy(Worker):
        async def receive(self, msg: Any) -> Any:
            if msg == "work":
                await trio.sleep(1.0)
            return await super().receive(msg)

    log: list[Any] = []
    outcomes: list[Any] = []
    async with open_system(Supervisor("app")) as system:
        ref = await system.start_child("/app", child(Busy, name="busy", kwargs={"log": log}))

        async def ask_it() -> None:
            try:
                outcomes.append(await ref.ask("ping", timeout=100))
            except ActorStopped as exc:
                outcomes.append(type(exc))

        ref.tell("work")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask_it)
            await settle()
            await system.terminate_child("/app/busy")
        assert outcomes == [ActorStopped]
        assert log[-1] == ("stop", "busy", "shutdown")  # "work" was finished first


async def test_terminate_static_child_removes_it(autojump_clock: trio.testing.MockClock) -> None:
    log: list[Any] = []
    tree = Supervisor("app", strategy="one_for_all", children=[w("a", log), w("b", log)])
    async with open_system(tree) as system:
        b = system.ref("/app/b")
        await system.terminate_child("/app/b")
        await assert_gone(system, b)
        assert names(system, "/app") == ["a"]
        assert starts(log, "a") == 1  # a terminate is not a failure: no group restart


async def test_terminate_dynamic_supervisor_stops_its_subtree_in_reverse(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    async with open_system(Supervisor("app")) as system:
        sub = Supervisor("sub", children=[w("x", log), w("y", log), w("z", log)])
        ref = await system.start_child("/app", sub)
        assert ref.path == "/app/sub"
        assert names(system, "/app/sub") == ["x", "y", "z"]
        assert await system.ref("/app/sub/y").ask("ping") == "pong"
        log.clear()
        await system.terminate_child("/app/sub")
        assert log == [("stop", n, "shutdown") for n in "zyx"]
        for path in ("/app/sub", "/app/sub/x", "/app/sub/y", "/app/sub/z"):
            with pytest.raises(ActorNotFound):
                system.ref(path)


async def test_terminate_during_backoff_cancels_the_restart(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    tree = Supervisor("app", backoff=Backoff(min=10.0, max=10.0, jitter=0.0))
    with trio.fail_after(100):
        async with open_system(tree) as system:
            d = await system.start_child("/app", w("d", log))
            d.tell("crash")
            await settle()
            assert system.which_children("/app")[0].state == "restarting"
            await system.terminate_child("/app/d")
            await trio.sleep(30)  # well past the backoff
            assert starts(log, "d") == 1
            await assert_gone(system, d)


# -- dynamic children and restarts -------------------------------------------


async def test_dynamic_child_is_restarted_like_any_other(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    async with open_system(Supervisor("app")) as system:
        perm = await system.start_child("/app", w("perm", log))
        trans = await system.start_child("/app", w("trans", log, restart="transient"))
        temp = await system.start_child("/app", w("temp", log, restart="temporary"))
        perm.tell("crash")
        trans.tell("crash")
        assert await perm.ask("ping") == "pong"
        assert await trans.ask("ping") == "pong"
        assert starts(log, "perm") == starts(log, "trans") == 2
        assert [c.dynamic for c in system.which_children("/app")] == [True, True, True]

        trans.tell("stop")  # a normal exit: transient is not restarted
        temp.tell("crash")  # temporary never is
        await settle()
        assert names(system, "/app") == ["perm"]
        await assert_gone(system, trans)
        await assert_gone(system, temp)


async def test_rest_for_one_restarts_dynamic_children_started_later(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    tree = Supervisor("app", strategy="rest_for_one", children=[w("a", log), w("b", log)])
    async with open_system(tree) as system:
        await system.start_child("/app", w("d", log))
        log.clear()
        system.ref("/app/b").tell("crash")
        await settle()
        assert await system.ref("/app/d").ask("ping") == "pong"
        assert log == [
            ("stop", "b", "crash"),
            ("stop", "d", "shutdown"),
            ("start", "b"),
            ("start", "d"),
        ]
        assert names(system, "/app") == ["a", "b", "d"]


async def test_dynamic_children_are_not_recreated_when_their_supervisor_restarts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    tree = Supervisor(
        "app",
        children=[Supervisor("inner", max_restarts=0, children=[w("s", log)])],
    )
    async with open_system(tree) as system:
        s = system.ref("/app/inner/s")
        d = await system.start_child("/app/inner", w("d", log))
        assert names(system, "/app/inner") == ["s", "d"]
        log.clear()
        s.tell("crash")  # inner gives up at once; /app restarts it
        assert await s.ask("ping") == "pong"  # the static child is back, same ref
        assert system.snapshot().find("/app/inner").restarts == 1
        assert names(system, "/app/inner") == ["s"]
        assert log == [("stop", "s", "crash"), ("stop", "d", "shutdown"), ("start", "s")]
        await assert_gone(system, d)
        # the restarted supervisor still takes new dynamic children
        d2 = await system.start_child("/app/inner", w("d", log))
        assert await d2.ask("ping") == "pong"


async def test_dynamic_children_are_gone_as_soon_as_their_supervisor_fails(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """They are never coming back, so they are released at once, not when the
    parent (here after a long backoff) restarts their supervisor."""
    log: list[Any] = []
    tree = Supervisor(
        "app",
        backoff=Backoff(min=100.0, max=100.0, jitter=0.0),
        children=[Supervisor("inner", max_restarts=0, children=[w("s", log)])],
    )
    with trio.fail_after(1000):
        async with open_system(tree) as system:
            d = await system.start_child("/app/inner", w("d", log))
            system.ref("/app/inner/s").tell("crash")
            await settle()
            assert system.snapshot().find("/app/inner").state == "restarting"
            assert log[-1] == ("stop", "d", "shutdown")
            with trio.fail_after(1):  # well within the backoff: no waiting for it
                await assert_gone(system, d)
            assert await system.ref("/app/inner/s").ask("ping", timeout=200) == "pong"
            with pytest.raises(ActorNotFound):
                system.ref("/app/inner/d")


# -- many children --------------------------------------------------------------

N = 1000


async def test_thousand_static_children_start_and_stop_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    stopped: list[str] = []
    child_names = [f"c{i:04d}" for i in range(N)]
    tree = Supervisor(
        "app",
        children=[child(Quiet, name=n, kwargs={"stopped": stopped}) for n in child_names],
    )
    with trio.fail_after(60):
        async with open_system(tree) as system:
            assert names(system, "/app") == child_names
            assert all(c.state == "running" for c in system.which_children("/app"))
            assert await system.ref(f"/app/{child_names[-1]}").ask(7) == 7
    assert stopped == child_names[::-1]


async def test_thousand_dynamic_children_started_and_terminated(
    autojump_clock: trio.testing.MockClock,
) -> None:
    stopped: list[str] = []
    child_names = [f"d{i:04d}" for i in range(N)]
    with trio.fail_after(60):
        async with open_system(Supervisor("app")) as system:
            refs = [
                await system.start_child("/app", child(Quiet, name=n, kwargs={"stopped": stopped}))
                for n in child_names
            ]
            assert names(system, "/app") == child_names
            for ref in refs:
                ref.tell("hello")
            await settle()
            kids = system.snapshot().find("/app").children
            assert [node.processed for node in kids] == [1] * N
            for n in child_names[::2]:
                await system.terminate_child(f"/app/{n}")
            assert names(system, "/app") == child_names[1::2]
            assert stopped == child_names[::2]
    # the rest stopped with the system, in reverse start order
    assert stopped[N // 2 :] == child_names[1::2][::-1]
    assert system.snapshot().dead_letters == dict.fromkeys(system.snapshot().dead_letters, 0)


# -- handing queued messages over ---------------------------------------------


class Holder(Actor):
    """Records what it handles; "hold" waits for `gate`; asks get (name, msg) back."""

    def __init__(self, gate: trio.Event, seen: list[Any]) -> None:
        self.gate = gate
        self.seen = seen

    async def receive(self, msg: Any) -> Any:
        if msg == "hold":
            await self.gate.wait()
        self.seen.append((self.ctx.name, msg))
        return (self.ctx.name, msg)


async def test_terminate_child_can_hand_queued_messages_over(
    autojump_clock: trio.abc.Clock,
) -> None:
    """What was queued for a removed actor goes to another, in order, asks with their
    askers; the message in hand is finished first; nothing is dead-lettered."""
    from runtime import Mailbox

    gate = trio.Event()
    seen: list[Any] = []
    tree = Supervisor(
        "app",
        children=[
            child(Holder, name="old", args=(gate, seen), mailbox=Mailbox(capacity=3)),
            child(Holder, name="new", args=(trio.Event(), seen)),
        ],
    )
    async with open_system(tree) as system:
        old = system.ref("/app/old")
        old.tell("hold")
        await trio.testing.wait_all_tasks_blocked()
        old.tell(1)
        answers: list[Any] = []
        async with trio.open_nursery() as nursery:

            async def ask(msg: Any) -> None:
                answers.append(await old.ask(msg, timeout=100))

            nursery.start_soon(ask, 2)
            await trio.testing.wait_all_tasks_blocked()
            old.tell(3)  # full now: the next one waits in the line
            nursery.start_soon(old.send, 4)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(
                lambda: system.terminate_child("/app/old", hand_over_to=system.ref("/app/new"))
            )
            await trio.testing.wait_all_tasks_blocked()
            gate.set()  # the message in hand is finished by the old actor
        assert answers == [("new", 2)]
        assert seen == [("old", "hold"), ("new", 1), ("new", 2), ("new", 3), ("new", 4)]
        assert system.dead_letters.total == 0
        assert [c.name for c in system.which_children("/app")] == ["new"]


async def test_hand_over_to_must_be_an_actor_outside_the_removed_subtree() -> None:
    gate = trio.Event()
    tree = Supervisor(
        "app",
        children=[
            Supervisor("team", children=[child(Holder, name="a", args=(gate, []))]),
            child(Holder, name="b", args=(gate, [])),
        ],
    )
    async with open_system(tree) as system:
        with pytest.raises(ValueError, match="outside its subtree"):
            await system.terminate_child("/app/b", hand_over_to=system.ref("/app/b"))
        with pytest.raises(ValueError, match="outside its subtree"):
            await system.terminate_child("/app/team", hand_over_to=system.ref("/app/team/a"))
        with pytest.raises(TypeError, match="ActorRef"):
            await system.terminate_child("/app/b", hand_over_to="/app/team/a")  # type: ignore[arg-type]
        assert [c.name for c in system.which_children("/app")] == ["team", "b"]

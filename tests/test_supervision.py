"""OTP supervision semantics, after Erlang/OTP's supervisor_SUITE.

Restart types crossed with exits, restart strategies and their sibling
order, start failures, stop order and shutdown timeouts, backoff, the mailbox
and refs across restarts, and children that exit on their own during shutdown.
Restart intensity lives in test_supervision_intensity.py, dynamic children in
test_dynamic_children.py.
"""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
import trio
import trio.testing

from runtime import (
    Actor,
    ActorCrashed,
    ActorNotFound,
    ActorStopped,
    Backoff,
    Supervisor,
    child,
    open_system,
)

# -- helpers -----------------------------------------------------------------


class Boom(Exception):
    """The crash our test actors raise."""


def why(reason: object) -> str:
    """An exit reason as a log entry: 'normal', 'shutdown', 'killed' or 'crash'."""
    return "crash" if isinstance(reason, BaseException) else str(reason)


class Worker(Actor):
    """Logs ("start", name) and ("stop", name, why) into the shared `log`.

    Messages: "ping" -> "pong", "crash" raises Boom, "stop" -> ctx.stop(),
    ("tell", path, msg) forwards msg to another actor; anything else is
    appended to `seen` and echoed back.
    """

    def __init__(self, log: list[Any], seen: list[Any] | None = None) -> None:
        self.log = log
        self.seen = seen if seen is not None else []

    async def on_start(self) -> None:
        self.log.append(("start", self.ctx.name))

    async def on_stop(self, reason: object) -> None:
        self.log.append(("stop", self.ctx.name, why(reason)))

    async def receive(self, msg: Any) -> Any:
        match msg:
            case "ping":
                return "pong"
            case "crash":
                raise Boom(self.ctx.name)
            case "stop":
                self.ctx.stop()
                return "stopping"
            case ("tell", path, inner):
                self.ctx.system.ref(path).tell(inner)
                return None
            case _:
                self.seen.append(msg)
                return msg


class FailsToStart(Actor):
    def __init__(self, log: list[Any]) -> None:
        self.log = log

    async def on_start(self) -> None:
        self.log.append(("start", self.ctx.name))
        raise Boom("cannot start")

    async def on_stop(self, reason: object) -> None:  # pragma: no cover - must not run
        self.log.append(("stop", self.ctx.name, why(reason)))


class HangsOnStop(Worker):
    """Its on_stop never returns; logs ("cancelled", name) when it is cut off."""

    async def on_stop(self, reason: object) -> None:
        self.log.append(("stop", self.ctx.name, why(reason)))
        try:
            await trio.sleep_forever()
        except trio.Cancelled:
            self.log.append(("cancelled", self.ctx.name))
            raise


class StampsStart(Worker):
    """Logs ("start", name, trio.current_time()) so backoff can be checked."""

    async def on_start(self) -> None:
        self.log.append(("start", self.ctx.name, trio.current_time()))


def w(name: str, log: list[Any], **kw: Any) -> Any:
    return child(Worker, name=name, kwargs={"log": log}, **kw)


async def settle() -> None:
    """Let every task run until all are blocked (the clock does not move)."""
    await trio.testing.wait_all_tasks_blocked()


def starts(log: list[Any], name: str) -> int:
    return sum(1 for entry in log if entry[0] == "start" and entry[1] == name)


async def assert_gone(system: Any, ref: Any, path: str) -> None:
    """The slot at `path` is removed for good, as a user sees it."""
    with pytest.raises(ActorNotFound):
        system.ref(path)
    parent = path.rsplit("/", 1)[0]
    assert ref.name not in [c.name for c in system.which_children(parent)]
    assert not ref.is_alive
    stopped = system.snapshot().dead_letters["stopped"]
    ref.tell("hello?")
    assert system.snapshot().dead_letters["stopped"] == stopped + 1
    with pytest.raises(ActorStopped):
        await ref.ask("ping")


# -- restart types x exit reasons -------------------------------------------

RESTARTED = {
    ("permanent", "normal"): True,
    ("permanent", "crash"): True,
    ("permanent", "shutdown"): False,
    ("transient", "normal"): False,
    ("transient", "crash"): True,
    ("transient", "shutdown"): False,
    ("temporary", "normal"): False,
    ("temporary", "crash"): False,
    ("temporary", "shutdown"): False,
}


@pytest.mark.parametrize("exit", ["normal", "shutdown", "crash"])
@pytest.mark.parametrize("restart", ["permanent", "transient", "temporary"])
async def test_restart_type_crossed_with_exit(
    restart: Any, exit: str, autojump_clock: trio.testing.MockClock
) -> None:
    log: list[Any] = []
    tree = Supervisor(
        "app",
        children=[w("first", log), w("w", log, restart=restart), w("last", log)],
    )
    with trio.fail_after(30):
        async with open_system(tree) as system:
            ref = system.ref("/app/w")
            if exit == "normal":
                assert await ref.ask("stop") == "stopping"
            elif exit == "crash":
                with pytest.raises(ActorCrashed):
                    await ref.ask("crash")
            else:
                await system.terminate_child("/app/w")
            await settle()
            assert ("stop", "w", exit) in log

            if RESTARTED[(restart, exit)]:
                assert await ref.ask("ping") == "pong"
                assert starts(log, "w") == 2
                assert system.ref("/app/w") == ref
                assert system.snapshot().find("/app/w").restarts == 1
                assert [c.name for c in system.which_children("/app")] == ["first", "w", "last"]
            elif (restart, exit) == ("transient", "normal"):
                # OTP keeps the spec with no pid: the child keeps its place, stopped
                # (test_otp_semantics.py: a later group restart starts it again)
                assert starts(log, "w") == 1
                assert system.ref("/app/w") == ref
                rows = system.which_children("/app")
                assert [(c.name, c.state) for c in rows][1] == ("w", "stopped")
                assert [c.name for c in rows] == ["first", "w", "last"]
            else:
                await assert_gone(system, ref, "/app/w")
                assert starts(log, "w") == 1
                assert [c.name for c in system.which_children("/app")] == ["first", "last"]
            # one_for_one: the siblings were left alone
            assert starts(log, "first") == starts(log, "last") == 1
            assert await system.ref("/app/last").ask("ping") == "pong"


async def test_on_stop_sees_the_crash_itself(autojump_clock: trio.testing.MockClock) -> None:
    reasons: list[object] = []

    class Keeps(Actor):
        async def on_stop(self, reason: object) -> None:
            reasons.append(reason)

        async def receive(self, msg: Any) -> Any:
            raise Boom(msg)

    async with open_system(Supervisor("app", children=[child(Keeps, name="k")])) as system:
        with pytest.raises(ActorCrashed) as info:
            await system.ref("/app/k").ask("x")
        assert isinstance(info.value.__cause__, Boom)
        await settle()
    assert isinstance(reasons[0], Boom) and reasons[0] is info.value.__cause__
    assert reasons[1:] == ["shutdown"]


# -- strategies: who is restarted, in which order ---------------------------


async def test_one_for_all_restarts_every_sibling_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    tree = Supervisor(
        "app", strategy="one_for_all", children=[w("a", log), w("b", log), w("c", log)]
    )
    async with open_system(tree) as system:
        log.clear()
        system.ref("/app/b").tell("crash")
        for name in "abc":  # every sibling is back and serving
            assert await system.ref(f"/app/{name}").ask("ping") == "pong"
        assert log == [
            ("stop", "b", "crash"),
            ("stop", "c", "shutdown"),  # the others in reverse start order
            ("stop", "a", "shutdown"),
            ("start", "a"),  # then all of them in start order
            ("start", "b"),
            ("start", "c"),
        ]
        assert [system.snapshot().find(f"/app/{n}").restarts for n in "abc"] == [1, 1, 1]


async def test_rest_for_one_restarts_the_rest_in_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    tree = Supervisor(
        "app",
        strategy="rest_for_one",
        children=[w("a", log), w("b", log), w("c", log), w("d", log)],
    )
    async with open_system(tree) as system:
        log.clear()
        system.ref("/app/b").tell("crash")
        for name in "abcd":
            assert await system.ref(f"/app/{name}").ask("ping") == "pong"
        assert log == [
            ("stop", "b", "crash"),
            ("stop", "d", "shutdown"),
            ("stop", "c", "shutdown"),
            ("start", "b"),
            ("start", "c"),
            ("start", "d"),
        ]
        assert [system.snapshot().find(f"/app/{n}").restarts for n in "abcd"] == [0, 1, 1, 1]

        # the last child drags nobody along
        log.clear()
        system.ref("/app/d").tell("crash")
        assert await system.ref("/app/d").ask("ping") == "pong"
        assert log == [("stop", "d", "crash"), ("start", "d")]


async def test_one_for_one_restarts_only_the_failed_child(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    tree = Supervisor("app", children=[w("a", log), w("b", log), w("c", log)])
    async with open_system(tree) as system:
        log.clear()
        system.ref("/app/b").tell("crash")
        assert await system.ref("/app/b").ask("ping") == "pong"
        assert log == [("stop", "b", "crash"), ("start", "b")]


async def test_one_for_all_restarts_a_sibling_supervisor_with_its_subtree(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    tree = Supervisor(
        "app",
        strategy="one_for_all",
        children=[
            w("a", log),
            Supervisor("inner", children=[w("x", log), w("y", log)]),
            w("c", log),
        ],
    )
    async with open_system(tree) as system:
        x = system.ref("/app/inner/x")
        log.clear()
        system.ref("/app/c").tell("crash")
        await settle()
        assert await x.ask("ping") == "pong"
        assert log == [
            ("stop", "c", "crash"),
            ("stop", "y", "shutdown"),
            ("stop", "x", "shutdown"),
            ("stop", "a", "shutdown"),
            ("start", "a"),
            ("start", "x"),
            ("start", "y"),
            ("start", "c"),
        ]
        assert system.snapshot().find("/app/inner").restarts == 1
        assert system.snapshot().find("/app/inner/x").restarts == 0  # a new subtree


@pytest.mark.parametrize("strategy", ["one_for_all", "rest_for_one"])
async def test_temporary_bystander_is_never_restarted(
    strategy: Any, autojump_clock: trio.testing.MockClock
) -> None:
    """OTP temporary_bystander: a temporary sibling stopped by a group restart is
    removed, not restarted; permanent and transient bystanders come back."""
    log: list[Any] = []
    tree = Supervisor(
        "app",
        strategy=strategy,
        children=[
            w("failing", log),
            w("temp", log, restart="temporary"),
            w("trans", log, restart="transient"),
            w("perm", log),
        ],
    )
    async with open_system(tree) as system:
        temp = system.ref("/app/temp")
        log.clear()
        system.ref("/app/failing").tell("crash")
        for name in ("failing", "trans", "perm"):
            assert await system.ref(f"/app/{name}").ask("ping") == "pong"
        await settle()
        assert ("stop", "temp", "shutdown") in log
        assert starts(log, "temp") == 0
        assert [c.name for c in system.which_children("/app")] == ["failing", "trans", "perm"]
        assert log[-3:] == [("start", "failing"), ("start", "trans"), ("start", "perm")]
        await assert_gone(system, temp, "/app/temp")


async def test_temporary_child_that_crashes_leaves_siblings_alone(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A temporary child is not restarted, so its crash restarts nobody else either."""
    log: list[Any] = []
    tree = Supervisor(
        "app",
        strategy="one_for_all",
        children=[w("a", log), w("temp", log, restart="temporary"), w("c", log)],
    )
    async with open_system(tree) as system:
        log.clear()
        system.ref("/app/temp").tell("crash")
        await settle()
        assert log == [("stop", "temp", "crash")]
        assert [c.name for c in system.which_children("/app")] == ["a", "c"]


# -- start failures -----------------------------------------------------------


async def test_child_failing_to_start_aborts_supervisor_start(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    body_ran = False
    tree = Supervisor(
        "app",
        children=[
            w("a", log),
            w("b", log),
            child(FailsToStart, name="bad", kwargs={"log": log}),
            w("never", log),
        ],
    )
    with trio.fail_after(30), pytest.raises(Boom, match="cannot start"):
        async with open_system(tree):
            body_ran = True
    assert not body_ran
    assert log == [
        ("start", "a"),
        ("start", "b"),
        ("start", "bad"),
        ("stop", "b", "shutdown"),  # the ones already started, in reverse order
        ("stop", "a", "shutdown"),
    ]


async def test_start_failure_deep_in_the_tree_aborts_every_level(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    tree = Supervisor(
        "app",
        children=[
            w("a", log),
            Supervisor(
                "inner",
                children=[w("b", log), child(FailsToStart, name="bad", kwargs={"log": log})],
            ),
            w("never", log),
        ],
    )
    with trio.fail_after(30), pytest.raises(Boom):
        async with open_system(tree):
            pytest.fail("the body must not run")  # pragma: no cover
    assert log == [
        ("start", "a"),
        ("start", "b"),
        ("start", "bad"),
        ("stop", "b", "shutdown"),
        ("stop", "a", "shutdown"),
    ]


# -- start order, stop order, shutdown timeouts ------------------------------


async def test_start_in_order_and_stop_in_reverse_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    tree = Supervisor(
        "app",
        children=[
            w("a", log),
            Supervisor("inner", children=[w("b1", log), w("b2", log)]),
            w("c", log),
        ],
    )
    with trio.fail_after(30):
        async with open_system(tree) as system:
            assert log == [("start", "a"), ("start", "b1"), ("start", "b2"), ("start", "c")]
            assert [c.name for c in system.which_children("/app")] == ["a", "inner", "c"]
            log.clear()
    assert log == [
        ("stop", "c", "shutdown"),
        ("stop", "b2", "shutdown"),
        ("stop", "b1", "shutdown"),
        ("stop", "a", "shutdown"),
    ]


async def test_hanging_on_stop_is_cancelled_after_its_shutdown_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    tree = Supervisor(
        "app",
        children=[
            w("a", log),
            child(HangsOnStop, name="hang", kwargs={"log": log}, shutdown=2.0),
            w("c", log),
        ],
    )
    with trio.fail_after(60):
        async with open_system(tree):
            log.clear()
    # the supervisor waited for the hanging child to be cut off before going on
    assert log == [
        ("stop", "c", "shutdown"),
        ("stop", "hang", "shutdown"),
        ("cancelled", "hang"),
        ("stop", "a", "shutdown"),
    ]


async def test_hanging_on_stop_after_a_crash_does_not_block_the_restart(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    tree = Supervisor(
        "app", children=[child(HangsOnStop, name="hang", kwargs={"log": log}, shutdown=2.0)]
    )
    with trio.fail_after(60):
        async with open_system(tree) as system:
            ref = system.ref("/app/hang")
            ref.tell("crash")
            assert await ref.ask("ping", timeout=30) == "pong"
            assert log == [
                ("start", "hang"),
                ("stop", "hang", "crash"),
                ("cancelled", "hang"),
                ("start", "hang"),
            ]


async def test_supervisor_waits_for_its_children_to_stop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Supervisors default to no shutdown timeout: the parent waits for the whole
    subtree, including a grandchild that needs its full timeout."""
    log: list[Any] = []
    tree = Supervisor(
        "app",
        children=[
            w("a", log),
            Supervisor(
                "inner",
                children=[
                    child(HangsOnStop, name="hang", kwargs={"log": log}, shutdown=10.0),
                    w("b", log),
                ],
            ),
        ],
    )
    with trio.fail_after(60):
        async with open_system(tree):
            log.clear()
    assert log == [
        ("stop", "b", "shutdown"),
        ("stop", "hang", "shutdown"),
        ("cancelled", "hang"),
        ("stop", "a", "shutdown"),
    ]


async def test_supervisor_shutdown_timeout_cuts_off_its_subtree(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A supervisor given a shutdown timeout is cancelled with everything under it,
    even a child that would wait for ever (shutdown=None)."""
    log: list[Any] = []
    tree = Supervisor(
        "app",
        children=[
            w("a", log),
            Supervisor(
                "inner",
                shutdown=1.0,
                children=[child(HangsOnStop, name="hang", kwargs={"log": log}, shutdown=None)],
            ),
        ],
    )
    with trio.fail_after(600):  # only inner's timeout can end the hang
        async with open_system(tree):
            log.clear()
    assert log == [
        ("stop", "hang", "shutdown"),
        ("cancelled", "hang"),
        ("stop", "a", "shutdown"),
    ]


async def test_stop_waits_for_the_message_in_hand(autojump_clock: trio.testing.MockClock) -> None:
    log: list[Any] = []

    class Slow(Worker):
        async def receive(self, msg: Any) -> Any:
            if msg == "work":
                self.log.append(("working",))
                await trio.sleep(1.0)
                self.log.append(("done",))
                return None
            return await super().receive(msg)

    tree = Supervisor("app", children=[child(Slow, name="slow", kwargs={"log": log})])
    with trio.fail_after(30):
        async with open_system(tree) as system:
            system.ref("/app/slow").tell("work")
            await settle()
            assert log[-1] == ("working",)
    assert log[-2:] == [("done",), ("stop", "slow", "shutdown")]


async def test_message_in_hand_past_the_shutdown_timeout_is_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []

    class Stuck(Worker):
        async def receive(self, msg: Any) -> Any:
            self.log.append(("working",))
            await trio.sleep_forever()

    tree = Supervisor(
        "app",
        children=[
            w("a", log),
            child(Stuck, name="stuck", kwargs={"log": log}, shutdown=1.0),
        ],
    )
    with trio.fail_after(30):
        async with open_system(tree) as system:
            system.ref("/app/stuck").tell("work")
            await settle()
            log.clear()
        assert system.snapshot().dead_letters["stopped"] == 1  # the message it never finished
    assert log == [("stop", "a", "shutdown")]  # stuck's on_stop was cut off with it


# -- backoff ------------------------------------------------------------------


async def test_backoff_delays_the_restart_and_messages_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    seen: list[Any] = []
    tree = Supervisor(
        "app",
        backoff=Backoff(min=2.0, max=30.0, jitter=0.5),
        children=[child(StampsStart, name="b", kwargs={"log": log, "seen": seen})],
    )
    with trio.fail_after(120):
        async with open_system(tree) as system:
            ref = system.ref("/app/b")
            crashed_at = trio.current_time()
            ref.tell("crash")
            for i in range(3):
                ref.tell(i)  # queued while the restart is pending
            await settle()
            assert system.snapshot().find("/app/b").state == "restarting"
            assert seen == []
            assert await ref.ask("ping") == "pong"
            assert seen == [0, 1, 2]
            first_restart = log[-1][2]
            assert first_restart >= crashed_at + 2.0

            # the second restart in the window waits longer (exponential)
            crashed_at = trio.current_time()
            ref.tell("crash")
            assert await ref.ask("ping", timeout=60) == "pong"
            assert log[-1][2] >= crashed_at + 4.0
            assert starts(log, "b") == 3


async def test_stopping_during_a_backoff_does_not_wait_for_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    tree = Supervisor(
        "app",
        backoff=Backoff(min=1000.0, max=1000.0, jitter=0.0),
        children=[w("a", log), w("b", log)],
    )
    with trio.fail_after(100):
        async with open_system(tree) as system:
            system.ref("/app/b").tell("crash")
            system.ref("/app/b").tell("queued")
            await settle()
            log.clear()
        assert system.snapshot().dead_letters["stopped"] == 1
    assert log == [("stop", "a", "shutdown")]  # b was never restarted


# -- the mailbox and refs across restarts -----------------------------------


async def test_mailbox_survives_a_crash(autojump_clock: trio.testing.MockClock) -> None:
    log: list[Any] = []
    seen: list[Any] = []
    tree = Supervisor("app", children=[child(Worker, name="m", kwargs={"log": log, "seen": seen})])
    async with open_system(tree) as system:
        ref = system.ref("/app/m")
        ref.tell(1)
        ref.tell("crash")
        ref.tell(2)
        ref.tell(3)
        assert await ref.ask(4) == 4
        assert seen == [1, 2, 3, 4]
        assert starts(log, "m") == 2
        assert system.snapshot().dead_letters["crashed"] == 1
        assert system.snapshot().find("/app/m").failed == 1


class Slow(Worker):
    """Takes a second over "work"."""

    async def receive(self, msg: Any) -> Any:
        if msg == "work":
            await trio.sleep(1.0)
            self.seen.append(msg)
            return None
        return await super().receive(msg)


async def test_bystander_finishes_its_message_and_keeps_its_mailbox(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    seen: list[Any] = []
    tree = Supervisor(
        "app",
        strategy="one_for_all",
        children=[child(Slow, name="slow", kwargs={"log": log, "seen": seen}), w("b", log)],
    )
    async with open_system(tree) as system:
        slow = system.ref("/app/slow")
        slow.tell("work")
        await settle()  # slow is now busy with "work"
        for i in range(3):
            slow.tell(i)
        system.ref("/app/b").tell("crash")
        assert await slow.ask("ping") == "pong"
        await settle()
        assert seen == ["work", 0, 1, 2]
        # the group restart came while "work" was in hand: slow finished it first
        assert log == [
            ("start", "slow"),
            ("start", "b"),
            ("stop", "b", "crash"),
            ("stop", "slow", "shutdown"),
            ("start", "slow"),
            ("start", "b"),
        ]
        assert system.snapshot().dead_letters["stopped"] == 0
        assert system.snapshot().dead_letters["crashed"] == 1


async def test_refs_stay_valid_across_restarts_of_actor_and_supervisor(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    tree = Supervisor(
        "app",
        children=[
            Supervisor("inner", max_restarts=0, children=[w("x", log), w("y", log)]),
        ],
    )
    async with open_system(tree) as system:
        x = system.ref("/app/inner/x")
        y = system.ref("/app/inner/y")
        inner = system.ref("/app/inner")
        # inner gives up at the first crash: /app restarts the whole subtree
        x.tell("crash")
        y.tell("queued for the next incarnation")
        assert await x.ask("ping") == "pong"
        assert await y.ask("ping") == "pong"
        assert starts(log, "x") == starts(log, "y") == 2
        assert system.snapshot().find("/app/inner").restarts == 1
        assert system.ref("/app/inner/x") == x and x.is_alive
        assert system.ref("/app/inner") == inner and inner.is_alive
        assert system.snapshot().dead_letters["stopped"] == 0


# -- children that exit on their own during shutdown -------------------------


class Farewell(Worker):
    """On stop, asks another actor to "stop" or "crash" and waits until it has."""

    def __init__(self, log: list[Any], target: str, parting: str) -> None:
        super().__init__(log)
        self.target = target
        self.parting = parting

    async def on_stop(self, reason: object) -> None:
        await super().on_stop(reason)
        with contextlib.suppress(ActorCrashed):
            await self.ctx.system.ref(self.target).ask(self.parting)


@pytest.mark.parametrize("strategy", ["one_for_one", "one_for_all", "rest_for_one"])
@pytest.mark.parametrize("parting", ["stop", "crash"])
async def test_children_exiting_on_their_own_during_shutdown(
    strategy: Any, parting: str, autojump_clock: trio.testing.MockClock
) -> None:
    """While the supervisor stops c then b, b's farewell makes a exit by itself;
    the supervisor neither restarts a nor hangs nor fails."""
    log: list[Any] = []
    tree = Supervisor(
        "app",
        strategy=strategy,
        children=[
            w("a", log),
            child(Farewell, name="b", kwargs={"log": log, "target": "/app/a", "parting": parting}),
            w("c", log),
        ],
    )
    with trio.fail_after(30):
        async with open_system(tree):
            log.clear()
    expected = "normal" if parting == "stop" else "crash"
    assert log == [("stop", "c", "shutdown"), ("stop", "b", "shutdown"), ("stop", "a", expected)]


class StopsEarlierSiblings(Worker):
    """On stop, tells every earlier sibling to stop itself."""

    def __init__(self, log: list[Any], earlier: list[str]) -> None:
        super().__init__(log)
        self.earlier = earlier

    async def on_stop(self, reason: object) -> None:
        await super().on_stop(reason)
        for path in self.earlier:
            self.ctx.system.ref(path).tell("stop")


@pytest.mark.parametrize("strategy", ["one_for_one", "one_for_all", "rest_for_one"])
async def test_many_children_exit_together_while_supervisor_stops(
    strategy: Any, autojump_clock: trio.testing.MockClock
) -> None:
    log: list[Any] = []
    names = [f"n{i}" for i in range(10)]
    tree = Supervisor(
        "app",
        strategy=strategy,
        children=[
            child(
                StopsEarlierSiblings,
                name=name,
                kwargs={"log": log, "earlier": [f"/app/{n}" for n in names[:i]]},
                restart=("permanent", "transient", "temporary")[i % 3],
            )
            for i, name in enumerate(names)
        ],
    )
    with trio.fail_after(30):
        async with open_system(tree):
            log.clear()
    # the last child was stopped by the supervisor; the others stopped themselves
    # (or were stopped first); nobody was restarted, nobody stopped twice
    assert log[0] == ("stop", "n9", "shutdown")
    assert sorted(entry[1] for entry in log) == sorted(names)
    assert all(entry[0] == "stop" and entry[2] in ("normal", "shutdown") for entry in log)


async def test_unhandled_user_message_to_a_supervisor_is_dead_lettered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    async with open_system(Supervisor("app", children=[w("a", log)])) as system:
        system.ref("/app").tell("hello")
        await settle()
        assert system.snapshot().dead_letters["unhandled"] == 1
        assert await system.ref("/app/a").ask("ping") == "pong"

"""Restart intensity and escalation, after Erlang/OTP's supervisor_SUITE.

More than `max_restarts` restarts within `within` seconds make a supervisor
stop all its children (reverse start order) and fail with
`RestartIntensityExceeded`; its parent handles that as OTP's `shutdown` exit
(only a permanent child supervisor is restarted), and at the root
`open_system` raises it.  All timing runs on trio's autojump clock.
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
import trio
import trio.testing

import runtime
from runtime import (
    Actor,
    ActorNotFound,
    Backoff,
    RestartIntensityExceeded,
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
    """Logs ("start", name) / ("stop", name, why); "crash" raises, "ping" -> "pong".

    `fail_starts` (shared across incarnations) lists which of its starts, counted
    from 1, raise in on_start.
    """

    def __init__(
        self,
        log: list[Any],
        fail_starts: tuple[int, ...] = (),
        count: dict[str, int] | None = None,
    ) -> None:
        assert count is not None or not fail_starts, "fail_starts needs a shared count"
        self.log = log
        self.fail_starts = fail_starts
        self.count = count if count is not None else {}

    async def on_start(self) -> None:
        n = self.count["starts"] = self.count.get("starts", 0) + 1
        self.log.append(("start", self.ctx.name))
        if n in self.fail_starts:
            raise Boom(f"{self.ctx.name} start #{n}")

    async def on_stop(self, reason: object) -> None:
        self.log.append(("stop", self.ctx.name, why(reason)))

    async def receive(self, msg: Any) -> Any:
        if msg == "crash":
            raise Boom(self.ctx.name)
        if msg == "ping":
            return "pong"
        return msg


def w(name: str, log: list[Any], **kw: Any) -> Any:
    return child(Worker, name=name, kwargs={"log": log}, **kw)


async def settle() -> None:
    await trio.testing.wait_all_tasks_blocked()


async def crash(system: Any, path: str) -> None:
    """Crash the actor at `path` once and wait until its supervisor has dealt with it."""
    system.ref(path).tell("crash")
    await settle()


def starts(log: list[Any], name: str) -> int:
    return sum(1 for entry in log if entry[0] == "start" and entry[1] == name)


# -- intensity exceeded, per strategy ----------------------------------------


@pytest.mark.parametrize("strategy", ["one_for_one", "one_for_all", "rest_for_one"])
async def test_intensity_exceeded_stops_children_and_fails_the_root(
    strategy: Any, autojump_clock: trio.testing.MockClock
) -> None:
    log: list[Any] = []
    body: list[str] = []
    tree = Supervisor(
        "app",
        strategy=strategy,
        max_restarts=2,
        within=10.0,
        children=[w("a", log), w("b", log), w("c", log)],
    )
    with trio.fail_after(60), pytest.raises(RestartIntensityExceeded) as info:
        async with open_system(tree) as system:
            try:
                for _ in range(3):
                    await crash(system, "/app/b")
                await trio.sleep_forever()
            except trio.Cancelled:
                body.append("cancelled")
                raise
            body.append("not reached")  # pragma: no cover

    error = info.value
    assert type(error) is RestartIntensityExceeded  # not wrapped in an exception group
    assert error.path == "/app"
    assert (error.max_restarts, error.within) == (2, 10.0)
    assert isinstance(error.__cause__, Boom)
    assert body == ["cancelled"]
    # after the third crash nothing was restarted; the rest stopped in reverse order
    last_crash = max(i for i, e in enumerate(log) if e == ("stop", "b", "crash"))
    assert log[last_crash + 1 :] == [("stop", "c", "shutdown"), ("stop", "a", "shutdown")]
    assert starts(log, "b") == 3


async def test_exactly_max_restarts_is_tolerated(autojump_clock: trio.testing.MockClock) -> None:
    log: list[Any] = []
    progress: list[str] = []
    tree = Supervisor("app", max_restarts=3, within=10.0, children=[w("a", log)])
    with trio.fail_after(30), pytest.raises(RestartIntensityExceeded):
        async with open_system(tree) as system:
            for _ in range(3):
                await crash(system, "/app/a")
            assert await system.ref("/app/a").ask("ping") == "pong"
            assert system.snapshot().find("/app/a").restarts == 3
            progress.append("three restarts tolerated")
            await crash(system, "/app/a")
            pytest.fail("the fourth restart in the window must escalate")  # pragma: no cover
    assert progress == ["three restarts tolerated"]
    assert starts(log, "a") == 4


async def test_max_restarts_zero_gives_up_at_the_first_crash(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    tree = Supervisor("app", max_restarts=0, children=[w("a", log), w("b", log)])
    with trio.fail_after(30), pytest.raises(RestartIntensityExceeded):
        async with open_system(tree) as system:
            system.ref("/app/b").tell("crash")
            await trio.sleep_forever()
    assert log == [
        ("start", "a"),
        ("start", "b"),
        ("stop", "b", "crash"),
        ("stop", "a", "shutdown"),
    ]


async def test_intensity_counts_restarts_of_all_children_together(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    tree = Supervisor(
        "app", max_restarts=2, within=10.0, children=[w("a", log), w("b", log), w("c", log)]
    )
    with trio.fail_after(30), pytest.raises(RestartIntensityExceeded) as info:
        async with open_system(tree) as system:
            await crash(system, "/app/a")
            await crash(system, "/app/b")
            await crash(system, "/app/c")  # each crashed once, but three in the window
            pytest.fail("the third restart must escalate")  # pragma: no cover
    assert "/app/c" in str(info.value)  # the last failure is named
    assert [starts(log, n) for n in "abc"] == [2, 2, 1]


async def test_restarts_spaced_beyond_the_window_do_not_escalate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    tree = Supervisor("app", max_restarts=1, within=5.0, children=[w("a", log)])
    with trio.fail_after(300):
        async with open_system(tree) as system:
            for _ in range(6):
                await crash(system, "/app/a")
                assert await system.ref("/app/a").ask("ping") == "pong"
                await trio.sleep(5.5)
            assert system.snapshot().find("/app/a").restarts == 6
    assert starts(log, "a") == 7


async def test_the_window_slides(autojump_clock: trio.testing.MockClock) -> None:
    """max 2 within 10s: crashes at t=0, 6, 12 are fine (never more than two in
    any 10 s); one more at t=13 makes three within 10 s (6, 12, 13)."""
    log: list[Any] = []
    tree = Supervisor("app", max_restarts=2, within=10.0, children=[w("a", log)])
    survived: list[float] = []
    with trio.fail_after(300), pytest.raises(RestartIntensityExceeded):
        async with open_system(tree) as system:
            t0 = trio.current_time()
            for at in (0.0, 6.0, 12.0):
                await trio.sleep_until(t0 + at)
                await crash(system, "/app/a")
                assert await system.ref("/app/a").ask("ping") == "pong"
                survived.append(at)
            assert system.snapshot().find("/app/a").restarts == 3
            await trio.sleep_until(t0 + 13.0)
            await crash(system, "/app/a")
            pytest.fail("three restarts within 10 s must escalate")  # pragma: no cover
    assert survived == [0.0, 6.0, 12.0]


# -- failed restarts count ---------------------------------------------------


async def test_failed_restart_counts_toward_intensity(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    tree = Supervisor(
        "app",
        max_restarts=2,
        within=10.0,
        children=[child(Worker, name="a", kwargs={"log": log, "fail_starts": (2,), "count": {}})],
    )
    progress: list[str] = []
    with trio.fail_after(30), pytest.raises(RestartIntensityExceeded):
        async with open_system(tree) as system:
            a = system.ref("/app/a")
            await crash(system, "/app/a")  # restart 1 fails in on_start, restart 2 works
            assert await a.ask("ping") == "pong"
            assert starts(log, "a") == 3
            progress.append("restarted after a failed restart")
            # one more crash is only the second *crash*, but the third restart
            await crash(system, "/app/a")
            pytest.fail("the failed restart must have counted")  # pragma: no cover
    assert progress == ["restarted after a failed restart"]
    # on_stop never runs for the incarnation whose on_start failed
    assert [e for e in log if e[0] == "stop"] == [("stop", "a", "crash"), ("stop", "a", "crash")]


async def test_child_that_never_restarts_exhausts_intensity(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    count: dict[str, int] = {}
    tree = Supervisor(
        "app",
        max_restarts=3,
        within=10.0,
        children=[
            w("first", log),
            child(
                Worker,
                name="a",
                kwargs={"log": log, "fail_starts": tuple(range(2, 100)), "count": count},
            ),
        ],
    )
    with trio.fail_after(30), pytest.raises(RestartIntensityExceeded) as info:
        async with open_system(tree) as system:
            system.ref("/app/a").tell("crash")
            await trio.sleep_forever()
    assert count["starts"] == 1 + 3  # the first start and max_restarts failed restarts
    assert isinstance(info.value.__cause__, Boom)
    assert log[-1] == ("stop", "first", "shutdown")


async def test_failed_restarts_back_off(autojump_clock: trio.testing.MockClock) -> None:
    times: list[float] = []

    class Stamped(Worker):
        async def on_start(self) -> None:
            times.append(trio.current_time())
            await super().on_start()

    log: list[Any] = []
    tree = Supervisor(
        "app",
        max_restarts=5,
        within=1000.0,
        backoff=Backoff(min=1.0, max=100.0, jitter=0.0),
        children=[
            child(Stamped, name="a", kwargs={"log": log, "fail_starts": (2, 3, 4), "count": {}})
        ],
    )
    with trio.fail_after(300):
        async with open_system(tree) as system:
            system.ref("/app/a").tell("crash")
            assert await system.ref("/app/a").ask("ping", timeout=100) == "pong"
    assert len(times) == 5  # the first start, three failed restarts, one that works
    gaps = [later - earlier for earlier, later in itertools.pairwise(times[1:])]
    assert all(gap >= 1.0 for gap in gaps)
    assert gaps[0] < gaps[1] < gaps[2]  # each failed restart waits longer


# -- escalation through nested supervisors -----------------------------------


def nested(log: list[Any], *, inner_restart: Any = "permanent") -> Supervisor:
    return Supervisor(
        "app",
        max_restarts=1,
        within=100.0,
        children=[
            w("top", log),
            Supervisor(
                "inner",
                max_restarts=1,
                within=100.0,
                restart=inner_restart,
                children=[w("x", log), w("y", log)],
            ),
        ],
    )


async def test_escalation_restarts_the_child_supervisor_and_its_children(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    async with open_system(nested(log)) as system:
        x = system.ref("/app/inner/x")
        await crash(system, "/app/inner/x")  # inner restarts x
        log.clear()
        await crash(system, "/app/inner/x")  # inner gives up; /app restarts inner
        assert await x.ask("ping") == "pong"
        assert log == [
            ("stop", "x", "crash"),
            ("stop", "y", "shutdown"),
            ("start", "x"),
            ("start", "y"),
        ]
        snap = system.snapshot()
        assert snap.find("/app/inner").restarts == 1
        error = snap.find("/app/inner").last_error
        assert error is not None and error.type == "RestartIntensityExceeded"
        assert snap.find("/app/top").restarts == 0
        assert starts(log, "top") == 0


async def test_the_system_keeps_the_last_escalations_whatever_the_history(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Escalations are the system's own record (health reads it), not the bus's
    history: kept with ``history=0``, newest first, the last `ESCALATIONS_KEPT`."""
    log: list[Any] = []
    tree = Supervisor(
        "app",
        max_restarts=100,
        within=100.0,
        children=[Supervisor("inner", max_restarts=0, within=1.0, children=[w("x", log)])],
    )
    kept = runtime.system.ESCALATIONS_KEPT
    with trio.fail_after(60):
        async with open_system(tree, history=0) as system:
            assert system.escalations() == []
            for _ in range(kept + 2):  # inner gives up each time; /app restarts it
                await crash(system, "/app/inner/x")
            assert system.snapshot().find("/app/inner").restarts == kept + 2
            assert system.bus.history(">") == []
            escalations = system.escalations()
    assert len(escalations) == kept
    assert all(isinstance(e, runtime.Escalation) for e in escalations)
    assert {e.path for e in escalations} == {"/app/inner"}
    assert "RestartIntensityExceeded" not in escalations[0].error  # the text of the error
    assert "/app/inner/x: Boom" in escalations[0].error
    times = [e.at for e in escalations]
    assert times == sorted(times, reverse=True)  # newest first
    assert system.escalations(since=times[0] + 1) == []
    assert system.escalations(since=times[0]) == [e for e in escalations if e.at >= times[0]]


async def test_restarted_supervisor_starts_with_a_fresh_restart_history(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """As in OTP, a supervisor's restart history belongs to its incarnation: once
    /app restarted inner, inner tolerates max_restarts again."""
    log: list[Any] = []
    async with open_system(nested(log)) as system:
        await crash(system, "/app/inner/x")
        await crash(system, "/app/inner/x")  # inner gave up and was restarted
        assert system.snapshot().find("/app/inner").restarts == 1
        await crash(system, "/app/inner/x")  # inner's first restart of this incarnation
        assert await system.ref("/app/inner/x").ask("ping") == "pong"
        assert system.snapshot().find("/app/inner").restarts == 1


async def test_parent_gives_up_too_and_the_failure_reaches_the_root(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    progress: list[str] = []
    with trio.fail_after(60), pytest.raises(RestartIntensityExceeded) as info:
        async with open_system(nested(log)) as system:
            for rnd in range(2):  # inner gives up twice; /app tolerates only one restart
                await crash(system, "/app/inner/x")
                progress.append(f"inner restarted x in round {rnd}")
                await crash(system, "/app/inner/x")
            pytest.fail("/app must have given up")  # pragma: no cover
    assert progress == ["inner restarted x in round 0", "inner restarted x in round 1"]
    outer = info.value
    assert outer.path == "/app"
    inner = outer.__cause__
    assert isinstance(inner, RestartIntensityExceeded) and inner.path == "/app/inner"
    assert isinstance(inner.__cause__, Boom)
    # /app stopped what was left in reverse order: inner's children, then top
    assert log[-3:] == [
        ("stop", "x", "crash"),
        ("stop", "y", "shutdown"),
        ("stop", "top", "shutdown"),
    ]
    assert starts(log, "top") == 1


async def test_temporary_child_supervisor_that_gives_up_is_removed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    async with open_system(nested(log, inner_restart="temporary")) as system:
        await crash(system, "/app/inner/x")
        await crash(system, "/app/inner/x")
        for path in ("/app/inner", "/app/inner/x", "/app/inner/y"):
            with pytest.raises(ActorNotFound):
                system.ref(path)
        assert [c.name for c in system.which_children("/app")] == ["top"]
        assert await system.ref("/app/top").ask("ping") == "pong"


async def test_transient_child_supervisor_that_gives_up_is_removed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A supervisor that gives up exits as OTP's does, with `shutdown`: a transient
    one is not restarted but removed (see also test_otp_semantics.py)."""
    log: list[Any] = []
    async with open_system(nested(log, inner_restart="transient")) as system:
        await crash(system, "/app/inner/x")
        await crash(system, "/app/inner/x")
        for path in ("/app/inner", "/app/inner/x", "/app/inner/y"):
            with pytest.raises(ActorNotFound):
                system.ref(path)
        assert [c.name for c in system.which_children("/app")] == ["top"]
        assert await system.ref("/app/top").ask("ping") == "pong"


# -- the blocking entry point ---------------------------------------------------


class CrashesSoon(Actor):
    """Crashes by itself right after every start (a background task fails)."""

    async def on_start(self) -> None:
        self.ctx.nursery.start_soon(self._fail)

    async def _fail(self) -> None:
        raise Boom("background task failed")


def test_run_raises_restart_intensity_exceeded() -> None:
    tree = Supervisor("app", max_restarts=2, children=[child(CrashesSoon, name="c")])
    with pytest.raises(RestartIntensityExceeded) as info:
        runtime.run(tree)
    assert type(info.value) is RestartIntensityExceeded
    assert info.value.path == "/app"


@pytest.mark.parametrize("since", [math.nan, "yesterday", True, [1.0]])
async def test_escalations_refuse_a_since_that_is_not_a_time(since: Any) -> None:
    """As `bus.history(since=...)` does (found by attack: NaN returned nothing, a
    string raised TypeError only once an escalation was kept)."""
    async with open_system(Supervisor("app", children=[w("x", [])])) as system:
        with pytest.raises(ValueError, match="since must be a timestamp"):
            system.bus.history(since=since)
        with pytest.raises(ValueError, match="since must be a timestamp"):
            system.escalations(since=since)

"""OTP supervision, exactly: the cases where Troupe and OTP's supervisor once differed.

- siblings that crash together in a group restart count as one restart (their
  exits are absorbed into the restart that stopped them);
- the intensity window includes a restart exactly `within` seconds old;
- exits that arrive before a pending group restart has run are merged into it,
  so the children always start in the order of `children`;
- a `transient` child that exited normally keeps its place and is started again
  by a later group restart that covers it;
- a supervisor that gives up counts for its parent as OTP's ``shutdown`` exit.

Then a small reference model of those rules is compared with one supervisor on
random sequences of crashes (several at once, too), normal exits and waits.

Every test runs on trio's autojump clock; none asserts on a duration.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_supervision import Boom, why

from runtime import (
    Actor,
    ActorNotFound,
    Backoff,
    Event,
    RestartIntensityExceeded,
    Supervisor,
    child,
    open_system,
)
from runtime.testing import crash

# -- helpers -----------------------------------------------------------------


class Worker(Actor):
    """Logs ("start", name) and ("stop", name, why) into the shared `log`.

    "crash" raises Boom, "stop" calls ctx.stop(), "ping" -> "pong".  With
    `farewell=(path, msg)`, its first on_stop tells `msg` to `path` and then
    lingers a second, so that the other actor acts on it while this one is
    still being stopped (once per test: `once` is shared).
    """

    def __init__(
        self,
        log: list[Any],
        farewell: tuple[str, str] | None = None,
        once: dict[str, bool] | None = None,
    ) -> None:
        self.log = log
        self.farewell = farewell
        self.once = once if once is not None else {}

    async def on_start(self) -> None:
        self.log.append(("start", self.ctx.name))

    async def on_stop(self, reason: object) -> None:
        self.log.append(("stop", self.ctx.name, why(reason)))
        if self.farewell is not None and not self.once.get("done"):
            self.once["done"] = True
            path, msg = self.farewell
            self.ctx.system.ref(path).tell(msg)
            await trio.sleep(1.0)

    async def receive(self, msg: Any) -> Any:
        match msg:
            case "crash":
                raise Boom(self.ctx.name)
            case "stop":
                self.ctx.stop()
                return "stopping"
            case "ping":
                return "pong"
            case Event(topic="boom"):
                raise Boom(f"{self.ctx.name} on the event")
        return msg


class Listener(Worker):
    """A worker that crashes on the event ``boom``."""

    subscriptions = ("boom",)


def w(name: str, log: list[Any], **kw: Any) -> Any:
    return child(Worker, name=name, kwargs={"log": log}, **kw)


def farewell(name: str, log: list[Any], path: str, msg: str, **kw: Any) -> Any:
    """A worker whose first on_stop tells `msg` to `path` (see `Worker`)."""
    return child(Worker, name=name, kwargs={"log": log, "farewell": (path, msg), "once": {}}, **kw)


async def settle() -> None:
    """Let every task run until all are blocked (the clock does not move)."""
    await trio.testing.wait_all_tasks_blocked()


def started(log: list[Any]) -> list[str]:
    return [entry[1] for entry in log if entry[0] == "start"]


async def all_answer(system: Any, parent: str, names: str) -> None:
    for name in names:
        assert await system.ref(f"{parent}/{name}").ask("ping") == "pong"


def escalations(system: Any) -> list[str]:
    events = system.bus.history("system.supervisor.escalated", limit=100)
    return sorted(e.payload["path"] for e in events)


# -- one incident is one restart -------------------------------------------------


@pytest.mark.parametrize("strategy", ["one_for_all", "rest_for_one"])
async def test_sibling_that_crashed_while_being_stopped_is_absorbed(
    strategy: Any, autojump_clock: trio.testing.MockClock
) -> None:
    """a crashes; while the supervisor stops c as a bystander, c's on_stop makes b
    crash, and b's ChildExited is queued before the supervisor reaches b.  OTP
    absorbs b's exit into the restart that stops it: one restart, so
    max_restarts=1 survives, and every child starts once more, in order."""
    log: list[Any] = []
    tree = Supervisor(
        "app",
        strategy=strategy,
        max_restarts=1,
        within=100.0,
        children=[w("a", log), w("b", log), farewell("c", log, "/app/b", "crash")],
    )
    with trio.fail_after(60):
        async with open_system(tree) as system:
            log.clear()
            system.ref("/app/a").tell("crash")
            await settle()
            await all_answer(system, "/app", "abc")
            assert log == [
                ("stop", "a", "crash"),
                ("stop", "c", "shutdown"),
                ("stop", "b", "crash"),  # crashed by itself while c was stopping
                ("start", "a"),
                ("start", "b"),
                ("start", "c"),
            ]
            assert [system.snapshot().find(f"/app/{n}").restarts for n in "abc"] == [1, 1, 1]
            assert system.snapshot().find("/app/b").failed == 1
            assert escalations(system) == []


@pytest.mark.parametrize("strategy", ["one_for_all", "rest_for_one"])
async def test_siblings_crashing_on_one_event_count_as_one_restart(
    strategy: Any, autojump_clock: trio.testing.MockClock
) -> None:
    """All three crash on the same published event.  Whichever exit the supervisor
    sees first, the others are absorbed by that group restart: max_restarts=1
    survives, and each child is started exactly once more, in order."""
    log: list[Any] = []
    tree = Supervisor(
        "app",
        strategy=strategy,
        max_restarts=1,
        within=100.0,
        children=[child(Listener, name=name, kwargs={"log": log}) for name in ("a", "b", "c")],
    )
    with trio.fail_after(600):
        async with open_system(tree) as system:
            for _ in range(3):  # three incidents far apart: each is one restart
                log.clear()
                system.publish("boom")
                await settle()
                await all_answer(system, "/app", "abc")
                assert started(log) == ["a", "b", "c"]
                await trio.sleep(101)
            snap = system.snapshot()
            assert [snap.find(f"/app/{n}").restarts for n in "abc"] == [3, 3, 3]


# -- the intensity window ----------------------------------------------------------


async def test_window_includes_a_restart_exactly_within_seconds_old(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """OTP keeps restarts with R >= Now - Period: crashes at t=10 and t=15 are two
    restarts within 5 s, one more than max_restarts=1 allows."""
    log: list[Any] = []
    tree = Supervisor("app", max_restarts=1, within=5.0, children=[w("a", log)])
    progress: list[str] = []
    with trio.fail_after(60), pytest.raises(RestartIntensityExceeded):
        async with open_system(tree) as system:
            await trio.sleep_until(10.0)  # whole numbers: no rounding in the clock
            system.ref("/app/a").tell("crash")
            await settle()
            assert await system.ref("/app/a").ask("ping") == "pong"
            progress.append("first restart at t=10")
            await trio.sleep_until(15.0)
            system.ref("/app/a").tell("crash")
            await settle()
            pytest.fail("the restart at t=10 is still inside the window")  # pragma: no cover
    assert progress == ["first restart at t=10"]
    assert started(log) == ["a", "a"]


# -- exits before a pending group restart are merged into it -------------------------


async def test_exit_during_a_pending_restart_is_merged_and_order_kept(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """rest_for_one: b crashes (b, c wait out a backoff), then a crashes.  The one
    restart that follows starts a, b, c in that order (not b, c and then a)."""
    log: list[Any] = []
    tree = Supervisor(
        "app",
        strategy="rest_for_one",
        backoff=Backoff(min=1.0, max=1.0, jitter=0.0),
        children=[w("a", log), w("b", log), w("c", log)],
    )
    with trio.fail_after(60):
        async with open_system(tree) as system:
            log.clear()
            system.ref("/app/b").tell("crash")
            await settle()
            assert [c.state for c in system.which_children("/app")] == [
                "running",
                "restarting",
                "restarting",
            ]
            system.ref("/app/a").tell("crash")
            await settle()
            await all_answer(system, "/app", "abc")
            assert started(log) == ["a", "b", "c"]
            assert [system.snapshot().find(f"/app/{n}").restarts for n in "abc"] == [1, 1, 1]


async def test_exit_queued_before_a_group_restart_runs_is_merged(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """rest_for_one without backoff: b crashes; while c is being stopped, c's on_stop
    makes a crash, so a's exit is queued before the restart of b and c runs.  It
    is merged into that restart: the children start a, b, c, in order, and the
    incident is one restart (max_restarts=1 survives it)."""
    log: list[Any] = []
    tree = Supervisor(
        "app",
        strategy="rest_for_one",
        max_restarts=1,
        within=100.0,
        children=[w("a", log), w("b", log), farewell("c", log, "/app/a", "crash")],
    )
    progress: list[str] = []
    with trio.fail_after(60), pytest.raises(RestartIntensityExceeded):
        async with open_system(tree) as system:
            log.clear()
            system.ref("/app/b").tell("crash")
            await settle()
            await all_answer(system, "/app", "abc")
            assert log == [
                ("stop", "b", "crash"),
                ("stop", "c", "shutdown"),
                ("stop", "a", "crash"),
                ("start", "a"),
                ("start", "b"),
                ("start", "c"),
            ]
            assert [system.snapshot().find(f"/app/{n}").restarts for n in "abc"] == [1, 1, 1]
            progress.append("merged")
            # that was one restart: the next crash is the second, one too many
            system.ref("/app/c").tell("crash")
            await trio.sleep_forever()
    assert progress == ["merged"]
    assert escalations(system) == ["/app"]


# -- a transient child that exited normally keeps its place ---------------------------


@pytest.mark.parametrize(
    ("strategy", "restarted"),
    [("one_for_one", False), ("one_for_all", True), ("rest_for_one", True)],
)
async def test_transient_child_that_stopped_normally_keeps_its_place(
    strategy: Any, restarted: bool, autojump_clock: trio.testing.MockClock
) -> None:
    """OTP keeps the spec of a transient child that exited normally (no pid): it
    stays in which_children, state 'stopped', and a later group restart that
    covers it starts it again, in its place."""
    log: list[Any] = []
    tree = Supervisor(
        "app",
        strategy=strategy,
        children=[w("a", log), w("t", log, restart="transient"), w("c", log)],
    )
    with trio.fail_after(60):
        async with open_system(tree) as system:
            t = system.ref("/app/t")
            assert await t.ask("stop") == "stopping"
            await settle()
            rows = system.which_children("/app")
            assert [(c.name, c.state) for c in rows] == [
                ("a", "running"),
                ("t", "stopped"),
                ("c", "running"),
            ]
            assert system.ref("/app/t") == t
            log.clear()
            system.ref("/app/a").tell("crash")
            await settle()
            await all_answer(system, "/app", "ac")
            if restarted:
                assert started(log) == ["a", "t", "c"]
                assert await t.ask("ping") == "pong"
                assert system.snapshot().find("/app/t").restarts == 1
                assert [c.state for c in system.which_children("/app")] == ["running"] * 3
            else:
                assert started(log) == ["a"]
                assert system.which_children("/app")[1].state == "stopped"


async def test_transient_child_kept_after_a_normal_exit_restarts_with_its_supervisor(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    tree = Supervisor(
        "app",
        children=[
            Supervisor(
                "inner",
                max_restarts=0,
                children=[w("t", log, restart="transient"), w("x", log)],
            )
        ],
    )
    with trio.fail_after(60):
        async with open_system(tree) as system:
            assert await system.ref("/app/inner/t").ask("stop") == "stopping"
            await settle()
            log.clear()
            system.ref("/app/inner/x").tell("crash")  # inner gives up; /app restarts it
            await settle()
            await all_answer(system, "/app/inner", "tx")
            assert started(log) == ["t", "x"]


# -- a supervisor that gives up is a `shutdown` exit for its parent ------------------


def nested(log: list[Any], restart: Any, strategy: Any = "one_for_one") -> Supervisor:
    return Supervisor(
        "app",
        strategy=strategy,
        max_restarts=0,
        children=[
            w("top", log),
            Supervisor(
                "inner",
                max_restarts=0,
                restart=restart,
                children=[w("x", log), w("y", log)],
            ),
        ],
    )


@pytest.mark.parametrize("restart", ["transient", "temporary"])
@pytest.mark.parametrize("strategy", ["one_for_one", "one_for_all", "rest_for_one"])
async def test_child_supervisor_giving_up_is_a_shutdown_exit(
    restart: Any, strategy: Any, autojump_clock: trio.testing.MockClock
) -> None:
    """A transient or temporary child supervisor that gives up is removed, not
    restarted; its parent is not charged (max_restarts=0 survives) and restarts
    no sibling."""
    log: list[Any] = []
    with trio.fail_after(60):
        async with open_system(nested(log, restart, strategy)) as system:
            log.clear()
            system.ref("/app/inner/x").tell("crash")
            await settle()
            for path in ("/app/inner", "/app/inner/x", "/app/inner/y"):
                with pytest.raises(ActorNotFound):
                    system.ref(path)
            assert [c.name for c in system.which_children("/app")] == ["top"]
            assert await system.ref("/app/top").ask("ping") == "pong"
            assert log == [("stop", "x", "crash"), ("stop", "y", "shutdown")]
            assert escalations(system) == ["/app/inner"]


async def test_permanent_child_supervisor_giving_up_is_restarted_and_charged(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    with trio.fail_after(60), pytest.raises(RestartIntensityExceeded) as info:
        async with open_system(nested(log, "permanent")) as system:
            system.ref("/app/inner/x").tell("crash")
            await trio.sleep_forever()
    assert info.value.path == "/app"  # restarting inner was one restart too many
    assert isinstance(info.value.__cause__, RestartIntensityExceeded)
    assert escalations(system) == ["/app", "/app/inner"]


# -- a model of OTP's rules against the runtime, on random crash sequences ---------


class Slot:
    """One child in the reference model."""

    def __init__(self, name: str, restart: str) -> None:
        self.name = name
        self.restart = restart
        self.running = True
        self.restarts = 0


class OtpModel:
    """One supervisor under OTP's rules, as DESIGN.md states them (no backoff)."""

    def __init__(self, strategy: str, max_restarts: int, within: float, slots: list[Slot]) -> None:
        self.strategy = strategy
        self.max_restarts = max_restarts
        self.within = within
        self.children = slots
        self.times: list[float] = []
        self.gave_up = False
        self.started: list[str] = []  # what the last step started, in order

    def group(self, slot: Slot) -> list[Slot]:
        if self.strategy == "one_for_all":
            return list(self.children)
        if self.strategy == "rest_for_one":
            return self.children[self.children.index(slot) :]
        return [slot]

    def charge(self, now: float) -> bool:
        self.times = [t for t in self.times if t >= now - self.within] + [now]
        self.gave_up = len(self.times) > self.max_restarts
        return not self.gave_up

    def restart(self, crashed: list[Slot], now: float) -> None:
        """`crashed` (restartable, all at once) need a restart: one incident per
        group strategy, one restart each under one_for_one."""
        if not crashed:
            return
        if self.strategy == "one_for_one":
            for slot in crashed:
                if not self.charge(now):
                    return
                slot.restarts += 1
                self.started.append(slot.name)
            return
        if not self.charge(now):
            return
        members: set[Slot] = set()
        for slot in crashed:
            members.update(self.group(slot))
        for slot in [c for c in self.children if c in members]:
            if slot.restart == "temporary" and slot not in crashed:
                self.children.remove(slot)  # a temporary bystander is never restarted
            else:
                slot.restarts += 1
                slot.running = True
                self.started.append(slot.name)

    def crash(self, slots: list[Slot], now: float) -> None:
        for slot in slots:
            if slot.restart == "temporary":
                self.children.remove(slot)
        self.restart([s for s in slots if s.restart != "temporary"], now)

    def stop(self, slot: Slot, now: float) -> None:
        """ctx.stop(): a normal exit."""
        if slot.restart == "permanent":
            self.restart([slot], now)
        elif slot.restart == "transient":
            slot.running = False  # keeps its place
        else:
            self.children.remove(slot)


Step = tuple[str, Any]

steps_strategy = st.lists(
    st.one_of(
        st.tuples(st.just("crash"), st.sets(st.integers(0, 3), min_size=1, max_size=4)),
        st.tuples(st.just("stop"), st.integers(0, 3)),
        st.tuples(st.just("wait"), st.sampled_from([0.5, 1.0, 2.0, 2.5, 5.0])),
    ),
    max_size=14,
)


async def compare_with_model(
    strategy: str, max_restarts: int, within: float, restarts: list[str], steps: list[Step]
) -> None:
    log: list[Any] = []
    names = [f"c{i}" for i in range(len(restarts))]
    model = OtpModel(
        strategy, max_restarts, within, [Slot(n, r) for n, r in zip(names, restarts, strict=True)]
    )
    tree = Supervisor(
        "app",
        strategy=strategy,  # type: ignore[arg-type]
        max_restarts=max_restarts,
        within=within,
        children=[w(n, log, restart=r) for n, r in zip(names, restarts, strict=True)],
    )
    with trio.fail_after(10_000):
        try:
            async with open_system(tree) as system:
                for what, arg in steps:
                    log.clear()
                    model.started = []
                    running = [s for s in model.children if s.running]
                    now = trio.current_time()
                    if what == "wait":
                        await trio.sleep(arg)
                        continue
                    if what == "crash":
                        chosen = [running[i % len(running)] for i in arg] if running else []
                        chosen = list(dict.fromkeys(chosen))
                        model.crash(chosen, now)
                        for slot in chosen:  # all at once, as on one event
                            crash(system.ref(f"/app/{slot.name}"))
                    elif running:
                        slot = running[arg % len(running)]
                        model.stop(slot, now)
                        system.ref(f"/app/{slot.name}").tell("stop")
                    await settle()
                    if model.gave_up:
                        await trio.sleep_forever()  # the runtime must give up too
                    rows = [(c.name, c.state) for c in system.which_children("/app")]
                    expected = [
                        (s.name, "running" if s.running else "stopped") for s in model.children
                    ]
                    assert rows == expected
                    if strategy == "one_for_one":  # separate restarts, in the order of exits
                        assert sorted(started(log)) == sorted(model.started)
                    else:  # one restart: in the order of children
                        assert started(log) == model.started
                    snap = system.snapshot()
                    assert [snap.find(f"/app/{s.name}").restarts for s in model.children] == [
                        s.restarts for s in model.children
                    ]
        except RestartIntensityExceeded:
            assert model.gave_up, "the runtime gave up, the model did not"
        else:
            assert not model.gave_up


def test_one_supervisor_matches_a_model_of_otp(slow: bool) -> None:
    """Random crashes (one or several at once), normal exits and waits on one
    supervisor: after every step its children, their states, restart counts and
    the order they were started in, and whether it gave up, are what OTP's rules
    say.  ``pytest --slow`` runs many more examples."""

    @settings(
        max_examples=3000 if slow else 300,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(
        strategy=st.sampled_from(["one_for_one", "one_for_all", "rest_for_one"]),
        max_restarts=st.integers(0, 3),
        within=st.sampled_from([2.0, 5.0]),
        restarts=st.lists(
            st.sampled_from(["permanent", "transient", "temporary"]), min_size=1, max_size=4
        ),
        steps=steps_strategy,
    )
    def check(
        strategy: str, max_restarts: int, within: float, restarts: list[str], steps: list[Step]
    ) -> None:
        clock = trio.testing.MockClock(autojump_threshold=0)
        trio.run(compare_with_model, strategy, max_restarts, within, restarts, steps, clock=clock)

    quiet = logging.getLogger("troupe")
    was = quiet.disabled
    quiet.disabled = True  # hundreds of crashes on purpose: no tracebacks in the log
    try:
        check()
    finally:
        quiet.disabled = was

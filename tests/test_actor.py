"""Actor lifecycle (on_start / on_stop), `self.ctx`, one message at a time, FIFO per sender."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

import runtime
from runtime import Actor, Supervisor, child

# -- helper actors -----------------------------------------------------------


class Lifecycle(Actor):
    """Records on_start / messages / on_stop into a shared log."""

    def __init__(self, log: list[Any], start_delay: float = 0.0) -> None:
        self.log = log
        self.start_delay = start_delay

    async def on_start(self) -> None:
        if self.start_delay:
            await trio.sleep(self.start_delay)
        self.log.append("start")

    async def on_stop(self, reason: Any) -> None:
        self.log.append(("stop", reason))

    async def receive(self, msg: Any) -> Any:
        self.log.append(("msg", msg))
        if msg == "boom":
            raise ValueError("boom")
        if msg == "stop":
            self.ctx.stop()
        return msg


class FailsToStartLater(Actor):
    """Starts fine the first time, then fails on_start `fail_times` times."""

    def __init__(self, log: list[Any], state: dict[str, int]) -> None:
        self.log = log
        self.state = state

    async def on_start(self) -> None:
        self.state["starts"] += 1
        n = self.state["starts"]
        if 1 < n <= 1 + self.state["fail_times"]:
            self.log.append(("start-failed", n))
            raise RuntimeError(f"start {n} failed")
        self.log.append(("start", n))

    async def on_stop(self, reason: Any) -> None:
        self.log.append(("stop", self.state["starts"], reason))

    async def receive(self, msg: Any) -> Any:
        if msg == "boom":
            raise ValueError("boom")
        return msg


class Concurrency(Actor):
    """Awaits inside receive and tracks how many handlers run at once."""

    def __init__(self, stats: dict[str, int]) -> None:
        self.stats = stats

    async def receive(self, msg: Any) -> Any:
        self.stats["active"] += 1
        self.stats["max"] = max(self.stats["max"], self.stats["active"])
        await trio.sleep(0.01)
        await trio.lowlevel.checkpoint()
        self.stats["active"] -= 1
        self.stats["handled"] += 1
        return msg


class Recorder(Actor):
    def __init__(self, seen: list[Any]) -> None:
        self.seen = seen

    async def receive(self, msg: Any) -> Any:
        self.seen.append(msg)
        return msg


class CtxProbe(Actor):
    def __init__(self, seen: dict[str, Any]) -> None:
        self.seen = seen

    async def on_start(self) -> None:
        ctx = self.ctx
        self.seen.update(ref=ctx.ref, name=ctx.name, path=ctx.path, system=ctx.system)

    async def receive(self, msg: Any) -> Any:
        return msg


def app(*children: Any, **kw: Any) -> Supervisor:
    return Supervisor("app", children=list(children), **kw)


# -- on_start / on_stop ------------------------------------------------------


async def test_on_start_runs_before_first_message_and_after_every_restart(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    tree = app(child(Lifecycle, name="a", kwargs={"log": log, "start_delay": 1.0}))
    with trio.fail_after(60):
        async with runtime.open_system(tree) as system:
            ref = system.ref("/app/a")
            ref.tell("boom")
            ref.tell("after-1")  # queued while the next incarnation is starting (slowly)
            assert await ref.ask("ping") == "ping"
            ref.tell("boom")
            assert await ref.ask("after-2") == "after-2"
            assert system.snapshot().find("/app/a").restarts == 2
    starts = [i for i, e in enumerate(log) if e == "start"]
    assert len(starts) == 3
    msgs = [e for e in log if isinstance(e, tuple) and e[0] == "msg"]
    assert msgs == [
        ("msg", "boom"),
        ("msg", "after-1"),
        ("msg", "ping"),
        ("msg", "boom"),
        ("msg", "after-2"),
    ]
    # each incarnation's on_start ran before any of its messages
    assert log[0] == "start"
    first_after_1 = log.index(("msg", "after-1"))
    assert starts[1] < first_after_1
    assert log[starts[1] - 1][0] == "stop"  # the crashed incarnation stopped first
    second_boom = [i for i, e in enumerate(log) if e == ("msg", "boom")][1]
    assert second_boom < starts[2] < log.index(("msg", "after-2"))


async def test_on_stop_gets_shutdown_on_graceful_stop() -> None:
    log: list[Any] = []
    with trio.fail_after(10):
        async with runtime.open_system(app(child(Lifecycle, name="a", args=(log,)))) as system:
            await system.ref("/app/a").ask("x")
    assert log == ["start", ("msg", "x"), ("stop", "shutdown")]


async def test_on_stop_gets_normal_after_ctx_stop() -> None:
    log: list[Any] = []
    tree = app(child(Lifecycle, name="a", args=(log,), restart="temporary"))
    with trio.fail_after(10):
        async with runtime.open_system(tree) as system:
            ref = system.ref("/app/a")
            ref.tell("stop")
            while ref.is_alive:
                await trio.sleep(0.01)
    assert log == ["start", ("msg", "stop"), ("stop", "normal")]


async def test_on_stop_gets_the_exception_after_a_crash() -> None:
    log: list[Any] = []
    with trio.fail_after(10):
        async with runtime.open_system(app(child(Lifecycle, name="a", args=(log,)))) as system:
            ref = system.ref("/app/a")
            with pytest.raises(runtime.ActorCrashed) as info:
                await ref.ask("boom")
            assert await ref.ask("again") == "again"
    stops = [e for e in log if isinstance(e, tuple) and e[0] == "stop"]
    assert len(stops) == 2
    crash_reason = stops[0][1]
    assert isinstance(crash_reason, ValueError) and str(crash_reason) == "boom"
    assert crash_reason is info.value.__cause__
    assert stops[1] == ("stop", "shutdown")


async def test_on_stop_not_called_when_on_start_failed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    state = {"starts": 0, "fail_times": 2}
    tree = app(child(FailsToStartLater, name="a", args=(log, state)), max_restarts=10)
    with trio.fail_after(60):
        async with runtime.open_system(tree) as system:
            ref = system.ref("/app/a")
            with pytest.raises(runtime.ActorCrashed):
                await ref.ask("boom")
            # the two failed restarts are retried; the fourth start succeeds
            assert await ref.ask("hi") == "hi"
    assert state["starts"] == 4
    stops = [e for e in log if e[0] == "stop"]
    # incarnation 1 (crash) and 4 (shutdown) stopped; 2 and 3 never started, so no on_stop
    assert [s[1] for s in stops] == [1, 4]
    assert isinstance(stops[0][2], ValueError)
    assert stops[1][2] == "shutdown"
    assert ("start-failed", 2) in log and ("start-failed", 3) in log


async def test_on_start_failure_at_first_start_skips_on_stop() -> None:
    log: list[Any] = []
    state = {"starts": 1, "fail_times": 5}  # the very first start fails
    tree = app(child(FailsToStartLater, name="a", args=(log, state)))
    with trio.fail_after(10):
        with pytest.raises(RuntimeError, match="start 2 failed"):
            async with runtime.open_system(tree):
                pytest.fail("the body must not run when the tree fails to start")
    assert log == [("start-failed", 2)]


def test_ctx_in_init_raises_a_helpful_runtime_error() -> None:
    class Eager(Actor):
        def __init__(self) -> None:
            self.name = self.ctx.name

    with pytest.raises(RuntimeError) as info:
        Eager()
    text = str(info.value)
    assert "__init__" in text and "on_start" in text


async def test_ctx_in_init_fails_the_start_with_that_error() -> None:
    class Eager(Actor):
        def __init__(self) -> None:
            self.path = self.ctx.path

    with trio.fail_after(10):
        with pytest.raises(RuntimeError, match="on_start"):
            async with runtime.open_system(app(child(Eager, name="eager"))):
                pytest.fail("unreachable")


async def test_ctx_knows_ref_name_path_and_system() -> None:
    seen: dict[str, Any] = {}
    with trio.fail_after(10):
        async with runtime.open_system(app(child(CtxProbe, name="probe", args=(seen,)))) as system:
            assert seen["ref"] == system.ref("/app/probe")
            assert seen["name"] == "probe"
            assert seen["path"] == "/app/probe"
            assert seen["system"] is system


async def test_fresh_instance_from_spec_args_on_every_restart() -> None:
    made: list[Actor] = []

    class Counting(Actor):
        def __init__(self, start: int, *, step: int) -> None:
            self.n = start
            self.step = step
            made.append(self)

        async def receive(self, msg: Any) -> Any:
            if msg == "boom":
                raise ValueError("boom")
            self.n += self.step
            return self.n

    tree = app(child(Counting, name="c", args=(10,), kwargs={"step": 5}))
    with trio.fail_after(10):
        async with runtime.open_system(tree) as system:
            ref = system.ref("/app/c")
            assert await ref.ask("inc") == 15
            assert await ref.ask("inc") == 20
            with pytest.raises(runtime.ActorCrashed):
                await ref.ask("boom")
            assert await ref.ask("inc") == 15  # state starts clean after a crash
            assert len(made) == 2 and made[0] is not made[1]


# -- one message at a time, FIFO ----------------------------------------------


async def test_one_message_at_a_time_even_when_receive_awaits(
    autojump_clock: trio.testing.MockClock,
) -> None:
    stats = {"active": 0, "max": 0, "handled": 0}
    with trio.fail_after(600):
        async with runtime.open_system(app(child(Concurrency, name="c", args=(stats,)))) as system:
            ref = system.ref("/app/c")
            answers: list[Any] = []

            async def asker(i: int) -> None:
                answers.append(await ref.ask(("ask", i), timeout=None))

            async with trio.open_nursery() as nursery:
                for i in range(50):
                    ref.tell(("tell", i))
                    nursery.start_soon(asker, i)
                    nursery.start_soon(ref.send, ("send", i))
            while stats["handled"] < 150:
                await trio.sleep(0.1)
            assert sorted(answers) == [("ask", i) for i in range(50)]
    assert stats["max"] == 1
    assert stats["handled"] == 150


async def test_fifo_per_sender() -> None:
    seen: list[Any] = []
    tree = app(child(Recorder, name="r", args=(seen,), mailbox=runtime.Mailbox(capacity=4)))
    n = 300
    with trio.fail_after(30):
        async with runtime.open_system(tree) as system:
            ref = system.ref("/app/r")

            async def sender(who: str) -> None:
                for i in range(n):
                    await ref.send((who, i))
                    if i % 7 == 0:
                        await trio.lowlevel.checkpoint()

            async with trio.open_nursery() as nursery:
                for who in ("a", "b", "c"):
                    nursery.start_soon(sender, who)
            await ref.ask(("flush", 0))
    for who in ("a", "b", "c"):
        assert [i for w, i in seen if w == who] == list(range(n)), who
    # the senders really interleaved (otherwise the test proves little)
    whos = [w for w, _ in seen if w != "flush"]
    assert any(whos[i] != whos[i + 1] for i in range(len(whos) - 1))


async def test_ref_is_valid_across_restarts_and_alive_while_restarting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    tree = app(
        child(Lifecycle, name="a", kwargs={"log": log, "start_delay": 5.0}),
        backoff=runtime.Backoff(min=1.0, max=1.0, jitter=0.0),
    )
    with trio.fail_after(60):
        async with runtime.open_system(tree) as system:
            ref = system.ref("/app/a")
            ref.tell("boom")
            await trio.sleep(0.5)  # inside the backoff: no incarnation runs
            assert ref.is_alive
            assert system.ref("/app/a") == ref
            assert await ref.ask("still-there", timeout=30) == "still-there"
            assert system.snapshot().find("/app/a").restarts == 1
        assert not ref.is_alive  # the system is gone

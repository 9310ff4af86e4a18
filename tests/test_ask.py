"""ask / tell / defer_reply, crash and unhandled replies, timeouts, and refs after a final stop."""

from __future__ import annotations

from typing import Any

import attrs
import pytest
import trio
import trio.testing

import runtime
from runtime import UNHANDLED, Actor, Supervisor, child

# -- helper actors -----------------------------------------------------------


@attrs.frozen
class Slow:
    delay: float
    value: Any


@attrs.frozen
class Later:
    """Reply from a background task after `delay` (or fail with `error`)."""

    delay: float
    value: Any = None
    error: BaseException | None = None


class Echo(Actor):
    def __init__(self, log: list[Any] | None = None) -> None:
        self.log = log if log is not None else []

    async def receive(self, msg: Any) -> Any:
        self.log.append(msg)
        match msg:
            case "boom":
                raise KeyError("boom")
            case "stop":
                self.ctx.stop()
                return "stopping"
            case Slow(delay=d, value=v):
                await trio.sleep(d)
                return v
            case Later():
                handle = self.ctx.defer_reply()
                self.ctx.nursery.start_soon(self._answer_later, handle, msg)
                return "ignored: the reply is deferred"
            case ("defer-then", what):
                handle = self.ctx.defer_reply()
                self.pending = handle
                if what == "crash":
                    raise OSError("crashed with a deferred reply pending")
                if what == "stop":
                    self.ctx.stop()
                return None
            case ("unknown", _):
                return UNHANDLED
            case ("background-crash", delay):
                self.ctx.nursery.start_soon(self._fail_after, delay)
                await trio.sleep_forever()
            case _:
                return msg

    async def _fail_after(self, delay: float) -> None:
        await trio.sleep(delay)
        raise ConnectionError("background task failed")

    async def _answer_later(self, handle: runtime.DeferredReply, msg: Later) -> None:
        await trio.sleep(msg.delay)
        if msg.error is not None:
            handle.fail(msg.error)
        else:
            handle.send(msg.value)


class Forwarder(Actor):
    """Asks another actor from inside its own handler."""

    async def receive(self, msg: Any) -> Any:
        target = self.ctx.system.ref("/app/echo")
        return ("via", await target.ask(msg))


def app(*children: Any, **kw: Any) -> Supervisor:
    return Supervisor("app", children=list(children), **kw)


def echo_tree(restart: str = "permanent", **kw: Any) -> Supervisor:
    return app(child(Echo, name="echo", restart=restart, **kw))  # type: ignore[arg-type]


def letters(system: runtime.System, reason: str) -> list[runtime.DeadLetter]:
    return system.dead_letters.recent(1000, reason)


# -- ask / tell --------------------------------------------------------------


async def test_ask_returns_the_value_receive_returns() -> None:
    with trio.fail_after(10):
        async with runtime.open_system(echo_tree()) as system:
            ref = system.ref("/app/echo")
            assert await ref.ask({"a": 1}) == {"a": 1}
            assert await ref.ask(None) is None
            obj = object()
            assert await ref.ask(obj) is obj


async def test_tell_ignores_the_return_value() -> None:
    log: list[Any] = []
    with trio.fail_after(10):
        async with runtime.open_system(app(child(Echo, name="echo", args=(log,)))) as system:
            ref = system.ref("/app/echo")
            ref.tell("fire")
            await ref.send("and-forget")
            assert await ref.ask("sync") == "sync"
            assert log == ["fire", "and-forget", "sync"]
            snap = system.snapshot()
            assert sum(snap.dead_letters.values()) == 0
            assert snap.find("/app/echo").processed == 3


async def test_ask_from_inside_another_actor() -> None:
    tree = app(child(Echo, name="echo"), child(Forwarder, name="fwd"))
    with trio.fail_after(10):
        async with runtime.open_system(tree) as system:
            assert await system.ref("/app/fwd").ask("hi") == ("via", "hi")


async def test_deferred_reply_sent_later_from_a_nursery_task(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with runtime.open_system(echo_tree()) as system:
            ref = system.ref("/app/echo")
            results: dict[int, Any] = {}

            async def ask(i: int, delay: float) -> None:
                results[i] = await ref.ask(Later(delay, value=i), timeout=30)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(ask, 1, 3.0)
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(ask, 2, 1.0)
            # the actor was free to take the second ask while the first was pending,
            # and each asker got its own reply, not receive's return value
            assert results == {1: 1, 2: 2}
            assert sum(system.snapshot().dead_letters.values()) == 0


async def test_deferred_reply_fail_raises_that_error_in_the_asker(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with runtime.open_system(echo_tree()) as system:
            ref = system.ref("/app/echo")
            with pytest.raises(LookupError, match="no such row"):
                await ref.ask(Later(1.0, error=LookupError("no such row")), timeout=30)
            assert system.snapshot().find("/app/echo").restarts == 0


async def test_pending_deferred_reply_fails_with_actor_crashed_when_the_actor_crashes(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with runtime.open_system(echo_tree()) as system:
            ref = system.ref("/app/echo")
            # timeout=None: without the fix the asker would wait for ever and fail_after trips
            with pytest.raises(runtime.ActorCrashed) as info:
                await ref.ask(("defer-then", "crash"), timeout=None)
            assert isinstance(info.value.__cause__, OSError)


async def test_deferred_reply_pending_from_an_earlier_message_fails_on_crash(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with runtime.open_system(echo_tree()) as system:
            ref = system.ref("/app/echo")
            outcome: list[BaseException] = []

            async def waiting_asker() -> None:
                try:
                    await ref.ask(("defer-then", "nothing"), timeout=None)
                except runtime.TroupeError as exc:
                    outcome.append(exc)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(waiting_asker)
                await trio.testing.wait_all_tasks_blocked()
                with pytest.raises(runtime.ActorCrashed):
                    await ref.ask("boom")
            assert len(outcome) == 1
            assert isinstance(outcome[0], runtime.ActorCrashed)
            assert isinstance(outcome[0].__cause__, KeyError)


async def test_pending_deferred_reply_fails_with_actor_stopped_when_the_actor_stops(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with runtime.open_system(echo_tree(restart="temporary")) as system:
            ref = system.ref("/app/echo")
            with pytest.raises(runtime.ActorStopped):
                await ref.ask(("defer-then", "stop"), timeout=None)


async def test_deferred_reply_on_a_told_message_is_harmless(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with runtime.open_system(echo_tree()) as system:
            ref = system.ref("/app/echo")
            ref.tell(Later(1.0, value="nobody asked"))
            await trio.sleep(2.0)
            assert await ref.ask("ok") == "ok"
            assert system.snapshot().find("/app/echo").restarts == 0


# -- crash and unhandled -------------------------------------------------------


async def test_crash_during_ask_raises_actor_crashed_with_the_original_as_cause() -> None:
    with trio.fail_after(10):
        async with runtime.open_system(echo_tree()) as system:
            ref = system.ref("/app/echo")
            with pytest.raises(runtime.ActorCrashed) as info:
                await ref.ask("boom")
            cause = info.value.__cause__
            assert isinstance(cause, KeyError) and cause.args == ("boom",)
            crashed = letters(system, "crashed")
            assert [(d.message, d.recipient) for d in crashed] == [("boom", "/app/echo")]
            assert system.snapshot().dead_letters["crashed"] == 1
            assert await ref.ask("after") == "after"  # restarted
            assert system.snapshot().find("/app/echo").restarts == 1


async def test_unhandled_message_raises_for_the_asker_without_a_crash() -> None:
    with trio.fail_after(10):
        async with runtime.open_system(echo_tree()) as system:
            ref = system.ref("/app/echo")
            with pytest.raises(runtime.UnhandledMessage):
                await ref.ask(("unknown", 1))
            ref.tell(("unknown", 2))
            assert await ref.ask("still-up") == "still-up"
            info = system.snapshot().find("/app/echo")
            assert info.restarts == 0
            assert info.failed == 0
            assert info.last_error is None
            unhandled = letters(system, "unhandled")
            assert [d.message for d in unhandled] == [("unknown", 2), ("unknown", 1)]
            assert system.snapshot().dead_letters["unhandled"] == 2


async def test_default_receive_returns_unhandled() -> None:
    class Mute(Actor):
        pass

    with trio.fail_after(10):
        async with runtime.open_system(app(child(Mute, name="mute"))) as system:
            with pytest.raises(runtime.UnhandledMessage):
                await system.ref("/app/mute").ask("anything")


async def test_crash_of_a_background_task_fails_the_ask_in_hand_as_crashed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with runtime.open_system(echo_tree()) as system:
            ref = system.ref("/app/echo")
            with pytest.raises(runtime.ActorCrashed) as info:
                await ref.ask(("background-crash", 1.0), timeout=None)
            assert isinstance(info.value.__cause__, ConnectionError)
            assert [d.message for d in letters(system, "crashed")] == [("background-crash", 1.0)]
            assert system.snapshot().dead_letters["stopped"] == 0
            assert await ref.ask("restarted") == "restarted"


# -- the message in hand when the actor is stopped ---------------------------------


async def test_graceful_stop_finishes_the_message_in_hand(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with runtime.open_system(echo_tree()) as system:
            ref = system.ref("/app/echo")
            got: list[Any] = []

            async def asker() -> None:
                got.append(await ref.ask(Slow(3.0, "finished"), timeout=30))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(asker)
                await trio.sleep(1.0)
                await system.terminate_child("/app/echo")
            assert got == ["finished"]
            assert sum(system.snapshot().dead_letters.values()) == 0


async def test_message_in_hand_past_the_shutdown_timeout_fails_with_actor_stopped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with runtime.open_system(echo_tree(shutdown=1.0)) as system:
            ref = system.ref("/app/echo")
            errors: list[BaseException] = []

            async def asker() -> None:
                try:
                    await ref.ask(Slow(30.0, "too slow"), timeout=None)
                except runtime.TroupeError as exc:
                    errors.append(exc)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(asker)
                await trio.sleep(1.0)
                await system.terminate_child("/app/echo")
            assert len(errors) == 1 and isinstance(errors[0], runtime.ActorStopped)
            assert [d.message for d in letters(system, "stopped")] == [Slow(30.0, "too slow")]


# -- timeouts -----------------------------------------------------------------


async def test_ask_timeout_is_a_timeout_error_and_the_late_reply_is_dead_lettered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with runtime.open_system(echo_tree()) as system:
            ref = system.ref("/app/echo")
            with pytest.raises(runtime.AskTimeout) as info:
                await ref.ask(Slow(10.0, "late"), timeout=1.0)
            assert isinstance(info.value, TimeoutError)
            assert isinstance(info.value, runtime.TroupeError)
            # the next asker gets its own reply, never the late one
            assert await ref.ask("next", timeout=30) == "next"
            timeouts = letters(system, "timeout")
            assert [(d.message, d.recipient) for d in timeouts] == [("late", "/app/echo")]
            snap = system.snapshot()
            assert snap.dead_letters["timeout"] == 1
            assert snap.find("/app/echo").dead_lettered == 1


async def test_timed_out_ask_queued_behind_others_is_still_handled_and_dead_lettered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    with trio.fail_after(60):
        async with runtime.open_system(app(child(Echo, name="echo", args=(log,)))) as system:
            ref = system.ref("/app/echo")
            ref.tell(Slow(5.0, None))
            with pytest.raises(runtime.AskTimeout):
                await ref.ask("queued", timeout=1.0)
            assert await ref.ask("next", timeout=30) == "next"
            assert log == [Slow(5.0, None), "queued", "next"]
            assert [d.message for d in letters(system, "timeout")] == ["queued"]


async def test_reply_to_a_cancelled_asker_is_dead_lettered(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(60):
        async with runtime.open_system(echo_tree()) as system:
            ref = system.ref("/app/echo")
            with trio.move_on_after(1.0) as scope:
                await ref.ask(Slow(3.0, "nobody waits"), timeout=30)
            assert scope.cancelled_caught
            assert await ref.ask("next", timeout=30) == "next"
            assert [d.message for d in letters(system, "timeout")] == ["nobody waits"]


async def test_many_timeouts_never_cross_replies(autojump_clock: trio.testing.MockClock) -> None:
    with trio.fail_after(600):
        async with runtime.open_system(echo_tree()) as system:
            ref = system.ref("/app/echo")
            got: list[tuple[int, Any]] = []

            async def ask(i: int) -> None:
                try:
                    got.append((i, await ref.ask(Slow(1.0, i), timeout=2.5)))
                except runtime.AskTimeout:
                    got.append((i, "timeout"))

            async with trio.open_nursery() as nursery:
                for i in range(6):
                    nursery.start_soon(ask, i)
                    await trio.testing.wait_all_tasks_blocked()
            assert await ref.ask("flush", timeout=60) == "flush"  # all six were handled
            answered = [(i, v) for i, v in got if v != "timeout"]
            assert answered and all(i == v for i, v in answered)
            late = sorted(d.message for d in letters(system, "timeout"))
            assert late == sorted(i for i, v in got if v == "timeout")
            assert len(answered) + len(late) == 6


# -- after a final stop ----------------------------------------------------------


async def test_after_a_final_stop_tell_dead_letters_and_ask_raises_actor_stopped() -> None:
    with trio.fail_after(10):
        async with runtime.open_system(echo_tree(restart="temporary")) as system:
            ref = system.ref("/app/echo")
            assert ref.is_alive
            assert await ref.ask("stop") == "stopping"
            while ref.is_alive:
                await trio.sleep(0.01)
            assert not ref.is_alive
            ref.tell("into the void")
            await ref.send("also into the void")
            with pytest.raises(runtime.ActorStopped):
                await ref.ask("anyone?")
            stopped = letters(system, "stopped")
            assert [d.message for d in stopped] == ["also into the void", "into the void"]
            assert system.snapshot().dead_letters["stopped"] == 2
            with pytest.raises(runtime.ActorNotFound):
                system.ref("/app/echo")
            # the ref keeps its identity
            assert ref.path == "/app/echo" and ref.name == "echo"


async def test_queued_messages_and_pending_asks_at_a_final_stop(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[Any] = []
    tree = app(child(Echo, name="echo", args=(log,), restart="temporary"))
    with trio.fail_after(60):
        async with runtime.open_system(tree) as system:
            ref = system.ref("/app/echo")
            ref.tell(Slow(1.0, None))
            ref.tell("stop")
            ref.tell("queued-1")
            ref.tell("queued-2")
            errors: list[BaseException] = []

            async def asker(i: int) -> None:
                try:
                    await ref.ask(("pending", i), timeout=None)
                except runtime.TroupeError as exc:
                    errors.append(exc)

            async with trio.open_nursery() as nursery:
                for i in range(3):
                    nursery.start_soon(asker, i)
            assert len(errors) == 3
            assert all(isinstance(e, runtime.ActorStopped) for e in errors)
            assert log == [Slow(1.0, None), "stop"]
            stopped = [d.message for d in letters(system, "stopped")]
            assert sorted(map(str, stopped)) == sorted(
                map(str, ["queued-1", "queued-2", ("pending", 0), ("pending", 1), ("pending", 2)])
            )
            info = system.snapshot()
            assert info.dead_letters["stopped"] == 5


async def test_system_ref_of_an_unknown_path_raises_actor_not_found() -> None:
    with trio.fail_after(10):
        async with runtime.open_system(echo_tree()) as system:
            for path in ("/app/nobody", "/nope", "/app/echo/deeper"):
                with pytest.raises(runtime.ActorNotFound):
                    system.ref(path)
            assert system.ref("/app/echo").path == "/app/echo"
            assert system.ref("app/echo/") == system.ref("/app/echo")


def test_all_errors_subclass_troupe_error() -> None:
    for name in (
        "ActorNotFound",
        "ActorStopped",
        "ActorCrashed",
        "AskTimeout",
        "UnhandledMessage",
        "MailboxFull",
        "RuntimeClosed",
        "RestartIntensityExceeded",
    ):
        cls = getattr(runtime, name)
        assert issubclass(cls, runtime.TroupeError), name
        assert getattr(runtime.errors, name) is cls
    assert issubclass(runtime.AskTimeout, TimeoutError)
    assert issubclass(runtime.TroupeError, Exception)


class BetweenMessages(Actor):
    """Looks at its context from a background task while it holds no message."""

    def __init__(self, seen: list[tuple[bool, bool]], look: trio.Event) -> None:
        self.seen = seen
        self.look = look

    async def receive(self, msg: Any) -> Any:
        if msg == "start":
            self.ctx.nursery.start_soon(self._watch)
        return msg

    async def _watch(self) -> None:
        await self.look.wait()
        busy = self.ctx.ref.is_busy
        self.seen.append((self.ctx.expects_reply, busy))


async def test_no_message_in_hand_after_an_ask_was_answered() -> None:
    """Once an ask is answered and the actor waits for mail, nothing says a reply is
    still expected: `expects_reply` is False and the actor is not busy."""
    seen: list[tuple[bool, bool]] = []
    look = trio.Event()
    tree = Supervisor(
        "app", children=[child(BetweenMessages, name="a", kwargs={"seen": seen, "look": look})]
    )
    async with runtime.open_system(tree) as system:
        ref = system.ref("/app/a")
        assert await ref.ask("start") == "start"
        assert await ref.ask("again") == "again"
        look.set()
        with trio.fail_after(5):
            while not seen:
                await trio.sleep(0.01)
    assert seen == [(False, False)]


class CrashesWhenAsked(Actor):
    def __init__(self, seen: list[tuple[bool, bool]]) -> None:
        self.seen = seen

    async def receive(self, msg: Any) -> Any:
        raise ValueError("asked to crash")

    async def on_stop(self, reason: Any) -> None:
        self.seen.append((self.ctx.expects_reply, self.ctx.ref.is_busy))


async def test_on_stop_after_a_crashing_ask_holds_no_message() -> None:
    """The crashed message is over (its asker got ActorCrashed): `on_stop` sees no
    reply expected and the actor not busy with it."""
    seen: list[tuple[bool, bool]] = []
    tree = Supervisor(
        "app",
        children=[child(CrashesWhenAsked, name="a", kwargs={"seen": seen}, restart="temporary")],
    )
    async with runtime.open_system(tree) as system:
        with pytest.raises(runtime.ActorCrashed):
            await system.ref("/app/a").ask("boom")
        with trio.fail_after(5):
            while not seen:
                await trio.sleep(0.01)
    assert seen == [(False, False)]

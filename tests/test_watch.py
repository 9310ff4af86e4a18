"""watch / unwatch: one Terminated(ref, reason) when the watched actor stops for good."""

from __future__ import annotations

from typing import Any

import attrs
import trio
import trio.testing

import runtime
from runtime import Actor, Supervisor, Terminated, child

# -- helper actors -----------------------------------------------------------


@attrs.frozen
class Watch:
    path: str


@attrs.frozen
class Unwatch:
    path: str


class Target(Actor):
    async def receive(self, msg: Any) -> Any:
        match msg:
            case "crash":
                raise ValueError("target crashed")
            case "stop":
                self.ctx.stop()
        return msg


class Watcher(Actor):
    """Watches on request; records every Terminated and whether the name was still there."""

    def __init__(self, seen: list[Any]) -> None:
        self.seen = seen

    async def receive(self, msg: Any) -> Any:
        match msg:
            case Watch(path=p):
                self.ctx.watch(self.ctx.system.ref(p))
            case Unwatch(path=p):
                self.ctx.unwatch(self.ctx.system.ref(p))
            case Terminated(ref=ref, reason=reason):
                try:
                    self.ctx.system.ref(ref.path)
                    registered = True
                except runtime.ActorNotFound:
                    registered = False
                self.seen.append((ref, reason, registered))
        return None


class WatchesInOnStart(Actor):
    def __init__(self, seen: list[Any]) -> None:
        self.seen = seen

    async def on_start(self) -> None:
        self.ctx.watch(self.ctx.system.ref("/app/target"))

    async def receive(self, msg: Any) -> Any:
        self.seen.append(msg)
        return None


def tree(seen: list[Any], restart: str = "temporary", **kw: Any) -> Supervisor:
    return Supervisor(
        "app",
        children=[
            child(Target, name="target", restart=restart),  # type: ignore[arg-type]
            child(Watcher, name="watcher", args=(seen,)),
        ],
        **kw,
    )


async def settle() -> None:
    await trio.testing.wait_all_tasks_blocked()
    await trio.sleep(0.5)


# -- tests -----------------------------------------------------------------------


async def test_one_terminated_with_reason_normal_when_the_watched_actor_stops(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[Any] = []
    with trio.fail_after(60):
        async with runtime.open_system(tree(seen)) as system:
            target = system.ref("/app/target")
            watcher = system.ref("/app/watcher")
            await watcher.ask(Watch("/app/target"))
            await watcher.ask(Watch("/app/target"))  # watching twice still tells once
            await settle()
            assert seen == []
            target.tell("stop")
            await settle()
            assert len(seen) == 1
            ref, reason, _ = seen[0]
            assert ref == target and ref.path == "/app/target"
            assert reason == "normal"
            await settle()
            assert len(seen) == 1


async def test_terminated_reason_is_the_exception_after_a_final_crash(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[Any] = []
    with trio.fail_after(60):
        async with runtime.open_system(tree(seen)) as system:
            await system.ref("/app/watcher").ask(Watch("/app/target"))
            system.ref("/app/target").tell("crash")
            await settle()
            assert len(seen) == 1
            reason = seen[0][1]
            assert isinstance(reason, ValueError) and str(reason) == "target crashed"


async def test_no_terminated_on_restart_but_one_when_terminated_for_good(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[Any] = []
    with trio.fail_after(60):
        async with runtime.open_system(tree(seen, restart="permanent")) as system:
            target = system.ref("/app/target")
            await system.ref("/app/watcher").ask(Watch("/app/target"))
            target.tell("crash")
            target.tell("stop")  # permanent: restarted after a normal exit too
            assert await target.ask("alive?") == "alive?"
            await settle()
            assert system.snapshot().find("/app/target").restarts == 2
            assert seen == []
            await system.terminate_child("/app/target")
            await settle()
            assert [(r, reason) for r, reason, _ in seen] == [(target, "shutdown")]


async def test_terminated_at_once_when_already_gone(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[Any] = []
    with trio.fail_after(60):
        async with runtime.open_system(tree(seen)) as system:
            target = system.ref("/app/target")
            target.tell("stop")
            while target.is_alive:
                await trio.sleep(0.1)

            class LateWatcher(Actor):
                async def on_start(self) -> None:
                    self.ctx.watch(target)

                async def receive(self, msg: Any) -> Any:
                    seen.append(msg)
                    return None

            await system.start_child("/app", child(LateWatcher, name="late"))
            await settle()
            assert seen == [Terminated(target, "normal")]


async def test_no_terminated_after_unwatch(autojump_clock: trio.testing.MockClock) -> None:
    seen: list[Any] = []
    with trio.fail_after(60):
        async with runtime.open_system(tree(seen)) as system:
            watcher = system.ref("/app/watcher")
            await watcher.ask(Watch("/app/target"))
            await watcher.ask(Unwatch("/app/target"))
            system.ref("/app/target").tell("stop")
            await settle()
            assert seen == []
            assert sum(system.snapshot().dead_letters.values()) == 0


async def test_name_is_released_before_the_watcher_handles_terminated(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[Any] = []
    with trio.fail_after(60):
        async with runtime.open_system(tree(seen)) as system:
            await system.ref("/app/watcher").ask(Watch("/app/target"))
            system.ref("/app/target").tell("stop")
            await settle()
            assert len(seen) == 1
            _, _, registered = seen[0]
            assert registered is False


async def test_name_can_be_reused_once_terminated_arrives(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen: list[Any] = []
    with trio.fail_after(60):
        async with runtime.open_system(tree(seen)) as system:
            old = system.ref("/app/target")
            await system.ref("/app/watcher").ask(Watch("/app/target"))
            await system.terminate_child("/app/target")
            await settle()
            assert len(seen) == 1
            new = await system.start_child("/app", child(Target, name="target"))
            assert new.path == old.path
            assert await new.ask("hi") == "hi"
            assert not old.is_alive and new.is_alive


async def test_each_watcher_gets_its_own_terminated(
    autojump_clock: trio.testing.MockClock,
) -> None:
    seen_a: list[Any] = []
    seen_b: list[Any] = []
    app = Supervisor(
        "app",
        children=[
            child(Target, name="target", restart="temporary"),
            child(WatchesInOnStart, name="a", args=(seen_a,)),
            child(WatchesInOnStart, name="b", args=(seen_b,)),
        ],
    )
    with trio.fail_after(60):
        async with runtime.open_system(app) as system:
            target = system.ref("/app/target")
            target.tell("stop")
            await settle()
            assert seen_a == [Terminated(target, "normal")]
            assert seen_b == [Terminated(target, "normal")]


async def test_a_stopped_watcher_is_not_told(autojump_clock: trio.testing.MockClock) -> None:
    seen: list[Any] = []
    with trio.fail_after(60):
        async with runtime.open_system(tree(seen)) as system:
            await system.ref("/app/watcher").ask(Watch("/app/target"))
            await system.terminate_child("/app/watcher")
            system.ref("/app/target").tell("stop")
            await settle()
            assert seen == []
            # nothing was sent to the gone watcher's mailbox, so nothing was dead-lettered
            assert sum(system.snapshot().dead_letters.values()) == 0

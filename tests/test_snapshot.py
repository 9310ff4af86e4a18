"""system.snapshot(): ActorInfo fields, find, to_dict, render, the shape of the root."""

from __future__ import annotations

import json
from typing import Any

import pytest
import trio
import trio.testing

import runtime
from runtime import Actor, Mailbox, Supervisor, child

# -- helper actors -----------------------------------------------------------


class Busy(Actor):
    mailbox = Mailbox(capacity=50)

    def __init__(self, gate: trio.Event) -> None:
        self.gate = gate

    async def receive(self, msg: Any) -> Any:
        match msg:
            case "hold":
                await self.gate.wait()
            case "crash":
                raise LookupError("no such thing")
            case "stop":
                self.ctx.stop()
        return msg


class Idle(Actor):
    async def receive(self, msg: Any) -> Any:
        return msg


def tree(gate: trio.Event) -> Supervisor:
    return Supervisor(
        "app",
        children=[
            child(Busy, name="busy", args=(gate,)),
            Supervisor("inner", children=[child(Idle, name="idle")]),
        ],
    )


# -- tests -----------------------------------------------------------------------


async def test_actor_info_fields_of_a_busy_actor(autojump_clock: trio.testing.MockClock) -> None:
    gate = trio.Event()
    with trio.fail_after(60):
        async with runtime.open_system(tree(gate)) as system:
            ref = system.ref("/app/busy")
            await ref.ask("one")
            await ref.ask("two")
            await trio.sleep(3.0)
            ref.tell("hold")
            await trio.testing.wait_all_tasks_blocked()
            for i in range(4):
                ref.tell(i)
            await trio.sleep(2.0)
            info = system.snapshot().find("/app/busy")
            assert isinstance(info, runtime.ActorInfo)
            assert info.path == "/app/busy"
            assert info.name == "busy"
            assert info.kind == "actor"
            assert info.cls == "Busy"
            assert info.state == "running"
            assert info.restarts == 0
            assert info.mailbox_depth == 4
            assert info.mailbox_capacity == 50
            assert info.mailbox_high_water == 4
            assert info.processed == 2
            assert info.failed == 0
            assert info.dead_lettered == 0
            assert info.current == "str"
            assert info.current_for == pytest.approx(2.0)
            assert info.last_error is None
            assert info.uptime is not None and info.uptime == pytest.approx(5.0, abs=0.01)
            assert info.children == ()
            gate.set()
            await ref.ask("flush")
            info = system.snapshot().find("/app/busy")
            assert info.current is None and info.current_for is None
            assert info.processed == 8
            assert info.mailbox_depth == 0


async def test_last_error_restarts_and_failed_after_a_crash() -> None:
    gate = trio.Event()
    with trio.fail_after(10):
        async with runtime.open_system(tree(gate)) as system:
            ref = system.ref("/app/busy")
            with pytest.raises(runtime.ActorCrashed):
                await ref.ask("crash")
            await ref.ask("after")
            info = system.snapshot().find("/app/busy")
            assert info.restarts == 1
            assert info.failed == 1
            assert info.state == "running"
            assert info.dead_lettered == 1
            err = info.last_error
            assert err is not None
            assert err.type == "LookupError"
            assert err.message == "no such thing"
            assert "Traceback" in err.traceback and "no such thing" in err.traceback
            assert "receive" in err.traceback  # points at the handler that raised
            assert info.processed == 1  # the crashing message does not count as processed


async def test_supervisor_info_and_children() -> None:
    gate = trio.Event()
    with trio.fail_after(10):
        async with runtime.open_system(tree(gate)) as system:
            snap = system.snapshot()
            app = snap.find("/app")
            assert app.kind == "supervisor"
            assert app.state == "running"
            assert [c.path for c in app.children] == ["/app/busy", "/app/inner"]
            inner = snap.find("/app/inner")
            assert inner.kind == "supervisor"
            assert [c.name for c in inner.children] == ["idle"]
            idle = snap.find("/app/inner/idle")
            assert idle.cls == "Idle" and idle.kind == "actor"
            assert idle.mailbox_capacity == 10_000


async def test_root_has_system_and_the_user_tree() -> None:
    gate = trio.Event()
    with trio.fail_after(10):
        async with runtime.open_system(tree(gate)) as system:
            snap = system.snapshot()
            assert isinstance(snap, runtime.TreeSnapshot)
            assert snap.root.path == "/"
            assert snap.root.kind == "supervisor"
            assert sorted(c.path for c in snap.root.children) == ["/app", "/system"]
            assert snap.root.children[0].path == "/system"  # started first
            assert snap.find("/") is snap.root
            sys_children = [c.path for c in snap.find("/system").children]
            assert "/system/deadletters" in sys_children
            assert system.ref("/system/deadletters").is_alive


async def test_find_unknown_path_raises_actor_not_found() -> None:
    gate = trio.Event()
    with trio.fail_after(10):
        async with runtime.open_system(tree(gate)) as system:
            with pytest.raises(runtime.ActorNotFound):
                system.snapshot().find("/app/missing")


async def test_to_dict_is_json_ready_with_the_same_names() -> None:
    gate = trio.Event()
    with trio.fail_after(10):
        async with runtime.open_system(tree(gate)) as system:
            ref = system.ref("/app/busy")
            with pytest.raises(runtime.ActorCrashed):
                await ref.ask("crash")
            await ref.ask("x")
            data = system.snapshot().to_dict()
            text = json.dumps(data)
            back = json.loads(text)
            assert back["dead_letters"]["crashed"] == 1
            assert back["root"]["path"] == "/"
            app = next(c for c in back["root"]["children"] if c["path"] == "/app")
            busy = next(c for c in app["children"] if c["path"] == "/app/busy")
            for field in (
                "path",
                "name",
                "kind",
                "cls",
                "state",
                "restarts",
                "mailbox_depth",
                "mailbox_capacity",
                "mailbox_high_water",
                "processed",
                "failed",
                "dead_lettered",
                "current",
                "current_for",
                "last_error",
                "uptime",
                "children",
            ):
                assert field in busy, field
            assert busy["restarts"] == 1
            assert busy["last_error"]["type"] == "LookupError"
            assert busy["last_error"]["message"] == "no such thing"
            assert isinstance(busy["children"], list)


async def test_render_shows_every_actor() -> None:
    gate = trio.Event()
    with trio.fail_after(10):
        async with runtime.open_system(tree(gate)) as system:
            ref = system.ref("/app/busy")
            with pytest.raises(runtime.ActorCrashed):
                await ref.ask("crash")
            text = system.snapshot().render()
            for name in ("app", "busy", "inner", "idle", "system", "deadletters"):
                assert name in text, name
            assert "LookupError" in text
            assert len(text.splitlines()) >= 7


async def test_state_of_a_stopped_actor_and_the_snapshot_is_frozen() -> None:
    gate = trio.Event()
    with trio.fail_after(10):
        async with runtime.open_system(tree(gate)) as system:
            before = system.snapshot()
            ref = system.ref("/app/busy")
            await ref.ask("x")
            after = system.snapshot()
            assert before.find("/app/busy").processed == 0  # a snapshot does not change
            assert after.find("/app/busy").processed == 1
            with pytest.raises(AttributeError):
                after.root.name = "other"  # type: ignore[misc]


def test_system_is_a_reserved_top_level_name() -> None:
    with pytest.raises(ValueError, match="reserved"):
        runtime.System(Supervisor("system", children=[child(Idle, name="idle")]))


async def test_open_system_refuses_the_reserved_name() -> None:
    with trio.fail_after(10):
        with pytest.raises(ValueError, match="reserved"):
            async with runtime.open_system(Supervisor("system")):
                pytest.fail("unreachable")


async def test_state_is_restarting_during_a_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    gate = trio.Event()
    app = Supervisor(
        "app",
        children=[child(Busy, name="busy", args=(gate,))],
        backoff=runtime.Backoff(min=2.0, max=2.0, jitter=0.0),
    )
    with trio.fail_after(60):
        async with runtime.open_system(app) as system:
            ref = system.ref("/app/busy")
            ref.tell("crash")
            await trio.sleep(1.0)
            info = system.snapshot().find("/app/busy")
            assert info.state == "restarting"
            assert info.uptime is None
            assert info.last_error is not None and info.last_error.type == "LookupError"
            await trio.sleep(2.0)
            info = system.snapshot().find("/app/busy")
            assert info.state == "running"
            assert info.restarts == 1


async def test_a_crash_is_in_the_snapshot_by_the_time_the_asker_hears_of_it() -> None:
    gate = trio.Event()
    app = Supervisor("app", children=[child(Busy, name="busy", args=(gate,))], max_restarts=100)
    with trio.fail_after(10):
        async with runtime.open_system(app) as system:
            ref = system.ref("/app/busy")
            for n in range(1, 21):  # trio shuffles wake-up order; try it many times
                with pytest.raises(runtime.ActorCrashed):
                    await ref.ask("crash")
                info = system.snapshot().find("/app/busy")
                assert info.failed == n
                assert info.dead_lettered == n
                assert info.last_error is not None and info.last_error.type == "LookupError"
                await ref.ask("wait for the restart")
            assert system.snapshot().find("/app/busy").failed == 20

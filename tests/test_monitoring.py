"""Monitoring inside the process: stats and health in the snapshot, stuck
handlers, loop health and ``system.loop.blocked``, and Prometheus metrics.

Snapshot and stuck tests run on trio's virtual clock (`autojump_clock`);
loop-health and metrics tests need the real one (a blocked loop is real time,
and sockets are real I/O).
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections import deque
from typing import Any, ClassVar

import pytest
import trio
import trio.testing
from prometheus_client.parser import text_string_to_metric_families

import runtime
import runtime.top
from actors import Daemon
from runtime import Actor, Supervisor, child
from runtime.monitor import BlockedStep, LoopMonitor

VIRTUAL = 1_000.0  # virtual seconds: only a hang reaches it
WAIT = 10.0  # real seconds


class Echo(Actor):
    subscriptions: ClassVar[tuple[str, ...]] = ("demo.*",)

    async def receive(self, msg: Any) -> Any:
        return msg


class Sleeper(Actor):
    """Handles a number by sleeping that many (trio) seconds."""

    async def receive(self, msg: Any) -> Any:
        await trio.sleep(msg)
        return msg


class Blocker(Actor):
    """Blocks the whole loop: the mistake loop health is there to catch."""

    async def receive(self, msg: Any) -> Any:
        time.sleep(msg)
        return msg


class Pulse(Daemon):
    interval = 1.0

    def __init__(self, hang_at: int | None = None) -> None:
        self.hang_at = hang_at

    async def tick(self) -> None:
        if self.ticks == self.hang_at:
            await trio.sleep_forever()


def app(*children: Any) -> Supervisor:
    return Supervisor("app", children=list(children))


async def eventually(predicate: Any, what: str, timeout: float = WAIT) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


# -- stats and health in the snapshot ---------------------------------------------------


async def test_bridge_stats_and_health_are_in_the_snapshot() -> None:
    release = threading.Event()

    def fail() -> None:
        raise KeyError("nope")

    with trio.fail_after(WAIT):
        async with runtime.open_system(app(child(Echo, name="echo"))) as system:
            assert await system.run_blocking(lambda: 41 + 1) == 42
            with pytest.raises(KeyError):
                await system.run_blocking(fail)
            with pytest.raises(runtime.AskTimeout):
                await system.run_blocking(release.wait, 5, timeout=0.05)
            await eventually(
                lambda: system.snapshot().find("/system/bridge").stats["abandoned"] == 1,
                "the abandoned call to be counted",
            )
            info = system.snapshot().find("/system/bridge")
            assert info.cls == "Bridge"
            s = info.stats
            assert s["submitted"] == 3
            assert s["completed"] == 1
            assert s["failed"] == 1
            assert s["abandoned"] == 1
            assert s["abandoned_running"] == 1  # the thread still runs release.wait
            assert s["healthy"] is False
            assert "abandoned" in s["warnings"]
            release.set()
            await eventually(
                lambda: system.snapshot().find("/system/bridge").stats["abandoned_running"] == 0,
                "the abandoned thread to end",
            )
            s = system.snapshot().find("/system/bridge").stats
            assert s["healthy"] is True and s["warnings"] == ""


async def test_daemon_stats_and_health_are_in_the_snapshot(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tree = app(child(Pulse, name="pulse"), child(Pulse, name="hung", kwargs={"hang_at": 2}))
    with trio.fail_after(VIRTUAL):
        async with runtime.open_system(tree, stuck_after=3.0) as system:
            await trio.sleep(2.5)
            snap = system.snapshot()
            pulse = snap.find("/app/pulse").stats
            assert pulse["ticks"] == 3
            assert pulse["interval"] == 1.0
            assert pulse["slow_ticks"] == 0
            assert pulse["lateness"] == 0.0
            assert pulse["healthy"] is True
            hung = snap.find("/app/hung")
            assert hung.stats["ticks"] == 2  # the third tick is hanging since t=2
            assert hung.stats["healthy"] is True
            assert hung.current == "_Tick" and hung.stuck is False
            await trio.sleep(5.0)  # t=7.5: no tick for 5.5 s > 3 intervals + 1
            snap = system.snapshot()
            hung = snap.find("/app/hung")
            assert hung.stats["healthy"] is False
            assert hung.stuck is True
            assert hung.current_for == pytest.approx(5.5, abs=0.01)
            assert snap.find("/app/pulse").stats["healthy"] is True
            assert snap.find("/app/pulse").stats["ticks"] == 8
            json.dumps(snap.to_dict())


@pytest.mark.parametrize("stuck_after", [None, 2.0])
async def test_a_handler_running_too_long_is_flagged_stuck(
    autojump_clock: trio.testing.MockClock, stuck_after: float | None
) -> None:
    limit = 10.0 if stuck_after is None else stuck_after  # the default is 10 s
    options: dict[str, Any] = {} if stuck_after is None else {"stuck_after": stuck_after}
    with trio.fail_after(VIRTUAL):
        async with runtime.open_system(app(child(Sleeper, name="slow")), **options) as system:
            ref = system.ref("/app/slow")
            ref.tell(3 * limit)
            await trio.sleep(limit - 0.5)
            info = system.snapshot().find("/app/slow")
            assert info.current == "float"
            assert info.current_for == pytest.approx(limit - 0.5, abs=0.01)
            assert info.stuck is False
            await trio.sleep(1.0)
            snap = system.snapshot()
            info = snap.find("/app/slow")
            assert info.stuck is True
            assert info.current_for == pytest.approx(limit + 0.5, abs=0.01)
            assert [n.path for n in snap.root.walk() if n.stuck] == ["/app/slow"]
            assert "STUCK" in runtime.top.render_text(snap.to_dict())
            await trio.sleep(2 * limit)  # the handler finishes
            assert await ref.ask(0) == 0
            info = system.snapshot().find("/app/slow")
            assert info.stuck is False and info.current is None and info.current_for is None


async def test_to_dict_is_json_ready_with_the_new_fields(
    autojump_clock: trio.testing.MockClock,
) -> None:
    tree = app(child(Echo, name="echo"), child(Pulse, name="pulse"), child(Sleeper, name="slow"))
    with trio.fail_after(VIRTUAL):
        async with runtime.open_system(tree, stuck_after=1.0) as system:
            system.ref("/app/slow").tell(100.0)
            await trio.sleep(2.5)
            data = json.loads(json.dumps(system.snapshot().to_dict()))
            nodes = {}

            def walk(node: dict[str, Any]) -> None:
                nodes[node["path"]] = node
                for sub in node["children"]:
                    walk(sub)

            walk(data["root"])
            assert nodes["/app/slow"]["stuck"] is True
            assert nodes["/app/echo"]["stuck"] is False
            assert nodes["/app/echo"]["subscriptions"] == ["demo.*"]
            assert nodes["/app/pulse"]["stats"]["ticks"] == 3
            assert nodes["/system/bridge"]["stats"]["healthy"] is True
            assert "abandoned" in nodes["/system/bridge"]["stats"]
            loop = data["loop"]
            for field in (
                "longest_step",
                "longest_step_task",
                "longest_step_at",
                "max_lag",
                "last_lag",
                "steps",
                "blocked",
                "last_blocked",
            ):
                assert field in loop, field
            assert loop["steps"] > 0
            assert set(data) >= {"system", "root", "dead_letters", "loop", "taken_at"}


# -- loop health -----------------------------------------------------------------------


async def test_an_actor_blocking_the_loop_is_named_and_reported() -> None:
    with trio.fail_after(WAIT):
        async with runtime.open_system(app(child(Blocker, name="blocker"))) as system:
            async with system.bus.stream("system.loop.blocked") as events:
                assert await system.ref("/app/blocker").ask(0.2) == 0.2
                with trio.fail_after(WAIT):
                    async for event in events:
                        if event.payload["task"] == "/app/blocker":
                            break
            assert event.topic == "system.loop.blocked"
            assert event.source == "system"
            assert event.payload["seconds"] >= 0.2
            assert event.payload["at"] > 0
            loop = system.snapshot().loop
            assert loop is not None
            assert loop.longest_step_task == "/app/blocker"
            assert loop.longest_step >= 0.2
            assert loop.longest_step_at is not None
            assert loop.blocked >= 1
            assert isinstance(loop.last_blocked, BlockedStep)
            text = runtime.top.render_text(system.snapshot().to_dict())
            assert "(/app/blocker)" in text and "─ blocker " in text  # the loop line, a row


async def test_the_blocked_threshold_is_configurable() -> None:
    with trio.fail_after(WAIT):
        tree = app(child(Blocker, name="blocker"))
        async with runtime.open_system(tree, blocked_after=0.5) as system:
            async with system.bus.stream("system.loop.blocked") as events:
                await system.ref("/app/blocker").ask(0.2)  # under the threshold
                loop = system.snapshot().loop
                assert loop is not None
                assert loop.longest_step >= 0.2 and loop.longest_step_task == "/app/blocker"
                assert loop.blocked == 0
                await system.ref("/app/blocker").ask(0.6)  # over it
                with trio.fail_after(WAIT):
                    async for event in events:
                        assert event.payload["seconds"] > 0.5, event  # nothing under it
                        if event.payload["task"] == "/app/blocker":
                            break
            assert event.payload["seconds"] >= 0.6
            loop = system.snapshot().loop
            assert loop is not None and loop.blocked >= 1
            assert loop.last_blocked is not None and loop.last_blocked.task == "/app/blocker"


async def test_loop_monitor_names_tasks_and_survives_a_failing_report(
    caplog: pytest.LogCaptureFixture,
) -> None:
    reports: list[list[BlockedStep]] = []
    monitor = LoopMonitor(blocked_after=0.05, on_blocked=reports.append)

    async def hog() -> None:
        await trio.sleep(0)
        time.sleep(0.08)
        await trio.sleep(0)

    trio.lowlevel.add_instrument(monitor)
    try:
        with trio.fail_after(WAIT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(hog, name="hog-1")
                nursery.start_soon(hog, name="hog-2")
            await trio.sleep(0.01)  # let the batched report run
    finally:
        trio.lowlevel.remove_instrument(monitor)
    health = monitor.health()
    assert health.longest_step >= 0.08
    assert health.longest_step_task in ("hog-1", "hog-2")
    assert health.blocked >= 2
    assert sorted(s.task for batch in reports for s in batch if s.task.startswith("hog")) == [
        "hog-1",
        "hog-2",
    ]

    def broken(steps: list[BlockedStep]) -> None:
        raise RuntimeError("report failed")

    failing = LoopMonitor(blocked_after=0.05, on_blocked=broken)
    trio.lowlevel.add_instrument(failing)
    try:
        with caplog.at_level(logging.ERROR, logger="troupe"), trio.fail_after(WAIT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(hog, name="hog-3")
            await trio.sleep(0.01)
    finally:
        trio.lowlevel.remove_instrument(failing)
    assert failing.blocked >= 1
    assert "reporting a blocked loop failed" in caplog.text


class MonitorClock(trio.abc.Instrument):
    """The monitor's clock (`runtime.monitor.perf_counter`), moved by hand: installed
    as an instrument, each I/O wait of the loop seems to take `LONG` seconds (`waits`
    counts them), and `jump` adds as much anywhere (e.g. in a handler that "blocks")."""

    LONG = 600.0

    def __init__(self) -> None:
        self.offset = 0.0
        self.waits = 0

    def now(self) -> float:
        return time.perf_counter() + self.offset

    def jump(self) -> None:
        self.offset += self.LONG

    def before_io_wait(self, timeout: float) -> None:
        self.waits += 1
        self.jump()

    @classmethod
    def patched(cls, monkeypatch: pytest.MonkeyPatch) -> MonitorClock:
        """A new one, made the loop monitor's clock for the test."""
        clock = cls()
        monkeypatch.setattr(runtime.monitor, "perf_counter", clock.now)
        return clock


@pytest.fixture
def monitor_clock(monkeypatch: pytest.MonkeyPatch) -> MonitorClock:
    return MonitorClock.patched(monkeypatch)


async def test_loop_monitor_times_a_step_from_the_wake_up_not_from_the_sleep(
    monitor_clock: MonitorClock,
) -> None:
    monitor = LoopMonitor(blocked_after=monitor_clock.LONG / 2)
    monitor.install()
    trio.lowlevel.add_instrument(monitor_clock)
    try:
        await trio.sleep(0.01)  # the loop sleeps (for LONG seconds, as the monitor sees it)
        await trio.sleep(0)
    finally:
        trio.lowlevel.remove_instrument(monitor_clock)
        monitor.uninstall()
    assert monitor.steps >= 2
    assert monitor.health().longest_step < monitor_clock.LONG / 2
    assert monitor.blocked == 0


async def test_loop_monitor_installed_again_does_not_count_the_time_in_between(
    monitor_clock: MonitorClock,
) -> None:
    monitor = LoopMonitor(blocked_after=monitor_clock.LONG / 2)
    monitor.install()
    await trio.sleep(0)
    monitor.uninstall()
    monitor_clock.jump()  # the loop is blocked, but no monitor is installed to see it
    monitor.install()
    try:
        await trio.sleep(0)
        await trio.sleep(0)
    finally:
        monitor.uninstall()
    assert monitor.health().longest_step < monitor_clock.LONG / 2
    assert monitor.blocked == 0


async def test_loop_monitor_serves_handoffs_as_the_loop_wakes_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    handoffs: deque[int] = deque()
    seen: list[tuple[int, str]] = []

    def admit() -> None:
        try:
            trio.lowlevel.current_task()
            where = "in a task"
        except RuntimeError:
            where = "in the loop, outside any task"
        while handoffs:
            seen.append((handoffs.popleft(), where))

    monitor = LoopMonitor(blocked_after=10.0)
    monitor.serve_handoffs(handoffs, admit)
    monitor.install()
    try:
        handoffs.append(1)
        await trio.sleep(0)
        assert seen == [(1, "in the loop, outside any task")]
        await trio.sleep(0)  # nothing handed over: nothing admitted
        assert seen == [(1, "in the loop, outside any task")]

        def broken() -> None:
            handoffs.clear()
            raise RuntimeError("admitting failed")

        monitor.serve_handoffs(handoffs, broken)
        handoffs.append(2)
        steps = monitor.steps
        with caplog.at_level(logging.ERROR, logger="troupe"):
            await trio.sleep(0)
            await trio.sleep(0)
        assert "admitting what threads handed the loop failed" in caplog.text
        assert monitor.steps >= steps + 2  # still installed: trio drops an instrument that raises
    finally:
        monitor.uninstall()


# -- Prometheus metrics ------------------------------------------------------------------


class Gated(Actor):
    def __init__(self, gate: trio.Event) -> None:
        self.gate = gate

    async def receive(self, msg: Any) -> Any:
        await self.gate.wait()
        return msg


class Crashy(Actor):
    async def receive(self, msg: Any) -> Any:
        if msg == "crash":
            raise ValueError("boom")
        if msg == "?":
            return runtime.UNHANDLED
        return msg


def http_get(port: int, path: str) -> tuple[int, str, str]:
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=WAIT) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def key(name: str, **labels: str) -> tuple[str, frozenset[tuple[str, str]]]:
    return name, frozenset(labels.items())


async def test_metrics_serve_prometheus_text_with_the_right_values() -> None:
    gate = trio.Event()
    tree = app(
        child(Echo, name="echo"),
        child(Gated, name="gated", args=(gate,)),
        child(Crashy, name="crashy"),
        child(Blocker, name="blocker"),
        child(Echo, name="sleepy", hibernate_after=0),
    )

    def fail() -> None:
        raise OSError("disk")

    with trio.fail_after(WAIT):
        async with runtime.open_system(tree, metrics_port=0) as system:
            assert system.metrics is not None
            port = system.metrics.port
            assert isinstance(port, int) and port > 0
            echo, gated, crashy = (system.ref(f"/app/{n}") for n in ("echo", "gated", "crashy"))
            for i in range(3):
                await echo.ask(i)
            for i in range(3):
                gated.tell(i)  # one in hand, two queued
            await eventually(
                lambda: system.snapshot().find("/app/gated").current is not None, "gated busy"
            )
            with pytest.raises(runtime.ActorCrashed):
                await crashy.ask("crash")
            crashy.tell("?")
            assert await crashy.ask("after") == "after"  # restarted, the unhandled one done
            assert await system.run_blocking(lambda: 1) == 1
            with pytest.raises(OSError):
                await system.run_blocking(fail)
            await system.ref("/app/blocker").ask(0.1)

            status, kind, body = await trio.to_thread.run_sync(http_get, port, "/metrics")
            assert status == 200
            assert kind.startswith("text/plain") and "version=0.0.4" in kind
            got = samples(body)
            snap = system.snapshot()
            nodes = list(snap.root.walk())
            assert got[key("troupe_actors", state="running")] == len(nodes)
            assert got[key("troupe_actors_hibernating")] == 1  # /app/sleepy, never asked
            for state in ("starting", "restarting", "stopping", "stopped", "failed"):
                assert got[key("troupe_actors", state=state)] == 0, state
            assert got[key("troupe_messages_processed_total", path="/app/echo")] == 3
            assert got[key("troupe_messages_processed_total", path="/app/gated")] == 0
            assert got[key("troupe_mailbox_depth", path="/app/gated")] == 2
            assert got[key("troupe_mailbox_depth", path="/app/echo")] == 0
            assert got[key("troupe_restarts_total", path="/app/crashy")] == 1
            assert got[key("troupe_restarts_total", path="/app/echo")] == 0
            assert got[key("troupe_restarts_total", path="/app")] == 0  # supervisors too
            assert got[key("troupe_dead_letters_total", reason="crashed")] == 1
            assert got[key("troupe_dead_letters_total", reason="unhandled")] == 1
            assert got[key("troupe_dead_letters_total", reason="overflow")] == 0
            bridge = "/system/bridge"
            assert got[key("troupe_bridge_submitted_total", path=bridge)] == 2
            assert got[key("troupe_bridge_completed_total", path=bridge)] == 1
            assert got[key("troupe_bridge_failed_total", path=bridge)] == 1
            assert got[key("troupe_bridge_abandoned_total", path=bridge)] == 0
            assert got[key("troupe_bridge_active", path=bridge)] == 0
            assert got[key("troupe_loop_longest_step_seconds")] >= 0.1
            assert key("troupe_loop_max_lag_seconds") in got
            # a supervisor has no mailbox to report
            assert key("troupe_mailbox_depth", path="/app") not in got
            assert system.metrics.scrapes == 1

            status, _, body = await trio.to_thread.run_sync(http_get, port, "/other")
            assert status == 404
            assert "troupe_actors" not in body
            assert system.metrics.scrapes == 1
            gate.set()
            assert await gated.ask("last") == "last"
            got = samples((await trio.to_thread.run_sync(http_get, port, "/metrics"))[2])
            assert got[key("troupe_messages_processed_total", path="/app/gated")] == 4
            assert got[key("troupe_mailbox_depth", path="/app/gated")] == 0


async def test_metrics_refuse_other_methods_and_huge_headers_and_carry_on() -> None:
    with trio.fail_after(WAIT):
        async with runtime.open_system(app(child(Echo, name="echo")), metrics_port=0) as system:
            assert system.metrics is not None
            port = system.metrics.port

            async def raw(request: bytes) -> bytes:
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                async with stream:
                    await stream.send_all(request)
                    data = b""
                    while chunk := await stream.receive_some(65536):
                        data += chunk
                return data

            assert (await raw(b"POST /metrics HTTP/1.1\r\n\r\n")).startswith(b"HTTP/1.1 405")
            huge = b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20_000
            assert (await raw(huge)).startswith(b"HTTP/1.1 431")
            ok = await raw(b"GET /metrics HTTP/1.0\r\n\r\n")
            assert ok.startswith(b"HTTP/1.1 200") and b"troupe_actors" in ok
            assert await system.ref("/app/echo").ask(1) == 1

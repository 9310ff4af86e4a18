"""What ``troupe run`` prints (through real subprocesses): Ctrl-C said at once and the
stop summed up, one line and one traceback per crash, escalations that name the root
cause, repeated crashes summarized, a rate-limited warning for a blocked loop,
``--log-level`` and ``--quiet``; and ``/healthz`` and ``/readyz`` beside ``/metrics``,
loop-health attribution, and a Daemon's "last failure" naming the real error."""

from __future__ import annotations

import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from typing import Any

import trio

import runtime
import runtime.metrics
import runtime.testing
from actors import Daemon
from runtime import Actor, Supervisor, child
from runtime.logs import RepeatFilter, root_cause

WAIT = 30.0  # real seconds
ROOT = pathlib.Path(__file__).resolve().parent.parent


def troupe_run(
    tmp_path: pathlib.Path, source: str, *flags: str, name: str = "app.py"
) -> subprocess.Popen[str]:
    script = tmp_path / name
    script.write_text(textwrap.dedent(source))
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "XDG_RUNTIME_DIR": str(tmp_path),
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "runtime", "run", str(script), *flags],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=tmp_path,
    )


def wait_for_line(proc: subprocess.Popen[str], word: str) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        if word in line:
            return line
    raise AssertionError(f"{word!r} never printed")


def stop(proc: subprocess.Popen[str], after: float = 0.0) -> tuple[str, str]:
    time.sleep(after)
    proc.send_signal(signal.SIGINT)
    try:
        return proc.communicate(timeout=WAIT)
    finally:
        proc.kill()


# -- Ctrl-C ---------------------------------------------------------------------------

SLOW_STOP = """
    import trio
    from runtime import Actor, Supervisor, child

    class Slow(Actor):
        async def on_start(self):
            print("started", flush=True)

        async def on_stop(self, reason):
            await trio.sleep(1.5)

    tree = Supervisor("app", children=[child(Slow, name="a"), child(Slow, name="b", shutdown=5.0)])
"""


def test_ctrl_c_is_said_at_once_and_the_stop_summed_up(tmp_path: pathlib.Path) -> None:
    proc = troupe_run(tmp_path, SLOW_STOP)
    try:
        wait_for_line(proc, "started")
        wait_for_line(proc, "started")
        proc.send_signal(signal.SIGINT)
        assert proc.stderr is not None
        sent = time.monotonic()
        line = proc.stderr.readline()
        assert line == "troupe: stopping gracefully (Ctrl-C again to force)\n"
        assert time.monotonic() - sent < 1.0  # at once, not when the stop is over
        assert proc.poll() is None  # the on_stop hooks (3 s) are still running
        _, err = proc.communicate(timeout=WAIT)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("troupe: stopped ") and last.endswith("s"), err
    count, seconds = last.split()[2], last.split()[-1]
    assert int(count) >= 4  # /app, its two actors, and the runtime's own
    assert 2.5 <= float(seconds.rstrip("s")) < 10, last


def test_a_second_ctrl_c_forces(tmp_path: pathlib.Path) -> None:
    proc = troupe_run(tmp_path, SLOW_STOP.replace("trio.sleep(1.5)", "trio.sleep(30)"))
    try:
        wait_for_line(proc, "started")
        wait_for_line(proc, "started")
        proc.send_signal(signal.SIGINT)
        assert proc.stderr is not None
        assert "stopping gracefully" in proc.stderr.readline()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=WAIT)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "forced" in err


# -- crashes: once, with the root cause ----------------------------------------------

BAD_START = """
    from runtime import Actor, Supervisor, child

    class Bad(Actor):
        async def on_start(self):
            raise ValueError("cannot open the database")

    tree = Supervisor("app", children=[Supervisor("inner", children=[child(Bad, name="bad")])])
"""


def test_a_failed_start_is_logged_once_not_once_per_supervisor(tmp_path: pathlib.Path) -> None:
    proc = troupe_run(tmp_path, BAD_START)
    _, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 1, err
    assert err.count("Traceback") == 1, err
    # the log line, the traceback's source line and last line, and the exit's line
    assert err.count("cannot open the database") == 4, err
    assert "/app/inner/bad failed to start: ValueError('cannot open the database')" in err
    assert err.strip().splitlines()[-1] == (
        "troupe: the tree failed: ValueError: cannot open the database"
    )


GIVES_UP = """
    import trio
    from actors import Daemon
    from runtime import Supervisor, child

    class Fetch(Daemon):
        interval = 0.1

        async def tick(self):
            async with trio.open_nursery() as nursery:  # the error comes in a group
                nursery.start_soon(self.fetch)

        async def fetch(self):
            raise ConnectionError("upstream down")

    tree = Supervisor(
        "app",
        max_restarts=1,
        within=30,
        children=[
            Supervisor("inner", max_restarts=2, within=30, children=[child(Fetch, name="d")])
        ],
    )
"""


def test_escalations_are_one_line_naming_the_root_cause(tmp_path: pathlib.Path) -> None:
    proc = troupe_run(tmp_path, GIVES_UP)
    _, err = proc.communicate(timeout=WAIT)
    assert proc.returncode == 1, err
    lines = [line for line in err.splitlines() if " ERROR " in line or line.startswith("troupe:")]
    crashes = [line for line in lines if "/app/inner/d crashed" in line]
    assert crashes and all("ConnectionError('upstream down')" in line for line in crashes)
    gave_up = [line for line in lines if " ERROR troupe: " in line and " failed: " in line]
    assert gave_up, err
    for line in gave_up:  # /app/inner each time, /app once: one line each
        assert "gave up: more than" in line, line
        assert "root cause: /app/inner/d: ConnectionError('upstream down')" in line, line
    assert [line.split(" ERROR troupe: ")[1][:20] for line in gave_up].count(
        "/app failed: gave up"
    ) == 1, gave_up
    last = lines[-1]
    assert last.startswith("troupe: the tree failed: RestartIntensityExceeded: supervisor /app")
    assert "root cause /app/inner/d: ConnectionError('upstream down')" in last
    for line in lines:
        assert "ExceptionGroup" not in line, line
    # one traceback per crash shown (the same again is summarized): none for the
    # supervisors that gave up
    assert err.count("Traceback") == len([c for c in crashes if "(same error" not in c]), err
    assert "RestartIntensityExceeded" not in err.replace(last, "")


def test_a_daemon_whose_tick_raises_in_a_group_names_the_real_error() -> None:
    class Fetch(Daemon):
        interval = 0.1

        async def tick(self) -> None:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self.fetch)

        async def fetch(self) -> None:
            raise ConnectionError("upstream down")

    tree = Supervisor("app", max_restarts=2, within=30, children=[child(Fetch, name="d")])

    async def main() -> None:
        async with runtime.open_system(tree):
            await trio.sleep_forever()

    logging.getLogger("troupe").setLevel(logging.CRITICAL)
    try:
        trio.run(main)
    except runtime.RestartIntensityExceeded as exc:
        assert "last failure: /app/d: ConnectionError('upstream down')" in str(exc)
        assert "ExceptionGroup" not in str(exc)
        path, cause = root_cause("/app", exc)
        assert path == "/app/d" and isinstance(cause, ConnectionError)
    else:
        raise AssertionError("the tree did not fail")
    finally:
        logging.getLogger("troupe").setLevel(logging.NOTSET)


STORM = """
    import time
    import trio
    from actors import Daemon
    from runtime import Supervisor, child

    class Flaky(Daemon):
        interval = 1.0

        async def tick(self):
            await trio.sleep(0.05)
            raise ConnectionError("upstream down")

    class Slow(Daemon):
        interval = 0.2

        async def on_start(self):
            await super().on_start()
            print("started", flush=True)

        async def tick(self):
            time.sleep(0.1)  # blocks the loop: every actor waits

    tree = Supervisor(
        "app",
        max_restarts=10_000,
        within=1,
        children=[child(Flaky, name="flaky"), child(Slow, name="slow")],
    )
"""


def test_repeated_crashes_are_summarized_and_a_blocked_loop_warned_once(
    tmp_path: pathlib.Path,
) -> None:
    proc = troupe_run(tmp_path, STORM)
    try:
        wait_for_line(proc, "started")
        _, err = stop(proc, after=2.5)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    crashes = [line for line in err.splitlines() if "/app/flaky crashed" in line]
    assert err.count("Traceback") == 1, err  # the first crash in full
    assert len(crashes) == 2, err  # ... and one summary of the others, at the end
    assert "(same error " in crashes[1] and " more times in " in crashes[1], crashes
    repeats = int(crashes[1].split("(same error ")[1].split()[0])
    assert repeats >= 10, crashes
    stalls = [line for line in err.splitlines() if "the loop was blocked" in line]
    assert len(stalls) == 1, err  # about 12 stalls, one warning per 5 s
    assert " WARNING troupe.monitor: " in stalls[0]
    assert "by /app/slow " in stalls[0], stalls


def test_quiet_and_log_level(tmp_path: pathlib.Path) -> None:
    source = """
        import logging
        from runtime import Actor, Supervisor, child

        class Talks(Actor):
            async def on_start(self):
                logging.getLogger("app").debug("the debug line")
                logging.getLogger("app").info("the info line")
                logging.getLogger("app").warning("the warning line")
                print("started", flush=True)

        tree = Supervisor("app", children=[child(Talks, name="t")])
    """
    seen = {}
    for flags in ((), ("--quiet",), ("--log-level", "debug"), ("--log-level", "ERROR")):
        proc = troupe_run(tmp_path, source, *flags)
        try:
            wait_for_line(proc, "started")
            _, err = stop(proc)
        finally:
            proc.kill()
        assert proc.returncode == 0, err
        seen[flags] = [word for word in ("debug", "info", "warning") if f"the {word} line" in err]
        assert "stopping gracefully" in err  # said whatever the level
    assert seen == {
        (): ["info", "warning"],
        ("--quiet",): ["warning"],
        ("--log-level", "debug"): ["debug", "info", "warning"],
        ("--log-level", "ERROR"): [],
    }


def test_repeat_filter_summarizes_identical_errors() -> None:
    now = [0.0]
    emitted: list[logging.LogRecord] = []
    repeats = RepeatFilter(10.0, clock=lambda: now[0])
    logger = logging.getLogger("troupe.test_run_console")

    def record(path: str, level: int = logging.ERROR) -> logging.LogRecord:
        return logger.makeRecord(
            logger.name, level, __file__, 1, "%s %s: %s", (path, "crashed", "E('x')"), None
        )

    shown = []
    for second in range(25):
        now[0] = float(second)
        for path in ("/a", "/b") if second < 2 else ("/a",):
            item = record(path)
            if repeats.filter(item):
                shown.append(item.getMessage())
    assert repeats.filter(record("/a", logging.WARNING))  # warnings are never held back
    assert shown == [
        "/a crashed: E('x')",
        "/b crashed: E('x')",
        "/a crashed: E('x') (same error 10 more times in 10 s)",
        "/a crashed: E('x') (same error 10 more times in 10 s)",
    ]
    repeats.emit = emitted.append
    repeats.flush()  # the 4 not shown yet (seconds 21-24), and /b's one
    assert sorted(r.getMessage() for r in emitted) == [
        "/a crashed: E('x') (same error 4 more times in 4 s)",
        "/b crashed: E('x') (same error 1 more time in 24 s)",
    ]


# -- loop-health attribution -----------------------------------------------------------


class Helper(Actor):
    """Blocks the loop from a task of its own (not its message loop)."""

    async def receive(self, msg: Any) -> Any:
        self.ctx.nursery.start_soon(self._block)

    async def _block(self) -> None:
        await trio.sleep(0)
        time.sleep(0.08)


async def test_loop_health_names_the_actor_not_an_internal_function() -> None:
    tree = Supervisor("app", children=[child(Helper, name="helper")])
    with trio.fail_after(WAIT):
        async with runtime.open_system(tree, blocked_after=0.05) as system:
            async with system.bus.stream("system.loop.blocked") as events:
                system.ref("/app/helper").tell("go")
                async for event in events:
                    if event.payload["seconds"] >= 0.07:
                        break
            assert event.payload["task"] == "/app/helper"
            loop = system.snapshot().loop
            assert loop is not None and loop.longest_step_task == "/app/helper"


async def test_runtime_steps_are_named_as_the_runtime() -> None:
    from runtime.monitor import attribute

    names: dict[str, str] = {}

    async def sample(key: str) -> None:
        names[key] = attribute(trio.lowlevel.current_task())

    tree = Supervisor("app", children=[])
    async with runtime.open_system(tree) as system:
        token = trio.lowlevel.current_trio_token()
        await trio.to_thread.run_sync(lambda: token.run_sync_soon(lambda: None))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sample, "mine", name="my task")
            nursery.start_soon(sample, "unnamed")
        assert system.is_running
    assert names["mine"] == "my task"  # a task outside the tree keeps its name
    assert names["unnamed"].endswith("sample")  # a user's function: not the runtime's
    assert not names["unnamed"].startswith("runtime")


# -- /healthz and /readyz --------------------------------------------------------------


def http_get(port: int, path: str) -> tuple[int, str, Any]:
    url = f"http://127.0.0.1:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=WAIT) as response:
            return response.status, response.headers["Content-Type"], json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], json.loads(exc.read())


async def get(port: int, path: str) -> tuple[int, str, Any]:
    return await trio.to_thread.run_sync(http_get, port, path)


class Sticks(Actor):
    def __init__(self, unstick: trio.Event | None = None) -> None:
        self.unstick = unstick

    async def receive(self, msg: Any) -> Any:
        if msg == "stick":  # until the test says (or the shutdown timeout cancels it)
            if self.unstick is None:
                await trio.sleep(30)
            else:
                await self.unstick.wait()
        if msg == "crash":
            raise ValueError("broken for good")
        return msg

    async def on_stop(self, reason: Any) -> None:
        await trio.sleep(1.0)  # a slow stop: the endpoints are asked meanwhile


async def test_healthz_and_readyz() -> None:
    unstick = trio.Event()
    tree = Supervisor("app", children=[child(Sticks, name="s", args=(unstick,), shutdown=5.0)])
    with trio.fail_after(WAIT):
        async with runtime.open_system(tree, metrics_port=0, stuck_after=0.3) as system:
            port = system.metrics.port
            code, kind, body = await get(port, "/readyz")
            assert (code, kind, body) == (
                200,
                "application/json",
                {"status": "ready", "ready": True, "system": "app"},
            )
            code, _, body = await get(port, "/healthz")
            assert code == 200 and body["status"] == "healthy" and body["healthy"] is True
            assert body["checks"] == {
                "tree": {"ok": True},
                "loop": {"ok": True},
                "actors": {"ok": True},
            }
            system.ref("/app/s").tell("stick")
            await trio.sleep(0.5)
            code, _, body = await get(port, "/healthz")
            assert code == 503 and body["status"] == "unhealthy"
            assert body["checks"]["actors"]["ok"] is False
            assert "/app/s handling" in body["checks"]["actors"]["problem"]
            system.stop()
            code, _, body = await get(port, "/readyz")  # /app/s is still stuck
            assert code == 503 and body["status"] == "stopping"
            unstick.set()  # the stop goes on (on_stop takes a second)
    assert system.metrics.readiness()[1]["status"] == "stopping"


async def test_healthz_is_unhealthy_when_the_tree_fails() -> None:
    tree = Supervisor("app", max_restarts=0, within=1, children=[child(Sticks, name="s")])
    logging.getLogger("troupe").setLevel(logging.CRITICAL)
    answers: list[tuple[int, Any]] = []
    try:
        with trio.fail_after(WAIT):
            try:
                async with runtime.open_system(tree, metrics_port=0) as system:
                    port = system.metrics.port
                    async with trio.open_nursery() as nursery:
                        # a call in flight on /system/bridge: the root's stop waits for it
                        nursery.start_soon(system.run_blocking, time.sleep, 2.0)
                        await trio.sleep(0.1)
                        system.ref("/app/s").tell("crash")  # /app gives up: the tree fails
                        await trio.sleep(1.2)  # /app/s's on_stop takes a second
                        answers.append((await get(port, "/healthz"))[::2])
                        answers.append((await get(port, "/readyz"))[::2])
            except runtime.RestartIntensityExceeded:
                pass
    finally:
        logging.getLogger("troupe").setLevel(logging.NOTSET)
    (code, health), (ready_code, ready) = answers
    assert code == 503 and health["status"] == "unhealthy", health
    problem = health["checks"]["tree"]["problem"]
    assert problem.startswith("/app failed: RestartIntensityExceeded"), problem
    assert "/app/s: ValueError('broken for good')" in problem
    assert ready_code == 503 and ready["status"] == "stopping"
    # and once it failed (the endpoints are gone with the system: asked directly)
    code, after = runtime.metrics.MetricsServer(system, 0).health()
    assert code == 503
    assert after["checks"]["tree"]["problem"] == (
        "failed: gave up: more than 0 restarts within 1s; "
        "root cause: /app/s: ValueError('broken for good')"
    )


def escalating_tree() -> Supervisor:
    """/app/inner gives up at the first crash of /app/inner/s; /app restarts it."""
    inner = Supervisor("inner", max_restarts=0, within=1, children=[child(Sticks, name="s")])
    return Supervisor("app", max_restarts=10, within=1, children=[inner])


async def test_healthz_is_unhealthy_after_a_nested_supervisor_escalated() -> None:
    # DESIGN (Monitoring, Health): "unhealthy when a supervisor has escalated" -- also
    # one whose parent restarted it and carries on (for RECENT seconds)
    tree = escalating_tree()
    logging.getLogger("troupe").setLevel(logging.CRITICAL)
    try:
        with trio.fail_after(WAIT):
            async with runtime.open_system(tree, metrics_port=0) as system:
                port = system.metrics.port
                code, _, body = await get(port, "/healthz")
                assert code == 200, body
                system.ref("/app/inner/s").tell("crash")  # /app/inner gives up, /app restarts it
                await runtime.testing.wait_for(
                    lambda: system.snapshot().find("/app/inner").restarts == 1, timeout=WAIT
                )
                code, _, body = await get(port, "/healthz")
                assert code == 503 and body["checks"]["tree"]["ok"] is False, body
                assert "escalated" in body["checks"]["tree"]["problem"]
                assert body["checks"]["tree"]["escalated"]
    finally:
        logging.getLogger("troupe").setLevel(logging.NOTSET)


async def test_healthz_names_an_escalation_with_no_event_history() -> None:
    # history=0 keeps no events: health must not depend on the bus's history
    tree = escalating_tree()
    logging.getLogger("troupe").setLevel(logging.CRITICAL)
    try:
        with trio.fail_after(WAIT):
            async with runtime.open_system(tree, metrics_port=0, history=0) as system:
                port = system.metrics.port
                system.ref("/app/inner/s").tell("crash")  # /app/inner gives up, /app restarts it
                await runtime.testing.wait_for(
                    lambda: system.snapshot().find("/app/inner").restarts == 1, timeout=WAIT
                )
                assert system.bus.history(">") == []
                code, _, body = await get(port, "/healthz")
    finally:
        logging.getLogger("troupe").setLevel(logging.NOTSET)
    assert code == 503 and body["status"] == "unhealthy", body
    tree_check = body["checks"]["tree"]
    assert tree_check["ok"] is False
    assert tree_check["problem"].startswith(
        "a supervisor escalated less than 30 s ago: /app/inner: "
    )
    assert "ValueError('broken for good')" in tree_check["problem"]
    assert [e.split(":")[0] for e in tree_check["escalated"]] == ["/app/inner"]


async def test_healthz_names_an_escalation_after_the_history_filled_up(
    autojump_clock: Any,
) -> None:
    # more events since than the history keeps: the escalation is still seen
    tree = escalating_tree()
    logging.getLogger("troupe").setLevel(logging.CRITICAL)
    try:
        with trio.fail_after(WAIT):
            async with runtime.open_system(tree, metrics_port=0, history=5) as system:
                system.ref("/app/inner/s").tell("crash")
                await runtime.testing.wait_for(
                    lambda: system.snapshot().find("/app/inner").restarts == 1, timeout=WAIT
                )
                for n in range(20):
                    system.publish("noise", n)
                assert not system.bus.history("system.supervisor.escalated")
                code, body = system.metrics.health()
    finally:
        logging.getLogger("troupe").setLevel(logging.NOTSET)
    assert code == 503, body
    assert body["checks"]["tree"]["escalated"][0].startswith("/app/inner: ")

"""`troupe ls|tree|top|events` as an operator runs them: subprocesses against a
running example, each run in its own ``XDG_RUNTIME_DIR`` (never the real one).
And `top` rendered once to a string, in-process.
"""

from __future__ import annotations

import os
import pathlib
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import trio

import runtime
import runtime.control
import runtime.top
from runtime import Actor, Mailbox, Supervisor, child

WAIT = 30.0  # real seconds: a bound that only a hang reaches (subprocesses start slowly)

SCRIPT = textwrap.dedent(
    """
    import trio
    from runtime import Actor, Supervisor, child

    class Ticker(Actor):
        async def on_start(self):
            self.ctx.nursery.start_soon(self.beat)

        async def beat(self):
            n = 0
            while True:
                self.ctx.publish_nowait("demo.tick", {"n": n})
                n += 1
                await trio.sleep(0.05)

        async def receive(self, msg):
            return msg

    class Worker(Actor):
        async def receive(self, msg):
            return msg

    tree = Supervisor("demo", children=[
        child(Ticker, name="ticker"),
        Supervisor("workers", children=[child(Worker, name="w1"), child(Worker, name="w2")]),
    ])
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Place:
    """A private XDG_RUNTIME_DIR with the example script in it."""

    def __init__(self) -> None:
        self.root = pathlib.Path(tempfile.mkdtemp(prefix="troupe-cli-"))
        self.script = self.root / "demo_app.py"
        self.script.write_text(SCRIPT)
        self.sockets = self.root / "troupe"
        self.env = {**os.environ, "XDG_RUNTIME_DIR": str(self.root), "PYTHONUNBUFFERED": "1"}
        self.procs: list[subprocess.Popen[str]] = []

    def start(self, *args: str) -> subprocess.Popen[str]:
        """`troupe run SCRIPT ARGS`, once its control socket answers."""
        before = set(self.sockets.glob("*.sock")) if self.sockets.is_dir() else set()
        proc = subprocess.Popen(
            [sys.executable, "-m", "runtime", "run", str(self.script), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
            cwd=self.root,
        )
        self.procs.append(proc)
        deadline = time.monotonic() + WAIT
        while True:
            assert proc.poll() is None, f"troupe run ended: {proc.communicate()}"
            assert time.monotonic() < deadline, "the control socket did not appear"
            new = [p for p in self.sockets.glob("*.sock") if p not in before]
            if self.sockets.is_dir() and new:
                [path] = new
                assert path.name.endswith(f"-{proc.pid}.sock")
                try:
                    endpoint = next(
                        e for e in runtime.control.endpoints(self.sockets) if e.path == path
                    )
                    with runtime.control.Client(endpoint, timeout=WAIT) as client:
                        client.call("info")
                    return proc
                except OSError:
                    pass  # bound, not yet listening
            time.sleep(0.02)

    def troupe(self, *args: str, exe: str | None = None) -> subprocess.CompletedProcess[str]:
        command = [exe] if exe else [sys.executable, "-m", "runtime"]
        return subprocess.run(
            [*command, *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=WAIT,
            cwd=self.root,
        )

    def tail(self, *args: str) -> tuple[subprocess.Popen[str], queue.Queue[str | None]]:
        """Start a long-running `troupe ...`; its stdout lines arrive in the queue."""
        proc = subprocess.Popen(
            [sys.executable, "-m", "runtime", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
            cwd=self.root,
        )
        self.procs.append(proc)
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        return proc, lines

    def stop(self, proc: subprocess.Popen[str]) -> tuple[int, str, str]:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=WAIT)
        return proc.returncode, out, err

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=WAIT)
        shutil.rmtree(self.root, ignore_errors=True)


def next_line(lines: queue.Queue[str | None], containing: str) -> str:
    deadline = time.monotonic() + WAIT
    while True:
        left = deadline - time.monotonic()
        assert left > 0, f"no line with {containing!r}"
        line = lines.get(timeout=left)
        assert line is not None, f"the process ended before printing {containing!r}"
        if containing in line:
            return line


@pytest.fixture
def place() -> Iterator[Place]:
    p = Place()
    try:
        yield p
    finally:
        p.close()


@pytest.fixture(scope="module")
def demo() -> Iterator[tuple[Place, subprocess.Popen[str], int]]:
    """One running example (with metrics) shared by the read-only tests."""
    p = Place()
    try:
        port = free_port()
        proc = p.start("--metrics-port", str(port))
        yield p, proc, port
        code, _, err = p.stop(proc)
        assert code == 0, err
        assert list(p.sockets.glob("*.sock")) == []  # removed on a clean stop
    finally:
        p.close()


# -- against one running system -----------------------------------------------------------


def test_ls_lists_the_running_system(demo: tuple[Place, subprocess.Popen[str], int]) -> None:
    place, proc, _ = demo
    exe = shutil.which("troupe", path=os.path.dirname(sys.executable))
    for result in (place.troupe("ls"), place.troupe("ls", exe=exe)):
        assert result.returncode == 0, result.stderr
        header, *rows = result.stdout.splitlines()
        assert header.split() == ["SYSTEM", "PID", "UPTIME", "ACTORS"]
        assert len(rows) == 1
        name, pid, uptime, actors = rows[0].split()
        assert (name, pid) == ("demo", str(proc.pid))
        assert re.fullmatch(r"\d+:\d\d:\d\d", uptime)
        assert int(actors) == 11  # /, /system and its 4, /demo, ticker, workers, w1, w2


def test_tree_prints_the_tree(demo: tuple[Place, subprocess.Popen[str], int]) -> None:
    place, proc, _ = demo
    for args in (
        ("tree",),
        ("tree", "demo"),
        ("tree", f"demo-{proc.pid}"),
        ("tree", str(proc.pid)),
    ):
        result = place.troupe(*args)
        assert result.returncode == 0, (args, result.stderr)
        text = result.stdout
        assert text.startswith("demo")
        for name in ("demo [running]", "ticker [running]", "workers [running]", "w1", "w2"):
            assert name in text, (args, name)
        assert "system [running]" in text and "bridge" in text
        assert "mailbox 0/" in text


def test_top_once_prints_a_frame(demo: tuple[Place, subprocess.Popen[str], int]) -> None:
    place, _, _ = demo
    for sort in ("depth", "restarts", "rate", "path"):
        result = place.troupe("top", "--once", "--sort", sort)
        assert result.returncode == 0, result.stderr
        text = result.stdout
        for label in ("├─ demo", "ticker", "├─ w1", "└─ w2", "─ bridge"):  # a tree
            assert label in text, (sort, label)
        assert "running" in text
        assert "loop: longest step" in text
        assert "dead letters" in text
        assert "\x1b[" not in text  # plain text when not on a terminal


def test_events_tails_what_the_example_publishes(
    demo: tuple[Place, subprocess.Popen[str], int],
) -> None:
    place, _, _ = demo
    for args in (("events", "demo.*"), ("events", "demo", "demo.tick")):
        proc, lines = place.tail(*args)
        try:
            line = next_line(lines, "demo.tick")
            assert re.match(r"\d\d:\d\d:\d\d demo\.tick from /demo/ticker: \{'n': \d+\}", line)
        finally:
            proc.kill()
            proc.communicate(timeout=WAIT)


def test_run_serves_metrics(demo: tuple[Place, subprocess.Popen[str], int]) -> None:
    _, _, port = demo
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=WAIT) as response:
        assert response.status == 200
        body = response.read().decode()
    assert 'troupe_actors{state="running"} 11.0' in body
    assert 'troupe_mailbox_depth{path="/demo/workers/w1"} 0.0' in body
    assert 'troupe_restarts_total{path="/demo/ticker"} 0.0' in body
    assert 'troupe_bridge_submitted_total{path="/system/bridge"} 0.0' in body
    assert "troupe_loop_longest_step_seconds" in body
    assert 'troupe_dead_letters_total{reason="crashed"} 0.0' in body


# -- none, or several ------------------------------------------------------------------------


def test_with_no_system_running_the_commands_say_so(place: Place) -> None:
    place.sockets.mkdir(mode=0o700)
    result = place.troupe("ls")
    assert result.returncode == 0
    assert "no Troupe systems are running" in result.stdout
    for args in (("tree",), ("top", "--once"), ("events", "demo.*"), ("tree", "demo")):
        result = place.troupe(*args)
        assert result.returncode == 2, (args, result)
        assert result.stderr.startswith("troupe: "), args
        assert "Traceback" not in result.stderr
        assert "no Troupe system is running" in result.stderr or "no running system" in (
            result.stderr
        ), (args, result.stderr)


def test_with_several_systems_one_must_be_named(place: Place) -> None:
    one = place.start("--name", "one")
    two = place.start("--name", "two")
    listed = place.troupe("ls")
    assert listed.returncode == 0, listed.stderr
    rows = {line.split()[0]: line.split()[1] for line in listed.stdout.splitlines()[1:]}
    assert rows == {"one": str(one.pid), "two": str(two.pid)}
    for args in (("tree",), ("top", "--once"), ("events", "demo.*")):
        result = place.troupe(*args)
        assert result.returncode == 2, (args, result)
        assert "2 systems are running" in result.stderr, args
        assert f"one-{one.pid}" in result.stderr and f"two-{two.pid}" in result.stderr
    named = place.troupe("tree", "two")
    assert named.returncode == 0, named.stderr
    assert named.stdout.startswith("two")
    assert place.troupe("top", "one", "--once").returncode == 0

    # a tail of `one` ends cleanly when `one` stops; `two` is untouched
    tail, lines = place.tail("events", "one", "demo.tick")
    next_line(lines, "demo.tick")
    code, _, err = place.stop(one)
    assert code == 0, err
    _, tail_err = tail.communicate(timeout=WAIT)
    assert tail.returncode == 0
    assert "the system stopped" in tail_err
    assert [p.name for p in place.sockets.glob("*.sock")] == [f"two-{two.pid}.sock"]
    alone = place.troupe("tree")  # now only one runs: SYSTEM may be omitted
    assert alone.returncode == 0 and alone.stdout.startswith("two"), alone.stderr
    code, _, err = place.stop(two)
    assert code == 0, err


def test_a_crashed_systems_socket_is_cleaned_up(place: Place) -> None:
    proc = place.start()
    [path] = place.sockets.glob("*.sock")
    proc.kill()  # no chance to remove its socket
    proc.communicate(timeout=WAIT)
    assert path.exists()
    result = place.troupe("tree")
    assert result.returncode == 2
    assert "no Troupe system is running" in result.stderr
    assert not path.exists()


# -- top rendered in-process ---------------------------------------------------------------


class Held(Actor):
    mailbox = Mailbox(capacity=20)

    def __init__(self, gate: trio.Event) -> None:
        self.gate = gate

    async def receive(self, msg: Any) -> Any:
        if msg == "crash":
            raise ValueError("boom")
        await self.gate.wait()
        return msg


class Quiet(Actor):
    async def receive(self, msg: Any) -> Any:
        return msg


async def test_render_text_draws_one_frame_of_top() -> None:
    gate = trio.Event()
    tree = Supervisor(
        "app",
        children=[child(Quiet, name="aaa"), child(Held, name="held", args=(gate,))],
    )
    with trio.fail_after(10):
        async with runtime.open_system(tree) as system:
            held = system.ref("/app/held")
            await system.ref("/app/aaa").ask("one")
            try:
                with pytest.raises(runtime.ActorCrashed):
                    await held.ask("crash")
                for i in range(4):
                    held.tell(i)  # one in hand, three queued
                with trio.fail_after(10):
                    while system.snapshot().find("/app/held").mailbox_depth != 3:
                        await trio.sleep(0.01)
                snap = system.snapshot().to_dict()
                text = runtime.top.render_text(snap)
                lines = text.splitlines()
                assert lines[0].startswith("app")
                assert f"{len(list(system.snapshot().root.walk()))} actors" in lines[0]
                assert "dead letters: crashed 1" in lines[0]
                for name in ("─ aaa", "─ held", "─ bridge", "─ bus"):
                    assert name in text, name
                row = next(line for line in lines if "─ held " in line)
                assert "running" in row
                assert "3/20" in row
                assert "ValueError: boom" in row
                assert "int" in row  # the message in hand
                for header in ("ACTOR", "STATE", "MAILBOX", "MSG/S", "RESTARTS", "LAST ERROR"):
                    assert header in text

                def order(rendered: str) -> list[str]:  # /app's children, as shown
                    return re.findall(r"^[│ ]  [├└]─ (aaa|held) ", rendered, re.M)

                assert order(text) == ["held", "aaa"]  # the deepest mailbox first
                assert order(runtime.top.render_text(snap, sort="path")) == ["aaa", "held"]
                rate = {"/app/aaa": 7.0}
                by_rate = runtime.top.render_text(snap, rate, sort="rate")
                assert order(by_rate) == ["aaa", "held"]
                assert re.search(r"─ aaa .* 7\.0 +1 ", by_rate)  # MSG/S, PROCESSED
                assert order(runtime.top.render_text(snap, sort="restarts")) == ["held", "aaa"]
            finally:
                gate.set()

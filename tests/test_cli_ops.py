"""The operator commands, as an operator runs them: `troupe deadletters`, `send`, `ask`,
`kill`, `stop`, `--version`, `events` (cut to the terminal, SYSTEM or PATTERN), each a
subprocess against a running system in its own ``XDG_RUNTIME_DIR``; and
`start_in_thread(..., control=True, metrics_port=...)` watched by `troupe tree`.
"""

from __future__ import annotations

import importlib.metadata
import json
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

import pytest

import runtime.control
from runtime.control import Client, ControlError
from runtime.messages import short_repr

WAIT = 30.0  # real seconds: a bound only a hang reaches (subprocesses start slowly)

SCRIPT = textwrap.dedent(
    """
    import trio
    from runtime import UNHANDLED, Actor, Supervisor, child

    class Bad:
        def __repr__(self):
            raise RuntimeError("no repr for you")

    class Point:
        def __init__(self, x):
            self.x = x

        def __repr__(self):
            return f"Point({self.x})"

    class Echo(Actor):
        async def receive(self, msg):
            if msg == "boom":
                raise ValueError("boom requested")
            if msg == "point":
                return Point(3)
            if msg == "ignore":
                return UNHANDLED
            return {"echo": msg}

    class Sleeper(Actor):
        async def receive(self, msg):
            await trio.sleep(float(msg))
            return "awake"

    class Recorder(Actor):
        def __init__(self):
            self.got = []

        async def receive(self, msg):
            if msg == "got":
                return self.got
            self.got.append(msg)

    class Sink(Actor):
        async def receive(self, msg):
            return UNHANDLED

    class Dropper(Actor):
        # what it is told makes dead letters JSON cannot carry: a repr that raises,
        # a huge list, a huge string
        async def receive(self, msg):
            sink = self.ctx.system.ref("/demo/sink")
            sink.tell(Bad())
            sink.tell(list(range(100_000)))
            sink.tell("y" * 100_000)
            return "dropped"

    class Ticker(Actor):
        async def on_start(self):
            self.ctx.nursery.start_soon(self.beat)

        async def beat(self):
            n = 0
            while True:
                self.ctx.publish_nowait("demo.tick", {"n": n})
                self.ctx.publish_nowait("demo.big", {"blob": "x" * 500})
                n += 1
                await trio.sleep(0.05)

        async def receive(self, msg):
            return msg

    class Victim(Actor):
        async def receive(self, msg):
            return msg

    tree = Supervisor("demo", max_restarts=100, children=[
        child(Echo, name="echo"),
        child(Sleeper, name="sleeper"),
        child(Recorder, name="recorder"),
        child(Sink, name="sink"),
        child(Dropper, name="dropper"),
        child(Ticker, name="ticker"),
        Supervisor("workers", children=[child(Victim, name="victim")]),
        Supervisor("fragile", max_restarts=0, children=[child(Victim, name="victim")]),
    ])
    """
)

THREADED = textwrap.dedent(
    """
    import sys, time
    import runtime
    from runtime import Actor, Supervisor, child

    class Echo(Actor):
        async def receive(self, msg):
            return msg

    tree = Supervisor("threaded", children=[child(Echo, name="echo")])
    port = int(sys.argv[1])
    with runtime.start_in_thread(tree, control=True, metrics_port=port) as system:
        print("ready", flush=True)
        while system.is_running:   # until `troupe stop`
            time.sleep(0.02)
    print("stopped", flush=True)
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Place:
    """A private XDG_RUNTIME_DIR with the scripts in it."""

    def __init__(self) -> None:
        self.root = pathlib.Path(tempfile.mkdtemp(prefix="troupe-ops-"))
        (self.root / "ops_app.py").write_text(SCRIPT)
        (self.root / "threaded_app.py").write_text(THREADED)
        self.sockets = self.root / "troupe"
        self.env = {**os.environ, "XDG_RUNTIME_DIR": str(self.root), "PYTHONUNBUFFERED": "1"}
        self.env.pop("COLUMNS", None)
        self.procs: list[subprocess.Popen[str]] = []

    def popen(self, *command: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, *command],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**self.env, **(env or {})},
            cwd=self.root,
        )
        self.procs.append(proc)
        return proc

    def wait_for_socket(self, proc: subprocess.Popen[str]) -> None:
        deadline = time.monotonic() + WAIT
        while True:
            assert proc.poll() is None, f"the system ended: {proc.communicate()}"
            assert time.monotonic() < deadline, "the control socket did not appear"
            mine = [e for e in runtime.control.endpoints(self.sockets) if e.pid == proc.pid]
            if mine:
                try:
                    with Client(mine[0], timeout=WAIT) as client:
                        client.call("info")
                    return
                except OSError:
                    pass  # bound, not yet listening
            time.sleep(0.02)

    def troupe(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "runtime", *args],
            capture_output=True,
            text=True,
            env={**self.env, **env},
            timeout=WAIT,
            cwd=self.root,
        )

    def tail(self, *args: str, **env: str) -> tuple[subprocess.Popen[str], queue.Queue[str | None]]:
        proc = self.popen("-m", "runtime", *args, env=env)
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                lines.put(line.rstrip("\n"))
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        return proc, lines

    def client(self, system: str) -> Client:
        return Client(runtime.control.pick(system, self.sockets), timeout=WAIT)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.communicate(timeout=WAIT)
        shutil.rmtree(self.root, ignore_errors=True)


def lines_of(lines: queue.Queue[str | None], containing: str, count: int) -> list[str]:
    found: list[str] = []
    deadline = time.monotonic() + WAIT
    while len(found) < count:
        left = deadline - time.monotonic()
        assert left > 0, f"no line with {containing!r}"
        line = lines.get(timeout=left)
        assert line is not None, f"the process ended before printing {containing!r}"
        if containing in line:
            found.append(line)
    return found


def wait_until(predicate: object, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.fixture(scope="module")
def place() -> Iterator[Place]:
    """One running system shared by the tests (each touches its own actors)."""
    p = Place()
    try:
        proc = p.popen("-m", "runtime", "run", "ops_app.py")
        p.wait_for_socket(proc)
        yield p
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=WAIT)
        assert proc.returncode == 0, err
    finally:
        p.close()


def test_version_is_the_package_version(place: Place) -> None:
    done = place.troupe("--version")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"troupe {importlib.metadata.version('trio-troupe')}"


# -- ask and send ---------------------------------------------------------------------------


def test_ask_prints_the_reply_as_json(place: Place) -> None:
    done = place.troupe("ask", "/demo/echo", '{"a": [1, 2.5, null, "é"]}')
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"echo": {"a": [1, 2.5, None, "é"]}}
    done = place.troupe("ask", "demo", "/demo/echo", "42")  # SYSTEM given too
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"echo": 42}


def test_a_reply_json_cannot_carry_is_printed_as_its_repr(place: Place) -> None:
    done = place.troupe("ask", "/demo/echo", '"point"')
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "Point(3)"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("/demo/echo", '"boom"'), r"crashed handling str.*ValueError.*boom requested"),
        (("/demo/echo", '"ignore"'), r"/demo/echo does not handle str"),
        (("/demo/sleeper", "5", "--timeout", "0.3"), r"no reply to int .* within 0.3s"),
        (("/demo/nobody", "1"), r"no actor at /demo/nobody \(/demo has: echo, "),
        (("/demo/workers", "1"), r"/demo/workers is a supervisor"),
        (("/system/bus", "1"), r"/system/bus is the runtime's own"),
        (("nosuchsystem", "/demo/echo", "1"), r"no running system called 'nosuchsystem'"),
    ],
)
def test_ask_errors_are_one_clear_line_and_exit_1(
    place: Place, args: tuple[str, ...], expected: str
) -> None:
    done = place.troupe("ask", *args)
    code = 2 if args[0] == "nosuchsystem" else 1  # naming a system that is not there: usage
    assert done.returncode == code, (done.stdout, done.stderr)
    assert done.stdout == ""
    [line] = done.stderr.splitlines()
    assert line.startswith("troupe: ")
    assert re.search(expected, line), line
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("command", ["send", "ask"])
@pytest.mark.parametrize("text", ["hello", "{'a': 1}", "[1,", ""])
def test_a_message_that_is_not_json_exits_2(place: Place, command: str, text: str) -> None:
    done = place.troupe(command, "/demo/echo", text)
    assert done.returncode == 2
    assert "the message is not JSON" in done.stderr
    assert "quoted string" in done.stderr


def test_send_tells_the_actor(place: Place) -> None:
    for message in ('{"n": 1}', '"two"', "[3]"):
        done = place.troupe("send", "/demo/recorder", message)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "sent to /demo/recorder"
    done = place.troupe("ask", "/demo/recorder", '"got"')
    assert json.loads(done.stdout) == [{"n": 1}, "two", [3]]
    done = place.troupe("send", "/demo/nobody", "1")
    assert done.returncode == 1
    assert "cannot send to /demo/nobody: no actor at /demo/nobody" in done.stderr


# -- dead letters ------------------------------------------------------------------------------


def test_deadletters_shows_time_recipient_reason_type_and_a_short_repr(place: Place) -> None:
    done = place.troupe("ask", "/demo/dropper", '"go"')
    assert done.returncode == 0, done.stderr
    done = place.troupe("deadletters", "--reason", "unhandled", "-n", "3", COLUMNS="100")
    assert done.returncode == 0, done.stderr
    header, bad, big, long, footer = done.stdout.splitlines()
    assert header.split() == ["TIME", "REASON", "RECIPIENT", "TYPE", "MESSAGE"]
    for row, kind in ((bad, "Bad"), (big, "list"), (long, "str")):
        assert re.match(rf"\d\d:\d\d:\d\d  unhandled  /demo/sink\s+{kind}\s+\S", row), row
        assert len(row) <= 100
    assert "<Bad" in bad  # its repr raised: a placeholder, the command went on
    assert "[0, 1, 2, 3, 4, 5, ...]" in big
    assert "'yyyy" in long and long.endswith("…")
    assert re.match(r"\(3 shown; \d+ dead letters since start: .*unhandled \d+", footer)
    # (the newest unhandled one: a late reply of another test may come meanwhile)
    done = place.troupe("deadletters", "-n", "1", "--full", "--reason", "unhandled")
    [_, row, _] = done.stdout.splitlines()
    # not cut to a terminal: the whole short repr the system sent (reprlib's, ~200 chars)
    assert len(row) > 200 and row.endswith("yyy'") and "y" * 90 in row
    done = place.troupe("deadletters", "--reason", "deadlock")
    assert done.stdout == "no deadlock dead letters\n"
    done = place.troupe("deadletters", "--reason", "nonsense")
    assert done.returncode == 2 and "invalid choice" in done.stderr
    done = place.troupe("deadletters", "-n", "0")
    assert done.returncode == 2 and "-n is how many" in done.stderr


# -- kill ---------------------------------------------------------------------------------------


def actor(place: Place, path: str) -> dict[str, object]:
    with place.client("demo") as client:
        snap = client.call("tree")["snapshot"]

    def find(node: dict[str, object]) -> dict[str, object] | None:
        if node["path"] == path:
            return node
        for kid in node["children"]:  # type: ignore[attr-defined]
            hit = find(kid)
            if hit is not None:
                return hit
        return None

    found = find(snap["root"])
    assert found is not None, path
    return found


def test_kill_crashes_the_actor_and_its_supervisor_restarts_it(place: Place) -> None:
    done = place.troupe("kill", "/demo/workers/victim")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("killed /demo/workers/victim: ")
    assert "its supervisor /demo/workers decides" in done.stdout
    wait_until(lambda: actor(place, "/demo/workers/victim")["restarts"] == 1, "no restart")
    victim = actor(place, "/demo/workers/victim")
    assert victim["state"] == "running"
    assert victim["last_error"]["type"] == "Killed"  # type: ignore[index]
    # twice is two crashes
    assert place.troupe("kill", "demo", "/demo/workers/victim").returncode == 0
    wait_until(lambda: actor(place, "/demo/workers/victim")["restarts"] == 2, "no 2nd restart")
    assert place.troupe("ask", "/demo/workers/victim", '"still here"').stdout == '"still here"\n'


def test_kill_under_a_supervisor_that_gives_up_escalates(place: Place) -> None:
    # /demo/fragile allows no restarts: it gives up, and /demo restarts it
    assert place.troupe("kill", "/demo/fragile/victim").returncode == 0
    wait_until(lambda: actor(place, "/demo/fragile")["restarts"] == 1, "fragile did not restart")
    assert actor(place, "/demo/fragile/victim")["state"] == "running"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/demo/workers", "/demo/workers is a supervisor: kill works on actors"),
        ("/demo", "/demo is a supervisor"),
        ("/", "/ is the runtime's own"),
        ("/system", "/system is the runtime's own"),
        ("/system/bus", "/system/bus is the runtime's own: kill works on your actors only"),
        ("/demo/nobody", "no actor at /demo/nobody"),
        ("demo/echo", 'kill needs "path": an actor path like "/app/worker"'),
    ],
)
def test_kill_refuses_supervisors_and_the_runtimes_own(
    place: Place, path: str, expected: str
) -> None:
    done = place.troupe("kill", path)
    assert done.returncode == 1, done.stdout
    assert done.stderr.startswith(f"troupe: cannot kill {path}: {expected}")
    assert len(done.stderr.splitlines()) == 1
    assert actor(place, "/system/bus")["restarts"] == 0


# -- events -------------------------------------------------------------------------------------


def test_events_tells_a_system_name_from_a_pattern(place: Place) -> None:
    # `demo` is a running system's name: all of its events ('>'), demo.tick among them
    proc, lines = place.tail("events", "demo")
    try:
        assert lines_of(lines, "demo.tick from /demo/ticker", 1)
    finally:
        proc.kill()
        proc.communicate(timeout=WAIT)
    # `demo.tick` names no system: a pattern
    proc, lines = place.tail("events", "demo.tick")
    try:
        for line in lines_of(lines, " from ", 5):
            assert " demo.tick from /demo/ticker: {'n': " in line
    finally:
        proc.kill()
        proc.communicate(timeout=WAIT)


def test_events_cuts_long_payloads_to_the_terminal_unless_full(place: Place) -> None:
    proc, lines = place.tail("events", "demo.big", COLUMNS="60")
    try:
        for line in lines_of(lines, "demo.big", 3):
            assert len(line) == 60 and line.endswith("…"), line
    finally:
        proc.kill()
        proc.communicate(timeout=WAIT)
    proc, lines = place.tail("events", "demo", "demo.big", "--full", COLUMNS="60")
    try:
        for line in lines_of(lines, "demo.big", 3):
            assert line.endswith("x" * 500 + "'}"), line
    finally:
        proc.kill()
        proc.communicate(timeout=WAIT)


# -- the control socket keeps its guarantees -----------------------------------------------


@pytest.mark.parametrize(
    ("request_", "error"),
    [
        ({"op": "ask", "message": 1}, 'ask needs "path"'),
        ({"op": "ask", "path": "/demo/echo"}, 'ask needs "message"'),
        ({"op": "send", "path": 7, "message": 1}, 'send needs "path"'),
        ({"op": "ask", "path": "/demo/echo", "message": 1, "timeout": -1}, '"timeout" is'),
        ({"op": "ask", "path": "/demo/echo", "message": 1, "timeout": "5"}, '"timeout" is'),
        ({"op": "ask", "path": "/demo/echo", "message": 1, "timeout": 1e9}, '"timeout" is'),
        ({"op": "deadletters", "limit": 0}, '"limit" is a whole number'),
        ({"op": "deadletters", "limit": True}, '"limit" is a whole number'),
        ({"op": "deadletters", "reason": "bogus"}, "unknown reason 'bogus'"),
        ({"op": "kill"}, 'kill needs "path"'),
        ({"op": "kill", "path": ["/demo/echo"]}, 'kill needs "path"'),
    ],
)
def test_malformed_requests_get_an_error_and_the_system_carries_on(
    place: Place, request_: dict[str, object], error: str
) -> None:
    with place.client("demo") as client:
        client.send(request_)
        reply = client.receive()
        assert reply["ok"] is False and error in reply["error"], reply
        with pytest.raises(ConnectionError):
            client.receive()  # a malformed request closes the connection
    with place.client("demo") as client:
        assert client.call("ask", path="/demo/echo", message="ok")["reply"] == {"echo": "ok"}


def test_a_request_that_cannot_be_done_keeps_the_connection(place: Place) -> None:
    with place.client("demo") as client:
        client.send({"op": "ask", "path": "/demo/nobody", "message": 1})
        reply = client.receive()
        assert reply == {
            "ok": False,
            "error": reply["error"],
            "type": "ActorNotFound",
        }
        client.send({"op": "ask", "path": "/demo/echo", "message": "boom"})
        assert client.receive()["type"] == "ActorCrashed"
        with pytest.raises(ControlError, match="is a supervisor"):
            client.call("kill", path="/demo/workers")
        reply = client.call("ask", path="/demo/echo", message="point")
        assert reply["reply_repr"] == "Point(3)" and reply["reply_type"] == "Point"
        assert client.call("info")["name"] == "demo"


def test_short_repr_never_raises_and_stays_short() -> None:
    class Raises:
        def __repr__(self) -> str:
            raise ValueError("nope")

    class NotAString:
        def __repr__(self) -> object:  # type: ignore[override]
            return 5

    class Long:
        def __repr__(self) -> str:
            return "L" * 10_000

    assert short_repr(Raises()) == "<Raises: repr() raised ValueError>"  # no address
    assert short_repr(NotAString()) == "<NotAString: repr() raised TypeError>"
    assert short_repr([Raises()]) == "<list: repr() raised ValueError>"
    assert len(short_repr(Long())) <= 200 and "LLL...LLL" in short_repr(Long())
    assert len(short_repr(Long(), 50)) == 50 and short_repr(Long(), 50).endswith("…")
    assert len(short_repr(list(range(10**6)))) < 100
    nested: list[object] = []
    nested.append(nested)
    assert short_repr(nested) == "[[[[[...]]]]]"  # a cycle: cut at maxlevel
    assert short_repr({"a": 1}) == "{'a': 1}"


# -- stop and start_in_thread -------------------------------------------------------------


def test_start_in_thread_serves_the_control_socket_and_metrics() -> None:
    p = Place()
    try:
        port = free_port()
        proc = p.popen("threaded_app.py", str(port))
        assert proc.stdout is not None
        assert proc.stdout.readline() == "ready\n"
        p.wait_for_socket(proc)
        done = p.troupe("tree", "threaded")
        assert done.returncode == 0, done.stderr
        assert re.search(r"└─ threaded \[running\]\n\s+└─ echo \[running\]", done.stdout)
        assert p.troupe("ask", "threaded", "/threaded/echo", '"hi"').stdout == '"hi"\n'
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=WAIT) as page:
            assert b"troupe_" in page.read()
        done = p.troupe("stop", "threaded")
        assert done.returncode == 0, done.stderr
        assert done.stdout == "threaded is stopping\n"
        out, err = proc.communicate(timeout=WAIT)
        assert proc.returncode == 0, err
        assert out == "stopped\n"
        assert list(p.sockets.glob("*.sock")) == []
        done = p.troupe("tree")
        assert done.returncode == 2 and "no Troupe system is running" in done.stderr
    finally:
        p.close()


def test_an_unknown_reason_is_named_short() -> None:
    """The office's refusal repeats a hostile `reason` only in part (it goes back
    to whoever asked, e.g. over NATS)."""
    from runtime.deadletters import DeadLetterOffice

    with pytest.raises(ValueError, match="unknown reason") as caught:
        DeadLetterOffice().report(5, "r" * 100_000)
    assert len(str(caught.value)) < 200

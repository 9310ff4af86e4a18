"""The control socket: where it lives, what it answers, and what it survives.

Every system here puts its socket in a private temporary directory (never
the user's real ``$XDG_RUNTIME_DIR/troupe``).  The clients are trio streams
in the test's own loop, except where the blocking `Client` of the CLI is
exercised (in a worker thread, so the system's loop keeps running).
"""

from __future__ import annotations

import json
import os
import pathlib
import random
import socket
import stat
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio

import runtime
import runtime.control
from runtime import Actor, Supervisor, child
from runtime.control import MAX_CONNECTIONS, MAX_REQUEST, RATE, Client, ControlError

WAIT = 10.0  # a bound that only a hang reaches (real clock)


class Echo(Actor):
    async def receive(self, msg: Any) -> Any:
        return msg


def app() -> Supervisor:
    return Supervisor("app", children=[child(Echo, name="echo")])


@asynccontextmanager
async def control_system(
    folder: pathlib.Path, tree: Supervisor | None = None, **kw: Any
) -> AsyncIterator[runtime.System]:
    async with runtime.open_system(tree or app(), control=True, control_dir=folder, **kw) as sys_:
        yield sys_


class Conn:
    """A trio client for the control socket that reads JSON lines."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.buffer = b""
        self.eof = False

    @classmethod
    async def open(cls, system: runtime.System) -> Conn:
        assert system.control is not None
        return cls(await trio.open_unix_socket(str(system.control.path)))

    async def send(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def request(self, op: str, **args: Any) -> dict[str, Any]:
        await self.send(json.dumps({"op": op, **args}).encode() + b"\n")
        reply = await self.line()
        assert reply is not None, f"connection closed instead of answering {op!r}"
        return reply

    async def _fill(self) -> bool:
        try:
            data = await self.stream.receive_some(65536)
        except trio.BrokenResourceError:  # ECONNRESET: closed with our bytes unread
            data = b""
        if not data:
            self.eof = True
            return False
        self.buffer += data
        return True

    async def line(self) -> dict[str, Any] | None:
        """The next reply, or None at end of stream."""
        while b"\n" not in self.buffer:
            if self.eof or not await self._fill():
                assert self.buffer == b"", f"a partial line before close: {self.buffer!r}"
                return None
        raw, _, self.buffer = self.buffer.partition(b"\n")
        reply = json.loads(raw)
        assert isinstance(reply, dict) and isinstance(reply.get("ok"), bool), reply
        return reply

    async def rest(self) -> list[dict[str, Any]]:
        """Every reply until the server closes the connection."""
        out = []
        while (reply := await self.line()) is not None:
            out.append(reply)
        return out

    async def aclose(self) -> None:
        await self.stream.aclose()


async def wait_until(predicate: Any, what: str, timeout: float = WAIT) -> None:
    with trio.fail_after(timeout):
        while not predicate():
            await trio.sleep(0.01)


async def assert_healthy(system: runtime.System) -> None:
    """The system carries on: a new connection answers, actors answer asks."""
    conn = await Conn.open(system)
    try:
        info = await conn.request("info")
        assert info["ok"] is True and info["name"] == system.name and info["running"] is True
    finally:
        await conn.aclose()
    assert await system.ref("/app/echo").ask("still here") == "still here"
    snap = system.snapshot()
    assert all(n.state == "running" for n in snap.root.walk())
    assert all(n.restarts == 0 for n in snap.root.walk())
    assert system.control is not None
    await wait_until(lambda: system.control.connections == 0, "connections to close")


# -- where the socket lives --------------------------------------------------------


async def test_the_socket_is_private_named_by_system_and_pid_and_removed_on_exit(
    folder: pathlib.Path,
) -> None:
    with trio.fail_after(WAIT):
        async with control_system(folder) as system:
            assert system.control is not None
            path = system.control.path
            assert path == folder / f"app-{os.getpid()}.sock"
            assert stat.S_IMODE(folder.stat().st_mode) == 0o700
            info = path.lstat()
            assert stat.S_ISSOCK(info.st_mode)
            assert stat.S_IMODE(info.st_mode) == 0o600
            assert info.st_uid == os.getuid()
        assert not path.exists()
        assert folder.is_dir()  # the directory stays for the next system


async def test_an_existing_open_directory_is_made_private(folder: pathlib.Path) -> None:
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)
    with trio.fail_after(WAIT):
        async with control_system(folder, name="named") as system:
            assert system.control is not None
            assert system.control.path.name == f"named-{os.getpid()}.sock"
            assert stat.S_IMODE(folder.stat().st_mode) == 0o700


async def test_starting_the_socket_leaves_the_process_umask_alone(folder: pathlib.Path) -> None:
    """The 0600 socket must not make other tasks' files private while it starts."""
    seen: set[int] = set()
    done = False

    async def watch() -> None:
        while not done:
            mask = os.umask(0o022)
            os.umask(mask)
            seen.add(mask)
            await trio.sleep(0)

    before = os.umask(0o022)
    os.umask(before)
    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            await trio.sleep(0)
            async with control_system(folder) as system:
                assert system.control is not None
                assert stat.S_IMODE(system.control.path.stat().st_mode) == 0o600
            done = True
    assert seen == {before}


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait(timeout=WAIT)
    return proc.pid


async def test_stale_sockets_of_dead_processes_are_removed_at_start(
    folder: pathlib.Path,
) -> None:
    folder.mkdir(mode=0o700)
    stale = folder / f"x-{dead_pid()}.sock"
    stale.touch()
    alive = folder / f"other-{os.getpid()}.sock"  # a live pid: not ours to remove
    alive.touch()
    unrelated = folder / "notes.sock"  # not named like a system socket
    unrelated.touch()
    with trio.fail_after(WAIT):
        async with control_system(folder):
            assert not stale.exists()
            assert alive.exists()
            assert unrelated.exists()


# -- operations ---------------------------------------------------------------------


async def test_info_tree_and_stats_on_one_connection(folder: pathlib.Path) -> None:
    with trio.fail_after(WAIT):
        async with control_system(folder) as system:
            await system.ref("/app/echo").ask("hi")
            conn = await Conn.open(system)
            info = await conn.request("info")
            assert info["ok"] is True
            assert info["name"] == "app"
            assert info["pid"] == os.getpid()
            assert info["running"] is True
            assert info["actors"] == len(list(system.snapshot().root.walk()))
            assert info["uptime"] >= 0

            tree = await conn.request("tree")
            assert tree["ok"] is True
            for name in ("app", "echo", "system", "bridge", "bus", "deadletters"):
                assert name in tree["text"], name
            assert tree["snapshot"]["root"]["path"] == "/"
            app_node = next(c for c in tree["snapshot"]["root"]["children"] if c["name"] == "app")
            echo = app_node["children"][0]
            assert echo["path"] == "/app/echo" and echo["processed"] == 1
            assert echo["state"] == "running"

            stats = await conn.request("stats")
            assert stats["ok"] is True
            assert set(stats["dead_letters"]) >= {"crashed", "unhandled", "overflow"}
            assert "published" in stats["bus"]
            assert "longest_step" in stats["loop"]
            assert stats["control"]["requests"] == 3
            assert stats["control"]["rejected"] == 0
            await conn.aclose()


async def test_stop_stops_the_system(folder: pathlib.Path) -> None:
    with trio.fail_after(WAIT):
        async with control_system(folder) as system:
            assert system.control is not None
            path = system.control.path
            echo = system.ref("/app/echo")
            conn = await Conn.open(system)
            reply = await conn.request("stop")
            assert reply == {"ok": True, "stopping": "app"}
            await trio.sleep_forever()  # the stop ends the body
        assert not system.is_running
        assert not echo.is_alive
        assert not path.exists()


async def test_events_stream_published_events_matching_the_pattern(
    folder: pathlib.Path,
) -> None:
    with trio.fail_after(WAIT):
        async with control_system(folder) as system:
            conn = await Conn.open(system)
            first = await conn.request("events", pattern="demo.*")
            assert first == {"ok": True, "streaming": "demo.*"}
            system.publish("other.thing", 1)
            system.publish("demo.one", {"n": 1, "who": "me"})
            system.publish("demo.two", object())  # not JSON: sent as its repr
            one = await conn.line()
            two = await conn.line()
            assert one is not None and two is not None
            assert one["ok"] is True and one["event"]["topic"] == "demo.one"
            assert one["event"]["payload"] == {"n": 1, "who": "me"}
            assert isinstance(one["event"]["timestamp"], float)
            assert two["event"]["topic"] == "demo.two"
            assert "object" in two["event"]["payload"]
            await conn.aclose()
            await assert_healthy(system)


async def test_a_client_leaving_a_quiet_event_stream_frees_its_connection(
    folder: pathlib.Path,
) -> None:
    with trio.fail_after(WAIT):
        async with control_system(folder) as system:
            assert system.control is not None
            before = system.bus.stats()["subscriptions"]
            conn = await Conn.open(system)
            assert (await conn.request("events", pattern="never.published"))["ok"] is True
            assert system.control.connections == 1
            assert system.bus.stats()["subscriptions"] == before + 1
            await conn.aclose()
            # nothing is ever published on that pattern: the server must notice the hang-up
            await wait_until(lambda: system.control.connections == 0, "the stream to end")
            await wait_until(
                lambda: system.bus.stats()["subscriptions"] == before, "the unsubscribe"
            )
            await assert_healthy(system)


async def test_stopping_the_system_ends_event_streams(folder: pathlib.Path) -> None:
    with trio.fail_after(WAIT):
        async with control_system(folder) as system:
            conn = await Conn.open(system)
            assert (await conn.request("events", pattern=">"))["ok"] is True
        # the system stopped with a client still streaming: it is let go
        assert all(r["ok"] for r in await conn.rest())
        await conn.aclose()


async def test_the_blocking_client_and_pick(folder: pathlib.Path) -> None:
    with trio.fail_after(WAIT):
        async with control_system(folder) as system:

            def use() -> tuple[dict[str, Any], str]:
                endpoint = runtime.control.pick(None, folder)
                with Client(endpoint) as client:
                    info = client.call("info")
                    with pytest.raises(ControlError, match="unknown op") as caught:
                        client.call("nope")
                return info, str(caught.value)

            info, error = await trio.to_thread.run_sync(use)
            assert info["name"] == "app" and info["pid"] == os.getpid()
            assert "use one of" in error
            await assert_healthy(system)


# -- bad input: one error line, the connection closed, the system carries on ----------------

BAD = {
    "malformed JSON": (b'{"op": "info"\n', "malformed JSON"),
    "not an object": (b'["info"]\n', '"op"'),
    "no op": (b'{"cmd": "info"}\n', '"op"'),
    "op not a string": (b'{"op": 7}\n', '"op"'),
    "unknown op": (b'{"op": "reboot"}\n', "unknown op"),
    "binary": (b"\xff\xfe\x00\x81garbage\n", "binary"),
    "binary inside JSON": (b'{"op": "\xc3\x28"}\n', "binary"),
    "bad pattern": (b'{"op": "events", "pattern": "a..b"}\n', "pattern"),
    "pattern not a string": (b'{"op": "events", "pattern": 5}\n', "pattern"),
    "deeply nested JSON": (b"[" * 50_000 + b"\n", "malformed JSON"),
    "NaN and friends": (b"NaN\n", '"op"'),
}


@pytest.mark.parametrize("case", list(BAD))
async def test_bad_input_gets_one_error_and_a_closed_connection(
    folder: pathlib.Path, case: str
) -> None:
    data, words = BAD[case]
    with trio.fail_after(WAIT):
        async with control_system(folder) as system:
            conn = await Conn.open(system)
            assert (await conn.request("info"))["ok"] is True  # a good request first
            await conn.send(data)
            replies = await conn.rest()
            assert len(replies) == 1, replies
            assert replies[0]["ok"] is False
            assert isinstance(replies[0]["error"], str) and replies[0]["error"]
            assert words in replies[0]["error"]
            assert set(replies[0]) == {"ok", "error"}
            await conn.aclose()
            await assert_healthy(system)


async def test_an_oversized_request_is_refused(folder: pathlib.Path) -> None:
    with trio.fail_after(WAIT):
        async with control_system(folder) as system:
            conn = await Conn.open(system)
            await conn.send(b'{"op": "info", "pad": "' + b"x" * (MAX_REQUEST + 1))  # no newline
            replies = await conn.rest()
            assert len(replies) == 1, replies
            assert replies[0]["ok"] is False
            assert str(MAX_REQUEST) in replies[0]["error"]
            await conn.aclose()
            await assert_healthy(system)


async def test_an_oversized_line_is_refused_even_with_its_newline(folder: pathlib.Path) -> None:
    with trio.fail_after(WAIT):
        async with control_system(folder) as system:
            conn = await Conn.open(system)
            line = json.dumps({"op": "info", "pad": "x" * MAX_REQUEST}).encode() + b"\n"
            await conn.send(line)
            replies = await conn.rest()
            assert len(replies) == 1 and replies[0]["ok"] is False, replies
            await conn.aclose()
            await assert_healthy(system)


async def test_too_many_requests_a_second_are_refused(folder: pathlib.Path) -> None:
    with trio.fail_after(WAIT):
        async with control_system(folder) as system:
            conn = await Conn.open(system)
            await conn.send(b'{"op": "info"}\n' * (RATE * 3))  # one burst, far over the rate
            replies = await conn.rest()
            refused = [r for r in replies if not r["ok"]]
            assert len(refused) == 1, refused
            assert replies[-1] is refused[0]  # the last line, then the connection is closed
            assert "slow down" in refused[0]["error"]
            assert RATE // 2 <= len(replies) - 1 <= RATE + 1  # a burst of about RATE is served
            await conn.aclose()
            await assert_healthy(system)


async def test_a_peer_of_another_user_is_refused(
    folder: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runtime.control, "peer_uid", lambda sock: os.getuid() + 1)
    with trio.fail_after(WAIT):
        async with control_system(folder) as system:
            conn = await Conn.open(system)
            await conn.send(b'{"op": "stop"}\n')
            replies = await conn.rest()
            assert replies == [{"ok": False, "error": "permission denied"}]
            await conn.aclose()
            monkeypatch.undo()
            await assert_healthy(system)  # the stop was not obeyed


async def test_connections_beyond_the_limit_are_refused(folder: pathlib.Path) -> None:
    """When none is idle, that is (an idle one is closed instead: see test_faces.py)."""
    with trio.fail_after(WAIT):
        async with control_system(folder) as system:
            assert system.control is not None
            held = []
            for _ in range(MAX_CONNECTIONS):
                conn = await Conn.open(system)
                assert (await conn.request("events", pattern="demo.*"))["ok"] is True
                held.append(conn)
            extra = await Conn.open(system)
            replies = await extra.rest()
            assert replies == [{"ok": False, "error": "too many connections"}]
            await extra.aclose()
            for conn in held:
                await conn.aclose()
            await assert_healthy(system)


def test_a_refusal_written_before_the_request_is_a_control_error(folder: pathlib.Path) -> None:
    """A refusing control socket (too many connections, permission denied) writes its one
    error line and closes, maybe before the blocking `Client` has written its request:
    the client reads that line then too, instead of failing on the broken pipe (which
    made `troupe stop` on a busy socket print a traceback now and then).  Without a
    line, the broken pipe is not hidden."""
    folder.mkdir(mode=0o700)
    path = folder / "app-1.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        server.listen()
        for goodbye in (b'{"ok":false,"error":"too many connections"}\n', b""):
            client = Client(runtime.control.Endpoint("app", 1, path), timeout=WAIT)
            conn, _ = server.accept()
            conn.sendall(goodbye)
            conn.close()  # before the client wrote anything
            with client:
                if goodbye:
                    with pytest.raises(ControlError, match=r"^too many connections$"):
                        client.call("stop")
                else:
                    with pytest.raises((BrokenPipeError, ConnectionResetError)):
                        client.call("stop")


# -- finding systems -----------------------------------------------------------------------


async def test_pick_and_endpoints_choose_the_only_system_or_say_why_not(
    folder: pathlib.Path,
) -> None:
    pick, endpoints = runtime.control.pick, runtime.control.endpoints
    assert endpoints(folder) == []  # no directory yet
    with pytest.raises(LookupError, match="no Troupe system is running"):
        pick(None, folder)
    with trio.fail_after(WAIT):
        async with control_system(folder, name="first"):
            [only] = endpoints(folder)
            assert (only.system, only.pid) == ("first", os.getpid())
            assert only.label == f"first-{os.getpid()}"
            assert pick(None, folder) == only
            assert pick("first", folder) == only
            assert pick(only.label, folder) == only
            with pytest.raises(LookupError, match="no running system called 'zzz'"):
                pick("zzz", folder)
            async with control_system(folder, name="second"):
                assert [e.system for e in endpoints(folder)] == ["first", "second"]
                with pytest.raises(LookupError, match="2 systems are running") as caught:
                    pick(None, folder)
                assert "first-" in str(caught.value) and "second-" in str(caught.value)
                assert pick("second", folder).system == "second"
                with pytest.raises(LookupError, match="matches"):
                    pick(str(os.getpid()), folder)  # both share our pid: ambiguous
            assert [e.system for e in endpoints(folder)] == ["first"]
    assert endpoints(folder) == []


async def test_endpoints_remove_stale_sockets_on_the_way(folder: pathlib.Path) -> None:
    folder.mkdir(mode=0o700)
    stale = folder / f"gone-{dead_pid()}.sock"
    stale.touch()
    assert runtime.control.endpoints(folder) == []
    assert not stale.exists()
    with pytest.raises(LookupError):
        runtime.control.pick(None, folder)


# -- fuzz -------------------------------------------------------------------------------


def garbage(rng: random.Random) -> bytes:
    """A random byte string or a malformed/unexpected JSON line (never a valid stop)."""
    kind = rng.randrange(10)
    if kind < 3:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
    if kind == 3:  # printable junk
        return "".join(chr(rng.randrange(32, 127)) for _ in range(rng.randrange(1, 80))).encode()
    if kind == 4:  # truncated valid request
        full = json.dumps({"op": rng.choice(["info", "tree", "stats"]), "x": rng.random()})
        return full[: rng.randrange(1, len(full))].encode()
    if kind == 5:  # the wrong JSON type
        value = rng.choice([1, -2.5, "info", None, True, [], ["op", "info"], {"op": None}])
        return json.dumps(value).encode()
    if kind == 6:  # an unknown or mistyped op
        op = rng.choice(["", "INFO", "stop ", "tree\x00", 3, [], {}, "événement", "\ud800"])
        return json.dumps({"op": op}).encode()
    if kind == 7:  # a bad events pattern
        pattern = rng.choice(["", "a..b", "a*", ">.a", " x", 5, None, ["a"], "a b"])
        return json.dumps({"op": "events", "pattern": pattern}).encode()
    if kind == 8:  # deep or wide nesting
        depth = rng.choice([10, 1000, 5000, 50_000])
        return b"[" * depth + b"]" * rng.randrange(depth + 1)
    # valid UTF-8 of random code points, with stray quotes and braces
    chars = [
        chr(rng.choice([rng.randrange(0x20, 0x7F), rng.randrange(0xA0, 0xD7FF)]))
        for _ in range(rng.randrange(1, 60))
    ]
    return ("{" + "".join(chars) + '"').encode()


async def test_fuzz_thousands_of_bad_requests_leave_the_system_healthy(
    folder: pathlib.Path,
) -> None:
    rng = random.Random(20240606)
    cases = 2_000
    with trio.fail_after(60):
        async with control_system(folder) as system:
            assert system.control is not None
            errors = 0
            for _ in range(cases):
                data = garbage(rng)
                conn = await Conn.open(system)
                for _ in range(rng.choice([0, 0, 1, 3])):  # a fresh or a reused connection
                    assert (await conn.request(rng.choice(["info", "tree", "stats"])))["ok"]
                await conn.send(data + b"\n")
                await conn.stream.send_eof()  # whatever it makes of it, it must end
                replies = await conn.rest()
                assert len(replies) <= 1, replies
                if replies:
                    assert replies[0]["ok"] is False
                    assert isinstance(replies[0]["error"], str) and replies[0]["error"]
                    errors += 1
                await conn.aclose()
            assert errors > cases * 0.9  # almost every case is refused with a reason
            assert system.control.rejected >= errors
            await wait_until(lambda: system.control.connections == 0, "connections to close")
            await assert_healthy(system)
            assert system.snapshot().dead_letters.get("crashed", 0) == 0


def test_event_metadata_goes_out_as_a_json_object() -> None:
    from types import MappingProxyType

    from runtime import Event
    from runtime.control import event_dict, to_json

    plain = json.loads(to_json(event_dict(Event("a.b", 1))))
    assert plain["metadata"] == {}
    frozen = Event("a.b", 1, metadata=MappingProxyType({"k": [1, 2]}))
    assert json.loads(to_json(event_dict(frozen)))["metadata"] == {"k": [1, 2]}


async def test_a_second_system_of_the_same_name_in_one_process_is_refused_its_socket(
    folder: pathlib.Path,
) -> None:
    """The socket is named ``<name>-<pid>.sock``: a second system of the same name in
    the same process took it over (unlinked the first's and bound its own), and
    removed it when it stopped, leaving the first, still running, unreachable.  Now
    the second one's start fails with `ControlError` naming what to do, and the first
    keeps its socket."""
    async with control_system(folder, name="same") as first:
        with pytest.raises(ControlError, match="another name"):
            async with control_system(folder, name="same"):
                pass  # pragma: no cover - the start fails
        assert first.control is not None and first.control.path.exists()
        conn = await Conn.open(first)
        assert (await conn.request("info"))["ok"] is True
    async with control_system(folder, name="same") as again:  # free once the first stopped
        assert again.control is not None and again.control.path.exists()

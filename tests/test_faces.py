"""The faces cannot kill the system (issue 11, item 8).

The control socket, the metrics server and snapshots run isolated from the
tree: a client hanging up, a value JSON cannot encode, an actor whose
`snapshot_stats()` misbehaves, an idle or flooding client, a process out of
file descriptors -- each ends one connection at most, shows a placeholder
where a value cannot be shown, is logged once, and the system carries on.

Clients are real sockets in the test's own loop.  Idle timeouts run on trio's
virtual clock (`autojump_clock`) or with the module's limits lowered: no test
waits out a real timeout.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import pathlib
import resource
import socket
import struct
import termios
from collections.abc import Iterator
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from test_control import Conn, control_system, wait_until

import runtime
import runtime.control
import runtime.metrics
from runtime import Actor, Supervisor, child
from runtime.control import IDLE_TIMEOUT, MAX_CONNECTIONS, to_json

WAIT = 10.0  # real seconds: only a hang reaches it
VIRTUAL = 1_000.0  # virtual seconds: only a hang reaches it


class Echo(Actor):
    async def receive(self, msg: Any) -> Any:
        return msg


def app(*extra: Any) -> Supervisor:
    return Supervisor("app", children=[child(Echo, name="echo"), *extra])


async def assert_answers(system: runtime.System) -> None:
    """Still running: a fresh connection answers `info`, `tree` and `stats`, actors answer."""
    conn = await Conn.open(system)
    try:
        info = await conn.request("info")
        assert info["ok"] is True and info["running"] is True and info["name"] == system.name
        assert (await conn.request("tree"))["ok"] is True
        assert (await conn.request("stats"))["ok"] is True
    finally:
        await conn.aclose()
    assert system.is_running
    assert await system.ref("/app/echo").ask("still here") == "still here"


@pytest.fixture(autouse=True)
def fresh_reports() -> Iterator[None]:
    """Each test sees its problems logged (once), whatever earlier tests reported."""
    runtime.control.log_once.clear()
    yield
    runtime.control.log_once.clear()


def records(caplog: pytest.LogCaptureFixture, *words: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if all(w in r.getMessage() for w in words)]


async def http_get(port: int, path: bytes) -> tuple[int, bytes]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"GET " + path + b" HTTP/1.0\r\n\r\n")
        data = b""
        while chunk := await stream.receive_some(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


async def read_all(stream: trio.SocketStream) -> bytes:
    data = b""
    with contextlib.suppress(trio.BrokenResourceError):
        while chunk := await stream.receive_some(65536):
            data += chunk
    return data


# -- values JSON cannot encode ------------------------------------------------------------


class BadRepr:
    def __repr__(self) -> str:
        raise RuntimeError("no repr for you")


class BadStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str either")


@attrs.define
class Node:
    name: str
    next: Any = None


def cyclic() -> dict[str, Any]:
    value: dict[str, Any] = {"a": 1}
    value["self"] = value
    return value


def nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


def cyclic_node() -> Node:
    node = Node("loop")
    node.next = node
    return node


# (value, what `json.loads(to_json(value))` must give)
PAYLOADS: dict[str, tuple[Any, Any]] = {
    "tuple keys": ({(1, 2): "x"}, {"unencodable": "dict"}),
    "tuple keys inside": (
        {"ok": 1, "bad": {(1, 2): "x"}},
        {"ok": 1, "bad": {"unencodable": "dict"}},
    ),
    "huge int": (10**5000, {"unencodable": "int"}),
    "huge int inside": ([1, 10**5000], [1, {"unencodable": "int"}]),
    "huge int key": ({10**5000: 1}, {"unencodable": "dict"}),
    "cyclic dict": (cyclic(), {"a": 1, "self": {"unencodable": "dict"}}),
    "repr raises": (BadRepr(), {"unencodable": "BadRepr"}),
    "repr raises inside": ({"k": [BadRepr()]}, {"k": [{"unencodable": "BadRepr"}]}),
    "cyclic attrs": (cyclic_node(), {"name": "loop", "next": {"unencodable": "Node"}}),
    "too deep": (nested(100_000), None),
}


@pytest.mark.parametrize("case", list(PAYLOADS))
def test_to_json_gives_one_line_of_json_with_placeholders(case: str) -> None:
    value, expected = PAYLOADS[case]
    line = to_json(value)
    assert line.endswith("\n") and line.count("\n") == 1
    decoded = json.loads(line)
    if expected is not None:
        assert decoded == expected
    else:  # too deep to show whole: the top is kept, the depths are a placeholder
        while isinstance(decoded, list):
            assert len(decoded) == 1
            decoded = decoded[0]
        assert decoded == {"unencodable": "list"}


def test_to_json_still_shows_what_it_can_as_before() -> None:
    assert json.loads(to_json({"a": (1, 2), "s": {3}, "n": None})) == {
        "a": [1, 2],
        "s": [3],
        "n": None,
    }
    assert json.loads(to_json({1: "int keys are JSON"})) == {"1": "int keys are JSON"}
    assert json.loads(to_json(object())).startswith("<object object")
    assert json.loads(to_json(Node("a", Node("b")))) == {
        "name": "a",
        "next": {"name": "b", "next": None},
    }


async def test_event_payloads_json_cannot_encode_become_placeholders_and_the_stream_goes_on(
    folder: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    class Unshowable:
        def __repr__(self) -> str:
            raise ValueError("nope")

    with trio.fail_after(WAIT), caplog.at_level(logging.DEBUG, logger="troupe"):
        async with control_system(folder, app()) as system:
            conn = await Conn.open(system)
            assert (await conn.request("events", pattern="demo.>"))["ok"] is True
            sent = [
                {(1, 2): "x"},
                10**5000,
                cyclic(),
                Unshowable(),
                Unshowable(),  # the same problem again: not logged again
                {"fine": [1, 2]},
            ]
            for payload in sent:
                system.publish("demo.x", payload)
            got = []
            for _ in sent:
                reply = await conn.line()
                assert reply is not None and reply["ok"] is True, reply
                got.append(reply["event"]["payload"])
            assert got == [
                {"unencodable": "dict"},
                {"unencodable": "int"},
                {"a": 1, "self": {"unencodable": "dict"}},
                {"unencodable": "Unshowable"},
                {"unencodable": "Unshowable"},
                {"fine": [1, 2]},
            ]
            await conn.aclose()
            await assert_answers(system)
    assert len(records(caplog, "Unshowable")) == 1
    assert len(records(caplog, "placeholder", "int")) == 1


# -- a client hanging up on `events` ------------------------------------------------------


def unread(sock: trio.socket.SocketType) -> int:
    """How many bytes wait in `sock` to be read."""
    raw = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
    return int(struct.unpack("i", raw)[0])


@pytest.mark.parametrize("how", ["close", "shutdown-read"])
async def test_a_client_hanging_up_on_a_busy_event_stream_ends_only_its_connection(
    folder: pathlib.Path, how: str
) -> None:
    """Ctrl-C on `troupe events` used to take the system down with BrokenResourceError.

    The client stops reading while events pour in, so that the server is stuck
    sending when it goes.  A close wakes the server's sender and its hang-up
    reader together, and the crash came when the sender ran first: often, not
    always, hence a few rounds.  "shutdown-read" makes the send fail while the
    connection stays open: that crashed every time.
    """
    with trio.fail_after(WAIT):
        async with control_system(folder, app()) as system:
            assert system.control is not None
            for _ in range(1 if how == "shutdown-read" else 4):  # a close races the reader
                conn = await Conn.open(system)
                assert (await conn.request("events", pattern="demo.>"))["ok"] is True
                sock = conn.stream.socket
                for i in range(300):  # 3 MB: far more than a socket buffer holds
                    system.publish("demo.more", {"i": i, "pad": "x" * 10_000})
                    if i % 10 == 0:
                        await trio.sleep(0)
                await wait_until(lambda s=sock: unread(s) > 100_000, "the server to fill it")
                if how == "shutdown-read":
                    sock.shutdown(socket.SHUT_RD)
                else:
                    sock.close()
                for i in range(10):  # and events keep coming
                    system.publish("demo.more", {"i": i})
                    await trio.sleep(0)
                await wait_until(lambda: system.control.connections == 0, "the stream to end")
                await conn.aclose()
            await assert_answers(system)
            assert system.snapshot().find("/app").restarts == 0


async def test_a_failing_op_ends_its_connection_only(
    folder: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with trio.fail_after(WAIT):
        async with control_system(folder, app()) as system:

            def broken() -> dict[str, Any]:
                raise LookupError("a bug behind info")

            monkeypatch.setattr(system, "info", broken)
            conn = await Conn.open(system)
            await conn.send(b'{"op": "info"}\n')
            replies = await conn.rest()
            assert len(replies) == 1 and replies[0]["ok"] is False, replies
            assert "LookupError" in replies[0]["error"]
            await conn.aclose()
            monkeypatch.undo()
            await assert_answers(system)


# -- an actor whose snapshot_stats() misbehaves ------------------------------------------


class Raises(Echo):
    def snapshot_stats(self) -> dict[str, Any]:
        raise KeyError("stats are broken")


class RaisesBadStr(Echo):
    def snapshot_stats(self) -> dict[str, Any]:
        raise BadStr()


class ReturnsList(Echo):
    def snapshot_stats(self) -> Any:
        return [("a", 1)]


class ReturnsNone(Echo):
    def snapshot_stats(self) -> Any:
        return None


class IntKeys(Echo):
    def snapshot_stats(self) -> Any:
        return {1: object()}


class OddValue(Echo):
    def snapshot_stats(self) -> Any:
        return {"thing": object()}


class HugeValue(Echo):
    def snapshot_stats(self) -> Any:
        return {"big": 10**5000}


class CyclicValue(Echo):
    def snapshot_stats(self) -> Any:
        return {"loop": cyclic()}


class Bridge(Echo):
    """A user actor that happens to share the bridge's class name, with odd counters."""

    def snapshot_stats(self) -> Any:
        return {"submitted": "many", "completed": [1, 2], "active": None, "queued": 2**2000}


ODD = [Raises, RaisesBadStr, ReturnsList, ReturnsNone, IntKeys, OddValue, HugeValue, CyclicValue]


def odd_app() -> Supervisor:
    return app(
        *(child(cls, name=cls.__name__.lower()) for cls in ODD),
        child(Bridge, name="lookalike"),
    )


async def test_odd_snapshot_stats_show_an_error_and_everything_else_survives(
    folder: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(WAIT), caplog.at_level(logging.DEBUG, logger="troupe"):
        async with control_system(folder, odd_app(), metrics_port=0) as system:
            assert system.metrics is not None
            for _ in range(3):  # every problem is logged once, not once per snapshot
                snap = system.snapshot()
                for cls in ODD:
                    stats = snap.find(f"/app/{cls.__name__.lower()}").stats
                    assert set(stats) == {"error"}, (cls, stats)
                    assert isinstance(stats["error"], str) and stats["error"], cls
                assert snap.find("/app/echo").stats == {}
                assert snap.find("/system/bridge").stats["healthy"] is True
                json.loads(json.dumps(snap.to_dict()))
                assert "raises" in snap.render()

            conn = await Conn.open(system)
            tree = await conn.request("tree")
            assert tree["ok"] is True
            apps = [c for c in tree["snapshot"]["root"]["children"] if c["name"] == "app"]
            by_name = {c["name"]: c for c in apps[0]["children"]}
            assert set(by_name["raises"]["stats"]) == {"error"}
            assert "KeyError" in by_name["raises"]["stats"]["error"]
            assert "list" in by_name["returnslist"]["stats"]["error"]
            stats = await conn.request("stats")
            assert stats["ok"] is True
            await conn.aclose()

            status, body = await http_get(system.metrics.port, b"/metrics")
            assert status == 200, body
            assert b'troupe_messages_processed_total{path="/app/raises"}' in body
            assert b'troupe_bridge_submitted_total{path="/system/bridge"} 0.0' in body
            await assert_answers(system)
    for cls in ODD:
        assert len(records(caplog, f"stats of {cls.__name__} (", "snapshot_stats()")) == 1, cls


# -- idle control connections ------------------------------------------------------------


async def test_an_idle_control_connection_is_closed_after_the_idle_timeout(
    folder: pathlib.Path, autojump_clock: trio.testing.MockClock
) -> None:
    assert IDLE_TIMEOUT == 10.0
    with trio.fail_after(VIRTUAL):
        async with control_system(folder, app()) as system:
            assert system.control is not None
            conn = await Conn.open(system)
            assert (await conn.request("info"))["ok"] is True
            await trio.sleep(IDLE_TIMEOUT - 1)
            assert system.control.connections == 1
            assert (await conn.request("info"))["ok"] is True  # a request: no longer idle
            await trio.sleep(IDLE_TIMEOUT - 1)
            assert system.control.connections == 1
            await conn.send(b'{"op": ')  # half a request is something sent
            await trio.sleep(IDLE_TIMEOUT - 1)
            assert system.control.connections == 1
            replies = await conn.rest()  # then nothing for IDLE_TIMEOUT: closed
            assert len(replies) == 1 and replies[0]["ok"] is False, replies
            assert "idle" in replies[0]["error"]
            await conn.aclose()
            assert system.control.connections == 0
            await assert_answers(system)


async def test_an_event_stream_is_not_idle(
    folder: pathlib.Path, autojump_clock: trio.testing.MockClock
) -> None:
    with trio.fail_after(VIRTUAL):
        async with control_system(folder, app()) as system:
            assert system.control is not None
            conn = await Conn.open(system)
            assert (await conn.request("events", pattern="demo.>"))["ok"] is True
            await trio.sleep(5 * IDLE_TIMEOUT)
            assert system.control.connections == 1
            system.publish("demo.late", 1)
            reply = await conn.line()
            assert reply is not None and reply["event"]["topic"] == "demo.late"
            await conn.aclose()


async def test_a_full_server_closes_its_oldest_idle_connection_for_a_new_one(
    folder: pathlib.Path,
) -> None:
    with trio.fail_after(WAIT):
        async with control_system(folder, app()) as system:
            assert system.control is not None
            held = [await Conn.open(system) for _ in range(MAX_CONNECTIONS)]
            for conn in held:
                assert (await conn.request("info"))["ok"] is True
            oldest = held[5]
            for conn in held:  # everybody else asks again: number 5 is the oldest idle
                if conn is not oldest:
                    assert (await conn.request("info"))["ok"] is True
            newcomer = await Conn.open(system)
            assert (await newcomer.request("info"))["ok"] is True  # served, not refused
            replies = await oldest.rest()
            assert len(replies) == 1 and replies[0]["ok"] is False, replies
            assert "idle" in replies[0]["error"]
            await oldest.aclose()
            assert system.control.connections == MAX_CONNECTIONS
            for conn in held:
                if conn is not oldest:
                    assert (await conn.request("info"))["ok"] is True
                    await conn.aclose()
            await newcomer.aclose()
            await wait_until(lambda: system.control.connections == 0, "connections to close")
            await assert_answers(system)


async def test_a_full_server_of_streams_refuses_a_new_connection(folder: pathlib.Path) -> None:
    with trio.fail_after(WAIT):
        async with control_system(folder, app()) as system:
            assert system.control is not None
            held = [await Conn.open(system) for _ in range(MAX_CONNECTIONS - 1)]
            for conn in held:
                assert (await conn.request("events", pattern="demo.>"))["ok"] is True
            idle = await Conn.open(system)
            assert (await idle.request("info"))["ok"] is True
            extra = await Conn.open(system)  # the one idle connection makes room
            assert (await extra.request("events", pattern="demo.>"))["ok"] is True
            assert [r["ok"] for r in await idle.rest()] == [False]
            refused = await Conn.open(system)  # now all are streaming: nothing to close
            assert await refused.rest() == [{"ok": False, "error": "too many connections"}]
            for conn in [*held, extra, idle, refused]:
                await conn.aclose()
            await wait_until(lambda: system.control.connections == 0, "connections to close")
            await assert_answers(system)


# -- the metrics server: a cap on connections, a timeout on slow clients -----------------


async def test_the_metrics_server_caps_its_connections(monkeypatch: pytest.MonkeyPatch) -> None:
    cap = 4
    monkeypatch.setattr(runtime.metrics, "MAX_CONNECTIONS", cap, raising=False)
    monkeypatch.setattr(runtime.metrics, "TIMEOUT", VIRTUAL, raising=False)  # only the cap acts
    with trio.fail_after(WAIT):
        async with runtime.open_system(app(), metrics_port=0) as system:
            metrics = system.metrics
            assert metrics is not None
            held = [await trio.open_tcp_stream("127.0.0.1", metrics.port) for _ in range(cap)]
            await wait_until(lambda: metrics.connections == cap, "the held connections")
            flood = [await trio.open_tcp_stream("127.0.0.1", metrics.port) for _ in range(40)]
            with trio.fail_after(WAIT / 2):  # refused at once, not after a timeout
                for stream in flood:
                    assert (await read_all(stream)).startswith(b"HTTP/1.1 503"), stream
                    await stream.aclose()
            assert metrics.connections == cap
            assert metrics.refused == len(flood)
            for stream in held:
                await stream.aclose()
            await wait_until(lambda: metrics.connections == 0, "the held ones to close")
            status, body = await http_get(metrics.port, b"/metrics")
            assert status == 200 and b"troupe_actors" in body
            assert await system.ref("/app/echo").ask(1) == 1


async def test_the_metrics_server_times_out_idle_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime.metrics, "TIMEOUT", 0.2)
    with trio.fail_after(WAIT):
        async with runtime.open_system(app(), metrics_port=0) as system:
            metrics = system.metrics
            assert metrics is not None
            idle = await trio.open_tcp_stream("127.0.0.1", metrics.port)
            slow = await trio.open_tcp_stream("127.0.0.1", metrics.port)
            await slow.send_all(b"GET /metr")  # and never the rest
            assert await read_all(idle) == b""
            assert await read_all(slow) == b""
            await idle.aclose()
            await slow.aclose()
            await wait_until(lambda: metrics.connections == 0, "the slow ones to close")
            assert (await http_get(metrics.port, b"/metrics"))[0] == 200


async def test_a_metrics_scrape_that_fails_gets_a_500_and_the_system_carries_on(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(WAIT), caplog.at_level(logging.DEBUG, logger="troupe"):
        async with runtime.open_system(app(), metrics_port=0) as system:
            metrics = system.metrics
            assert metrics is not None

            def broken() -> bytes:
                raise ZeroDivisionError("a bug in a collector")

            monkeypatch.setattr(metrics, "render", broken)
            for _ in range(3):
                status, _ = await http_get(metrics.port, b"/metrics")
                assert status == 500
            monkeypatch.undo()
            assert (await http_get(metrics.port, b"/metrics"))[0] == 200
            assert await system.ref("/app/echo").ask(1) == 1
    assert len(records(caplog, "ZeroDivisionError")) == 1


# -- a process out of file descriptors, a broken listener ----------------------------------


@contextlib.contextmanager
def few_file_descriptors(spare: int) -> Iterator[None]:
    """Lower the soft RLIMIT_NOFILE so that only `spare` more descriptors can be opened."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    used = {int(fd) for fd in os.listdir("/proc/self/fd")}
    limit, free = 0, 0
    while free < spare:  # descriptors are numbered below the limit, lowest free first
        free += limit not in used
        limit += 1
    resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


async def test_running_out_of_file_descriptors_does_not_kill_the_control_socket(
    folder: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(WAIT), caplog.at_level(logging.DEBUG, logger="troupe"):
        async with control_system(folder, app()) as system:
            assert system.control is not None
            path = str(system.control.path)
            clients: list[socket.socket] = []
            try:
                with few_file_descriptors(spare=6):
                    # Fill the table without a checkpoint, so the server cannot accept in
                    # between: it is left with connections waiting and no descriptor free.
                    with contextlib.suppress(OSError):
                        while True:
                            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                            clients.append(sock)
                            sock.setblocking(False)
                            sock.connect(path)
                    assert clients, "no descriptor was free at all"
                    await wait_until(lambda: records(caplog, "EMFILE"), "the server to meet EMFILE")
                    assert system.is_running
                    clients.pop().close()  # free two descriptors: one connection gets in
                    clients.pop().close()
                    await wait_until(
                        lambda: system.control is not None and system.control.connections > 0,
                        "a connection to be accepted",
                    )
            finally:
                for sock in clients:
                    sock.close()
            await wait_until(lambda: system.control.connections == 0, "connections to close")
            await assert_answers(system)
    assert len(records(caplog, "EMFILE")) == 1


async def test_an_unexpected_accept_error_stops_the_face_not_the_system(
    folder: pathlib.Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    broken = trio.Event()
    accept = trio.SocketListener.accept

    async def failing(self: trio.SocketListener) -> trio.SocketStream:
        if broken.is_set():
            raise OSError(errno.EINVAL, "the listening socket went bad")
        return await accept(self)

    monkeypatch.setattr(trio.SocketListener, "accept", failing)
    with trio.fail_after(WAIT), caplog.at_level(logging.DEBUG, logger="troupe"):
        async with control_system(folder, app(), metrics_port=0) as system:
            assert system.control is not None and system.metrics is not None
            await assert_answers(system)
            broken.set()
            with contextlib.suppress(OSError):
                # wakes the control socket's accept, which now fails
                await (await trio.open_unix_socket(str(system.control.path))).aclose()
            with contextlib.suppress(OSError):
                await (await trio.open_tcp_stream("127.0.0.1", system.metrics.port)).aclose()
            await wait_until(lambda: not system.control.path.exists(), "the control face to stop")
            await wait_until(
                lambda: len(records(caplog, "the listening socket went bad")) >= 2,
                "both faces to log it",
            )
            assert system.is_running
            assert await system.ref("/app/echo").ask("alive") == "alive"


async def test_a_client_that_never_reads_its_replies_is_let_go(
    folder: pathlib.Path, autojump_clock: trio.testing.MockClock
) -> None:
    """A client that sends requests but never reads holds a connection as surely as one
    that never sends: once the server could not hand it a reply for IDLE_TIMEOUT, it is
    closed (found by attack: 32 such clients locked the socket for good)."""
    many = [child(Echo, name=f"echo-{i:03}") for i in range(200)]  # big `tree` replies
    with trio.fail_after(VIRTUAL):
        async with control_system(folder, app(*many)) as system:
            assert system.control is not None
            conn = await Conn.open(system)
            request = json.dumps({"op": "tree"}).encode() + b"\n"
            with trio.move_on_after(1):  # until the server stops taking requests
                for _ in range(40):
                    await conn.send(request)
            await trio.sleep(IDLE_TIMEOUT + 1)
            assert system.control.connections == 0
            await conn.stream.aclose()
            await assert_answers(system)

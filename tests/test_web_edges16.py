"""Attack on the dashboard and the health endpoints as faces: hostile HTTP (huge
headers, bad Host, garbage, half requests, too many streams, streams that stop
reading) while the system keeps answering."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import pytest

import runtime
from runtime import Actor, Supervisor, child
from runtime.web import server as web_server

WAIT = 15.0
CLOSE = b"Connection: close\r\n\r\n"


class Echo(Actor):
    async def receive(self, msg: Any) -> Any:
        return msg


@pytest.fixture
def system() -> Iterator[Any]:
    tree = Supervisor("hx", children=[child(Echo, name="echo")])
    with runtime.start_in_thread(tree, dashboard_port=0, metrics_port=0) as running:
        yield running


def _exchange(port: int, raw: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=WAIT) as sock:
        sock.sendall(raw)
        out = b""
        while len(out) < 4096:
            data = sock.recv(65536)
            if not data:
                break
            out += data
    return out


def _status(reply: bytes) -> int:
    return int(reply.split(b" ", 2)[1])


def test_hostile_http_to_the_dashboard_is_answered_alone(system: Any) -> None:
    # holds: each hostile request gets its own 4xx and the system answers throughout.
    port = system.dashboard.port
    cases = {
        b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\nX: " + b"a" * 200_000 + b"\r\n\r\n": 431,
        b"GET /api/info HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n": 400,
        b"GET /api/info HTTP/1.0\r\n\r\n": 400,
        b"\x00\xff\xfe garbage\r\n\r\n": 400,
        b"GET /api/events?pattern=a..b HTTP/1.1\r\nHost: localhost\r\n" + CLOSE: 400,
        b"GET /api/deadletters?limit=x HTTP/1.1\r\nHost: localhost\r\n" + CLOSE: 400,
        b"GET /api/snapshot?node=zz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n": 404,
        b"POST /api/info HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1\r\n"
        b"Connection: close\r\n\r\nx": 405,
    }
    for raw, code in cases.items():
        assert _status(_exchange(port, raw)) == code, raw[:60]
    half = []
    try:
        for _ in range(100):  # half requests: they hold nothing the system needs
            sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
            sock.sendall(b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            half.append(sock)
        reply = _exchange(port, b"GET /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\n" + CLOSE)
        assert _status(reply) == 200
        assert system.ref("/hx/echo").ask_blocking("still here", timeout=WAIT) == "still here"
    finally:
        for sock in half:
            sock.close()


def test_streams_past_the_limit_get_503_and_non_readers_are_let_go(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # holds: MAX_STREAMS streams are served, the next get 503; streams whose pages
    # stay open and never read end after SEND_TIMEOUT, and the count goes back to 0
    # while they are still open.  SEND_TIMEOUT is set before the dashboard starts: its
    # sockets take it too (TCP_USER_TIMEOUT, see web.server._listening_socket).
    monkeypatch.setattr(web_server, "SEND_TIMEOUT", 0.5)
    tree = Supervisor("hx", children=[child(Echo, name="echo")])
    with runtime.start_in_thread(tree, dashboard_port=0) as system:
        port = system.dashboard.port
        streams = []
        try:
            for _ in range(web_server.MAX_STREAMS + 4):
                sock = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
                sock.sendall(b"GET /api/stream HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                streams.append(sock)
            codes = [_status(sock.recv(12)) for sock in streams]
            assert codes.count(200) == web_server.MAX_STREAMS
            assert codes.count(503) == 4
            assert system.ref("/hx/echo").ask_blocking(1, timeout=WAIT) == 1
            deadline = time.monotonic() + WAIT
            while system.dashboard.streams:
                assert time.monotonic() < deadline, system.dashboard.streams
                time.sleep(0.05)
        finally:
            for sock in streams:
                sock.close()


def test_start_in_thread_shows_the_metrics_port_it_picked(system: Any) -> None:
    # DESIGN "Monitoring": "`start_in_thread` takes `control=` and `metrics_port=` like
    # `open_system`"; entry.py:73: "metrics_port ... (0 picks a port: `system.metrics.port`)".
    #
    # so a threaded program started with metrics_port=0 cannot learn its port (nor
    # point a probe at /healthz).  runtime/entry.py:380 (ThreadedSystem).
    assert system.metrics is not None
    assert system.metrics.port > 0


def test_health_endpoints_answer_json_to_odd_requests(system: Any) -> None:
    # holds: /healthz and /readyz answer JSON; odd methods, huge heads get their own
    # error; the metrics still scrape.  (The port read from the inner System: see above.)
    port = system._system.metrics.port
    for target in (b"/healthz", b"/readyz", b"/healthz?x=%00"):
        reply = _exchange(port, b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        body = reply.split(b"\r\n\r\n", 1)[1]
        assert json.loads(body)["system"] == "hx"
    assert _status(_exchange(port, b"DELETE /healthz HTTP/1.1\r\n\r\n")) == 405
    assert _status(_exchange(port, b"GET /x HTTP/1.1\r\n" + b"a" * 20_000)) == 431
    assert _status(_exchange(port, b"GET /metrics HTTP/1.1\r\n\r\n")) == 200
    assert system.ref("/hx/echo").ask_blocking(2, timeout=WAIT) == 2

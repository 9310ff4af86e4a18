"""Attack on the control socket: clients that leave while their ``ask`` waits.

`troupe ask --timeout 300` stopped with Ctrl-C, against an actor that does not
answer: the server went on waiting for the reply of a client that was gone, its
connection counted busy (so never closed to make room), for up to the ask's
timeout.  Thirty-two of them filled the server for five minutes: ``troupe tree``,
``ls`` and ``stop`` were all refused with "too many connections"."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest
import trio

import runtime
from runtime import Actor, Supervisor, child
from runtime.control import MAX_CONNECTIONS

WAIT = 10.0  # real seconds: a bound that only a hang reaches


class Silent(Actor):
    """Takes every ask and never answers it (the reply is kept, not dropped)."""

    def __init__(self) -> None:
        self.kept: list[Any] = []

    async def receive(self, msg: Any) -> Any:
        if msg == "ping":
            return "pong"
        self.kept.append(self.ctx.defer_reply())
        return None


async def _request(path: str, request: dict[str, Any]) -> dict[str, Any]:
    async with await trio.open_unix_socket(path) as stream:
        await stream.send_all(json.dumps(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = await stream.receive_some(65536)
            assert chunk, data
            data += chunk
    reply: dict[str, Any] = json.loads(data)
    return reply


async def test_asks_whose_clients_left_do_not_hold_the_server_full(
    folder: pathlib.Path, caplog: pytest.LogCaptureFixture
) -> None:
    tree = Supervisor("app", children=[child(Silent, name="silent")])
    with trio.fail_after(WAIT):
        async with runtime.open_system(tree, control=True, control_dir=folder) as system:
            server = system.control
            path = str(server.path)
            ask = {"op": "ask", "path": "/app/silent", "message": 1, "timeout": 300}
            for _ in range(MAX_CONNECTIONS):
                stream = await trio.open_unix_socket(path)
                await stream.send_all(json.dumps(ask).encode() + b"\n")
                await stream.aclose()  # Ctrl-C: the client is gone
            while system.ref("/app/silent").mailbox_depth or server.connections:
                await trio.sleep(0.01)  # each ask taken, and its connection let go
            reply = await _request(path, {"op": "ask", "path": "/app/silent", "message": "ping"})
            assert reply == {"ok": True, "path": "/app/silent", "reply": "pong"}
            assert (await _request(path, {"op": "info"}))["ok"]
    assert not [r for r in caplog.records if r.name == "troupe.control"], caplog.text


async def test_a_pipelined_request_behind_an_ask_is_still_answered(
    folder: pathlib.Path,
) -> None:
    # Watching for the hang-up must not eat what the client sends while its ask waits.
    tree = Supervisor("app", children=[child(Silent, name="silent")])
    with trio.fail_after(WAIT):
        async with runtime.open_system(tree, control=True, control_dir=folder) as system:
            assert system.control is not None
            async with await trio.open_unix_socket(str(system.control.path)) as stream:
                ask = {"op": "ask", "path": "/app/silent", "message": 1, "timeout": 0.2}
                await stream.send_all(json.dumps(ask).encode() + b"\n")
                await trio.sleep(0.05)  # the ask waits; then the next request comes
                await stream.send_all(b'{"op": "info"}\n')
                data = b""
                while data.count(b"\n") < 2:
                    chunk = await stream.receive_some(65536)
                    assert chunk, data
                    data += chunk
            first, second = (json.loads(line) for line in data.splitlines())
            assert first["type"] == "AskTimeout", first
            assert second["ok"] and second["name"] == system.name, second

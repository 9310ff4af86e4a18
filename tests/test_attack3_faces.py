"""Third attack pass on the faces: dashboard clients that never read what they asked for.

Hypercorn sends each response under a shielded cancel scope, so a client that
asks for a reply larger than the socket buffers and never reads it held its
connection task for ever, and the system's stop (which waits for the
dashboard) never ended.  The dashboard's sockets now cut such a client off
after `SEND_TIMEOUT` unacknowledged seconds (TCP_USER_TIMEOUT, where the
platform has it).
"""

from __future__ import annotations

import socket
import sys

import pytest
import trio

import runtime
from runtime import Actor, Supervisor, child
from runtime.web import server as web_server

WAIT = 30.0  # generous bound for real sockets


class Quiet(Actor):
    async def receive(self, msg: object) -> object:
        return msg


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="TCP_USER_TIMEOUT is Linux's")
async def test_a_dashboard_client_that_never_reads_its_reply_does_not_hold_the_stop(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(web_server, "SEND_TIMEOUT", 0.5)
    # a snapshot far larger than any socket buffer: long names, many actors
    tree = Supervisor(
        "big", children=[child(Quiet, name=f"a{i:04d}" + "x" * 200) for i in range(1500)]
    )
    client = trio.socket.socket()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    rescued = False

    async def rescue() -> None:  # the bound: without the fix the stop waits for ever
        nonlocal rescued
        await trio.sleep(WAIT)
        rescued = True
        client.close()

    with client:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(rescue)
            async with runtime.open_system(tree, dashboard_port=0) as system:
                assert system.dashboard is not None
                with trio.fail_after(WAIT):
                    await client.connect(("127.0.0.1", system.dashboard.port))
                    await client.send(b"GET /api/snapshot HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
                    await trio.sleep(1.0)  # the reply fills the buffers; nobody reads it
                    assert system.ref("/big/a0000" + "x" * 200).is_alive
            nursery.cancel_scope.cancel()
    assert not rescued, "the system's stop waited for a client that never read"


class Sleepy(Actor):
    async def receive(self, msg: object) -> object:
        await trio.sleep_forever()


EVIL = "Evil\x1b]0;pwned\x07\x1b[2J\r\n"


async def test_top_never_writes_control_characters_from_the_system_to_the_terminal(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A message type, a class or a stats key named with escape sequences (an OSC
    that sets the terminal's title, a clear screen) reached the terminal as they
    were: `troupe top` showed the message in hand unfiltered."""
    from runtime import top

    evil_message = type(EVIL, (), {})
    tree = Supervisor("app", children=[child(Sleepy, name="s")], shutdown=0.1)
    async with runtime.open_system(tree) as system:
        system.ref("/app/s").tell(evil_message())
        await trio.sleep(1.0)
        snap = system.snapshot().to_dict()
        found = snap["root"]["children"][0]["children"][0]
        found["cls"] = EVIL  # as a class so named would show
        found["stats"] = {EVIL: EVIL}
        view = top.View({None: snap})
        view.rate = {}
        view.selected = found["path"]
        frame = view.frame(200, 60)
        written = [top.ansi(line) for line in frame] + [top.render_text(snap, width=200)]
        assert any("Evil" in text for text in written)
        for text in written:
            stripped = text.replace("\n", "")
            for code in [c for c in top.STYLES.values() if c]:
                stripped = stripped.replace(f"\x1b[{code}m", "").replace("\x1b[0m", "")
            assert stripped.isprintable(), repr(stripped)

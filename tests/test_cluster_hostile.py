"""Hostile or malformed traffic on a node's NATS subjects, published by a raw nats-py
client beside two real nodes on a real nats-server: the node counts what it cannot
believe and keeps working.  Real time with generous bounds; counts and types, never
durations."""

from __future__ import annotations

import logging
import time
from typing import Any

import msgspec
import pytest
import trio
from natsserver import NatsServer, in_asyncio_thread
from test_cluster import Slow, node, pair, until

import runtime
from runtime import Actor, child
from runtime.cluster import envelope as env

WAIT = 20.0
_enc = msgspec.msgpack.Encoder().encode


def raw(url: str, msgs: list[tuple[Any, ...]]) -> None:
    """Publish ``(subject, data[, reply[, headers]])`` tuples from a plain nats-py client."""

    async def go() -> None:
        import nats

        nc = await nats.connect(url)
        try:
            for m in msgs:
                subject, data = m[0], m[1]
                reply = m[2] if len(m) > 2 else ""
                headers = m[3] if len(m) > 3 else None
                await nc.publish(subject, data, reply=reply, headers=headers)
            await nc.flush()
        finally:
            await nc.close()

    in_asyncio_thread(go)


async def spoof(server: NatsServer, msgs: list[tuple[Any, ...]]) -> None:
    await trio.to_thread.run_sync(raw, server.url, msgs)


def subjects(system: runtime.System) -> tuple[str, str, str]:
    c = system.cluster
    prefix = f"{c.cluster_name}.node.{system.node}"
    return f"{prefix}.u", f"{prefix}.s", f"{prefix}.r.{c.incarnation}"


def lost(system: runtime.System) -> int:
    return int(system.snapshot().cluster["lost_in_transit"])


async def test_malformed_traffic_never_stops_the_node(
    nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Garbage of every shape on every subject: the node keeps running, answers asks
    both ways afterwards, counts what it could not read, and no counter goes negative."""
    with trio.fail_after(WAIT):
        async with pair(nats_server) as (a, b):
            u, s, r = subjects(b)
            binc = b.cluster.incarnation
            body = b.cluster.codec.encode("x")
            T = env.TELL
            msgs: list[tuple[Any, ...]] = [
                (u, b""),
                (u, b"\xc1\xc1garbage"),
                (u, _enc(7)),
                (u, _enc([])),
                (u, _enc([T])),
                (u, _enc([T, "ghost"])),
                (s, _enc(["1", "ghost", "i"])),
                (s, _enc([T, 5, "i"])),
                (u, _enc([T, "ghost", 5])),
                (u, _enc([[T, "ghost", "g", binc, 1, "/app/echo", body]] * 0)),  # empty batch
                (u, _enc([[[T, "ghost", "g", binc, 1, "/app/echo", body]]])),  # nested batch
                (
                    u,
                    _enc(
                        [
                            [T, "ghost", "g", binc, 1, "/app/echo", body],  # mixed batch
                            [env.ASK, "ghost2", "g", binc, 2, "/app/echo", body],
                        ]
                    ),
                ),
                (u, _enc([[T, "ghost", "g", binc, 1, "/app/echo", b"\xc1"]])),  # bad body
                (u, _enc([[T, "ghost", "g", binc, 2, "/app/echo", 12]])),  # body not bytes
                (u, _enc([[T, "ghost", "g", "other-inc", 3, "/app/echo", body]])),  # old inc
                (u, _enc([T, "ghost", "g", binc, 4, ["/path", "as", "list"], body])),
                (u, _enc([T, "ghost", "g", binc, 5, "/app/nobody", body])),
                (u, _enc([T, "ghost", "g", binc, 6, "/", body])),
                (u, _enc([T, "ghost", "g", binc, 7, "", body])),
                (u, _enc([T, "ghost", "g", binc, 8, "/app", body])),  # a supervisor
                (u, _enc([T, "ghost", "g", binc, 9, "/app/echo", body]), r + ".1"),
                (u, _enc([env.ASK, "ghost", "g", binc, 10, "/app/echo", body, 1, 5.0]), "_INBOX.x"),
                (s, _enc([env.CONTROL, "ghost", "g", "no-such-op", None]), "_INBOX.y"),
                (s, _enc([env.CONTROL, "ghost", "g", "which_children", {"a": 1}]), "_INBOX.y"),
                (s, _enc([env.CONTROL, "ghost", "g", "start_child", [1]]), "_INBOX.y"),
                (s, _enc([env.CONTROL, "ghost", "g", "snapshot"]), "_INBOX.y"),
                (s, _enc([env.CONTROL, "ghost", "g", 17, 17]), "_INBOX.y"),
                (s, _enc([env.WATCH, "ghost", "g", "/../..//app/echo.x", ""])),
                (s, _enc([env.WATCH, "ghost", "g", 42, ""])),
                (s, _enc([env.WATCH, "ghost", "g"])),
                (s, _enc([env.UNWATCH, "ghost", "g", "/never/watched", ""])),
                (s, _enc([env.TERMINATED, "ghost", "g", "/never/watched", "", ["x"]])),
                (s, _enc([env.TERMINATED, a.node, a.cluster.incarnation, "/nope", "", 1])),
                (s, _enc([env.DOWN, "ghost", "g", "not-my-incarnation"])),
                (s, _enc([env.DOWN, "ghost", "g"])),
                (s, _enc([env.EVENT, "ghost", "g", b"\xc1"])),
                (s, _enc([env.EVENT, "ghost", "g", _enc("not an event")])),
                (s, _enc([env.HEARTBEAT, "ghost", "g", {"pid": "x", "actors": [1]}, False])),
                (s, _enc([env.HEARTBEAT, "ghost", "g", {"started": "nan"}, 1])),
                (s, _enc([env.HEARTBEAT, "ghost", "g", [1, 2], False])),
                (s, _enc([env.LEAVE, "ghost", "never-this-incarnation"])),
                (s, _enc([99, "ghost", "g", 1, 2, 3])),
                (r + ".1", b"\xc1"),
                (r + ".2", _enc([env.REPLY, "ghost", "g", True, b"\xc1"])),
                (r + ".3", _enc([env.REPLY, "ghost", "g", False, "not an error list"])),
                (r + ".abc", b""),
                (r + ".²", b""),
                (r + ".1.2.3.4", b""),
                ("x.y", b""),
            ]
            await spoof(nats_server, msgs)
            echo_b = a.ref(f"troupe://{b.node}/app/echo")
            echo_a = b.ref(f"troupe://{a.node}/app/echo")
            await until(lambda: b.cluster.undecodable >= 5, "the garbage counted")
            assert await echo_b.ask("after") == "after"
            assert await echo_a.ask("back") == "back"
            assert b.is_running and a.is_running
            for system in (a, b):
                stats = system.snapshot().cluster
                assert stats["lost_in_transit"] >= 0
                assert all(p["lost_in_transit"] >= 0 for p in stats["peers"].values())
                assert stats["peers"][a.node if system is b else b.node]["lost_in_transit"] == 0
            assert not b.cluster._asks and not a.cluster._asks


async def test_malformed_envelopes_are_counted_never_raise_in_the_handler(
    nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Unknown input is "a clear error or a counted dead letter": envelopes with a wrong
    type in one position are each counted as undecodable, never raise inside the
    handler, and the node keeps answering."""
    with trio.fail_after(WAIT):
        async with pair(nats_server) as (a, b):
            u, s, r = subjects(b)
            binc = b.cluster.incarnation
            body = b.cluster.codec.encode("x")
            caplog.set_level(logging.ERROR, logger="troupe.cluster")
            before = b.cluster.undecodable
            msgs = [
                (u, _enc([env.TELL, "ghost", "g", binc, "seven", "/app/echo", body])),
                (u, _enc([env.TELL, "ghost", "g", [binc], 1, "/app/echo", body])),  # unhashable
                (s, _enc([env.SKIP, "ghost", "g", binc, "a", "b"])),
                (s, _enc([env.HEARTBEAT, "ghost2", "g", {"pid": "x"}, False])),
                (r + ".²", b""),
            ]
            await spoof(nats_server, msgs)
            echo_b = a.ref(f"troupe://{b.node}/app/echo")
            await trio.sleep(0.3)
            assert await echo_b.ask("after") == "after"
            raised = [rec for rec in caplog.records if "could not handle" in rec.getMessage()]
            assert raised == [], f"{len(raised)} arrivals raised inside the handler"
            assert b.cluster.undecodable - before == len(msgs)


async def test_a_spoofed_huge_sequence_number_does_not_explode_lost_in_transit(
    nats_server: NatsServer,
) -> None:
    """A receiver "counts gaps per peer (lost_in_transit)": what never arrived.  Sequence
    numbers no sender could have made (2**63, -2**63, 1.5) are not believed, so they
    cannot make lost_in_transit explode."""
    with trio.fail_after(WAIT):
        async with pair(nats_server) as (_a, b):
            u, _, _ = subjects(b)
            binc = b.cluster.incarnation
            body = b.cluster.codec.encode("x")
            await spoof(
                nats_server,
                [
                    (u, _enc([env.TELL, "ghost", "g1", binc, 2**63, "/app/echo", body])),
                    (u, _enc([env.TELL, "ghost", "g2", binc, -(2**63), "/app/echo", body])),
                    (u, _enc([env.TELL, "ghost", "g3", binc, 1.5, "/app/echo", body])),
                ],
            )
            # numbers no sender could have made are not believed: counted as undecodable,
            # not delivered, and they make nothing "lost"
            await until(lambda: b.cluster.undecodable >= 3, "refused")
            assert lost(b) == 0
            assert await b.ref("/app/echo").ask("still here") == "still here"


async def test_a_spoofed_no_responders_for_tells_never_sent_is_not_believed(
    nats_server: NatsServer,
) -> None:
    """Each message is "either handled or recorded in dead letters", not both.  A forged
    no-responders (503) for tells 1-1000, of which 5 were sent and handled, is bounded by
    what was sent: no handled tell is dead-lettered and the receiver marks no never-sent
    number skipped (an unbounded range would also stall the sender's loop)."""
    with trio.fail_after(WAIT):
        async with pair(nats_server) as (a, b):
            echo = a.ref(f"troupe://{b.node}/app/echo")
            for i in range(5):
                echo.tell(i)
            await until(lambda: b.snapshot().find("/app/echo").processed == 5, "5 handled")
            c = a.cluster
            subject = f"{c.cluster_name}.node.{a.node}.r.{c.incarnation}.{b.node}.1-1000"
            await spoof(nats_server, [(subject, b"", "", {"Status": "503"})])
            await trio.sleep(0.5)
            handled = b.snapshot().find("/app/echo").processed
            dead = sum(a.snapshot().dead_letters.values()) + sum(b.snapshot().dead_letters.values())
            stream = next(iter(b.cluster._peers[a.node].streams.values()))
            assert stream.skipped <= stream.max_seq <= 5, (stream.skipped, stream.max_seq)
            assert handled + dead + lost(b) == 5, (handled, dead)


async def test_spoofed_node_names_do_not_become_members(nats_server: NatsServer) -> None:
    """A node name is "one NATS subject token: letters, digits, -, _".  Envelopes whose
    sender is not such a name ("", ">", "x y", "a.b", "*", a tab) make no members:
    `nodes()` lists only the real nodes, and asks between them still cross."""
    with trio.fail_after(WAIT):
        async with pair(nats_server) as (a, b):
            _, s, _ = subjects(b)
            await spoof(
                nats_server,
                [
                    (s, _enc([env.HEARTBEAT, name, "i", {}, True]))
                    for name in ("", ">", "x y", "a.b", "*", "\t")
                ],
            )
            echo = a.ref(f"troupe://{b.node}/app/echo")
            assert await echo.ask(1) == 1
            await trio.sleep(0.2)
            names = {info.name for info in b.cluster.nodes()}
            assert names == {a.node, b.node}, names


async def test_a_down_notice_from_a_node_never_seen_does_not_make_the_node_rejoin(
    nats_server: NatsServer,
) -> None:
    """A node "that learns it was declared down ... rejoins under a new incarnation",
    but a DOWN is believed only from a member seen up: one from a name that never
    joined leaves the incarnation as it was, so remote watchers of the node's actors
    get no Terminated."""

    seen: list[Any] = []

    class Watcher(Actor):
        async def on_start(self) -> None:
            self.ctx.watch(self.ctx.system.ref(f"troupe://{b.node}/app/echo"))

        async def receive(self, msg: Any) -> Any:
            seen.append(msg)

    with trio.fail_after(WAIT):
        async with pair(nats_server) as (a, b):
            await a.start_child("/app", child(Watcher, name="watcher"))
            await trio.sleep(0.3)
            _, s, _ = subjects(b)
            old = b.cluster.incarnation
            await spoof(nats_server, [(s, _enc([env.DOWN, "nobody", "n1", old]))])
            await trio.sleep(0.5)
            assert b.cluster.incarnation == old
            assert seen == []


async def test_a_reply_without_a_reply_subject_does_not_poison_the_writer(
    nats_server: NatsServer,
) -> None:
    """Each message is "either handled or recorded in dead letters", and `undeliverable`
    means the node is down or the message undecodable.  A hostile ASK with no reply
    subject does not poison the writer: the node's own tells to a healthy node in the
    same write batch are all handled, none dead-lettered `undeliverable`."""
    with trio.fail_after(WAIT):
        async with pair(nats_server) as (a, b):
            await b.start_child("/app", child(Slow, name="slow"))
            u, _, _ = subjects(b)
            binc = b.cluster.incarnation
            body = b.cluster.codec.encode("q")
            ask = _enc([env.ASK, "ghost", "g", binc, 1, "/app/slow", body, 1, 5.0])
            await spoof(nats_server, [(u, ask)])  # no reply subject
            await until(lambda: b.snapshot().find("/app/slow").current is not None, "slow busy")
            transport = b.cluster._transport
            # a busy NATS thread (GC pause, a slow socket): the writer wakes late
            transport._aloop.call_soon_threadsafe(time.sleep, 1.0)
            await until(lambda: b.snapshot().find("/app/slow").processed == 1, "slow answered")
            echo_a = b.ref(f"troupe://{a.node}/app/echo")
            for i in range(20):
                echo_a.tell(i)
            await until(lambda: transport.taken.get(a.node, 0) >= 20, "the writer took them")
            await trio.sleep(0.3)
            assert b.dead_letters.counts.get("undeliverable", 0) == 0
            await until(lambda: a.snapshot().find("/app/echo").processed == 20, "20 handled")


async def test_many_departed_peers_are_not_kept_forever(nats_server: NatsServer) -> None:
    """No queue "grows without bound": peers that joined and left (nodes named per
    process, ``worker-<pid>``) are forgotten beyond DECLARED_DOWN, so `_peers`,
    `nodes()` and the stats stay bounded."""
    from runtime.cluster.node import DECLARED_DOWN

    with trio.fail_after(WAIT * 2):
        cluster = "leak"
        async with node(nats_server, "leak-b", cluster_name=cluster) as b:
            s = f"{cluster}.node.leak-b.s"
            n = DECLARED_DOWN + 500
            msgs: list[tuple[Any, ...]] = []
            # Both on one subject: NATS keeps one subscription's order, not the order
            # between two (a leave read before its heartbeat would leave that peer up).
            for i in range(n):
                msgs.append((s, _enc([env.HEARTBEAT, f"w{i}", "i", {}, False])))
                msgs.append((s, _enc([env.LEAVE, f"w{i}", "i"])))
            bulk = _bulk(nats_server.url, msgs)
            await trio.to_thread.run_sync(lambda: in_asyncio_thread(bulk, timeout=60))
            # Every message read (the last one published is the last peer's leave), not
            # only DECLARED_DOWN of them: peers still arriving would be counted too.
            last = (f"w{n - 1}", "i")
            await until(
                lambda: (
                    last in b.cluster._declared_down
                    and len(b.cluster._declared_down) >= DECLARED_DOWN
                ),
                "all left",
                40,
            )
            assert len(b.cluster._peers) <= DECLARED_DOWN + 1, len(b.cluster._peers)


def _bulk(url: str, msgs: list[tuple[Any, ...]]) -> Any:
    async def go() -> None:
        import nats

        nc = await nats.connect(url)
        try:
            for subject, data in msgs:
                await nc.publish(subject, data)
            await nc.flush(timeout=30)
        finally:
            await nc.close()

    go.__name__ = "bulk"
    return go


async def test_what_cannot_be_read_is_counted_and_logged_once_in_a_while(
    nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Issue 15 ("Bad peers"): garbage on a node's subjects is dropped with a counted
    log line, not a line per message: one warning names how many were dropped."""
    with trio.fail_after(WAIT):
        async with pair(nats_server) as (_a, b):
            u, s, _ = subjects(b)
            before = b.cluster.undecodable
            caplog.clear()
            await spoof(nats_server, [(u, b"\x00garbage"), (s, b"\xc1"), (u, b"")] * 10)
            await until(lambda: b.cluster.undecodable >= before + 30, "counted")
            lines = [
                r.getMessage() for r in caplog.records if "could not be read" in r.getMessage()
            ]
            assert len(lines) == 1, lines
            assert await b.ref("/app/echo").ask("still here") == "still here"

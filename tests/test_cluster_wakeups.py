"""Outbox wake-ups and option checks of the cluster, without a NATS server: the real
`Transport` writer and the real `Cluster` are driven by hand (a fake NATS client,
callbacks run when the test says), and bad options are refused before anything
connects."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio

import runtime
from runtime import Actor, Supervisor, child
from runtime.cluster.node import Cluster
from runtime.cluster.transport import Outgoing, Transport


class _FakeNats:
    is_connected = True

    async def publish(self, subject: str, data: bytes, reply: str = "") -> None:
        return None


def _write_batch(transport: Transport) -> None:
    """One run of the NATS thread's writer (it never suspends with the fake client)."""
    coro = transport._write_batch()
    with pytest.raises(StopIteration):
        coro.send(None)


async def test_a_sender_waiting_for_room_to_a_second_node_is_woken() -> None:
    """Every sender waiting for outbox room is woken once there is room, even when its
    outbox filled while room to another node was being announced: senders to b and c
    both wake as the writer takes their entries."""
    pending: list[Callable[[], None]] = []
    cluster = Cluster(None, node="a", servers=["nats://127.0.0.1:1"], outbox=1)  # type: ignore[arg-type]
    transport = Transport(
        ["nats://127.0.0.1:1"],
        name="a",
        probe_subject="p",
        subjects=[],
        deliver=cluster._deliver,
        call_soon=lambda fn: pending.append(fn) or True,
    )
    transport._nc = _FakeNats()
    cluster._transport = transport
    b, c = cluster._peer("b"), cluster._peer("c")
    b.status = c.status = "up"
    woken: list[str] = []

    async def wait(peer: Any) -> None:
        await cluster._wait_for_room(peer)
        woken.append(peer.name)

    def run_pending() -> None:
        while pending:
            pending.pop(0)()

    async with trio.open_nursery() as nursery:
        transport.publish(Outgoing("x.b", b"1", node="b"))
        b.enqueued += 1  # b's outbox is full
        nursery.start_soon(wait, b)
        await trio.testing.wait_all_tasks_blocked()
        _write_batch(transport)  # takes b's entry; RoomMade is on its way to the loop
        transport.publish(Outgoing("x.c", b"1", node="c"))
        c.enqueued += 1  # c's outbox is full
        nursery.start_soon(wait, c)
        await trio.testing.wait_all_tasks_blocked()
        run_pending()  # the loop handles RoomMade: b has room, c not yet
        await trio.testing.wait_all_tasks_blocked()
        _write_batch(transport)  # takes c's entry
        run_pending()
        await trio.testing.wait_all_tasks_blocked()
        assert cluster._queued(c) == 0  # there is room to c ...
        nursery.cancel_scope.cancel()
    assert woken == ["b", "c"]  # ... and c's sender was told


class _Idle(Actor):
    async def receive(self, msg: Any) -> Any:
        return msg


async def test_bad_nats_options_are_refused_naming_them() -> None:
    """`nats_options` of the wrong type is refused with a TypeError that names it, not
    an unrelated error from deeper down, before anything connects."""
    tree = Supervisor("app", children=[child(_Idle, name="idle")])
    with pytest.raises(TypeError, match="nats_options"):
        async with runtime.open_system(
            tree,
            node="n1",
            cluster="nats://127.0.0.1:1",
            nats_options="tls",  # type: ignore[arg-type]
        ):
            pass

"""The cluster-wide bus as DESIGN states it, against a real nats-server: a refused
publish is `NotSerializable` in the sender from any thread (nothing crashes, nothing
is remembered), every local subscriber gets a remote event once however the node's
`cluster_topics` overlap, events from one node arrive in the order it published
them across its patterns, and a message too large names its size and the limit.
"""

from __future__ import annotations

from typing import Any

import pytest
import trio
from natsserver import NatsServer
from test_cluster import WAIT, fresh, node, pair, until

import runtime


async def test_a_thread_publish_that_cannot_cross_raises_not_serializable_in_the_thread(
    nats_server: NatsServer,
) -> None:
    """DESIGN: anything else "raises `NotSerializable` in the sender at tell/ask/publish
    time" -- from a foreign thread too (its publish goes through the bus actor, which
    must answer with the error, not crash)."""
    with trio.fail_after(WAIT):
        async with pair(nats_server, cluster_topics=("jobs.>",)) as (a, _b):

            def from_a_thread() -> BaseException | None:
                try:
                    a.publish("jobs.new", {1, 2})  # a set: not wire-serializable
                except BaseException as error:
                    return error
                return None

            error = await trio.to_thread.run_sync(from_a_thread)
            assert isinstance(error, runtime.NotSerializable), repr(error)
            bus = a.snapshot().find("/system/bus")
            assert bus.restarts == 0 and bus.state == "running"
            assert a.dead_letters.counts.get("crashed", 0) == 0


async def test_a_refused_publish_does_not_use_up_its_msg_id(nats_server: NatsServer) -> None:
    """Nothing was published, so the same `msg_id` with a value that crosses is a new
    publish, not a duplicate."""
    with trio.fail_after(WAIT):
        async with pair(nats_server, cluster_topics=("jobs.>",)) as (a, b):
            got: list[runtime.Event] = []
            b.bus.subscribe("jobs.>")(got.append)
            with pytest.raises(runtime.NotSerializable):
                a.publish("jobs.new", {1, 2}, msg_id="order-1")
            assert a.bus.stats()["duplicates"] == 0
            a.publish("jobs.new", [1, 2], msg_id="order-1")
            await until(lambda: got, "the event on b")
            assert [(e.payload, e.msg_id) for e in got] == [([1, 2], "order-1")]
            assert a.bus.stats()["duplicates"] == 0


async def test_overlapping_cluster_topics_deliver_a_remote_event_once(
    nats_server: NatsServer,
) -> None:
    """DESIGN: "local subscribers get each event once", also when two of the node's
    patterns match it (``jobs.>`` and ``jobs.high.*``)."""
    with trio.fail_after(WAIT):
        async with pair(nats_server, cluster_topics=("jobs.>", "jobs.high.*")) as (a, b):
            got: list[runtime.Event] = []
            a.bus.subscribe("jobs.>")(got.append)
            b.publish("jobs.high.1", "h")
            b.publish("jobs.low", "l")
            await until(lambda: len(got) >= 2, "both events on a")
            b.publish("jobs.last", "end")  # anything still to come arrives before this
            await until(lambda: got[-1].topic == "jobs.last", "the last event on a")
            assert [e.topic for e in got] == ["jobs.high.1", "jobs.low", "jobs.last"]


async def test_events_of_one_node_arrive_in_publish_order_across_its_patterns(
    nats_server: NatsServer,
) -> None:
    """DESIGN: "Order across nodes is per publishing node" -- also when the events
    match different `cluster_topics` patterns of the receiving node."""
    n = 2000
    with trio.fail_after(WAIT):
        async with pair(nats_server, cluster_topics=("a.>", "b.>")) as (a, b):
            got: list[Any] = []
            a.bus.subscribe("a.>", "b.>")(lambda event: got.append(event.payload))
            for i in range(n):
                b.publish("a.x" if i % 2 else "b.x", i)
                if i % 100 == 99:
                    await trio.sleep(0)
            await until(lambda: len(got) >= n, f"{n} events on a")
            assert got == list(range(n))


async def test_a_message_too_large_names_its_size_and_the_servers_limit() -> None:
    """DESIGN: "the error names its size and the limit": the server's max_payload as it
    is, and what of it a message's encoding may take."""
    with NatsServer(max_payload=4096) as server:
        with trio.fail_after(WAIT):
            async with pair(server) as (a, b):
                echo = a.ref(f"troupe://{b.node}/app/echo")
                with pytest.raises(runtime.NotSerializable) as caught:
                    echo.tell(b"x" * 3500)
                text = str(caught.value)
                assert "encodes to 3,503 bytes" in text
                assert "the NATS server's max_payload of 4,096" in text


async def test_a_node_gets_only_the_cluster_topics_it_names(nats_server: NatsServer) -> None:
    """With patterns no single one covers, a node subscribes to every cluster topic
    at once (one subscription keeps the order) and keeps only its own: an event on
    another node's cluster topic that this node does not name stays away."""
    cluster = fresh("only")
    with trio.fail_after(WAIT):
        async with (
            node(
                nats_server, f"{cluster}-a", cluster_name=cluster, cluster_topics=("a.>", "b.>")
            ) as a,
            node(
                nats_server, f"{cluster}-b", cluster_name=cluster, cluster_topics=("a.>", "c.>")
            ) as b,
        ):
            await until(lambda: a.cluster.is_up(b.node) and b.cluster.is_up(a.node), "up")
            got: list[str] = []
            a.bus.subscribe(">")(lambda event: got.append(event.topic))
            b.publish("c.x", 1)  # shared by b, not named by a
            b.publish("a.x", 2)
            await until(lambda: "a.x" in got, "a.x on a")
            assert got == ["a.x"]
            assert a.cluster.stats()["events_in"] == 1


async def test_what_arrives_on_topics_a_node_does_not_name_is_dropped_unread(
    nats_server: NatsServer,
) -> None:
    """A node with ``a.>`` and ``b.>`` takes every cluster topic in one subscription:
    what comes on the others (here: garbage a foreign client publishes on ``c.x``) is
    not read, counted, logged or dead-lettered; garbage on a topic it names is counted
    as unreadable; an envelope other than an event on a bus subject is not believed."""
    from test_cluster_hostile import spoof

    from runtime.cluster import envelope as env

    with trio.fail_after(WAIT):
        async with pair(nats_server, cluster_topics=("a.>", "b.>")) as (a, b):
            bus = f"{a.cluster.cluster_name}.bus"
            before = a.cluster.undecodable
            await spoof(nats_server, [(f"{bus}.c.x", b"\x00garbage")] * 5)
            heartbeat = env.pack(env.HEARTBEAT, "intruder", "i1", {}, False)
            await spoof(nats_server, [(f"{bus}.a.x", b"\x00garbage"), (f"{bus}.a.y", heartbeat)])
            await until(lambda: a.cluster.undecodable >= before + 2, "the named ones counted")
            b.publish("a.last", 1)  # anything still on its way from the spoofs comes first
            got: list[str] = []
            a.bus.subscribe("a.>")(lambda event: got.append(event.topic))
            b.publish("a.last", 2)
            await until(lambda: got, "b's event")
            assert a.cluster.undecodable == before + 2
            assert "intruder" not in [info.name for info in a.cluster.nodes()]
            assert a.dead_letters.counts.get("undeliverable", 0) == 0


def test_a_node_refuses_runtime_topics_and_cluster_names_under_another_clusters_bus() -> None:
    with pytest.raises(ValueError, match="system"):
        runtime.run(
            runtime.Supervisor("app"),
            node="n",
            cluster="nats://127.0.0.1:1",
            cluster_topics=("a.>", "system.>"),
        )
    with pytest.raises(ValueError, match=r"under those of cluster 'x' \(x\.node\.>\)"):
        runtime.run(
            runtime.Supervisor("app"),
            node="n",
            cluster="nats://127.0.0.1:1",
            cluster_name="x.node.y",
        )
    with pytest.raises(ValueError, match="'bus' may not follow"):
        runtime.run(
            runtime.Supervisor("app"),
            node="n",
            cluster="nats://127.0.0.1:1",
            cluster_name="x.bus.y",
        )


async def test_an_event_counts_only_on_its_own_topics_subject(nats_server: NatsServer) -> None:
    """A node's event travels on its topic's bus subject: one that arrives on another
    topic's subject (where it would get past the node's choice of topics) or on a
    node's own subject is not delivered, and is counted as unreadable."""
    from test_cluster_hostile import spoof

    from runtime.cluster import envelope as env

    with trio.fail_after(WAIT):
        async with pair(nats_server, cluster_topics=("a.>",)) as (a, b):
            bus = f"{a.cluster.cluster_name}.bus"

            def sent_by_b(topic: str) -> bytes:
                body = b.cluster.codec.encode(runtime.Event(topic=topic, payload=1, node=b.node))
                return env.pack(env.EVENT, b.node, b.cluster.incarnation, body)

            got: list[str] = []
            a.bus.subscribe(">")(lambda event: got.append(event.topic))
            before = a.cluster.undecodable
            await spoof(
                nats_server,
                [
                    (f"{bus}.a.x", sent_by_b("a.elsewhere")),  # named, on another's subject
                    (f"{bus}.a.x", sent_by_b("c.secret")),  # not named by a at all
                    (f"{a.cluster.cluster_name}.node.{a.node}.s", sent_by_b("a.x")),
                ],
            )
            await until(lambda: a.cluster.undecodable >= before + 3, "the three counted")
            b.publish("a.last", 2)
            await until(lambda: got, "b's own event")
            assert got == ["a.last"]
            assert a.cluster.undecodable == before + 3

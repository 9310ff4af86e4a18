"""The cluster through the public API: odd values, threads, cancellation, backpressure
and accounting, between nodes on a real nats-server.  Real time with generous bounds;
counts and types, never durations."""

from __future__ import annotations

import threading
import time
from typing import Any

import attrs
import pytest
import trio
from natsserver import NatsServer
from test_cluster import Echo, fresh, pair, tree, until

import runtime
from runtime import Actor, Mailbox, child, wire

WAIT = 20.0


def freeze_nats_thread(system: runtime.System, seconds: float) -> None:
    """Make the node's NATS thread busy for `seconds` (a GC pause, a slow socket)."""
    transport = system.cluster._transport
    transport._aloop.call_soon_threadsafe(time.sleep, seconds)


def dead(system: runtime.System) -> int:
    return sum(system.snapshot().dead_letters.values())


# -- a publish NATS refuses fails alone --------------------------------------------


async def test_a_tab_in_a_cluster_topic_is_refused_or_delivered(nats_server: NatsServer) -> None:
    """Events on cluster topics "are delivered to matching subscribers on every node": a
    topic NATS cannot carry as a subject (a tab in it) is refused at the sender or
    delivered, never silently dropped."""
    with trio.fail_after(WAIT):
        async with pair(nats_server, cluster_topics=("jobs.>",)) as (a, b):
            got: list[runtime.Event] = []
            b.bus.subscribe("jobs.>")(got.append)
            await trio.sleep(0.2)
            try:
                a.publish("jobs.a\tb", 1)
            except ValueError:
                return  # refused at the sender: fine
            await trio.sleep(1.0)
            assert [e.topic for e in got] == ["jobs.a\tb"]


async def test_one_refused_publish_does_not_take_the_rest_of_its_batch_down(
    nats_server: NatsServer,
) -> None:
    """Each message is "either handled or recorded in dead letters"; `undeliverable`
    means the node is down or the message undecodable.  A publish NATS refuses fails
    alone: while the connection is up, the rest of its write batch (a valid event, tells
    to a healthy node) is delivered and nothing is dead-lettered `undeliverable`."""
    with trio.fail_after(WAIT):
        async with pair(nats_server, cluster_topics=("jobs.>",)) as (a, b):
            got: list[runtime.Event] = []
            b.bus.subscribe("jobs.>")(got.append)
            await trio.sleep(0.2)
            echo = a.ref(f"troupe://{b.node}/app/echo")
            freeze_nats_thread(a, 0.5)  # everything below lands in one write batch
            try:
                a.publish("jobs.a\tb", 1)
            except ValueError:
                pass
            a.publish("jobs.ok", 2)
            for i in range(10):
                echo.tell(i)
            await trio.sleep(1.5)
            assert a.dead_letters.counts.get("undeliverable", 0) == 0
            assert b.snapshot().find("/app/echo").processed == 10
            assert "jobs.ok" in [e.topic for e in got]


async def test_a_message_too_big_for_nats_because_of_its_path_is_refused_at_the_sender() -> None:
    """A message "whose encoding exceeds the NATS server's max_payload" raises
    `NotSerializable` in the sender, tell and ask alike, when the envelope is too large
    because of its path (not its body): it is never handed to NATS to be refused."""
    with NatsServer(max_payload=4096) as server:
        with trio.fail_after(WAIT):
            async with pair(server) as (a, b):
                long = a.ref(f"troupe://{b.node}/app/" + "x" * 5000)
                with pytest.raises(runtime.NotSerializable):
                    long.tell("hi")
                with pytest.raises(runtime.NotSerializable):
                    await long.ask("hi", timeout=5)


async def test_a_message_at_exactly_the_codec_limit_crosses() -> None:
    with NatsServer(max_payload=4096) as server:
        with trio.fail_after(WAIT):
            async with pair(server) as (a, b):
                echo = a.ref(f"troupe://{b.node}/app/echo")
                limit = a.cluster.codec.max_payload
                at = b"x" * (limit - 3)  # bin16 header: 3 bytes
                assert len(a.cluster.codec.encode(at)) == limit
                assert await echo.ask(at) == at
                echo.tell(at)
                with pytest.raises(runtime.NotSerializable, match="max_payload"):
                    echo.tell(at + b"x")
                await until(lambda: b.snapshot().find("/app/echo").processed == 2, "both")
                assert dead(a) == 0 and dead(b) == 0


# -- location transparency ----------------------------------------------------------


class Blocky(Actor):
    """A `block` mailbox of one, and a slow handler."""

    mailbox = Mailbox(capacity=1, overflow="block")

    async def receive(self, msg: Any) -> Any:
        await trio.sleep(0.2)
        return msg


async def test_a_remote_ask_waits_for_room_in_a_block_mailbox_as_a_local_one_does(
    nats_server: NatsServer,
) -> None:
    """`await ask(msg, timeout)` "waits for mailbox room like `send`, then for the reply,
    all within `timeout`", and a remote ref has "the same API as a local one": four
    concurrent asks to a busy `block` mailbox of one all get their answers, whether the
    ref is local or remote."""
    with trio.fail_after(WAIT):
        async with pair(nats_server) as (a, b):
            await b.start_child("/app", child(Blocky, name="blocky"))

            async def four(ref: runtime.ActorRef) -> list[Any]:
                out: list[Any] = []

                async def one(i: int) -> None:
                    try:
                        out.append(await ref.ask(i, timeout=10))
                    except runtime.TroupeError as error:
                        out.append(type(error).__name__)

                async with trio.open_nursery() as nursery:
                    for i in range(4):
                        nursery.start_soon(one, i)
                return sorted(out, key=str)

            assert await four(b.ref("/app/blocky")) == [0, 1, 2, 3]  # local
            assert await four(a.ref(f"troupe://{b.node}/app/blocky")) == [0, 1, 2, 3]


# -- cancellation -------------------------------------------------------------------


class Sleepy(Actor):
    async def receive(self, msg: Any) -> Any:
        await trio.sleep(0.3)
        return msg


async def test_a_cancelled_remote_ask_leaves_nothing_behind(nats_server: NatsServer) -> None:
    with trio.fail_after(WAIT):
        async with pair(nats_server) as (a, b):
            await b.start_child("/app", child(Sleepy, name="slow"))
            slow = a.ref(f"troupe://{b.node}/app/slow")
            for _ in range(3):
                with trio.move_on_after(0.05):
                    await slow.ask("late", timeout=5)
            assert a.cluster._asks == {}
            assert len(a.cluster._abandoned) == 3
            await until(lambda: a.dead_letters.counts.get("timeout", 0) == 3, "late answers")
            assert [d.message for d in a.dead_letters.recent(3, "timeout")] == ["late"] * 3
            assert a.cluster._abandoned == {}


async def test_a_cancelled_remote_send_is_counted_once(nats_server: NatsServer) -> None:
    """Each message is "either handled or recorded in dead letters", not both.  A
    remote `send` cancelled while the remote mailbox is full may still be enqueued and
    handled there (the cancellation does not cross); its late acknowledgement is then
    no dead letter."""
    with trio.fail_after(WAIT):
        async with pair(nats_server) as (a, b):
            await b.start_child("/app", child(Blocky, name="blocky"))
            ref = a.ref(f"troupe://{b.node}/app/blocky")
            await ref.send(1)
            await ref.send(2)
            with trio.move_on_after(0.05):
                await ref.send(3)
            await trio.sleep(1.0)
            handled = b.snapshot().find("/app/blocky").processed
            assert handled + dead(a) + dead(b) == 3, (handled, a.snapshot().dead_letters)


async def test_open_system_cancelled_with_remote_asks_pending(
    nats_server: NatsServer,
) -> None:
    """A node's `open_system` cancelled from outside while its actors' remote asks wait:
    the asks end (cancelled or failed), nothing hangs, the other node sees it leave."""
    from test_cluster import Slow, node

    results: list[str] = []

    class Asker(Actor):
        def __init__(self, url: str) -> None:
            self.url = url

        async def on_start(self) -> None:
            self.ctx.nursery.start_soon(self.go)

        async def go(self) -> None:
            try:
                await self.ctx.system.ref(self.url).ask("q", timeout=30)
                results.append("answered")
            except BaseException as error:
                results.append(type(error).__name__)
                raise

    with trio.fail_after(WAIT):
        cluster = fresh("oc")
        async with node(nats_server, f"{cluster}-b", cluster_name=cluster) as b:
            await b.start_child("/app", child(Slow, name="slow"))
            with trio.CancelScope() as scope:
                async with node(nats_server, f"{cluster}-a", cluster_name=cluster) as a:
                    await until(lambda: a.cluster.is_up(b.node), "b up")
                    for i in range(3):
                        await a.start_child(
                            "/app",
                            child(Asker, name=f"asker{i}", args=(f"troupe://{b.node}/app/slow",)),
                        )
                    await until(lambda: len(a.cluster._asks) == 3, "asks pending")
                    scope.cancel()
                    await trio.sleep_forever()
            assert len(results) == 3 and "answered" not in results
            await until(lambda: not b.cluster.is_up(f"{cluster}-a"), "a left")


# -- threads ------------------------------------------------------------------------


def test_threads_waiting_on_a_full_outbox_get_runtime_closed_at_stop(
    nats_server: NatsServer,
) -> None:
    """Once the system has stopped, "every call on any ref ... raises `RuntimeClosed`":
    threads in `ask_blocking` or `tell` waiting for outbox room when the node stops
    never see trio's internal exceptions (such as `trio.Cancelled`), none hangs, and
    later calls raise `RuntimeClosed`."""
    cluster = fresh("ts")
    options = {"cluster": nats_server.url, "cluster_name": cluster, "heartbeat": 0.2}
    with runtime.start_in_thread(tree(), node=f"{cluster}-b", **options):
        manager = runtime.start_in_thread(tree(), node=f"{cluster}-a", outbox=1, **options)
        a = manager.__enter__()
        try:
            echo = a.ref(f"troupe://{cluster}-b/app/echo")
            for _ in range(200):
                try:
                    assert echo.ask_blocking("hi", timeout=5) == "hi"
                    break
                except runtime.NodeDown:
                    time.sleep(0.05)
            freeze_nats_thread(a._system, 1.5)  # the outbox of one stays full
            errors: dict[int, str] = {}

            def asker(k: int) -> None:
                try:
                    echo.ask_blocking(k, timeout=10)
                    errors[k] = "answered"
                except BaseException as error:
                    errors[k] = f"{type(error).__module__}.{type(error).__qualname__}"

            def teller(k: int) -> None:
                try:
                    for i in range(50):
                        echo.tell((k, i))
                    errors[k] = "told"
                except BaseException as error:
                    errors[k] = f"{type(error).__module__}.{type(error).__qualname__}"

            threads = [threading.Thread(target=asker, args=(k,)) for k in range(4)]
            threads += [threading.Thread(target=teller, args=(k,)) for k in range(4, 8)]
            for t in threads:
                t.start()
            time.sleep(0.3)
        finally:
            manager.__exit__(None, None, None)
        for t in threads:
            t.join(10)
        assert not any(t.is_alive() for t in threads)  # nothing hangs
        leaked = {k: v for k, v in errors.items() if v.startswith("trio.")}
        assert leaked == {}, errors
        with pytest.raises(runtime.RuntimeClosed):
            echo.tell(1)
        with pytest.raises(runtime.RuntimeClosed):
            echo.ask_blocking(1)


def test_many_threads_tell_and_ask_remote_refs_at_once(nats_server: NatsServer) -> None:
    """4 threads tell 200 each and ask_blocking between, through an outbox of 4:
    FIFO per thread, every tell handled, nothing dead-lettered."""
    cluster = fresh("tm")
    log: list[Any] = []
    options = {"cluster": nats_server.url, "cluster_name": cluster, "heartbeat": 0.2}
    with runtime.start_in_thread(tree(log), node=f"{cluster}-b", **options) as b:
        with runtime.start_in_thread(tree(), node=f"{cluster}-a", outbox=4, **options) as a:
            echo = a.ref(f"troupe://{cluster}-b/app/echo")
            for _ in range(200):
                try:
                    assert echo.ask_blocking("hi", timeout=5) == "hi"
                    break
                except runtime.NodeDown:
                    time.sleep(0.05)
            failures: list[BaseException] = []

            def work(k: int) -> None:
                try:
                    for i in range(200):
                        echo.tell([k, i], timeout=10)
                        if i % 50 == 0:
                            assert echo.ask_blocking(["ask", k, i], timeout=10) == ["ask", k, i]
                except BaseException as error:
                    failures.append(error)

            threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            assert failures == [] and not any(t.is_alive() for t in threads)
            assert echo.ask_blocking("last", timeout=10) == "last"
            tells = [m for m in log if isinstance(m, list) and len(m) == 2]
            assert len(tells) == 4 * 200
            for k in range(4):
                assert [i for kk, i in tells if kk == k] == list(range(200))
            assert sum(a.snapshot().dead_letters.values()) == 0
            assert sum(b.snapshot().dead_letters.values()) == 0


def test_threads_waiting_for_outbox_room_are_woken_when_there_is_room(
    nats_server: NatsServer,
) -> None:
    """When the outbox is full "a foreign thread blocks" — until there is room, and no
    longer: 8 threads telling through an outbox of 4 with `timeout=2` all find room,
    though heartbeats (which would also wake a waiter) are 20 s apart, so no wake-up
    may be lost."""
    cluster = fresh("lw")
    options = {
        "cluster": nats_server.url,
        "cluster_name": cluster,
        "heartbeat": 20.0,
        "node_down_after": 60.0,
    }
    with runtime.start_in_thread(tree(), node=f"{cluster}-b", **options):
        with runtime.start_in_thread(tree(), node=f"{cluster}-a", outbox=4, **options) as a:
            echo = a.ref(f"troupe://{cluster}-b/app/echo")
            for _ in range(200):
                try:
                    assert echo.ask_blocking("hi", timeout=5) == "hi"
                    break
                except runtime.NodeDown:
                    time.sleep(0.05)
            full: list[tuple[int, int]] = []

            def work(k: int) -> None:
                for i in range(300):
                    try:
                        echo.tell([k, i], timeout=2)
                    except runtime.MailboxFull:
                        full.append((k, i))

            threads = [threading.Thread(target=work, args=(k,)) for k in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert full == [], f"{len(full)} tells found no room within 2 s"


# -- backpressure and accounting ------------------------------------------------------


class Tiny(Actor):
    mailbox = Mailbox(capacity=2, overflow="fail")

    def __init__(self, seen: list[int], hold: trio.Event) -> None:
        self.seen = seen
        self.hold = hold

    async def receive(self, msg: Any) -> Any:
        if isinstance(msg, int):
            self.seen.append(msg)
            await self.hold.wait()  # held: what arrives past its two places overflows
        return msg


async def test_a_burst_into_a_tiny_fail_mailbox_is_all_accounted_for(
    nats_server: NatsServer,
) -> None:
    with trio.fail_after(WAIT):
        async with pair(nats_server, outbox=1) as (a, b):
            seen: list[int] = []
            hold = trio.Event()
            await b.start_child("/app", child(Tiny, name="tiny", args=(seen, hold)))
            tiny = a.ref(f"troupe://{b.node}/app/tiny")
            sent = refused = 0
            i = 0
            # The burst goes on until what reached b overflowed there (how many tells
            # get through an outbox of one depends on how busy the machine is).
            while i < 500 or not b.snapshot().dead_letters["overflow"]:
                if i % 100 == 0:  # some acknowledged: refused ones raise here, not counted
                    try:
                        await tiny.send(i)
                        sent += 1
                    except runtime.MailboxFull:
                        refused += 1
                try:
                    tiny.tell(i)  # most told, into an outbox of one
                    sent += 1
                except runtime.MailboxFull:  # the outbox: raised here, nothing queued
                    await trio.sleep(0)
                if i >= 500:
                    await trio.sleep(0.001)
                i += 1
            hold.set()
            await until(
                lambda: (
                    len(seen) + dead(a) + dead(b) + b.snapshot().cluster["lost_in_transit"] >= sent
                ),
                "everything accounted for",
            )
            await trio.sleep(0.3)
            overflow = b.snapshot().dead_letters["overflow"]
            assert overflow > 0  # the burst overflowed there, and it was counted there
            assert len(seen) + dead(a) + dead(b) + b.snapshot().cluster["lost_in_transit"] == sent
            assert seen == sorted(seen)  # FIFO per sender


# -- odd values ---------------------------------------------------------------------


@wire.register
@attrs.frozen
class Carrier:
    refs: list[runtime.ActorRef]
    note: str = ""


async def test_refs_inside_registered_classes_and_events_arrive_working(
    nats_server: NatsServer,
) -> None:
    with trio.fail_after(WAIT):
        async with pair(nats_server, cluster_topics=("refs.>",)) as (a, b):
            echo_b = a.ref(f"troupe://{b.node}/app/echo")
            back = await echo_b.ask(Carrier([a.ref("/app/echo"), echo_b], "x"))
            assert isinstance(back, Carrier)
            assert back.refs[0].url == f"troupe://{a.node}/app/echo"
            assert await back.refs[0].ask("home") == "home"  # local again: a ref of a's own
            got: list[runtime.Event] = []
            b.bus.subscribe("refs.>")(got.append)
            await trio.sleep(0.2)
            a.publish("refs.one", {"ref": a.ref("/app/echo"), "nested": [Carrier([echo_b])]})
            await until(lambda: len(got) == 1, "the event")
            payload = got[0].payload
            assert await payload["ref"].ask("via event") == "via event"
            assert payload["nested"][0].refs[0].path == "/app/echo"


async def test_bad_urls_and_refused_values_are_clear_errors(nats_server: NatsServer) -> None:
    import datetime
    import enum
    import uuid

    class E(enum.IntEnum):
        X = 1

    with trio.fail_after(WAIT):
        async with pair(nats_server) as (a, b):
            for url in (
                "troupe://",
                "troupe:///app",
                "troupe://a b/x",
                "troupe://a.b/x",
                "troupe://ä/x",
                "troupe:/x",
                "nats://b/x",
                " troupe://b/x",
            ):
                with pytest.raises((ValueError, runtime.ActorNotFound)):
                    a.ref(url)
            assert a.ref(f"troupe://{b.node}").path == "/"
            assert a.ref(f"troupe://{b.node}/").url == f"troupe://{b.node}/"
            for path in ("/app/with space", "/app/dots.in.it", "/app/" + "y" * 500, "/app//echo"):
                ref = a.ref(f"troupe://{b.node}{path}")
                with pytest.raises(runtime.ActorNotFound):
                    await ref.ask(1)
                ref.tell(1)
            # each ask and each tell dead-lettered there (the asker also got ActorNotFound)
            await until(lambda: b.dead_letters.counts.get("undeliverable", 0) == 8, "dead letters")
            echo = a.ref(f"troupe://{b.node}/app/echo")
            for bad in (
                {1},
                E.X,
                datetime.datetime.now(),
                uuid.uuid4(),
                object(),
                2**64,
                {1: "int key"},
                Echo(),
                lambda: 1,
                float,
                [[[]]] * 1 + [{1}],
            ):
                with pytest.raises(runtime.NotSerializable):
                    echo.tell(bad)
                with pytest.raises(runtime.NotSerializable):
                    await echo.ask(bad)
            assert await echo.ask("still fine") == "still fine"
            assert dead(a) == 0


# -- watches across nodes: what is remembered ---------------------------------------


class RemoteWatcher(Actor):
    def __init__(self, url: str, seen: list[Any]) -> None:
        self.url, self.seen = url, seen

    async def on_start(self) -> None:
        self.ctx.watch(self.ctx.system.ref(self.url))

    async def receive(self, msg: Any) -> Any:
        self.seen.append(msg)


async def test_a_restarting_watcher_node_is_forgotten_by_the_watched_node(
    nats_server: NatsServer,
) -> None:
    """A node whose actor watches b's echo comes and goes five times (a new incarnation
    each time): b's `_watched_by` never holds more than the live watcher."""
    from test_cluster import node

    with trio.fail_after(WAIT * 2):
        cluster = fresh("wr")
        async with node(nats_server, f"{cluster}-b", cluster_name=cluster) as b:
            url = f"troupe://{b.node}/app/echo"
            for _ in range(5):
                async with node(nats_server, f"{cluster}-a", cluster_name=cluster) as a:
                    await until(lambda: a.cluster.is_up(b.node), "b up")
                    await a.start_child("/app", child(RemoteWatcher, name="w", args=(url, [])))
                    await until(lambda: bool(b.cluster._watched_by), "the watch crossed")
                    assert b.cluster._watched_by == {"/app/echo": {(a.node, "/app/echo")}}
                await until(lambda: not b.cluster._watched_by, "the watcher forgotten")
            assert len(b.cluster._peers) == 1


async def test_a_watcher_that_stops_is_unwatched_on_the_watched_node(
    nats_server: NatsServer,
) -> None:
    """`ctx.watch(remote_ref)` is released with the watcher: when the watching actor
    stops for good, its node unwatches remotely and forgets the watch, and the watched
    node drops it from `_watched_by`, so neither map keeps an entry per stale target."""
    with trio.fail_after(WAIT):
        async with pair(nats_server) as (a, b):
            for i in range(5):
                await b.start_child("/app", child(Echo, name=f"t{i}"))
                url = f"troupe://{b.node}/app/t{i}"
                await a.start_child("/app", child(RemoteWatcher, name=f"w{i}", args=(url, [])))
            await until(lambda: len(b.cluster._watched_by) == 5, "the watches crossed")
            for i in range(5):
                await a.terminate_child(f"/app/w{i}")
            await trio.sleep(0.5)
            assert {k: v for k, v in a.cluster._watches.items() if v} == {}
            assert b.cluster._watched_by == {}, b.cluster._watched_by
            assert a.cluster._watches == {}, a.cluster._watches

"""Nodes of one cluster on a real nats-server, run in this process (two systems on one
trio loop, each with its own NATS thread): remote refs, asks, tells, watches, the
cluster-wide bus, membership.  Real time with generous bounds; counts, not durations."""

from __future__ import annotations

import itertools
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio
from natsserver import NatsServer

import runtime
from runtime import Actor, Supervisor, child, wire

WAIT = 20.0
_names = itertools.count()


@wire.register
@attrs.frozen
class Ping:
    n: int
    reply_to: runtime.ActorRef | None = None


class Echo(Actor):
    """Answers what it gets; ``"boom"`` crashes it; ``Ping`` with a ref tells it back."""

    def __init__(self, log: list[Any] | None = None) -> None:
        self.log = log if log is not None else []

    async def receive(self, msg: Any) -> Any:
        if msg == "boom":
            raise ValueError("boom on purpose")
        if msg == "ignore":
            return runtime.UNHANDLED
        if isinstance(msg, Ping) and msg.reply_to is not None:
            msg.reply_to.tell(Ping(msg.n + 1))
        self.log.append(msg)
        return msg


class Watcher(Actor):
    """Watches the ref at `target` from its start and keeps what it is told."""

    def __init__(self, target: str, seen: list[Any]) -> None:
        self.target, self.seen = target, seen

    async def on_start(self) -> None:
        self.ctx.watch(self.ctx.system.ref(self.target))

    async def receive(self, msg: Any) -> Any:
        self.seen.append(msg)


def tree(log: list[Any] | None = None) -> Supervisor:
    return Supervisor("app", children=[child(Echo, name="echo", args=(log,))])


def fresh(prefix: str) -> str:
    return f"{prefix}{next(_names)}"


@asynccontextmanager
async def node(
    server: NatsServer, name: str, log: list[Any] | None = None, **options: Any
) -> AsyncIterator[runtime.System]:
    options.setdefault("cluster_name", "t" + name.split("-")[0])
    options.setdefault("heartbeat", 0.2)
    options.setdefault("node_down_after", 1.5)
    async with runtime.open_system(
        tree(log), name=name, node=name, cluster=server.url, **options
    ) as system:
        yield system


async def until(condition: Any, what: str, limit: float = WAIT) -> None:
    with trio.move_on_after(limit):
        while not condition():
            await trio.sleep(0.01)
        return
    raise AssertionError(f"timed out waiting for {what}")


@asynccontextmanager
async def pair(
    server: NatsServer, **options: Any
) -> AsyncIterator[tuple[runtime.System, runtime.System]]:
    cluster = fresh("c")
    async with node(server, f"{cluster}-a", cluster_name=cluster, **options) as a:
        async with node(server, f"{cluster}-b", cluster_name=cluster, **options) as b:
            await until(lambda: a.cluster.is_up(b.node) and b.cluster.is_up(a.node), "nodes up")
            yield a, b


async def test_ask_and_tell_across_nodes(nats_server: NatsServer) -> None:
    with trio.fail_after(WAIT):
        async with pair(nats_server) as (a, b):
            echo = a.ref(f"troupe://{b.node}/app/echo")
            assert isinstance(echo, runtime.ActorRef)
            assert (echo.node, echo.url) == (b.node, f"troupe://{b.node}/app/echo")
            assert await echo.ask({"x": [1, 2.5, "s", None, b"b"]}) == {
                "x": [1, 2.5, "s", None, b"b"]
            }
            assert await echo.ask(Ping(1)) == Ping(1)
            assert await echo.ask((1, 2)) == [1, 2]  # tuples arrive as lists
            local = a.ref("/app/echo")
            assert local.url == f"troupe://{a.node}/app/echo"
            echo.tell(Ping(1, reply_to=local))  # the ref crosses and works there
            await until(lambda: a.snapshot().find("/app/echo").processed >= 1, "the tell back")


async def test_remote_failures_come_back_typed(nats_server: NatsServer) -> None:
    with trio.fail_after(WAIT):
        async with pair(nats_server) as (a, b):
            echo = a.ref(f"troupe://{b.node}/app/echo")
            with pytest.raises(runtime.ActorCrashed) as crashed:
                await echo.ask("boom")
            cause = crashed.value.__cause__
            assert isinstance(cause, runtime.RemoteError)
            assert cause.type == "ValueError" and "boom on purpose" in str(cause)
            assert "Traceback" in cause.traceback or "raise ValueError" in cause.traceback
            with pytest.raises(runtime.UnhandledMessage):
                await echo.ask("ignore")
            with pytest.raises(runtime.ActorNotFound):
                await a.ref(f"troupe://{b.node}/app/nobody").ask(1)
            with pytest.raises(runtime.NotSerializable, match="set"):
                await echo.ask({1, 2})
            with pytest.raises(runtime.NodeDown):
                await a.ref(f"troupe://{fresh('never')}/app/echo").ask(1)


async def test_watch_a_remote_actor_and_its_node(nats_server: NatsServer) -> None:
    with trio.fail_after(WAIT):
        cluster = fresh("w")
        async with node(nats_server, f"{cluster}-a", cluster_name=cluster) as a:
            seen: list[Any] = []
            async with node(nats_server, f"{cluster}-b", cluster_name=cluster) as b:
                await until(lambda: a.cluster.is_up(b.node), "b up")
                await b.start_child("/app", child(Echo, name="victim"))
                url = f"troupe://{b.node}/app/victim"
                await a.start_child("/app", child(Watcher, name="w1", args=(url, seen)))
                await a.start_child(
                    "/app", child(Watcher, name="w2", args=(f"troupe://{b.node}/app/echo", seen))
                )
                await trio.sleep(0.3)  # the watch crossed
                await b.terminate_child("/app/victim")
                await until(lambda: len(seen) == 1, "Terminated for the victim")
                assert isinstance(seen[0], runtime.Terminated)
                assert seen[0].ref.url == url
            # b stopped gracefully: its echo stopped for good first (one Terminated,
            # reason "shutdown"), then the node left
            await until(lambda: len(seen) == 2, "Terminated for b's echo")
            assert seen[1].reason == "shutdown"
            await until(lambda: not a.cluster.is_up(b.node), "b down")
            await trio.sleep(0.5)
            assert len(seen) == 2  # exactly one each


async def test_a_ref_to_a_missing_remote_path_is_alive_until_watched(
    nats_server: NatsServer,
) -> None:
    """A remote ref's is_alive says its node is up (the remote actor is not asked, as
    with a remote pid or Akka ref); watching a path with no actor answers at once with
    one Terminated(ref, "noproc") (docs/concepts/cluster.md)."""

    with trio.fail_after(WAIT):
        async with pair(nats_server) as (a, b):
            url = f"troupe://{b.node}/app/nobody"
            assert a.ref(url).is_alive  # its node is up; the path is not checked
            seen: list[Any] = []
            await a.start_child("/app", child(Watcher, name="w", args=(url, seen)))
            await until(lambda: len(seen) == 1, "Terminated for the missing path")
            assert isinstance(seen[0], runtime.Terminated)
            assert (seen[0].ref.url, seen[0].reason) == (url, "noproc")


class Stops(Actor):
    """``"stop"`` ends it normally (ctx.stop())."""

    async def receive(self, msg: Any) -> Any:
        if msg == "stop":
            self.ctx.stop()
        return msg


async def test_a_remote_transient_child_that_rests_is_terminated_for_its_watchers(
    nats_server: NatsServer,
) -> None:
    """A transient child that exited normally keeps its place with no incarnation:
    a watcher on another node gets Terminated(ref, "normal"), and one that watches
    it while it rests gets Terminated(ref, "noproc") at once, as for a missing path."""
    with trio.fail_after(WAIT):
        async with pair(nats_server) as (a, b):
            await b.start_child(
                "/app", Supervisor("sup", children=[child(Stops, name="t", restart="transient")])
            )
            url = f"troupe://{b.node}/app/sup/t"
            before: list[Any] = []
            await a.start_child("/app", child(Watcher, name="before", args=(url, before)))
            await until(lambda: b.cluster._watched_by.get("/app/sup/t"), "the watch arrived")
            assert await a.ref(url).ask("stop") == "stop"
            await until(lambda: len(before) == 1, "Terminated for the resting child")
            assert (before[0].ref.url, before[0].reason) == (url, "normal")
            after: list[Any] = []
            await a.start_child("/app", child(Watcher, name="after", args=(url, after)))
            await until(lambda: len(after) == 1, "Terminated for the watch while it rests")
            assert (after[0].ref.url, after[0].reason) == (url, "noproc")


async def test_cluster_topics_reach_every_node_once(nats_server: NatsServer) -> None:
    with trio.fail_after(WAIT):
        async with pair(nats_server, cluster_topics=("jobs.>",)) as (a, b):
            got_a: list[runtime.Event] = []
            got_b: list[runtime.Event] = []
            a.bus.subscribe("jobs.>")(got_a.append)
            b.bus.subscribe("jobs.>")(got_b.append)
            b.bus.subscribe("local.>")(got_b.append)
            await trio.sleep(0.2)
            a.publish("jobs.done", {"id": 1})
            a.publish("local.only", 1)
            await until(lambda: len(got_b) == 1 and len(got_a) == 1, "the event on both nodes")
            await trio.sleep(0.2)
            assert [e.topic for e in got_b] == ["jobs.done"]
            assert got_b[0].node == a.node and got_b[0].payload == {"id": 1}
            assert len(got_a) == 1  # not echoed back
            with pytest.raises(runtime.NotSerializable):
                a.publish("jobs.bad", object())


async def test_a_taken_node_name_fails_the_start(
    nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    with trio.fail_after(WAIT):
        cluster = fresh("n")
        async with node(nats_server, f"{cluster}-a", cluster_name=cluster):
            with pytest.raises(runtime.ClusterError, match="taken"):
                async with node(nats_server, f"{cluster}-a", cluster_name=cluster):
                    pass
            # the node that failed to join says so once, not that it is reconnecting
            assert not [r for r in caplog.records if "reconnecting" in r.getMessage()]
        # once it left, the name is free again at once
        async with node(nats_server, f"{cluster}-a", cluster_name=cluster) as again:
            assert again.node == f"{cluster}-a"


async def test_an_unreachable_server_fails_the_start_naming_it() -> None:
    with trio.fail_after(WAIT):
        with pytest.raises(runtime.ClusterError, match=r"127\.0\.0\.1:1\b"):
            async with runtime.open_system(
                tree(), node="x", cluster="nats://127.0.0.1:1", nats_options={"connect_timeout": 1}
            ):
                pass


def test_bad_cluster_options_are_refused_before_anything_starts() -> None:
    async def main(options: dict[str, Any]) -> None:
        async with runtime.open_system(tree(), **options):
            pass

    for options, match in [
        ({"node": "a.b", "cluster": "nats://127.0.0.1:4222"}, "subject token"),
        ({"node": "a"}, "needs cluster"),
        ({"cluster": "nats://127.0.0.1:4222"}, "needs node"),
        ({"node": "a", "cluster": "nats://x", "cluster_control": "all"}, "cluster_control"),
        ({"node": "a", "cluster": "nats://x", "cluster_topics": ("a..b",)}, "pattern"),
    ]:
        with pytest.raises(ValueError, match=match):
            trio.run(main, options)


async def test_snapshot_and_nodes_across_the_cluster(nats_server: NatsServer) -> None:
    with trio.fail_after(WAIT):
        async with pair(nats_server) as (a, b):
            names = [info.name for info in a.cluster.nodes()]
            assert names == sorted([a.node, b.node])
            assert {info.status for info in a.cluster.nodes()} == {"up"}
            snaps = await a.cluster.snapshot()
            assert set(snaps) == {a.node, b.node}
            assert snaps[b.node].find("/app/echo").name == "echo"
            assert "echo" in snaps[b.node].render()
            assert snaps[a.node].cluster is not None


class Slow(Actor):
    """Holds each message for a while: its `fail` mailbox of one fills up."""

    mailbox = runtime.Mailbox(capacity=1, overflow="fail")

    async def receive(self, msg: Any) -> Any:
        await trio.sleep(0.5)
        return msg


async def test_send_is_acknowledged_by_the_remote_mailbox(nats_server: NatsServer) -> None:
    with trio.fail_after(WAIT):
        async with pair(nats_server) as (a, b):
            await b.start_child("/app", child(Slow, name="slow"))
            slow = a.ref(f"troupe://{b.node}/app/slow")
            await slow.send(1)  # taken: in hand
            await slow.send(2)  # taken: queued
            with pytest.raises(runtime.MailboxFull):
                await slow.send(3)  # refused there, and said so here
            echo = a.ref(f"troupe://{b.node}/app/echo")
            await echo.send(Ping(7))
            await until(lambda: b.snapshot().find("/app/echo").processed == 1, "the send handled")


async def test_a_full_outbox_refuses_a_tell_on_the_loop(nats_server: NatsServer) -> None:
    with trio.fail_after(WAIT):
        async with pair(nats_server, outbox=1) as (a, b):
            echo = a.ref(f"troupe://{b.node}/app/echo")
            told = 0
            with pytest.raises(runtime.MailboxFull, match="outbox"):
                for _ in range(100_000):  # the NATS thread cannot keep up with a tight loop
                    echo.tell(told)
                    told += 1
            await echo.send(told)  # waits for room instead
            told += 1
            await until(lambda: b.snapshot().find("/app/echo").processed == told, "all handled")


def test_threads_tell_and_ask_remote_actors(nats_server: NatsServer) -> None:
    cluster = fresh("th")
    log: list[Any] = []
    options = {"cluster": nats_server.url, "cluster_name": cluster, "heartbeat": 0.2}
    with runtime.start_in_thread(tree(log), node=f"{cluster}-b", **options) as b:
        with runtime.start_in_thread(tree(), node=f"{cluster}-a", **options) as a:
            echo = a.ref(f"troupe://{cluster}-b/app/echo")
            for _ in range(200):  # until b is seen up
                try:
                    assert echo.ask_blocking("hello", timeout=5) == "hello"
                    break
                except runtime.NodeDown:
                    time.sleep(0.05)
            else:
                raise AssertionError("b never came up")
            for i in range(50):
                echo.tell(i)
            assert echo.ask_blocking("last", timeout=5) == "last"
            assert [m for m in log if isinstance(m, int)] == list(range(50))
            with pytest.raises(runtime.NotSerializable):
                echo.tell({1})
        assert b.is_running


async def test_remote_spawn_needs_a_node_that_allows_it(nats_server: NatsServer) -> None:
    with trio.fail_after(WAIT):
        cluster = fresh("sp")
        async with node(nats_server, f"{cluster}-a", cluster_name=cluster) as a:
            async with node(
                nats_server, f"{cluster}-b", cluster_name=cluster, cluster_control="rw"
            ) as b:
                await until(lambda: a.cluster.is_up(b.node) and b.cluster.is_up(a.node), "up")
                ref = await a.start_child(
                    f"troupe://{b.node}/app", child("test_cluster:Echo", name="spawned")
                )
                assert ref.url == f"troupe://{b.node}/app/spawned"
                assert await ref.ask(Ping(3)) == Ping(3)
                kids = await a.cluster.which_children(f"troupe://{b.node}/app")
                assert [k.name for k in kids] == ["echo", "spawned"]
                assert kids[1].ref == ref and kids[1].dynamic
                with pytest.raises(runtime.RemoteError, match="ImportError"):
                    await a.start_child(f"troupe://{b.node}/app", child("nowhere.at_all:Nope"))
                await a.terminate_child(ref.url)
                assert [k.name for k in b.which_children("/app")] == ["echo"]
                # b may not start anything on a (read-only control by default)
                with pytest.raises(runtime.RemoteError, match="PermissionError"):
                    await b.start_child(f"troupe://{a.node}/app", child("test_cluster:Echo"))


async def test_a_message_over_max_payload_is_refused_in_the_sender() -> None:
    with NatsServer(max_payload=4096) as server:
        with trio.fail_after(WAIT):
            async with pair(server) as (a, b):
                echo = a.ref(f"troupe://{b.node}/app/echo")
                with pytest.raises(runtime.NotSerializable, match="max_payload"):
                    echo.tell(b"x" * 10_000)
                assert await echo.ask(b"x" * 1000) == b"x" * 1000  # the link still works


async def test_an_arrival_that_cannot_be_decoded_is_dead_lettered_and_the_asker_told(
    nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    from runtime.cluster.codec import Undecodable

    with trio.fail_after(WAIT):
        async with pair(nats_server) as (a, b):
            echo = a.ref(f"troupe://{b.node}/app/echo")
            real = b.cluster.codec.decode

            def decode(data: bytes) -> Any:
                value = real(data)
                if value == "poison":
                    raise Undecodable("unknown wire tag 'x:Y' (on purpose)")
                return value

            monkeypatch.setattr(b.cluster.codec, "decode", decode)
            with pytest.raises(runtime.RemoteError, match="x:Y"):
                await echo.ask("poison")
            echo.tell("poison")
            await until(
                lambda: b.snapshot().dead_letters.get("undeliverable", 0) == 2, "dead letters"
            )
            assert await echo.ask("fine") == "fine"


async def test_lost_in_transit_is_in_the_snapshot_and_the_metrics(nats_server: NatsServer) -> None:
    with trio.fail_after(WAIT):
        async with pair(nats_server, metrics_port=0) as (a, b):
            echo = a.ref(f"troupe://{b.node}/app/echo")
            assert await echo.ask(1) == 1
            peers = b.snapshot().cluster["peers"]
            assert peers[a.node]["lost_in_transit"] == 0 and peers[a.node]["status"] == "up"
            text = b.metrics.render().decode()
            assert f'troupe_cluster_lost_in_transit_total{{peer="{a.node}"}} 0.0' in text
            assert f'troupe_cluster_node_up{{peer="{a.node}"}} 1.0' in text


def test_a_system_without_a_cluster_imports_none_of_it() -> None:
    import subprocess
    import sys

    code = (
        "import sys, trio, runtime\n"
        "async def main():\n"
        "    async with runtime.open_system(runtime.Supervisor('app')) as s:\n"
        "        s.ref('/app')\n"
        "trio.run(main)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('nats', 'msgspec')"
        " or m.startswith('runtime.cluster')))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


async def test_a_url_without_a_cluster_is_refused_saying_what_to_do() -> None:
    async with runtime.open_system(tree()) as system:
        with pytest.raises(ValueError, match="not on a cluster"):
            system.ref("troupe://other/app/echo")
        assert system.ref("/app/echo").url is None and system.ref("/app/echo").node is None


async def test_tells_to_a_node_never_seen_are_dead_lettered(nats_server: NatsServer) -> None:
    with trio.fail_after(WAIT):
        async with pair(nats_server) as (a, _b):
            ghost = a.ref(f"troupe://{fresh('ghost')}/app/echo")
            assert not ghost.is_alive
            ghost.tell("hello")
            letters = a.dead_letters.recent(10, "undeliverable")
            assert [(d.message, d.recipient) for d in letters] == [("hello", ghost.url)]


async def test_a_late_remote_answer_is_dead_lettered_as_timeout(nats_server: NatsServer) -> None:
    with trio.fail_after(WAIT):
        async with pair(nats_server) as (a, b):
            await b.start_child("/app", child(Slow, name="slow"))
            slow = a.ref(f"troupe://{b.node}/app/slow")
            with pytest.raises(runtime.AskTimeout):
                await slow.ask("late", timeout=0.1)
            await until(lambda: a.dead_letters.counts.get("timeout", 0) == 1, "the late answer")
            assert [d.message for d in a.dead_letters.recent(5, "timeout")] == ["late"]


async def test_watching_a_pool_by_its_path_across_nodes(nats_server: NatsServer) -> None:
    from actors import Pool

    seen: list[Any] = []

    class Watcher(Actor):
        async def on_start(self) -> None:
            self.ctx.watch(self.ctx.system.ref(f"troupe://{b.node}/app/pool"))

        async def receive(self, msg: Any) -> Any:
            seen.append(msg)

    with trio.fail_after(WAIT):
        async with pair(nats_server) as (a, b):
            await b.start_child("/app", Pool("pool", worker=child(Echo), size=2))
            assert await a.ref(f"troupe://{b.node}/app/pool").ask(5) == 5
            await a.start_child("/app", child(Watcher, name="watcher"))
            await trio.sleep(0.3)
            await b.terminate_child("/app/pool")
            await until(lambda: len(seen) == 1, "Terminated for the pool")
            assert seen[0].ref.url == f"troupe://{b.node}/app/pool"


async def test_messages_lost_at_the_end_of_a_stream_are_counted(nats_server: NatsServer) -> None:
    # nothing follows the lost one to show a gap: the sender's next heartbeat marks
    # the last number it sent, in order behind the messages
    with trio.fail_after(WAIT):
        async with pair(nats_server) as (a, b):
            echo = a.ref(f"troupe://{b.node}/app/echo")
            for i in range(5):
                echo.tell(i)
            assert await echo.ask("sync") == "sync"
            a.cluster._peers[b.node].seq += 1  # as if a sixth tell were lost inside NATS

            def lost() -> int:
                return int(b.snapshot().cluster["peers"][a.node]["lost_in_transit"])

            await until(lambda: lost() == 1, "the loss counted after a heartbeat")


async def test_an_ask_from_an_incarnation_declared_down_fails_fast(
    nats_server: NatsServer,
) -> None:
    with trio.fail_after(WAIT):
        async with pair(nats_server, node_down_after=30.0) as (a, b):
            old = a.cluster.incarnation
            b.cluster._node_down(b.cluster._peers[a.node], "declared down on purpose")
            echo = a.ref(f"troupe://{b.node}/app/echo")
            with pytest.raises(runtime.NodeDown, match="declared incarnation"):
                await echo.ask("hello", timeout=20)  # at once, not after 20 s
            # told so, a rejoins as a new incarnation, and asks work again
            await until(lambda: a.cluster.incarnation != old, "a rejoined")
            await until(lambda: b.cluster.is_up(a.node), "b sees the new incarnation")
            assert await echo.ask("again") == "again"


async def test_a_remote_ref_cannot_take_a_local_ask(nats_server: NatsServer) -> None:
    with trio.fail_after(WAIT):
        async with pair(nats_server) as (a, b):
            echo = a.ref(f"troupe://{b.node}/app/echo")
            with pytest.raises(TypeError, match="another node"):
                echo.deliver_ask("x", None)

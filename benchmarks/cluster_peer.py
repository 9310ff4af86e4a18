"""The other process of the cluster benchmarks: one Troupe node, nothing measured here.

Run by `benchmarks.cluster` (``python -m benchmarks.cluster_peer URL CLUSTER NODE
HEARTBEAT NODE_DOWN_AFTER CAPACITY`` from the repository root), it opens a
system as node NODE of cluster CLUSTER on the nats-server at URL, with two
actors:

- ``/app/echo`` (`Echo`): answers every ask with the message itself.
- ``/app/count`` (`Count`): counts the messages it is told; asked ``"count"``
  it answers how many it handled since the last ``"count"`` and starts again
  (so a warm-up round can go first).  Its mailbox holds CAPACITY messages.

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
from runtime import Actor, Mailbox, Supervisor, child

MAX_LIFE = 600.0
"""Seconds after which the peer exits whatever happens (no orphan outlives a run)."""
COUNT = "count"
"""The ask that ends a round of tells: the answer is how many were handled."""


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


def tree(capacity: int) -> Supervisor:
    return Supervisor(
        "app",
        children=[
            child(Echo, name="echo"),
            child(Count, name="count", mailbox=Mailbox(capacity=capacity)),
        ],
    )


async def main(
    url: str, cluster: str, node: str, heartbeat: float, node_down_after: float, capacity: int
) -> None:
    async with runtime.open_system(
        tree(capacity),
        name=node,
        node=node,
        cluster=url,
        cluster_name=cluster,
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
    if len(sys.argv) != 7:
        raise SystemExit(
            "usage: python -m benchmarks.cluster_peer URL CLUSTER NODE HEARTBEAT "
            "NODE_DOWN_AFTER CAPACITY"
        )
    logging.getLogger("troupe").setLevel(logging.ERROR)  # node up/down notes are expected
    url, cluster, node, heartbeat, down_after, capacity = sys.argv[1:]
    trio.run(main, url, cluster, node, float(heartbeat), float(down_after), int(capacity))

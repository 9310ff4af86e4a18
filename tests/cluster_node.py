"""A cluster node run as a separate OS process, for the multi-process cluster tests.

Run it as a script::

    python tests/cluster_node.py --node NAME --cluster nats://127.0.0.1:4222 \
        [--cluster-name troupe] [--heartbeat 0.2] [--node-down-after 1.0] [--cluster-control rw]

(each option also read from the environment: ``CLUSTER_NODE``, ``TROUPE_CLUSTER``,
``CLUSTER_NAME``, ``CLUSTER_HEARTBEAT``, ``CLUSTER_NODE_DOWN_AFTER``), or through the
CLI: ``troupe run tests/cluster_node.py:tree --node NAME --cluster URL``.

Its tree, ``/app``:

- ``/app/echo`` answers what it gets; ``"whoami"`` -> ``{"node", "pid", "incarnation"}``.
- ``/app/counter`` records every int it handles, in order; ``"count"`` ->
  ``{"handled": n, "in_order": bool, "last": int | None}``.
- ``/app/tiny`` the same with a mailbox of 100 (overflows under a burst).
- ``/app/ticker`` given ``["tick_to", ref, interval]`` tells `ref`
  ``["tick", incarnation, i]`` every `interval` seconds (the node's incarnation
  when the tick was sent).
- ``/app/tree`` a supervisor with two leaves (``a``, ``b``), to watch.
- ``/app/ready`` prints ``ready NODE PID INCARNATION`` once everything above started.

Only builtins cross the wire (no registered classes), so the tests need not
import this module.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from typing import Any

from runtime import Actor, Mailbox, Supervisor, child


def _whoami(actor: Actor) -> dict[str, Any]:
    system = actor.ctx.system
    cluster = system.cluster
    return {
        "node": system.node,
        "pid": os.getpid(),
        "incarnation": None if cluster is None else cluster.incarnation,
    }


class Echo(Actor):
    async def receive(self, msg: Any) -> Any:
        if msg == "whoami":
            return _whoami(self)
        return msg


class Counter(Actor):
    def __init__(self) -> None:
        self.seen: list[int] = []

    async def receive(self, msg: Any) -> Any:
        if msg == "count":
            seen = self.seen
            in_order = all(a < b for a, b in itertools.pairwise(seen))
            return {"handled": len(seen), "in_order": in_order, "last": seen[-1] if seen else None}
        if msg == "reset":
            self.seen = []
            return None
        if isinstance(msg, int):
            self.seen.append(msg)
            return None
        return msg


class Ticker(Actor):
    def __init__(self) -> None:
        self.target: Any = None
        self.interval = 0.05
        self.n = 0

    async def receive(self, msg: Any) -> Any:
        if isinstance(msg, list) and msg and msg[0] == "tick_to":
            first = self.target is None
            self.target, self.interval = msg[1], float(msg[2])
            if first:
                self.ctx.send_after(self.interval, "tick")
            return None
        if msg == "tick":
            self.n += 1
            incarnation = self.ctx.system.cluster.incarnation
            try:
                self.target.tell(["tick", incarnation, self.n])
            except Exception as error:  # e.g. the outbox is full: not this actor's problem
                print(f"tick {self.n} not sent: {error!r}", file=sys.stderr, flush=True)
            self.ctx.send_after(self.interval, "tick")
            return None
        return msg


class Leaf(Actor):
    async def receive(self, msg: Any) -> Any:
        return msg


class Ready(Actor):
    async def on_start(self) -> None:
        me = _whoami(self)
        print(f"ready {me['node']} {me['pid']} {me['incarnation']}", flush=True)

    async def receive(self, msg: Any) -> Any:
        return msg


def make_tree() -> Supervisor:
    return Supervisor(
        "app",
        children=[
            child(Echo, name="echo"),
            child(Counter, name="counter"),
            child(Counter, name="tiny", mailbox=Mailbox(capacity=100, overflow="fail")),
            child(Ticker, name="ticker"),
            Supervisor("tree", children=[child(Leaf, name="a"), child(Leaf, name="b")]),
            child(Ready, name="ready"),
        ],
    )


tree = make_tree()


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    env = os.environ
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--node", default=env.get("CLUSTER_NODE"))
    parser.add_argument("--cluster", default=env.get("TROUPE_CLUSTER"))
    parser.add_argument("--cluster-name", default=env.get("CLUSTER_NAME", "troupe"))
    parser.add_argument(
        "--heartbeat", type=float, default=float(env.get("CLUSTER_HEARTBEAT", "0.2"))
    )
    parser.add_argument(
        "--node-down-after",
        type=float,
        default=float(env.get("CLUSTER_NODE_DOWN_AFTER", "1.0")),
    )
    parser.add_argument("--cluster-control", default=env.get("CLUSTER_CONTROL", "ro"))
    args = parser.parse_args(argv)
    if not args.node or not args.cluster:
        parser.error("--node and --cluster (or CLUSTER_NODE and TROUPE_CLUSTER) are needed")
    return args


def main(argv: list[str] | None = None) -> int:
    import runtime

    args = parse(argv)
    try:
        runtime.run(
            make_tree(),
            name=args.node,
            node=args.node,
            cluster=args.cluster,
            cluster_name=args.cluster_name,
            cluster_control=args.cluster_control,
            heartbeat=args.heartbeat,
            node_down_after=args.node_down_after,
        )
    except KeyboardInterrupt:
        return 130
    except Exception as error:
        print(f"cluster_node: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

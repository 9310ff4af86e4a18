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

With ``--chaos`` (tests/test_cluster_chaos.py), also `chaos_children`:

- ``/app/sink`` records the load it gets per sending (node, incarnation), checks
  its order, watches what it is told to (``["watch", url]``), and notes every
  message of an incarnation it already got ``Terminated(NodeDown)`` for.
- ``/app/loader`` given ``["load", [url, ...], burst, interval]`` tells each url
  ``burst`` messages ``["m", node, incarnation, n, target incarnation]`` every
  `interval` seconds (`n` counts per url from 1; the target incarnation is the
  one this node knows at the time); ``"stop"`` stops, ``"stats"`` says what went.
- ``/app/letters`` records this node's dead letters of that load.
- ``/app/echo`` also answers ``"members"`` (``[[name, incarnation, status], ...]``),
  ``"peers"`` (the cluster's stats per peer) and ``["ask", url, timeout]`` (asks
  `url` ``"whoami"`` from here: ``["ok", answer]`` or ``["error", type, node]``).

``--cluster`` may hold several URLs separated by commas (a NATS cluster).

Only builtins cross the wire (no registered classes), so the tests need not
import this module.
"""

from __future__ import annotations

import argparse
import itertools
import os
import sys
from typing import Any

from runtime import Actor, Event, Mailbox, NodeDown, Supervisor, Terminated, child


def _whoami(actor: Actor) -> dict[str, Any]:
    system = actor.ctx.system
    cluster = system.cluster
    return {
        "node": system.node,
        "pid": os.getpid(),
        "incarnation": None if cluster is None else cluster.incarnation,
        "server": None if cluster is None else cluster.stats()["server"],
        "connected": None if cluster is None else cluster.stats()["connected"],
    }


def _members(actor: Actor) -> list[list[Any]]:
    return [[i.name, i.incarnation, i.status] for i in actor.ctx.system.cluster.nodes()]


class Echo(Actor):
    async def receive(self, msg: Any) -> Any:
        if msg == "whoami":
            return _whoami(self)
        if msg == "members":
            return _members(self)
        if msg == "peers":  # this node's view of each peer: status, incarnation, lost_in_transit
            return self.ctx.system.cluster.stats()["peers"]
        if isinstance(msg, list) and len(msg) == 3 and msg[0] == "ask":
            # ask `url` from here: what came back, or the error's type and node
            try:
                value = await self.ctx.system.ref(msg[1]).ask("whoami", timeout=float(msg[2]))
            except Exception as error:
                return ["error", type(error).__name__, getattr(error, "node", None)]
            return ["ok", value]
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


class Sink(Actor):
    """Records the load (``["m", node, incarnation, n, target incarnation]``) per sending
    (node, incarnation); a watcher too (``["watch", url]``), so that what it handled
    after a ``Terminated`` is known.  ``"count"`` -> ``{"incarnation", "streams":
    {"node/inc": [handled, first, last, in_order]}, "terminated": [[url, reason type,
    node, incarnation], ...], "violations": [...]}``; ``"seen"`` -> ``{"node/inc": [n,
    ...]}``."""

    def __init__(self) -> None:
        self.seen: dict[str, list[int]] = {}
        self.in_order: dict[str, bool] = {}
        self.terminated: list[list[Any]] = []
        self.dead: set[tuple[str, str]] = set()
        self.violations: list[list[Any]] = []

    async def receive(self, msg: Any) -> Any:
        if isinstance(msg, list) and len(msg) == 5 and msg[0] == "m":
            _, node, incarnation, n, target = msg
            key = f"{node}/{incarnation}"
            if (node, incarnation) in self.dead:
                self.violations.append(["after Terminated", node, incarnation, n])
            if target not in self.ctx.system.cluster.incarnations:
                # told to another process of this node's name (one killed before)
                self.violations.append(["stale target", node, incarnation, n, target])
            seen = self.seen.setdefault(key, [])
            if seen and seen[-1] >= n:
                self.in_order[key] = False
            seen.append(n)
            return None
        if isinstance(msg, Terminated):
            reason = msg.reason
            node = getattr(reason, "node", None)
            incarnation = getattr(reason, "incarnation", None)
            self.terminated.append([msg.ref.url, type(reason).__name__, node, incarnation])
            if isinstance(reason, NodeDown):
                self.dead.add((node, incarnation))
            return None
        if isinstance(msg, list) and len(msg) == 2 and msg[0] == "watch":
            self.ctx.watch(self.ctx.system.ref(msg[1]))
            return None
        if msg == "count":
            return {
                "incarnation": self.ctx.system.cluster.incarnation,
                "streams": {
                    key: [len(seen), seen[0], seen[-1], self.in_order.get(key, True)]
                    for key, seen in self.seen.items()
                    if seen
                },
                "terminated": self.terminated,
                "violations": self.violations,
            }
        if msg == "seen":
            return self.seen
        return msg


class Loader(Actor):
    """Tells the sinks it is given, `burst` messages each every `interval` seconds."""

    def __init__(self) -> None:
        self.targets: list[str] = []
        self.burst = 1
        self.interval = 0.05
        self.running = 0  # the generation of the ticks that count
        self.sent: dict[str, int] = {}
        self.ranges: dict[str, list[list[Any]]] = {}  # url -> [[target inc, first, last]]
        self.refused = 0

    async def receive(self, msg: Any) -> Any:
        if isinstance(msg, list) and len(msg) == 4 and msg[0] == "load":
            self.targets = [str(url) for url in msg[1]]
            self.burst, self.interval = int(msg[2]), float(msg[3])
            self.running += 1
            self.ctx.send_after(self.interval, ["tick", self.running])
            return None
        if isinstance(msg, list) and len(msg) == 2 and msg[0] == "tick":
            if msg[1] == self.running:
                self.tick()
                self.ctx.send_after(self.interval, msg)
            return None
        if msg == "stop":
            self.running += 1
            return None
        if msg == "stats":
            return {"sent": self.sent, "ranges": self.ranges, "refused": self.refused}
        return msg

    def tick(self) -> None:
        system = self.ctx.system
        cluster = system.cluster
        known = {info.name: info.incarnation for info in cluster.nodes()}
        for url in self.targets:
            ref = system.ref(url)
            target = known.get(url.split("/")[2]) or None
            for _ in range(self.burst):
                n = self.sent.get(url, 0) + 1
                try:
                    ref.tell(["m", system.node, cluster.incarnation, n, target])
                except Exception:  # the outbox is full, or the node is stopping: not sent
                    self.refused += 1
                    break
                self.sent[url] = n
                ranges = self.ranges.setdefault(url, [])
                if ranges and ranges[-1][0] == target:
                    ranges[-1][2] = n
                else:
                    ranges.append([target, n, n])


class Letters(Actor):
    """This node's dead letters of the load, by recipient: ``"letters"`` ->
    ``{recipient: {"sender/sender inc/target inc": [n, ...]}}`` and ``"remote"`` (messages from
    incarnations declared down, and the like) -> ``{"node path": count}``."""

    def __init__(self) -> None:
        self.letters: dict[str, dict[str, list[int]]] = {}
        self.remote: dict[str, int] = {}
        self.reasons: dict[str, int] = {}

    async def on_start(self) -> None:
        self.ctx.subscribe("system.deadletter")

    async def receive(self, msg: Any) -> Any:
        if isinstance(msg, Event):
            payload = msg.payload
            message, recipient = payload["message"], payload["recipient"]
            if isinstance(message, list) and len(message) == 5 and message[0] == "m":
                key = f"{message[1]}/{message[2]}/{message[4]}"
                self.letters.setdefault(recipient, {}).setdefault(key, []).append(message[3])
                reason = payload["reason"]
                self.reasons[reason] = self.reasons.get(reason, 0) + 1
            elif hasattr(message, "node") and hasattr(message, "path"):  # a RemoteMessage
                key = f"{message.node} {message.path}"
                self.remote[key] = self.remote.get(key, 0) + 1
            return None
        if msg == "letters":
            return {"letters": self.letters, "remote": self.remote, "reasons": self.reasons}
        return msg


def chaos_children() -> list[Any]:
    """The actors the chaos suite adds (see the module's docstring)."""
    return [
        child(Sink, name="sink", mailbox=Mailbox(capacity=1_000_000)),
        child(Loader, name="loader"),
        child(Letters, name="letters", mailbox=Mailbox(capacity=1_000_000)),
    ]


def make_tree(chaos: bool = False) -> Supervisor:
    return Supervisor(
        "app",
        children=[
            child(Echo, name="echo"),
            child(Counter, name="counter"),
            child(Counter, name="tiny", mailbox=Mailbox(capacity=100, overflow="fail")),
            child(Ticker, name="ticker"),
            Supervisor("tree", children=[child(Leaf, name="a"), child(Leaf, name="b")]),
            *(chaos_children() if chaos else []),
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
    parser.add_argument(
        "--reconnect-wait",
        type=float,
        default=None,
        help="seconds between reconnect attempts to NATS (nats-py's reconnect_time_wait)",
    )
    parser.add_argument(
        "--chaos", action="store_true", help="add the chaos suite's actors (sink, loader, letters)"
    )
    args = parser.parse_args(argv)
    if not args.node or not args.cluster:
        parser.error("--node and --cluster (or CLUSTER_NODE and TROUPE_CLUSTER) are needed")
    return args


def main(argv: list[str] | None = None) -> int:
    import runtime

    args = parse(argv)
    servers = [url for url in args.cluster.split(",") if url]
    options: dict[str, Any] = {}
    if args.reconnect_wait is not None:
        options["nats_options"] = {"reconnect_time_wait": args.reconnect_wait}
    try:
        runtime.run(
            make_tree(chaos=args.chaos),
            name=args.node,
            node=args.node,
            cluster=servers if len(servers) > 1 else args.cluster,
            cluster_name=args.cluster_name,
            cluster_control=args.cluster_control,
            heartbeat=args.heartbeat,
            node_down_after=args.node_down_after,
            **options,
        )
    except KeyboardInterrupt:
        return 130
    except Exception as error:
        print(f"cluster_node: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

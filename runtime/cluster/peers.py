"""What a node knows of each other node: `Peer` (identity, liveness, the traffic to
it, the streams of numbered messages from it) and `NodeInfo` (its public view)."""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from typing import Any

import attrs
import trio

RECENT_TELLS = 10_000
"""Tells per peer remembered, at least, until NATS could have said nobody listens
(to dead-letter them then)."""
SEQ_JUMP = 1 << 24
"""No sequence number is believed this far beyond the highest seen from its sender."""
SKIP_RANGES = 1_024
"""Skipped ranges kept per stream (contiguous ones merge)."""
STREAMS = 16
"""Inbound streams (pairs of incarnations) counted per peer; older ones are folded."""


@attrs.frozen
class NodeInfo:
    """One node of the cluster, as this node sees it (`Cluster.nodes`)."""

    name: str
    incarnation: str
    host: str
    pid: int
    actors: int
    started: float  # wall-clock time the incarnation started
    last_seen: float  # wall-clock time of its last heartbeat or message (now, for this node)
    status: str  # "up" | "down"


class Stream:
    """The user messages one incarnation of a peer numbered for one incarnation of this
    node: what arrived, what the sender said it dead-lettered itself (SKIP), and the
    highest number seen.  What is missing is lost in transit.

    The skipped numbers are kept as ranges, so that a SKIP notice told again (the
    sender repeats them: NATS may drop one) counts once.
    """

    __slots__ = ("max_seq", "received", "skipped", "skips")

    def __init__(self) -> None:
        self.max_seq = 0
        self.received = 0
        self.skips: list[tuple[int, int]] = []  # sorted, disjoint, not adjacent
        self.skipped = 0  # numbers in `skips`

    def skip(self, low: int, high: int) -> None:
        """The sender dead-lettered `low`..`high` itself (idempotent)."""
        merged: list[tuple[int, int]] = []
        for lo, hi in self.skips:
            if hi + 1 < low or high + 1 < lo:
                merged.append((lo, hi))
            else:
                low, high = min(lo, low), max(hi, high)
        merged.append((low, high))
        merged.sort()
        if len(merged) > SKIP_RANGES:  # bounded: the oldest ranges are forgotten
            merged = merged[-SKIP_RANGES:]
        self.skips = merged
        self.skipped = sum(hi - lo + 1 for lo, hi in merged)
        self.max_seq = max(self.max_seq, high)

    def lost(self) -> int:
        return max(0, self.max_seq - self.received - self.skipped)


class Peer:
    """What this node knows of another: identity, liveness, and the traffic to it."""

    __slots__ = (
        "actors",
        "down_why",
        "enqueued",
        "host",
        "incarnation",
        "last_seen",
        "last_seen_wall",
        "lost_before",
        "marked",
        "name",
        "pid",
        "recent",
        "room",
        "seq",
        "skips",
        "started",
        "status",
        "streams",
        "tell_reply",
        "waiting",
    )

    def __init__(self, name: str, recent: int = RECENT_TELLS) -> None:
        self.name = name
        self.incarnation: str | None = None
        self.host = ""
        self.pid = 0
        self.actors = 0
        self.started = 0.0
        self.last_seen = -math.inf  # trio time
        self.last_seen_wall = 0.0
        self.status = "down"
        self.down_why = (
            "never seen: is it started, on the same NATS server(s), with the same cluster_name?"
        )
        # outbound, numbered for its current incarnation
        self.seq = 0
        self.enqueued = 0  # entries ever given to the transport for it
        self.marked = 0  # the last number a MARK told it
        # the tells of the last RECENT_TELLS numbers (None for asks), last one = seq
        self.recent: deque[tuple[Any, str] | None] = deque(maxlen=recent)
        self.tell_reply = ""  # the reply-subject prefix of tells to it (per incarnation)
        self.room = trio.Event()  # set when the outbox has room again
        self.waiting = 0  # senders waiting for room
        # SKIP notices for it, each with how many more times to send it
        self.skips: list[list[Any]] = []
        # inbound: (its incarnation, ours) -> what arrived, the latest last
        self.streams: OrderedDict[tuple[str, str], Stream] = OrderedDict()
        self.lost_before = 0  # lost in streams no longer kept

    def wake_senders(self) -> None:
        """Wake the senders waiting for room (they look again at why they waited)."""
        self.room.set()
        self.room = trio.Event()

    def stream(self, sender: str, receiver: str) -> Stream:
        key = (sender, receiver)
        stream = self.streams.get(key)
        if stream is None:
            stream = self.streams[key] = Stream()
            while len(self.streams) > STREAMS:
                _, old = self.streams.popitem(last=False)
                self.lost_before += old.lost()
        return stream

    def lost(self) -> int:
        return self.lost_before + sum(stream.lost() for stream in self.streams.values())

    def forgotten(self, seq: int) -> bool:
        """Whether `seq` was a tell too old to be remembered any more (ask numbers and
        tells already accounted for are remembered as None)."""
        return 0 < seq <= self.seq - len(self.recent)

    def take_recent(self, seq: int) -> tuple[Any, str] | None:
        """The tell numbered `seq` (forgotten from now on), if it is still remembered."""
        index = len(self.recent) - 1 - (self.seq - seq)
        if 0 <= index < len(self.recent):
            found = self.recent[index]
            self.recent[index] = None
            return found
        return None

    def info(self) -> NodeInfo:
        return NodeInfo(
            name=self.name,
            incarnation=self.incarnation or "",
            host=self.host,
            pid=self.pid,
            actors=self.actors,
            started=self.started,
            last_seen=self.last_seen_wall,
            status=self.status,
        )


def plausible(seq: object, stream: Stream) -> bool:
    """Whether `seq` can be a number of `stream`: positive, and not further ahead of
    the highest seen than a sender could have numbered meanwhile (a spoofed or
    corrupt one must not make the loss count explode)."""
    return type(seq) is int and 0 < seq <= stream.max_seq + SEQ_JUMP

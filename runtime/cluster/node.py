"""`Cluster`: this system as a node of a cluster on NATS (``system.cluster``).

It owns everything a node knows of the others: their membership (heartbeats,
failure detection, incarnations), the outbox bound and sequence numbers per
peer, the asks waiting for remote answers, the watches across nodes, and the
cluster-wide bus topics.  All of it lives on the trio thread; the NATS
connection runs on a thread of its own (`Transport`) and hands over batches.

Accounting across nodes: every user message told or asked to another node
carries a sequence number per (sender incarnation, receiver).  A receiver
counts what never arrived (`lost_in_transit`, per peer): the highest number
seen, less what arrived, less what the sender said it dead-lettered itself
(a ``SKIP`` notice for messages the connection could not take).  So every
message is handled, dead-lettered on one side, or counted as lost: never
silently gone.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import secrets
import socket
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import attrs
import trio

from ..errors import (
    ActorNotFound,
    ActorStopped,
    AskTimeout,
    MailboxFull,
    NodeDown,
    NotSerializable,
    RemoteError,
    RuntimeClosed,
    TroupeError,
)
from ..messages import Event, Reply
from ..ref import ActorRef
from ..spec import (
    NODE_NAME,
    URL_SCHEME,
    ChildInfo,
    ChildSpec,
    Supervisor,
    check_cluster_name,
    check_node_name,
)
from ..topics import SYSTEM, check_pattern, cover, matches
from . import envelope as env
from .codec import Codec, Undecodable
from .failures import bounded, decode_error, encode_error, reason_from_wire, wire_reason
from .peers import RECENT_TELLS, NodeInfo, Peer, plausible
from .remote import RemoteRef
from .spawn import (
    child_info_from_wire,
    child_info_to_wire,
    spec_from_wire,
    spec_to_wire,
)
from .transport import (
    BATCH_MAX,
    ConnectionState,
    Inbound,
    Incoming,
    Outgoing,
    RoomMade,
    Transport,
    Undeliverable,
)

if TYPE_CHECKING:
    from ..cell import Cell
    from ..monitor import TreeSnapshot
    from ..system import System

log = logging.getLogger("troupe.cluster")

DECLARED_DOWN = 10_000
"""Node incarnations remembered as down (their late messages are refused)."""
ABANDONED = 10_000
"""Asks given up on, remembered so that a late answer is dead-lettered (as ``timeout``)."""
REFS = 4_096
"""Local paths whose refs an arriving message looks up are cached, up to this many."""
PEERS = 10_000
"""Nodes remembered; past it, the longest-gone ones that nothing refers to are forgotten."""
SHARED_TOPICS = 4_096
"""Topics whose "is it a cluster topic" answer is remembered (then it starts over)."""
SKIP_SENDS = 10
"""Times a SKIP notice is sent (now, then with each heartbeat): NATS may drop one."""
SKIP_KEPT = 256
"""SKIP notices kept per peer for sending again (the oldest are let go)."""
ANSWERS_KEPT = 1_024
"""Answers to other nodes' asks and sends that the NATS connection could not take,
kept to send once connected again (the oldest are let go)."""
ANSWER_SENDS = 5
"""Times a kept answer is sent (once reconnected, then with each heartbeat): the asker
may subscribe again to a restarted server after the first one; it takes only one."""
MALFORMED_LOG_EVERY = 10.0
"""Seconds between log lines about messages from NATS that could not be read."""
DRAIN_MAX = 2_000
"""Inbound messages handled per loop step; the rest waits for the next step."""
HOST_MAX = 253
"""Characters of a host name a heartbeat may give (DNS's limit); the rest is cut, so that
what a node answers about its peers stays small."""
URL_SHOWN = 200
"""Characters of an actor URL an error message shows (a path may be as long as a message)."""
CONTROL_OPS = ("snapshot", "which_children", "start_child", "terminate_child", "ping")
WRITE_OPS = ("start_child", "terminate_child")


@attrs.frozen
class RemoteMessage:
    """What a dead letter records for a message from another node that could not be
    decoded here: who sent it, to which path, and why it could not be read."""

    node: str
    path: str
    error: str


@attrs.frozen
class _Sent:
    """What a user message to another node was (the `origin` of its `Outgoing`): what
    this node needs to account for it if the connection cannot take it."""

    kind: int
    peer_incarnation: str | None  # the receiver's incarnation it was numbered for
    incarnation: str  # this node's, when it was sent
    seq: int
    msg: Any
    url: str
    ask_id: int | None = None


@attrs.frozen
class _Answer:
    """What an answer to another node's ask or send was (the `origin` of its `Outgoing`):
    if the connection cannot take it, it is kept and sent again once connected."""

    node: str


@attrs.frozen
class _Skip:
    """A SKIP notice (sequence numbers `first`..`last`, dead-lettered here) in flight."""

    node: str
    peer_incarnation: str | None
    incarnation: str
    first: int
    last: int


@attrs.define(slots=True)
class _Pending:
    """An ask (or a send, or a control request) waiting for another node's answer."""

    reply: Reply
    node: str
    url: str
    msg: Any
    seq: int | None = None  # its sequence number, for a user message
    peer_incarnation: str | None = None


class _RemoteReply:
    """The reply slot of an ask that came from another node: the answer is sent back."""

    __slots__ = ("_cluster", "_peer", "_subject", "asker", "state")

    def __init__(self, cluster: Cluster, peer: str, subject: str) -> None:
        self._cluster = cluster
        self._peer = peer
        self._subject = subject
        self.asker = None
        self.state = "pending"

    def send(self, value: Any) -> bool:
        if self.state != "pending":
            return False
        self.state = "done"
        self._cluster._answer(self._peer, self._subject, True, value)
        return True

    def fail(self, error: BaseException) -> bool:
        if self.state != "pending":
            return False
        self.state = "done"
        self._cluster._answer(self._peer, self._subject, False, error)
        return True


def parse_url(url: str) -> tuple[str, str]:
    """``troupe://node/path`` -> (node, "/path"); `ValueError` naming what is wrong."""
    if not isinstance(url, str) or not url.startswith(URL_SCHEME):
        raise ValueError(f"an actor URL looks like 'troupe://node/app/worker', got {url!r}")
    rest = url[len(URL_SCHEME) :]
    node, _, path = rest.partition("/")
    if not NODE_NAME.fullmatch(node):
        raise ValueError(
            f"invalid node name {node!r} in {url!r}: letters, digits, '-' and '_' only"
        )
    return node, "/" + path.strip("/") if path.strip("/") else "/"


class Cluster:
    """This system's node on a cluster (``system.cluster``); trio thread only unless
    a method says otherwise.

    Made and run by the entry points when ``cluster=`` is given.
    """

    def __init__(
        self,
        system: System,
        *,
        node: str,
        servers: Sequence[str],
        cluster_name: str = "troupe",
        cluster_topics: Iterable[str] = (),
        cluster_control: str = "ro",
        nats_options: dict[str, Any] | None = None,
        heartbeat: float = 1.0,
        node_down_after: float = 5.0,
        outbox: int = 10_000,
    ) -> None:
        check_node_name(node)
        check_cluster_name(cluster_name)
        if isinstance(cluster_topics, str):
            cluster_topics = (cluster_topics,)
        topics = tuple(cluster_topics)
        for pattern in topics:
            if check_pattern(pattern)[0] == SYSTEM:
                raise ValueError(
                    f"cluster_topics={pattern!r}: the runtime's own events (system.*) stay "
                    "on their node; share application topics"
                )
        if cluster_control not in ("ro", "rw"):
            raise ValueError(f"cluster_control is 'ro' or 'rw', got {cluster_control!r}")
        if not (isinstance(heartbeat, int | float) and 0 < heartbeat < math.inf):
            raise ValueError(f"heartbeat is a positive number of seconds, got {heartbeat!r}")
        if not (
            isinstance(node_down_after, int | float) and heartbeat < node_down_after < math.inf
        ):
            raise ValueError(
                f"node_down_after is a number of seconds longer than heartbeat ({heartbeat}), "
                f"got {node_down_after!r}"
            )
        if isinstance(outbox, bool) or not isinstance(outbox, int) or outbox < 1:
            raise ValueError(f"outbox is an int >= 1 (messages per destination), got {outbox!r}")
        if isinstance(servers, str):
            servers = [servers]
        servers = list(servers)
        if not servers or not all(isinstance(s, str) and s for s in servers):
            raise ValueError(f"cluster= takes a NATS URL or a list of them, got {servers!r}")
        if nats_options is not None and not isinstance(nats_options, dict):
            raise TypeError(
                f"nats_options is a dict of nats.connect() options, got {nats_options!r}"
            )
        self.system = system
        self.nats_options = dict(nats_options or {})
        self.node = node
        self.servers = servers
        self.cluster_name = cluster_name
        self.topics = topics
        self.control = cluster_control
        self.heartbeat = float(heartbeat)
        self.node_down_after = float(node_down_after)
        self.outbox = outbox
        self.incarnation = _new_incarnation()
        self.incarnations = {self.incarnation}  # this process's, for late replies
        self.started = time.time()
        self.subjects = env.Subjects(cluster_name, node)
        self._topic_start = len(self.subjects.topic(""))  # in a bus subject, after `<cluster>.bus.`
        self.codec = Codec(ref_to_url=self._url_of, url_to_ref=self.resolve)
        self._peers: dict[str, Peer] = {}
        # (node, incarnation) we saw go down -> when we last told it so (trio time)
        self._declared_down: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._asks: dict[int, _Pending] = {}
        self._abandoned: OrderedDict[int, str] = OrderedDict()  # ask id -> url, given up on
        self._ask_ids = itertools.count(1)
        self._watches: dict[tuple[str, str], dict[Cell, None]] = {}  # (node, path) -> watchers
        # local slot path -> (watching node, the path it asked for: e.g. a pool's, not its router's)
        self._watched_by: dict[str, set[tuple[str, str]]] = {}
        self._backlog: list[Inbound] = []
        # answers the connection could not take: [subject, data, times left to send]
        self._answers_kept: deque[list[Any]] = deque(maxlen=ANSWERS_KEPT)
        self._refs: dict[str, ActorRef] = {}  # local path -> ref, for arrivals
        self._shared: dict[str, bool] = {}  # topic published here -> is it a cluster topic
        self._named: dict[str, bool] = {}  # topic arriving from NATS -> do we name it
        self._transport: Transport | None = None
        self._nursery: trio.Nursery | None = None
        self._connected = False
        self._closing = False
        self.lost_replies = 0
        self.lost_forgotten = 0  # lost in transit from nodes no longer remembered
        self.undecodable = 0
        self._malformed_since = 0  # since the last log line about them
        self._malformed_logged = -math.inf
        self.events_out = 0
        self.events_in = 0

    # -- lifecycle -------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Join (connect, probe the name, subscribe), then heartbeat and watch the
        others until cancelled; then leave (tell the others) and close.

        Raises `ClusterError` when the node cannot join.
        """
        subjects: list[str | tuple[str, str]] = [
            self.subjects.mine,
            self.subjects.heartbeats,
            self.subjects.control_mine,
            (self.subjects.control_any, "troupe-control"),
        ]
        subjects += [self.subjects.topic(p) for p in self._bus_subscriptions()]
        options = {"no_echo": True, **self.nats_options}
        transport = Transport(
            self.servers,
            name=self.node,
            probe_subject=self.subjects.probe,
            subjects=subjects,
            deliver=self._deliver,
            call_soon=self.system.gate.call_soon,
            options=options,
        )
        self._transport = transport
        await transport.start()
        self.codec = Codec(
            ref_to_url=self._url_of,
            url_to_ref=self.resolve,
            max_payload=transport.max_payload,
            envelope_room=1024,
        )
        self._connected = True
        self.system.bus.set_exporter(self._export if self.topics else None)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                self._heartbeat_now(answer_me=True)
                nursery.start_soon(self._heartbeats, name=f"troupe cluster {self.node} heartbeats")
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._closing = True
            self.system.bus.set_exporter(None)
            for peer in self._peers.values():
                peer.wake_senders()  # waiting senders find the node closing
            with trio.CancelScope(shield=True):
                if self._connected:
                    transport.publish(
                        Outgoing(
                            self.subjects.heartbeats,
                            env.pack(env.LEAVE, self.node, self.incarnation),
                        )
                    )
                await transport.close()
                self._fail_all(RuntimeClosed(f"node {self.node!r} left its cluster"))

    async def start_task(self, fn: Callable[..., Awaitable[Any]]) -> None:
        """Start ``fn(task_status=...)`` as a task of this node (it lives as long as
        the node's membership) and return once it has started.  Raises
        `RuntimeClosed` when the node is not (or no longer) in its cluster."""
        nursery = self._nursery
        if nursery is None or self._closing:
            raise RuntimeClosed(f"node {self.node!r} is not in its cluster")
        try:
            await nursery.start(fn)
        except RuntimeError:  # the nursery closed: the node left
            raise RuntimeClosed(f"node {self.node!r} left its cluster") from None

    # -- membership ------------------------------------------------------
    def nodes(self) -> list[NodeInfo]:
        """Every node this one knows (itself included), by name."""
        me = NodeInfo(
            name=self.node,
            incarnation=self.incarnation,
            host=socket.gethostname(),
            pid=os.getpid(),
            actors=self.system.info()["actors"],
            started=self.started,
            last_seen=time.time(),
            status="up" if self._connected and not self._closing else "down",
        )
        others = [peer.info() for peer in self._peers.values() if peer.incarnation]
        return sorted([me, *others], key=lambda info: info.name)

    def is_up(self, node: str) -> bool:
        if node == self.node:
            return self.system.is_running
        peer = self._peers.get(node)
        return peer is not None and peer.status == "up" and self.system.is_running

    def _peer(self, node: str) -> Peer:
        peer = self._peers.get(node)
        if peer is None:
            if len(self._peers) >= PEERS:
                self._forget_peers()
            # tells are remembered for as long as NATS could say nobody heard them:
            # a full outbox and the batches in flight behind it
            peer = self._peers[node] = Peer(node, max(RECENT_TELLS, 2 * self.outbox))
        return peer

    def announce(self) -> None:
        """Heartbeat now (the entry point calls it once the tree has started, so that
        the others see this node's actors at once, not a heartbeat later)."""
        if self._transport is not None and not self._closing:
            self._heartbeat_now()

    def _forget_peers(self) -> None:
        """Forget the longest-gone tenth of the nodes that are down and that no watch or
        ask refers to (their loss counts fold into `lost_forgotten`)."""
        busy = {key[0] for key in self._watches} | {p.node for p in self._asks.values()}
        gone = sorted(
            (p for p in self._peers.values() if p.status != "up" and p.name not in busy),
            key=lambda p: p.last_seen,
        )
        for peer in gone[: max(1, len(gone) // 10)]:
            self.lost_forgotten += peer.lost()
            del self._peers[peer.name]

    def _heartbeat_info(self) -> dict[str, Any]:
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": self.started,
            "actors": self.system.info()["actors"],
        }

    def _heartbeat_now(self, *, answer_me: bool = False, to: str | None = None) -> None:
        data = env.pack(
            env.HEARTBEAT, self.node, self.incarnation, self._heartbeat_info(), answer_me
        )
        subject = self.subjects.heartbeats if to is None else self.subjects.system(to)
        self._publish(Outgoing(subject, data))

    async def _heartbeats(self) -> None:
        """Heartbeat every `heartbeat` seconds and declare silent nodes down.

        A check that comes much later than planned means this process was
        frozen (SIGSTOP, a debugger, a swapped-out machine): the others' silence
        then says nothing about them, so they get a fresh grace period.
        """
        period = self.heartbeat
        next_at = trio.current_time()
        while True:
            next_at += period
            await trio.sleep_until(next_at)
            now = trio.current_time()
            if now - next_at > self.node_down_after / 2:  # we were frozen
                for peer in self._peers.values():
                    peer.last_seen = max(peer.last_seen, now)
                next_at = now
            self._heartbeat_now()
            for peer in list(self._peers.values()):
                if peer.status == "up" and now - peer.last_seen > self.node_down_after:
                    self._node_down(peer, f"silent for more than {self.node_down_after:g}s")
                elif peer.status == "up" and peer.seq != peer.marked:
                    self._mark(peer)
            self._send_skips()  # again: NATS may have dropped one
            self._send_answers_kept()

    def _mark(self, peer: Peer) -> None:
        """Tell `peer`, in order behind the user messages numbered so far, the last
        number: messages lost at the end of a stream (nothing behind them to show
        the gap) are counted too."""
        peer.marked = peer.seq
        data = env.pack(env.MARK, self.node, self.incarnation, peer.incarnation, peer.seq)
        self._publish(Outgoing(self.subjects.user(peer.name), data))

    def _seen(self, node: str, incarnation: str, info: dict[str, Any] | None = None) -> Peer | None:
        """`node` is alive as `incarnation`: mark it up (a new incarnation replaces the
        old one, which is down).  None if that incarnation was declared down."""
        key = (node, incarnation)
        told = self._declared_down.get(key)
        if told is not None:
            # it was declared down and may not know yet: tell it to rejoin (at most
            # once a heartbeat, however much it sends meanwhile)
            now = trio.current_time()
            if now - told >= self.heartbeat:
                self._declared_down[key] = now
                self._publish(
                    Outgoing(
                        self.subjects.system(node),
                        env.pack(env.DOWN, self.node, self.incarnation, incarnation),
                    )
                )
            return None
        peer = self._peer(node)
        if peer.incarnation != incarnation:
            if peer.status == "up":
                self._node_down(peer, "it came back as a new incarnation")
            peer.incarnation = incarnation
            peer.seq = peer.marked = 0
            peer.recent.clear()
            peer.tell_reply = self.subjects.tell_reply(self.incarnation, node, incarnation)
        if info:
            peer.host = str(info.get("host", ""))[:HOST_MAX]
            peer.pid = int(info.get("pid", 0) or 0)
            peer.started = float(info.get("started", 0.0) or 0.0)
            peer.actors = int(info.get("actors", 0) or 0)
        peer.last_seen = trio.current_time()
        peer.last_seen_wall = time.time()
        if peer.status != "up":
            peer.status = "up"
            peer.down_why = ""
            peer.wake_senders()
            log.info("node %s: node %s is up (incarnation %s)", self.node, node, incarnation)
            self.system.system_event(
                "system.cluster.node_up", {"node": node, "incarnation": incarnation}
            )
            for (watched_node, path), watchers in list(self._watches.items()):
                if watched_node == node and watchers:
                    self._send_watch(node, path, env.WATCH)
        return peer

    def _node_down(self, peer: Peer, why: str) -> None:
        """`peer`'s incarnation is gone: fail what waits on it, tell its watchers."""
        if peer.status != "up":
            return
        peer.status = "down"
        peer.down_why = why
        incarnation = peer.incarnation
        if incarnation is not None:
            self._declared_down[(peer.name, incarnation)] = -math.inf
            while len(self._declared_down) > DECLARED_DOWN:
                self._declared_down.popitem(last=False)
        level = logging.INFO if why == "it left" else logging.WARNING
        log.log(level, "node %s: node %s is down (%s)", self.node, peer.name, why)
        error = NodeDown(peer.name, incarnation, why)
        for ask_id, pending in list(self._asks.items()):
            if pending.node == peer.name:
                del self._asks[ask_id]
                pending.reply.fail(error)
        for key in [key for key in self._watches if key[0] == peer.name]:
            cells = self._watches.pop(key)
            remote = RemoteRef(self, key[0], key[1])
            for cell in cells:
                cell.remote_terminated(remote, NodeDown(peer.name, incarnation, why))
        for path, by in list(self._watched_by.items()):
            by -= {w for w in by if w[0] == peer.name}
            if not by:
                del self._watched_by[path]
        peer.wake_senders()  # senders waiting for room learn it is down
        self.system.system_event(
            "system.cluster.node_down",
            {"node": peer.name, "incarnation": incarnation, "reason": why},
        )

    def _rejoin(self) -> None:
        """The others declared this incarnation down: carry on as a new one."""
        old = self.incarnation
        self.incarnation = _new_incarnation()
        self.incarnations.add(self.incarnation)
        log.warning(
            "node %s: the cluster declared incarnation %s down; rejoining as %s",
            self.node,
            old,
            self.incarnation,
        )
        for peer in self._peers.values():
            peer.seq = peer.marked = 0
            peer.recent.clear()
            peer.tell_reply = self.subjects.tell_reply(
                self.incarnation, peer.name, peer.incarnation or "-"
            )
        self._heartbeat_now(answer_me=True)
        for (node, path), watchers in self._watches.items():
            if watchers and self.is_up(node):
                self._send_watch(node, path, env.WATCH)

    # -- refs ------------------------------------------------------------
    def resolve(self, url: str) -> ActorRef:
        """The ref for ``troupe://node/path`` (`System.ref` for URLs, and the codec's
        for refs that arrive): a local one for this node's actors (`ActorNotFound`
        if there is none), a `RemoteRef` otherwise (not checked: an unknown path
        shows when it is used).  `ValueError` for a malformed URL."""
        node, path = parse_url(url)
        if node == self.node:
            return self.system.ref(path)
        return RemoteRef(self, node, path)

    def _url_of(self, ref: ActorRef) -> str:
        url = ref.url
        if url is None:
            raise NotSerializable(f"{ref!r} has no URL: its system is not on a cluster")
        return url

    # -- sending ---------------------------------------------------------
    def _check_open(self, what: str) -> None:
        if not self.system.is_running or self._closing:
            raise RuntimeClosed(f"actor system {self.system.name!r} is not running: cannot {what}")

    def _publish(self, entry: Outgoing) -> None:
        transport = self._transport
        if transport is not None:
            transport.publish(entry)

    def _queue_user(
        self,
        peer: Peer,
        kind: int,
        ref: RemoteRef,
        msg: Any,
        body: bytes,
        ask_id: int | None = None,
        timeout: float | None = None,
    ) -> None:
        """Number a user message for `peer` and queue it (the outbox bound is the caller's).

        Raises `NotSerializable` (nothing numbered, nothing queued) when the whole
        envelope, path included, is larger than the NATS server takes.
        """
        seq = peer.seq + 1
        to = peer.incarnation
        if kind == env.TELL:
            data = env.pack(kind, self.node, self.incarnation, to, seq, ref.path, body)
        else:
            data = env.pack(
                kind, self.node, self.incarnation, to, seq, ref.path, body, ask_id, timeout
            )
        limit = self._transport.max_payload if self._transport is not None else math.inf
        if len(data) > limit - 16:  # room for a batch's array header
            raise NotSerializable(
                f"the message to {bounded(ref.url, URL_SHOWN)} encodes to {len(data):,} bytes "
                "with its envelope, "
                f"more than the NATS server's max_payload of {limit:,}: send less, or a "
                "shorter path"
            )
        peer.seq = seq
        origin = _Sent(kind, to, self.incarnation, seq, msg, ref.url, ask_id)
        if kind == env.TELL:
            peer.recent.append((msg, ref.url))
            entry = Outgoing(
                self.subjects.user(peer.name), data, peer.tell_reply, peer.name, origin, True, seq
            )
        else:
            assert ask_id is not None
            peer.recent.append(None)
            entry = Outgoing(
                self.subjects.user(peer.name),
                data,
                self.subjects.reply(self.incarnation, ask_id),
                peer.name,
                origin,
            )
        peer.enqueued += 1
        self._publish(entry)

    def _queued(self, peer: Peer) -> int:
        """Messages for `peer` in the outbox, not yet taken by the NATS thread."""
        transport = self._transport
        taken = 0 if transport is None else transport.taken.get(peer.name, 0)
        return peer.enqueued - taken

    def tell(self, ref: RemoteRef, msg: Any, timeout: float | None) -> None:
        """`RemoteRef.tell` (any thread)."""
        gate = self.system.gate
        if not gate.on_loop_thread():
            self._from_thread(self._tell_waiting, ref, msg, timeout)
            return
        self._check_open(f"tell {ref.url}")
        body = self.codec.encode(msg)
        peer = self._peer(ref.node)
        if peer.status != "up":
            self.system.dead_letter(msg, "undeliverable", ref.url)
            return
        if self._queued(peer) >= self.outbox:
            raise MailboxFull(
                f"the outbox to node {ref.node!r} is full ({self.outbox} messages): "
                "use `await ref.send(msg)` to wait for room, or tell less at once"
            )
        self._queue_user(peer, env.TELL, ref, msg, body)

    async def _tell_waiting(self, ref: RemoteRef, msg: Any, timeout: float | None) -> None:
        """A foreign thread's tell: wait for outbox room (up to `timeout`), then tell."""
        peer = self._peer(ref.node)
        deadline = math.inf if timeout is None else trio.current_time() + timeout
        await self._wait_for_room(peer, deadline)
        self.tell(ref, msg, None)

    async def _wait_for_room(self, peer: Peer, deadline: float = math.inf) -> None:
        """Wait until the outbox to `peer` has room, `peer` is down, this node is
        closing, or `deadline`.  The flag is raised before the count is read (the
        writer counts before it reads the flag): one of the two sees the other."""
        with trio.move_on_at(deadline):
            while peer.status == "up" and not self._closing:
                if self._transport is not None:
                    self._transport.room_wanted = True  # the writer says when it took some
                if self._queued(peer) < self.outbox:
                    return
                peer.waiting += 1
                try:
                    await peer.room.wait()
                finally:
                    peer.waiting -= 1

    async def send(self, ref: RemoteRef, msg: Any) -> None:
        """`RemoteRef.send`: an ask whose answer is the remote mailbox's acceptance."""
        await self._request(ref, msg, math.inf, env.SEND)

    async def ask(self, ref: RemoteRef, msg: Any, timeout: float) -> Any:
        """`RemoteRef.ask` (trio thread)."""
        return await self._request(ref, msg, timeout, env.ASK)

    def ask_blocking(self, ref: RemoteRef, msg: Any, timeout: float) -> Any:
        if self.system.gate.on_loop_thread():
            raise RuntimeError(
                "ask_blocking() would deadlock on the trio thread: use `await ref.ask(msg)` "
                "there, and keep ask_blocking() for plain threads"
            )
        return self._from_thread(self._request, ref, msg, timeout, env.ASK)

    def _from_thread(self, fn: Callable[..., Any], *args: Any) -> Any:
        token = self.system.gate.token
        if token is None:
            raise RuntimeClosed(f"actor system {self.system.name!r} is not running")
        try:
            return trio.from_thread.run(fn, *args, trio_token=token)
        except trio.RunFinishedError:
            raise RuntimeClosed(f"actor system {self.system.name!r} is not running") from None

    async def _request(self, ref: RemoteRef, msg: Any, timeout: float, kind: int) -> Any:
        self._check_open(f"ask {ref.url}")
        what = f"{type(msg).__name__} from {ref.url}"
        body = self.codec.encode(msg)
        peer = self._peer(ref.node)
        if peer.status != "up":
            raise NodeDown(ref.node, peer.incarnation, peer.down_why)
        deadline = trio.current_time() + timeout if timeout != math.inf else math.inf
        if self._queued(peer) >= self.outbox:
            await self._wait_for_room(peer, deadline)
            if peer.status != "up":
                raise NodeDown(ref.node, peer.incarnation, peer.down_why)
            if self._queued(peer) >= self.outbox:
                raise AskTimeout(
                    f"the outbox to node {ref.node!r} stayed full; {what} was not sent"
                )
        ask_id = next(self._ask_ids)
        reply = Reply(lambda value: self.system.dead_letter(value, "timeout", ref.url))
        self._queue_user(
            peer, kind, ref, msg, body, ask_id, None if timeout == math.inf else timeout
        )
        self._asks[ask_id] = _Pending(reply, ref.node, ref.url, msg, peer.seq, peer.incarnation)
        try:
            return await reply.wait(deadline, f"{what} within {timeout}s", self.system.deadlines)
        finally:
            if self._asks.pop(ask_id, None) is not None and kind == env.ASK:
                # given up on: a late answer is dead-lettered (a late acknowledgement of
                # a send is not: the message was handled)
                self._abandoned[ask_id] = ref.url
                if len(self._abandoned) > ABANDONED:
                    self._abandoned.popitem(last=False)

    def _answer(self, node: str, subject: str, ok: bool, value: Any) -> None:
        """Send the answer to an ask that came from `node` (see `_RemoteReply`)."""
        if ok:
            try:
                payload: Any = self.codec.encode(value)
            except NotSerializable as error:
                ok, payload = False, encode_error(error)
        else:
            payload = encode_error(value)
        data = env.pack(env.REPLY, self.node, self.incarnation, ok, payload)
        limit = self._transport.max_payload if self._transport is not None else math.inf
        if len(data) > limit:  # an error's texts, bounded, still over a small max_payload
            kind = payload[0] if not ok else "remote"
            payload = [
                kind,
                "RemoteError",
                f"the answer was {len(data):,} bytes, more than the NATS server's "
                f"max_payload of {limit:,}",
                "",
                bounded(encode_error(value)[4] if not ok else "", 200),
            ]
            data = env.pack(env.REPLY, self.node, self.incarnation, False, payload)
        self._publish(Outgoing(subject, data, origin=_Answer(node)))

    # -- watching ----------------------------------------------------------
    def watch(self, cell: Cell, ref: RemoteRef) -> None:
        key = (ref.node, ref.path)
        if not self.is_up(ref.node):
            peer = self._peers.get(ref.node)
            why = peer.down_why if peer is not None else "never seen"
            cell.remote_terminated(
                ref, NodeDown(ref.node, None if peer is None else peer.incarnation, why)
            )
            return
        watchers = self._watches.setdefault(key, {})
        first = not watchers
        watchers[cell] = None
        if first:
            self._send_watch(ref.node, ref.path, env.WATCH)

    def unwatch(self, cell: Cell, ref: RemoteRef) -> None:
        key = (ref.node, ref.path)
        watchers = self._watches.get(key)
        if watchers is None:
            return
        watchers.pop(cell, None)
        if not watchers:
            del self._watches[key]
            if self.is_up(ref.node):
                self._send_watch(ref.node, ref.path, env.UNWATCH)

    def _send_watch(self, node: str, path: str, kind: int) -> None:
        self._publish(
            Outgoing(
                self.subjects.system(node),
                env.pack(kind, self.node, self.incarnation, path, ""),
            )
        )

    def slot_stopped(self, cell: Cell) -> None:
        """A local slot has no incarnation any more, for good or resting (a transient
        child that exited normally): tell the nodes watching it, and end its watches
        of remote actors (the system calls this)."""
        watchers = self._watched_by.pop(cell.path, None)
        if watchers:
            reason = wire_reason(cell.final_reason)
            limit = self._transport.max_payload if self._transport is not None else math.inf
            for node, asked in watchers:
                data = env.pack(env.TERMINATED, self.node, self.incarnation, asked, "", reason)
                if len(data) > limit and isinstance(reason, list):
                    # its texts, bounded, still over a small max_payload: the type will do
                    short = [reason[0], bounded(reason[1], 200), ""]
                    data = env.pack(env.TERMINATED, self.node, self.incarnation, asked, "", short)
                self._publish(Outgoing(self.subjects.system(node), data))
        for key, watchers_of in list(self._watches.items()):
            if cell in watchers_of:
                del watchers_of[cell]
                if not watchers_of:  # its last local watcher: the remote node can let go
                    del self._watches[key]
                    if self.is_up(key[0]):
                        self._send_watch(key[0], key[1], env.UNWATCH)

    # -- the bus -------------------------------------------------------------
    def _bus_subscriptions(self) -> list[str]:
        """What this node subscribes to on NATS for its cluster topics: one pattern,
        `cover` of `topics` (their common leading words and ``>``), its arrivals
        filtered by subject (`_incoming`).  One, because nats-py reads each
        subscription in a task of its own: two would let one node's events
        overtake each other, and bring an event both match twice.  The price:
        events on topics of the cover that this node does not name reach it and
        are dropped unread."""
        covering = cover(self.topics)
        return [] if covering is None else [covering]

    def _cluster_topic(self, topic: str, seen: dict[str, bool]) -> bool:
        """Does `topic` match one of this node's cluster topics (`topics`)?  Remembered
        in `seen` (bounded).  Raises `ValueError` if it is not a topic."""
        named = seen.get(topic)
        if named is None:
            named = any(matches(pattern, topic) for pattern in self.topics)
            if len(seen) >= SHARED_TOPICS:
                seen.clear()
            seen[topic] = named
        return named

    def _export(self, event: Event) -> None:
        """The bus's hook for a new user event: share it if its topic is a cluster topic.

        Raises `NotSerializable` (before anything is delivered) for a payload
        that cannot cross.
        """
        topic = event.topic
        if not self._cluster_topic(topic, self._shared):  # a topic the bus has checked
            return
        body = self.codec.encode(event)
        self.events_out += 1
        self._publish(
            Outgoing(
                self.subjects.topic(topic),
                env.pack(env.EVENT, self.node, self.incarnation, body),
                origin=event,
                batch=True,  # events on one topic travel packed, as tells do
            )
        )

    # -- control over NATS -------------------------------------------------------
    async def _control(self, node: str, op: str, args: Any, timeout: float) -> Any:
        if node == self.node:
            return await self._local_control(op, args)
        self._check_open(f"ask node {node!r}")
        peer = self._peer(node)
        if peer.status != "up":
            raise NodeDown(node, peer.incarnation, peer.down_why)
        ask_id = next(self._ask_ids)
        reply = Reply(lambda value: None)
        self._asks[ask_id] = _Pending(reply, node, f"{URL_SCHEME}{node}/", op)
        self._publish(
            Outgoing(
                self.subjects.system(node),
                env.pack(env.CONTROL, self.node, self.incarnation, op, args),
                self.subjects.reply(self.incarnation, ask_id),
            )
        )
        try:
            return await reply.wait(
                trio.current_time() + timeout, f"{op} from node {node!r}", self.system.deadlines
            )
        finally:
            self._asks.pop(ask_id, None)

    async def _local_control(self, op: str, args: Any) -> Any:
        system = self.system
        if op == "ping":
            return "pong"
        if op == "snapshot":
            return system.snapshot().to_dict()
        if op == "which_children":
            return [child_info_to_wire(info) for info in system.which_children(str(args))]
        if op == "start_child":
            parent, spec = args
            ref = await system.start_child(str(parent), spec_from_wire(spec, self.codec))
            return ref.url
        if op == "terminate_child":
            await system.terminate_child(str(args))
            return None
        raise ValueError(f"unknown control operation {op!r}")

    async def snapshot(self, timeout: float = 5.0) -> dict[str, TreeSnapshot]:
        """Every live node's `TreeSnapshot` (this node's included), by node name."""
        from ..monitor import TreeSnapshot

        result: dict[str, TreeSnapshot] = {self.node: self.system.snapshot()}
        live = [name for name, peer in self._peers.items() if peer.status == "up"]

        async def one(name: str) -> None:
            try:
                data = await self._control(name, "snapshot", None, timeout)
                result[name] = TreeSnapshot.from_dict(data)
            except (TroupeError, ValueError, TypeError, KeyError) as error:
                log.warning("node %s: no snapshot from node %s: %s", self.node, name, error)

        async with trio.open_nursery() as nursery:
            for name in live:
                nursery.start_soon(one, name)
        return dict(sorted(result.items()))

    async def which_children(self, url: str, timeout: float = 5.0) -> list[ChildInfo]:
        """The children of the supervisor at ``troupe://node/path``."""
        node, path = parse_url(url)
        if node == self.node:
            return self.system.which_children(path)
        data = await self._control(node, "which_children", path, timeout)
        return [child_info_from_wire(item, self) for item in data]

    async def start_child(
        self, url: str, spec: ChildSpec | Supervisor, timeout: float = 30.0
    ) -> ActorRef:
        """Start `spec` (its class given as an import string) under the supervisor at
        ``troupe://node/path``; its ref.  The node must allow it (``cluster_control="rw"``)."""
        node, path = parse_url(url)
        if node == self.node:
            return await self.system.start_child(path, spec)
        found = await self._control(
            node, "start_child", [path, spec_to_wire(spec, self.codec)], timeout
        )
        return self.resolve(str(found))

    async def terminate_child(self, url: str, timeout: float = 30.0) -> None:
        node, path = parse_url(url)
        if node == self.node:
            await self.system.terminate_child(path)
            return
        await self._control(node, "terminate_child", path, timeout)

    def stats(self) -> dict[str, Any]:
        """This node's view, for the snapshot and metrics."""
        return {
            "node": self.node,
            "incarnation": self.incarnation,
            "connected": self._connected,
            "server": None if self._transport is None else self._transport.connected_url,
            "peers": {
                name: {
                    "status": peer.status,
                    "incarnation": peer.incarnation,
                    "outbox": self._queued(peer),
                    "lost_in_transit": peer.lost(),
                }
                for name, peer in sorted(self._peers.items())
            },
            "lost_in_transit": self.lost_forgotten + sum(p.lost() for p in self._peers.values()),
            "events_out": self.events_out,
            "events_in": self.events_in,
            "undecodable": self.undecodable,
            "wakeups": 0 if self._transport is None else self._transport.wakeups,
            "dropped_inbound": 0 if self._transport is None else self._transport.dropped,
            "published": 0 if self._transport is None else self._transport.published,
            "received": 0 if self._transport is None else self._transport.received,
            "late_replies_dropped": self.lost_replies,
        }

    # -- inbound (trio thread) ---------------------------------------------------
    def _deliver(self, batch: list[Inbound]) -> None:
        """The transport's batch: handle up to `DRAIN_MAX` now, the rest in a later step."""
        backlog = self._backlog
        if backlog:
            backlog.extend(batch)
            return
        self._handle(batch)

    def _handle(self, batch: list[Inbound]) -> None:
        rest = batch[DRAIN_MAX:]
        for item in batch[:DRAIN_MAX]:
            try:
                self._one(item)
            except Exception:  # one bad message never stops the node
                log.exception(
                    "node %s: could not handle a %s (%s)",
                    self.node,
                    type(item).__name__,
                    getattr(item, "subject", "?"),
                )
        if rest:
            self._backlog = rest
            self.system.gate.call_soon(self._resume)

    def _resume(self) -> None:
        batch, self._backlog = self._backlog, []
        self._handle(batch)

    def _one(self, item: Inbound) -> None:
        if isinstance(item, Incoming):
            self._incoming(item)
        elif isinstance(item, RoomMade):
            still_full = False
            for peer in self._peers.values():
                if self._queued(peer) < self.outbox:
                    peer.wake_senders()
                elif peer.waiting:
                    still_full = True
            if self._transport is not None:
                self._transport.room_wanted = still_full
        elif isinstance(item, Undeliverable):
            self._undeliverable(item.entries)
        elif isinstance(item, ConnectionState):
            self._connection(item)

    def _connection(self, item: ConnectionState) -> None:
        if self._closing:
            return  # our own close
        if item.state == "disconnected":
            if not self._connected:
                return  # never joined (a start that failed closes its connection), or said
            self._connected = False
            log.warning("node %s: lost its NATS connection; reconnecting", self.node)
        elif item.state == "reconnected":
            self._connected = True
            log.info("node %s: reconnected to NATS at %s", self.node, item.server)
            self._heartbeat_now(answer_me=True)
            self._send_skips()
            self._send_answers_kept()
        elif item.state == "closed":
            self._connected = False

    def _undeliverable(self, entries: list[Outgoing]) -> None:
        """Publishes the connection could not take: dead-letter them here (an ask also
        fails, with `NodeDown`), and tell their receivers, once connected again,
        which sequence numbers not to count as lost (SKIP notices)."""
        for entry in entries:
            origin = entry.origin
            if isinstance(origin, Event):  # a cluster event the connection did not take
                self.system.dead_letter(origin, "undeliverable", entry.subject)
                continue
            if isinstance(origin, _Answer):
                # the asker waits for it (a send has no timeout): sent again once connected
                self._answers_kept.append([entry.subject, entry.data, ANSWER_SENDS])
                continue
            if not isinstance(origin, _Sent):
                continue  # heartbeats, watches: the others find out by themselves
            if origin.ask_id is not None:
                found = self._asks.pop(origin.ask_id, None)
                if found is not None:
                    found.reply.fail(
                        NodeDown(
                            found.node, None, "the NATS connection was lost before it was sent"
                        )
                    )
            else:
                peer = self._peers.get(entry.node or "")
                if peer is not None and peer.incarnation == origin.peer_incarnation:
                    peer.take_recent(origin.seq)
            self.system.dead_letter(origin.msg, "undeliverable", origin.url)
            node = entry.node or ""
            self._skip_later(
                _Skip(node, origin.peer_incarnation, origin.incarnation, origin.seq, origin.seq)
            )
        self._send_skips()

    def _skip_later(self, skip: _Skip) -> None:
        """Keep a SKIP notice for its node (merged with the one before it when they
        touch): it is sent `SKIP_SENDS` times, now if connected and then with each
        heartbeat, since NATS may drop one (e.g. while the receiver reconnects);
        the receiver counts each number once however often it hears it."""
        peer = self._peers.get(skip.node)
        if peer is None:
            return
        pending = peer.skips
        if pending:
            last: _Skip = pending[-1][0]
            if (
                last.last + 1 == skip.first
                and last.incarnation == skip.incarnation
                and last.peer_incarnation == skip.peer_incarnation
            ):
                pending[-1] = [attrs.evolve(last, last=skip.last), SKIP_SENDS]
                return
        pending.append([skip, SKIP_SENDS])
        if len(pending) > SKIP_KEPT:
            del pending[0]

    def _send_skips(self) -> None:
        """Send the SKIP notices kept, if connected; those for an incarnation (ours or
        the receiver's) that has since changed are dropped: nobody counts them."""
        if not self._connected:
            return
        for peer in self._peers.values():
            if not peer.skips:
                continue
            kept: list[list[Any]] = []
            for entry in peer.skips:
                skip, sends = entry
                if (
                    skip.incarnation != self.incarnation
                    or skip.peer_incarnation != peer.incarnation
                ):
                    continue
                data = env.pack(
                    env.SKIP, self.node, self.incarnation, peer.incarnation, skip.first, skip.last
                )
                self._publish(Outgoing(self.subjects.user(peer.name), data))
                if sends > 1:
                    kept.append([skip, sends - 1])
            peer.skips = kept

    def _send_answers_kept(self) -> None:
        """Send the answers the connection could not take, if connected (each
        `ANSWER_SENDS` times; an asker takes the first that arrives and ignores the
        rest, as it ignores any answer to an ask it no longer waits for)."""
        if not self._connected or not self._answers_kept:
            return
        kept = self._answers_kept
        for _ in range(len(kept)):
            entry = kept.popleft()
            subject, data, sends = entry
            # no origin: one the connection drops again is still kept here
            self._publish(Outgoing(subject, data))
            if sends > 1:
                entry[2] = sends - 1
                kept.append(entry)

    def _incoming(self, item: Incoming) -> None:
        lane, incarnation, ask_id = self.subjects.lane(item.subject)
        if lane == "probe":
            if item.reply:
                self._publish(Outgoing(item.reply, b"taken"))
            return
        if lane == "r":
            self._reply_arrived(item, incarnation, ask_id)
            return
        if lane == "ctl":
            self._client_request(item)
            return
        if lane == "t":  # tells' reply subject: only NATS writes there, to say nobody listened
            if item.status == "503" and incarnation in self.incarnations:
                parts = item.subject.split(".")
                node, to, (first, _, last) = parts[-3], parts[-2], parts[-1].partition("-")
                digits = first.isascii() and first.isdigit() and last.isascii() and last.isdigit()
                if digits and int(first) <= int(last):
                    self._nobody_listened(node, to, int(first), int(last))
            return
        # the topic of a bus subject (``<cluster>.bus.<topic>``); None on the others
        topic = item.subject[self._topic_start :] if lane == "bus" else None
        if topic is not None:
            try:
                named = self._cluster_topic(topic, self._named)
            except ValueError:
                named = False  # not a topic (no node publishes it): ours to ignore
            if not named:
                return  # a topic of the subscription's cover this node does not name
        fields = env.unpack(item.data)
        if fields is None:
            batch = env.unpack_batch(item.data)
            if batch is None:
                self._malformed()
            elif topic is not None and not all(entry[0] == env.EVENT for entry in batch):
                self._malformed(len(batch))  # only events travel on the bus's subjects
            else:
                self._batch(batch, topic)
            return
        kind, node, inc = fields[0], fields[1], fields[2]
        if topic is not None and kind != env.EVENT:
            self._malformed()  # only events travel on the bus's subjects
            return
        if node == self.node:
            return  # our own (a heartbeat or an event NATS echoed)
        if not (NODE_NAME.fullmatch(node) and env.INCARNATION.fullmatch(inc)):
            self._malformed()  # not from a node of ours: no member is made of it
            return
        try:
            self._from_node(item, kind, node, inc, fields, topic)
        except (TypeError, ValueError, KeyError, IndexError, OverflowError, AttributeError):
            self._malformed()  # a malformed envelope: counted, the node carries on

    def _from_node(
        self,
        item: Incoming,
        kind: int,
        node: str,
        inc: str,
        fields: list[Any],
        topic: str | None,
    ) -> None:
        """An envelope from `node` (incarnation `inc`), by kind; `topic` is its bus
        subject's (None if it did not come on one)."""
        if kind == env.HEARTBEAT:
            info = fields[3] if len(fields) > 3 and isinstance(fields[3], dict) else None
            peer = self._seen(node, inc, info)
            if peer is not None and len(fields) > 4 and fields[4]:
                self._heartbeat_now(to=node)  # a newcomer: let it see us at once
            return
        if kind == env.LEAVE:
            peer = self._peers.get(node)
            if peer is not None and peer.incarnation == inc:
                self._node_down(peer, "it left")
            return
        if kind == env.DOWN:
            # only a member we see up, as the incarnation we know, is believed
            known = self._peers.get(node)
            if (
                known is not None
                and known.status == "up"
                and known.incarnation == inc
                and len(fields) > 3
                and fields[3] == self.incarnation
            ):
                self._rejoin()
            return
        peer = self._seen(node, inc)
        if peer is None:
            # from an incarnation already declared down: its messages are not delivered
            if kind in (env.TELL, env.ASK, env.SEND) and len(fields) >= 7:
                self._from_the_dead(node, str(fields[5]))
                if kind != env.TELL and item.reply:  # fail fast, not at the asker's timeout
                    self._answer(
                        node,
                        item.reply,
                        False,
                        NodeDown(
                            node,
                            inc,
                            f"node {self.node!r} declared incarnation {inc} of node {node!r} "
                            "down; it is rejoining as a new incarnation: ask again",
                        ),
                    )
            elif kind == env.EVENT:
                self._from_the_dead(node, "bus")
            return
        if kind in (env.TELL, env.ASK, env.SEND):
            self._user_message(peer, kind, fields, item.reply)
        elif kind == env.MARK and len(fields) >= 5:
            if fields[3] in self.incarnations:
                stream = peer.stream(inc, fields[3])
                mark = fields[4]
                if plausible(mark, stream):
                    stream.max_seq = max(stream.max_seq, mark)
                else:
                    self._malformed()
        elif kind == env.SKIP and len(fields) >= 6:
            if fields[3] in self.incarnations:
                stream = peer.stream(inc, fields[3])
                low, high = fields[4], fields[5]
                if plausible(low, stream) and plausible(high, stream) and low <= high:
                    stream.skip(low, high)
                else:
                    self._malformed()
        elif kind == env.WATCH:
            self._watched(node, str(fields[3]))
        elif kind == env.UNWATCH:
            self._unwatched(node, str(fields[3]))
        elif kind == env.TERMINATED:
            self._terminated(node, str(fields[3]), fields[5] if len(fields) > 5 else "normal")
        elif kind == env.CONTROL:
            self._control_request(
                node, str(fields[3]), fields[4] if len(fields) > 4 else None, item.reply
            )
        elif kind == env.EVENT:
            self._event(node, fields[3], topic)

    def _batch(self, batch: list[Any], topic: str | None) -> None:
        """Tells (or events, on `topic`'s subject) of one node packed into one NATS
        message (see `Outgoing.batch`): its liveness is noted once for the whole batch."""
        first = batch[0]
        node, inc = first[1], first[2]
        if node == self.node:
            return
        if not (NODE_NAME.fullmatch(node) and env.INCARNATION.fullmatch(inc)):
            self._malformed(len(batch))
            return
        peer = self._seen(node, inc)
        for fields in batch:
            kind = fields[0]
            if fields[1] != node or fields[2] != inc:
                self._malformed()
            elif kind == env.TELL and len(fields) >= 7:
                if peer is None:
                    self._from_the_dead(node, str(fields[5]))
                else:
                    try:
                        self._user_message(peer, env.TELL, fields, "")
                    except (TypeError, ValueError, OverflowError):
                        self._malformed()
            elif kind == env.EVENT:
                if peer is None:
                    self._from_the_dead(node, "bus")
                else:
                    self._event(node, fields[3], topic)
            else:
                self._malformed()

    def _from_the_dead(self, node: str, path: str) -> None:
        """A message from an incarnation declared down: not delivered, dead-lettered."""
        self.system.dead_letter(
            RemoteMessage(node, path, "from a node incarnation declared down"),
            "undeliverable",
            path,
        )

    def _local(self, path: str) -> ActorRef:
        """The local ref for `path` (cached: refs name slots); `ActorNotFound`."""
        ref = self._refs.get(path)
        if ref is not None and ref.is_alive:
            return ref
        ref = self.system.ref(path)
        if len(self._refs) >= REFS:
            self._refs.clear()
        self._refs[path] = ref
        return ref

    def _user_message(self, peer: Peer, kind: int, fields: list[Any], reply_to: str) -> None:
        if len(fields) < 7:
            self._malformed()
            return
        to, seq, path, body = fields[3], fields[4], fields[5], fields[6]
        if not isinstance(path, str) or not isinstance(body, bytes):
            self._malformed()
            return
        if to not in self.incarnations:
            # for an earlier process of this node's name: its actors are gone
            self._from_the_dead(peer.name, str(path))
            if kind != env.TELL and reply_to:
                self._answer(
                    peer.name,
                    reply_to,
                    False,
                    ActorStopped(
                        f"{path} on node {self.node!r} was of an earlier incarnation of that node"
                    ),
                )
            return
        stream = peer.stream(fields[2], to)
        if not plausible(seq, stream):
            self._malformed()  # no sender numbers like that: not counted, not delivered
            return
        stream.received += 1
        if seq > stream.max_seq:
            stream.max_seq = seq
        try:
            msg = self.codec.decode(body)
        except Undecodable as error:
            self._malformed()
            self.system.dead_letter(
                RemoteMessage(peer.name, path, str(error)), "undeliverable", path
            )
            if kind != env.TELL and reply_to:
                self._answer(peer.name, reply_to, False, RemoteError("Undecodable", str(error)))
            return
        try:
            ref = self._local(path)
        except ActorNotFound as error:
            self.system.dead_letter(msg, "undeliverable", path)
            if kind != env.TELL and reply_to:
                self._answer(peer.name, reply_to, False, error)
            return
        except (RuntimeClosed, ValueError, TypeError):
            self.system.dead_letter(msg, "undeliverable", path)
            if kind != env.TELL and reply_to:
                self._answer(
                    peer.name, reply_to, False, ActorStopped(f"node {self.node!r} is stopping")
                )
            return
        if kind == env.TELL:
            try:
                ref.tell(msg)
            except MailboxFull:
                self.system.dead_letter(msg, "overflow", path)
            except RuntimeClosed:  # arrived while this node stops: still accounted for
                self.system.dead_letter(msg, "stopped", path)
        elif kind == env.ASK:
            reply = _RemoteReply(self, peer.name, reply_to)
            try:
                ref.deliver_ask(msg, reply)
            except MailboxFull:  # wait for room there, as a local ask does
                timeout = fields[8] if len(fields) > 8 else None
                assert self._nursery is not None
                self._nursery.start_soon(self._ask_waiting, ref, msg, reply, path, timeout)
            except RuntimeClosed as error:
                self.system.dead_letter(msg, "stopped", path)
                reply.fail(error)
        else:  # SEND: answered once the mailbox took it
            assert self._nursery is not None
            self._nursery.start_soon(self._accept, peer.name, ref, msg, reply_to)

    async def _ask_waiting(
        self, ref: ActorRef, msg: Any, reply: _RemoteReply, path: str, timeout: Any
    ) -> None:
        """An ask that found the mailbox full: it waits in the mailbox's line, as a local
        ask would, for as long as its asker waits (`timeout`, None: no limit)."""
        limit = float(timeout) if isinstance(timeout, int | float) and timeout >= 0 else math.inf
        try:
            with trio.move_on_after(limit) as scope:
                await ref.send_ask(msg, reply)
        except (MailboxFull, RuntimeClosed) as error:  # a `fail` mailbox, a deadlock, a stop
            self.system.dead_letter(
                msg, "overflow" if isinstance(error, MailboxFull) else "stopped", path
            )
            reply.fail(error)
            return
        if scope.cancelled_caught:  # its asker has given up by now
            self.system.dead_letter(msg, "timeout", path)
            reply.fail(
                AskTimeout(f"{path}'s mailbox stayed full; {type(msg).__name__} was not queued")
            )

    async def _accept(self, node: str, ref: ActorRef, msg: Any, reply_to: str) -> None:
        try:
            await ref.send(msg)
        except (TroupeError, TypeError) as error:
            self._answer(node, reply_to, False, error)
        else:
            self._answer(node, reply_to, True, None)

    def _reply_arrived(self, item: Incoming, incarnation: str | None, ask_id: int | None) -> None:
        if incarnation not in self.incarnations or ask_id is None:
            self.lost_replies += 1  # for an earlier process that had this node's name
            return
        found = self._asks.pop(ask_id, None)
        if item.status == "503":
            if found is not None:
                self._no_responders(found)
            return
        fields = env.unpack(item.data)
        if fields is None or fields[0] != env.REPLY or len(fields) < 5:
            self._malformed()
            if found is not None:
                found.reply.fail(RemoteError("Undecodable", "an undecodable answer came back"))
            return
        node = fields[1]
        value: Any = None
        if fields[3]:
            try:
                value = self.codec.decode(fields[4])
            except Undecodable as error:
                self._malformed()
                if found is not None:
                    found.reply.fail(
                        RemoteError("Undecodable", f"the answer from {node!r}: {error}")
                    )
                return
        if found is None:  # the asker gave up: a late answer, dead-lettered as a local one is
            url = self._abandoned.pop(ask_id, None)
            if url is None:
                return  # a send's acknowledgement, or an answer to an ask long forgotten
            if url is not None and fields[3]:
                self.system.dead_letter(value, "timeout", url)
            return
        if fields[3]:
            found.reply.send(value)
        else:
            found.reply.fail(decode_error(fields[4], node))

    def _no_responders(self, pending: _Pending) -> None:
        """NATS said nobody listens where an ask went: it is dead-lettered here, fails
        with `NodeDown`, and its sequence number is not to be counted as lost."""
        self.system.dead_letter(pending.msg, "undeliverable", pending.url)
        pending.reply.fail(
            NodeDown(pending.node, None, "nobody listens on its subject (no responders)")
        )
        if pending.seq is not None:
            self._skip_later(
                _Skip(
                    pending.node,
                    pending.peer_incarnation,
                    self.incarnation,
                    pending.seq,
                    pending.seq,
                )
            )
            self._send_skips()

    def _nobody_listened(self, node: str, to: str, first: int, last: int) -> None:
        """NATS said nobody listens on the subject the tells `first`..`last` to
        incarnation `to` of `node` went to: dead-letter them here, and tell `node`
        (should it come back) not to count them as lost.  One no longer remembered
        (past the window of recent tells) is dead-lettered as a `RemoteMessage`."""
        peer = self._peers.get(node)
        if (
            peer is None
            or peer.incarnation != to
            or last > peer.seq
            or last - first >= BATCH_MAX  # one NATS message carries one batch at most
        ):
            return  # meant for an incarnation we no longer send to, or not ours at all
        for seq in range(max(first, peer.seq - len(peer.recent) - RECENT_TELLS), last + 1):
            found = peer.take_recent(seq)
            if found is not None:
                msg, url = found
                self.system.dead_letter(msg, "undeliverable", url)
            elif peer.forgotten(seq):
                self.system.dead_letter(
                    RemoteMessage(
                        node, "?", f"tell number {seq}: nobody listened, no longer remembered"
                    ),
                    "undeliverable",
                    f"{URL_SCHEME}{node}",
                )
        self._skip_later(_Skip(node, peer.incarnation, self.incarnation, first, last))
        self._send_skips()

    def _watched(self, node: str, path: str) -> None:
        ref: ActorRef | None
        try:
            ref = self.system.ref(path)
        except (ActorNotFound, RuntimeClosed, ValueError, TypeError):
            ref = None
        if ref is None or not ref.is_alive:  # no such actor, or one that rests (noproc)
            self._publish(
                Outgoing(
                    self.subjects.system(node),
                    env.pack(env.TERMINATED, self.node, self.incarnation, path, "", "noproc"),
                )
            )
            return
        self._watched_by.setdefault(ref.path, set()).add((node, path))

    def _unwatched(self, node: str, path: str) -> None:
        try:
            ref = self.system.ref(path)
        except (ActorNotFound, RuntimeClosed, ValueError, TypeError):
            return
        watchers = self._watched_by.get(ref.path)
        if watchers is not None:
            watchers.discard((node, path))
            if not watchers:
                del self._watched_by[ref.path]

    def _terminated(self, node: str, path: str, reason: Any) -> None:
        watchers = self._watches.pop((node, path), None)
        if not watchers:
            return
        ref = RemoteRef(self, node, path)
        why = reason_from_wire(reason)
        for cell in watchers:
            cell.remote_terminated(ref, why)

    def _control_request(self, node: str, op: str, args: Any, reply_to: str) -> None:
        if not reply_to:
            return
        if op not in CONTROL_OPS:
            self._answer(node, reply_to, False, ValueError(f"unknown control operation {op!r}"))
            return
        if op in WRITE_OPS and self.control != "rw":
            self._answer(
                node,
                reply_to,
                False,
                PermissionError(
                    f"node {self.node!r} takes read-only control over NATS; start it with "
                    "cluster_control='rw' to allow starting and stopping actors remotely"
                ),
            )
            return
        assert self._nursery is not None
        self._nursery.start_soon(self._serve_control, node, op, args, reply_to)

    async def _serve_control(self, node: str, op: str, args: Any, reply_to: str) -> None:
        try:
            value = await self._local_control(op, args)
        except Exception as error:
            self._answer(node, reply_to, False, error)
        else:
            self._answer(node, reply_to, True, value)

    def _client_request(self, item: Incoming) -> None:
        """A plain NATS client's request (``troupe ls|tree|top|deadletters|stop --cluster``): it
        joins no membership; ``[op, args]`` in, ``[ok, value or error text]`` out.

        Ops: ``nodes`` (this node's view of the cluster), ``snapshot`` (its tree,
        as `TreeSnapshot.to_dict`), ``deadletters`` (args ``{"limit", "reason"}``,
        both optional: `DeadLetterOffice.report`), ``ping``, and ``stop`` (a
        graceful stop; only with ``cluster_control="rw"``).  A node answers them
        all both on its own subject and, as one of a queue group, on the
        cluster's (any one node).
        """
        if not item.reply:
            return
        request = env.unpack_request(item.data)
        if request is None:
            self._malformed()
            self._client_answer(item.reply, False, "a request is a msgpack [op, args]")
            return
        op, args = request
        hint = (
            "raise max_payload on the server, or look at this node through its control "
            f"socket (troupe tree {self.system.name} on its machine)"
        )
        try:
            if op == "ping":
                value: Any = {"node": self.node, "incarnation": self.incarnation}
            elif op == "nodes":
                value = [attrs.asdict(info) for info in self.nodes()]
            elif op == "snapshot":
                value = self.system.snapshot().to_dict()
            elif op == "deadletters":
                if args is None:
                    args = {}
                if not isinstance(args, dict):
                    raise ValueError('deadletters takes {"limit": N, "reason": R} (both optional)')
                value = self.system.dead_letters.report(args.get("limit", 20), args.get("reason"))
                hint = "ask for fewer letters (troupe deadletters -n N)"
            elif op == "stop":
                if self.control != "rw":
                    raise PermissionError(
                        f"node {self.node!r} takes read-only control over NATS; start it "
                        "with cluster_control='rw' (troupe run --cluster-control rw) to "
                        "allow stopping it"
                    )
                value = {"node": self.node, "stopping": True}
                self.system.stop()
            else:
                raise ValueError(
                    f"unknown operation {op!r}; a node answers ping, nodes, snapshot, "
                    "deadletters and stop"
                )
        except Exception as error:
            self._client_answer(item.reply, False, f"{type(error).__name__}: {error}")
            return
        self._client_answer(item.reply, True, value, hint)

    def _client_answer(self, subject: str, ok: bool, value: Any, too_big: str = "") -> None:
        """Answer a plain client: always something it can read, never a silence
        (`too_big`: what to do when the answer is over the server's max_payload)."""
        try:
            data = env.pack(ok, value)
        except (TypeError, ValueError, OverflowError, RecursionError) as error:
            data = env.pack(False, f"the answer could not be encoded: {error}")
        limit = self._transport.max_payload if self._transport is not None else math.inf
        if len(data) > limit - 64:
            data = env.pack(
                False,
                f"the answer is {len(data):,} bytes, more than the NATS server's max_payload "
                f"of {limit:,}; {too_big or 'raise max_payload on the server'}",
            )
        self._publish(Outgoing(subject, data))

    def _event(self, node: str, body: Any, topic: str | None) -> None:
        """An event `node` published on `topic`'s subject (None: not on a bus subject)."""
        if topic is None:
            self._malformed()  # events travel on the bus's subjects only
            return
        try:
            event = self.codec.decode(body)
        except Undecodable as error:
            self._malformed()
            self.system.dead_letter(RemoteMessage(node, "bus", str(error)), "undeliverable", "bus")
            return
        if not isinstance(event, Event):
            self._malformed()
            return
        if event.topic != topic:
            self._malformed()  # an event is published on its topic's subject
            return
        self.events_in += 1
        self.system.bus.deliver_remote(event)

    def _malformed(self, count: int = 1) -> None:
        """Count what came from NATS and could not be read (or believed), and say so in
        the log, at most once every `MALFORMED_LOG_EVERY` seconds: the node carries on."""
        self.undecodable += count
        self._malformed_since += count
        now = time.monotonic()
        if now - self._malformed_logged >= MALFORMED_LOG_EVERY:
            log.warning(
                "node %s: %d message(s) from NATS could not be read and were dropped "
                "(%d in all); a client that is not a node of cluster %r may be publishing "
                "on its subjects",
                self.node,
                self._malformed_since,
                self.undecodable,
                self.cluster_name,
            )
            self._malformed_logged = now
            self._malformed_since = 0

    def _fail_all(self, error: BaseException) -> None:
        asks, self._asks = self._asks, {}
        for pending in asks.values():
            pending.reply.fail(error)


def _new_incarnation() -> str:
    return f"{int(time.time() * 1000):x}{secrets.token_hex(3)}"


__all__ = ["Cluster", "NodeInfo", "RemoteMessage", "parse_url"]

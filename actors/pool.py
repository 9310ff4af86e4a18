"""`Pool`: N identical workers behind one ref (Akka's routers, OTP's worker pools)."""

from __future__ import annotations

import hashlib
import weakref
from bisect import bisect, bisect_left
from collections.abc import Callable, Hashable
from typing import Any, Literal

import attrs
import trio

from runtime import (
    Actor,
    ActorCrashed,
    ActorNotFound,
    ActorRef,
    ChildSpec,
    Deadlock,
    DeferredReply,
    MailboxFull,
    Supervisor,
    Terminated,
    child,
)

ROUTINGS = ("round_robin", "smallest_mailbox", "broadcast")
VIRTUAL_NODES = 64
MAX_SIZE = 1024
"""A pool's default `max_size`: the most workers a `Resize` may ask for."""
DRAIN_POLL = 0.01
"""Seconds between looks at a broadcast worker a shrink removes, until it has handled
its queue (its copies are its own; other pools hand a removed worker's queue back)."""


@attrs.frozen
class ConsistentHash:
    """Route by `key(msg)`: equal keys go to the same worker while the pool size holds."""

    key: Callable[[Any], Hashable]


def consistent_hash(key: Callable[[Any], Hashable]) -> ConsistentHash:
    """Routing for `Pool`: messages with the same ``key(msg)`` reach the same worker.

    A hash ring with virtual nodes, so resizing moves only about 1/N of the keys.
    """
    if not callable(key):
        raise TypeError("consistent_hash(key=...) needs a callable taking the message")
    return ConsistentHash(key)


def _check_size(_instance: object, _attribute: object, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"a pool size is an int >= 1, got {value!r}")


def _check_resize(size: object, max_size: int) -> int:
    """`size` as a pool may be resized to: an int from 1 to `max_size`, else `ValueError`."""
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= max_size:
        raise ValueError(
            f"a pool size is an int from 1 to the pool's max_size ({max_size}), got {size!r}"
        )
    return size


@attrs.frozen
class Resize:
    """Send to a pool's ref to grow or shrink it to `size` workers (at least 1, at most
    the pool's `max_size`)."""

    size: int = attrs.field(validator=_check_size)


@attrs.frozen
class PoolSize:
    """Ask a pool's ref how many workers it routes to."""


def _digest(value: object) -> int:
    """A well-spread 64-bit point for `value` on the ring.

    Equal keys get equal points: strings and bytes by their content, anything
    else by Python's own `hash` (equal values hash equal, so ``1``, ``1.0`` and
    ``True`` are one key).  Raises `TypeError` for an unhashable key.
    """
    if isinstance(value, bytes):
        raw = value
    elif isinstance(value, str):
        raw = value.encode("utf-8", "surrogatepass")
    else:
        raw = hash(value).to_bytes(8, "big", signed=True)
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "big")


def _describe(error: BaseException) -> str:
    try:
        text = str(error)
    except Exception:  # an error whose __str__ raises is still an error
        text = "?"
    return f"{type(error).__name__}({text!r})"


def _full_reason(error: MailboxFull) -> str:
    """The dead-letter reason for a message a worker's mailbox refused."""
    return "deadlock" if isinstance(error, Deadlock) else "overflow"


class Ring:
    """The hash ring of `consistent_hash`: `VIRTUAL_NODES` points per worker, placed by
    the worker's name, so that a worker added or removed moves only its own keys."""

    def __init__(self) -> None:
        self.points: list[int] = []
        self.owners: list[ActorRef] = []

    @staticmethod
    def _points(ref: ActorRef) -> list[int]:
        return [_digest(f"{ref.name}#{v}") for v in range(VIRTUAL_NODES)]

    def add(self, ref: ActorRef) -> None:
        for point in self._points(ref):
            i = bisect(self.points, point)
            self.points.insert(i, point)
            self.owners.insert(i, ref)

    def remove(self, ref: ActorRef) -> None:
        for point in self._points(ref):
            i = bisect_left(self.points, point)
            while i < len(self.points) and self.points[i] == point:
                if self.owners[i] == ref:
                    del self.points[i], self.owners[i]
                    break
                i += 1

    def owner(self, point: int) -> ActorRef:
        """The worker of the first point after `point`, round the ring (it is not empty)."""
        return self.owners[bisect(self.points, point) % len(self.points)]


class Sizes:
    """The size each pool was last resized to, outside the router's incarnations, so
    that a restart of the router or of the whole pool keeps it.

    Kept per router slot (its ref, unique to its system: a pool started anew at
    the same path starts at its spec's size), weakly: an entry goes with the
    slot it is for.
    """

    def __init__(self) -> None:
        self._sizes: weakref.WeakKeyDictionary[ActorRef, int] = weakref.WeakKeyDictionary()

    def get(self, router: ActorRef, default: int) -> int:
        return self._sizes.get(router, default)

    def set(self, router: ActorRef, size: int) -> None:
        self._sizes[router] = size


class Router(Actor):
    """The receiver of a pool: picks a worker and forwards the message, reply slot included.

    It also sizes the pool: a `Resize` sets the target, and a background task
    of this incarnation starts or stops one worker at a time toward it (the
    latest target wins) while `receive` goes on routing.  A worker a shrink
    removes is first taken out of the routing, then stopped after the message
    in hand, and what was still queued at it comes back to this router to be
    routed to the others (``terminate_child(..., hand_over_to=)``; asks keep
    their askers).  In a broadcast pool a queued copy is that worker's own: it
    handles its copies first, and a grow may take it back meanwhile.
    """

    def __init__(
        self,
        worker: ChildSpec,
        routing: str | ConsistentHash,
        size: int,
        max_size: int,
        sizes: Sizes,
    ) -> None:
        self.worker = worker
        self.routing = routing
        self.max_size = max_size
        self.sizes = sizes
        self.target = size
        self.workers: list[ActorRef] = []  # routed to, in start order
        self.routed_to: set[ActorRef] = set()  # the same, to look up
        self.retiring: list[ActorRef] = []  # no longer routed to, stopped once drained
        self.names: set[str] = set()  # of every worker running under the pool
        self.free_from = 0  # no name below w<free_from> is free
        self.ring = Ring()
        self.next = 0
        self.resizing = False
        self.resizes: list[DeferredReply] = []  # Resize asks, answered once it is done
        self.routed = 0
        self.unroutable = 0

    async def on_start(self) -> None:
        self.pool_path = self.ctx.path.rsplit("/", 1)[0]
        for info in self.ctx.system.which_children(self.pool_path):
            if info.ref != self.ctx.ref:
                self._route_to(info.ref)
        # resized before this incarnation (or the pool's): back to that size
        self.target = self.sizes.get(self.ctx.ref, self.target)
        while len(self.workers) > self.target:  # before any message is routed
            self._retire_last()
        self._resize_soon()

    async def receive(self, msg: Any) -> Any:
        if isinstance(msg, Resize):
            return self._resize(msg)
        if isinstance(msg, PoolSize):
            return len(self.workers)
        if isinstance(msg, Terminated):  # the notices of watching the workers
            if msg.ref in self.routed_to:
                self._gone(msg.ref)
            return None
        try:
            target = self._pick(msg)
        except Exception as error:
            failure = ActorCrashed(
                f"{self.pool_path} could not route {type(msg).__name__}: {_describe(error)}"
            )
            failure.__cause__ = error
            self.unroutable += 1
            self._fail(msg, failure)
            return None
        self.routed += 1
        try:
            if self.routing == "broadcast" and not self.ctx.expects_reply:
                # a tell reaches every worker; an ask reaches one (and gets one answer)
                # (workers are retired only between messages: each gets its copy)
                for ref in list(self.workers):
                    try:
                        await ref.send(msg)
                    except MailboxFull as error:  # that worker's copy alone
                        self.unroutable += 1
                        self.ctx.dead_letter(msg, _full_reason(error))
            else:
                await self.ctx.forward(target)
        except MailboxFull as error:  # a full `fail` worker, or a wait that would deadlock
            self.unroutable += 1
            self._fail(msg, error, _full_reason(error))
        return None

    # -- routing -------------------------------------------------------------

    def _pick(self, msg: Any) -> ActorRef:
        """The worker for `msg`; raises if there is none (or the key function fails)."""
        if not self.workers:
            raise RuntimeError(f"pool {self.pool_path} has no workers; Resize it first")
        routing = self.routing
        if routing == "smallest_mailbox":
            return min(self.workers, key=lambda r: r.mailbox_depth + r.is_busy)
        if isinstance(routing, ConsistentHash):
            return self.ring.owner(_digest(routing.key(msg)))
        ref = self.workers[self.next % len(self.workers)]  # round_robin; a broadcast ask
        self.next += 1
        return ref

    def _fail(self, msg: Any, error: BaseException, reason: str = "crashed") -> None:
        """Fail the message in hand alone: its asker gets `error` and it is
        dead-lettered with `reason`; nothing restarts."""
        if self.ctx.expects_reply:
            self.ctx.defer_reply().fail(error)
        self.ctx.dead_letter(msg, reason)

    def _gone(self, ref: ActorRef) -> None:
        """A worker stopped for good by itself (a `temporary` one that crashed or
        stopped) or by someone else's `terminate_child`: it is no longer routed to.
        The pool's size is what is left, unless a `Resize` is under way: that one
        still makes the size it was asked for (it starts a worker in its place)."""
        self.workers.remove(ref)
        self.routed_to.discard(ref)
        if isinstance(self.routing, ConsistentHash):
            self.ring.remove(ref)
        self._release_name(ref.name)
        if self.resizing:  # the resize under way reads `target` at its next step
            return
        self.target = max(len(self.workers), self.target - 1)  # one fewer wanted
        self.sizes.set(self.ctx.ref, self.target)

    def _route_to(self, ref: ActorRef) -> None:
        self.ctx.watch(ref)  # a worker that stops for good leaves the routing
        self.workers.append(ref)
        self.routed_to.add(ref)
        self.names.add(ref.name)
        if isinstance(self.routing, ConsistentHash):
            self.ring.add(ref)

    def _retire_last(self) -> None:
        """Stop routing to the last started worker; `_resizing` stops it next."""
        ref = self.workers.pop()
        self.ctx.unwatch(ref)
        self.routed_to.discard(ref)
        if isinstance(self.routing, ConsistentHash):
            self.ring.remove(ref)
        self.retiring.append(ref)

    # -- sizing --------------------------------------------------------------

    def _resize(self, msg: Resize) -> int | None:
        try:
            size = _check_resize(msg.size, self.max_size)
        except ValueError as error:
            self._fail(msg, error)
            return None
        self.target = size
        self.sizes.set(self.ctx.ref, size)
        while len(self.workers) > size:  # no new messages for the removed ones
            self._retire_last()
        self._resize_soon()
        if not self.resizing:
            return size  # there already
        if self.ctx.expects_reply:
            self.resizes.append(self.ctx.defer_reply())
        return None

    def _answer_resizes(self, error: BaseException | None = None) -> None:
        """Answer the waiting `Resize` asks: the pool's size now, or `error`."""
        resizes, self.resizes = self.resizes, []
        for reply in resizes:
            if error is None:
                reply.send(len(self.workers))
            else:
                reply.fail(error)

    def _resize_soon(self) -> None:
        if not self.resizing and (len(self.workers) != self.target or self.retiring):
            self.resizing = True
            self.ctx.nursery.start_soon(self._resizing)

    async def _resizing(self) -> None:
        """Start workers one at a time until `target` of them are routed to, and stop
        the retired ones (handing their queues back, see the class).

        Each step reads `target` afresh (a later `Resize` supersedes this one
        where it stands: a worker whose start a shrink overtook is retired as
        soon as it is up) and each start or stop awaits the pool's supervisor,
        so the router keeps routing meanwhile.  The waiting `Resize` asks are
        answered once the pool has `target` workers and no retired one is left.
        A worker that fails to start (or a stop that fails, e.g. as the system
        stops) ends the resize there; those asks get that error.
        """
        try:
            while True:
                if len(self.workers) < self.target:
                    back = self._take_back()
                    if back is not None:
                        self._route_to(back)
                    else:
                        ref = await self._start_worker()
                        if len(self.workers) < self.target:
                            self._route_to(ref)
                        else:  # a shrink came while it started
                            self.retiring.append(ref)
                    continue
                if not self.retiring:
                    self._answer_resizes()
                    break
                if self.routing != "broadcast":
                    # it finishes the message in hand; what was still queued at it
                    # comes back here and is routed again
                    await self._stop_worker(self.retiring.pop(0), hand_over=True)
                    continue
                # a broadcast copy is that worker's own: it handles its copies first
                drained = next((ref for ref in self.retiring if self._drained(ref)), None)
                if drained is None:
                    await trio.sleep(DRAIN_POLL)
                    continue
                self.retiring.remove(drained)
                await self._stop_worker(drained, hand_over=False)
        except Exception as error:
            self.target = len(self.workers)
            self.sizes.set(self.ctx.ref, self.target)
            self._answer_resizes(error)
        finally:
            self.resizing = False

    def _take_back(self) -> ActorRef | None:
        """The last retired worker still alive, out of `retiring` (None if none is):
        a grow routes to it again rather than start a new one.  Retired workers
        that stopped meanwhile (e.g. a `temporary` one that crashed) are let go."""
        while self.retiring:
            ref = self.retiring.pop()
            if ref.is_alive:
                return ref
            self._release_name(ref.name)
        return None

    async def _stop_worker(self, ref: ActorRef, *, hand_over: bool) -> None:
        """Stop a retired worker (after the message in hand); with `hand_over`, what
        was still queued at it comes back to this router, to be routed again."""
        try:
            await self.ctx.system.terminate_child(
                ref.path, hand_over_to=self.ctx.ref if hand_over else None
            )
        except ActorNotFound:
            pass  # it had already stopped for good
        self._release_name(ref.name)

    async def _start_worker(self) -> ActorRef:
        """Start the next worker under the pool (not yet routed to)."""
        name = self._free_name()
        self.names.add(name)
        try:
            ref = await self.ctx.system.start_child(
                self.pool_path, attrs.evolve(self.worker, name=name)
            )
        except BaseException:
            self._release_name(name)
            raise
        return ref

    def _drained(self, ref: ActorRef) -> bool:
        """Whether a retired worker has handled all that was routed to it (or is gone)."""
        if not ref.is_alive:
            return True
        return ref.mailbox_depth == 0 and not ref.is_busy

    def _free_name(self) -> str:
        """The lowest free worker name (``w0``, ``w1``, ...)."""
        n = self.free_from
        while f"w{n}" in self.names:
            n += 1
        self.free_from = n
        return f"w{n}"

    def _release_name(self, name: str) -> None:
        self.names.discard(name)
        number = name[1:]
        if number.isdigit():
            self.free_from = min(self.free_from, int(number))

    def snapshot_stats(self) -> dict[str, Any]:
        routing = self.routing if isinstance(self.routing, str) else "consistent_hash"
        return {
            "routing": routing,
            "workers": len(self.workers),
            "target": self.target,
            "retiring": len(self.retiring),
            "routed": self.routed,
            "unroutable": self.unroutable,
        }


def Pool(
    name: str,
    worker: ChildSpec,
    size: int = 4,
    routing: str | ConsistentHash = "round_robin",
    *,
    max_size: int = MAX_SIZE,
    max_restarts: int = 3,
    within: float = 5.0,
    restart: Literal["permanent", "transient", "temporary"] = "permanent",
) -> Supervisor:
    """A supervisor spec (named like a class, as it reads in a children list):
    `size` copies of `worker` behind one ref.

    ``system.ref("/app/<name>")`` reaches the pool's router, which forwards
    each message to one worker (`broadcast`: tells to all, an ask to one).
    The pool is one ``one_for_one`` supervisor of its workers (``w0``,
    ``w1``, ...) and its router: a crashing worker is restarted alone and the
    others keep their messages.  `max_restarts` within `within` seconds is
    the pool's own restart intensity: past it the pool gives up and its
    parent handles that like any supervisor's failure.

    Send `Resize(n)` to the pool's ref to change its size at run time, up to
    `max_size` (a larger `n` fails that ask with `ValueError`).  The router
    keeps routing while workers are started or stopped one at a time, a
    later `Resize` supersedes one in progress, and an ask of `Resize` is
    answered with the size reached once the pool has it (removed workers
    stopped).  A shrink drops nothing: a worker it removes gets no new
    messages at once, and once it has finished the message in hand, what was
    queued at it is routed to the other workers (asks answered once; in a
    broadcast pool it handles its own copies first).  A restart of the
    router or of the whole pool keeps the size it was last resized to.

    Workers are ``permanent`` or ``temporary`` (one that stops or crashes
    leaves the pool); a ``transient`` worker spec raises `ValueError`.  A routing failure
    (a `consistent_hash` key function that raises or returns something
    unhashable) fails that message alone: the asker gets `ActorCrashed`
    with the error as its cause, the message is dead-lettered as
    ``crashed``, and nothing restarts.
    """
    if not isinstance(worker, ChildSpec):
        raise TypeError("Pool(worker=...) takes a child(...) spec")
    if not isinstance(routing, ConsistentHash) and routing not in ROUTINGS:
        raise ValueError(
            f"unknown routing {routing!r}; use one of {', '.join(ROUTINGS)} or consistent_hash(key)"
        )
    if worker.restart == "transient":
        raise ValueError(
            "a pool's workers cannot be restart='transient': one that stopped normally "
            "would keep a place the pool cannot route to; use 'permanent' (restarted "
            "whatever ends it) or 'temporary' (a worker that stops or crashes leaves the pool)"
        )
    _check_size(None, None, size)
    if isinstance(max_size, bool) or not isinstance(max_size, int) or max_size < 1:
        raise ValueError(f"max_size is an int >= 1, got {max_size!r}")
    if size > max_size:
        raise ValueError(f"size={size} is more than max_size={max_size}")
    workers = [attrs.evolve(worker, name=f"w{i}") for i in range(size)]
    router = child(
        Router,
        name="router",
        kwargs={
            "worker": worker,
            "routing": routing,
            "size": size,
            "max_size": max_size,
            "sizes": Sizes(),
        },
    )
    return Supervisor(
        name,
        strategy="one_for_one",
        max_restarts=max_restarts,
        within=within,
        children=[*workers, router],
        receiver="router",
        restart=restart,
    )

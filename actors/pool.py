"""`Pool`: N identical workers behind one ref (Akka's routers, OTP's worker pools)."""

from __future__ import annotations

import hashlib
import weakref
from bisect import bisect
from collections.abc import Callable, Hashable
from typing import Any

import attrs

from runtime import Actor, ActorCrashed, ActorRef, ChildSpec, Supervisor, System, child

ROUTINGS = ("round_robin", "smallest_mailbox", "broadcast")
VIRTUAL_NODES = 64


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


@attrs.frozen
class Resize:
    """Send to a pool's ref to grow or shrink it to `size` workers (at least 1)."""

    size: int = attrs.field(validator=_check_size)


@attrs.frozen
class PoolSize:
    """Ask a pool's ref how many workers it routes to."""


def _digest(value: object) -> int:
    raw = value if isinstance(value, bytes) else repr(value).encode()
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "big")


def _describe(error: BaseException) -> str:
    try:
        text = str(error)
    except Exception:  # an error whose __str__ raises is still an error
        text = "?"
    return f"{type(error).__name__}({text!r})"


class Sizes:
    """The size each pool was last resized to, outside the router's incarnations, so
    that a restart of the router or of the whole pool keeps it.

    Kept per system (weakly: it goes with the system) and per router slot (its
    ref: a pool started anew at the same path starts at its spec's size).
    """

    def __init__(self) -> None:
        self._by_system: weakref.WeakKeyDictionary[System, dict[ActorRef, int]] = (
            weakref.WeakKeyDictionary()
        )

    def get(self, system: System, router: ActorRef, default: int) -> int:
        return self._by_system.get(system, {}).get(router, default)

    def set(self, system: System, router: ActorRef, size: int) -> None:
        self._by_system.setdefault(system, {})[router] = size


class Router(Actor):
    """The front of a pool: picks a worker and forwards the message, reply slot included."""

    def __init__(
        self, worker: ChildSpec, routing: str | ConsistentHash, size: int, sizes: Sizes
    ) -> None:
        self.worker = worker
        self.routing = routing
        self.size = size
        self.sizes = sizes
        self.workers: list[ActorRef] = []
        self.next = 0
        self.ring: list[tuple[int, int]] = []
        self.routed = 0
        self.unroutable = 0

    async def on_start(self) -> None:
        self.pool_path = self.ctx.path.rsplit("/", 1)[0]
        self._refresh()
        target = self.sizes.get(self.ctx.system, self.ctx.ref, self.size)
        if target != len(self.workers):
            # resized before this incarnation: back to that size, once started
            self.ctx.ref.tell(Resize(target))

    def _refresh(self) -> None:
        infos = self.ctx.system.which_children(self.pool_path)
        self.workers = [info.ref for info in infos if info.ref != self.ctx.ref]
        self.ring = sorted(
            (_digest(f"{ref.name}#{v}"), i)
            for i, ref in enumerate(self.workers)
            for v in range(VIRTUAL_NODES)
        )

    async def receive(self, msg: Any) -> Any:
        if isinstance(msg, Resize):
            await self._resize(msg.size)
            return len(self.workers)
        if isinstance(msg, PoolSize):
            return len(self.workers)
        try:
            target = self._pick(msg)
        except Exception as error:
            self._unroutable(msg, error)
            return None
        self.routed += 1
        if self.routing == "broadcast" and not self.ctx.expects_reply:
            # a tell reaches every worker; an ask reaches one (and gets one answer)
            for ref in list(self.workers):
                if ref != target:
                    await ref.send(msg)
        await self.ctx.forward(target)
        return None

    def _pick(self, msg: Any) -> ActorRef:
        """The worker for `msg`; raises if there is none (or the key function fails)."""
        if not self.workers:
            raise RuntimeError(f"pool {self.pool_path} has no workers; Resize it first")
        routing = self.routing
        if routing == "smallest_mailbox":
            return min(self.workers, key=lambda r: r.mailbox_depth + r.is_busy)
        if isinstance(routing, ConsistentHash):
            key = routing.key(msg)
            hash(key)  # an unhashable key is no key (TypeError), whatever its repr
            index = bisect(self.ring, (_digest(key), len(self.workers)))
            return self.workers[self.ring[index % len(self.ring)][1]]
        return self._round_robin()  # round_robin, and the one worker a broadcast ask reaches

    def _unroutable(self, msg: Any, error: Exception) -> None:
        """Fail the message in hand alone: its asker gets `ActorCrashed` (the error as
        ``__cause__``) and it is dead-lettered as ``crashed``; nothing restarts."""
        self.unroutable += 1
        if self.ctx.expects_reply:
            failure = ActorCrashed(
                f"{self.pool_path} could not route {type(msg).__name__}: {_describe(error)}"
            )
            failure.__cause__ = error
            self.ctx.defer_reply().fail(failure)
        self.ctx.dead_letter(msg, "crashed")

    def _round_robin(self) -> ActorRef:
        ref = self.workers[self.next % len(self.workers)]
        self.next += 1
        return ref

    async def _resize(self, size: int) -> None:
        _check_size(None, None, size)
        system = self.ctx.system
        self.sizes.set(system, self.ctx.ref, size)
        names = {ref.name for ref in self.workers}
        n = 0
        while len(self.workers) < size:
            while f"w{n}" in names:
                n += 1
            names.add(f"w{n}")
            ref = await system.start_child(self.pool_path, attrs.evolve(self.worker, name=f"w{n}"))
            self.workers.append(ref)
        while len(self.workers) > size:
            ref = self.workers.pop()
            await system.terminate_child(ref.path)
        self._refresh()

    def snapshot_stats(self) -> dict[str, Any]:
        routing = self.routing if isinstance(self.routing, str) else "consistent_hash"
        return {
            "routing": routing,
            "workers": len(self.workers),
            "routed": self.routed,
            "unroutable": self.unroutable,
        }


def Pool(
    name: str,
    worker: ChildSpec,
    size: int = 4,
    routing: str | ConsistentHash = "round_robin",
    *,
    max_restarts: int = 3,
    within: float = 5.0,
    restart: str = "permanent",
) -> Supervisor:
    """A supervisor spec (named like a class, as it reads in a children list):
    `size` copies of `worker` behind one ref.

    ``system.ref("/app/<name>")`` reaches the pool's router, which forwards
    each message to one worker (`broadcast`: tells to all, an ask to one).
    The pool is one ``one_for_one`` supervisor of its workers (``w0``,
    ``w1``, ...) and its router: a crashing worker is restarted alone and the
    others keep their messages.  `max_restarts` within `within` seconds is
    the pool's own restart intensity: past it the pool gives up and its
    parent handles that like any supervisor's failure.  Send `Resize(n)` to
    the pool's ref to change its size at run time; a restart of the router
    or of the whole pool keeps the size it was last resized to.
    """
    if not isinstance(worker, ChildSpec):
        raise TypeError("Pool(worker=...) takes a child(...) spec")
    if not isinstance(routing, ConsistentHash) and routing not in ROUTINGS:
        raise ValueError(
            f"unknown routing {routing!r}; use one of {', '.join(ROUTINGS)} or consistent_hash(key)"
        )
    _check_size(None, None, size)
    workers = [attrs.evolve(worker, name=f"w{i}") for i in range(size)]
    router = child(
        Router,
        name="router",
        kwargs={"worker": worker, "routing": routing, "size": size, "sizes": Sizes()},
    )
    return Supervisor(
        name,
        strategy="one_for_one",
        max_restarts=max_restarts,
        within=within,
        children=[*workers, router],
        front="router",
        restart=restart,  # type: ignore[arg-type]
    )

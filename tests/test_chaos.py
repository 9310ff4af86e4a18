"""Chaos hierarchy, after Akka's SupervisorHierarchySpec ("survive being stressed").

A random deep tree runs under load (the loop and foreign threads sending,
asking, publishing, bridges running blocking work) while random failures are
injected for a fixed number of operations: crashes in handlers, in
``on_start`` and in background tasks, ``ctx.stop()``, dynamic children
started and terminated, supervisors giving up.  Every actor checks that it
never handles a message unless its incarnation has started and is not
stopping, and that no two incarnations of a slot overlap.  At the end every
actor answers a ping, and after shutdown nothing of the system is left: no
trio task, no thread (besides trio's idle cached workers), no subscription,
no registry entry, no actor slot or mailbox (gc + weakrefs).

Real time (threads are involved), generous bounds, no duration asserts.
Seeds are fixed; ``pytest --slow`` runs more seeds, more operations, bigger trees.
"""

from __future__ import annotations

import gc
import logging
import random
import threading
import time
import weakref
from typing import Any

import pytest
import trio
import trio.testing

import runtime
from runtime import (
    Actor,
    ActorNotFound,
    Backoff,
    Event,
    Mailbox,
    Supervisor,
    TroupeError,
    child,
    open_system,
)

WAIT = 30.0


class Boom(Exception):
    """Injected failure."""


class Shared:
    """What the actors of one run share with the test (loop thread only)."""

    def __init__(self) -> None:
        self.fail_starts: dict[str, int] = {}
        self.active: dict[str, bool] = {}
        self.violations: list[Any] = []
        self.handled = 0


class Chaotic(Actor):
    """A worker that can be told to fail in every way an actor can."""

    def __init__(self, shared: Shared, topic: str) -> None:
        self.shared = shared
        self.topic = topic
        self.live = False

    async def on_start(self) -> None:
        shared, path = self.shared, self.ctx.path
        if shared.active.get(path):
            shared.violations.append(("two incarnations at once", path))
        left = shared.fail_starts.get(path, 0)
        if left:
            shared.fail_starts[path] = left - 1
            raise Boom(f"{path} refuses to start")
        self.ctx.subscribe(self.topic)
        shared.active[path] = True
        self.live = True

    async def on_stop(self, reason: object) -> None:
        if not self.live:
            self.shared.violations.append(("on_stop before on_start finished", self.ctx.path))
        self.live = False
        self.shared.active[self.ctx.path] = False
        if random.random() < 0.2:
            await trio.sleep(0.001)  # a stop that takes a moment

    def check(self, msg: Any) -> None:
        if not self.live or not self.shared.active.get(self.ctx.path):
            self.shared.violations.append(("handled while not running", self.ctx.path, msg))

    async def _explode(self, delay: float) -> None:
        await trio.sleep(delay)
        raise Boom(f"{self.ctx.path}: background task")

    async def receive(self, msg: Any) -> Any:
        self.check(msg)
        self.shared.handled += 1
        match msg:
            case ("ping",):
                return "pong"
            case ("work", float(pause)):
                if pause:
                    await trio.sleep(pause)
                self.check(msg)
                return "done"
            case ("crash",):
                raise Boom(self.ctx.path)
            case ("stop",):
                self.ctx.stop()
                return "stopping"
            case ("background-crash",):
                self.ctx.nursery.start_soon(self._explode, 0.001)
                await trio.sleep(0.01)  # cancelled by the crash of the background task
                return "survived"
            case ("blocking", float(pause)):
                result = await self.ctx.run_blocking(time.sleep, pause)
                self.check(msg)
                return result
            case Event():
                return None
            case _:
                return runtime.UNHANDLED


MAILBOXES = [None, None, Mailbox(capacity=16), Mailbox(capacity=8, overflow="drop_old")]


def random_tree(rng: random.Random, shared: Shared, max_actors: int) -> Supervisor:
    names = iter(range(10_000))
    budget = [max_actors]

    def worker() -> Any:
        return child(
            Chaotic,
            name=f"w{next(names)}",
            kwargs={"shared": shared, "topic": f"chaos.t{rng.randrange(3)}"},
            restart=rng.choice(["permanent", "permanent", "permanent", "transient", "temporary"]),
            mailbox=rng.choice(MAILBOXES),
            shutdown=rng.choice([5.0, 0.05]),
        )

    def sup(depth: int, name: str) -> Supervisor:
        kids: list[Any] = []
        for _ in range(rng.randint(1, 5)):
            if budget[0] <= 0:
                break
            budget[0] -= 1
            if depth < 5 and rng.random() < 0.35:
                kids.append(sup(depth + 1, f"s{next(names)}"))
            else:
                kids.append(worker())
        return Supervisor(
            name,
            strategy=rng.choice(["one_for_one", "one_for_all", "rest_for_one"]),
            max_restarts=10**6 if depth == 1 else rng.choice([1, 3, 10, 1000]),
            within=rng.choice([0.05, 1.0, 60.0]),
            restart="permanent"
            if depth == 1
            else rng.choice(["permanent", "permanent", "transient", "temporary"]),
            backoff=rng.choice([None, None, Backoff(min=0.001, max=0.01, jitter=0.5)]),
            children=kids,
        )

    return sup(1, "chaos")


def holders(obj: Any, limit: int = 200_000) -> list[str]:
    """Referrer chains from `obj` back to a root (a module, a running frame, a
    thread-local): the failure message when something keeps a stopped system alive."""
    import sys
    import types

    running = set()
    for frame in sys._current_frames().values():
        while frame is not None:
            running.add(id(frame))
            frame = frame.f_back
    parent: dict[int, tuple[Any, Any]] = {id(obj): (obj, None)}
    queue = [obj]
    found: list[str] = []
    skip = {id(parent), id(queue)}
    while queue and len(parent) < limit and len(found) < 5:
        item = queue.pop(0)
        for ref in gc.get_referrers(item):
            if id(ref) in parent or id(ref) in skip:
                continue
            if isinstance(ref, types.FrameType) and ref.f_code.co_name in ("holders", "chaos_run"):
                continue
            parent[id(ref)] = (ref, item)
            root = (
                isinstance(ref, types.ModuleType)
                or id(ref) in running
                or (type(ref).__name__ == "_local")
            )
            if root:
                chain, cur = [], ref
                while cur is not None:
                    what = f"{type(cur).__module__}.{type(cur).__qualname__}"
                    if isinstance(cur, types.FrameType):
                        what += f"[{cur.f_code.co_name}:{cur.f_lineno}]"
                    chain.append(what)
                    cur = parent[id(cur)][1]
                found.append(" -> ".join(chain))
            else:
                queue.append(ref)
    return found


def all_tasks() -> set[trio.lowlevel.Task]:
    found: set[trio.lowlevel.Task] = set()

    def walk(task: trio.lowlevel.Task) -> None:
        found.add(task)
        for nursery in task.child_nurseries:
            for sub in nursery.child_tasks:
                walk(sub)

    walk(trio.lowlevel.current_root_task())
    return found


def workers_of(info: Any) -> list[str]:
    out = [info.path] if info.kind == "actor" else []
    for sub in info.children:
        out.extend(workers_of(sub))
    return out


def supervisors_of(info: Any) -> list[str]:
    out = [info.path] if info.kind == "supervisor" else []
    for sub in info.children:
        out.extend(supervisors_of(sub))
    return out


def busy(system: runtime.System) -> list[str]:
    out: list[str] = []

    def walk(info: Any) -> None:
        if (
            info.state in ("starting", "restarting", "stopping")
            or info.mailbox_depth
            or (info.current is not None)
        ):
            out.append(f"{info.path}:{info.state}")
        for sub in info.children:
            walk(sub)

    walk(system.snapshot().root)
    return out


async def settle(system: runtime.System) -> None:
    with trio.move_on_after(WAIT):
        while True:
            await trio.testing.wait_all_tasks_blocked(0.005)
            if not busy(system):
                return
            await trio.sleep(0.005)
    raise AssertionError(f"the system did not settle: {busy(system)}")


def foreign_load(
    refs: list[runtime.ActorRef], seed: int, count: int, stats: dict[str, int]
) -> None:
    """A plain thread: tells and asks into random actors; typed errors only."""
    rng = random.Random(seed)
    for _ in range(count):
        ref = rng.choice(refs)
        try:
            if rng.random() < 0.2:
                ref.ask_blocking(("work", 0.0), timeout=WAIT)
            else:
                ref.tell(("work", 0.0), timeout=WAIT)
            stats["sent"] += 1
        except TroupeError:
            stats["refused"] += 1


async def chaos_run(seed: int, operations: int, max_actors: int) -> None:
    rng = random.Random(seed)
    shared = Shared()
    tree = random_tree(rng, shared, max_actors)
    threads_before = set(threading.enumerate())
    tasks_before = all_tasks()
    cells: list[weakref.ref[Any]] = []
    dynamic = iter(range(10**6))
    thread_stats = {"sent": 0, "refused": 0}
    outcomes: dict[str, int] = {}

    async with open_system(tree, name=f"chaos-{seed}") as system:
        system_ref = weakref.ref(system)

        def live_workers() -> list[str]:
            return workers_of(system.snapshot().find("/chaos"))

        async def ask(ref: runtime.ActorRef, msg: Any) -> None:
            try:
                await ref.ask(msg, timeout=WAIT)
                outcomes["reply"] = outcomes.get("reply", 0) + 1
            except TroupeError as exc:
                name = type(exc).__name__
                outcomes[name] = outcomes.get(name, 0) + 1

        async with trio.open_nursery() as load:
            # foreign threads hammer the tree while the failures go on
            # plain threads, sending while the failures go on; joined before the end
            refs = [system.ref(p) for p in live_workers()]
            senders = [
                threading.Thread(
                    target=foreign_load,
                    args=(refs, seed * 10 + i, operations, thread_stats),
                    name=f"chaos-sender-{i}",
                )
                for i in range(2)
            ]
            for sender in senders:
                sender.start()
            for _ in range(operations):
                paths = live_workers()
                roll = rng.random()
                try:
                    if not paths or roll < 0.08:
                        sups = supervisors_of(system.snapshot().find("/chaos"))
                        spec = child(
                            Chaotic,
                            name=f"d{next(dynamic)}",
                            kwargs={"shared": shared, "topic": "chaos.t0"},
                            restart=rng.choice(["permanent", "transient", "temporary"]),
                        )
                        with trio.fail_after(WAIT):  # a hang here is a failure, not a stall
                            await system.start_child(rng.choice(sups), spec)
                        continue
                    path = rng.choice(paths)
                    ref = system.ref(path)
                    if roll < 0.35:
                        ref.tell(("work", rng.choice([0.0, 0.0, 0.001])))
                    elif roll < 0.5:
                        load.start_soon(ask, ref, ("work", 0.0))
                    elif roll < 0.6:
                        system.publish(f"chaos.t{rng.randrange(3)}", "tick")
                    elif roll < 0.68:
                        ref.tell(("crash",))
                    elif roll < 0.72:
                        load.start_soon(ask, ref, ("background-crash",))
                    elif roll < 0.76:
                        ref.tell(("stop",))
                    elif roll < 0.8:
                        shared.fail_starts[path] = rng.randint(1, 2)
                        ref.tell(("crash",))
                    elif roll < 0.84:
                        load.start_soon(ask, ref, ("blocking", 0.001))
                    elif roll < 0.86:
                        with trio.fail_after(WAIT):
                            await system.terminate_child(path)
                    else:
                        load.start_soon(ask, ref, ("unknown",))
                except (ActorNotFound, TroupeError, ValueError, Boom):
                    pass  # it went away meanwhile, its mailbox is full, or it refused to start
                await trio.sleep(rng.choice([0, 0, 0, 0.0005]))

            def join_senders() -> None:
                for sender in senders:
                    sender.join(WAIT)

            await trio.to_thread.run_sync(join_senders)
            assert not any(sender.is_alive() for sender in senders), "a sender thread hung"
        shared.fail_starts.clear()
        await settle(system)

        assert not shared.violations, shared.violations[:5]

        # nothing was left stopped or failed in the tree: every slot still there runs
        def not_running(info: Any) -> list[str]:
            out = [] if info.state == "running" else [f"{info.path}:{info.state}"]
            for sub in info.children:
                out.extend(not_running(sub))
            return out

        assert not not_running(system.snapshot().find("/chaos")), not_running(
            system.snapshot().find("/chaos")
        )
        # every actor still in the tree answers a ping
        for path in live_workers():
            assert await system.ref(path).ask(("ping",), timeout=WAIT) == "pong", path

        assert outcomes.get("reply", 0) > 0
        assert thread_stats["sent"] > 0

        snap = system.snapshot()
        for path in [*live_workers(), *supervisors_of(snap.find("/chaos")), "/system/bus"]:
            cells.append(weakref.ref(system._lookup(path)))
        subscriptions = system.bus.stats()["subscriptions"]
        assert subscriptions >= len(live_workers())
        del snap, refs, ref
        senders.clear()

    # -- after shutdown nothing of the system is left ------------------------------
    assert system.bus.stats()["subscriptions"] == 0
    assert system._cells == {}, sorted(system._cells)[:10]
    leftover_tasks = all_tasks() - tasks_before
    assert not leftover_tasks, [t.name for t in leftover_tasks]
    system = None  # type: ignore[assignment]  # drop the last reference
    for _ in range(3):
        gc.collect()
    if system_ref() is not None:
        raise AssertionError(f"the stopped System is still referenced: {holders(system_ref())}")
    alive = [ref() for ref in cells if ref() is not None]
    assert not alive, [cell.path for cell in alive][:10]
    from runtime.mailbox import MailboxQueue  # internals, only to look for leftovers

    leftover_mailboxes = [
        obj
        for obj in gc.get_objects()
        if isinstance(obj, MailboxQueue)
        and getattr(obj._drop, "__self__", None) is not None
        and obj._drop.__self__.path.startswith("/chaos")
    ]
    assert not leftover_mailboxes
    deadline = time.monotonic() + WAIT
    while True:
        extra = [
            t
            for t in set(threading.enumerate()) - threads_before
            if t.is_alive() and not t.name.startswith("Trio thread ")
        ]
        if not extra or time.monotonic() > deadline:
            break
        await trio.sleep(0.01)
    assert not extra, [t.name for t in extra]


@pytest.fixture
def quiet_log() -> Any:
    """Keep the runtime's crash logs out of pytest's log capture: captured records
    hold tracebacks, whose frames would keep the stopped system's cells alive."""
    loggers = [
        logging.getLogger(name)
        for name in ["troupe", *logging.root.manager.loggerDict]
        if name == "troupe" or name.startswith("troupe.")
    ]
    old = [logger.disabled for logger in loggers]
    for logger in loggers:
        logger.disabled = True
    yield
    for logger, was in zip(loggers, old, strict=True):
        logger.disabled = was


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_chaos_hierarchy(seed: int, slow: bool, quiet_log: None) -> None:
    if slow:
        for s in range(seed * 100, seed * 100 + 10):
            await chaos_run(s, operations=3000, max_actors=100)
    else:
        await chaos_run(seed, operations=1000, max_actors=40)

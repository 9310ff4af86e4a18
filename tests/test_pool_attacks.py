"""Adversarial tests for `actors.Pool`: hand-over of a removed worker's queue, retiring
workers, router and pool restarts, foreign threads, odd hash keys and message accounting.
"""

from __future__ import annotations

import gc
import threading
from collections import Counter
from typing import Any

import attrs
import pytest
import trio
import trio.testing

import runtime
from actors import Pool, PoolSize, Resize, consistent_hash
from runtime import Actor, Mailbox, Supervisor, child
from runtime.testing import crash

WAIT = 1_000.0  # trio time under autojump_clock: only a hang reaches it


@attrs.frozen
class Job:
    key: Any
    work: float = 0.0
    crash: bool = False


class Worker(Actor):
    """Handles `Job`s (waiting for its gate, then `work` seconds, crashing if asked),
    logging (worker name, key); any other message answers the worker's name."""

    def __init__(self, log: list[tuple[str, Any]], gates: dict[str, trio.Event] | None = None):
        self.log = log
        self.gates = gates if gates is not None else {}

    async def receive(self, msg: Any) -> Any:
        if isinstance(msg, Job):
            gate = self.gates.get(self.ctx.name)
            if gate is not None:
                await gate.wait()
            await trio.sleep(msg.work)
            self.log.append((self.ctx.name, msg.key))
            if msg.crash:
                raise RuntimeError("worker crashed on purpose")
        return self.ctx.name


def app(pool: Supervisor) -> Supervisor:
    return Supervisor("app", children=[pool])


def worker_names(system: runtime.System) -> list[str]:
    return sorted(i.name for i in system.which_children("/app/pool") if i.name != "router")


def nonzero(counts: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in counts.items() if v}


# -- a removed worker that leaves on its own while retiring ---------------------------


async def test_a_grow_that_takes_back_a_retired_worker_which_crashed_meanwhile_keeps_the_size(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A grow takes back only retired workers that are still alive: a temporary worker
    # that crashed while retiring is replaced by a new one, so Resize(3) is answered 3,
    # three workers are routed to from then on, and no message is lost to the dead one.
    log: list[tuple[str, Any]] = []
    gates = {"w1": trio.Event(), "w2": trio.Event()}
    worker = child(Worker, args=(log,), kwargs={"gates": gates}, restart="temporary")
    with trio.fail_after(WAIT):
        async with runtime.open_system(app(Pool("pool", worker=worker, size=3))) as system:
            pool = system.ref("/app/pool")
            pool.tell(Job(0))  # w0
            pool.tell(Job(1, crash=True))  # w1, held, crashes when let go
            pool.tell(Job(2))  # w2, held
            await trio.testing.wait_all_tasks_blocked()
            pool.tell(Resize(1))  # retires w2 and w1; stopping w2 waits for its job
            await trio.testing.wait_all_tasks_blocked()
            gates["w1"].set()  # w1 crashes while retiring: temporary, gone for good
            await trio.testing.wait_all_tasks_blocked()
            answers: list[Any] = []
            async with trio.open_nursery() as nursery:

                async def grow() -> None:
                    answers.append(await pool.ask(Resize(3), timeout=None))

                nursery.start_soon(grow)
                await trio.testing.wait_all_tasks_blocked()
                gates["w2"].set()
            await trio.testing.wait_all_tasks_blocked()
            failures = []
            for i in range(10, 16):
                try:
                    await pool.ask(Job(i), timeout=5)
                except runtime.TroupeError as error:
                    failures.append(type(error).__name__)
            size = await pool.ask(PoolSize())
            assert (answers, size, len(worker_names(system)), failures) == ([3], 3, 3, [])
            assert nonzero(system.snapshot().dead_letters) == {"crashed": 1}


# -- hand-over into a router with a full mailbox ---------------------------------------


async def test_a_shrink_under_load_hands_over_without_dropping(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A shrink drops nothing, even under load: a removed worker's queue is handed to
    # the router whole, past the router's capacity, so a full router mailbox does not
    # turn the handed-over messages into `overflow` dead letters.
    log: list[tuple[str, Any]] = []
    gates = {"w0": trio.Event(), "w1": trio.Event()}
    worker = child(Worker, args=(log,), kwargs={"gates": gates}, mailbox=Mailbox(capacity=5))
    sent = 0
    with trio.fail_after(WAIT):
        async with runtime.open_system(app(Pool("pool", worker=worker, size=2))) as system:
            pool = system.ref("/app/pool")
            for _ in range(10):  # 5 each: one in hand, 4 queued
                pool.tell(Job(sent))
                sent += 1
            await trio.testing.wait_all_tasks_blocked()
            pool.tell(Resize(1))  # w1 retires; its stop waits for the job in hand
            await trio.testing.wait_all_tasks_blocked()
            for _ in range(2):  # w0's mailbox fills; the router waits for room there
                pool.tell(Job(sent))
                sent += 1
            await trio.testing.wait_all_tasks_blocked()
            while True:  # the load: the router's own mailbox fills up
                try:
                    pool.tell(Job(sent))
                except runtime.MailboxFull:
                    break
                sent += 1
            gates["w1"].set()  # w1 finishes its job and stops: 4 queued handed over
            await trio.testing.wait_all_tasks_blocked()
            gates["w0"].set()
            while len(log) < sent and not any(system.snapshot().dead_letters.values()):
                await trio.sleep(1)
            while len(log) + sum(system.snapshot().dead_letters.values()) < sent:
                await trio.sleep(1)
            assert nonzero(system.snapshot().dead_letters) == {}
            assert Counter(k for _, k in log) == Counter(range(sent))


# -- the router restarts in the middle of a shrink -----------------------------------


@pytest.mark.parametrize("routing", ["round_robin", "broadcast", "hash"])
async def test_a_router_crash_in_the_middle_of_a_shrink_keeps_the_asked_size(
    autojump_clock: trio.testing.MockClock, routing: str
) -> None:
    # A router that crashes while it waits for a removed worker to stop comes back at
    # the size it was asked for, and the shrink still drops nothing, for every routing.
    log: list[tuple[str, Any]] = []
    gates = {"w2": trio.Event()}
    how: Any = consistent_hash(key=lambda m: m.key) if routing == "hash" else routing
    worker = child(Worker, args=(log,), kwargs={"gates": gates})
    tree = app(Pool("pool", worker=worker, size=3, routing=how, max_restarts=100, within=1))
    with trio.fail_after(WAIT):
        async with runtime.open_system(tree) as system:
            pool = system.ref("/app/pool")
            for i in range(12):
                pool.tell(Job(i))
            await trio.testing.wait_all_tasks_blocked()
            resized: list[Any] = []
            async with trio.open_nursery() as nursery:

                async def shrink() -> None:
                    try:
                        resized.append(await pool.ask(Resize(2), timeout=None))
                    except runtime.TroupeError as error:
                        resized.append(type(error).__name__)

                nursery.start_soon(shrink)
                await trio.testing.wait_all_tasks_blocked()
                crash(pool)  # the router, while it waits for w2 to stop
                await trio.testing.wait_all_tasks_blocked()
                gates["w2"].set()
            await trio.sleep(5)
            assert system.snapshot().find("/app/pool/router").restarts == 1
            assert await pool.ask(PoolSize()) == 2
            assert worker_names(system) == ["w0", "w1"]
            assert await pool.ask(Resize(2)) == 2
            assert nonzero(system.snapshot().dead_letters) == {}
            keys = Counter(k for _, k in log)
            expected = Counter(range(12))
            if routing == "broadcast":
                expected = Counter({i: 3 for i in range(12)})
            assert keys == expected


# -- Ctrl-C in a handler while a shrink is under way --------------------------------


class Interrupting(Worker):
    async def receive(self, msg: Any) -> Any:
        if msg == "interrupt":
            raise KeyboardInterrupt
        return await super().receive(msg)


async def test_a_keyboard_interrupt_in_a_worker_mid_shrink_stops_the_system_and_answers_all(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A KeyboardInterrupt raised in a worker's handler during a shrink stops the system
    # gracefully and propagates out of open_system; every ask is answered once and
    # every message is handled or dead-lettered once.
    log: list[tuple[str, Any]] = []
    gates = {"w2": trio.Event()}
    worker = child(Interrupting, args=(log,), kwargs={"gates": gates}, shutdown=1.0)
    answers: dict[Any, list[Any]] = {}
    dead = 0
    interrupted = []
    with trio.fail_after(WAIT):
        try:
            async with trio.open_nursery() as outside:
                async with runtime.open_system(app(Pool("pool", worker=worker, size=3))) as system:
                    pool = system.ref("/app/pool")

                    async def ask(key: Any, msg: Any) -> None:
                        try:
                            answer = await pool.ask(msg, timeout=None)
                        except runtime.TroupeError as error:
                            answer = type(error).__name__
                        answers.setdefault(key, []).append(answer)

                    for i in range(9):
                        outside.start_soon(ask, i, Job(i, 0.5))
                    await trio.testing.wait_all_tasks_blocked()
                    outside.start_soon(ask, "resize", Resize(1))
                    await trio.testing.wait_all_tasks_blocked()
                    pool.tell("interrupt")  # to w0 or w1, while w2 is held retiring
                    await trio.sleep(WAIT)
        except* KeyboardInterrupt as group:  # the outside nursery wraps it
            interrupted.append(group)
    assert interrupted
    dead = nonzero(system.snapshot().dead_letters)
    assert {k: len(v) for k, v in answers.items()} == {k: 1 for k in [*range(9), "resize"]}
    # each job handled or dead-lettered once (the interrupting message too)
    assert len(log) + sum(dead.values()) == 10, (log, dead)


# -- foreign threads ----------------------------------------------------------------


class RealWorker(Actor):
    def __init__(self, log: list[Any], lock: threading.Lock) -> None:
        self.log = log
        self.lock = lock

    async def receive(self, msg: Any) -> Any:
        if isinstance(msg, Job):
            await trio.sleep(msg.work)
            with self.lock:
                self.log.append(msg.key)
        return self.ctx.name


def test_threads_asking_and_telling_a_pool_while_other_threads_resize_it() -> None:
    # Foreign threads can ask (ask_blocking) and tell a pool while another thread keeps
    # resizing it: every ask is answered once and every message handled, none dead-lettered.
    log: list[Any] = []
    lock = threading.Lock()
    worker = child(RealWorker, args=(log, lock), mailbox=Mailbox(capacity=3))
    tree = app(Pool("pool", worker=worker, size=2, routing=consistent_hash(lambda m: m.key % 7)))
    answers: dict[Any, list[Any]] = {}
    errors: list[BaseException] = []
    with runtime.start_in_thread(tree) as system:
        pool = system.ref("/app/pool")

        def asker(t: int) -> None:
            try:
                for i in range(60):
                    key = t * 1000 + i
                    if i % 3:
                        answer = pool.ask_blocking(Job(key, 0.001), timeout=30)
                        with lock:
                            answers.setdefault(key, []).append(answer)
                    else:
                        pool.tell(Job(key, 0.001), timeout=30)
            except BaseException as error:
                errors.append(error)

        def resizer() -> None:
            try:
                for n in [5, 1, 7, 2, 9, 1, 3] * 3:
                    if n % 2:
                        pool.ask_blocking(Resize(n), timeout=30)
                    else:
                        pool.tell(Resize(n))
            except BaseException as error:
                errors.append(error)

        threads = [threading.Thread(target=asker, args=(t,)) for t in range(4)]
        threads.append(threading.Thread(target=resizer))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert errors == []
        assert pool.ask_blocking(Resize(3), timeout=30) == 3
        for _ in range(300):
            with lock:
                if len(log) >= 240:
                    break
            threading.Event().wait(0.05)
        snap = system.snapshot()
        assert nonzero(snap.dead_letters) == {}
        assert len([i for i in snap.find("/app/pool").children if i.name != "router"]) == 3
    assert all(len(v) == 1 for v in answers.values()) and len(answers) == 160
    assert Counter(log) == Counter(t * 1000 + i for t in range(4) for i in range(60))


# -- the pool gives up and is restarted: the size it had ---------------------------


async def test_a_pool_that_gives_up_is_restarted_with_the_size_it_was_resized_to(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A pool that exceeds its own max_restarts and is restarted by its supervisor comes
    # back at the size it was last resized to, and so does its router's next restart.
    log: list[tuple[str, Any]] = []
    tree = app(Pool("pool", worker=child(Worker, args=(log,)), size=2, max_restarts=0, within=60))
    with trio.fail_after(WAIT):
        async with runtime.open_system(tree) as system:
            pool = system.ref("/app/pool")
            assert await pool.ask(Resize(5)) == 5
            with pytest.raises(runtime.ActorCrashed):
                await pool.ask(Job("boom", crash=True))  # past max_restarts=0: gives up
            await trio.sleep(10)
            assert system.snapshot().find("/app/pool").restarts == 1
            sizes = [(await pool.ask(PoolSize()), len(worker_names(system)))]
            crash(pool)  # the router alone: it comes back at the size it finds stored
            await trio.sleep(10)
            sizes.append((await pool.ask(PoolSize()), len(worker_names(system))))
            assert sizes == [(5, 5), (5, 5)]


async def test_an_asked_resize_is_never_answered_with_a_size_below_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # An asked Resize(n) is answered n even if a kept temporary worker crashes while a
    # removed one finishes its message: a worker that leaves while the resize is under
    # way is replaced by it (one that leaves after it is not).
    gates = {"w1": trio.Event()}
    worker = child(Worker, args=([],), kwargs={"gates": gates}, restart="temporary")
    answers: list[Any] = []
    with trio.fail_after(WAIT):
        async with runtime.open_system(app(Pool("pool", worker=worker, size=2))) as system:
            pool = system.ref("/app/pool")
            pool.tell(Job(0, crash=True, work=1))  # w0: crashes in a second
            pool.tell(Job(1))  # w1: held
            await trio.testing.wait_all_tasks_blocked()
            async with trio.open_nursery() as nursery:

                async def shrink() -> None:
                    try:
                        answers.append(await pool.ask(Resize(1), timeout=None))
                    except runtime.TroupeError as error:
                        answers.append(type(error).__name__)

                nursery.start_soon(shrink)
                await trio.sleep(2)  # w0 crashed meanwhile; w1 still held, retiring
                gates["w1"].set()
    assert answers == [1]


class Sibling(Actor):
    async def receive(self, msg: Any) -> Any:
        raise RuntimeError("sibling crashed on purpose")


@pytest.mark.parametrize("strategy", ["one_for_all", "rest_for_one"])
async def test_a_pool_restarted_as_a_bystander_keeps_the_size_it_was_resized_to(
    autojump_clock: trio.testing.MockClock, strategy: str
) -> None:
    # A pool restarted because a sibling crashed (one_for_all / rest_for_one) comes
    # back at the size it was last resized to, and so does its router after a crash.
    log: list[tuple[str, Any]] = []
    pool_spec = Pool("pool", worker=child(Worker, args=(log,)), size=2)
    siblings = [child(Sibling, name="sib")]
    children = [*siblings, pool_spec] if strategy == "rest_for_one" else [pool_spec, *siblings]
    tree = Supervisor("app", strategy=strategy, children=children)  # type: ignore[arg-type]
    with trio.fail_after(WAIT):
        async with runtime.open_system(tree) as system:
            pool = system.ref("/app/pool")
            assert await pool.ask(Resize(5)) == 5
            system.ref("/app/sib").tell("crash")
            await trio.sleep(10)
            assert system.snapshot().find("/app/pool").restarts == 1
            sizes = [(await pool.ask(PoolSize()), len(worker_names(system)))]
            crash(pool)  # the router alone: it comes back at the size it finds stored
            await trio.sleep(10)
            sizes.append((await pool.ask(PoolSize()), len(worker_names(system))))
            assert sizes == [(5, 5), (5, 5)]


# -- the hash ring after many resizes -----------------------------------------------


def router_of(system: runtime.System) -> Any:
    return system._lookup("/app/pool/router").behaviour.actor


NAN = float("nan")


@pytest.mark.parametrize("seed", range(3))
async def test_the_ring_maps_every_key_to_a_routed_worker_after_many_resizes(
    autojump_clock: trio.testing.MockClock, seed: int
) -> None:
    # Whatever resizes and router crashes came before, the hash ring holds exactly the
    # routed workers' points, and equal keys (1, 1.0, True) go to the same worker while
    # the size holds.
    import random

    from actors.pool import VIRTUAL_NODES

    rnd = random.Random(seed)
    log: list[tuple[str, Any]] = []
    routing = consistent_hash(key=lambda m: m.key)
    tree = app(
        Pool("pool", worker=child(Worker, args=(log,)), size=3, routing=routing, max_restarts=1000)
    )
    keys: list[Any] = [*range(40), "a", b"a", (1, "x"), NAN, 2**70, -1, -2, 1.5, None]
    with trio.fail_after(WAIT):
        async with runtime.open_system(tree) as system:
            pool = system.ref("/app/pool")
            for step in range(30):
                pool.tell(Resize(rnd.randint(1, 9)))
                for k in rnd.sample(range(40), 8):
                    pool.tell(Job(k, rnd.random()))
                if rnd.random() < 0.1:
                    crash(pool)
                await trio.sleep(rnd.random() * 0.5)
                if step % 5 == 4:
                    n = rnd.randint(1, 9)
                    assert await pool.ask(Resize(n), timeout=None) == n
                    await trio.testing.wait_all_tasks_blocked()
                    router = router_of(system)
                    ring = router.ring
                    assert ring.points == sorted(ring.points)
                    assert len(ring.points) == VIRTUAL_NODES * n
                    assert set(ring.owners) == set(router.workers)
                    assert sorted(r.name for r in router.workers) == worker_names(system)
                    owners = {}
                    for k in keys:
                        owners[k] = await pool.ask(Job(k), timeout=None)
                        assert owners[k] == await pool.ask(
                            Job(k), timeout=None
                        )  # stable while it holds
                    assert set(owners.values()) <= set(worker_names(system))
                    assert owners[1] == await pool.ask(Job(1.0)) == await pool.ask(Job(True))
            assert nonzero(system.snapshot().dead_letters) == {}


class BadHash:
    def __init__(self, error: BaseException) -> None:
        self.error = error

    def __hash__(self) -> int:
        raise self.error

    def __eq__(self, other: object) -> bool:
        return self is other


@pytest.mark.parametrize("error", [ValueError("no hash"), RecursionError(), MemoryError()])
async def test_a_key_whose_hash_raises_fails_that_message_alone(
    autojump_clock: trio.testing.MockClock, error: BaseException
) -> None:
    # A key whose hash raises fails that one message (the asker gets ActorCrashed, a
    # tell is dead-lettered `crashed`) and restarts nothing.
    routing = consistent_hash(key=lambda m: m.key)
    tree = app(Pool("pool", worker=child(Worker, args=([],)), size=3, routing=routing))
    with trio.fail_after(WAIT):
        async with runtime.open_system(tree) as system:
            pool = system.ref("/app/pool")
            with pytest.raises(runtime.ActorCrashed):
                await pool.ask(Job(BadHash(error)))
            pool.tell(Job(BadHash(error)))
            assert await pool.ask(Job(1)) in {"w0", "w1", "w2"}
            snap = system.snapshot()
            assert snap.find("/app/pool/router").restarts == 0
            assert nonzero(snap.dead_letters) == {"crashed": 2}


# -- broadcast pools: asks and tells across shrinks ----------------------------------


async def test_broadcast_tells_reach_each_worker_once_and_asks_one_across_shrinks(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Across shrinks and grows a broadcast tell reaches each worker routed to at the
    # time once (a removed worker handles its own copies first), an ask reaches exactly
    # one worker, and each Resize ask is answered once.
    log: list[tuple[str, Any]] = []
    tree = app(Pool("pool", worker=child(Worker, args=(log,)), size=4, routing="broadcast"))
    answers: dict[Any, list[Any]] = {}
    with trio.fail_after(WAIT):
        async with runtime.open_system(tree) as system:
            pool = system.ref("/app/pool")
            async with trio.open_nursery() as nursery:

                async def ask(key: Any, msg: Any) -> None:
                    answers.setdefault(key, []).append(await pool.ask(msg, timeout=None))

                for i in range(20):
                    pool.tell(Job(("tell", i), 0.2))
                    nursery.start_soon(ask, i, Job(("ask", i), 0.2))
                    if i in (5, 12):
                        nursery.start_soon(ask, ("resize", i), Resize(1 if i == 5 else 3))
                    await trio.sleep(0.05)
            await trio.sleep(30)
            assert nonzero(system.snapshot().dead_letters) == {}
    assert all(len(v) == 1 for v in answers.values()) and len(answers) == 22
    asked = Counter(k for _, k in log if k[0] == "ask")
    assert asked == Counter(("ask", i) for i in range(20))
    for i in range(20):  # each worker routed to at the time got one copy, none twice
        names = [n for n, k in log if k == ("tell", i)]
        assert len(names) == len(set(names)) >= 1


# -- no leftovers after pools come and go ---------------------------------------------


def tasks_under(task: trio.lowlevel.Task) -> list[trio.lowlevel.Task]:
    found = []
    for nursery in task.child_nurseries:
        for t in nursery.child_tasks:
            found.append(t)
            found.extend(tasks_under(t))
    return found


async def test_pools_started_resized_and_terminated_leave_no_task_or_slot(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Pools of each routing, started, resized mid-work, crashed and terminated again
    # and again, leave no task running and no cell alive.
    import logging

    from runtime.cell import Cell

    # pytest's log capture keeps each crash record's traceback, and its frames the cells
    monkeypatch.setattr(logging.getLogger("troupe"), "propagate", False)

    log: list[tuple[str, Any]] = []
    with trio.fail_after(WAIT):
        async with runtime.open_system(Supervisor("app")) as system:
            root = trio.lowlevel.current_root_task()
            before = len(tasks_under(root))
            gc.collect()  # earlier tests' failures keep their frames (and cells): not ours
            earlier = {id(o) for o in gc.get_objects() if isinstance(o, Cell)}
            for round_ in range(12):
                routing: Any = ["round_robin", "broadcast", "smallest_mailbox"][round_ % 3]
                if round_ % 4 == 3:
                    routing = consistent_hash(key=lambda m: m.key)
                spec = Pool(
                    "pool", worker=child(Worker, args=(log,), shutdown=1.0), size=2, routing=routing
                )
                await system.start_child("/app", spec)
                pool = system.ref("/app/pool")
                for i in range(10):
                    pool.tell(Job(i, 0.3))
                pool.tell(Resize(6))
                await trio.sleep(0.1)
                pool.tell(Resize(1))
                crash(pool)
                await trio.sleep(0.1)
                await system.terminate_child("/app/pool")
                del pool, spec
            await trio.testing.wait_all_tasks_blocked()
            leftover = [t.name for t in tasks_under(root)]
            assert len(leftover) == before, leftover
            gc.collect()
            cells = [
                o.path for o in gc.get_objects() if isinstance(o, Cell) and id(o) not in earlier
            ]
            assert Counter(p for p in cells if p.startswith("/app/pool")) == Counter()


# -- a removed worker that crashes on the message in hand -----------------------------


@pytest.mark.parametrize("restart", ["permanent", "temporary"])
async def test_a_removed_worker_crashing_on_the_message_in_hand_still_hands_its_queue_on(
    autojump_clock: trio.testing.MockClock, restart: str
) -> None:
    # A removed worker (permanent or temporary) that crashes on the message in hand
    # still has its queue routed to the remaining workers: a crash during the stop
    # ends it as a stop.
    log: list[tuple[str, Any]] = []
    gates = {"w1": trio.Event()}
    worker = child(Worker, args=(log,), kwargs={"gates": gates}, restart=restart)
    answers: list[Any] = []
    with trio.fail_after(WAIT):
        async with runtime.open_system(app(Pool("pool", worker=worker, size=2))) as system:
            pool = system.ref("/app/pool")
            pool.tell(Job(0))
            pool.tell(Job(1, crash=True))  # w1, held, crashes when let go
            for i in range(2, 8):
                pool.tell(Job(i))  # w0: 2, 4, 6; w1 queued: 3, 5, 7
            await trio.testing.wait_all_tasks_blocked()
            async with trio.open_nursery() as nursery:

                async def shrink() -> None:
                    answers.append(await pool.ask(Resize(1), timeout=None))

                nursery.start_soon(shrink)
                await trio.testing.wait_all_tasks_blocked()
                gates["w1"].set()
            await trio.testing.wait_all_tasks_blocked()
            assert answers == [1]
            assert worker_names(system) == ["w0"]
            assert nonzero(system.snapshot().dead_letters) == {"crashed": 1}
            assert sorted(k for n, k in log if n == "w0") == [0, 2, 3, 4, 5, 6, 7]


# -- asks that give up while a shrink moves their message -------------------------------


async def test_asks_that_time_out_or_are_cancelled_during_a_shrink_are_counted_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Asks that time out or are cancelled while a shrink moves their message get one
    # outcome each and their messages are handled once; a Resize asker that gives up
    # leaves the resize going on.
    log: list[tuple[str, Any]] = []
    gates = {"w2": trio.Event()}
    worker = child(Worker, args=(log,), kwargs={"gates": gates})
    outcomes: dict[Any, list[Any]] = {}
    with trio.fail_after(WAIT):
        async with runtime.open_system(app(Pool("pool", worker=worker, size=3))) as system:
            pool = system.ref("/app/pool")
            async with trio.open_nursery() as nursery:

                async def ask(key: Any, msg: Any, timeout: float | None, cancel: float) -> None:
                    outcome: Any = "cancelled"
                    with trio.move_on_after(cancel):
                        try:
                            outcome = await pool.ask(msg, timeout=timeout)
                        except runtime.TroupeError as error:
                            outcome = type(error).__name__
                    outcomes.setdefault(key, []).append(outcome)

                for i in range(30):  # w2 gets 2, 5, 8, ... held behind its gate
                    timeout, cancel = [(None, 1e9), (3.0, 1e9), (None, 3.0)][i % 3]
                    nursery.start_soon(ask, i, Job(i, 0.1), timeout, cancel)
                await trio.testing.wait_all_tasks_blocked()
                nursery.start_soon(ask, "resize-timeout", Resize(1), 1.0, 1e9)
                nursery.start_soon(ask, "resize-cancel", Resize(1), None, 1.0)
                await trio.sleep(4)  # past the asks' limits, within w2's shutdown (5 s)
                gates["w2"].set()
            await trio.sleep(10)
            assert await pool.ask(PoolSize()) == 1 and worker_names(system) == ["w0"]
            dead = nonzero(system.snapshot().dead_letters)
    assert {k: len(v) for k, v in outcomes.items()} == {
        k: 1 for k in [*range(30), "resize-timeout", "resize-cancel"]
    }
    assert Counter(k for _, k in log) == Counter(range(30))  # all handled, once
    timed_out = sum(v in (["AskTimeout"], ["cancelled"]) for v in outcomes.values())
    # the only dead letters: the late replies to asks that had timed out or were cancelled
    assert set(dead) <= {"timeout"} and dead.get("timeout", 0) <= timed_out, (dead, outcomes)

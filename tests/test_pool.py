"""`actors.Pool`: N identical workers behind one ref, routed, supervised, resizable."""

from __future__ import annotations

from collections import Counter
from typing import Any

import attrs
import pytest
import trio
import trio.testing

import runtime
from actors import ConsistentHash, Pool, PoolSize, Resize, consistent_hash
from runtime import Actor, Supervisor, child

WAIT = 10.0


@attrs.frozen
class Job:
    key: Any = None
    crash: bool = False


class Worker(Actor):
    """Records every message it handles in a shared log as (worker name, message)."""

    def __init__(self, log: list[tuple[str, Any]], gate: trio.Event | None = None) -> None:
        self.log = log
        self.gate = gate

    async def receive(self, msg: Any) -> Any:
        if msg == "name":
            return self.ctx.name
        if self.gate is not None:
            await self.gate.wait()
        self.log.append((self.ctx.name, msg))
        if isinstance(msg, Job) and msg.crash:
            raise RuntimeError("worker crashed on purpose")
        return self.ctx.name


def pool_tree(
    log: list[tuple[str, Any]],
    size: int = 4,
    routing: str | ConsistentHash = "round_robin",
    gate: trio.Event | None = None,
    shutdown: float | None = 5.0,
    **kw: Any,
) -> Supervisor:
    worker = child(Worker, args=(log,), kwargs={"gate": gate}, shutdown=shutdown)
    return Supervisor(
        "app", children=[Pool("pool", worker=worker, size=size, routing=routing, **kw)]
    )


def names(log: list[tuple[str, Any]]) -> Counter[str]:
    return Counter(name for name, _ in log)


def worker_names(system: runtime.System) -> list[str]:
    """The pool's workers: its children but the router."""
    return [info.name for info in system.which_children("/app/pool") if info.name != "router"]


# -- shape ---------------------------------------------------------------------


async def test_pool_is_a_supervisor_whose_ref_is_its_router() -> None:
    log: list[tuple[str, Any]] = []
    with trio.fail_after(WAIT):
        async with runtime.open_system(pool_tree(log, size=3)) as system:
            pool = system.ref("/app/pool")
            assert pool.path == "/app/pool/router"
            assert worker_names(system) == ["w0", "w1", "w2"]
            assert await pool.ask(PoolSize()) == 3
            snap = system.snapshot()
            assert snap.find("/app/pool").kind == "supervisor"
            assert snap.find("/app/pool/router").cls == "Router"
            stats = snap.find("/app/pool/router").stats
            assert stats["routing"] == "round_robin" and stats["workers"] == 3


def test_a_receiver_that_is_not_a_child_is_refused_with_the_names() -> None:
    with pytest.raises(ValueError, match=r"receiver='rooter' is not one of 'svc'.s children"):
        Supervisor("svc", children=[child(Worker, name="router", args=([],))], receiver="rooter")


@pytest.mark.parametrize("restart", ["transient", "temporary"])
def test_a_receiver_must_be_permanent(restart: str) -> None:
    """One that stopped for good would leave the supervisor's path unreachable."""
    with pytest.raises(ValueError, match=rf"receiver='r' is a {restart} child"):
        Supervisor(
            "svc", children=[child(Worker, name="r", args=([],), restart=restart)], receiver="r"
        )


async def test_a_plain_supervisor_is_addressed_through_its_receiver() -> None:
    log: list[tuple[str, Any]] = []
    tree = Supervisor(
        "app",
        children=[
            Supervisor(
                "svc",
                children=[
                    child(Worker, name="a", args=(log,)),
                    child(Worker, name="b", args=(log,)),
                ],
                receiver="b",
            )
        ],
    )
    with trio.fail_after(WAIT):
        async with runtime.open_system(tree) as system:
            ref = system.ref("/app/svc")
            assert ref.path == "/app/svc/b"
            ref.tell("hello")
            await trio.testing.wait_all_tasks_blocked()
            assert log == [("b", "hello")]


# -- routing -------------------------------------------------------------------


async def test_round_robin_spreads_evenly() -> None:
    log: list[tuple[str, Any]] = []
    with trio.fail_after(WAIT):
        async with runtime.open_system(pool_tree(log, size=4)) as system:
            pool = system.ref("/app/pool")
            for i in range(40):
                pool.tell(Job(i))
            answers = [await pool.ask(Job(("ask", i))) for i in range(8)]
            await trio.testing.wait_all_tasks_blocked()
    assert names(log) == {"w0": 12, "w1": 12, "w2": 12, "w3": 12}
    assert Counter(answers) == {"w0": 2, "w1": 2, "w2": 2, "w3": 2}
    # each worker got every 4th message, in order
    for k, name in enumerate(["w0", "w1", "w2", "w3"]):
        got = [m.key for n, m in log if n == name and isinstance(m.key, int)]
        assert got == list(range(k, 40, 4))


async def test_ask_through_the_pool_reaches_exactly_one_worker() -> None:
    log: list[tuple[str, Any]] = []
    with trio.fail_after(WAIT):
        for routing in ("round_robin", "smallest_mailbox", consistent_hash(key=repr)):
            log.clear()
            async with runtime.open_system(pool_tree(log, size=3, routing=routing)) as system:
                pool = system.ref("/app/pool")
                answer = await pool.ask(Job("once"))
                await trio.testing.wait_all_tasks_blocked()
                assert len(log) == 1, routing
                assert log[0] == (answer, Job("once")), routing


async def test_smallest_mailbox_picks_the_least_loaded_worker() -> None:
    log: list[tuple[str, Any]] = []
    gate = trio.Event()
    with trio.fail_after(WAIT):
        tree = pool_tree(log, size=3, routing="smallest_mailbox", gate=gate)
        async with runtime.open_system(tree) as system:
            w = {n: system.ref(f"/app/pool/{n}") for n in ("w0", "w1", "w2")}
            # load the workers directly: w0 busy + 3 queued, w1 busy + 1 queued, w2 busy
            for n, extra in (("w0", 3), ("w1", 1), ("w2", 0)):
                for i in range(1 + extra):
                    w[n].tell(("direct", n, i))
            await trio.testing.wait_all_tasks_blocked()
            assert [w[n].mailbox_depth for n in ("w0", "w1", "w2")] == [3, 1, 0]
            pool = system.ref("/app/pool")
            pool.tell(Job("a"))  # -> w2 (load 1), now 1 queued there
            await trio.testing.wait_all_tasks_blocked()
            assert w["w2"].mailbox_depth == 1
            pool.tell(Job("b"))  # w1 and w2 both have load 2: the first of them, w1
            await trio.testing.wait_all_tasks_blocked()
            pool.tell(Job("c"))  # w1: 3, w2: 2 -> w2
            await trio.testing.wait_all_tasks_blocked()
            assert [w[n].mailbox_depth for n in ("w0", "w1", "w2")] == [3, 2, 2]
            gate.set()
            await trio.testing.wait_all_tasks_blocked()
    routed = {m.key: n for n, m in log if isinstance(m, Job)}
    assert routed == {"a": "w2", "b": "w1", "c": "w2"}


async def test_broadcast_tells_reach_every_worker_and_an_ask_gets_one_reply() -> None:
    log: list[tuple[str, Any]] = []
    with trio.fail_after(WAIT):
        async with runtime.open_system(pool_tree(log, size=4, routing="broadcast")) as system:
            pool = system.ref("/app/pool")
            pool.tell(Job("all"))
            await pool.send(Job("all-again"))
            await trio.testing.wait_all_tasks_blocked()
            assert Counter(log) == Counter(
                [(f"w{i}", Job("all")) for i in range(4)]
                + [(f"w{i}", Job("all-again")) for i in range(4)]
            )
            log.clear()
            answers = [await pool.ask(Job(("question", i))) for i in range(4)]
            await trio.testing.wait_all_tasks_blocked()
            # one reply each, and the answering worker rotates
            assert sorted(answers) == ["w0", "w1", "w2", "w3"]
            assert system.snapshot().dead_letters.get("unhandled", 0) == 0


async def test_broadcast_ask_reaches_exactly_one_worker() -> None:
    log: list[tuple[str, Any]] = []
    with trio.fail_after(WAIT):
        async with runtime.open_system(pool_tree(log, size=3, routing="broadcast")) as system:
            pool = system.ref("/app/pool")
            answer = await pool.ask(Job("once"))
            await trio.testing.wait_all_tasks_blocked()
            assert log == [(answer, Job("once"))]


async def test_consistent_hash_keeps_keys_on_one_worker_and_most_in_place_on_resize() -> None:
    log: list[tuple[str, Any]] = []
    keys = [f"user-{i}" for i in range(200)]
    routing = consistent_hash(key=lambda msg: msg.key)
    with trio.fail_after(WAIT):
        async with runtime.open_system(pool_tree(log, size=4, routing=routing)) as system:
            pool = system.ref("/app/pool")
            before = {k: await pool.ask(Job(k)) for k in keys}
            again = {k: await pool.ask(Job(k)) for k in reversed(keys)}
            assert again == before  # the same key always reaches the same worker
            assert set(before.values()) == {"w0", "w1", "w2", "w3"}  # all of them used
            assert min(Counter(before.values()).values()) >= 20  # and not lopsided

            assert await pool.ask(Resize(5)) == 5
            grown = {k: await pool.ask(Job(k)) for k in keys}
            moved = [k for k in keys if grown[k] != before[k]]
            assert {grown[k] for k in moved} <= {"w4"}  # keys only move to the new worker
            assert 10 <= len(moved) <= 80  # about 1/5 of them

            assert await pool.ask(Resize(4)) == 4
            shrunk = {k: await pool.ask(Job(k)) for k in keys}
            assert shrunk == before  # back to where they were
            stats = system.snapshot().find("/app/pool/router").stats
            assert stats["routing"] == "consistent_hash"


# -- failures ------------------------------------------------------------------


async def test_a_crashing_worker_restarts_alone_and_no_queued_message_is_lost() -> None:
    log: list[tuple[str, Any]] = []
    gate = trio.Event()
    with trio.fail_after(WAIT):
        async with runtime.open_system(pool_tree(log, size=3, gate=gate)) as system:
            pool = system.ref("/app/pool")
            # round robin: w0 gets 0, 3(crash), 6, 9; w1 gets 1, 4, 7, 10; w2 the rest
            for i in range(12):
                pool.tell(Job(i, crash=(i == 3)))
            await trio.testing.wait_all_tasks_blocked()
            gate.set()
            await trio.testing.wait_all_tasks_blocked()
            assert await pool.ask(PoolSize()) == 3
            snap = system.snapshot()
            assert snap.find("/app/pool/w0").restarts == 1
            assert snap.find("/app/pool/w1").restarts == 0
            assert snap.find("/app/pool/w2").restarts == 0
            assert snap.find("/app/pool/router").restarts == 0
            assert snap.find("/app/pool").restarts == 0
    handled = {m.key for _, m in log}
    assert handled == set(range(12))  # the crashing one was handled too, then it crashed
    assert [m.key for n, m in log if n == "w0"] == [0, 3, 6, 9]  # w0's queue survived
    assert [m.key for n, m in log if n == "w1"] == [1, 4, 7, 10]
    assert [m.key for n, m in log if n == "w2"] == [2, 5, 8, 11]


async def test_an_ask_to_a_crashing_worker_fails_with_actor_crashed() -> None:
    log: list[tuple[str, Any]] = []
    with trio.fail_after(WAIT):
        async with runtime.open_system(pool_tree(log, size=2)) as system:
            pool = system.ref("/app/pool")
            with pytest.raises(runtime.ActorCrashed):
                await pool.ask(Job("x", crash=True))
            assert await pool.ask(Job("y")) == "w1"
            assert await pool.ask(Job("z")) == "w0"  # restarted and back in the rotation


async def test_the_pools_max_restarts_and_within_are_its_own_intensity(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[tuple[str, Any]] = []
    with trio.fail_after(WAIT + 60):  # trio time: the clock jumps
        tree = pool_tree(log, size=2, max_restarts=1, within=60)
        async with runtime.open_system(tree) as system:
            pool = system.ref("/app/pool")
            with pytest.raises(runtime.ActorCrashed):
                await pool.ask(Job(1, crash=True))
            await trio.testing.wait_all_tasks_blocked()
            assert system.snapshot().find("/app/pool").restarts == 0  # one restart is allowed
            await trio.sleep(30)  # still within the 60 s window
            with pytest.raises(runtime.ActorCrashed):
                await pool.ask(Job(2, crash=True))
            await trio.testing.wait_all_tasks_blocked()
            # the second restart within 60 s: the pool gives up and its parent restarts it
            snap = system.snapshot()
            pool_info = snap.find("/app/pool")
            assert pool_info.restarts == 1
            assert pool_info.last_error is not None
            assert pool_info.last_error.type == "RestartIntensityExceeded"
            assert "/app/pool gave up: more than 1 restarts within 60s" in (
                pool_info.last_error.message
            )
            assert snap.find("/app").restarts == 0
            assert await pool.ask(PoolSize()) == 2
            assert sorted([await pool.ask(Job(i)) for i in range(2)]) == ["w0", "w1"]


async def test_a_restart_of_the_pool_keeps_its_current_size(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[tuple[str, Any]] = []
    with trio.fail_after(WAIT):
        async with runtime.open_system(pool_tree(log, size=2, max_restarts=0)) as system:
            pool = system.ref("/app/pool")
            for size, restarts in ((4, 1), (1, 2)):
                assert await pool.ask(Resize(size)) == size
                with pytest.raises(runtime.ActorCrashed):  # max_restarts=0: the pool gives up
                    await pool.ask(Job("boom", crash=True))
                await trio.testing.wait_all_tasks_blocked()
                assert system.snapshot().find("/app/pool").restarts == restarts
                assert await pool.ask(PoolSize()) == size
                answers = {await pool.ask(Job(i)) for i in range(2 * size)}
                assert answers == {f"w{i}" for i in range(size)}


# -- resizing ------------------------------------------------------------------


async def test_resize_grows_and_shrinks_at_run_time() -> None:
    log: list[tuple[str, Any]] = []
    with trio.fail_after(WAIT):
        async with runtime.open_system(pool_tree(log, size=2)) as system:
            pool = system.ref("/app/pool")
            assert await pool.ask(Resize(4)) == 4
            assert await pool.ask(PoolSize()) == 4
            assert worker_names(system) == ["w0", "w1", "w2", "w3"]
            for i in range(8):
                pool.tell(Job(i))
            await trio.testing.wait_all_tasks_blocked()
            assert names(log) == {"w0": 2, "w1": 2, "w2": 2, "w3": 2}

            log.clear()
            assert await pool.ask(Resize(1)) == 1
            assert await pool.ask(PoolSize()) == 1
            assert worker_names(system) == ["w0"]
            with pytest.raises(runtime.ActorNotFound):
                system.ref("/app/pool/w3")
            for i in range(5):
                pool.tell(Job(i))
            await trio.testing.wait_all_tasks_blocked()
            assert names(log) == {"w0": 5}

            pool.tell(Resize(3))  # a tell works too (the pool gets there in the background)
            await trio.testing.wait_all_tasks_blocked()
            assert await pool.ask(PoolSize()) == 3
            assert worker_names(system) == ["w0", "w1", "w2"]
            assert system.snapshot().find("/app/pool/router").stats["workers"] == 3


async def test_a_resize_beyond_max_size_or_not_a_size_fails_that_ask_at_once() -> None:
    log: list[tuple[str, Any]] = []
    with trio.fail_after(WAIT):
        async with runtime.open_system(pool_tree(log, size=2, max_size=8)) as system:
            pool = system.ref("/app/pool")
            with pytest.raises(ValueError, match="max_size"):
                await pool.ask(Resize(9))
            pool.tell(Resize(10**9))  # told: nobody to tell, dead-lettered
            for size in (0, "3", 2.0):  # made around Resize's own check
                bad = Resize(2)
                object.__setattr__(bad, "size", size)
                with pytest.raises(ValueError):
                    await pool.ask(bad)
            assert await pool.ask(PoolSize()) == 2
            assert worker_names(system) == ["w0", "w1"]
            snap = system.snapshot()
            assert snap.find("/app/pool/router").restarts == 0
            assert snap.dead_letters.get("crashed", 0) == 5
            assert await pool.ask(Resize(8)) == 8  # max_size itself is fine
        async with runtime.open_system(pool_tree(log, size=2)) as system:
            pool = system.ref("/app/pool")
            for size in (1025, 10**9):  # the default max_size is 1,024
                with pytest.raises(ValueError, match="max_size"):
                    await pool.ask(Resize(size))
            assert await pool.ask(PoolSize()) == 2


async def test_the_pool_answers_other_messages_while_it_grows_and_shrinks() -> None:
    log: list[tuple[str, Any]] = []
    with trio.fail_after(WAIT):
        async with runtime.open_system(pool_tree(log, size=2)) as system:
            pool = system.ref("/app/pool")
            pool.tell(Resize(300))
            assert await pool.ask(PoolSize()) < 300  # answered before the resize is done
            assert await pool.ask(Job("meanwhile")) in {f"w{i}" for i in range(300)}
            assert await pool.ask(Resize(300)) == 300  # answered once it is
            assert len(worker_names(system)) == 300

            pool.tell(Resize(2))
            assert await pool.ask(Job("meanwhile")) in {"w0", "w1"}
            assert len(worker_names(system)) > 2  # still stopping the others
            assert await pool.ask(Resize(2)) == 2
            assert worker_names(system) == ["w0", "w1"]
            assert not any(system.snapshot().dead_letters.values())


async def test_a_shrink_hands_on_what_was_queued_at_removed_workers_and_drops_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[tuple[str, Any]] = []
    gate = trio.Event()
    answers: dict[int, list[str]] = {}
    resized = trio.Event()
    with trio.fail_after(WAIT):
        # a removed worker finishes the message in hand, however long it takes
        tree = pool_tree(log, size=4, gate=gate, shutdown=None)
        async with runtime.open_system(tree) as system, trio.open_nursery() as nursery:
            pool = system.ref("/app/pool")

            async def ask(i: int) -> None:
                answers.setdefault(i, []).append(await pool.ask(Job(i), timeout=None))

            async def shrink() -> None:
                assert await pool.ask(Resize(1), timeout=None) == 1
                resized.set()

            for i in range(20):  # every worker: one in hand (held at the gate), four queued
                nursery.start_soon(ask, i)
            await trio.testing.wait_all_tasks_blocked()
            for i in range(20, 40):  # and five more told
                pool.tell(Job(i))
            await trio.testing.wait_all_tasks_blocked()
            assert [system.ref(f"/app/pool/w{i}").mailbox_depth for i in range(4)] == [9] * 4
            nursery.start_soon(shrink)
            await trio.testing.wait_all_tasks_blocked()
            assert await pool.ask(PoolSize()) == 1  # w1..w3 no longer routed to
            for i in range(40, 44):  # so what comes now goes to w0
                pool.tell(Job(i))
            gate.set()
            await resized.wait()
            await trio.testing.wait_all_tasks_blocked()  # w0 works through what it got
            assert worker_names(system) == ["w0"]
            assert not any(system.snapshot().dead_letters.values())
    # every message handled once, every ask answered once, nothing lost
    assert Counter(m.key for _, m in log) == Counter(range(44))
    assert {i: len(a) for i, a in answers.items()} == {i: 1 for i in range(20)}
    assert {m.key for n, m in log if n != "w0"} <= set(range(40))


async def test_a_removed_worker_finishes_the_message_in_hand_and_hands_its_queue_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[tuple[str, Any]] = []
    gate = trio.Event()
    with trio.fail_after(WAIT):
        tree = pool_tree(log, size=2, gate=gate, shutdown=None)
        async with runtime.open_system(tree) as system, trio.open_nursery() as nursery:
            pool = system.ref("/app/pool")
            for i in range(10):  # w0 and w1: one in hand (held at the gate), four queued
                pool.tell(Job(i))
            await trio.testing.wait_all_tasks_blocked()
            assert system.ref("/app/pool/w1").mailbox_depth == 4
            nursery.start_soon(pool.ask, Resize(1))
            await trio.testing.wait_all_tasks_blocked()  # w1 is asked to stop
            gate.set()
            await trio.testing.wait_all_tasks_blocked()
            assert worker_names(system) == ["w0"]
            assert not any(system.snapshot().dead_letters.values())
    assert names(log) == {"w1": 1, "w0": 9}  # w1's queue was routed to w0
    assert sorted(m.key for _, m in log) == list(range(10))


async def test_a_grow_during_a_shrink_ends_with_the_new_size_and_drops_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    log: list[tuple[str, Any]] = []
    gate = trio.Event()
    answers: list[int] = []
    with trio.fail_after(WAIT):
        tree = pool_tree(log, size=3, gate=gate, shutdown=None)
        async with runtime.open_system(tree) as system:
            pool = system.ref("/app/pool")
            for i in range(6):  # every worker: one in hand, one queued
                pool.tell(Job(i))
            async with trio.open_nursery() as nursery:

                async def shrink() -> None:
                    answers.append(await pool.ask(Resize(1)))

                nursery.start_soon(shrink)
                await trio.testing.wait_all_tasks_blocked()
                assert await pool.ask(PoolSize()) == 1

                async def grow() -> None:
                    answers.append(await pool.ask(Resize(3)))  # supersedes the shrink

                nursery.start_soon(grow)
                await trio.testing.wait_all_tasks_blocked()
                for i in range(6, 9):
                    pool.tell(Job(i))
                gate.set()
            assert answers == [3, 3]  # both asks answered with the size reached
            assert worker_names(system) == ["w0", "w1", "w2"]
            await trio.testing.wait_all_tasks_blocked()
            assert not any(system.snapshot().dead_letters.values())
    assert sorted(m.key for _, m in log) == list(range(9))


async def test_a_broadcast_pool_lets_a_removed_worker_handle_its_own_copies(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A broadcast copy belongs to its worker: handing it to the others would
    deliver it twice, so a removed worker handles its copies before it stops."""
    log: list[tuple[str, Any]] = []
    gate = trio.Event()
    with trio.fail_after(WAIT):
        async with runtime.open_system(
            pool_tree(log, size=3, gate=gate, routing="broadcast")
        ) as system:
            pool = system.ref("/app/pool")
            for i in range(3):
                pool.tell(Job(i))  # every worker: one copy in hand, two queued
            await trio.testing.wait_all_tasks_blocked()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(pool.ask, Resize(1))
                await trio.testing.wait_all_tasks_blocked()
                gate.set()
            await trio.testing.wait_all_tasks_blocked()
            assert worker_names(system) == ["w0"]
            assert not any(system.snapshot().dead_letters.values())
    assert names(log) == {"w0": 3, "w1": 3, "w2": 3}  # each copy handled once


class Counted(Worker):
    """A worker that counts its incarnations in `made`."""

    def __init__(self, log: list[tuple[str, Any]], made: list[str]) -> None:
        super().__init__(log)
        self.made = made

    async def on_start(self) -> None:
        self.made.append(self.ctx.name)


async def test_a_resize_in_progress_is_superseded_by_the_next_one() -> None:
    log: list[tuple[str, Any]] = []
    made: list[str] = []
    worker = child(Counted, args=(log, made))
    tree = Supervisor("app", children=[Pool("pool", worker=worker, size=2)])
    answers: list[int] = []
    with trio.fail_after(WAIT):
        async with runtime.open_system(tree) as system, trio.open_nursery() as nursery:
            pool = system.ref("/app/pool")

            async def resize(size: int) -> None:
                answers.append(await pool.ask(Resize(size)))

            nursery.start_soon(resize, 1000)
            while len(made) < 10:  # the pool is growing
                await trio.sleep(0)
            assert await pool.ask(Resize(3)) == 3  # the latest target wins
            await trio.testing.wait_all_tasks_blocked()
            assert answers == [3]  # the superseded ask is answered with where the pool ended
            assert worker_names(system) == ["w0", "w1", "w2"]
            assert len(made) < 1000


class StartsOnlyThree(Worker):
    """A worker whose fourth copy cannot start."""

    async def on_start(self) -> None:
        if self.ctx.name == "w3":
            raise ConnectionError("no room for w3")


async def test_a_worker_that_fails_to_start_ends_the_resize_where_it_is() -> None:
    log: list[tuple[str, Any]] = []
    worker = child(StartsOnlyThree, args=(log,))
    tree = Supervisor("app", children=[Pool("pool", worker=worker, size=2)])
    with trio.fail_after(WAIT):
        async with runtime.open_system(tree) as system:
            pool = system.ref("/app/pool")
            with pytest.raises(ConnectionError, match="no room for w3"):
                await pool.ask(Resize(6))
            assert await pool.ask(PoolSize()) == 3
            assert worker_names(system) == ["w0", "w1", "w2"]
            snap = system.snapshot()
            assert snap.find("/app/pool/router").stats["target"] == 3
            assert snap.find("/app/pool/router").restarts == 0
            assert snap.find("/app/pool").restarts == 0
            assert {await pool.ask(Job(i)) for i in range(3)} == {"w0", "w1", "w2"}


async def test_a_key_function_that_fails_fails_that_message_and_restarts_nothing() -> None:
    # (this test used to expect the router to crash and restart on a bad key: a
    # routing failure is the message's, not the router's)
    log: list[tuple[str, Any]] = []

    def key(msg: Any) -> Any:
        if msg.key == "bad":
            raise LookupError("no key")
        if msg.key == "list":
            return [1, 2]  # unhashable: not a key
        return msg.key

    with trio.fail_after(WAIT):
        tree = pool_tree(log, size=2, routing=consistent_hash(key=key))
        async with runtime.open_system(tree) as system:
            pool = system.ref("/app/pool")
            assert await pool.ask(Resize(3)) == 3
            owners = {k: await pool.ask(Job(k)) for k in range(30)}
            for _ in range(8):
                with pytest.raises(runtime.ActorCrashed) as info:
                    await pool.ask(Job("bad"))
                assert isinstance(info.value.__cause__, LookupError)
            assert "/app/pool could not route Job: LookupError('no key')" in str(info.value)
            with pytest.raises(runtime.ActorCrashed) as info:
                await pool.ask(Job("list"))
            assert isinstance(info.value.__cause__, TypeError)
            pool.tell(Job("bad"))  # a tell has nobody to tell: only the dead letter
            assert await pool.ask(PoolSize()) == 3
            await trio.testing.wait_all_tasks_blocked()
            snap = system.snapshot()
            assert snap.dead_letters.get("crashed", 0) == 10
            router = snap.find("/app/pool/router")
            assert router.dead_lettered == 10
            assert router.stats["unroutable"] == 10
            assert router.restarts == 0 and router.state == "running"
            assert snap.find("/app/pool").restarts == 0
            assert [snap.find(f"/app/pool/w{i}").restarts for i in range(3)] == [0, 0, 0]
            assert {k: await pool.ask(Job(k)) for k in range(30)} == owners
            assert not {"bad", "list"} & {m.key for _, m in log}


# -- misuse --------------------------------------------------------------------


def test_invalid_pool_arguments_raise() -> None:
    log: list[tuple[str, Any]] = []
    worker = child(Worker, args=(log,))
    with pytest.raises(TypeError):
        Pool("p", worker=Worker, size=2)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Pool("p", worker=Supervisor("s"), size=2)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        Pool("p", worker=worker, routing="random")
    with pytest.raises(ValueError):
        Pool("p", worker=worker, routing="consistent_hash")  # needs consistent_hash(key)
    for size in (0, -1, 2.5, "3"):
        with pytest.raises(ValueError):
            Pool("p", worker=worker, size=size)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            Pool("p", worker=worker, size=1, max_size=size)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_size"):
        Pool("p", worker=worker, size=5, max_size=4)
    Pool("p", worker=worker, size=1024)  # the default max_size
    with pytest.raises(ValueError, match="max_size"):
        Pool("p", worker=worker, size=1025)
    with pytest.raises(TypeError):
        consistent_hash(key="id")  # type: ignore[arg-type]
    # like Pool's size: a bad Resize fails where it is made, not in the router
    for size in (0, -1, 1.5, "2"):
        with pytest.raises(ValueError):
            Resize(size)  # type: ignore[arg-type]


class Ending(Actor):
    """Answers its name; "crash" raises."""

    async def receive(self, msg: Any) -> Any:
        if msg == "crash":
            raise RuntimeError("on purpose")
        return self.ctx.name


@pytest.mark.parametrize("how", ["temporary crash", "terminated"])
async def test_a_worker_that_stops_for_good_leaves_the_routing(
    autojump_clock: trio.testing.MockClock, how: str
) -> None:
    restart = "temporary" if how == "temporary crash" else "permanent"
    worker = child(Ending, restart=restart)  # type: ignore[arg-type]
    tree = Supervisor("app", children=[Pool("pool", worker=worker, size=3)])
    with trio.fail_after(WAIT):
        async with runtime.open_system(tree) as system:
            pool = system.ref("/app/pool")
            if how == "temporary crash":
                with pytest.raises(runtime.ActorCrashed):
                    await pool.ask("crash")  # w0, not restarted
            else:
                await system.terminate_child("/app/pool/w0")
            await trio.testing.wait_all_tasks_blocked()
            assert await pool.ask(PoolSize()) == 2
            answers = [await pool.ask(i, timeout=5) for i in range(6)]
            assert sorted(set(answers)) == ["w1", "w2"]
            letters = {k: v for k, v in system.snapshot().dead_letters.items() if v}
            assert letters == ({"crashed": 1} if how == "temporary crash" else {})
            assert await pool.ask(Resize(3)) == 3  # and it can grow again


class Held(Actor):
    """Holds every message at `gate`; answers its name."""

    def __init__(self, gate: trio.Event) -> None:
        self.gate = gate

    async def receive(self, msg: Any) -> Any:
        await self.gate.wait()
        return self.ctx.name


async def test_a_worker_that_refuses_a_message_fails_it_alone(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A full `fail` worker mailbox refuses a routed message: the asker gets the
    `MailboxFull`, the message is dead-lettered as ``overflow``, nothing restarts."""
    gate = trio.Event()
    worker = child(Held, args=(gate,), mailbox=runtime.Mailbox(capacity=1, overflow="fail"))
    tree = Supervisor("app", children=[Pool("pool", worker=worker, size=1)])
    answers: list[Any] = []
    with trio.fail_after(WAIT):
        async with runtime.open_system(tree) as system:
            pool = system.ref("/app/pool")
            async with trio.open_nursery() as nursery:

                async def ask(i: int) -> None:
                    answers.append(await pool.ask(i, timeout=None))

                for i in range(2):  # one in hand, one queued: the worker is full
                    nursery.start_soon(ask, i)
                    await trio.testing.wait_all_tasks_blocked()
                with pytest.raises(runtime.MailboxFull):
                    await pool.ask("one too many")
                pool.tell("told, too many")
                await trio.testing.wait_all_tasks_blocked()
                gate.set()
            snap = system.snapshot()
        assert answers == ["w0", "w0"]
        assert snap.dead_letters["overflow"] == 2
        assert snap.dead_letters["crashed"] == 0  # the router did not crash
        pool_info = snap.find("/app/pool")
        assert pool_info.restarts == 0
        assert [c.restarts for c in pool_info.children] == [0] * len(pool_info.children)

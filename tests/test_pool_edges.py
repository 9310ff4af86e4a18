"""Edges of `actors.Pool`: routing failures, the size store, workers that stop for
good, removed workers that are stuck or slow to start, keys and names, and storms of
resizes, crashes and asks."""

from __future__ import annotations

import gc
import logging
import random
from collections import Counter
from typing import Any

import attrs
import pytest
import trio
import trio.testing

import runtime
from actors import Pool, PoolSize, Resize, consistent_hash
from runtime import Actor, ActorRef, Mailbox, Supervisor, child
from runtime.testing import crash

WAIT = 1_000.0  # trio time under autojump_clock: only a hang reaches it


@attrs.frozen
class Job:
    key: Any
    work: float = 0.0
    crash: bool = False


class Worker(Actor):
    """Handles `Job`s (after `work` seconds, crashing if asked to), logging
    (worker name, key); ``"stuck"`` never ends; any other message answers the name."""

    def __init__(self, log: list[tuple[str, Any]], gates: dict[str, trio.Event] | None = None):
        self.log = log
        self.gates = gates or {}

    async def receive(self, msg: Any) -> Any:
        if msg == "stuck":
            await trio.sleep_forever()
        if msg == "stop":
            self.ctx.stop()
            return self.ctx.name
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
    return [i.name for i in system.which_children("/app/pool") if i.name != "router"]


def nonzero(counts: dict[str, int]) -> dict[str, int]:
    return {k: v for k, v in counts.items() if v}


# -- routing failures --------------------------------------------------------------


async def test_a_full_fail_mailbox_at_a_worker_fails_that_message_and_restarts_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A worker whose `fail` mailbox is full refuses a routed message: that message
    # alone is dead-lettered `overflow`, and neither the router nor the pool restarts
    # (a restart per refused message would soon exhaust the pool's intensity).
    gates = {"w0": trio.Event()}
    worker = child(
        Worker, args=([],), kwargs={"gates": gates}, mailbox=Mailbox(capacity=1, overflow="fail")
    )
    with trio.fail_after(WAIT):
        async with runtime.open_system(app(Pool("pool", worker=worker, size=1))) as system:
            pool = system.ref("/app/pool")
            for i in range(12):  # one in hand at w0, one queued, ten that find no room
                pool.tell(Job(i))
                await trio.testing.wait_all_tasks_blocked()
            await trio.sleep(10)  # room for a give-up and the 5 s shutdown of w0
            snap = system.snapshot()
            router, pool_info = snap.find("/app/pool/router"), snap.find("/app/pool")
            assert (router.restarts, pool_info.restarts) == (0, 0), (
                f"router restarts {router.restarts}, pool restarts {pool_info.restarts}, "
                f"dead letters {nonzero(snap.dead_letters)}"
            )
            assert nonzero(snap.dead_letters) == {"overflow": 10}
            gates["w0"].set()


class Sink(Actor):
    async def receive(self, msg: Any) -> Any:
        await trio.sleep_forever()


class Forwarder(Actor):
    """Forwards to /app/sink and handles a full mailbox itself, as a router would."""

    async def receive(self, msg: Any) -> Any:
        try:
            await self.ctx.forward(self.ctx.system.ref("/app/sink"))
        except runtime.MailboxFull:
            return "full"
        return None


async def test_an_actor_that_handles_a_failed_forward_still_answers_the_ask(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # `ctx.forward` gives the reply slot back when the target refuses the message, so
    # an actor that catches the `MailboxFull` and returns still answers the ask.
    sink = child(Sink, name="sink", shutdown=0.1, mailbox=Mailbox(capacity=1, overflow="fail"))
    tree = Supervisor("app", children=[sink, child(Forwarder, name="f")])
    with trio.fail_after(WAIT):
        async with runtime.open_system(tree) as system:
            forwarder = system.ref("/app/f")
            forwarder.tell(1)  # in hand at the sink
            await trio.testing.wait_all_tasks_blocked()
            forwarder.tell(2)  # queued there: full
            await trio.testing.wait_all_tasks_blocked()
            assert await forwarder.ask(3, timeout=5) == "full"


# -- the size store ---------------------------------------------------------------


async def test_a_pool_started_again_from_the_same_spec_does_not_keep_old_slots_alive(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The size store lives in the spec and holds router slots weakly: a pool started
    # and terminated again and again from one spec keeps no old slot alive, and each
    # new slot starts at the spec's size.
    spec = Pool("pool", worker=child(Worker, args=([],)), size=1)
    with trio.fail_after(WAIT):
        async with runtime.open_system(Supervisor("app")) as system:
            for _ in range(10):
                await system.start_child("/app", spec)
                pool = system.ref("/app/pool")
                assert await pool.ask(PoolSize()) == 1  # a new slot starts at the spec's size
                assert await pool.ask(Resize(2)) == 2
                await system.terminate_child("/app/pool")
                del pool
            gc.collect()
            alive = [
                o
                for o in gc.get_objects()
                if isinstance(o, ActorRef)
                and o.path == "/app/pool/router"
                and o._cell.host is system  # not those earlier tests' logs still hold
            ]
            assert len(alive) == 0, f"{len(alive)} stopped router slots still referenced"


# -- workers that stop for good -------------------------------------------------------


@pytest.mark.parametrize("how", ["temporary crash", "temporary stop", "terminated"])
async def test_a_worker_that_stops_for_good_is_not_routed_to_or_counted(
    autojump_clock: trio.testing.MockClock, how: str
) -> None:
    # A worker that stops for good (a `temporary` one that crashed or stopped, one
    # terminated by path) leaves the routing: the pool's size drops to 2, and every
    # later ask reaches a live worker (none fails, nothing is dead-lettered `stopped`).
    restart = "permanent" if how == "terminated" else "temporary"
    worker = child(Worker, args=([],), restart=restart)  # type: ignore[arg-type]
    with trio.fail_after(WAIT):
        async with runtime.open_system(app(Pool("pool", worker=worker, size=3))) as system:
            pool = system.ref("/app/pool")
            if how == "temporary crash":
                with pytest.raises(runtime.ActorCrashed):
                    await pool.ask(Job("x", crash=True))  # w0, not restarted
            elif how == "temporary stop":
                assert await pool.ask("stop") == "w0"  # w0 exits normally, not restarted
            else:
                await system.terminate_child("/app/pool/w0")
            await trio.testing.wait_all_tasks_blocked()
            failures = []
            for i in range(6):
                try:
                    await pool.ask(Job(i), timeout=5)
                except (runtime.ActorStopped, runtime.AskTimeout) as error:
                    failures.append(error)
            assert (await pool.ask(PoolSize()), failures) == (2, [])
            assert nonzero(system.snapshot().dead_letters).get("stopped", 0) == 0


def test_a_pool_refuses_transient_workers_saying_what_to_use_instead() -> None:
    # `transient` workers are refused, naming what to use instead: one that stopped
    # normally would keep its place in the pool's supervisor (OTP), with no
    # incarnation and no `Terminated`, and be routed to for ever.
    worker = child(Worker, args=([],), restart="transient")
    with pytest.raises(ValueError, match=r"transient.*'permanent'.*'temporary'"):
        Pool("pool", worker=worker)


# -- removed workers that do not drain -------------------------------------------------


async def test_a_resize_ask_is_answered_although_a_removed_worker_is_stuck(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A shrink takes a stuck worker out of the routing at once (PoolSize says 2), and
    # Resize asks are answered once it has been stopped at its `shutdown` timeout,
    # not when (never) it would have drained.
    with trio.fail_after(WAIT):
        tree = app(Pool("pool", worker=child(Worker, args=([],), shutdown=1.0), size=3))
        async with runtime.open_system(tree) as system:
            pool = system.ref("/app/pool")
            for msg in ("a", "b", "stuck"):  # w2 never finishes "stuck"
                pool.tell(msg)
            await trio.testing.wait_all_tasks_blocked()
            pool.tell(Resize(2))
            await trio.sleep(1)
            assert await pool.ask(PoolSize()) == 2
            assert await pool.ask(Resize(2), timeout=5) == 2
            assert await pool.ask(Resize(1), timeout=5) == 1


async def test_what_was_queued_at_a_removed_worker_is_re_routed_past_a_stuck_message(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # What was queued behind a stuck message at a removed worker comes back to the
    # router when that worker is stopped, and a remaining worker handles it.
    log: list[tuple[str, Any]] = []
    with trio.fail_after(WAIT):
        tree = app(Pool("pool", worker=child(Worker, args=(log,), shutdown=1.0), size=2))
        async with runtime.open_system(tree) as system:
            pool = system.ref("/app/pool")
            pool.tell(Job("first"))  # w0
            pool.tell("stuck")  # w1, forever
            pool.tell(Job("second"))  # w0
            pool.tell(Job("queued at w1"))  # behind "stuck"
            await trio.testing.wait_all_tasks_blocked()
            pool.tell(Resize(1))  # removes w1
            await trio.sleep(10)
            assert ("w0", "queued at w1") in log, log


async def test_a_later_resize_supersedes_a_grow_whose_worker_is_slow_to_start(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A worker's on_start holds up the pool's supervisor (as in OTP), so a shrink
    # cannot end before it; but the routing shrinks at once, and the worker whose
    # start the shrink overtook is removed once it is up, never routed to.
    class SlowW2(Worker):
        async def on_start(self) -> None:
            if self.ctx.name == "w2":
                await trio.sleep(60)

    log: list[tuple[str, Any]] = []
    with trio.fail_after(WAIT):
        tree = app(Pool("pool", worker=child(SlowW2, args=(log,)), size=2))
        async with runtime.open_system(tree) as system:
            pool = system.ref("/app/pool")
            pool.tell(Resize(4))
            await trio.sleep(1)  # w2 is starting
            async with trio.open_nursery() as nursery:
                answers: list[int] = []

                async def shrink() -> None:
                    answers.append(await pool.ask(Resize(1), timeout=None))

                nursery.start_soon(shrink)
                await trio.testing.wait_all_tasks_blocked()
                assert await pool.ask(PoolSize()) == 1  # routed to w0 alone already
                for i in range(3):
                    assert await pool.ask(Job(i)) == "w0"
            assert answers == [1]
            assert worker_names(system) == ["w0"]
            assert {name for name, _ in log} == {"w0"}
            assert not any(system.snapshot().dead_letters.values())


# -- names and keys ------------------------------------------------------------------


async def test_equal_keys_reach_the_same_worker(autojump_clock: trio.testing.MockClock) -> None:
    # consistent_hash sends equal keys to one worker: 1 and 1.0 are one key, though
    # their reprs differ.
    routing = consistent_hash(key=lambda msg: msg.key)
    with trio.fail_after(WAIT):
        tree = app(Pool("pool", worker=child(Worker, args=([],)), size=8, routing=routing))
        async with runtime.open_system(tree) as system:
            pool = system.ref("/app/pool")
            for n in range(20):
                owners = {await pool.ask(Job(k)) for k in (n, float(n))}
                assert len(owners) == 1, (n, owners)


async def test_after_a_grow_took_back_a_retiring_worker_the_names_are_w0_to_wn(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Worker names stay w0 .. w(n-1) through a shrink and a grow that takes a retired
    # worker back (here w2, held by a message, is stopped and w1 comes back), so a
    # restart of the pool, which makes w0 .. w(n-1), moves no consistent_hash keys.
    gates = {"w2": trio.Event()}
    worker = child(Worker, args=([],), kwargs={"gates": gates})
    with trio.fail_after(WAIT):
        async with runtime.open_system(app(Pool("pool", worker=worker, size=1))) as system:
            pool = system.ref("/app/pool")
            assert await pool.ask(Resize(3)) == 3
            for i in range(3):  # w2 is held with one message, w0 and w1 are idle
                pool.tell(Job(i))
            await trio.testing.wait_all_tasks_blocked()
            pool.tell(Resize(1))  # w2 and w1 retire; w1 stops at once, w2 drains
            await trio.testing.wait_all_tasks_blocked()
            pool.tell(Resize(2))
            await trio.testing.wait_all_tasks_blocked()
            gates["w2"].set()
            assert await pool.ask(Resize(2)) == 2
            assert worker_names(system) == ["w0", "w1"]


# -- storms, stops and intensity ---------------------------------------------------


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("crash_router", [False, True])
@pytest.mark.parametrize("routing", ["round_robin", "broadcast", "smallest_mailbox", "hash"])
async def test_every_ask_answered_once_through_a_storm_of_resizes_and_crashes(
    autojump_clock: trio.testing.MockClock, seed: int, crash_router: bool, routing: str
) -> None:
    # Through 40 random resizes (told and asked), injected router crashes and jobs
    # that crash their worker, every ask is answered once and every job handled once;
    # only the crashing jobs are dead-lettered, and the pool ends at the size asked.
    rnd = random.Random(seed)
    log: list[tuple[str, Any]] = []
    how: Any = consistent_hash(key=lambda m: m.key) if routing == "hash" else routing
    pool_spec = Pool(
        "pool",
        worker=child(Worker, args=(log,)),
        size=3,
        routing=how,
        max_restarts=10_000,
        within=1,
    )
    answers: dict[int, list[Any]] = {}
    crashes: set[int] = set()
    with trio.fail_after(WAIT):
        async with runtime.open_system(app(pool_spec)) as system:
            pool = system.ref("/app/pool")

            async def ask(i: int, job: Job) -> None:
                try:
                    answer: Any = await pool.ask(job, timeout=None)
                except runtime.ActorCrashed as error:
                    answer = error
                answers.setdefault(i, []).append(answer)

            async def resize_ask(n: int) -> None:
                try:
                    await pool.ask(Resize(n), timeout=None)
                except runtime.ActorCrashed:  # the router crashed before answering
                    pass

            async def resizer() -> None:
                for _ in range(40):
                    n = rnd.randint(1, 12)
                    if rnd.random() < 0.5:
                        pool.tell(Resize(n))
                    else:
                        nursery.start_soon(resize_ask, n)
                    await trio.sleep(rnd.random() * 0.05)
                    if crash_router and rnd.random() < 0.2:
                        crash(pool)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(resizer)
                for i in range(300):
                    if rnd.random() < 0.05:
                        crashes.add(i)
                    nursery.start_soon(ask, i, Job(i, rnd.random() * 0.3, i in crashes))
                    if rnd.random() < 0.3:
                        await trio.sleep(rnd.random() * 0.01)
                    if routing == "broadcast" and rnd.random() < 0.05:
                        pool.tell(("all", i))
            assert await pool.ask(Resize(5), timeout=None) == 5
            assert await pool.ask(PoolSize()) == 5
            assert len(worker_names(system)) == 5
            snap = system.snapshot()
            stats = snap.find("/app/pool/router").stats
            assert (stats["workers"], stats["target"], stats["retiring"]) == (5, 5, 0)
            assert nonzero(snap.dead_letters) == ({"crashed": len(crashes)} if crashes else {})
    assert {i: len(a) for i, a in answers.items()} == {i: 1 for i in range(300)}
    assert {i for i, a in answers.items() if isinstance(a[0], Exception)} == crashes
    assert Counter(k for _, k in log if isinstance(k, int)) == Counter(range(300))


@pytest.mark.parametrize("stop_after", [0.5, 2.5, 3.05, 5.5])
async def test_stopping_the_system_mid_resize_loses_nothing_and_warns_nothing(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture, stop_after: float
) -> None:
    # Stopping the system anywhere in a grow of slow-starting workers and the shrink
    # after it: every ask gets an answer or an error, every job is handled or
    # dead-lettered, and nothing is logged at WARNING or above.
    class SlowStart(Worker):
        async def on_start(self) -> None:
            await trio.sleep(1)

    log: list[tuple[str, Any]] = []
    resizes: list[Any] = []
    answers: dict[int, Any] = {}
    tree = app(Pool("pool", worker=child(SlowStart, args=(log,)), size=2))
    with trio.fail_after(WAIT):
        async with trio.open_nursery() as outside:
            async with runtime.open_system(tree) as system:
                pool = system.ref("/app/pool")

                async def resize(n: int) -> None:
                    try:
                        resizes.append(await pool.ask(Resize(n), timeout=None))
                    except runtime.TroupeError as error:
                        resizes.append(error)

                async def ask(i: int) -> None:
                    try:
                        answers[i] = await pool.ask(Job(i, 0.3), timeout=None)
                    except runtime.TroupeError as error:
                        answers[i] = error

                outside.start_soon(resize, 8)
                for i in range(20):
                    outside.start_soon(ask, i)
                await trio.sleep(3.01)
                outside.start_soon(resize, 1)
                for i in range(20, 40):
                    pool.tell(Job(i, 0.3))
                await trio.sleep(stop_after)
            dead = sum(system.snapshot().dead_letters.values())
    assert len(resizes) == 2 and len(answers) == 20
    assert len(log) + dead == 40
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_router_and_dynamic_worker_crashes_count_once_toward_the_pools_intensity(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Restarts of workers added by Resize and of the router each count once toward
    # the pool's own max_restarts/within: the third within 10 s makes the pool give
    # up, and its parent restarts it at the size it was resized to.
    tree = app(Pool("pool", worker=child(Worker, args=([],)), size=1, max_restarts=2, within=10))
    with trio.fail_after(WAIT):
        async with runtime.open_system(tree) as system:
            pool = system.ref("/app/pool")
            assert await pool.ask(Resize(3)) == 3
            for _ in range(2):  # two restarts of dynamic workers
                with pytest.raises(runtime.ActorCrashed):
                    await pool.ask(Job("x", crash=True))
                await trio.sleep(4)
            assert system.snapshot().find("/app/pool").restarts == 0
            crash(pool)  # the router: the third restart within 10 s
            await trio.testing.wait_all_tasks_blocked()
            assert system.snapshot().find("/app/pool").restarts == 1
            assert await pool.ask(PoolSize()) == 3  # the size survived the give-up
            assert sorted(worker_names(system)) == ["w0", "w1", "w2"]


async def test_a_pool_with_a_stuck_retiring_worker_stops_cleanly(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A shrink whose removed worker is stuck ends at that worker's shutdown timeout
    # (the Resize ask answered 1, the stuck message dead-lettered `stopped`), and
    # the pool then terminates cleanly.
    answers: list[Any] = []
    with trio.fail_after(WAIT):
        tree = app(Pool("pool", worker=child(Worker, args=([],), shutdown=1.0), size=2))
        async with runtime.open_system(tree) as system, trio.open_nursery() as nursery:
            pool = system.ref("/app/pool")
            pool.tell("a")
            pool.tell("stuck")  # w1

            async def shrink() -> None:
                try:
                    answers.append(await pool.ask(Resize(1), timeout=None))
                except runtime.TroupeError as error:
                    answers.append(error)

            nursery.start_soon(shrink)
            await trio.sleep(5)
            await system.terminate_child("/app/pool")
            await trio.testing.wait_all_tasks_blocked()
            assert system.which_children("/app") == []
            assert nonzero(system.snapshot().dead_letters) == {"stopped": 1}  # the stuck one
    assert answers == [1]  # once the stuck worker was stopped, at its shutdown timeout

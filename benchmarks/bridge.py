"""Bridge and Pool scenarios (issues 5, 17): blocking-call overhead, throughput and
memory, pool routing.

Troupe is driven only through the public API (`runtime.open_system`,
`runtime.Bridge`, `ctx.run_blocking`, `system.run_blocking`, `actors.Pool`,
refs).  The baselines are bare `trio.to_thread.run_sync` and asyncio's
`loop.run_in_executor` on an 8-thread `ThreadPoolExecutor` (the reference
design's approach), each run in the same process right after Troupe's
measurement, in its own fresh event loop.
"""

from __future__ import annotations

import asyncio
import gc
import random
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from time import perf_counter
from typing import Any

import trio
import trio.testing

import runtime
from actors import Pool
from runtime import Actor, Supervisor, child

from .harness import Bench, Figures, Row, Size, Target
from .kernel import run_trio
from .soak import rss_bytes

ROOT = "app"
WARMUP = 100
BRIDGE_WORKERS = 8
SLEEP = 0.001


def noop() -> None:
    """The trivial blocking function: all that is measured is the trip to a thread."""


# -- 1. per-call overhead ---------------------------------------------------------
class Caller(Actor):
    """Asked with `k`: makes `k` sequential ``ctx.run_blocking(noop)`` calls, returns s/call."""

    async def receive(self, msg: Any) -> float:
        run_blocking = self.ctx.run_blocking
        for _ in range(WARMUP):
            await run_blocking(noop)
        start = perf_counter()
        for _ in range(msg):
            await run_blocking(noop)
        return (perf_counter() - start) / msg


async def troupe_overhead(k: int) -> tuple[float, float]:
    """(s per ``ctx.run_blocking(noop)`` in an actor, s per ``system.run_blocking(noop)``),
    both on the default bridge ``/system/bridge``."""
    tree = Supervisor(ROOT, children=[child(Caller, name="caller")])
    async with runtime.open_system(tree) as system:
        await trio.testing.wait_all_tasks_blocked()
        per_ctx = await system.ref(f"/{ROOT}/caller").ask(k, timeout=None)
        run_blocking = system.run_blocking
        for _ in range(WARMUP):
            await run_blocking(noop)
        start = perf_counter()
        for _ in range(k):
            await run_blocking(noop)
        per_system = (perf_counter() - start) / k
    return per_ctx, per_system


async def bare_overhead(k: int) -> float:
    """Seconds per sequential bare ``trio.to_thread.run_sync(noop)``."""
    run_sync = trio.to_thread.run_sync
    for _ in range(WARMUP):
        await run_sync(noop)
    start = perf_counter()
    for _ in range(k):
        await run_sync(noop)
    return (perf_counter() - start) / k


def overhead_once(size: Size) -> Figures:
    k = size.pick(5_000, 50)
    per_ctx, per_system = run_trio(troupe_overhead, k)
    bare = run_trio(bare_overhead, k)
    return {"ctx_us": per_ctx * 1e6, "system_us": per_system * 1e6, "bare_us": bare * 1e6}


OVERHEAD = Bench(
    name="run-blocking",
    run_once=overhead_once,
    rows=[
        Row(
            "ctx.run_blocking per-call overhead, trivial fn (µs)",
            "ctx_us",
            "bare_us",
            "bare trio.to_thread.run_sync(fn) in a plain trio.run, same fn, same count",
            Target("<=", 1.0),
            digits=1,
        ),
        Row(
            "system.run_blocking per-call overhead, trivial fn (µs)",
            "system_us",
            "bare_us",
            "the same bare trio.to_thread.run_sync(fn) (reference, no target)",
            digits=1,
        ),
    ],
    notes=[
        "run-blocking: 5,000 sequential calls of a no-op function (full) after "
        f"{WARMUP} warm-up calls; mean per call. Troupe: an actor awaits "
        "self.ctx.run_blocking(fn) (and, in the same system, the system's body task awaits "
        "system.run_blocking(fn)), both on the default bridge /system/bridge.  The bridge "
        "has worker threads of its own; an idle bridge starts each call at once, without "
        "a message (Bridge.start_now), a free worker takes it and its result comes back "
        "to the loop with one run_sync_soon.",
    ],
)


# -- 2. throughput of short blocking calls -------------------------------------------
async def timed_batch(one: Callable[[], Awaitable[None]], n: int) -> float:
    """Seconds for `n` trio tasks, all started at once, to each run `one()`, after a
    warm-up batch of ``2 * BRIDGE_WORKERS`` (the worker threads exist by then)."""

    async def batch(count: int) -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(count):
                nursery.start_soon(one)

    await batch(2 * BRIDGE_WORKERS)
    await trio.testing.wait_all_tasks_blocked()
    start = perf_counter()
    await batch(n)
    return perf_counter() - start


async def troupe_throughput(n: int) -> float:
    """Seconds for `n` concurrent ``system.run_blocking(time.sleep, 1 ms)`` on bridge b8."""
    tree = Supervisor(
        ROOT,
        children=[
            child(runtime.Bridge, name="b8", kwargs={"max_workers": BRIDGE_WORKERS}),
        ],
    )
    path = f"/{ROOT}/b8"
    async with runtime.open_system(tree) as system:
        run_blocking = system.run_blocking

        async def one() -> None:
            await run_blocking(time.sleep, SLEEP, bridge=path, timeout=None)

        took = await timed_batch(one, n)
        snap = system.snapshot().find(path).stats
    if snap["peak_active"] > BRIDGE_WORKERS:
        raise AssertionError(f"bridge b8 ran {snap['peak_active']} calls at once")
    return took


async def asyncio_throughput(n: int, tasks: bool = False) -> float:
    """The same with asyncio: `n` concurrent ``loop.run_in_executor`` on 8 threads,
    gathered as futures (no task per call), or with `tasks` from `n` tasks that each
    await one (the shape of the Troupe side: a trio task per call)."""
    loop = asyncio.get_running_loop()
    with ThreadPoolExecutor(max_workers=BRIDGE_WORKERS) as pool:

        async def one() -> None:
            await loop.run_in_executor(pool, time.sleep, SLEEP)

        async def batch(count: int) -> None:
            if tasks:
                await asyncio.gather(*(one() for _ in range(count)))  # a task each
            else:
                await asyncio.gather(
                    *(loop.run_in_executor(pool, time.sleep, SLEEP) for _ in range(count))
                )

        await batch(2 * BRIDGE_WORKERS)  # warm-up: the pool's threads exist
        start = perf_counter()
        await batch(n)
        return perf_counter() - start


async def trio_throughput(n: int) -> float:
    """The same with bare trio: `n` tasks each awaiting ``trio.to_thread.run_sync``
    under one ``CapacityLimiter(8)`` (trio's thread cache starts and reuses the threads)."""
    limiter = trio.CapacityLimiter(BRIDGE_WORKERS)
    run_sync = trio.to_thread.run_sync

    async def one() -> None:
        await run_sync(time.sleep, SLEEP, limiter=limiter)

    return await timed_batch(one, n)


def throughput_once(size: Size) -> Figures:
    n = size.pick(1_000, 40)
    troupe = run_trio(troupe_throughput, n)
    base = asyncio.run(asyncio_throughput(n))
    tasks = asyncio.run(asyncio_throughput(n, tasks=True))
    bare = run_trio(trio_throughput, n)
    return {
        "troupe_rate": n / troupe,
        "asyncio_rate": n / base,
        "asyncio_tasks_rate": n / tasks,
        "trio_rate": n / bare,
    }


THROUGHPUT = Bench(
    name="bridge-throughput",
    run_once=throughput_once,
    rows=[
        Row(
            "1,000 concurrent 1 ms blocking calls, Bridge(max_workers=8) (calls/s)",
            "troupe_rate",
            "asyncio_rate",
            "asyncio loop.run_in_executor(ThreadPoolExecutor(8), time.sleep, 0.001), "
            "1,000 at once with asyncio.gather, fresh asyncio.run in the same process",
            Target(">=", 1.0),
        ),
        Row(
            "the same against asyncio with a task per call (calls/s)",
            "troupe_rate",
            "asyncio_tasks_rate",
            "asyncio: 1,000 tasks (asyncio.gather of coroutines), each awaiting "
            "loop.run_in_executor(ThreadPoolExecutor(8), time.sleep, 0.001): the shape of "
            "the Troupe side, where 1,000 trio tasks each await run_blocking",
        ),
        Row(
            "the same against bare trio, to_thread.run_sync with CapacityLimiter(8) (calls/s)",
            "troupe_rate",
            "trio_rate",
            "trio: 1,000 tasks in a nursery, each awaiting trio.to_thread.run_sync(time.sleep, "
            "0.001, limiter=CapacityLimiter(8)): the same shape without Troupe",
        ),
    ],
    notes=[
        "bridge-throughput: 1,000 calls of time.sleep(0.001) (full), all started at once from "
        "1,000 trio tasks with system.run_blocking(..., bridge='/app/b8') on a named child "
        "child(Bridge, name='b8', kwargs={'max_workers': 8}); timed from the first start to "
        f"the last reply, after a warm-up batch of {2 * BRIDGE_WORKERS} calls on both sides. "
        "The ceiling (zero overhead) is 1,000 x 1 ms / 8 workers = 8,000 calls/s.  The "
        "bridge's 8 threads take the next queued call themselves (it holds up to 16 calls, "
        "the rest wait in its mailbox) and hand results back in batches.",
    ],
)


# -- 3. memory over many calls -----------------------------------------------------------
RSS_BATCH = 100
RSS_TIMEOUT = 30.0


def rss_mb() -> float:
    gc.collect()
    return rss_bytes() / 2**20


async def troupe_rss(n: int) -> tuple[float, float]:
    """(RSS before, RSS after) `n` calls of ``system.run_blocking(noop, timeout=30)``,
    `RSS_BATCH` at once, on bridge b8, after a warm-up of 1,000 calls."""
    tree = Supervisor(
        ROOT,
        children=[child(runtime.Bridge, name="b8", kwargs={"max_workers": BRIDGE_WORKERS})],
    )
    path = f"/{ROOT}/b8"
    async with runtime.open_system(tree) as system:
        run_blocking = system.run_blocking

        async def batches(count: int) -> None:
            for _ in range(count // RSS_BATCH):
                async with trio.open_nursery() as nursery:
                    for _ in range(RSS_BATCH):
                        nursery.start_soon(
                            lambda: run_blocking(noop, bridge=path, timeout=RSS_TIMEOUT)
                        )

        await batches(1_000)
        before = rss_mb()
        await batches(n)
        after = rss_mb()
        completed = system.snapshot().find(path).stats["completed"]
    if completed != 1_000 + n:
        raise AssertionError(f"bridge b8 completed {completed} calls of {1_000 + n}")
    return before, after


def rss_once(size: Size) -> Figures:
    before, after = run_trio(troupe_rss, size.pick(100_000, 2_000))
    return {"rss_after_mb": after, "rss_before_mb": before}


MEMORY = Bench(
    name="bridge-rss",
    run_once=rss_once,
    rows=[
        Row(
            "RSS after 100,000 run_blocking calls with timeout=30 s (MB)",
            "rss_after_mb",
            "rss_before_mb",
            "RSS of the same process just before those calls (after a 1,000-call warm-up)",
            Target("<=", 1.1),
            digits=1,
        ),
    ],
    notes=[
        f"bridge-rss: 100,000 calls (full) of a no-op function, {RSS_BATCH} at once, with "
        f"system.run_blocking(noop, bridge='/app/b8', timeout={RSS_TIMEOUT:g}) on "
        "Bridge(max_workers=8), after 1,000 warm-up calls; RSS from /proc/self/statm after "
        "gc.collect(), before and after.  Flat means within 10 %: a call must leave "
        "nothing behind (each used to leave a timer task sleeping out its timeout).",
    ],
)


# -- 4. Pool vs one actor ---------------------------------------------------------------
class Tally:
    """Set `done` when `target` messages have been handled, by whichever worker."""

    def __init__(self, target: int) -> None:
        self.n = 0
        self.target = target
        self.done = trio.Event()

    def hit(self) -> None:
        self.n += 1
        if self.n == self.target:
            self.done.set()


class IOWorker(Actor):
    """Each message is a duration: awaits simulated I/O that long, then counts it."""

    def __init__(self, tally: Tally) -> None:
        self.tally = tally

    async def receive(self, msg: float) -> None:
        await trio.sleep(msg)
        self.tally.hit()


def durations(n: int, seed: int = 5) -> list[float]:
    """Deterministic, uneven simulated I/O times: uniform 0.1 to 3 ms."""
    rng = random.Random(seed)
    return [rng.uniform(0.0001, 0.003) for _ in range(n)]


async def troupe_pool(work: list[float], pooled: bool) -> float:
    """Seconds to tell every message of `work` at once and have all of them handled."""
    tally = Tally(len(work))
    worker = child(IOWorker, kwargs={"tally": tally})
    if pooled:
        spec = Pool("pool", worker=worker, size=4, routing="smallest_mailbox")
    else:
        spec = child(IOWorker, name="pool", kwargs={"tally": tally})
    async with runtime.open_system(Supervisor(ROOT, children=[spec])) as system:
        ref = system.ref(f"/{ROOT}/pool")
        await trio.testing.wait_all_tasks_blocked()
        tell = ref.tell
        start = perf_counter()
        for d in work:
            tell(d)
        await tally.done.wait()
        return perf_counter() - start


def pool_once(size: Size) -> Figures:
    n = size.pick(1_000, 40)
    work = durations(n)
    return {
        "pool_rate": n / run_trio(troupe_pool, work, True),
        "single_rate": n / run_trio(troupe_pool, work, False),
    }


POOL = Bench(
    name="pool",
    run_once=pool_once,
    rows=[
        Row(
            "Pool(size=4, smallest_mailbox) vs one actor, uneven simulated I/O (msg/s)",
            "pool_rate",
            "single_rate",
            "one actor of the same worker class, same messages, same order",
        ),
    ],
    notes=[
        "pool: 1,000 messages (full) told at once to /app/pool, each a duration d the "
        "handler spends in await trio.sleep(d); d is uniform 0.1-3 ms from a fixed seed "
        "(mean 1.55 ms; real clock, so sleeps are rounded up to the loop's timer "
        "resolution). Timed from the first tell to the last message handled. Perfect "
        "scaling would be 4x.",
    ],
)


BENCHES = [OVERHEAD, THROUGHPUT, MEMORY, POOL]

"""Foreign-thread scenarios (issue 3): tell and ask from plain threads, Pykka, loop stalls.

Troupe runs in `runtime.start_in_thread` and plain `threading.Thread`s talk to
it through the public API (`ref.tell`, `ref.ask_blocking`, `system.snapshot`).
The baselines are the plainest ways to hand a message from a thread to a trio
loop (`TrioToken.run_sync_soon`, `trio.from_thread.run_sync`), and Pykka's
`ThreadingActor`, measured in the same process right after Troupe.
"""

from __future__ import annotations

import importlib.util
import os
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from queue import SimpleQueue
from time import perf_counter
from typing import Any

import trio

import runtime
from runtime import Actor, Mailbox, Supervisor, child

from .harness import Bench, Figures, Row, Size, Target, eprint
from .kernel import quiet_troupe_log

ROOT = "bench"
PYKKA = importlib.util.find_spec("pykka") is not None
JOIN_TIMEOUT = 120.0


# -- shared pieces -------------------------------------------------------------
class ThreadCounter:
    """Counts messages; tells a waiting thread when the last one arrived."""

    def __init__(self, target: int, done: threading.Event) -> None:
        self.n = 0
        self.target = target
        self.done = done

    def count(self, msg: Any) -> None:
        self.n += 1
        if self.n == self.target:
            self.done.set()


class CountingActor(Actor):
    def __init__(self, target: int, done: threading.Event) -> None:
        self.counter = ThreadCounter(target, done)
        self.count = self.counter.count

    async def receive(self, msg: Any) -> None:
        self.count(msg)


class Echo(Actor):
    async def receive(self, msg: Any) -> Any:
        return msg


def drive(producers: int, m: int, send: Callable[[Any], Any], done: threading.Event) -> float:
    """Seconds for `producers` plain threads to send `m` messages in all (each its
    share, each in its own order) and for the consumer to signal `done`."""
    go = threading.Event()
    shares = [m // producers + (1 if i < m % producers else 0) for i in range(producers)]

    def produce(n: int) -> None:
        go.wait()
        for i in range(n):
            send(i)

    threads = [threading.Thread(target=produce, args=(n,), daemon=True) for n in shares]
    for thread in threads:
        thread.start()
    start = perf_counter()
    go.set()
    if not done.wait(JOIN_TIMEOUT):
        raise RuntimeError("the consumer did not get every message in time")
    took = perf_counter() - start
    for thread in threads:
        thread.join()
    return took


def counter_tree(m: int, done: threading.Event) -> Supervisor:
    return Supervisor(
        ROOT,
        children=[
            child(
                CountingActor,
                name="counter",
                kwargs={"target": m, "done": done},
                mailbox=Mailbox(capacity=m),
            )
        ],
    )


def troupe_foreign_tell(m: int, producers: int) -> float:
    """Seconds for plain threads to `tell` m messages and the actor to handle them."""
    done = threading.Event()
    with quiet_troupe_log(), runtime.start_in_thread(counter_tree(m, done)) as system:
        ref = system.ref(f"/{ROOT}/counter")
        return drive(producers, m, ref.tell, done)


@contextmanager
def trio_in_thread(
    consumer: Callable[[], Awaitable[None]], instrument: trio.abc.Instrument | None = None
) -> Iterator[trio.lowlevel.TrioToken]:
    """A bare trio loop in a thread of its own, running `consumer` (and `instrument`,
    if given) until the block ends; yields the loop's token."""
    box: dict[str, Any] = {}
    ready = threading.Event()

    async def main() -> None:
        stop = trio.Event()
        box["stop"] = stop.set
        if instrument is not None:
            trio.lowlevel.add_instrument(instrument)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(consumer)
            box["token"] = trio.lowlevel.current_trio_token()
            ready.set()
            await stop.wait()
            nursery.cancel_scope.cancel()

    thread = threading.Thread(target=trio.run, args=(main,), daemon=True)
    thread.start()
    ready.wait()
    token: trio.lowlevel.TrioToken = box["token"]
    try:
        yield token
    finally:
        token.run_sync_soon(box["stop"])
        thread.join()


@contextmanager
def bare_loop(counter: ThreadCounter) -> Iterator[tuple[trio.lowlevel.TrioToken, Callable]]:
    """A bare trio loop in a thread: a consumer task draining a deque (woken through a
    ParkingLot), and `deliver(msg)` to call on the loop thread."""
    queue: deque[Any] = deque()
    lot = trio.lowlevel.ParkingLot()

    def deliver(msg: Any) -> None:
        queue.append(msg)
        if lot:
            lot.unpark()

    async def consumer() -> None:
        count = counter.count
        popleft = queue.popleft
        while True:
            while queue:
                count(popleft())
                # the same per-message checkpoint-free handling as the floor in kernel.py
            await lot.park()

    with trio_in_thread(consumer) as token:
        yield token, deliver


def bare_run_sync_soon(m: int, producers: int) -> float:
    done = threading.Event()
    with bare_loop(ThreadCounter(m, done)) as (token, deliver):
        soon = token.run_sync_soon
        return drive(producers, m, lambda msg: soon(deliver, msg), done)


def bare_from_thread(m: int, producers: int) -> float:
    done = threading.Event()
    with bare_loop(ThreadCounter(m, done)) as (token, deliver):
        run_sync = trio.from_thread.run_sync
        return drive(producers, m, lambda msg: run_sync(deliver, msg, trio_token=token), done)


# -- 1. foreign-thread tell throughput -----------------------------------------
def foreign_tell_once(size: Size) -> Figures:
    m = size.pick(100_000, 1_000)
    m_slow = size.pick(10_000, 200)  # from_thread.run_sync is one round trip per message
    figures: Figures = {}
    for p in (1, 4):
        figures[f"troupe_{p}"] = m / troupe_foreign_tell(m, p)
        figures[f"soon_{p}"] = m / bare_run_sync_soon(m, p)
        figures[f"fromthread_{p}"] = m_slow / bare_from_thread(m_slow, p)
    return figures


def _tell_rows(p: int) -> list[Row]:
    threads = "1 producer thread" if p == 1 else f"{p} producer threads"
    return [
        Row(
            f"foreign-thread tell, {threads} vs run_sync_soon (msg/s)",
            f"troupe_{p}",
            f"soon_{p}",
            f"{threads} each calling TrioToken.run_sync_soon(deliver, msg) once per message; "
            "deliver appends to a deque drained by a bare consumer task (ParkingLot wake-up)",
            Target(">=", 5.0),
        ),
        Row(
            f"foreign-thread tell, {threads} vs from_thread.run_sync (msg/s)",
            f"troupe_{p}",
            f"fromthread_{p}",
            f"{threads} each calling trio.from_thread.run_sync(deliver, msg) once per message "
            "(one blocking round trip each), same bare consumer",
        ),
    ]


FOREIGN_TELL = Bench(
    name="thread-tell",
    run_once=foreign_tell_once,
    rows=[*_tell_rows(1), *_tell_rows(4)],
    notes=[
        "thread-tell: M = 100,000 messages in all (full), split evenly over the producer "
        "threads; Troupe runs in runtime.start_in_thread, the actor's Mailbox has capacity M "
        "(block policy, so threads still take credits); timed from releasing the producers "
        "to the handler's M-th call. The from_thread.run_sync baseline sends 10,000 (it is "
        "one blocking round trip per message); rates are per second either way.",
    ],
)


# -- 2. against Pykka ----------------------------------------------------------
def pykka_tell(m: int) -> float:
    import pykka

    done = threading.Event()

    class PykkaCounter(pykka.ThreadingActor):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            self.counter = ThreadCounter(m, done)

        def on_receive(self, message: Any) -> Any:
            self.counter.count(message)

    ref = PykkaCounter.start()
    try:
        return drive(1, m, ref.tell, done)
    finally:
        ref.stop()


def pykka_ask(k: int, warmup: int) -> float:
    import pykka

    class Echo(pykka.ThreadingActor):  # type: ignore[misc]
        def on_receive(self, message: Any) -> Any:
            return message

    ref = Echo.start()
    try:
        return in_thread(lambda: _time_asks(ref.ask, k, warmup))
    finally:
        ref.stop()


def troupe_ask_blocking(k: int, warmup: int) -> float:
    tree = Supervisor(ROOT, children=[child(Echo, name="echo")])
    with quiet_troupe_log(), runtime.start_in_thread(tree) as system:
        ref = system.ref(f"/{ROOT}/echo")
        return in_thread(lambda: _time_asks(ref.ask_blocking, k, warmup))


def bare_from_thread_ask(k: int, warmup: int) -> float:
    """Mean seconds per `trio.from_thread.run_sync(echo, msg)` from a fresh plain thread
    into a bare trio loop: one wake-up of the loop and one of the thread per call, the
    floor of any blocking call from a thread into trio."""
    with bare_loop(ThreadCounter(0, threading.Event())) as (token, _):
        run_sync = trio.from_thread.run_sync

        def echo(msg: Any) -> Any:
            return msg

        return in_thread(
            lambda: _time_asks(lambda msg: run_sync(echo, msg, trio_token=token), k, warmup)
        )


class _HandOff(trio.abc.Instrument):
    """The lean ask's loop side: on each wake-up, before trio runs the batch, move
    what threads handed over into the consumer's queue and reschedule the consumer
    (the hand-off Troupe's loop monitor makes); and time every step with one clock
    read and a compare, the least a loop monitor does per step."""

    def __init__(self, handoffs: deque[Any], deliver: Callable[[Any], None]) -> None:
        self.handoffs = handoffs
        self.deliver = deliver
        self.t0 = 0.0
        self.longest = 0.0

    def after_io_wait(self, timeout: float) -> None:
        handoffs = self.handoffs
        while handoffs:
            self.deliver(handoffs.popleft())
        self.t0 = perf_counter()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        now = perf_counter()
        took = now - self.t0
        self.t0 = now
        if took > self.longest:
            self.longest = took


def lean_ask_blocking(k: int, warmup: int) -> float:
    """Mean seconds per blocking ask from a plain thread into a consumer task, with no
    Troupe code: the bound of any design whose handler runs in a task of its own.

    The thread appends (msg, its waiter) to a deque and wakes the loop with one
    `run_sync_soon`; the loop's instrument hands the ask to the consumer as it
    wakes up (`_HandOff`), so the consumer runs in the batch that the wake-up
    starts; the consumer awaits the echo handler and puts the answer on the
    thread's `queue.SimpleQueue` (Troupe's waiter too).  Beyond
    `trio.from_thread.run_sync`, it has the consumer's task step and the
    per-step hook; it has none of an ask's other duties (a timeout, order with
    the thread's tells, a bounded mailbox, late replies)."""
    handoffs: deque[Any] = deque()
    queue: deque[Any] = deque()
    lot = trio.lowlevel.ParkingLot()

    def deliver(item: Any) -> None:
        queue.append(item)
        if lot:
            lot.unpark()

    async def echo(msg: Any) -> Any:
        return msg

    async def consumer() -> None:
        popleft = queue.popleft
        while True:
            while queue:
                msg, waiter = popleft()
                waiter.put(await echo(msg))
            await lot.park()

    def wake() -> None:
        # Mostly a no-op: the instrument took the ask as the loop woke up.  But an
        # ask handed over while the loop was awake may have its wake-up byte read
        # before the instrument runs again: this callback takes it then.
        while handoffs:
            deliver(handoffs.popleft())

    local = threading.local()
    with trio_in_thread(consumer, _HandOff(handoffs, deliver)) as token:

        def ask(msg: Any) -> Any:
            waiter: SimpleQueue[Any] = local.__dict__.setdefault("waiter", SimpleQueue())
            handoffs.append((msg, waiter))
            token.run_sync_soon(wake)
            return waiter.get()

        return in_thread(lambda: _time_asks(ask, k, warmup))


@contextmanager
def one_core() -> Iterator[None]:
    """Threads started inside run on one core (they inherit the affinity of the
    thread that starts them): a thread's round trip into the loop then costs
    what the software does, not how long the machine takes to wake another core
    (about 56 µs on both sides on the 2-core VM the figures were taken on).
    Without ``os.sched_setaffinity`` (not Linux) it changes nothing."""
    if not hasattr(os, "sched_setaffinity"):
        yield
        return
    allowed = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {max(allowed)})
    try:
        yield
    finally:
        os.sched_setaffinity(0, allowed)


def _time_asks(ask: Callable[[Any], Any], k: int, warmup: int) -> float:
    for i in range(warmup):
        ask(i)
    start = perf_counter()
    for i in range(k):
        if ask(i) != i:
            raise AssertionError("wrong reply")
    return (perf_counter() - start) / k


def in_thread(fn: Callable[[], float]) -> float:
    """Run `fn` in a fresh plain thread and return its result."""
    out: list[float] = []
    thread = threading.Thread(target=lambda: out.append(fn()), daemon=True)
    thread.start()
    thread.join(JOIN_TIMEOUT)
    if not out:
        raise RuntimeError("the measuring thread failed or timed out")
    return out[0]


def pykka_once(size: Size) -> Figures:
    m = size.pick(100_000, 1_000)
    k = size.pick(5_000, 100)
    warmup = size.pick(200, 10)
    figures: Figures = {
        "troupe_tell": m / troupe_foreign_tell(m, 1),
        "troupe_ask_us": troupe_ask_blocking(k, warmup) * 1e6,
        "fromthread_ask_us": bare_from_thread_ask(k, warmup) * 1e6,
    }
    with one_core():
        figures["troupe_ask_1core_us"] = troupe_ask_blocking(k, warmup) * 1e6
        figures["fromthread_ask_1core_us"] = bare_from_thread_ask(k, warmup) * 1e6
        figures["lean_ask_1core_us"] = lean_ask_blocking(k, warmup) * 1e6
    if PYKKA:
        figures["pykka_tell"] = m / pykka_tell(m)
        figures["pykka_ask_us"] = pykka_ask(k, warmup) * 1e6
    return figures


PYKKA_BENCH = Bench(
    name="pykka",
    run_once=pykka_once,
    rows=[
        Row(
            "tell from a plain thread vs Pykka (msg/s)",
            "troupe_tell",
            "pykka_tell",
            "pykka.ThreadingActor, actor_ref.tell(msg) from one plain thread, same counting "
            "handler, same M",
            Target(">=", 2.0),
        ),
        Row(
            "ask_blocking round trip from a plain thread vs trio.from_thread.run_sync, "
            "on one core (µs)",
            "troupe_ask_1core_us",
            "fromthread_ask_1core_us",
            "trio.from_thread.run_sync(echo, msg, trio_token=token) from one plain thread into "
            "a bare trio loop in its own thread (echo runs in trio's run_sync_soon callback): "
            "one wake-up of the loop and one of the thread per call; both sides' threads "
            "pinned to one core (os.sched_setaffinity), so that the figure is the software's",
            Target("<=", 1.0),
            digits=1,
        ),
        Row(
            "bound: a blocking ask into a task of its own, no Troupe code, vs "
            "trio.from_thread.run_sync, on one core (µs)",
            "lean_ask_1core_us",
            "fromthread_ask_1core_us",
            "the same baseline; the bound is benchmarks/threads.py's lean_ask_blocking: the "
            "thread hands the ask over through a deque and one run_sync_soon, the loop's "
            "instrument passes it to a parked consumer task as the loop wakes up (Troupe's "
            "hand-off), the consumer awaits the handler and answers on the thread's "
            "SimpleQueue, and a per-step hook reads the clock (the loop monitor's duty)",
            digits=1,
        ),
        Row(
            "ask_blocking round trip from a plain thread vs trio.from_thread.run_sync, "
            "threads free to use both cores (µs)",
            "troupe_ask_us",
            "fromthread_ask_us",
            "the same, not pinned: mostly the time the machine takes to wake the other "
            "core, on both sides",
            digits=1,
        ),
        Row(
            "ask_blocking round trip from a plain thread vs Pykka ask (µs)",
            "troupe_ask_us",
            "pykka_ask_us",
            "pykka.ThreadingActor echo, actor_ref.ask(msg) (blocking) from one plain thread "
            "(reported beside: Pykka hands over between two plain threads, with no event "
            "loop to wake)",
            digits=1,
        ),
    ],
    notes=[
        "pykka: tell M = 100,000 from one plain thread until the handler saw the last one "
        "(Troupe: ref.tell into start_in_thread, Mailbox capacity M); ask: 5,000 sequential "
        "ask_blocking / from_thread.run_sync / pykka ask after 200 warm-up asks, mean per ask, "
        "each from a fresh plain thread, measured one after the other in the same run; "
        "ask_blocking and from_thread.run_sync once free and once with their threads on "
        "one core.",
        "ask_blocking on one core: from_thread.run_sync runs its function in trio's run_sync_soon "
        "callback, in one step; an actor's handler runs in the actor's own task, one step more. "
        "The bound row has that step and the loop monitor's per-step hook and nothing else, and "
        "lands at about 1.0x: a target of 1.0x asks Troupe's own path to cost nothing. That path "
        "is about 3 µs on one core: a wait with a deadline (a timed wait on the thread's "
        "SimpleQueue costs about 0.7 µs more than the bound's untimed one), the thread's lane "
        "that keeps an ask behind the thread's earlier tells, the reply that tells a late answer "
        "from a timely one, and the mailbox's capacity check.",
        *(
            []
            if PYKKA
            else ["pykka is not installed (pip install -e '.[bench]'): its rows show n/a."]
        ),
    ],
)


# -- 3. loop stalls while threads inject --------------------------------------
TICK = 0.005


class Ticker(Actor):
    async def on_start(self) -> None:
        self.ticks = 0
        self.ctx.every(TICK, "tick")

    async def receive(self, msg: Any) -> None:
        self.ticks += 1

    def snapshot_stats(self) -> dict[str, Any]:
        return {"ticks": self.ticks}


class Sink(Actor):
    async def receive(self, msg: Any) -> None:
        pass


class StepRecorder(trio.abc.Instrument):
    """The benchmark's own measure of the longest task step (independent of Troupe's)."""

    def __init__(self) -> None:
        self.longest = 0.0
        self.task = ""
        self._t0: float | None = None

    def reset(self) -> None:
        self.longest = 0.0
        self.task = ""

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self._t0 = perf_counter()

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if self._t0 is None:  # installed in the middle of a step: no start time
            return
        took = perf_counter() - self._t0
        self._t0 = None
        if took > self.longest:
            self.longest = took
            self.task = task.name


def stall_run(seconds: float, injectors: int) -> dict[str, Any]:
    """Run a ticker for `seconds` while `injectors` plain threads tell a sink flat out.

    The system runs in `runtime.open_system` on a loop in a background thread,
    so that the benchmark can also install its own step recorder, reset when
    the injection starts.
    """
    tree = Supervisor(ROOT, children=[child(Ticker, name="ticker"), child(Sink, name="sink")])
    box: dict[str, Any] = {}
    ready = threading.Event()
    recorder = StepRecorder()

    async def main() -> None:
        trio.lowlevel.add_instrument(recorder)
        async with runtime.open_system(tree) as system:
            finish = trio.Event()
            box["finish"] = finish.set
            box["sink"] = system.ref(f"/{ROOT}/sink")
            box["token"] = trio.lowlevel.current_trio_token()
            recorder.reset()
            ready.set()
            await finish.wait()
            box["snap"] = system.snapshot()
            box["own"] = (recorder.longest, recorder.task)

    def loop() -> None:
        try:
            with quiet_troupe_log():
                trio.run(main)
        finally:
            ready.set()

    loop_thread = threading.Thread(target=loop, daemon=True)
    loop_thread.start()
    ready.wait()
    sink = box["sink"]
    stop = threading.Event()
    sent = [0] * injectors

    def inject(slot: int) -> None:
        tell = sink.tell
        n = 0
        while not stop.is_set():
            for i in range(100):
                tell(i)
            n += 100
        sent[slot] = n

    threads = [threading.Thread(target=inject, args=(i,), daemon=True) for i in range(injectors)]
    for thread in threads:
        thread.start()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    box["token"].run_sync_soon(box["finish"])
    loop_thread.join()
    snap = box["snap"]
    assert snap.loop is not None
    own_step, own_task = box["own"]
    return {
        "snap_step": snap.loop.longest_step,
        "snap_task": snap.loop.longest_step_task,
        "lag": snap.loop.max_lag,
        "own_step": own_step,
        "own_task": own_task,
        "rate": sum(sent) / seconds,
        "ticks": snap.find(f"/{ROOT}/ticker").stats["ticks"],
    }


def stall_once(size: Size) -> Figures:
    seconds = 3.0 if not size.quick else 0.2
    busy = stall_run(seconds, 4)
    idle = stall_run(seconds, 0)
    eprint(
        f"  stall: longest step by task: injecting {busy['own_task']!r} "
        f"(snapshot says {busy['snap_task']!r}), idle {idle['own_task']!r}"
    )
    return {
        "snap_step_ms": busy["snap_step"] * 1e3,
        "idle_snap_step_ms": idle["snap_step"] * 1e3,
        "step_ms": busy["own_step"] * 1e3,
        "idle_step_ms": idle["own_step"] * 1e3,
        "lag_ms": busy["lag"] * 1e3,
        "idle_lag_ms": idle["lag"] * 1e3,
        "inject_rate": busy["rate"],
        "ticks": busy["ticks"],
        "idle_ticks": idle["ticks"],
    }


STALL = Bench(
    name="stall",
    run_once=stall_once,
    rows=[
        Row(
            "longest loop step, 4 threads injecting: snapshot().loop.longest_step (ms)",
            "snap_step_ms",
            "idle_snap_step_ms",
            "the same system and ticker, no injecting threads (goal is absolute: < 10 ms)",
            Target("<", 10.0, absolute=True),
            digits=2,
        ),
        Row(
            "longest loop step, 4 threads injecting: benchmark's own Instrument (ms)",
            "step_ms",
            "idle_step_ms",
            "the same system and ticker, no injecting threads (goal is absolute: < 10 ms)",
            Target("<", 10.0, absolute=True),
            digits=2,
        ),
        Row(
            "max scheduling lag, 4 threads injecting (ms)",
            "lag_ms",
            "idle_lag_ms",
            "the same system and ticker, no injecting threads (goal is absolute: < 10 ms)",
            Target("<", 10.0, absolute=True),
            digits=2,
        ),
        Row(
            "ticker ticks during the stall run (count)",
            "ticks",
            "idle_ticks",
            f"ticks of the same ctx.every({TICK}) ticker with no injecting threads",
        ),
        Row(
            "messages injected by 4 threads during the stall run (msg/s)",
            "inject_rate",
            None,
            "none (report only)",
        ),
    ],
    notes=[
        "stall: 3 s (full) of 4 plain threads calling ref.tell on a Sink actor (default "
        f"Mailbox, 10,000, block) flat out while a Ticker actor runs ctx.every({TICK}); "
        "the system runs in runtime.open_system on a trio loop in a background thread. "
        "snapshot().loop figures (longest task step, max lag of the runtime's 50 ms probe) "
        "cover the whole life of the system; the benchmark's own trio Instrument covers "
        "only the measuring window. On CPython the loop thread shares the GIL with the "
        "injectors (switch interval 5 ms), so a step can include time spent waiting for "
        "the GIL.",
    ],
)


BENCHES = [FOREIGN_TELL, PYKKA_BENCH, STALL]

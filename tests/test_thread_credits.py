"""Room that foreign threads take in advance (credits): never pinned, never wasted.

Issue 11, item 6.  Real threads and real time: every wait is bounded, and the
assertions are on counts (and CPU seconds), not on how long things took.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
import trio

import runtime
from runtime import Actor, Mailbox, Supervisor, child

WAIT = 30.0  # generous bound for anything involving real threads


class Counter(Actor):
    """Counts what it gets; ``"hold"`` parks it (off the loop) until `release` is set."""

    def __init__(self, holding: threading.Event, release: threading.Event) -> None:
        self.holding = holding
        self.release = release
        self.count = 0

    async def receive(self, msg: Any) -> Any:
        if msg == "count":
            return self.count
        if msg == "hold":
            self.holding.set()
            await trio.to_thread.run_sync(self.release.wait, WAIT, abandon_on_cancel=True)
            return None
        self.count += 1
        return None


class Flooder(Actor):
    """On the loop thread: tells the counter `n` messages, stopping at the first
    `MailboxFull`; returns how many went in."""

    async def receive(self, msg: Any) -> Any:
        target = self.ctx.system.ref("/app/counter")
        sent = 0
        try:
            for i in range(msg):
                target.tell(i)
                sent += 1
        except runtime.MailboxFull:
            pass
        return sent


def tree(capacity: int, overflow: str, holding: threading.Event, release: threading.Event) -> Any:
    return Supervisor(
        "app",
        children=[
            child(
                Counter,
                name="counter",
                kwargs={"holding": holding, "release": release},
                mailbox=Mailbox(capacity=capacity, overflow=overflow),
                shutdown=0.5,
            ),
            child(Flooder, name="flooder"),
        ],
    )


class Parked:
    """Threads that each tell once, then stay alive (parked on an event) until released."""

    def __init__(self, ref: runtime.ActorRef, n: int, msg: Any = "x") -> None:
        self.ref = ref
        self.msg = msg
        self.told = threading.Semaphore(0)
        self.leave = threading.Event()
        self.errors: list[BaseException] = []
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(n)]
        for t in self.threads:
            t.start()
        for _ in self.threads:
            assert self.told.acquire(timeout=WAIT), "a thread could not tell"

    def _run(self) -> None:
        try:
            self.ref.tell(self.msg, timeout=WAIT)
        except BaseException as exc:
            self.errors.append(exc)
        self.told.release()
        self.leave.wait(WAIT)

    def join(self) -> None:
        self.leave.set()
        for t in self.threads:
            t.join(WAIT)
            assert not t.is_alive(), "a thread hung"
        assert self.errors == []


def ask_when_room(ref: runtime.ActorRef, msg: Any) -> Any:
    """`ask_blocking`, asking again while a ``fail`` mailbox is (really) full."""
    deadline = time.monotonic() + WAIT
    while True:
        try:
            return ref.ask_blocking(msg, timeout=WAIT)
        except runtime.MailboxFull:
            assert time.monotonic() < deadline, "the mailbox stayed full"
            time.sleep(0.01)


def in_thread(fn: Any) -> Any:
    """Run `fn` in a fresh thread (one that never told anything before); return its result."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(("ok", fn()))
        except BaseException as exc:
            out.append(("error", exc))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(WAIT)
    assert not t.is_alive(), "the thread hung"
    kind, value = out[0]
    if kind == "error":
        raise value
    return value


# -- credits never pin room -----------------------------------------------------
@pytest.mark.parametrize("overflow", ["block", "fail"])
def test_credits_of_live_idle_threads_do_not_pin_room_for_the_loop(overflow: str) -> None:
    """4 threads tell once each (taking credits in advance) and live on: once their
    messages are handled, the loop can tell `capacity` messages again."""
    holding, release = threading.Event(), threading.Event()
    with runtime.start_in_thread(tree(100, overflow, holding, release)) as system:
        counter = system.ref("/app/counter")
        parked = Parked(counter, 4)
        assert counter.ask_blocking("count", timeout=WAIT) == 4  # all handled
        assert system.ref("/app/flooder").ask_blocking(100, timeout=WAIT) == 100
        assert ask_when_room(counter, "count") == 104
        parked.join()


@pytest.mark.parametrize("threads", [1, 4, 16])
def test_credits_of_many_threads_over_time_do_not_pin_room(threads: int) -> None:
    """However many threads told the mailbox earlier and however long they live."""
    holding, release = threading.Event(), threading.Event()
    with runtime.start_in_thread(tree(64, "block", holding, release)) as system:
        counter = system.ref("/app/counter")
        flooder = system.ref("/app/flooder")
        crowd = [Parked(counter, threads) for _ in range(3)]
        assert counter.ask_blocking("count", timeout=WAIT) == 3 * threads
        for round_ in range(3):
            assert flooder.ask_blocking(64, timeout=WAIT) == 64
            # Everything sent so far handled (this ask queues behind it): the flooder's
            # next round may run before the counter's next step otherwise.
            handled = 3 * threads + 64 * (round_ + 1)
            assert counter.ask_blocking("count", timeout=WAIT) == handled
        for parked in crowd:
            parked.join()


def test_fail_mailbox_full_only_when_it_really_is_full() -> None:
    """Under ``fail`` a thread gets MailboxFull only when the loop found no room for it:
    with the actor holding one message and the queue empty, exactly `capacity` more fit,
    however many other live threads took credits before."""
    holding, release = threading.Event(), threading.Event()
    with runtime.start_in_thread(tree(100, "fail", holding, release)) as system:
        counter = system.ref("/app/counter")
        parked = Parked(counter, 8)
        assert counter.ask_blocking("count", timeout=WAIT) == 8

        def fill() -> int:
            counter.tell("hold")
            assert holding.wait(WAIT)
            sent = 0
            try:
                for i in range(101):
                    counter.tell(i)
                    sent += 1
            except runtime.MailboxFull:
                pass
            return sent

        assert in_thread(fill) == 100
        release.set()
        assert ask_when_room(counter, "count") == 108
        parked.join()


def test_fail_no_spurious_mailbox_full_under_contention() -> None:
    """8 threads flood a ``fail`` mailbox that can hold everything they send at once:
    none of them may be told it is full."""
    holding, release = threading.Event(), threading.Event()
    with runtime.start_in_thread(tree(20_000, "fail", holding, release)) as system:
        counter = system.ref("/app/counter")
        errors: list[BaseException] = []
        go = threading.Event()

        def produce() -> None:
            go.wait(WAIT)
            try:
                for i in range(2000):
                    counter.tell(i)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=produce, daemon=True) for _ in range(8)]
        for t in threads:
            t.start()
        go.set()
        for t in threads:
            t.join(WAIT)
            assert not t.is_alive(), "a producer hung"
        assert errors == []
        assert counter.ask_blocking("count", timeout=WAIT) == 16_000


# -- blocked threads cost no CPU --------------------------------------------------
def test_threads_blocked_on_a_full_mailbox_cost_no_cpu() -> None:
    holding, release = threading.Event(), threading.Event()
    with runtime.start_in_thread(tree(4, "block", holding, release)) as system:
        counter = system.ref("/app/counter")
        counter.tell("hold")
        assert holding.wait(WAIT)
        for i in range(4):
            counter.tell(i)  # the mailbox is full now
        errors: list[BaseException] = []

        def blocked() -> None:
            try:
                for i in range(3):
                    counter.tell(i, timeout=WAIT)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=blocked, daemon=True) for _ in range(8)]
        for t in threads:
            t.start()
        time.sleep(0.3)  # let them all block
        assert all(t.is_alive() for t in threads)
        gate = system._system.gate
        cpu0, wall0, wakeups0 = time.process_time(), time.monotonic(), gate.wakeups
        time.sleep(1.0)
        cpu = time.process_time() - cpu0
        wall = time.monotonic() - wall0
        wakeups = gate.wakeups - wakeups0  # the loop's drains of thread lanes meanwhile
        assert all(t.is_alive() for t in threads)  # still blocked: nothing was handled
        release.set()
        for t in threads:
            t.join(WAIT)
            assert not t.is_alive(), "a blocked thread was never let in"
        assert errors == []
        assert counter.ask_blocking("count", timeout=WAIT) == 4 + 8 * 3
    assert cpu < 0.3 * wall, f"{cpu:.2f} CPU-s burnt in {wall:.2f} s of waiting"
    assert wakeups <= 2, f"{wakeups} wake-ups of the loop while nothing changed"


def test_a_thread_that_times_out_leaves_no_room_behind() -> None:
    """Threads giving up on a full mailbox (MailboxFull after their timeout) hold no
    room afterwards: once it is all handled the loop can fill the mailbox again."""
    holding, release = threading.Event(), threading.Event()
    with runtime.start_in_thread(tree(8, "block", holding, release)) as system:
        counter = system.ref("/app/counter")
        counter.tell("hold")
        assert holding.wait(WAIT)
        for i in range(8):
            counter.tell(i)
        outcomes: list[Any] = []

        def give_up() -> None:
            try:
                counter.tell("late", timeout=0.2)
                outcomes.append("sent")
            except runtime.MailboxFull:
                outcomes.append("full")

        threads = [threading.Thread(target=give_up, daemon=True) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(WAIT)
            assert not t.is_alive()
        assert outcomes == ["full"] * 4
        release.set()
        assert counter.ask_blocking("count", timeout=WAIT) == 8
        assert system.ref("/app/flooder").ask_blocking(8, timeout=WAIT) == 8


# -- timeouts: 0 and inf ------------------------------------------------------------
@pytest.mark.parametrize("overflow", ["block", "fail"])
def test_tell_with_zero_timeout_succeeds_when_there_is_room(overflow: str) -> None:
    holding, release = threading.Event(), threading.Event()
    with runtime.start_in_thread(tree(10, overflow, holding, release)) as system:
        counter = system.ref("/app/counter")
        for _ in range(5):  # fresh threads: none holds credits yet
            in_thread(lambda: counter.tell("x", timeout=0))
        counter.tell("x", timeout=0)  # this thread, again and again
        counter.tell("x", timeout=0)
        assert counter.ask_blocking("count", timeout=WAIT) == 7


def test_tell_with_zero_timeout_on_a_full_mailbox_raises_mailbox_full() -> None:
    holding, release = threading.Event(), threading.Event()
    with runtime.start_in_thread(tree(3, "block", holding, release)) as system:
        counter = system.ref("/app/counter")
        counter.tell("hold")
        assert holding.wait(WAIT)
        sent = 0
        with pytest.raises(runtime.MailboxFull):
            for i in range(10):
                counter.tell(i, timeout=0)
                sent += 1
        assert sent == 3
        with pytest.raises(runtime.MailboxFull):
            in_thread(lambda: counter.tell("x", timeout=0))
        release.set()
        assert counter.ask_blocking("count", timeout=WAIT) == 3


@pytest.mark.parametrize("timeout", [float("inf"), 1e10, None])
def test_tell_and_ask_blocking_with_no_or_huge_timeout(timeout: float | None) -> None:
    """``inf`` (like None) means no timeout; a huge finite one is no error either."""
    holding, release = threading.Event(), threading.Event()
    with runtime.start_in_thread(tree(2, "block", holding, release)) as system:
        counter = system.ref("/app/counter")
        assert counter.ask_blocking("count", timeout=timeout) == 0
        counter.tell("hold", timeout=timeout)
        assert holding.wait(WAIT)
        counter.tell(0, timeout=timeout)
        counter.tell(1, timeout=timeout)  # full now

        def late() -> Any:
            counter.tell(2, timeout=timeout)  # waits for room
            return counter.ask_blocking("count", timeout=timeout)

        result: list[Any] = []
        waiter = threading.Thread(target=lambda: result.append(late()), daemon=True)
        waiter.start()
        time.sleep(0.1)
        release.set()
        waiter.join(WAIT)
        assert not waiter.is_alive()
        assert result == [3]


# -- ask_blocking on a full mailbox ---------------------------------------------------
@pytest.mark.parametrize("overflow", ["block", "fail"])
def test_ask_blocking_on_a_full_mailbox_sends_nothing(overflow: str) -> None:
    """``block``: AskTimeout once the mailbox stayed full past the timeout; ``fail``:
    MailboxFull.  Either way the question is not delivered later."""
    holding, release = threading.Event(), threading.Event()
    with runtime.start_in_thread(tree(2, overflow, holding, release)) as system:
        counter = system.ref("/app/counter")
        counter.tell("hold")
        assert holding.wait(WAIT)
        counter.tell(0)
        counter.tell(1)
        expected = runtime.AskTimeout if overflow == "block" else runtime.MailboxFull
        for _ in range(3):  # this thread, then fresh ones
            with pytest.raises(expected, match="full"):
                in_thread(lambda: counter.ask_blocking("count", timeout=0.2))
        with pytest.raises(expected, match="full"):
            counter.ask_blocking("count", timeout=0.2)
        release.set()
        assert ask_when_room(counter, "count") == 2
        assert system.snapshot().dead_letters["timeout"] == 0


# -- a mailbox that closes for good ------------------------------------------------------
def test_a_thread_waiting_on_a_mailbox_that_closes_for_good_is_let_go() -> None:
    holding, release = threading.Event(), threading.Event()
    with runtime.start_in_thread(tree(1, "block", holding, release)) as system:
        counter = system.ref("/app/counter")
        counter.tell("hold")
        assert holding.wait(WAIT)
        counter.tell(0)  # full now
        outcome: list[Any] = []

        def wait_for_room() -> None:
            try:
                counter.tell(1, timeout=3.0)
                outcome.append("sent")
            except runtime.MailboxFull:
                outcome.append("full")

        waiter = threading.Thread(target=wait_for_room, daemon=True)
        waiter.start()
        time.sleep(0.2)
        system.terminate_child("/app/counter")  # waits out the 0.5 s shutdown
        waiter.join(WAIT)
        release.set()
        assert outcome == ["sent"]  # let in, and dead-lettered as stopped


# -- found by the second attack pass ---------------------------------------------------------
def _tell_from_threads(ref: runtime.ActorRef, n: int, timeout: float | None) -> dict[str, int]:
    """`n` threads tell once each, at the same moment; how each tell ended."""
    outcome: dict[str, int] = {}
    lock = threading.Lock()
    start = threading.Barrier(n)

    def one() -> None:
        start.wait(WAIT)
        try:
            ref.tell("x", timeout=timeout)
            what = "sent"
        except runtime.MailboxFull:
            what = "full"
        with lock:
            outcome[what] = outcome.get(what, 0) + 1

    threads = [threading.Thread(target=one, daemon=True) for _ in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
    assert not any(thread.is_alive() for thread in threads), "a thread stayed blocked"
    return outcome


@pytest.mark.parametrize(("capacity", "threads"), [(1024, 40), (64, 24)])
def test_many_threads_at_once_into_fail_get_in_while_there_is_room(
    capacity: int, threads: int
) -> None:
    """More than 16 threads answered in one drain used to find the room lent to the
    first ones as chunks, and got MailboxFull from a mailbox that held 16 messages."""
    holding, release = threading.Event(), threading.Event()
    with runtime.start_in_thread(tree(capacity, "fail", holding, release)) as system:
        counter = system.ref("/app/counter")
        assert _tell_from_threads(counter, threads, None) == {"sent": threads}
        release.set()


def test_many_threads_at_once_into_block_are_not_left_waiting_on_an_empty_mailbox() -> None:
    holding, release = threading.Event(), threading.Event()
    with runtime.start_in_thread(tree(1024, "block", holding, release)) as system:
        counter = system.ref("/app/counter")
        assert _tell_from_threads(counter, 40, 10.0) == {"sent": 40}
        release.set()


class Hog(Actor):
    """Holds the loop (on purpose) so that thread requests pile up for one drain, then
    tells the counter from the loop until it is full; returns how many went in."""

    async def receive(self, msg: Any) -> Any:
        time.sleep(0.3)  # blocks the loop: the threads' requests wait for one drain
        await trio.sleep(0.2)  # that drain answers them all, lending each a chunk
        target = self.ctx.system.ref("/app/counter")
        told = 0
        try:
            for i in range(msg):
                target.tell(i)  # the first that finds it full takes back the chunks
                told += 1
        except runtime.MailboxFull:
            pass
        return told


def test_room_taken_back_from_several_threads_is_all_given_back() -> None:
    """The loop taking back room from idle threads (a loop-side tell found the mailbox
    full) counted only the last thread's: the rest stayed reserved for ever."""
    holding, release = threading.Event(), threading.Event()
    spec = tree(64, "block", holding, release)
    spec = Supervisor("app", children=[*spec.children, child(Hog, name="hog")])
    with runtime.start_in_thread(spec) as system:
        counter = system.ref("/app/counter")
        counter.tell("hold")  # nothing is handled meanwhile: room is only what is left
        assert holding.wait(WAIT)
        told: list[Any] = []
        hog = threading.Thread(
            target=lambda: told.append(system.ref("/app/hog").ask_blocking(64, timeout=WAIT))
        )
        hog.start()
        time.sleep(0.1)  # the hog holds the loop now
        parked = Parked(counter, 4)
        hog.join(WAIT)
        assert told == [64 - 4]  # all but the 4 threads' messages fit ("hold" is in hand)
        release.set()
        parked.join()
        assert ask_when_room(counter, "count") == 4 + 60

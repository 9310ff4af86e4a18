"""Attacks on the thread asks the loop monitor admits as the loop wakes up
(`LoopMonitor.serve_handoffs`, `ThreadGate.admit_handoffs`), outside any task.

Each test tries to break one promise: every ask from a thread is answered,
failed with a typed error, or dead-lettered with a reason (never lost, never
left hanging), the system runs on, and nothing is left behind at shutdown.
Thread tests use real time with generous bounds and assert on counts.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pytest
import trio

import runtime
from runtime import Actor, Mailbox, Supervisor, child
from runtime.mailbox import MailboxQueue
from runtime.messages import Ask
from runtime.monitor import LoopMonitor

WAIT = 30.0  # generous bound for anything involving real threads


class Echo(Actor):
    def __init__(self, release: threading.Event | None = None) -> None:
        self.seen: list[Any] = []
        self.release = release

    async def receive(self, msg: Any) -> Any:
        if msg == "seen":
            return len(self.seen)
        if msg == "hold" and self.release is not None:
            await trio.to_thread.run_sync(self.release.wait, WAIT, abandon_on_cancel=True)
            return "held"
        self.seen.append(msg)
        return msg


def run_threads(n: int, work: Any) -> list[Any]:
    """Run ``work(i)`` in `n` plain threads at once; return their results (or errors)."""
    results: list[Any] = [None] * n
    start = threading.Barrier(n)

    def run(i: int) -> None:
        start.wait(WAIT)
        try:
            results[i] = work(i)
        except BaseException as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT)
        assert not thread.is_alive(), "an asking thread hung"
    return results


def test_thread_asks_resume_a_hibernating_actor_from_the_wake_up() -> None:
    # The actor starts with no task (no on_start) and hibernates at once when idle:
    # every ask admitted as the loop wakes up must start its task from outside any
    # task (`resume_soon` in the hook) and be answered.
    tree = Supervisor("app", children=[child(Echo, name="h", hibernate_after=0)])
    with runtime.start_in_thread(tree) as system:
        ref = system.ref("/app/h")

        def work(i: int) -> list[Any]:
            out = []
            for n in range(20):
                time.sleep(0.002)  # the loop is idle, asleep, when the ask comes
                out.append(ref.ask_blocking((i, n), timeout=WAIT))
            return out

        assert run_threads(1, work) == [[(0, n) for n in range(20)]]
        assert ref.ask_blocking("seen", timeout=WAIT) == 20
        assert not any(system.snapshot().dead_letters.values())
        assert system.is_running


@pytest.mark.parametrize("threads", [1, 16])
def test_many_threads_asking_at_once_are_all_answered(threads: int) -> None:
    tree = Supervisor("app", children=[child(Echo, name="e", mailbox=Mailbox(capacity=4))])
    with runtime.start_in_thread(tree) as system:
        ref = system.ref("/app/e")

        def work(i: int) -> list[Any]:
            return [ref.ask_blocking((i, n), timeout=WAIT) for n in range(100)]

        results = run_threads(threads, work)
        assert results == [[(i, n) for n in range(100)] for i in range(threads)]
        assert ref.ask_blocking("seen", timeout=WAIT) == 100 * threads
        gate = system._system.gate
        assert not gate.handoffs
        assert not any(system.snapshot().dead_letters.values())


def test_a_thread_ask_into_a_full_fail_mailbox_from_the_wake_up_raises_mailbox_full() -> None:
    release = threading.Event()
    spec = child(
        Echo, name="f", mailbox=Mailbox(capacity=1, overflow="fail"), kwargs={"release": release}
    )
    with runtime.start_in_thread(Supervisor("app", children=[spec])) as system:
        ref = system.ref("/app/f")
        try:
            ref.tell("hold")  # in hand: the mailbox is empty again
            deadline = time.monotonic() + WAIT
            while system.snapshot().find("/app/f").current is None:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            ref.tell("fill")  # the one place taken

            def work(i: int) -> Any:
                time.sleep(0.002)
                return ref.ask_blocking("more", timeout=WAIT)

            [result] = run_threads(1, work)
            assert isinstance(result, runtime.MailboxFull), result
        finally:
            release.set()
        deadline = time.monotonic() + WAIT
        while True:  # "fill" may still take the one place for a moment
            try:
                assert ref.ask_blocking("seen", timeout=WAIT) == 1
                break
            except runtime.MailboxFull:
                assert time.monotonic() < deadline
                time.sleep(0.01)
        assert system.is_running


def test_a_thread_ask_timing_out_while_its_handoff_waits_is_never_handled() -> None:
    # The loop is blocked (a handler blocks the loop thread until the asking thread
    # lets it go) while a thread's ask sits in `handoffs`; the thread gives up.
    # Admitted later, it must be skipped (not handled, not answered to anyone), and
    # the thread's next ask must work.
    entered = threading.Event()
    release = threading.Event()

    class Blocker(Actor):
        def __init__(self) -> None:
            self.seen: list[Any] = []

        async def receive(self, msg: Any) -> Any:
            if msg == "block":
                entered.set()
                release.wait(WAIT)  # holds the loop thread
                return None
            self.seen.append(msg)
            return list(self.seen)

    tree = Supervisor("app", children=[child(Blocker, name="b")])
    with runtime.start_in_thread(tree) as system:
        ref = system.ref("/app/b")

        def work(i: int) -> Any:
            ref.tell("block")
            try:
                assert entered.wait(WAIT)  # the loop is in the blocking handler now
                with pytest.raises(runtime.AskTimeout, match="was not sent"):
                    ref.ask_blocking("given up", timeout=0.05)
            finally:
                release.set()
            return ref.ask_blocking("next", timeout=WAIT)

        assert run_threads(1, work) == [["next"]]
        assert not any(system.snapshot().dead_letters.values())


def test_thread_asks_while_the_system_stops_all_end_answered_or_closed() -> None:
    tree = Supervisor("app", children=[child(Echo, name="e")])
    outcomes: list[list[Any]] = []
    stop = threading.Event()
    started = threading.Barrier(9)

    def asker(i: int) -> None:
        mine: list[Any] = []
        outcomes.append(mine)
        started.wait(WAIT)
        while True:
            try:
                mine.append(ref.ask_blocking(i, timeout=WAIT))
            except runtime.RuntimeClosed:
                mine.append("closed")
                return
            except runtime.ActorStopped:
                mine.append("stopped")
            if stop.is_set() and len(mine) > 10_000:
                return

    threads = [threading.Thread(target=asker, args=(i,)) for i in range(8)]
    with runtime.start_in_thread(tree) as system:
        ref = system.ref("/app/e")
        for thread in threads:
            thread.start()
        started.wait(WAIT)
        time.sleep(0.2)
    stop.set()
    for thread in threads:
        thread.join(WAIT)
        assert not thread.is_alive(), "an asking thread hung at shutdown"
    for _i, mine in enumerate(outcomes):
        assert mine[-1] == "closed", mine[-5:]
        answered = [x for x in mine if x not in ("closed", "stopped")]
        assert set(answered) <= set(range(8))
    assert not system._system.gate.handoffs


def test_two_systems_in_one_process_each_admit_their_own_thread_asks() -> None:
    a = Supervisor("a", children=[child(Echo, name="e")])
    b = Supervisor("b", children=[child(Echo, name="e")])
    with runtime.start_in_thread(a) as one, runtime.start_in_thread(b) as two:
        refs = [one.ref("/a/e"), two.ref("/b/e")]

        def work(i: int) -> list[Any]:
            ref = refs[i % 2]
            out = []
            for n in range(50):
                if n % 10 == 0:
                    time.sleep(0.002)
                out.append(ref.ask_blocking((i, n), timeout=WAIT))
            return out

        assert run_threads(4, work) == [[(i, n) for n in range(50)] for i in range(4)]
        assert refs[0].ask_blocking("seen", timeout=WAIT) == 100
        assert refs[1].ask_blocking("seen", timeout=WAIT) == 100


async def test_thread_asks_are_answered_while_the_monitor_is_out_and_after_it_is_back() -> None:
    # Uninstalled, the monitor admits nothing: the run_sync_soon wake-up delivers.
    tree = Supervisor("app", children=[child(Echo, name="e")])
    async with runtime.open_system(tree) as system:
        ref = system.ref("/app/e")
        monitor = system.loop_monitor
        monitor.uninstall()
        try:
            with trio.fail_after(WAIT):
                assert await trio.to_thread.run_sync(ref.ask_blocking, 1, WAIT) == 1
        finally:
            monitor.install()
        with trio.fail_after(WAIT):
            assert await trio.to_thread.run_sync(ref.ask_blocking, 2, WAIT) == 2
        assert not system.gate.handoffs


async def test_a_thread_ask_whose_admission_fails_is_not_lost(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Whatever goes wrong inside admission (a bug, an odd mailbox), the thread must
    # hear of it: an error now, not a hang until its timeout (or forever, timeout=None).
    tree = Supervisor("app", children=[child(Echo, name="e")])
    async with runtime.open_system(tree) as system:
        ref = system.ref("/app/e")
        mailbox = ref._cell.mailbox
        real_put = MailboxQueue.put
        calls = 0

        def broken_put(self: MailboxQueue, item: Any) -> Any:
            nonlocal calls
            if self is mailbox and type(item) is Ask:
                calls += 1
                if calls == 1:
                    raise RuntimeError("admission broke")
            return real_put(self, item)

        monkeypatch.setattr(MailboxQueue, "put", broken_put)
        with caplog.at_level(logging.ERROR, logger="troupe"), trio.fail_after(WAIT):
            outcome = await trio.to_thread.run_sync(
                lambda: _outcome(lambda: ref.ask_blocking("first", timeout=3.0))
            )
        assert not isinstance(outcome, runtime.AskTimeout), "the ask was lost"
        assert isinstance(outcome, RuntimeError) and "admission broke" in str(outcome)
        assert calls == 1
        with trio.fail_after(WAIT):
            assert await trio.to_thread.run_sync(ref.ask_blocking, "second", WAIT) == "second"
        assert not system.gate.handoffs


def _outcome(fn: Any) -> Any:
    try:
        return fn()
    except BaseException as exc:
        return exc


class Interrupting(Actor):
    async def receive(self, msg: Any) -> Any:
        if msg == "interrupt":
            raise KeyboardInterrupt
        return msg


async def test_ctrl_c_in_a_handler_while_threads_ask_releases_every_thread() -> None:
    tree = Supervisor("app", children=[child(Interrupting, name="i"), child(Echo, name="e")])
    outcomes: list[Any] = []
    threads: list[threading.Thread] = []
    with pytest.raises(KeyboardInterrupt):
        async with runtime.open_system(tree) as system:
            ref = system.ref("/app/e")
            going = threading.Barrier(5)

            def asker(i: int) -> None:
                going.wait(WAIT)
                while True:
                    try:
                        ref.ask_blocking(i, timeout=WAIT)
                    except BaseException as exc:
                        outcomes.append(exc)
                        return

            threads = [threading.Thread(target=asker, args=(i,)) for i in range(4)]
            for thread in threads:
                thread.start()
            await trio.to_thread.run_sync(going.wait, WAIT)
            await trio.sleep(0.05)
            system.ref("/app/i").tell("interrupt")
            with trio.fail_after(WAIT):
                await trio.sleep_forever()
    for thread in threads:
        thread.join(WAIT)
        assert not thread.is_alive(), "a thread hung after Ctrl-C"
    assert len(outcomes) == 4
    assert all(isinstance(exc, runtime.RuntimeClosed) for exc in outcomes), outcomes


def test_a_loop_monitor_dropped_by_trio_can_still_be_uninstalled() -> None:
    # trio removes an instrument whose hook raises (a BaseException gets past the
    # monitor's own `except Exception`): entry.py's `finally: monitor.uninstall()`
    # must not then raise KeyError over whatever ended the system.
    class Boom(BaseException):
        pass

    def admit() -> None:
        handoffs.clear()
        raise Boom

    handoffs: list[int] = []

    async def main() -> None:
        monitor = LoopMonitor(blocked_after=10.0)
        monitor.serve_handoffs(handoffs, admit)
        monitor.install()
        handoffs.append(1)
        await trio.sleep(0)
        await trio.sleep(0)
        monitor.uninstall()

    logging.getLogger("trio.abc.Instrument").disabled = True
    try:
        trio.run(main)
    finally:
        logging.getLogger("trio.abc.Instrument").disabled = False


def test_an_ask_answered_before_its_thread_woke_the_loop_keeps_its_answer() -> None:
    # The monitor may admit a thread's ask before the thread makes its own wake-up
    # call (any wake-up of the loop will do: here the loop probe's).  If the system
    # then stops before that call, the call finds the run finished; the thread must
    # still get the answer the actor gave, not `RuntimeClosed` for a handled ask.
    tree = Supervisor("app", children=[child(Echo, name="e")])
    outcome: list[Any] = []
    posted = threading.Event()
    release = threading.Event()
    with runtime.start_in_thread(tree) as system:
        gate = system._system.gate
        ref = system.ref("/app/e")
        real_hand_off = gate._hand_off

        def late_hand_off() -> None:  # the thread is slow to make its wake-up call
            posted.set()
            release.wait(WAIT)
            real_hand_off()

        gate._hand_off = late_hand_off  # type: ignore[method-assign]
        thread = threading.Thread(
            target=lambda: outcome.append(_outcome(lambda: ref.ask_blocking("x", timeout=WAIT)))
        )
        thread.start()
        assert posted.wait(WAIT)
        deadline = time.monotonic() + WAIT
        while system.snapshot().find("/app/e").processed < 1:
            assert time.monotonic() < deadline, "the ask was not admitted"
            time.sleep(0.01)
    release.set()  # the run has finished: the wake-up call finds it gone
    thread.join(WAIT)
    assert not thread.is_alive()
    assert outcome == ["x"]

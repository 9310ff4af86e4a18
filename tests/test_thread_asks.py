"""ask_blocking's own path: one waiter per thread (no Future, no lock per call), asks
that take no credit, late and stale answers, and the order after the thread's tells."""

from __future__ import annotations

import threading
import time
from queue import SimpleQueue
from typing import Any

import pytest
import trio

import runtime
from runtime import Actor, Mailbox, Supervisor, child
from runtime.threads import ThreadGate, ThreadReply

WAIT = 30.0  # generous bound for anything involving real threads


def never_late(value: Any) -> None:
    raise AssertionError(f"unexpected late reply {value!r}")


# -- ThreadReply on its own (the loop's side called from the test's thread) ------
def test_a_stale_wake_up_of_an_earlier_ask_is_skipped() -> None:
    waiter: SimpleQueue[Any] = SimpleQueue()
    gate = ThreadGate("test")
    earlier = ThreadReply(gate, never_late, waiter)
    earlier.send("old")  # settled as its thread gave up: its wake-up stays queued
    reply = ThreadReply(gate, never_late, waiter)
    reply.send("new")
    assert reply.wait(time.monotonic() + WAIT, lambda: "x") == "new"
    assert waiter.empty()


def test_giving_up_makes_a_later_answer_late() -> None:
    late: list[Any] = []
    reply = ThreadReply(ThreadGate("test"), late.append, SimpleQueue())
    with pytest.raises(runtime.AskTimeout, match="no reply to the question"):
        reply.wait(time.monotonic(), lambda: "the question")
    assert reply.state == "abandoned"
    assert reply.send("answer") is False
    assert reply.fail(KeyError("x")) is False  # a late failure is not a dead letter
    assert late == ["answer"]


def test_an_answer_settled_as_the_thread_gives_up_is_taken() -> None:
    waiter: SimpleQueue[Any] = SimpleQueue()
    reply = ThreadReply(ThreadGate("test"), never_late, waiter)
    assert reply.fail(KeyError("boom")) is True
    assert reply.state == "done"
    waiter.get()  # as if its wake-up had not come yet when the deadline passed
    with pytest.raises(KeyError, match="boom"):
        reply.wait(time.monotonic(), lambda: "x")
    assert reply.send("again") is False  # settled once


def test_a_thread_interrupted_while_it_waits_gives_up() -> None:
    class Interrupted:
        def get(self, timeout: float) -> Any:
            raise KeyboardInterrupt

        def put(self, item: Any) -> None:
            raise AssertionError("nobody waits for it any more")

    late: list[Any] = []
    reply = ThreadReply(ThreadGate("test"), late.append, Interrupted())  # type: ignore[arg-type]
    with pytest.raises(KeyboardInterrupt):
        reply.wait(time.monotonic() + WAIT, lambda: "x")
    assert reply.state == "abandoned"
    assert reply.send("answer") is False
    assert late == ["answer"]


def test_stopped_while_the_gate_stops_is_runtime_closed() -> None:
    gate = ThreadGate("test")
    gate.stopping()
    reply = ThreadReply(gate, never_late, SimpleQueue())
    reply.fail(runtime.ActorStopped("gone"))
    with pytest.raises(runtime.RuntimeClosed) as info:
        reply.wait(time.monotonic() + WAIT, lambda: "x")
    assert isinstance(info.value.__cause__, runtime.ActorStopped)


# -- through a running system ----------------------------------------------------
class Counter(Actor):
    def __init__(self, release: threading.Event | None = None) -> None:
        self.seen: list[Any] = []
        self.release = release

    async def receive(self, msg: Any) -> Any:
        if msg == "seen":
            return list(self.seen)
        if msg == "held" and self.release is not None:
            await trio.to_thread.run_sync(self.release.wait, WAIT, abandon_on_cancel=True)
            return "held"
        self.seen.append(msg)
        return msg


def tree(mailbox: Mailbox | None = None, **kwargs: Any) -> Supervisor:
    spec = child(Counter, name="c", mailbox=mailbox or Mailbox(), kwargs=kwargs)
    return Supervisor("app", children=[spec])


def in_thread(fn: Any) -> Any:
    out: list[Any] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            out.append(fn())
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(WAIT)
    assert not thread.is_alive(), "the asking thread hung"
    if errors:
        raise errors[0]
    return out[0]


@pytest.mark.parametrize("overflow", ["block", "fail", "drop_new"])
def test_an_ask_arrives_after_the_tells_its_thread_sent_before(overflow: str) -> None:
    with runtime.start_in_thread(tree(Mailbox(capacity=10_000, overflow=overflow))) as system:
        ref = system.ref("/app/c")

        def work() -> list[Any]:
            answers = []
            for round_ in range(20):
                for i in range(50):
                    ref.tell((round_, i))
                answers.append(ref.ask_blocking("seen", timeout=WAIT)[-1])
            return answers

        assert in_thread(work) == [(round_, 49) for round_ in range(20)]


def test_a_late_answer_after_a_thread_timed_out_is_dead_lettered_and_not_crossed() -> None:
    release = threading.Event()
    with runtime.start_in_thread(tree(release=release)) as system:
        ref = system.ref("/app/c")

        def work() -> list[Any]:
            with pytest.raises(runtime.AskTimeout, match="no reply to str"):
                ref.ask_blocking("held", timeout=0.01)
            release.set()  # its answer comes now, after the thread gave up
            return [ref.ask_blocking(i, timeout=WAIT) for i in range(50)]

        assert in_thread(work) == list(range(50))
        snap = system.snapshot()
        assert snap.dead_letters["timeout"] == 1
        assert snap.find("/app/c").dead_lettered == 1


def test_asks_and_tells_waiting_for_room_get_in_in_their_order_and_are_answered() -> None:
    release = threading.Event()
    spec = child(Counter, name="c", mailbox=Mailbox(capacity=1), kwargs={"release": release})
    with runtime.start_in_thread(Supervisor("app", children=[spec])) as system:
        ref = system.ref("/app/c")
        gate = ref._cell.host.gate
        mailbox = ref._cell.mailbox
        ref.tell("held")  # the actor holds it until released ...
        ref.tell("first")  # ... and this fills the mailbox
        answers: list[Any] = []
        errors: list[BaseException] = []

        def ask() -> None:
            try:
                answers.append(ref.ask_blocking("seen", timeout=WAIT))
            except BaseException as exc:
                errors.append(exc)

        def tell() -> None:
            try:
                ref.tell("second", timeout=WAIT)
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=tell), threading.Thread(target=ask)]
        for thread in threads:  # the teller first: it waits in the line ahead of the asker
            thread.start()
            deadline = time.monotonic() + WAIT
            while len(gate._lines.get(mailbox, ())) < threads.index(thread) + 1:
                assert time.monotonic() < deadline, "the thread did not wait for room"
                time.sleep(0.001)
        release.set()
        for thread in threads:
            thread.join(WAIT)
            assert not thread.is_alive(), "a waiting thread hung"
        assert errors == []
        assert answers == [["first", "second"]]


class Batches(trio.abc.Instrument):
    """Numbers the loop's batches of task steps (one per wake-up) and notes, for each
    step of `path`'s actor, whether trio's run_sync_soon task ran in the same batch."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.batch = 0
        self.entry_batch = -1
        self.actor_batches: list[int] = []

    def after_io_wait(self, timeout: float) -> None:
        self.batch += 1

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name == "<TrioToken.run_sync_soon task>":
            self.entry_batch = self.batch
        elif task.name.split(" ")[0] == self.path:
            self.actor_batches.append(self.batch)

    def after_task_step(self, task: trio.lowlevel.Task) -> None:
        if task.name == "<TrioToken.run_sync_soon task>" and self.actor_batches:
            # ran after the actor in the batch: the wake-up of the actor's last step?
            if self.actor_batches[-1] == self.batch:
                self.actor_batches[-1] = -self.batch  # marked: shared with the wake-up
        elif task.name.split(" ")[0] == self.path and self.entry_batch == self.batch:
            self.actor_batches[-1] = -self.batch


def test_a_thread_ask_reaches_its_actor_in_the_batch_its_wake_up_starts() -> None:
    # The loop monitor admits the ask as the loop wakes up (before trio runs the
    # run_sync_soon task the thread's wake-up scheduled), so the actor runs in that
    # same batch, not in another turn of the loop after it.
    with runtime.start_in_thread(tree()) as system:
        batches = Batches("/app/c")
        system._call(trio.lowlevel.add_instrument, batches)
        ref = system.ref("/app/c")
        try:

            def work() -> list[Any]:
                answers = []
                for i in range(20):
                    time.sleep(0.002)  # the loop is idle, asleep, when the ask comes
                    answers.append(ref.ask_blocking(i, timeout=WAIT))
                return answers

            assert in_thread(work) == list(range(20))
        finally:
            system._call(trio.lowlevel.remove_instrument, batches)
        shared = [batch for batch in batches.actor_batches if batch < 0]
        assert len(batches.actor_batches) >= 20
        assert len(shared) >= 15, batches.actor_batches


def in_a_task() -> bool:
    try:
        trio.lowlevel.current_task()
    except RuntimeError:
        return False
    return True


class DeadLetterWatcher(Actor):
    """Subscribes to dead letters with a filter that notes whether it runs in a task."""

    def __init__(self, seen: list[bool]) -> None:
        self.seen = seen

    async def on_start(self) -> None:
        self.ctx.subscribe("system.deadletter", filter=self.look)

    def look(self, event: Any) -> bool:
        self.seen.append(in_a_task())
        return False

    async def receive(self, msg: Any) -> Any:
        return msg


def test_a_thread_ask_to_an_actor_stopped_for_good_is_dead_lettered_in_a_task() -> None:
    # The thread gets ActorStopped and the system runs on.  The loop monitor's wake-up
    # hook admits only asks that go straight into their mailbox; one that is
    # dead-lettered waits for the run_sync_soon callback, in a task: user code such
    # as a subscription's filter never runs outside one, and its time is a timed step.
    seen: list[bool] = []
    spec = child(DeadLetterWatcher, name="w", kwargs={"seen": seen})
    with runtime.start_in_thread(Supervisor("app", children=[tree().children[0], spec])) as system:
        ref = system.ref("/app/c")
        assert ref.ask_blocking(1, timeout=WAIT) == 1
        system.terminate_child("/app/c")

        def work() -> None:
            for _ in range(3):
                time.sleep(0.002)  # the loop is idle, asleep, when the ask comes
                with pytest.raises(runtime.ActorStopped):
                    ref.ask_blocking("late", timeout=WAIT)

        in_thread(work)
        assert system.snapshot().dead_letters["stopped"] == 3
        assert system.is_running
    assert len(seen) >= 3
    assert all(seen), seen

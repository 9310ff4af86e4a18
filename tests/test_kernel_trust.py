"""Issue 11's kernel behaviours: no lost wake-ups, wait cycles refused (rule 5), only
`Exception` crashes, graceful stop on every exit route, misuse refused early, and
one accounting rule (refused at the door vs dead-lettered)."""

from __future__ import annotations

import math
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import attrs
import pytest
import trio
import trio.testing

import runtime
from runtime import (
    Actor,
    ActorStopped,
    Deadlock,
    Mailbox,
    MailboxFull,
    RuntimeClosed,
    Supervisor,
    Terminated,
    child,
)
from runtime.testing import wait_for

# -- 1. no lost wake-ups ---------------------------------------------------------


class Recorder(Actor):
    def __init__(self, log: list[Any]) -> None:
        self.log = log

    async def receive(self, msg: Any) -> Any:
        self.log.append(msg)
        if isinstance(msg, Terminated):
            # While this system-lane item is in hand, the first user message arrives.
            await trio.sleep(0.01)
        return msg


class Quits(Actor):
    async def receive(self, msg: Any) -> Any:
        self.ctx.stop()


class Watcher(Actor):
    def __init__(self, log: list[Any]) -> None:
        self.log = log

    async def on_start(self) -> None:
        self.ctx.watch(self.ctx.system.ref("/app/quits"))

    async def receive(self, msg: Any) -> Any:
        self.log.append(msg)
        if isinstance(msg, Terminated):
            await trio.sleep(0.01)  # a user message arrives while this is in hand
        return msg


async def test_first_user_message_during_a_system_item_is_handled(autojump_clock: Any) -> None:
    log: list[Any] = []
    tree = Supervisor(
        "app",
        children=[
            child(Quits, name="quits", restart="temporary"),
            child(Watcher, name="watcher", args=(log,)),
        ],
    )
    async with runtime.open_system(tree) as system:
        watcher = system.ref("/app/watcher")
        system.ref("/app/quits").tell("quit")
        await wait_for(lambda: any(isinstance(m, Terminated) for m in log))
        watcher.tell("first")  # the watcher is still handling Terminated
        with trio.fail_after(5):
            await wait_for(lambda: "first" in log)
        watcher.tell("second")  # and a later tell wakes it again from its parked state
        with trio.fail_after(5):
            await wait_for(lambda: "second" in log)


async def test_later_tells_wake_a_parked_actor(autojump_clock: Any) -> None:
    log: list[Any] = []
    tree = Supervisor("app", children=[child(Recorder, name="r", args=(log,))])
    async with runtime.open_system(tree) as system:
        r = system.ref("/app/r")
        for round_ in range(5):
            await trio.testing.wait_all_tasks_blocked()  # parked, every time
            for i in range(3):
                r.tell((round_, i))
            with trio.fail_after(5):
                await wait_for(lambda n=round_: (n, 2) in log)
        assert log == [(n, i) for n in range(5) for i in range(3)]


# -- 2. wait cycles never hang (rule 5) ------------------------------------------


@attrs.frozen
class SendTo:
    path: str
    count: int


@attrs.frozen
class AskOf:
    path: str
    msg: Any


class Peer(Actor):
    mailbox = Mailbox(capacity=1, overflow="block")

    def __init__(self, outcome: dict[str, Any]) -> None:
        self.outcome = outcome

    async def receive(self, msg: Any) -> Any:
        match msg:
            case SendTo(path=path, count=count):
                target = self.ctx.system.ref(path)
                try:
                    for i in range(count):
                        await target.send(("filler", self.ctx.name, i))
                except Deadlock as exc:
                    self.outcome[self.ctx.name] = exc
                    return "deadlock"
                self.outcome.setdefault(self.ctx.name, "sent")
                return "sent"
            case AskOf(path=path, msg=inner):
                try:
                    return await self.ctx.system.ref(path).ask(inner, timeout=None)
                except Deadlock as exc:
                    self.outcome[self.ctx.name] = exc
                    return "deadlock"
            case "hold":
                await trio.sleep(1)
                return "held"
            case ("hold-then-ask", path):
                await trio.sleep(1)
                try:
                    return await self.ctx.system.ref(path).ask("hi", timeout=None)
                except Deadlock as exc:
                    self.outcome[self.ctx.name] = exc
                    return "deadlock"
            case _:
                return msg


def peers(outcome: dict[str, Any]) -> Supervisor:
    return Supervisor(
        "app",
        children=[
            child(Peer, name="a", args=(outcome,)),
            child(Peer, name="b", args=(outcome,)),
        ],
    )


async def test_two_actors_sending_into_each_others_full_mailboxes(autojump_clock: Any) -> None:
    outcome: dict[str, Any] = {}
    async with runtime.open_system(peers(outcome)) as system:
        a, b = system.ref("/app/a"), system.ref("/app/b")
        # a and b each fill the other's one-slot mailbox, then wait for room.
        a.tell(SendTo("/app/b", 5))
        b.tell(SendTo("/app/a", 5))
        with trio.fail_after(30):
            await wait_for(lambda: "a" in outcome and "b" in outcome, timeout=30)
        errors = [v for v in outcome.values() if isinstance(v, Deadlock)]
        assert len(errors) == 1  # the wait that would close the cycle, and only it
        assert isinstance(errors[0], MailboxFull)
        text = str(errors[0])
        assert "/app/a -> /app/b -> /app/a" in text or "/app/b -> /app/a -> /app/b" in text
        # and both carry on
        assert await a.ask("ping", timeout=30) == "ping"
        assert await b.ask("ping", timeout=30) == "ping"


async def test_an_actor_asking_itself_gets_deadlock(autojump_clock: Any) -> None:
    outcome: dict[str, Any] = {}
    async with runtime.open_system(peers(outcome)) as system:
        a = system.ref("/app/a")
        assert await a.ask(AskOf("/app/a", "hello"), timeout=10) == "deadlock"
        assert "/app/a -> /app/a" in str(outcome["a"])
        assert system.snapshot().dead_letters["deadlock"] == 0  # refused at the door
        assert await a.ask("still here", timeout=10) == "still here"


async def test_ask_while_the_other_waits_for_room_in_my_mailbox(autojump_clock: Any) -> None:
    outcome: dict[str, Any] = {}
    async with runtime.open_system(peers(outcome)) as system:
        a, b = system.ref("/app/a"), system.ref("/app/b")
        # a sleeps, then asks b; meanwhile a's one-slot mailbox fills and b waits for room
        a.tell(("hold-then-ask", "/app/b"))
        await trio.testing.wait_all_tasks_blocked()
        a.tell("filler")
        b.tell(SendTo("/app/a", 1))
        with trio.fail_after(30):
            await wait_for(lambda: "a" in outcome and "b" in outcome, timeout=30)
        assert isinstance(outcome["a"], Deadlock)  # b waits on a: a's ask would close it
        assert "/app/a -> /app/b -> /app/a" in str(outcome["a"])
        assert outcome["b"] == "sent"  # and b got its room once a went on
        assert await a.ask("ping", timeout=30) == "ping"


async def test_a_send_that_was_let_in_is_no_longer_a_wait(autojump_clock: Any) -> None:
    outcome: dict[str, Any] = {}
    async with runtime.open_system(peers(outcome)) as system:
        a, b = system.ref("/app/a"), system.ref("/app/b")
        # b waits for room in a; a takes its next message (b is let in) and at once
        # asks b, before b has run: not a cycle any more
        a.tell("hold")
        await trio.testing.wait_all_tasks_blocked()
        a.tell(AskOf("/app/b", "hi"))
        b.tell(SendTo("/app/a", 1))
        with trio.fail_after(30):
            await wait_for(lambda: "b" in outcome, timeout=30)
            await wait_for(lambda: system.snapshot().find("/app/a").processed >= 3, timeout=30)
        assert outcome == {"b": "sent"}


async def test_no_false_deadlock_for_a_chain(autojump_clock: Any) -> None:
    outcome: dict[str, Any] = {}
    async with runtime.open_system(peers(outcome)) as system:
        a = system.ref("/app/a")
        # a asks b, b answers: a chain, not a cycle
        assert await a.ask(AskOf("/app/b", "x"), timeout=10) == "x"
        assert outcome == {}


class Deferrer(Actor):
    async def receive(self, msg: Any) -> Any:
        if msg == "defer":
            handle = self.ctx.defer_reply()
            # the answer depends on work elsewhere: the asker's edge is dropped, so
            # asking the asker back is not a cycle
            self.ctx.nursery.start_soon(self._later, handle)
            return None
        if isinstance(msg, AskOf):
            return await self.ctx.system.ref(msg.path).ask(msg.msg, timeout=10)
        return msg

    async def _later(self, handle: Any) -> None:
        await trio.sleep(0.1)
        handle.send("deferred answer")


class Asker(Actor):
    async def receive(self, msg: Any) -> Any:
        if msg == "go":
            return await self.ctx.system.ref("/app/d").ask("defer", timeout=10)
        return msg


async def test_defer_reply_drops_the_edge(autojump_clock: Any) -> None:
    tree = Supervisor("app", children=[child(Deferrer, name="d"), child(Asker, name="asker")])
    async with runtime.open_system(tree) as system:
        async with trio.open_nursery() as nursery:
            result: list[Any] = []

            async def go() -> None:
                result.append(await system.ref("/app/asker").ask("go", timeout=10))

            nursery.start_soon(go)
            await trio.testing.wait_all_tasks_blocked()
            # d asks the asker while the asker waits on d's deferred reply: no cycle
            answer = await system.ref("/app/d").ask(AskOf("/app/asker", "back"), timeout=10)
            assert answer == "back"
        assert result == ["deferred answer"]


# -- 4. only Exception crashes an incarnation -----------------------------------


class Raises(Actor):
    def __init__(self, error: type[BaseException]) -> None:
        self.error = error

    async def receive(self, msg: Any) -> Any:
        if msg == "raise":
            raise self.error("from a handler")
        return msg


class Stopping(Actor):
    def __init__(self, log: list[str]) -> None:
        self.log = log

    async def on_stop(self, reason: Any) -> None:
        self.log.append(f"stopped {reason}")


@pytest.mark.parametrize("error", [KeyboardInterrupt, SystemExit])
async def test_keyboard_interrupt_in_a_handler_stops_gracefully_and_propagates(
    error: type[BaseException], autojump_clock: Any
) -> None:
    log: list[str] = []
    tree = Supervisor(
        "app",
        children=[child(Stopping, name="s", args=(log,)), child(Raises, name="r", args=(error,))],
    )
    with pytest.raises(error):
        async with runtime.open_system(tree) as system:
            system.ref("/app/r").tell("raise")
            await trio.sleep_forever()
    assert log == ["stopped shutdown"]  # graceful: the sibling's on_stop ran
    assert not system.is_running
    snap_restarts = system.root.restarts
    assert snap_restarts == 0


def test_keyboard_interrupt_under_plain_trio_run_ends_the_program() -> None:
    tree = Supervisor("app", children=[child(Raises, name="r", args=(KeyboardInterrupt,))])

    async def main() -> None:
        async with runtime.open_system(tree) as system:
            system.ref("/app/r").tell("raise")
            await trio.sleep_forever()

    with pytest.raises(KeyboardInterrupt):
        trio.run(main)


class BadStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("str() of this error raises")

    def __repr__(self) -> str:
        raise RuntimeError("repr() of this error raises")


async def test_an_exception_whose_str_raises_is_an_ordinary_crash(autojump_clock: Any) -> None:
    tree = Supervisor("app", children=[child(Raises, name="r", args=(BadStr,))])
    async with runtime.open_system(tree) as system:
        r = system.ref("/app/r")
        with pytest.raises(runtime.ActorCrashed) as info:
            await r.ask("raise")
        assert isinstance(info.value.__cause__, BadStr)
        await wait_for(lambda: system.snapshot().find("/app/r").restarts == 1)
        snap = system.snapshot()
        assert snap.dead_letters["crashed"] == 1
        assert snap.find("/app/r").failed == 1
        assert snap.find("/app/r").last_error is not None
        assert snap.find("/app/r").last_error.type == "BadStr"
        snap.render()
        snap.to_dict()
        assert await r.ask("alive") == "alive"


# -- 5. graceful stop on every exit route -------------------------------------------


async def test_outer_cancel_scope_still_stops_gracefully(autojump_clock: Any) -> None:
    order: list[str] = []

    class Ordered(Actor):
        def __init__(self, name: str) -> None:
            self.name = name

        async def on_stop(self, reason: Any) -> None:
            await trio.sleep(0.5)  # on_stop awaits: only a shielded stop lets it finish
            order.append(self.name)

    tree = Supervisor(
        "app",
        children=[child(Ordered, name="a", args=("a",)), child(Ordered, name="b", args=("b",))],
    )
    with trio.move_on_after(1) as scope:
        async with runtime.open_system(tree):
            await trio.sleep_forever()
    assert scope.cancelled_caught
    assert order == ["b", "a"]  # reverse start order, each on_stop ran to its end


# -- 9. misuse is refused early -------------------------------------------------------


class PlainReceive(Actor):
    def receive(self, msg: Any) -> Any:  # type: ignore[override]
        return msg


class PlainOnStart(Actor):
    def on_start(self) -> None:  # type: ignore[override]
        pass


class PlainOnStop(Actor):
    def on_stop(self, reason: Any) -> None:  # type: ignore[override]
        pass


@pytest.mark.parametrize(
    ("cls", "method"),
    [(PlainReceive, "receive"), (PlainOnStart, "on_start"), (PlainOnStop, "on_stop")],
)
def test_plain_def_handlers_are_refused_when_the_spec_is_made(cls: type, method: str) -> None:
    with pytest.raises(TypeError, match=method):
        child(cls)


@pytest.mark.parametrize("bad", [-1, math.nan, -math.inf])
async def test_invalid_timeouts_are_refused_before_anything_is_queued(
    bad: float, autojump_clock: Any
) -> None:
    log: list[Any] = []
    tree = Supervisor("app", children=[child(Recorder, name="r", args=(log,))])
    async with runtime.open_system(tree) as system:
        r = system.ref("/app/r")
        with pytest.raises(ValueError):
            await r.ask("x", timeout=bad)
        with pytest.raises(ValueError):
            r.tell("y", timeout=bad)
        with pytest.raises(ValueError):
            await system.run_blocking(time.sleep, 0, timeout=bad)
        await trio.testing.wait_all_tasks_blocked()
        assert log == []
        assert system.snapshot().find("/app/r").mailbox_depth == 0


async def test_infinite_timeout_means_none(autojump_clock: Any) -> None:
    log: list[Any] = []
    tree = Supervisor("app", children=[child(Recorder, name="r", args=(log,))])
    async with runtime.open_system(tree) as system:
        assert await system.ref("/app/r").ask("x", timeout=math.inf) == "x"


async def test_every_call_on_a_stopped_system_raises_runtime_closed() -> None:
    log: list[Any] = []
    tree = Supervisor("app", children=[child(Recorder, name="r", args=(log,))])
    async with runtime.open_system(tree) as system:
        r = system.ref("/app/r")
    with pytest.raises(RuntimeClosed):
        r.tell("x")
    with pytest.raises(RuntimeClosed):
        await r.send("x")
    with pytest.raises(RuntimeClosed):
        await r.ask("x")
    with pytest.raises(RuntimeClosed):
        await system.run_blocking(time.sleep, 0)
    with pytest.raises(RuntimeClosed):
        system.publish("some.topic", 1)
    with pytest.raises(RuntimeClosed):
        await system.start_child("/app", child(Recorder, name="late", args=(log,)))
    with pytest.raises(RuntimeClosed):
        await system.terminate_child("/app/r")
    assert system.dead_letters.total == 0  # nothing was dead-lettered for any of them


# -- 10. one accounting rule ------------------------------------------------------------


class Blocker(Actor):
    async def receive(self, msg: Any) -> Any:
        if msg == "hang":
            await trio.sleep_forever()
        if msg == "crash":
            raise ValueError("crash")
        return msg


async def test_bystander_of_a_group_restart_tells_its_asker_so(autojump_clock: Any) -> None:
    tree = Supervisor(
        "app",
        strategy="one_for_all",
        children=[child(Blocker, name="a"), child(Blocker, name="b")],
    )
    async with runtime.open_system(tree) as system:
        a, b = system.ref("/app/a"), system.ref("/app/b")
        async with trio.open_nursery() as nursery:
            errors: list[BaseException] = []

            async def ask_b() -> None:
                try:
                    await b.ask("hang", timeout=60)
                except ActorStopped as exc:
                    errors.append(exc)

            nursery.start_soon(ask_b)
            await trio.testing.wait_all_tasks_blocked()
            a.tell("crash")  # b is stopped as a bystander while it handles "hang"
        assert len(errors) == 1
        assert "restarted by its supervisor" in str(errors[0])
        assert "one_for_all" in str(errors[0])
        assert b.is_alive  # the ref stays valid
        assert await b.ask("ok") == "ok"
        assert system.snapshot().dead_letters["stopped"] == 1


async def test_refused_at_the_door_is_not_a_dead_letter(autojump_clock: Any) -> None:
    log: list[Any] = []
    tree = Supervisor(
        "app",
        children=[
            child(Blocker, name="full", mailbox=Mailbox(capacity=1, overflow="fail")),
            child(Recorder, name="r", args=(log,)),
        ],
    )
    async with runtime.open_system(tree) as system:
        full = system.ref("/app/full")
        full.tell("hang")
        await trio.testing.wait_all_tasks_blocked()
        full.tell("queued")
        with pytest.raises(MailboxFull):
            full.tell("refused")
        with pytest.raises(MailboxFull):
            await full.ask("refused too")
        assert system.dead_letters.total == 0


# -- 5. troupe run hears signals during start-up ------------------------------------------

HANGING_START = textwrap.dedent(
    """
    import sys
    import trio
    from runtime import Actor, Supervisor, child

    class Hangs(Actor):
        async def on_start(self):
            print("starting", flush=True)
            await trio.sleep_forever()

    tree = Supervisor("app", children=[child(Hangs, name="h", shutdown=1.0)])
    """
)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_troupe_run_stops_on_a_signal_during_start_up(tmp_path: Path, sig: int) -> None:
    script = tmp_path / "hangs.py"
    script.write_text(HANGING_START)
    proc = subprocess.Popen(
        [sys.executable, "-m", "runtime", "run", str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "starting" in line
        proc.send_signal(sig)
        proc.wait(timeout=30)  # the hung on_start is cancelled after its shutdown timeout
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    assert proc.returncode == 0


class InterruptsIn(Actor):
    def __init__(self, where: str, log: list[str]) -> None:
        self.where = where
        self.log = log

    async def on_start(self) -> None:
        if self.where == "on_start":
            raise KeyboardInterrupt

    async def receive(self, msg: Any) -> Any:
        return msg

    async def on_stop(self, reason: Any) -> None:
        self.log.append("on_stop")
        if self.where == "on_stop":
            raise KeyboardInterrupt


@pytest.mark.parametrize("where", ["on_start", "on_stop"])
async def test_keyboard_interrupt_in_on_start_or_on_stop(where: str, autojump_clock: Any) -> None:
    log: list[str] = []
    sibling: list[str] = []
    tree = Supervisor(
        "app",
        children=[
            child(Stopping, name="s", args=(sibling,)),
            child(InterruptsIn, name="i", args=(where, log)),
        ],
    )
    with pytest.raises(KeyboardInterrupt):
        async with runtime.open_system(tree) as system:
            if where == "on_stop":
                system.stop()
            await trio.sleep_forever()
    # on_stop ran once (never again because of its own interrupt), the sibling stopped
    assert log == ([] if where == "on_start" else ["on_stop"])
    assert sibling == ["stopped shutdown"]


async def test_a_send_queued_behind_a_let_in_sender_is_an_edge(autojump_clock: Any) -> None:
    """B's consumer lets a plain sender in; before it runs, A sends to B: A must wait in
    B's line, and that wait is an edge, so B sending into A's full mailbox is a cycle.

    Whether A runs before the let-in sender is up to trio's scheduler (it shuffles),
    so the scene is played several times."""
    for _ in range(12):
        await _play_let_in_scene()


async def _play_let_in_scene() -> None:
    go_a, go_b = trio.Event(), trio.Event()
    out: list[Any] = []

    class A(Actor):
        async def receive(self, msg: Any) -> Any:
            if msg == "go":
                await go_a.wait()
                try:
                    await self.ctx.system.ref("/app/b").send("from a")
                    out.append("a sent")
                except Deadlock:
                    out.append("a deadlock")

    class B(Actor):
        async def receive(self, msg: Any) -> Any:
            if msg == "hold":
                await go_b.wait()
            elif msg == "fill":
                go_a.set()
                await trio.sleep(0.01)
                try:
                    await self.ctx.system.ref("/app/a").send("from b")
                    out.append("b sent")
                except Deadlock:
                    out.append("b deadlock")

    one = Mailbox(capacity=1, overflow="block")
    tree = Supervisor(
        "app", children=[child(A, name="a", mailbox=one), child(B, name="b", mailbox=one)]
    )
    async with runtime.open_system(tree) as system:
        a, b = system.ref("/app/a"), system.ref("/app/b")
        a.tell("go")
        b.tell("hold")
        await trio.sleep(0.02)
        a.tell("a-filler")  # a's mailbox is full (a is busy with "go")
        b.tell("fill")  # b's mailbox is full (b is busy with "hold")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(b.send, "plain sender")  # waits in b's line
            await trio.sleep(0.02)
            go_b.set()
            with trio.fail_after(10):
                await wait_for(lambda: len(out) == 2, timeout=10)
    assert "b deadlock" in out and "a sent" in out


async def test_cancelled_while_starting_stops_what_started(autojump_clock: Any) -> None:
    calls: list[Any] = []

    class Quick(Actor):
        async def on_start(self) -> None:
            calls.append("a started")

        async def on_stop(self, reason: Any) -> None:
            calls.append(("a stopped", reason))

    class Slow(Actor):
        async def on_start(self) -> None:
            await trio.sleep(1)
            calls.append("slow started")

        async def on_stop(self, reason: Any) -> None:
            calls.append(("slow stopped", reason))

    tree = Supervisor("app", children=[child(Quick, name="a"), child(Slow, name="slow")])
    with trio.move_on_after(0.2) as scope:
        async with runtime.open_system(tree):
            calls.append("body")  # never: cancelled while starting
    assert scope.cancelled_caught
    assert calls == [
        "a started",
        "slow started",
        ("slow stopped", "shutdown"),
        ("a stopped", "shutdown"),
    ]


def test_start_in_thread_that_times_out_leaves_nothing_running() -> None:
    import threading

    stopped: list[Any] = []
    release = threading.Event()

    class SlowStart(Actor):
        async def on_start(self) -> None:
            await trio.to_thread.run_sync(release.wait, 5, abandon_on_cancel=True)

    class Early(Actor):
        async def on_stop(self, reason: Any) -> None:
            stopped.append(reason)

    tree = Supervisor(
        "app", children=[child(Early, name="early"), child(SlowStart, name="slow", shutdown=1)]
    )
    with pytest.raises(RuntimeError, match="did not start within"):
        with runtime.start_in_thread(tree, start_timeout=0.5):
            pass
    release.set()
    assert stopped == ["shutdown"]  # what had started was stopped gracefully
    # wait for the system's own thread only: trio's idle worker threads (the one that
    # ran release.wait among them) linger 10 s in its thread cache, whatever we do
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(
        t.name == "troupe:app" for t in threading.enumerate()
    ):
        time.sleep(0.05)
    assert not any(t.name == "troupe:app" for t in threading.enumerate())


async def test_lookups_on_a_stopped_system_and_odd_paths() -> None:
    async with runtime.open_system(Supervisor("app", children=[child(Quits, name="q")])) as system:
        with pytest.raises(ValueError):
            system.ref("")
        assert system.ref("/app/q").path == "/app/q"
    with pytest.raises(RuntimeClosed):
        system.ref("/app/q")
    system.snapshot()  # reading what is left stays possible


def test_start_in_thread_giving_up_at_once_does_not_hang() -> None:
    """A start_timeout that expires before the system could be told to give up used to
    leave it running and the caller joined on it for ever (found by attack)."""
    import threading

    tree = Supervisor("app", children=[child(Quits, name="q")])
    outcome: list[Any] = []

    def start() -> None:
        try:
            with runtime.start_in_thread(tree, start_timeout=1e-9):
                outcome.append("started")
        except RuntimeError as exc:
            outcome.append(str(exc))

    caller = threading.Thread(target=start, daemon=True)
    caller.start()
    caller.join(30)
    assert not caller.is_alive(), "start_in_thread hung"
    assert len(outcome) == 1
    assert not any(t.name == "troupe:app" and t.is_alive() for t in threading.enumerate())

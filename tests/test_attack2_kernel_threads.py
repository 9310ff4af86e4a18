"""Second attack on the kernel, foreign threads: a thread interrupted while it waits
for room (Ctrl-C, a signal handler that raises), and a signal handler that tells
or asks while its thread's own request is in flight.

A thread has one request at a time in its lane; these tests pin down that an
interruption takes the waiting message back (never delivered later, never twice)
and that a signal handler's call never overwrites the request it interrupts.
"""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import trio
from systhread import WAIT, SystemThread

from runtime import Actor, Mailbox, Supervisor, child

pytestmark = pytest.mark.skipif(
    not hasattr(signal, "pthread_kill"), reason="needs signal.pthread_kill"
)


class Held(Actor):
    """Records what it gets; holds the loop-side handler on "hold" until released."""

    def __init__(self, seen: list[Any], release: threading.Event) -> None:
        self.seen = seen
        self.release = release

    async def receive(self, msg: Any) -> Any:
        self.seen.append(msg)
        if msg == "hold":
            await trio.to_thread.run_sync(self.release.wait, WAIT, abandon_on_cancel=True)
        return msg


class Echo(Actor):
    def __init__(self, seen: list[Any]) -> None:
        self.seen = seen

    async def receive(self, msg: Any) -> Any:
        self.seen.append(msg)
        return ("echo", msg)


@pytest.fixture
def app() -> Iterator[tuple[SystemThread, list[Any], list[Any], threading.Event]]:
    seen: list[Any] = []
    echoed: list[Any] = []
    release = threading.Event()
    tree = Supervisor(
        "app",
        children=[
            child(Held, name="held", args=(seen, release), mailbox=Mailbox(1, "block")),
            child(Echo, name="echo", args=(echoed,), mailbox=Mailbox(4, "block")),
        ],
    )
    st = SystemThread(tree).start()
    try:
        yield st, seen, echoed, release
    finally:
        release.set()
        st.stop(clean=True)


def fill(st: SystemThread, seen: list[Any]) -> Any:
    """Hold the actor in its handler and fill its one-message mailbox; return its ref."""
    assert st.system is not None
    ref = st.call(st.system.ref, "/app/held")
    ref.tell("hold")
    deadline = time.monotonic() + WAIT
    while seen != ["hold"]:
        assert time.monotonic() < deadline, "the actor never took its first message"
        time.sleep(0.005)
    ref.tell("fills")
    return ref


def when_this_thread_waits_for_room(st: SystemThread, then: Callable[[], None]) -> threading.Thread:
    """From a helper thread: once a thread waits for room in /app/held's mailbox, `then()`."""
    assert st.system is not None
    mailbox = st.call(st.system.slot, "/app/held").mailbox

    def watch() -> None:
        deadline = time.monotonic() + WAIT
        while not st.call(lambda: mailbox.statistics().threads_waiting):
            if time.monotonic() > deadline:
                return
            time.sleep(0.005)
        then()

    helper = threading.Thread(target=watch)
    helper.start()
    return helper


@pytest.fixture
def on_sigusr1() -> Iterator[Callable[[Callable[[], None]], None]]:
    """Install a SIGUSR1 handler on the main thread for the test (restored after)."""
    assert threading.current_thread() is threading.main_thread()
    old = signal.getsignal(signal.SIGUSR1)

    def install(fn: Callable[[], None]) -> None:
        signal.signal(signal.SIGUSR1, lambda _signum, _frame: fn())

    yield install
    signal.signal(signal.SIGUSR1, old)


def interrupt_main() -> None:
    signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGUSR1)


def interrupted() -> None:
    raise KeyboardInterrupt


def interrupt_a_waiting_tell(st: Any, seen: list[Any], on_sigusr1: Any) -> Any:
    """Fill the mailbox, then tell "interrupted" from this thread and Ctrl-C it while
    it waits for room; returns the ref."""
    ref = fill(st, seen)
    on_sigusr1(interrupted)
    helper = when_this_thread_waits_for_room(st, interrupt_main)
    with pytest.raises(KeyboardInterrupt):
        ref.tell("interrupted", timeout=WAIT)
    helper.join(WAIT)
    return ref


def test_a_tell_interrupted_while_it_waits_for_room_is_taken_back(
    app: Any, on_sigusr1: Any
) -> None:
    """Ctrl-C while a thread's tell waits for room: that message is not sent (it never
    turns up later), and the thread's next tell is delivered once (it was delivered
    twice: the interrupted request stayed in the mailbox's line of threads)."""
    st, seen, _, release = app
    ref = interrupt_a_waiting_tell(st, seen, on_sigusr1)
    # The next tell waits in its turn; the actor makes room once it is let go.
    helper = when_this_thread_waits_for_room(st, release.set)
    ref.tell("next", timeout=WAIT)
    helper.join(WAIT)
    ref.tell("last", timeout=WAIT)
    assert ref.ask_blocking("done", timeout=WAIT) == "done"
    assert seen == ["hold", "fills", "next", "last", "done"]
    assert st.call(lambda: st.system.dead_letters.total) == 0


def test_an_interrupted_tell_is_not_delivered_when_room_is_made(app: Any, on_sigusr1: Any) -> None:
    """The interrupted tell's message is the thread's again: it is not delivered when
    the actor makes room later (it was, as if the tell had gone on without its caller)."""
    st, seen, _, release = app
    ref = interrupt_a_waiting_tell(st, seen, on_sigusr1)
    release.set()
    assert ref.ask_blocking("done", timeout=WAIT) == "done"
    assert seen == ["hold", "fills", "done"]


@pytest.mark.parametrize("outer", ["tell", "ask_blocking"])
@pytest.mark.parametrize("inner", ["tell", "ask_blocking"])
def test_a_signal_handler_call_leaves_the_waiting_request_alone(
    app: Any, on_sigusr1: Any, outer: str, inner: str
) -> None:
    """A signal handler that tells or asks while its thread's tell or ask waits for
    room: both messages arrive as sent.  (The handler's request overwrote the one in
    flight: the actor got None where the waiting message should be.)"""
    st, seen, echoed, release = app
    ref = fill(st, seen)
    assert st.system is not None
    echo = st.call(st.system.ref, "/app/echo")
    handled: list[Any] = []

    def handler() -> None:
        if inner == "tell":
            echo.tell("from the handler", timeout=WAIT)
            handled.append("told")
        else:
            handled.append(echo.ask_blocking("from the handler", timeout=WAIT))
        release.set()

    on_sigusr1(handler)
    helper = when_this_thread_waits_for_room(st, interrupt_main)
    if outer == "tell":
        ref.tell("waiting", timeout=WAIT)
    else:
        assert ref.ask_blocking("waiting", timeout=WAIT) == "waiting"
    helper.join(WAIT)
    assert ref.ask_blocking("done", timeout=WAIT) == "done"
    assert seen == ["hold", "fills", "waiting", "done"]
    assert echoed == ["from the handler"]
    assert handled == (["told"] if inner == "tell" else [("echo", "from the handler")])
    assert st.call(lambda: st.system.dead_letters.total) == 0


def test_room_lent_to_a_lane_that_holds_some_already_is_added_not_overwritten() -> None:
    """A lane that still holds credits for a mailbox when the loop lends it more (a
    signal handler's tell took a chunk while the thread's own request waited): the
    two add up, so that taking them back frees all the room reserved (it was
    overwritten, and the room behind the old credits stayed reserved for ever)."""
    from runtime.mailbox import MailboxQueue
    from runtime.threads import ThreadGate, _Lane

    gate = ThreadGate("test")
    mailbox = MailboxQueue(Mailbox(capacity=1000), lambda item, reason: None, gate)
    lane = _Lane()
    assert mailbox.reserve(5) == 5
    lane.credits[mailbox] = 5  # held from earlier
    with gate._lock:
        gate._lend(mailbox, [lane])
        returned = gate._take_back_credits(None)
    mailbox.unreserve(returned.get(mailbox, 0))
    assert mailbox.statistics().reserved == 0
    assert mailbox.room() == 1000


def test_a_tell_interrupted_as_it_posts_its_request_is_taken_back(
    app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C landing as the thread's request is posted (after it is in the lane,
    before the thread starts waiting): the message is taken back as when it lands in
    the wait.  (The request stayed in flight: the message was delivered by the next
    drain, and every later request of the thread took a spare lane.)"""
    st, _, echoed, _ = app
    assert st.system is not None
    echo = st.call(st.system.ref, "/app/echo")
    gate = st.system.gate
    wake = gate._request_wake
    main = threading.current_thread()
    fired: list[bool] = []

    def interrupted_once() -> None:
        if threading.current_thread() is main and not fired:
            fired.append(True)
            raise KeyboardInterrupt
        wake()

    monkeypatch.setattr(gate, "_request_wake", interrupted_once)
    with pytest.raises(KeyboardInterrupt):
        echo.tell("interrupted", timeout=WAIT)  # no credit yet: a request
    assert fired
    echo.tell("next", timeout=WAIT)
    assert echo.ask_blocking("done", timeout=WAIT) == ("echo", "done")
    assert echoed == ["next", "done"]

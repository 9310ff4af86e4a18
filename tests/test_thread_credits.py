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


# -- timeouts -----------------------------------------------------------------------
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

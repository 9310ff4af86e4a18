"""A testkit for users' own tests: a pytest plugin, `TestProbe`, and `crash`.

Installed as a pytest plugin (entry point ``troupe``), it gives pytest-trio
tests two fixtures:

- ``system``: a running system whose tree is an empty supervisor ``/test``
  (add actors with ``await system.start_child("/test", child(...))``);
- ``probe``: a `TestProbe` under ``/test`` in that system.

`ANY` stands for any message, payload or value in an expectation.
Everything waits with trio timeouts, so it works with ``autojump_clock``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any, Final

import pytest
import trio

from .actor import Actor
from .entry import open_system
from .errors import ActorNotFound, ActorStopped
from .messages import Event, InjectedCrash, Terminated
from .ref import ActorRef
from .spec import Supervisor, child
from .system import System
from .topics import matches

PROBE_CAPACITY = 10_000
_probes = 0


class _Any:
    """The type of `ANY`: equal to everything."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return True

    def __ne__(self, other: object) -> bool:
        return False

    def __hash__(self) -> int:
        # sets and dict keys compare by hash first: ANY cannot stand for a value there
        raise TypeError(
            "ANY cannot be put in a set or used as a dict key (those match by hash, "
            "and ANY stands for every value); expect a function instead, e.g. "
            "expect_message(lambda msg: len(msg) == 1)"
        )

    def __repr__(self) -> str:
        return "ANY"


ANY: Final[Any] = _Any()
"""Any message: the default of `TestProbe.expect_message` (and of `expect_event`'s
payload), so that ``None`` there means the message ``None``.  Equal to every value,
so it also stands for one part of an expected value: ``("work", ANY)``,
``{"id": 3, "at": ANY}`` (in sequences, dict values and attrs fields; not in a set or
as a dict key, which match by hash: hashing ANY raises `TypeError`)."""


class _ProbeActor(Actor):
    """Hands everything it receives to the test through a channel."""

    def __init__(self, inbox: trio.MemorySendChannel[Any], answer: Callable[[Any], Any]) -> None:
        self.inbox = inbox
        self.answer = answer

    async def receive(self, msg: Any) -> Any:
        self.inbox.send_nowait(msg)  # raises if the test let 10,000 pile up
        return self.answer(msg)


class TestProbe:
    """An actor driven from test code: send it things, then assert what arrived.

    ``await probe.expect_message(value_or_type_or_predicate)`` waits (at most
    `timeout` seconds of trio time) for the next message and checks it (`ANY`,
    the default, accepts any message; ``None`` expects the message ``None``);
    ``expect_no_message(within)``, ``expect_terminated(ref)`` (after
    ``probe.watch(ref)``) and ``expect_event(pattern)`` (after
    ``probe.subscribe(pattern)``) work the same way.  Asks to the probe are
    answered by `answer(msg)` (default: None).
    """

    __test__ = False  # not a test class, despite the name

    def __init__(self, ref: ActorRef, inbox: trio.MemoryReceiveChannel[Any]) -> None:
        self.ref = ref
        self._inbox = inbox
        self._watched: set[ActorRef] = set()

    @classmethod
    async def start(
        cls,
        system: System,
        parent: str,
        *,
        name: str | None = None,
        answer: Callable[[Any], Any] = lambda msg: None,
    ) -> TestProbe:
        global _probes
        _probes += 1
        send, receive = trio.open_memory_channel[Any](PROBE_CAPACITY)
        spec = child(
            _ProbeActor,
            name=name or f"probe-{_probes}",
            kwargs={"inbox": send, "answer": answer},
        )
        ref = await system.start_child(parent, spec)
        return cls(ref, receive)

    @property
    def path(self) -> str:
        return self.ref.path

    async def receive(self, timeout: float = 3.0) -> Any:
        """The next message, whatever it is."""
        with trio.move_on_after(timeout):
            return await self._inbox.receive()
        raise AssertionError(f"{self.path} got no message within {timeout}s")

    async def expect_message(self, expected: Any = ANY, *, timeout: float = 3.0) -> Any:
        """The next message, checked: anything (`ANY`, the default), an instance of
        `expected` (a type), `expected(msg)` true (a function), else equal to it
        (``None``: the message ``None``; `ANY` may stand inside it, ``("work", ANY)``)."""
        msg = await self.receive(timeout)
        if expected is ANY:
            return msg
        if isinstance(expected, type):
            ok = isinstance(msg, expected)
        elif callable(expected):
            ok = bool(expected(msg))
        else:
            ok = bool(expected == msg)  # expected first: an ANY inside it compares first
        if not ok:
            raise AssertionError(f"{self.path} expected {expected!r}, got {msg!r}")
        return msg

    async def expect_no_message(self, within: float = 0.1) -> None:
        """Nothing arrives for `within` seconds."""
        with trio.move_on_after(within):
            msg = await self._inbox.receive()
            raise AssertionError(f"{self.path} expected no message, got {msg!r}")

    def watch(self, ref: ActorRef) -> None:
        """Get `Terminated` for `ref` (see `expect_terminated`); at once if it has stopped."""
        self._cell().watch(ref._cell)
        self._watched.add(ref)

    async def expect_terminated(self, ref: ActorRef, *, timeout: float = 3.0) -> Terminated:
        """The next message is `Terminated` for `ref`.

        Only watchers get `Terminated`: without a `watch(ref)` first this raises
        `RuntimeError` at once, instead of waiting for a message that cannot come.
        """
        if ref not in self._watched:
            raise RuntimeError(
                f"{self.path} does not watch {ref.path}, and Terminated comes only to "
                "watchers: call probe.watch(ref) first (before the actor stops, or after: "
                "then it comes at once)"
            )
        msg = await self.receive(timeout)
        if not (isinstance(msg, Terminated) and msg.ref == ref):
            raise AssertionError(f"{self.path} expected Terminated({ref.path}), got {msg!r}")
        return msg

    def subscribe(self, pattern: str) -> None:
        """Receive bus events matching `pattern` (see `expect_event`)."""
        cell = self._cell()
        cell.host.subscribe_cell(cell, pattern)

    async def expect_event(
        self, pattern: str = ">", payload: Any = ANY, *, timeout: float = 3.0
    ) -> Event:
        """The next message is an `Event` whose topic matches `pattern` and whose
        payload equals `payload` (`ANY`, the default: any payload; ``None``: the
        payload ``None``)."""
        msg = await self.receive(timeout)
        if not (isinstance(msg, Event) and matches(pattern, msg.topic)):
            raise AssertionError(f"{self.path} expected an event on {pattern!r}, got {msg!r}")
        if payload is not ANY and not bool(payload == msg.payload):  # ANY first, as above
            raise AssertionError(f"{self.path} expected payload {payload!r}, got {msg.payload!r}")
        return msg

    def _cell(self) -> Any:
        return self.ref._cell


def crash(ref: ActorRef, error: BaseException | None = None) -> None:
    """Crash the actor at `ref` on purpose (as if its handler raised `error`).

    One call is one crash, queued in the actor's system lane, ahead of its user
    messages, and taken by the next incarnation that takes a message:

    - running: it crashes after the message in hand (if any);
    - starting or restarting (no incarnation takes messages yet): the next
      incarnation starts (its `on_start` runs to the end, its start succeeds)
      and crashes at once, before any message.

    The supervisor then does whatever its strategy says, as for any crash
    (backoff, restart intensity, escalation); n calls are n crashes.  If the
    actor stops for good first, the crash goes with it.

    Raises `ActorNotFound` if the actor has stopped for good, `ActorStopped` if it
    ended and is not restarting (a transient child that stopped normally), `TypeError` for a
    supervisor (crash one of its children to test how it reacts) and
    `RuntimeError` off the trio thread.
    """
    cell = ref._cell
    if not cell.host.gate.on_loop_thread():
        raise RuntimeError("crash() works on the trio thread only (the system's own loop)")
    if cell.finalized:
        raise ActorNotFound(f"{ref.path} has stopped; there is nothing to crash")
    if cell.kind == "supervisor":
        raise TypeError(
            f"crash() crashes an actor, and {ref.path} is a supervisor: "
            "to see how a supervisor reacts, crash one of its children"
        )
    if cell.state == "stopped":  # e.g. a transient child that ended normally: no
        # incarnation is coming (a crash parked for a later group restart would surprise)
        raise ActorStopped(
            f"{ref.path} has stopped and is not restarting; there is nothing to crash"
        )
    cell.mailbox.put_system(InjectedCrash(error or RuntimeError(f"crash injected into {ref.path}")))


async def wait_for(
    condition: Callable[[], bool], *, timeout: float = 3.0, poll: float = 0.01
) -> None:
    """Wait (trio time) until `condition()` is true, e.g. a restart count in a snapshot."""
    with trio.move_on_after(timeout):
        while not condition():
            await trio.sleep(poll)
        return
    raise AssertionError(f"condition not met within {timeout}s")


@pytest.fixture
async def system() -> AsyncIterator[System]:
    """A running system with an empty ``/test`` supervisor to start actors under."""
    tree = Supervisor("test", max_restarts=1000, within=1.0)
    async with open_system(tree) as running:
        yield running


@pytest.fixture
async def probe(system: System) -> TestProbe:
    """A `TestProbe` at ``/test/probe-N``."""
    return await TestProbe.start(system, "/test")


__all__ = ["ANY", "TestProbe", "crash", "probe", "system", "wait_for"]

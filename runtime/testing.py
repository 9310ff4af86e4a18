"""A testkit for users' own tests: a pytest plugin, `TestProbe`, and `crash`.

Installed as a pytest plugin (entry point ``troupe``), it gives pytest-trio
tests two fixtures:

- ``system``: a running system whose tree is an empty supervisor ``/test``
  (add actors with ``await system.start_child("/test", child(...))``);
- ``probe``: a `TestProbe` under ``/test`` in that system.

`ANY` stands for any message, payload or value in an expectation.  `within`
bounds how long a block takes, `expect_crashes` asserts on the crashes the
runtime logs (like Akka TestKit's ``EventFilter``).
Everything waits with trio timeouts, so it works with ``autojump_clock``.
"""

from __future__ import annotations

import logging
import re
from collections import deque
from collections.abc import AsyncIterator, Callable, Sequence
from types import TracebackType
from typing import Any, Final, NamedTuple

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
        self._kept: deque[Any] = deque()  # put back by receive_while: read before the inbox
        self._watched: set[ActorRef] = set()
        self.skipped: list[Any] = []
        """The messages the last `fish_for_message` skipped, oldest first."""

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
        if self._kept:
            return self._kept.popleft()
        with trio.move_on_after(timeout):
            return await self._inbox.receive()
        raise AssertionError(f"{self.path} got no message within {timeout}s")

    async def _next(self, deadline: float) -> tuple[bool, Any]:
        """(True, the next message) if one comes by `deadline` (trio time), else (False, None)."""
        if self._kept:
            return True, self._kept.popleft()
        with trio.move_on_at(deadline):
            return True, await self._inbox.receive()
        return False, None

    async def expect_message(self, expected: Any = ANY, *, timeout: float = 3.0) -> Any:
        """The next message, checked: anything (`ANY`, the default), an instance of
        `expected` (a type), `expected(msg)` true (a function), else equal to it
        (``None``: the message ``None``; `ANY` may stand inside it, ``("work", ANY)``)."""
        msg = await self.receive(timeout)
        if not _matches(expected, msg):
            raise AssertionError(f"{self.path} expected {expected!r}, got {msg!r}")
        return msg

    async def expect_no_message(self, within: float = 0.1) -> None:
        """Nothing arrives for `within` seconds."""
        if self._kept:
            raise AssertionError(f"{self.path} expected no message, got {self._kept[0]!r}")
        with trio.move_on_after(within):
            msg = await self._inbox.receive()
            raise AssertionError(f"{self.path} expected no message, got {msg!r}")

    async def fish_for_message(self, expected: Any, *, timeout: float = 3.0) -> Any:
        """Skip messages until one matches `expected`, and return that one.

        `expected` is what `expect_message` takes: typically a predicate
        returning True (the catch) or False (skip it), as Akka's
        ``fishForMessage``; also a type or a value (`ANY` inside allowed).
        Blocks up to `timeout` seconds (trio time) in all.  The skipped
        messages, oldest first, are in ``probe.skipped`` afterwards (also
        after a failure; they are consumed, not kept for later expectations).
        An exception raised by the predicate propagates (the message it was
        looking at is consumed).  Raises `AssertionError` when nothing
        matched in time, saying what was expected and what was skipped.
        """
        skipped: list[Any] = []
        self.skipped = skipped
        deadline = trio.current_time() + timeout
        while True:
            got, msg = await self._next(deadline)
            if not got:
                raise AssertionError(
                    f"{self.path} fished for {_describe(expected)} for {timeout}s and "
                    f"caught nothing; skipped {_show(skipped)}"
                )
            if _matches(expected, msg):
                return msg
            skipped.append(msg)

    async def receive_while(
        self,
        expected: Any,
        *,
        timeout: float = 3.0,
        max_messages: int | None = None,
        idle: float | None = None,
    ) -> list[Any]:
        """The messages that come while each matches `expected`, oldest first.

        `expected` is what `expect_message` takes (a predicate, a type, a
        value).  Collecting ends, without failing (as Akka's
        ``receiveWhile``), at the first of: a message that does not match
        (it is kept, and is the next message any later expectation sees, as
        in Akka), `max_messages` collected, no message for `idle` seconds
        (None: no idle limit), or `timeout` seconds in all (trio time: without
        `idle` or `max_messages` this always waits the whole `timeout`).
        Never raises `AssertionError`: check the list it returns.
        """
        if max_messages is not None and max_messages < 0:
            raise ValueError(f"max_messages must be None or >= 0, not {max_messages}")
        collected: list[Any] = []
        deadline = trio.current_time() + timeout
        while max_messages is None or len(collected) < max_messages:
            wait_until = deadline if idle is None else min(deadline, trio.current_time() + idle)
            got, msg = await self._next(wait_until)
            if not got:
                break
            if not _matches(expected, msg):
                self._kept.appendleft(msg)
                break
            collected.append(msg)
        return collected

    async def expect_message_all_of(self, *expected: Any, timeout: float = 3.0) -> list[Any]:
        """The next ``len(expected)`` messages are these, in any order: each is
        matched to its own expectation (each as in `expect_message`: values with
        `ANY` inside, types, predicates), so nothing else may come in between.
        Returns them in the order they came.

        Blocks up to `timeout` seconds (trio time) in all.  Raises
        `AssertionError` as soon as a message cannot be matched (what came,
        and what was still expected), or at the timeout (what came, what is
        missing).  As Akka's ``expectMsgAllOf``.
        """
        received: list[Any] = []
        deadline = trio.current_time() + timeout
        wanted = ", ".join(_describe(e) for e in expected)
        while len(received) < len(expected):
            got, msg = await self._next(deadline)
            if not got:
                missing = _unmatched(expected, received)
                raise AssertionError(
                    f"{self.path} expected all of [{wanted}] within {timeout}s, got "
                    f"{_show(received)}; missing "
                    f"[{', '.join(_describe(expected[i]) for i in missing)}]"
                )
            received.append(msg)
            if _assign(expected, received) is None:
                before = f"after {_show(received[:-1])}" if len(received) > 1 else "first"
                raise AssertionError(
                    f"{self.path} expected all of [{wanted}] in any order, got {msg!r} "
                    f"{before}: it matches none of those still expected"
                )
        return received

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


def _matches(expected: Any, msg: Any) -> bool:
    """What `expect_message` checks: `ANY`, a type, a predicate, or an equal value."""
    if expected is ANY:
        return True
    if isinstance(expected, type):
        return isinstance(msg, expected)
    if callable(expected):
        return bool(expected(msg))
    return bool(expected == msg)  # expected first: an ANY inside it compares first


def _describe(expected: Any) -> str:
    if isinstance(expected, type):
        return f"a {expected.__name__}"
    if callable(expected) and expected is not ANY:
        name = getattr(expected, "__name__", None)
        return "a message for which " + (f"{name}(msg)" if name else f"{expected!r}") + " is true"
    return repr(expected)


def _show(messages: Sequence[Any], limit: int = 10) -> str:
    if len(messages) <= limit:
        return f"[{', '.join(map(repr, messages))}]"
    return f"[{', '.join(map(repr, messages[:limit]))}, ... ({len(messages)} in all)]"


def _assign(expected: Sequence[Any], received: Sequence[Any]) -> list[int | None] | None:
    """A matching of every received message to its own expectation (bipartite, by
    augmenting paths: a value, a type and a predicate may all fit one message), as
    the expectation each one took (by index); None if there is none."""
    owner: list[int | None] = [None] * len(expected)  # expectation -> received index

    def place(r: int, seen: set[int]) -> bool:
        for e, want in enumerate(expected):
            if e in seen or not _matches(want, received[r]):
                continue
            seen.add(e)
            taken = owner[e]
            if taken is None or place(taken, seen):
                owner[e] = r
                return True
        return False

    for r in range(len(received)):
        if not place(r, set()):
            return None
    return owner


def _unmatched(expected: Sequence[Any], received: Sequence[Any]) -> list[int]:
    owner = _assign(expected, received) or [None] * len(expected)
    return [e for e, r in enumerate(owner) if r is None]


class within:  # lower case: used like a function, ``with within(1.0):``
    """Assert that a block takes at most `max` seconds of trio time (and, with
    `min`, at least that long), like Akka TestKit's ``within(min, max)``.

    ``with within(1.0): ...`` or ``async with within(1.0): ...``.  Unlike
    Akka's, it does not wait for a block that overruns: the block is cancelled
    at `max` (a trio cancel scope, as `trio.fail_after`), and `AssertionError`
    says it did not finish in time; a block that ends before `min` raises
    `AssertionError` saying how long it took.  An exception from the block
    itself propagates unchanged.  Expectations inside keep their own timeouts
    (the enclosing `within` does not shorten their defaults, as Akka's does,
    but it cancels them at its own deadline).
    """

    def __init__(self, max: float, *, min: float = 0.0) -> None:
        if min > max:
            raise ValueError(f"within(max={max}, min={min}): min is above max")
        self.max = max
        self.min = min
        self.elapsed: float | None = None
        """How long the block took (trio time), once it ended."""
        self._scope: trio.CancelScope | None = None
        self._start = 0.0

    def __enter__(self) -> within:
        self._start = trio.current_time()
        self._scope = trio.CancelScope(deadline=self._start + self.max)
        self._scope.__enter__()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        assert self._scope is not None
        swallowed = self._scope.__exit__(kind, error, tb)
        self.elapsed = trio.current_time() - self._start
        if self._scope.cancelled_caught and swallowed:
            raise AssertionError(
                f"the block did not finish within {self.max}s (cancelled at that deadline)"
            )
        if kind is not None:
            return bool(swallowed)
        if self.elapsed > self.max:  # a block that never checkpointed
            raise AssertionError(f"the block took {self.elapsed:g}s, more than {self.max}s")
        if self.elapsed < self.min:
            raise AssertionError(f"the block took {self.elapsed:g}s, expected at least {self.min}s")
        return False

    async def __aenter__(self) -> within:
        return self.__enter__()

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        return self.__exit__(kind, error, tb)


class Crash(NamedTuple):
    """One crash the runtime logged (see `expect_crashes`)."""

    path: str
    """The actor's path."""
    during: str
    """``crashed`` (a handler or `crash()`), ``failed to start``, ``failed in on_stop``,
    or ``failed`` (a supervisor)."""
    error: BaseException
    """The exception itself."""


_DURING = frozenset({"crashed", "failed to start", "failed in on_stop", "failed"})


class expect_crashes:  # lower case: used like a function, as `within`
    """Assert on the crashes the runtime logs while a block runs, like Akka TestKit's
    ``EventFilter[E](occurrences = n).intercept { ... }``.

    ``async with expect_crashes(ValueError, count=1, path="/test/w"): ...``
    captures the crash records of the ``troupe`` logger (every crash is
    logged there with its exception: a handler's error or `crash()`, a failed
    `on_start` or `on_stop`, a supervisor that fails), through a filter on
    that logger, on the trio thread, as they happen.  A crash matches if
    its error is an instance of `error` (a type or a tuple of types), its
    actor is at `path` (None: any), and `match` (a regex) is found in
    ``str(error)`` (None: any).  Matching crashes are kept out of the log, as
    Akka's filter does; others are logged as usual.

    On leaving the block it waits (trio time, up to `timeout`) until `count`
    matching crashes were seen (crashes are queued: they may come after the
    block's last line), then raises `AssertionError` if fewer came, if more
    came than `count` (those seen by then: it does not wait for extra ones),
    or if any other crash came meanwhile (stricter than Akka, which lets
    others through).  ``count=0`` asserts that no crash at all happens in the
    block.  If the block itself raises, nothing is checked.  The crashes seen
    are in ``.crashes`` (all) and ``.matched``, as `Crash` tuples.
    """

    def __init__(
        self,
        error: type[BaseException] | tuple[type[BaseException], ...] = Exception,
        *,
        count: int = 1,
        path: str | None = None,
        match: str | None = None,
        timeout: float = 3.0,
    ) -> None:
        kinds = error if isinstance(error, tuple) else (error,)
        if not kinds or not all(
            isinstance(kind, type) and issubclass(kind, BaseException) for kind in kinds
        ):
            raise TypeError(
                f"expect_crashes takes an exception type or a tuple of them first, not "
                f"{error!r}; the number of crashes is count=, e.g. "
                "expect_crashes(ValueError, count=2)"
            )
        if count < 0:
            raise ValueError(f"count must be >= 0, not {count}")
        self.error = error
        self.count = count
        self.path = path
        self.match = match
        self.timeout = timeout
        self.crashes: list[Crash] = []
        self.matched: list[Crash] = []
        self._logger = logging.getLogger("troupe")
        self._level: int | None = None

    def _wanted(self) -> str:
        kinds = self.error if isinstance(self.error, tuple) else (self.error,)
        text = f"{self.count} crash{'es' if self.count != 1 else ''} with " + " or ".join(
            k.__name__ for k in kinds
        )
        if self.path is not None:
            text += f" at {self.path}"
        if self.match is not None:
            text += f" matching {self.match!r}"
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        """Every active block sees each crash record (nested blocks included): one
        that fits it counts it; one it does not fit counts it as another crash only
        if no active block expects it.  False keeps an expected one out of the log."""
        args = record.args
        info = record.exc_info
        if not (
            record.msg == "%s %s: %s"
            and isinstance(args, tuple)
            and len(args) == 3
            and args[1] in _DURING
            and info is not None
            and info[1] is not None
        ):
            return True
        found = Crash(str(args[0]), str(args[1]), info[1])
        blocks = _active_blocks
        expected = any(block._fits(found) for block in blocks)
        for block in blocks:
            if block._fits(found):
                block.crashes.append(found)
                block.matched.append(found)
            elif not expected:
                block.crashes.append(found)
        if expected:
            return False
        return all(block._level is None for block in blocks)  # a logger we enabled: quiet

    def _fits(self, found: Crash) -> bool:
        return (
            isinstance(found.error, self.error)
            and (self.path is None or found.path == self.path)
            and (self.match is None or re.search(self.match, str(found.error)) is not None)
        )

    async def __aenter__(self) -> expect_crashes:
        if not self._logger.isEnabledFor(logging.ERROR):
            self._level = self._logger.level
            self._logger.setLevel(logging.ERROR)
        # one filter (the outermost block) hands each crash to every active block
        if not _active_blocks:
            self._logger.addFilter(self)
        _active_blocks.append(self)
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if kind is not None:
                return
            with trio.move_on_after(self.timeout):
                while len(self.matched) < self.count:
                    await trio.sleep(0.01)
        finally:
            if self in _active_blocks:
                _active_blocks.remove(self)
            if not _active_blocks:  # the filter was one of them: take them all off
                for old in [f for f in self._logger.filters if isinstance(f, expect_crashes)]:
                    self._logger.removeFilter(old)
            elif self in self._logger.filters:  # the filter goes on with an outer block
                self._logger.removeFilter(self)
                self._logger.addFilter(_active_blocks[0])
            if self._level is not None:
                self._logger.setLevel(self._level)
        others = [c for c in self.crashes if c not in self.matched]
        seen = _show([f"{c.path} {c.during}: {c.error!r}" for c in self.crashes])
        if self.count == 0 and self.crashes:
            raise AssertionError(f"expected no crash; the runtime logged {seen}")
        if len(self.matched) != self.count or others:
            if len(self.matched) < self.count:
                how = f"within {self.timeout}s"
            elif len(self.matched) > self.count:
                how = f"but {len(self.matched)} matched"
            else:
                how = "and nothing else"
            raise AssertionError(f"expected {self._wanted()} {how}; the runtime logged {seen}")


_active_blocks: list[expect_crashes] = []
"""The `expect_crashes` blocks now open, outermost first (tests run one at a time)."""


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


__all__ = [
    "ANY",
    "Crash",
    "TestProbe",
    "crash",
    "expect_crashes",
    "probe",
    "system",
    "wait_for",
    "within",
]

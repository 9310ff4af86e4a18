"""The event bus: topic pub/sub with NATS-style patterns, history and stats.

All of it lives on the trio thread (rule 1).  There is no lock of the bus: a
publish delivers at once to every matching subscriber with room, and for each
full ``block`` subscriber takes a place in *that* mailbox's line (the same
FIFO line as ``send``; see `runtime.mailbox`), all places before its first
await, then waits until each line has let the event in.  The mailbox hands
events over in line order whoever runs first, so every subscriber sees one
total order, and a full subscriber delays only the publishers of its events
(rule 2).  Waits are edges of the wait-for graph (rule 5): one that would
close a cycle is not made and the event is dead-lettered for that subscriber
(``deadlock``).  A cancelled publish dead-letters the event (``overflow``) for
the subscribers it had not reached.  `publish_nowait` never waits: a
subscriber that cannot take the event at once gets it dead-lettered as
``overflow``.  Threads publish through the bus actor (`System.publish`).

A publish that never has to wait yields to the scheduler only once every
`YIELD_EVERY` calls (a publisher that never waits would otherwise never let
others run).
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import trio

from .errors import Deadlock
from .mailbox import QUEUED, STOPPED, WAITING, Ticket
from .messages import Event
from .topics import MATCH_CACHE, PatternIndex, check_pattern, check_topic, matches, matching
from .waits import Waiter, begin_wait, check_wait, end_wait, waiting_slot

if TYPE_CHECKING:
    from .cell import Cell
    from .host import Host

log = logging.getLogger("troupe.bus")

HISTORY = 1000
TOPIC_STATS = 10_000
YIELD_EVERY = 64
"""Fast-path publishes between two yields to the scheduler (fairness)."""
_NO_METADATA: Mapping[str, Any] = MappingProxyType({})


class Subscription:
    """One pattern of one subscriber: an actor's mailbox or a stream's channel."""

    __slots__ = (
                "cell",
        "channel",
        "delivered",
        "dropped",
        "filter",
        "once",
        "pattern",
        "segments",
        "seq",
    )

    def __init__(
        self,
        pattern: str,
        *,
        cell: Cell | None = None,
        channel: trio.MemorySendChannel[Event] | None = None,
        once: bool = False,
        filter: Callable[[Event], bool] | None = None,
        seq: int = 0,
    ) -> None:
        self.pattern = pattern
        self.segments = check_pattern(pattern)
        self.cell = cell
        self.channel = channel
        self.once = once
        self.filter = filter
        self.delivered = 0
        self.dropped = 0
        self.seq = seq

    @property
    def subscriber(self) -> str:
        return self.cell.path if self.cell is not None else f"stream:{self.pattern}"


Lines = list[tuple[Subscription, Ticket]]
"""The places a publish took in the lines of full subscribers, in match order."""


class Bus:
    """The router: subscriptions, delivery, history and stats (``system.bus``)."""

    def __init__(self, host: Host, history: int = HISTORY) -> None:
        self._host = host
        self._index: PatternIndex[Subscription] = PatternIndex()
        self._by_cell: dict[Cell, dict[str, Subscription]] = {}
        self._streams: set[Subscription] = set()
        self._history: deque[Event] = deque(maxlen=history)
        self._ids = itertools.count(1)
        self._seq = itertools.count()
        self._callbacks: dict[Callable[..., Any], Cell] = {}
        self.published = 0
        self.delivered = 0
        self.dropped = 0
        self._topics: dict[str, int] = {}
        self._publishing_deadletter = False
        self._topics_seen: dict[str, tuple[str, ...]] = {}
        self._unyielded = 0

    # -- subscriptions ---------------------------------------------------
    def subscribe_cell(
        self,
        cell: Cell,
        pattern: str,
        *,
        once: bool = False,
        filter: Callable[[Event], bool] | None = None,
        replay: int = 0,
    ) -> Subscription:
        """Subscribe an actor; subscribing the same pattern again replaces the options."""
        check_pattern(pattern)  # before touching anything: a ValueError, never a TypeError
        mine = self._by_cell.setdefault(cell, {})
        old = mine.get(pattern)
        if old is not None:
            self._index.remove(old)
        sub = Subscription(pattern, cell=cell, once=once, filter=filter, seq=next(self._seq))
        mine[pattern] = sub
        self._index.add(sub)
        if replay:
            self._replay(sub, replay)
        return sub

    def unsubscribe_cell(self, cell: Cell, pattern: str) -> bool:
        mine = self._by_cell.get(cell)
        sub = mine.pop(pattern, None) if mine else None
        if sub is None:
            return False
        self._index.remove(sub)
        if not mine:
            self._by_cell.pop(cell, None)
        return True

    def drop_all(self, cell: Cell) -> None:
        """The actor stopped for good: its subscriptions go with it."""
        for sub in self._by_cell.pop(cell, {}).values():
            self._index.remove(sub)

    def patterns_of(self, cell: Cell) -> tuple[str, ...]:
        return tuple(self._by_cell.get(cell, ()))

    def _replay(self, sub: Subscription, n: int) -> None:
        hits = list(matching(sub.pattern, self._history))[-n:]
        for event in hits:
            if sub.cell is not None and self._accepts(sub, event):
                self._offer(sub, event)

    # -- publishing ------------------------------------------------------
    def _event(
        self,
        topic: str,
        payload: Any,
        source: str,
        correlation_id: str | None,
        metadata: Mapping[str, Any] | None,
    ) -> Event:
        return Event(
            topic=topic,
            payload=payload,
            source=source,
            id=next(self._ids),
            timestamp=time.time(),
            correlation_id=correlation_id,
            metadata=dict(metadata) if metadata else _NO_METADATA,
        )

    def _record(self, event: Event) -> None:
        self.published += 1
        self._history.append(event)
        topics = self._topics
        key = event.topic if (event.topic in topics or len(topics) < TOPIC_STATS) else "(other)"
        topics[key] = topics.get(key, 0) + 1

    async def publish(
        self,
        topic: str,
        payload: Any = None,
        *,
        source: str = "system",
        correlation_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> int:
        """Deliver to every matching subscriber, waiting for room in full ``block`` mailboxes.

        Delivers at once to every subscriber with room; for each full
        ``block`` subscriber it takes a place in that mailbox's line, all of
        them before its first wait (so every subscriber sees one total order),
        then blocks until each line has let the event in.  A wait that would
        close a cycle of actors waiting on each other (rule 5: e.g. a
        subscriber publishing to its own topic while its mailbox is full) is
        not made: the event is dead-lettered for that subscriber (``deadlock``).
        Cancelled while it waits, the event is dead-lettered (``overflow``)
        for each subscriber it had not reached yet, and `trio.Cancelled`
        propagates.  Returns how many subscribers it was delivered to.
        """
        segments = self._topic(topic)
        await trio.lowlevel.checkpoint_if_cancelled()
        event = self._event(topic, payload, source, correlation_id, metadata)
        self._record(event)
        waiter = waiting_slot()
        count, lines = self._deliver(event, segments, wait=True, waiter=waiter)
        if lines is None:
            # Nobody to wait for.  A publisher that never waits would never let
            # others run: yield now and then.
            self._unyielded += 1
            if self._unyielded >= YIELD_EVERY:
                self._unyielded = 0
                await trio.lowlevel.cancel_shielded_checkpoint()
            return count
        return count + await self.wait_in_lines(event, lines, waiter)

    def publish_nowait(
        self,
        topic: str,
        payload: Any = None,
        *,
        source: str = "system",
        correlation_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> int:
        """Deliver without waiting.  Never blocks.

        A subscriber that cannot take the event at once (a full ``block`` or
        ``fail`` mailbox, or one with publishers waiting in its line) gets it
        dead-lettered as ``overflow``; ``drop_new``/``drop_old`` mailboxes
        apply their policy.  Returns how many subscribers it was delivered to.
        """
        segments = self._topic(topic)
        event = self._event(topic, payload, source, correlation_id, metadata)
        self._record(event)
        return self._deliver(event, segments, wait=False, waiter=None)[0]

    def start_publish(
        self,
        topic: str,
        payload: Any = None,
        *,
        source: str = "system",
        correlation_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> tuple[Event, int, Lines | None]:
        """The first half of a publish for a waiter outside the wait-for graph (a thread
        publishing through the bus actor): deliver where there is room, take places in the
        lines of full ``block`` subscribers, and return ``(event, delivered, lines)``.
        Finish with `wait_in_lines` when `lines` is not None.  Never blocks.
        """
        segments = self._topic(topic)
        event = self._event(topic, payload, source, correlation_id, metadata)
        self._record(event)
        count, lines = self._deliver(event, segments, wait=True, waiter=None)
        return event, count, lines

    def _deliver(
        self, event: Event, segments: tuple[str, ...], *, wait: bool, waiter: Waiter | None
    ) -> tuple[int, Lines | None]:
        """Deliver `event` where it fits now; with `wait`, take a place in the line of
        each full ``block`` subscriber (before anything awaits: one total order).

        Returns how many got it now, and the places taken (None if none).
        """
        count = 0
        lines: Lines | None = None
        # A copy: `once` subscriptions leave the index as they are served.
        for sub in list(self._index.match(event.topic, segments)):
            if sub.filter is not None and not self._accepts(sub, event):
                continue
            cell = sub.cell
            if cell is None:
                count += self._to_stream(sub, event)
                continue
            mailbox = cell.mailbox
            if mailbox.must_wait():
                if not wait:
                    self._drop(sub, event, "overflow")
                    continue
                if waiter is not None:
                    try:
                        check_wait(waiter, cell, f"{waiter.path} publishing {event.topic!r}")
                    except Deadlock:
                        self._drop(sub, event, "deadlock")
                        continue
                if sub.once:
                    self._unsubscribe(sub)
                ticket = mailbox.enter_line(event, None if waiter is None else waiter.task)
                if ticket.state is QUEUED:
                    self._delivered(sub)
                    count += 1
                else:
                    if lines is None:
                        lines = []
                    lines.append((sub, ticket))
                continue
            count += self._offer(sub, event)
        return count, lines

    def _offer(self, sub: Subscription, event: Event) -> int:
        """Put `event` into the mailbox of an actor subscriber that need not wait
        (one with room, or a dropping policy); 1 if delivered, else 0."""
        assert sub.cell is not None
        mailbox = sub.cell.mailbox
        if mailbox.must_wait() or (mailbox.overflow == "fail" and not mailbox.has_room()):
            self._drop(sub, event, "overflow")
            return 0
        # room (or a dropping policy, or a closed mailbox: they dead-letter themselves)
        dropped = mailbox.put(event)
        if dropped is event:
            sub.dropped += 1
            self.dropped += 1
            return 0
        if isinstance(dropped, Event):  # drop_old pushed out an older event
            sub.dropped += 1
            self.dropped += 1
        if sub.once:
            self._unsubscribe(sub)
        self._delivered(sub)
        return 1

    async def wait_in_lines(
        self, event: Event, lines: Lines, waiter: Waiter | None, *, deadline: float = math.inf
    ) -> int:
        """Wait until every line in `lines` let `event` in; return how many did.

        One line at a time, in order; `waiter` (the publishing actor, if the
        publisher is one) is an edge of the wait-for graph for the line it
        waits in, and a line that would close a cycle is left: ``deadlock``.
        Lines that let it in while the publisher waited elsewhere count too.
        Cancelled, or at `deadline` (trio time), the rest are left and
        dead-lettered as ``overflow`` (the count then says who got it:
        `delivered_in`); a mailbox that closed dead-lettered the event itself
        (``stopped``).
        """
        count = 0
        refused: set[int] = set()  # lines left for a deadlock (dead-lettered already)
        try:
            with trio.move_on_at(deadline):
                await self._wait_in_lines(event, lines, waiter, refused)
        finally:
            for i, (sub, ticket) in enumerate(lines):
                state = ticket.state
                if state is QUEUED:
                    self._delivered(sub)
                    count += 1
                elif state is STOPPED:  # the mailbox dead-lettered it
                    sub.dropped += 1
                    self.dropped += 1
                elif i not in refused:
                    # left: the publish was cancelled (the wait that was cancelled
                    # withdrew its own place already)
                    assert sub.cell is not None
                    sub.cell.mailbox.withdraw(ticket)
                    self._drop(sub, event, "overflow")
        return count

    @staticmethod
    def delivered_in(lines: Lines) -> int:
        """How many of the lines a publish waited in have let its event in."""
        return sum(1 for _, ticket in lines if ticket.state is QUEUED)

    async def _wait_in_lines(
        self, event: Event, lines: Lines, waiter: Waiter | None, refused: set[int]
    ) -> None:
        for i, (sub, ticket) in enumerate(lines):
            if ticket.state is not WAITING:
                continue
            cell = sub.cell
            assert cell is not None
            if waiter is None:
                await cell.mailbox.wait_in_line(ticket)
                continue
            try:
                begin_wait(
                    waiter, cell, f"{waiter.path} publishing {event.topic!r}", to_send=True
                )
            except Deadlock:
                cell.mailbox.withdraw(ticket)
                refused.add(i)
                self._drop(sub, event, "deadlock")
                continue
            try:
                await cell.mailbox.wait_in_line(ticket)
            finally:
                end_wait(waiter, cell)

    def _topic(self, topic: str) -> tuple[str, ...]:
        """`check_topic`, remembered for topics seen before."""
        segments = self._topics_seen.get(topic) if isinstance(topic, str) else None
        if segments is None:
            segments = check_topic(topic)
            if len(self._topics_seen) >= MATCH_CACHE:
                self._topics_seen.clear()
            self._topics_seen[topic] = segments
        return segments

    def _accepts(self, sub: Subscription, event: Event) -> bool:
        if sub.filter is None:
            return True
        try:
            return bool(sub.filter(event))
        except Exception:
            log.exception("filter of %s on %r raised; event skipped", sub.subscriber, sub.pattern)
            return False

    def _to_stream(self, sub: Subscription, event: Event) -> int:
        """A stream never blocks a publisher: past its capacity, events are dropped."""
        assert sub.channel is not None
        try:
            sub.channel.send_nowait(event)
        except (trio.WouldBlock, trio.BrokenResourceError, trio.ClosedResourceError):
            self._drop(sub, event, "overflow")
            return 0
        if sub.once:
            self._remove_stream(sub)
        self._delivered(sub)
        return 1

    def _delivered(self, sub: Subscription) -> None:
        sub.delivered += 1
        self.delivered += 1

    def _unsubscribe(self, sub: Subscription) -> None:
        """A ``once`` subscription was served."""
        assert sub.cell is not None
        mine = self._by_cell.get(sub.cell)
        if mine is not None and mine.get(sub.pattern) is sub:
            self.unsubscribe_cell(sub.cell, sub.pattern)

    def _drop(self, sub: Subscription, event: Event, reason: str) -> None:
        sub.dropped += 1
        self.dropped += 1
        if sub.cell is not None:
            sub.cell.drop(event, reason)
        else:
            self._host.dead_letter(event, reason, sub.subscriber)

    # -- system events -----------------------------------------------------
    def system_event(self, topic: str, payload: Mapping[str, Any]) -> None:
        """Publish a runtime event (``system.*``) without waiting."""
        self.publish_nowait(topic, dict(payload), source="system")

    def dead_letter_event(self, message: Any, reason: str, recipient: str) -> None:
        """Publish ``system.deadletter`` unless we are already doing so (no recursion)."""
        if self._publishing_deadletter:
            return
        self._publishing_deadletter = True
        try:
            payload = {"message": message, "reason": reason, "recipient": recipient}
            self.publish_nowait("system.deadletter", payload, source="system")
        finally:
            self._publishing_deadletter = False

    # -- non-actor consumers ---------------------------------------------
    @asynccontextmanager
    async def stream(
        self, pattern: str = ">", *, capacity: int = 1000
    ) -> AsyncIterator[trio.MemoryReceiveChannel[Event]]:
        """``async with bus.stream("training.*") as events: async for e in events: ...``

        A slow reader does not slow publishers: past `capacity` queued events
        the newest are dead-lettered (``overflow``) and counted as dropped.
        """
        send, receive = trio.open_memory_channel[Event](capacity)
        sub = Subscription(pattern, channel=send, seq=next(self._seq))
        self._index.add(sub)
        self._streams.add(sub)
        try:
            async with receive:
                yield receive
        finally:
            self._remove_stream(sub)
            send.close()

    def _remove_stream(self, sub: Subscription) -> None:
        if sub in self._streams:
            self._streams.discard(sub)
            self._index.remove(sub)

    # -- callbacks (the reference design's decorator) --------------------
    def subscribe(
        self,
        pattern: str,
        *,
        once: bool = False,
        filter: Callable[[Event], bool] | None = None,
        replay: int = 0,
    ) -> Callable[[Callable[[Event], Any]], Callable[[Event], Any]]:
        """Decorator: run `fn(event)` (sync or async) for each matching event.

        Each callback runs in its own supervised actor under
        ``/system/callbacks``: calls are sequential, and an error in one is
        counted and logged, never seen by publishers or other subscribers.
        """
        check_pattern(pattern)

        def register(fn: Callable[[Event], Any]) -> Callable[[Event], Any]:
            if fn in self._callbacks:
                raise ValueError(f"{fn!r} is already subscribed; unsubscribe it first")
            cell = self._host.adopt_callback(fn)
            self._callbacks[fn] = cell
            self.subscribe_cell(cell, pattern, once=once, filter=filter, replay=replay)
            return fn

        return register

    def unsubscribe(self, fn: Callable[[Event], Any]) -> None:
        """Stop a callback registered with `subscribe` (its actor is stopped too)."""
        cell = self._callbacks.pop(fn, None)
        if cell is None:
            raise ValueError(f"{fn!r} is not a subscribed callback")
        self.drop_all(cell)
        self._host.release_callback(cell)

    # -- looking back ----------------------------------------------------
    def history(self, pattern: str = ">", limit: int = 100) -> list[Event]:
        """The newest `limit` events matching `pattern`, newest first."""
        out: list[Event] = []
        for event in matching(pattern, reversed(self._history)):
            out.append(event)
            if len(out) >= limit:
                break
        return out

    def clear_history(self) -> None:
        self._history.clear()

    def stats(self) -> dict[str, Any]:
        return {
            "published": self.published,
            "delivered": self.delivered,
            "dropped": self.dropped,
            "topics": dict(self._topics),
            "subscriptions": self._index.count,
        }


__all__ = [
    "Bus",
    "Event",
    "PatternIndex",
    "Subscription",
    "check_pattern",
    "check_topic",
    "matches",
]

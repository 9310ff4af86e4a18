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
(``deadlock``).  A cancelled publish, or one past its `timeout`, dead-letters
the event (``overflow``) for the subscribers it had not reached.
`publish_nowait` never waits: a subscriber that cannot take the event at once
gets it dead-lettered as ``overflow``.  Threads publish through the bus actor
(`System.publish`).

Topics under ``system.`` belong to the runtime: only its own `system_event`
and `dead_letter_event` publish there (users get `ValueError`), patterns that
begin with a wildcard do not match them (`runtime.topics`), and they are
counted apart (``stats()["system_published"]``).

Duplicate suppression: an event published with a `msg_id` already seen within
the last `duplicate_window` seconds is dropped (the publish returns 0), like
NATS JetStream's ``Nats-Msg-Id``.

A publish that never has to wait yields to the scheduler only once every
`YIELD_EVERY` calls (a publisher that never waits would otherwise never let
others run).
"""

from __future__ import annotations

import inspect
import itertools
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Hashable, Mapping
from contextlib import asynccontextmanager
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import trio

from .errors import Deadlock, MailboxFull, RuntimeClosed
from .mailbox import QUEUED, STOPPED, WAITING, Ticket
from .messages import Event
from .spec import (
    check_correlation_id,
    check_duplicate_window,
    check_history,
    check_msg_id,
    check_since,
    check_stream_capacity,
    check_timeout,
)
from .system_actors import Callback, bound_builtin
from .threads import ThreadStream
from .topics import (
    MATCH_CACHE,
    SYSTEM,
    PatternIndex,
    check_pattern,
    check_topic,
    check_user_topic,
    matches,
    matching,
)
from .waits import Waiter, begin_wait, check_wait, end_wait, waiting_slot

if TYPE_CHECKING:
    from .cell import Cell
    from .host import Host

log = logging.getLogger("troupe.bus")

HISTORY = 1000
DUPLICATE_WINDOW = 120.0
"""Seconds a `msg_id` is remembered (NATS JetStream's default duplicate window)."""
DUPLICATES = 100_000
"""At most this many `msg_id`s are remembered; past it the oldest are forgotten early."""
TOPIC_STATS = 10_000
DEAD_LETTER_TOPIC = "system.deadletter"
YIELD_EVERY = 64
"""Fast-path publishes between two yields to the scheduler (fairness)."""
_NO_METADATA: Mapping[str, Any] = MappingProxyType({})
F = TypeVar("F", bound=Callable[..., Any])


StreamChannel = trio.MemorySendChannel[Event] | ThreadStream
"""Where a stream's subscription delivers: a trio task's memory channel
(`Bus.stream`) or a plain thread's `ThreadStream` (`Bus.add_thread_stream`).
The bus calls `send_nowait` and `close` on it, and a `ThreadStream`'s
`take_unread` when its reader's block ends."""


def _once_first(sub: Subscription) -> bool:
    """Sort key that puts ``once`` subscriptions first (False sorts before True)."""
    return not sub.once


class Subscription:
    """One pattern of one subscriber: an actor's mailbox or a stream's channel."""

    __slots__ = (
        "cell",
        "channel",
        "delivered",
        "dropped",
        "filter",
        "filter_errors",
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
        channel: StreamChannel | None = None,
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
        self.filter_errors = 0  # times `filter` raised (logged the first time only)
        self.delivered = 0
        self.dropped = 0
        self.seq = seq

    @property
    def subscriber(self) -> str:
        return self.cell.path if self.cell is not None else _stream_name(self.pattern)


def _stream_name(pattern: str) -> str:
    """A stream's name as a dead letter's recipient."""
    return f"stream:{pattern}"


Lines = list[tuple[Subscription, Ticket]]
"""The places a publish took in the lines of full subscribers, in match order."""


class PendingPublish:
    """A publish that holds places in the lines of full subscribers (made by the bus).

    `delivered` counts the subscribers that have the event: at first those
    with room, and once `wait` returns (or is cancelled) also those whose
    lines let it in.
    """

    __slots__ = ("_bus", "delivered", "event", "lines", "refused")

    def __init__(self, bus: Bus, event: Event, lines: Lines, delivered: int) -> None:
        self._bus = bus
        self.event = event
        self.lines = lines
        self.delivered = delivered
        self.refused: set[int] = set()  # lines left for a deadlock (dead-lettered already)

    async def wait(self, waiter: Waiter | None = None, deadline: float = math.inf) -> int:
        """Block until every line let the event in; return `delivered`.

        One line at a time, in order; `waiter` (the publishing actor, if any) is
        an edge of the wait-for graph for the line it waits in, and a line whose
        wait would close a cycle is left (``deadlock``).  Lines that let the
        event in while it waited elsewhere count too.  Cancelled, or at
        `deadline` (trio time), the places still held are left and the event
        is dead-lettered there (``overflow``) and `delivered` is final; a
        cancellation propagates, the deadline just ends the wait.  A mailbox
        that closed meanwhile dead-lettered the event itself (``stopped``).
        """
        try:
            if deadline == math.inf:
                await self._bus._wait_in_lines(self, waiter)
            else:
                with trio.move_on_at(deadline):
                    await self._bus._wait_in_lines(self, waiter)
        finally:
            self._bus._settle(self)
        return self.delivered


def _read_only(counts: Mapping[str, int]) -> MappingProxyType[str, int]:
    return counts if isinstance(counts, MappingProxyType) else MappingProxyType(dict(counts))


@attrs.frozen
class BusStatistics:
    """What `Bus.statistics` reports (like trio's `MemoryChannelStatistics`).

    Counts since the system started; `to_dict` is `Bus.stats`, the same as a
    JSON-ready dict.
    """

    published: int
    """Events published on application topics (not ``system.``), events that came
    from other nodes on cluster-wide topics included; duplicates are not."""
    system_published: int
    """Events the runtime published on its own ``system.`` topics (``system.actor.*``,
    ``system.deadletter``, ``system.loop.blocked``, ``system.cluster.*``, ...)."""
    delivered: int
    """Deliveries: one for each subscriber (an actor, a callback or a stream) that
    got an event, so an event with three subscribers counts three; replayed
    events count too."""
    dropped: int
    """Events dead-lettered for a subscriber instead of delivered, one for each
    subscriber: no room (``overflow``, a ``drop_new`` mailbox, an event pushed out
    of a ``drop_old`` one), a wait that would close a cycle (``deadlock``), a
    filter that raised (``crashed``), a mailbox that stopped (``stopped``).  A
    plain message pushed out of a mailbox by an event is not counted."""
    duplicates: int
    """Publishes dropped because their `msg_id` was seen within the duplicate
    window (local ones and those from other nodes); they are not in ``published``."""
    topics: MappingProxyType[str, int] = attrs.field(hash=False, converter=_read_only)
    """Events per topic, application and runtime ones alike; past 10,000 topics
    (`TOPIC_STATS`), new ones are counted under ``(other)``.  A read-only view of
    a copy made by `Bus.statistics`: it does not change as the bus goes on (the
    object is hashed by its other fields)."""
    subscriptions: int
    """Subscriptions now: one for each pattern of each actor or callback, and one
    for each open stream (a ``once`` subscription held by a publish waiting for
    room is not counted)."""

    def to_dict(self) -> dict[str, Any]:
        """The same counts as a plain dict (``topics`` a new dict): what `Bus.stats`
        returns, ready for JSON.  Shallow: not `attrs.asdict`'s walk, which takes
        milliseconds over 10,000 topics (the snapshot asks for it)."""
        # the converter made `topics` a view: its copy is a dict (dict(a view) is slow)
        return {**attrs.asdict(self, recurse=False), "topics": self.topics.copy()}


class Bus:
    """The router: subscriptions, delivery, history and stats (``system.bus``)."""

    def __init__(
        self, host: Host, history: int = HISTORY, duplicate_window: float = DUPLICATE_WINDOW
    ) -> None:
        self._host = host
        self._index: PatternIndex[Subscription] = PatternIndex()
        self._by_cell: dict[Cell, dict[str, Subscription]] = {}
        # actors in `_by_cell` with more than one pattern: while there is none, a
        # publish need not look out for reaching one subscriber twice
        self._multi_pattern_actors = 0
        # `once` subscriptions taken out of the index by the publish waiting in their
        # line, by (actor, pattern): back in if that event never gets there
        self._held: dict[tuple[Cell, str], Subscription] = {}
        self._streams: dict[StreamChannel, Subscription] = {}  # open streams, by channel
        self._history: deque[Event] = deque(maxlen=check_history(history))
        self._window = check_duplicate_window(duplicate_window)
        self._msg_ids: OrderedDict[str, float] = OrderedDict()  # msg_id -> when first seen
        self._ids = itertools.count(1)
        self._seq = itertools.count()
        self._callbacks: dict[Hashable, _Registered] = {}
        self.published = 0
        self.system_published = 0
        self.delivered = 0
        self.dropped = 0
        self.duplicates = 0
        self._topics: dict[str, int] = {}
        self._publishing_deadletter = False
        self._topics_seen: dict[str, tuple[str, ...]] = {}  # any valid topic: its segments
        self._unyielded = 0
        self._exporter: Callable[[Event], None] | None = None
        self.remote = 0  # events that came from other nodes

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
        _check_replay(replay)
        _check_filter(filter)
        old = self._by_cell.get(cell, {}).get(pattern)
        if old is not None:
            self._index.remove(old)
        self._held.pop((cell, pattern), None)  # replaced: a held once is not coming back
        sub = Subscription(pattern, cell=cell, once=once, filter=filter, seq=next(self._seq))
        self._keep_subscription(cell, sub)
        self._index.add(sub)
        if replay:
            self._replay(sub, replay)
        return sub

    def unsubscribe_cell(self, cell: Cell, pattern: str) -> bool:
        """Drop `cell`'s subscription to exactly `pattern` (one held by a waiting
        publish included); False if there was none."""
        held = self._held.pop((cell, pattern), None)
        sub = self._forget_subscription(cell, pattern)
        if sub is None:
            return held is not None
        self._index.remove(sub)
        return True

    def drop_all(self, cell: Cell) -> None:
        """The actor has no incarnation any more (stopped for good, or rests): its
        subscriptions go with it."""
        for pattern in list(self._by_cell.get(cell, ())):
            sub = self._forget_subscription(cell, pattern)
            assert sub is not None
            self._index.remove(sub)
        for key in [key for key in self._held if key[0] is cell]:
            del self._held[key]

    def _keep_subscription(self, cell: Cell, sub: Subscription) -> None:
        """`sub` is `cell`'s subscription to its pattern (replacing one to the same)."""
        mine = self._by_cell.setdefault(cell, {})
        before = len(mine)
        mine[sub.pattern] = sub
        if before == 1 and len(mine) == 2:
            self._multi_pattern_actors += 1

    def _forget_subscription(self, cell: Cell, pattern: str) -> Subscription | None:
        """Take `cell`'s subscription to `pattern` out of `_by_cell` (None if none)."""
        mine = self._by_cell.get(cell)
        sub = mine.pop(pattern, None) if mine else None
        if sub is None:
            return None
        assert mine is not None
        if len(mine) == 1:
            self._multi_pattern_actors -= 1
        elif not mine:
            del self._by_cell[cell]
        return sub

    def patterns_of(self, cell: Cell) -> tuple[str, ...]:
        return tuple(self._by_cell.get(cell, ()))

    def _replay(self, sub: Subscription, n: int) -> None:
        hits = list(matching(sub.pattern, self._history))[-n:]
        for event in hits:
            if sub.cell is not None and self._accepts(sub, event):
                try:
                    dropped = sub.cell.mailbox.put(event)
                except MailboxFull:  # replay never waits
                    self._drop(sub, event, "overflow")
                else:
                    if self._count_put(sub, event, dropped) and sub.once:
                        return  # served: the once subscription takes one event

    # -- publishing ------------------------------------------------------
    def _event(
        self,
        topic: str,
        payload: Any,
        source: str,
        correlation_id: str | None,
        metadata: Mapping[str, Any] | None,
        msg_id: str | None = None,
    ) -> Event:
        return Event(
            topic=topic,
            payload=payload,
            source=source,
            id=next(self._ids),
            timestamp=time.time(),
            correlation_id=correlation_id,
            metadata=dict(metadata) if metadata else _NO_METADATA,
            msg_id=msg_id,
            node=self._host.node,
        )

    def _duplicate(self, msg_id: str | None) -> bool:
        """Was `msg_id` seen within the duplicate window?  Then the caller drops the event.

        Otherwise it is remembered from now on (the window starts at the first
        publish; duplicates do not extend it).  Memory stays bounded: ids older
        than the window are forgotten as time goes on, and at most `DUPLICATES`
        are kept.  Uses trio's clock.
        """
        if msg_id is None:
            return False
        check_msg_id(msg_id)
        if self._window <= 0:
            return False
        seen = self._msg_ids
        now = trio.current_time()
        horizon = now - self._window
        while seen:
            oldest = next(iter(seen))
            if seen[oldest] > horizon:
                break
            del seen[oldest]
        if msg_id in seen:
            self.duplicates += 1
            return True
        if len(seen) >= DUPLICATES:
            seen.popitem(last=False)
        seen[msg_id] = now
        return False

    def _user_topic(self, topic: object) -> tuple[str, ...]:
        """A user's publish: `RuntimeClosed` once the system has stopped, `ValueError`
        for an invalid topic or one of the runtime's own (``system``, ``system.*``);
        the topic's segments otherwise (remembered for topics seen before).

        The public `publish`, `publish_nowait` and `publish_for_thread` call it; the
        runtime's own events (`system_event`, `dead_letter_event`) go through
        `_publish_runtime`.
        """
        self._check_open(f"publish on {topic!r}")
        segments = self._topic(topic)  # type: ignore[arg-type]  # checked there
        if segments[0] == SYSTEM:
            check_user_topic(topic)  # raises, saying why
        return segments

    def _user_event(
        self,
        topic: str,
        payload: Any,
        source: str,
        correlation_id: str | None,
        metadata: Mapping[str, Any] | None,
        msg_id: str | None,
    ) -> tuple[Event, tuple[str, ...]] | None:
        """A user's new event, checked (`_user_topic`) and recorded, with its topic's
        segments; None if its `msg_id` is a duplicate (then nothing is recorded)."""
        segments = self._user_topic(topic)
        if correlation_id is not None:
            check_correlation_id(correlation_id)
        if msg_id is not None and self._duplicate(msg_id):
            return None
        event = self._event(topic, payload, source, correlation_id, metadata, msg_id)
        if self._exporter is not None:
            try:
                self._exporter(event)  # may refuse it (NotSerializable): nothing delivered
            except BaseException:
                if msg_id is not None:  # nor published: its id may be used again
                    self._msg_ids.pop(msg_id, None)
                raise
        self._record(event)
        return event, segments

    def set_exporter(self, exporter: Callable[[Event], None] | None) -> None:
        """The cluster's hook: called with each new user event before it is delivered
        here (it shares those of the cluster-wide topics; raising refuses the publish)."""
        self._exporter = exporter

    def deliver_remote(self, event: Event) -> int:
        """An event another node published on a cluster-wide topic: deliver it to the
        matching subscribers here, without waiting (a full ``block`` mailbox gets it
        dead-lettered as ``overflow``); duplicates by `msg_id` are dropped as for
        local publishes.  Returns how many subscribers got it."""
        if not self._host.is_running:
            return 0
        try:
            segments = self._topic(event.topic)
        except ValueError:
            return 0
        if segments[0] == SYSTEM or (event.msg_id is not None and self._duplicate(event.msg_id)):
            return 0
        event = attrs.evolve(event, id=next(self._ids))
        self.remote += 1
        self._record(event)
        return self._deliver(event, segments, wait=False)[0]

    def _record(self, event: Event, *, system: bool = False) -> None:
        if system:
            self.system_published += 1
        else:
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
        msg_id: str | None = None,
        timeout: float | None = None,
        **more: Any,
    ) -> int:
        """Deliver to every matching subscriber, waiting for room in full ``block`` mailboxes.

        Delivers at once to every subscriber with room; for each full
        ``block`` subscriber it takes a place in that mailbox's line, all of
        them before its first wait (so every subscriber sees one total order),
        then blocks until each line has let the event in, for at most
        `timeout` seconds (None: as long as it takes; 0: only where there is
        room now).  Past the timeout the event is dead-lettered (``overflow``)
        for each subscriber it had not reached yet and the publish returns
        (no exception).  A wait that would close a cycle of actors waiting on
        each other (rule 5: e.g. a subscriber publishing to its own topic
        while its mailbox is full) is not made: the event is dead-lettered for
        that subscriber (``deadlock``).  Cancelled while it waits, the event is
        dead-lettered (``overflow``) for each subscriber it had not reached
        yet, and `trio.Cancelled` propagates.  A publish that waits for nobody
        is a schedule point only once every `YIELD_EVERY` calls (a cancel
        already pending is always honoured first).

        The event's metadata is `metadata` (the runtime's own callers) and the
        other keywords (``foo=1``), merged.  Returns how many subscribers it
        was delivered to (0 for a duplicate `msg_id`).  Raises `RuntimeClosed`
        once the system has stopped, `ValueError` for an invalid topic or one
        under ``system.``, a negative or NaN `timeout`, or a metadata key given
        both in `metadata` and as a keyword, `TypeError` for a `msg_id` or a
        `correlation_id` that is not a string; nothing is published then.
        """
        limit = math.inf if timeout is None else check_timeout(timeout)  # None: no call
        if more:
            metadata = _merged(metadata, more)
        await trio.lowlevel.checkpoint_if_cancelled()
        new = self._user_event(topic, payload, source, correlation_id, metadata, msg_id)
        if new is None:
            return 0
        event, segments = new
        count, lines = self._deliver(event, segments, wait=True, check_cycles=True)
        if lines is None:
            # Nobody to wait for.  A publisher that never waits would never let
            # others run: yield now and then.
            self._unyielded += 1
            if self._unyielded >= YIELD_EVERY:
                self._unyielded = 0
                await trio.lowlevel.cancel_shielded_checkpoint()
            return count
        deadline = math.inf if limit == math.inf else trio.current_time() + limit
        return await PendingPublish(self, event, lines, count).wait(waiting_slot(), deadline)

    def publish_nowait(
        self,
        topic: str,
        payload: Any = None,
        *,
        source: str = "system",
        correlation_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        msg_id: str | None = None,
        timeout: float | None = None,
        **more: Any,
    ) -> int:
        """Deliver without waiting.  Never blocks.

        A subscriber that cannot take the event at once (a full ``block`` or
        ``fail`` mailbox, or one with publishers waiting in its line) gets it
        dead-lettered as ``overflow``; ``drop_new``/``drop_old`` mailboxes
        apply their policy.  `timeout` is checked but does not apply (it never
        waits); metadata as for `publish`.  Returns how many subscribers it
        was delivered to (0 for a duplicate `msg_id`).  Raises as `publish`.
        """
        if timeout is not None:
            check_timeout(timeout)
        if more:
            metadata = _merged(metadata, more)
        new = self._user_event(topic, payload, source, correlation_id, metadata, msg_id)
        if new is None:
            return 0
        event, segments = new
        return self._deliver(event, segments, wait=False)[0]

    def _publish_runtime(self, topic: str, payload: Any) -> int:
        """Publish one of the runtime's own events (any topic, ``system.*`` included)
        without waiting, as `publish_nowait` does."""
        segments = self._topic(topic)
        event = self._event(topic, payload, "system", None, None)
        self._record(event, system=segments[0] == SYSTEM)
        return self._deliver(event, segments, wait=False)[0]

    def publish_for_thread(
        self,
        topic: str,
        payload: Any = None,
        *,
        correlation_id: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        msg_id: str | None = None,
    ) -> int | PendingPublish:
        """The bus actor's half of a foreign thread's publish (see `System.publish`).

        Delivers where there is room and takes places in the lines of full
        ``block`` subscribers at once (the publisher, a thread, is outside the
        wait-for graph).  Never blocks.  Returns the count delivered, or a
        `PendingPublish` to wait on when some line must be waited in.  Raises
        as `publish`.
        """
        new = self._user_event(topic, payload, "thread", correlation_id, metadata, msg_id)
        if new is None:
            return 0
        event, segments = new
        count, lines = self._deliver(event, segments, wait=True)
        return count if lines is None else PendingPublish(self, event, lines, count)

    def _deliver(
        self, event: Event, segments: tuple[str, ...], *, wait: bool, check_cycles: bool = False
    ) -> tuple[int, Lines | None]:
        """Deliver `event` where it fits now; with `wait`, take a place in the line of
        each full ``block`` subscriber (before anything awaits: one total order).
        With `check_cycles`, the publisher is the handler running in this task (if
        any), and a place whose wait would close a cycle is refused at once
        (``deadlock``) rather than first waiting in the other lines.

        An actor whose patterns overlap gets the event once: its first pattern that
        takes it decides (a ``once`` one first, then in the order they were
        subscribed); one whose filter refuses it leaves it to the next, one whose
        filter raises dead-letters it (``crashed``) for that actor.

        Returns how many got it now, and the places taken (None if none).
        """
        count = 0
        lines: Lines | None = None
        waiter: Waiter | None = None  # looked up only if someone must be waited for
        # A copy: `once` subscriptions leave the index as they are served.
        subs = list(self._index.match(event.topic, segments))
        reached: set[Cell] | None = None
        if self._multi_pattern_actors:
            reached = set()
            subs.sort(key=_once_first)  # stable: `once` ones first, else as they were
        for sub in subs:
            cell = sub.cell
            if reached is not None and cell in reached:
                continue
            if sub.filter is not None:
                verdict = self._verdict(sub, event)
                if verdict is not True:
                    if verdict is None and reached is not None and cell is not None:
                        reached.add(cell)  # dead-lettered for it: no other pattern tries
                    continue
            if cell is None:
                count += self._to_stream(sub, event)
                continue
            if reached is not None:
                reached.add(cell)
            mailbox = cell.mailbox
            try:
                dropped = mailbox.put(event)
            except MailboxFull:  # `block` or `fail`, full
                if not wait or not mailbox.must_wait():
                    self._drop(sub, event, "overflow")
                    continue
                if check_cycles:
                    check_cycles = False
                    waiter = waiting_slot()
                if waiter is not None:
                    try:
                        check_wait(waiter, cell, f"{waiter.path} publishing {event.topic!r}")
                    except Deadlock:
                        self._drop(sub, event, "deadlock")
                        continue
                if sub.once:  # held for this event (back if it never gets there)
                    self._unsubscribe(sub)
                    self._held[(cell, sub.pattern)] = sub
                ticket = mailbox.enter_line(event, None if waiter is None else waiter.task)
                if ticket.state is QUEUED:  # let in at once (room lent to threads came back)
                    if sub.once:
                        self._resubscribe(sub, back=False)
                    self._delivered(sub)
                    count += 1
                else:
                    if lines is None:
                        lines = []
                    lines.append((sub, ticket))
                continue
            count += self._count_put(sub, event, dropped)
        return count, lines

    def _count_put(self, sub: Subscription, event: Event, dropped: Any) -> int:
        """Account for `mailbox.put(event)` that returned `dropped`; 1 if delivered."""
        if dropped is not None:
            if dropped is event:  # drop_new, or a closed mailbox: they dead-letter it
                sub.dropped += 1
                self.dropped += 1
                return 0
            if type(dropped) is Event:  # drop_old pushed out an older event (not a tell)
                sub.dropped += 1
                self.dropped += 1
        if sub.once:
            self._unsubscribe(sub)
        self._delivered(sub)
        return 1

    async def _wait_in_lines(self, pending: PendingPublish, waiter: Waiter | None) -> None:
        """Wait in each line of `pending` that has not let its event in, in order."""
        event = pending.event
        for i, (sub, ticket) in enumerate(pending.lines):
            if ticket.state is not WAITING:
                continue
            cell = sub.cell
            assert cell is not None
            if waiter is None:
                await ticket.mailbox.wait_in_line(ticket)
                continue
            try:
                what = f"{waiter.path} publishing {event.topic!r}"
                begin_wait(waiter, cell, what, to_send=True)
            except Deadlock:
                ticket.mailbox.withdraw(ticket)
                pending.refused.add(i)
                self._drop(sub, event, "deadlock")
                continue
            try:
                await ticket.mailbox.wait_in_line(ticket)
            finally:
                end_wait(waiter, cell)

    def _settle(self, pending: PendingPublish) -> None:
        """A publish is done waiting (all let in, cancelled or past its deadline):
        count what was let in; dead-letter the event where it was not (``overflow``)."""
        event = pending.event
        for i, (sub, ticket) in enumerate(pending.lines):
            state = ticket.state
            if state is QUEUED:
                self._delivered(sub)
                pending.delivered += 1
            elif state is STOPPED:  # the mailbox dead-lettered it
                sub.dropped += 1
                self.dropped += 1
            elif i not in pending.refused:
                # left: cancelled (the wait that was cancelled withdrew its place)
                ticket.mailbox.withdraw(ticket)
                self._drop(sub, event, "overflow")
            if sub.once:  # served, or back if the event never got there
                self._resubscribe(sub, back=state is not QUEUED and state is not STOPPED)
        pending.lines = []

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
        return sub.filter is None or self._verdict(sub, event) is True

    def _verdict(self, sub: Subscription, event: Event) -> bool | None:
        """`sub`'s filter on `event`: True or False, or None when it raised (the
        event is then dead-lettered for `sub`'s subscriber, reason ``crashed``)."""
        assert sub.filter is not None
        try:
            verdict = sub.filter(event)
            if verdict is True or verdict is False:
                return verdict
            if inspect.isawaitable(verdict):  # an async filter `_check_filter` missed
                _close(verdict)
                raise TypeError(
                    f"the filter {sub.filter!r} returned an awaitable: a filter is a plain "
                    "function (it runs inside the publish)"
                )
            return bool(verdict)
        except Exception:
            sub.filter_errors += 1
            if sub.filter_errors == 1:  # a busy topic must not flood the log
                log.exception(
                    "filter of %s on %r raised; the event is dead-lettered for it (reason "
                    "'crashed'), as is every event it raises on (logged once)",
                    sub.subscriber,
                    sub.pattern,
                )
            self._drop(sub, event, "crashed")
            return None

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
        """A ``once`` subscription was served, or an event waits in its line for it."""
        assert sub.cell is not None
        mine = self._by_cell.get(sub.cell)
        if mine is not None and mine.get(sub.pattern) is sub:
            self.unsubscribe_cell(sub.cell, sub.pattern)

    def _resubscribe(self, sub: Subscription, *, back: bool) -> None:
        """The event holding a ``once`` subscription (`_held`) is settled: with `back`
        (it never reached the subscriber) the subscription returns, unless the actor
        unsubscribed or subscribed that pattern again meanwhile (or stopped)."""
        cell = sub.cell
        assert cell is not None
        key = (cell, sub.pattern)
        if self._held.get(key) is not sub:
            return
        del self._held[key]
        if back:
            self._keep_subscription(cell, sub)
            self._index.add(sub)

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
        self._publish_runtime(topic, dict(payload))

    def dead_letter_event(self, message: Any, reason: str, recipient: str) -> None:
        """Publish ``system.deadletter`` unless we are already doing so (no recursion),
        or the message is itself a ``system.deadletter`` event (one that its subscriber
        failed on or dropped): a listener that fails on every dead letter would feed on
        its own (such letters are recorded, as any, but not published again)."""
        if self._publishing_deadletter or (
            type(message) is Event and message.topic == DEAD_LETTER_TOPIC
        ):
            return
        self._publishing_deadletter = True
        try:
            payload = {"message": message, "reason": reason, "recipient": recipient}
            self._publish_runtime(DEAD_LETTER_TOPIC, payload)
        finally:
            self._publishing_deadletter = False

    # -- non-actor consumers ---------------------------------------------
    @asynccontextmanager
    async def stream(
        self, pattern: str = ">", *, capacity: int = 1000
    ) -> AsyncIterator[trio.MemoryReceiveChannel[Event]]:
        """``async with bus.stream("training.*") as events: async for e in events: ...``

        The default ``>`` is every application event; the runtime's own come
        only to a pattern that names them (``system.>``).
        A slow reader does not slow publishers: past `capacity` queued events
        the newest are dead-lettered (``overflow``) and counted as dropped.
        Events still queued when the block ends (the reader stopped reading,
        was cancelled or raised) are dead-lettered (``stopped``), as those left
        in the mailbox of an actor that stops.  When the system stops, the
        stream ends (`end_streams`, once the user's tree has stopped): its
        reader gets the events already queued, then the end of the iteration
        (`trio.EndOfChannel` to ``receive()``).  `capacity` is
        a whole number >= 0 (``0``: only a reader already waiting gets an
        event); never unbounded (ValueError).  Raises `RuntimeClosed` once the
        system has stopped.
        """
        check_stream_capacity(capacity)
        self._check_open(f"open a stream of {pattern!r}")
        send, receive = trio.open_memory_channel[Event](capacity)
        sub = self._open_stream(pattern, send)
        try:
            yield receive
        finally:
            self._remove_stream(sub)
            send.close()
            self._strand(sub, receive)

    def _strand(self, sub: Subscription, receive: trio.MemoryReceiveChannel[Event]) -> None:
        """A stream closed: dead-letter what its reader left in it (``stopped``)."""
        with receive:
            while True:
                try:
                    event = receive.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                    return
                self._host.dead_letter(event, "stopped", sub.subscriber)

    def add_thread_stream(self, channel: ThreadStream) -> None:
        """Subscribe a plain thread's stream (`ThreadedBus.stream`) to its pattern.

        Loop thread only; never blocks.  From now on the matching events go
        into `channel` as into an async stream's channel: past its capacity
        they are dead-lettered (``overflow``) and counted as dropped; when the
        system stops, `end_streams` closes it.  Its reader's block ends with
        `end_thread_stream`.  Raises `RuntimeClosed` once the system has
        stopped, ValueError for an invalid pattern (nothing subscribed then).
        """
        self._check_open(f"open a stream of {channel.pattern!r}")
        self._open_stream(channel.pattern, channel)

    def end_thread_stream(self, channel: ThreadStream) -> None:
        """A plain thread's stream ended (its reader left the block): end its
        subscription if it is still open, and dead-letter what the reader left
        unread (``stopped``), as for an async stream.  Loop thread only; never
        blocks.  Also after the system stopped (as `_strand` does then)."""
        sub = self._streams.get(channel)
        if sub is not None:
            self._remove_stream(sub)
        for event in channel.take_unread():
            self._host.dead_letter(event, "stopped", _stream_name(channel.pattern))

    def _open_stream(self, pattern: str, channel: StreamChannel) -> Subscription:
        """Subscribe `channel` to `pattern` (ValueError for an invalid one)."""
        sub = Subscription(pattern, channel=channel, seq=next(self._seq))
        self._index.add(sub)
        self._streams[channel] = sub
        return sub

    def _remove_stream(self, sub: Subscription) -> None:
        assert sub.channel is not None  # a stream's subscription has its channel
        if self._streams.get(sub.channel) is sub:
            del self._streams[sub.channel]
            self._index.remove(sub)

    def end_streams(self) -> None:
        """The system is stopping (its user tree has stopped) or has stopped: end
        every open stream (those of plain threads too).  Its reader still gets
        what is queued, then the end of the iteration; what it leaves unread
        when its block ends is dead-lettered as ever.  Never blocks."""
        for sub in list(self._streams.values()):
            self._remove_stream(sub)
            assert sub.channel is not None
            sub.channel.close()

    def _check_open(self, what: str) -> None:
        if not self._host.is_running:
            raise RuntimeClosed(f"actor system {self._host.name!r} is not running: cannot {what}")

    # -- callbacks (the reference design's decorator) --------------------
    def subscribe(
        self,
        *patterns: str,
        filter: Callable[[Event], bool] | None = None,
        once: bool = False,
        replay: int = 0,
        timeout: float | None = None,
        weak: bool = False,
    ) -> Callable[[F], F]:
        """Run `fn(event)` (sync or async) for each event matching any of `patterns`.

        A decorator factory: ``@bus.subscribe("a.*", "b.>")`` above a ``def``,
        or ``bus.subscribe("a.*")(fn)``; it returns `fn` unchanged, and the
        subscription is active when it returns.  Subscribing a callable again
        adds patterns to it; `filter`, `once` and `replay` apply to the
        patterns of that call (as `ctx.subscribe`'s do).

        Each callable runs in its own supervised actor under
        ``/system/callbacks``, one call at a time.  A call that raises gets its
        event dead-lettered (reason ``crashed``), counted in that actor's stats
        and logged (once per callback); the next event is handled as usual.
        `timeout`: an awaitable call running longer is cancelled and its event
        dead-lettered (reason ``timeout``); a plain function runs to the end.
        `weak`: hold the callable through a weak reference (`weakref.WeakMethod`
        for a bound method): once its object is garbage-collected the
        subscription ends, as with `unsubscribe`.  `timeout` and `weak` belong
        to the callable: subscribing it again with other values is a ValueError.
        """
        for pattern in patterns:
            if callable(pattern):
                raise ValueError(
                    f"subscribe takes the patterns first, then the callable: write "
                    f"@bus.subscribe('a.*') above the def, or bus.subscribe('a.*')(fn); "
                    f"got {pattern!r} as a pattern"
                )
            check_pattern(pattern)
        if not patterns:
            raise ValueError("subscribe needs at least one pattern, e.g. bus.subscribe('a.*')")
        _check_replay(replay)
        _check_filter(filter)
        limit = check_timeout(timeout, "a callback's timeout")

        def register(fn: F) -> F:
            if not callable(fn):
                raise TypeError(f"bus.subscribe(...) decorates a callable, got {fn!r}")
            key = _callable_key(fn)
            entry = self._callbacks.get(key)
            if entry is not None and (entry.callback.get() is None or entry.cell.finalized):
                # its weakly held object is gone (and its id reused), or its actor
                # stopped for good: this is a new callable
                self._release(key)
                entry = None
            if entry is None:
                callback = Callback(fn, timeout=limit, weak=weak, on_gone=self._gone_notice(key))
                cell = self._host.adopt_callback(callback)
                entry = self._callbacks[key] = _Registered(callback, cell)
            elif entry.callback.weak != weak or entry.callback.timeout != limit:
                raise ValueError(
                    f"{fn!r} is already subscribed with timeout={_seconds(entry.callback.timeout)}"
                    f", weak={entry.callback.weak}: subscribe it again with the same values "
                    "(or unsubscribe it first to change them)"
                )
            for pattern in patterns:
                self.subscribe_cell(entry.cell, pattern, once=once, filter=filter, replay=replay)
            return fn

        return register

    def unsubscribe(self, fn: Callable[[Event], Any]) -> None:
        """End every subscription of a callback registered with `subscribe` (and its actor).

        ValueError if `fn` is not subscribed.
        """
        key = _callable_key(fn)
        entry = self._callbacks.get(key)
        if entry is None or entry.callback.get() is None:
            raise ValueError(f"{fn!r} is not a subscribed callback")
        self._release(key)

    def _release(self, key: Hashable) -> None:
        entry = self._callbacks.pop(key)
        self.drop_all(entry.cell)
        if self._host.is_running and not entry.cell.finalized:
            self._host.release_callback(entry.cell)

    def _gone_notice(self, key: Hashable) -> Callable[[Callback], None]:
        """What a weakly held callback calls when its object is collected.

        That happens wherever the garbage collector runs: in any thread, in the
        middle of any code.  So it only asks the loop (`run_sync_soon`, which is
        safe from anywhere) to end the subscription later, on the trio thread.
        """
        token = trio.lowlevel.current_trio_token()

        def notice(callback: Callback) -> None:
            try:
                token.run_sync_soon(self._callback_gone, key, callback)
            except trio.RunFinishedError:
                pass  # the system is gone already, and its subscriptions with it

        return notice

    def _callback_gone(self, key: Hashable, callback: Callback) -> None:
        entry = self._callbacks.get(key)
        if entry is not None and entry.callback is callback:
            try:
                self._release(key)
            except Exception:  # never out of a run_sync_soon callback: trio would crash
                log.exception("ending the subscription of %r failed", callback)

    # -- looking back ----------------------------------------------------
    def history(
        self, pattern: str = ">", limit: int = 100, since: float | None = None
    ) -> list[Event]:
        """The newest `limit` events matching `pattern`, newest first.

        `since`: only events whose `Event.timestamp` is at or after it (a
        `time.time()` value).  Like subscriptions, ``>`` and other patterns that
        begin with a wildcard leave out the runtime's ``system.`` events.
        """
        check_pattern(pattern)  # whatever the limit (`matching` checks it only when walked)
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise ValueError(f"limit must be a whole number >= 0, got {limit!r}")
        check_since(since)
        events = matching(pattern, reversed(self._history))
        out: list[Event] = []
        if limit == 0:
            return out
        for event in events:
            if since is not None and event.timestamp < since:
                continue
            out.append(event)
            if len(out) >= limit:
                break
        return out

    def clear_history(self) -> None:
        self._history.clear()

    def statistics(self) -> BusStatistics:
        """The bus's counters now, as a `BusStatistics`.  Never blocks.  Loop thread
        only (`ThreadedBus.statistics` from other threads); after the system
        stopped, the final counts (as `history`)."""
        return BusStatistics(
            published=self.published,
            system_published=self.system_published,
            delivered=self.delivered,
            dropped=self.dropped,
            duplicates=self.duplicates,
            topics=MappingProxyType(self._topics.copy()),
            subscriptions=self._index.count,
        )

    def stats(self) -> dict[str, Any]:
        """`statistics` as a plain dict (`BusStatistics.to_dict`): ``published``
        counts application events, ``system_published`` the runtime's
        (``system.*``); ``topics`` counts both, per topic; ``duplicates`` counts
        publishes dropped for a `msg_id` seen within the duplicate window."""
        return self.statistics().to_dict()


@attrs.frozen
class _Registered:
    """A callback registered with `Bus.subscribe`, and the slot of the actor that runs it."""

    callback: Callback
    cell: Cell


def _callable_key(fn: Callable[..., Any]) -> Hashable:
    """Who a callable is, without holding on to it (a weakly held one must be let go).

    ``obj.method`` makes a new bound method at every access: it is known by its
    object and its function.  Ids stay unique while the callable is held (a
    weakly held one whose object died is recognised by its dead reference).
    """
    if inspect.ismethod(fn):
        return (id(fn.__self__), id(fn.__func__))
    if bound_builtin(fn):  # e.g. a_list.append
        return (id(getattr(fn, "__self__")), getattr(fn, "__name__"))  # noqa: B009
    return (id(fn),)


def _check_replay(replay: object) -> None:
    if isinstance(replay, bool) or not isinstance(replay, int) or replay < 0:
        raise ValueError(f"replay is how many past events to deliver first (>= 0), got {replay!r}")


def _check_filter(filter: object) -> None:
    """A filter is None or a plain callable: it runs inside the publish, which cannot
    await it (an ``async def`` filter's coroutine would be true, passing every event)."""
    if filter is None:
        return
    if not callable(filter):
        raise TypeError(f"a filter is a function event -> bool, got {filter!r}")
    if inspect.iscoroutinefunction(filter):
        raise TypeError(
            f"a filter is a plain function event -> bool, not an async one: {filter!r} "
            "(it runs inside the publish, which does not await it)"
        )


def _close(awaitable: object) -> None:
    """Close a coroutine nobody will await (no "never awaited" warning)."""
    close = getattr(awaitable, "close", None)
    if callable(close):
        try:
            close()
        except Exception:
            pass


def _merged(metadata: Mapping[str, Any] | None, more: Mapping[str, Any]) -> Mapping[str, Any]:
    """`metadata` and the keywords of a publish as one mapping; ValueError for a key
    given both ways."""
    if not metadata:
        return more
    both = sorted(key for key in more if key in metadata)
    if both:
        keys = ", ".join(repr(key) for key in both)
        raise ValueError(
            f"metadata {'keys' if len(both) > 1 else 'key'} {keys} given both in "
            "metadata= and as a keyword: give each once"
        )
    return {**metadata, **more}


def _seconds(limit: float) -> str:
    return "None" if limit == math.inf else repr(limit)


__all__ = [
    "Bus",
    "BusStatistics",
    "Event",
    "PatternIndex",
    "Subscription",
    "check_pattern",
    "check_topic",
    "matches",
]

"""MailboxQueue against a plain model: whatever order puts, system items and takes come
in, the consumer sees the system lane first, each lane in FIFO order, nothing twice and
nothing lost (guards `take`, which swaps between a fast and a slow path)."""

from __future__ import annotations

from collections import deque
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

import runtime
from runtime import Mailbox
from runtime.mailbox import EMPTY, QUEUED, WITHDRAWN, MailboxQueue

steps = st.lists(
    st.sampled_from(["put", "put_system", "get", "take", "put_many"]), min_size=1, max_size=80
)


@settings(max_examples=300, deadline=None)
@given(steps=steps, capacity=st.integers(1, 8))
def test_lanes_are_fifo_and_system_first(steps: list[str], capacity: int) -> None:
    dropped: list[tuple[Any, str]] = []
    mailbox = MailboxQueue(
        Mailbox(capacity=capacity, overflow="drop_new"), lambda m, r: dropped.append((m, r))
    )
    user: deque[Any] = deque()
    system: deque[Any] = deque()
    n = 0
    for step in steps:
        n += 1
        if step == "put":
            if len(user) < capacity:
                user.append(n)
            assert (mailbox.put(n) is None) == (n in user)
        elif step == "put_many":  # as the thread gate does, with room reserved first
            granted = mailbox.reserve(2)
            items = [(n, i) for i in range(granted)]
            mailbox.put_many_reserved(items)
            user.extend(items)
        elif step == "put_system":
            mailbox.put_system(("sys", n))
            system.append(("sys", n))
        else:
            expected = system.popleft() if system else (user.popleft() if user else EMPTY)
            if step == "get":
                assert mailbox.get() == expected
            else:
                got = mailbox.take() if mailbox.ready else EMPTY
                assert got == expected
        assert len(mailbox) == len(user)
        assert mailbox.depth == len(user) + len(system)
    assert all(reason == "overflow" for _, reason in dropped)


def test_statistics_say_what_is_queued_and_who_waits() -> None:
    from runtime import MailboxStatistics

    mailbox = MailboxQueue(Mailbox(capacity=3, overflow="block"), lambda m, r: None)
    assert mailbox.statistics() == MailboxStatistics(
        depth=0,
        system_depth=0,
        capacity=3,
        overflow="block",
        high_water=0,
        reserved=0,
        senders_waiting=0,
        threads_waiting=False,
        closed=False,
    )
    mailbox.put(1)
    mailbox.put(2)
    mailbox.put_system("stop")
    assert mailbox.reserve(5) == 1  # only one message's room is left
    mailbox.wait_for_threads()
    stats = mailbox.statistics()
    assert (stats.depth, stats.system_depth, stats.high_water, stats.reserved) == (2, 1, 2, 1)
    assert stats.threads_waiting is True
    assert mailbox.close() == (["stop"], [1, 2])
    assert mailbox.statistics().closed is True
    assert mailbox.statistics().depth == 0


class LendingGate:
    """The thread gate as a mailbox sees it: room lent to threads comes back only when
    `reclaimable` says so (as the real gate gives back credits not yet used)."""

    def __init__(self) -> None:
        self.reclaimable = 0

    def reclaim(self, mailbox: MailboxQueue) -> int:
        taken = min(self.reclaimable, mailbox.statistics().reserved)
        self.reclaimable -= taken
        return taken

    def room_freed(self, mailbox: MailboxQueue, force: bool = False) -> bool:
        return True


line_steps = st.lists(
    st.sampled_from(
        ["put", "enter_line", "withdraw", "take", "reserve", "unreserve", "lend_back", "threads"]
    ),
    min_size=1,
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(steps=line_steps, capacity=st.integers(1, 4), seed=st.integers(0, 3))
# A put that takes back room lent to threads lets the line in before its own item.
@example(steps=["reserve", "enter_line", "lend_back", "lend_back", "put"], capacity=2, seed=1)
def test_the_line_is_handed_over_in_order_and_exists_only_while_full(
    steps: list[str], capacity: int, seed: int
) -> None:
    """Whatever tells, places in the line, withdrawals, takes and room lent to threads
    come in: the line is handed over in its order, `put` never jumps it, and a line
    exists only while the mailbox is full (what `must_wait` relies on)."""
    gate = LendingGate()
    mailbox = MailboxQueue(Mailbox(capacity=capacity, overflow="block"), lambda m, r: None, gate)
    queued: list[Any] = []  # what the consumer must see, in order
    line: list[Any] = []  # tickets still waiting, in order
    taken: list[Any] = []
    n = 0
    for step in steps:
        n += 1
        full = loop_full(mailbox)
        if step == "put":
            try:
                assert mailbox.put(n) is None
            except runtime.MailboxFull:
                assert line or full
            else:
                # Room lent to threads and taken back by this put goes to the line
                # first: a tell never jumps it.
                let_in(line, queued)
                assert not line
                queued.append(n)
        elif step == "enter_line" and mailbox.must_wait():
            line.append(mailbox.enter_line(("line", n)))
        elif step == "withdraw" and line:
            ticket = line[(n + seed) % len(line)]
            assert mailbox.withdraw(ticket)
        elif step == "take":
            item = mailbox.get()
            if item is not EMPTY:
                taken.append(item)
        elif step == "reserve":
            mailbox.reserve(1 + seed)
        elif step == "unreserve" and mailbox.statistics().reserved:
            mailbox.unreserve(1)
        elif step == "lend_back":
            gate.reclaimable += 1
        elif step == "threads" and mailbox.room() == 0:  # as the gate: only when full
            mailbox.wait_for_threads()
        let_in(line, queued)
        stats = mailbox.statistics()
        assert stats.senders_waiting == len(line)
        if line:
            assert loop_full(mailbox)  # a line only while full
            assert mailbox.must_wait()
        waits = mailbox.must_wait()  # takes back room lent to threads if it can
        assert waits == (loop_full(mailbox) or bool(line))
    mailbox.unreserve(mailbox.statistics().reserved)  # the threads are done
    let_in(line, queued)
    while (item := mailbox.get()) is not EMPTY:
        taken.append(item)
        let_in(line, queued)
    assert taken == queued
    assert not line


def loop_full(mailbox: MailboxQueue) -> bool:
    """Full for loop senders: room reserved for threads counts as taken."""
    stats = mailbox.statistics()
    return stats.depth + stats.reserved >= stats.capacity


def let_in(line: list[Any], queued: list[Any]) -> None:
    """Tickets let in since the last look were queued in line order, after the puts."""
    for ticket in list(line):
        if ticket.state is QUEUED:
            assert ticket is line[0]  # in order
            queued.append(ticket.item)
            line.remove(ticket)
        elif ticket.state is WITHDRAWN:
            line.remove(ticket)

"""MailboxQueue against a plain model: whatever order puts, system items and takes come
in, the consumer sees the system lane first, each lane in FIFO order, nothing twice and
nothing lost (guards `take`, which swaps between a fast and a slow path)."""

from __future__ import annotations

from collections import deque
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from runtime import Mailbox
from runtime.mailbox import EMPTY, MailboxQueue

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
                got = mailbox.take() if mailbox.ready() else EMPTY
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
    assert mailbox.close() == ["stop", 1, 2]
    assert mailbox.statistics().closed is True
    assert mailbox.statistics().depth == 0

"""`ThreadedBus` (``start_in_thread(...).bus``) checks `subscribe`'s arguments at the
call, as `system.bus.subscribe` does (issue 12's "subscribe takes the patterns
first" ValueError).
"""

from __future__ import annotations

from typing import Any

import pytest

import runtime
from runtime import Event, Supervisor


def test_the_thread_bus_refuses_a_decorator_without_patterns_at_once() -> None:
    """``@handle.bus.subscribe`` without parentheses, or no pattern at all, raises
    `ValueError` at once and subscribes nothing (the decorator form once silently
    subscribed nothing)."""
    with runtime.start_in_thread(Supervisor("app", children=[])) as handle:
        with pytest.raises(ValueError, match="patterns first"):

            @handle.bus.subscribe  # type: ignore[arg-type]
            def on_event(event: Event) -> None: ...

        with pytest.raises(ValueError, match="at least one pattern"):
            handle.bus.subscribe()
        assert handle.bus.stats()["subscriptions"] == 0


def test_the_thread_bus_refuses_a_bad_pattern_when_subscribe_is_called() -> None:
    """A bad pattern raises `ValueError` when `subscribe` is called, before any function
    is applied, as `system.bus.subscribe` does; a valid one subscribes."""
    with runtime.start_in_thread(Supervisor("app", children=[])) as handle:
        with pytest.raises(ValueError):
            handle.bus.subscribe("a..b")
        got: list[Any] = []
        handle.bus.subscribe("a")(got.append)  # the handle itself works
        assert handle.bus.stats()["subscriptions"] == 1

"""Edge cases: odd values through the bus's public entry points."""

from __future__ import annotations

import math
from typing import Any

import pytest
import trio

import runtime
from runtime import Supervisor


def empty() -> Supervisor:
    return Supervisor("app", children=[])


@pytest.mark.parametrize("timeout", [-1, math.nan, -math.inf])
async def test_system_publish_on_the_loop_thread_refuses_an_invalid_timeout(
    timeout: float,
) -> None:
    """`System.publish`'s docstring: "Raises ... `ValueError` for an invalid topic or
    timeout"; on the loop thread too, an invalid timeout raises and nothing is
    published (the timeout was once ignored there)."""
    async with runtime.open_system(empty()) as system:
        before = system.bus.stats()["published"]
        with pytest.raises(ValueError, match="timeout"):
            system.publish("t", 1, timeout=timeout)
        assert system.bus.stats()["published"] == before  # nothing recorded


@pytest.mark.parametrize("msg_id", [1, b"x", ("a",), True, 1.5])
async def test_a_msg_id_that_is_not_a_string_is_refused_on_every_path_and_recorded_nowhere(
    msg_id: Any,
) -> None:
    """A `msg_id` that is not a string raises `TypeError` on every publish path and
    changes no stat."""
    async with runtime.open_system(empty()) as system:
        before = system.bus.stats()
        with pytest.raises(TypeError):
            await system.bus.publish("t", 1, msg_id=msg_id)
        with pytest.raises(TypeError):
            system.bus.publish_nowait("t", 1, msg_id=msg_id)
        with pytest.raises(TypeError):
            system.publish("t", 1, msg_id=msg_id)
        with pytest.raises(TypeError):
            await trio.to_thread.run_sync(lambda: system.publish("t", 1, msg_id=msg_id))
        assert system.bus.stats() == before


@pytest.mark.parametrize("correlation_id", [17, b"x", ("a",), True, 1.5])
async def test_a_correlation_id_that_is_not_a_string_is_refused_on_every_path(
    correlation_id: Any,
) -> None:
    """`Event.correlation_id` is a string or None: any other value raises `TypeError`
    on every publish path, naming the keyword, and changes no stat (an int was
    accepted, and crossed a cluster's wire as it was)."""
    async with runtime.open_system(empty()) as system:
        before = system.bus.stats()
        with pytest.raises(TypeError, match="correlation_id"):
            await system.bus.publish("t", 1, correlation_id=correlation_id)
        with pytest.raises(TypeError, match="correlation_id"):
            system.bus.publish_nowait("t", 1, correlation_id=correlation_id)
        with pytest.raises(TypeError, match="correlation_id"):
            system.publish("t", 1, correlation_id=correlation_id)
        with pytest.raises(TypeError, match="correlation_id"):
            await trio.to_thread.run_sync(
                lambda: system.publish("t", 1, correlation_id=correlation_id)
            )
        assert system.bus.stats() == before


@pytest.mark.parametrize("topic", ["system", "system.x", "system.actor.started"])
async def test_runtime_topics_are_refused_on_every_path(topic: str) -> None:
    """Publishing on a ``system.`` topic raises `ValueError` on every path and
    publishes nothing."""
    async with runtime.open_system(empty()) as system:
        before = system.bus.stats()["system_published"]
        with pytest.raises(ValueError):
            await system.bus.publish(topic, 1)
        with pytest.raises(ValueError):
            system.bus.publish_nowait(topic, 1)
        with pytest.raises(ValueError):
            system.publish(topic, 1)
        with pytest.raises(ValueError):
            await trio.to_thread.run_sync(lambda: system.publish(topic, 1))
        assert system.bus.stats()["system_published"] == before

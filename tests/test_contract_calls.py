"""Calls the contract names exactly: `ref(path_or_url)` by keyword, and a bus stream
when the system stops (it ends) or has stopped (`RuntimeClosed`)."""

from __future__ import annotations

import pytest
import trio

import runtime
from runtime import Actor, RuntimeClosed, Supervisor, child


class Idle(Actor):
    async def receive(self, msg: object) -> object:
        return msg


def tree() -> Supervisor:
    return Supervisor("app", children=[child(Idle, name="idle")])


async def test_ref_takes_path_or_url_by_keyword() -> None:
    async with runtime.open_system(tree()) as system:
        assert system.ref(path_or_url="/app/idle").path == "/app/idle"


def test_threaded_ref_takes_path_or_url_by_keyword() -> None:
    with runtime.start_in_thread(tree()) as system:
        ref = system.ref(path_or_url="/app/idle")
        assert ref.ask_blocking("hi") == "hi"


async def test_a_stream_opened_after_the_system_stopped_raises_runtime_closed() -> None:
    async with runtime.open_system(tree()) as system:
        pass
    with trio.fail_after(5):
        with pytest.raises(RuntimeClosed, match="not running"):
            async with system.bus.stream("news.>"):
                pass  # pragma: no cover - never opened


@pytest.mark.parametrize("reads", ["while it stops", "after it stopped"])
async def test_a_stream_ends_when_the_system_stops_after_what_was_queued(reads: str) -> None:
    """A reader in a task outside the system's block, waiting on the stream as the
    system stops or reading only after, gets the events queued before the stop,
    then the end of its iteration (`EndOfChannel`), instead of waiting for ever."""
    got: list[object] = []
    with trio.fail_after(5):
        async with trio.open_nursery() as outer:
            async with runtime.open_system(tree()) as system:

                async def reader(task_status: trio.TaskStatus[None]) -> None:
                    async with system.bus.stream("news.>") as events:
                        task_status.started()
                        if reads == "after it stopped":
                            await stopped.wait()
                        async for event in events:
                            got.append(event.payload)
                        with pytest.raises(trio.EndOfChannel):
                            await events.receive()
                    ended.set()

                stopped, ended = trio.Event(), trio.Event()
                await outer.start(reader)
                await system.bus.publish("news.a", 1)
                await system.bus.publish("news.b", 2)
            stopped.set()
    assert ended.is_set()
    assert got == [1, 2]

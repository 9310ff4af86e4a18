"""Third attack pass on the bridge: what pickling runs is user code, and may raise anything.

A process bridge pickles the call in the bridge, unpickles it in the worker,
pickles the result there and unpickles it in the bridge again.  Each of these
runs the values' own ``__reduce__`` or what it returns; one that raises
`SystemExit` or `GeneratorExit` (a `BaseException`, not an `Exception`) must
reach the caller as its `NotSerializable`, never stop the bridge, let alone
the system (the bridge's handler raising it would stop everything).
"""

from __future__ import annotations

from typing import Any

import pytest
import trio

import runtime
from runtime import Supervisor, child

WAIT = 30.0  # generous bound for anything a real process must do

PROCESS_TREE = Supervisor(
    "app",
    children=[child(runtime.Bridge, name="cpu", kwargs={"max_workers": 1, "mode": "process"})],
)


def leave(kind: str) -> None:
    raise SystemExit("from reduce") if kind == "exit" else GeneratorExit("from reduce")


class RaisesWhenPickled:
    """Pickling it raises `kind` (where it is pickled)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __reduce__(self) -> Any:
        leave(self.kind)


class RaisesWhenUnpickled:
    """Pickles fine; unpickling it calls `leave`, which raises `kind`."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __reduce__(self) -> Any:
        return (leave, (self.kind,))


def identity(value: Any) -> Any:
    return value


def make(cls_name: str, kind: str) -> Any:
    return globals()[cls_name](kind)


def add(a: int, b: int) -> int:
    return a + b


@pytest.mark.parametrize("kind", ["exit", "generator"])
async def test_a_base_exception_while_pickling_is_the_callers_not_serializable(kind: str) -> None:
    with trio.fail_after(WAIT):
        async with runtime.open_system(PROCESS_TREE) as system:
            cases = [
                (identity, (RaisesWhenPickled(kind),), "args[0]"),  # pickled in the bridge
                (identity, (RaisesWhenUnpickled(kind),), "unpickled in the worker"),
                (make, ("RaisesWhenPickled", kind), "result of"),  # pickled in the worker
                (make, ("RaisesWhenUnpickled", kind), "result of"),  # unpickled in the bridge
            ]
            for fn, args, says in cases:
                with pytest.raises(runtime.NotSerializable) as info:
                    await system.run_blocking(fn, *args, bridge="/app/cpu")
                assert says in str(info.value), str(info.value)
                assert "from reduce" in str(info.value), str(info.value)
            assert system.is_running
            assert await system.run_blocking(add, 2, 3, bridge="/app/cpu") == 5
            found = system.snapshot().find("/app/cpu")
            assert found.restarts == 0
            assert (found.stats["failed"], found.stats["completed"]) == (4, 1)

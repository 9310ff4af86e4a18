"""A small supervised system: run it with `troupe run examples/supervisor_script.py`.

- `clock` ticks every second and tells `counter` about it;
- `counter` counts ticks, and crashes on every 7th one on purpose: its
  supervisor restarts it, and the messages queued behind the crash are
  handled by the next incarnation (the count restarts from zero);
- `reporter` asks `counter` for its count every 3 seconds and prints it.

Ctrl-C stops the tree gracefully (in reverse start order); a second Ctrl-C
stops it at once.
"""

from __future__ import annotations

from typing import Any

import attrs

import runtime
from runtime import Actor, Supervisor, child


@attrs.frozen
class Tick:
    n: int


@attrs.frozen
class Report:
    pass


class Counter(Actor):
    def __init__(self) -> None:
        self.ticks = 0

    async def receive(self, msg: Any) -> Any:
        match msg:
            case Tick(n=n):
                self.ticks += 1
                if n % 7 == 0:
                    raise RuntimeError(f"tick {n} is unlucky (a crash on purpose)")
            case Report():
                return self.ticks
            case _:
                return runtime.UNHANDLED


class Clock(Actor):
    def __init__(self, target: str, interval: float = 1.0) -> None:
        self.target = target
        self.interval = interval
        self.n = 0

    async def on_start(self) -> None:
        self.ctx.every(self.interval, "tick")

    async def receive(self, msg: Any) -> Any:
        self.n += 1
        self.ctx.system.ref(self.target).tell(Tick(self.n))


class Reporter(Actor):
    async def on_start(self) -> None:
        self.ctx.every(3.0, "report")

    async def receive(self, msg: Any) -> Any:
        counter = self.ctx.system.ref("/demo/counter")
        count = await counter.ask(Report(), timeout=2.0)
        info = self.ctx.system.snapshot().find("/demo/counter")
        print(f"counter has seen {count} ticks since its last start (restarts: {info.restarts})")

    async def on_stop(self, reason: runtime.ExitReason) -> None:
        print(f"reporter stopping ({reason})")


tree = Supervisor(
    "demo",
    strategy="one_for_one",
    max_restarts=5,
    within=10.0,
    children=[
        child(Counter, name="counter"),
        child(Clock, name="clock", kwargs={"target": "/demo/counter"}),
        child(Reporter, name="reporter"),
    ],
)

if __name__ == "__main__":
    runtime.run(tree)

"""Talking to actors from plain threads: `python examples/threads.py`.

A synchronous program (think: a legacy library with its own worker threads)
runs a Troupe system in the background with `start_in_thread`, then:
- four threads `tell` readings to an aggregator concurrently;
- the main thread `ask_blocking`s the aggregator for a summary.
The aggregator's mailbox is small on purpose: when it is full, the producer
threads block (backpressure) instead of growing memory, and the event loop
never stalls.
"""

from __future__ import annotations

import threading
from typing import Any

import attrs

import runtime
from runtime import Actor, Mailbox, Supervisor, child


@attrs.frozen
class Reading:
    sensor: int
    value: float


@attrs.frozen
class Summary:
    pass


class Aggregator(Actor):
    mailbox = Mailbox(capacity=64)  # small: producers feel backpressure

    def __init__(self) -> None:
        self.count = 0
        self.total = 0.0

    async def receive(self, msg: Any) -> Any:
        match msg:
            case Reading(value=value):
                self.count += 1
                self.total += value
            case Summary():
                return {"count": self.count, "mean": self.total / max(1, self.count)}
            case _:
                return runtime.UNHANDLED


tree = Supervisor("sensors", children=[child(Aggregator, name="aggregator")])


def main() -> None:
    with runtime.start_in_thread(tree) as system:
        aggregator = system.ref("/sensors/aggregator")

        def sensor(n: int) -> None:
            for i in range(10_000):
                aggregator.tell(Reading(sensor=n, value=float(i % 100)))

        threads = [threading.Thread(target=sensor, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        summary = aggregator.ask_blocking(Summary(), timeout=5.0)
        print(f"aggregated {summary['count']} readings, mean {summary['mean']:.1f}")
        info = system.snapshot().find("/sensors/aggregator")
        print(f"mailbox high-water mark: {info.mailbox_high_water} of {info.mailbox_capacity}")


if __name__ == "__main__":
    main()

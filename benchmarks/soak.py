"""Soak: minutes of mixed load; memory must stay flat.

Not part of ``python -m benchmarks`` (it is not in ``GROUPS``) and not run by
the tests.  Run it by hand::

    python -m benchmarks.soak --minutes 10     # the real soak
    python -m benchmarks.soak --minutes 0.2    # a quick check

Load, all at once for the whole run: foreign threads telling, asking
(``ask_blocking``) and publishing into a tree of workers; handlers that
publish from the loop and hand blocking work to the bridge; a chaos thread
that crashes workers (restarts), makes restarts fail in ``on_start``, and
starts and terminates dynamic children.  Reports RSS after a warm-up and at
the end, messages handled, restarts, dead letters by reason, and whether RSS
stayed within 10 % of the warm-up figure (exit status 1 if not).
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import random
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

import runtime
from runtime import Actor, Backoff, Event, Mailbox, Supervisor, TroupeError, child

FLAT = 0.10  # allowed RSS growth from the warm-up figure to the end


def rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc; else peak RSS)."""
    try:
        with open(f"/proc/{os.getpid()}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # pragma: no cover - not Linux
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Boom(Exception):
    pass


FAIL_STARTS: dict[str, int] = {}  # path -> starts still to fail (loop thread only)


class Worker(Actor):
    """Counts, answers, publishes, bridges, crashes on demand."""

    subscriptions = ("soak.*",)

    async def on_start(self) -> None:
        left = FAIL_STARTS.get(self.ctx.path, 0)
        if left:
            FAIL_STARTS[self.ctx.path] = left - 1
            raise Boom("refusing to start")
        self.count = 0

    async def receive(self, msg: Any) -> Any:
        self.count += 1
        match msg:
            case ("work", n):
                return n + 1
            case ("publish", n):
                self.ctx.publish_nowait("soak.echo", n)
                return None
            case ("bridge", n):
                return await self.ctx.run_blocking(sum, range(n))
            case ("crash",):
                raise Boom("crash")
            case ("fail-restart", path):
                FAIL_STARTS[path] = 1
                raise Boom("crash, then fail the restart once")
            case Event():
                return None
            case _:
                return runtime.UNHANDLED


def make_tree(groups: int, per_group: int) -> Supervisor:
    strategies = ["one_for_one", "one_for_all", "rest_for_one"]
    return Supervisor(
        "soak",
        max_restarts=1_000_000,
        within=1.0,
        children=[
            Supervisor(
                f"g{g}",
                strategy=strategies[g % 3],
                max_restarts=1_000_000,
                within=1.0,
                backoff=Backoff(min=0.001, max=0.01, jitter=0.5) if g % 2 else None,
                children=[
                    child(
                        Worker,
                        name=f"w{i}",
                        restart=["permanent", "transient"][i % 2],
                        mailbox=Mailbox(capacity=256) if i % 3 else None,
                    )
                    for i in range(per_group)
                ],
            )
            for g in range(groups)
        ],
    )


class Load:
    def __init__(self, system: runtime.ThreadedSystem, paths: list[str], seed: int) -> None:
        self.system = system
        self.paths = paths
        self.seed = seed
        self.stop = threading.Event()
        self.sent = 0
        self.refused = 0
        self.chaos_ops = 0
        self.lock = threading.Lock()

    def producer(self, k: int) -> None:
        rng = random.Random(self.seed * 100 + k)
        refs = [self.system.ref(p) for p in self.paths]
        sent = refused = 0
        while not self.stop.is_set():
            ref = rng.choice(refs)
            roll = rng.random()
            try:
                if roll < 0.70:
                    ref.tell(("work", sent), timeout=5.0)
                elif roll < 0.80:
                    ref.ask_blocking(("work", sent), timeout=5.0)
                elif roll < 0.88:
                    ref.tell(("publish", sent), timeout=5.0)
                elif roll < 0.93:
                    ref.ask_blocking(("bridge", 100), timeout=5.0)
                elif roll < 0.97:
                    ref.tell(("unknown", sent), timeout=5.0)
                else:
                    ref.tell(("work", sent), timeout=5.0)
                sent += 1
            except TroupeError:
                refused += 1
        with self.lock:
            self.sent += sent
            self.refused += refused

    def publisher(self) -> None:
        rng = random.Random(self.seed)
        n = 0
        while not self.stop.is_set():
            try:
                self.system_publish(f"soak.t{rng.randrange(4)}", n)
                n += 1
            except TroupeError:
                pass
            time.sleep(0.001)
        with self.lock:
            self.sent += n

    def system_publish(self, topic: str, payload: Any) -> None:
        self.system.publish(topic, payload)

    def chaos(self) -> None:
        rng = random.Random(self.seed + 1)
        dynamic = 0
        live: list[str] = []
        while not self.stop.is_set():
            time.sleep(0.02)
            roll = rng.random()
            try:
                if roll < 0.6:
                    self.system.ref(rng.choice(self.paths)).tell(("crash",), timeout=5.0)
                elif roll < 0.7:
                    path = rng.choice(self.paths)
                    self.system.ref(path).tell(("fail-restart", path), timeout=5.0)
                elif roll < 0.85 or not live:
                    group = f"/soak/g{rng.randrange(len(self.paths) // 4 or 1)}"
                    name = f"d{dynamic}"
                    dynamic += 1
                    self.system.start_child(group, child(Worker, name=name, restart="temporary"))
                    live.append(f"{group}/{name}")
                else:
                    self.system.terminate_child(live.pop(rng.randrange(len(live))))
                self.chaos_ops += 1
            except (TroupeError, ValueError, Boom):
                pass


def totals(snapshot: runtime.TreeSnapshot) -> dict[str, int]:
    out = {"processed": 0, "restarts": 0, "actors": 0}

    def walk(info: Any) -> None:
        out["processed"] += info.processed
        out["restarts"] += info.restarts
        out["actors"] += 1
        for sub in info.children:
            walk(sub)

    walk(snapshot.root)
    return out


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.soak", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--minutes", type=float, default=10.0, help="how long to run (default 10)")
    parser.add_argument("--threads", type=int, default=3, help="producer threads (default 3)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--log", action="store_true", help="show the runtime's crash logs")
    args = parser.parse_args(argv)
    if not args.log:  # thousands of injected crashes would flood the terminal
        logging.getLogger("troupe").setLevel(logging.CRITICAL)
    if args.minutes <= 0:
        parser.error("--minutes must be positive")
    duration = args.minutes * 60.0
    warmup = max(2.0, duration * 0.1)
    groups, per_group = 6, 8
    paths = [f"/soak/g{g}/w{i}" for g in range(groups) for i in range(per_group)]

    print(
        f"soak: {args.minutes:g} min, {args.threads} producer threads, {groups * per_group} workers"
    )
    rss_before = rss_bytes()
    started = time.monotonic()
    samples: list[tuple[float, int]] = []
    with runtime.start_in_thread(make_tree(groups, per_group), name="soak") as system:
        load = Load(system, paths, args.seed)
        threads = [
            threading.Thread(target=load.producer, args=(k,), name=f"soak-producer-{k}")
            for k in range(args.threads)
        ]
        threads.append(threading.Thread(target=load.publisher, name="soak-publisher"))
        threads.append(threading.Thread(target=load.chaos, name="soak-chaos"))
        for t in threads:
            t.start()
        time.sleep(warmup)
        gc.collect()
        rss_start = rss_bytes()
        samples.append((time.monotonic() - started, rss_start))
        print(f"  warm-up done after {warmup:.1f}s: RSS {mib(rss_start)}")
        next_report = time.monotonic() + 60.0
        while time.monotonic() - started < duration:
            time.sleep(min(1.0, max(0.0, duration - (time.monotonic() - started))))
            if time.monotonic() >= next_report:
                next_report += 60.0
                now = rss_bytes()
                samples.append((time.monotonic() - started, now))
                print(f"  {time.monotonic() - started:6.0f}s  RSS {mib(now)}", flush=True)
        load.stop.set()
        for t in threads:
            t.join(30.0)
        snap = system.snapshot()
        gc.collect()
        rss_end = rss_bytes()
        stats = totals(snap)
        dead = dict(snap.dead_letters)
    elapsed = time.monotonic() - started
    growth = (rss_end - rss_start) / rss_start
    flat = growth <= FLAT
    print(f"  ran {elapsed:.1f}s; RSS before the system started {mib(rss_before)}")
    print(f"  RSS at start (after warm-up): {mib(rss_start)}")
    print(f"  RSS at end:                   {mib(rss_end)}  ({growth:+.1%})")
    print(
        f"  messages sent by threads:     {load.sent}  (refused with a typed error: {load.refused})"
    )
    print(f"  messages handled:             {stats['processed']}")
    print(f"  restarts:                     {stats['restarts']}")
    print(f"  chaos operations:             {load.chaos_ops}")
    print(f"  dead letters:                 {sum(dead.values())}  {dead}")
    print(f"  memory flat (within {FLAT:.0%}):   {'yes' if flat else 'NO'}")
    return 0 if flat else 1


if __name__ == "__main__":
    sys.exit(main())

"""Idle actors (issue 17): memory per idle actor, a million of them, and waking one.

An actor with ``hibernate_after`` holds no trio task while idle; these
scenarios measure what one costs against a bare sleeping trio task, how fast
a million start and how much memory they take, and the price of the first
message after idleness (a task started to handle it).

The million run happens in a fresh process per side (``python -m
benchmarks.idle --child N troupe|bare``), so that its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import subprocess
import sys
from pathlib import Path
from time import perf_counter

import trio
import trio.testing

import runtime
from runtime import Supervisor, child

from .harness import Bench, Figures, Row, Size, Target
from .kernel import ROOT, Idle, quiet_troupe_log, run_trio, traced


# -- memory per idle actor, specs included ------------------------------------
async def troupe_idle_memory(n: int, hibernate_after: float | None) -> float:
    """Bytes per idle actor: specs built, started under one supervisor, all idle."""
    net: list[int] = []
    async with runtime.open_system(Supervisor(ROOT)) as system:
        await trio.testing.wait_all_tasks_blocked()
        with traced(True, net):
            specs = [child(Idle, name=f"a{i}", hibernate_after=hibernate_after) for i in range(n)]
            await system.start_child(f"/{ROOT}", Supervisor("pool", children=specs))
            del specs
            await trio.testing.wait_all_tasks_blocked()
    return net[0] / n


async def bare_idle_memory(n: int) -> float:
    """Bytes per bare trio task sleeping forever, started with start_soon."""
    net: list[int] = []
    async with trio.open_nursery() as nursery:
        await trio.testing.wait_all_tasks_blocked()
        with traced(True, net):
            for _ in range(n):
                nursery.start_soon(trio.sleep_forever)
            await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    return net[0] / n


def memory_once(size: Size) -> Figures:
    n = size.pick(100_000, 500)
    with quiet_troupe_log():
        hibernating = run_trio(troupe_idle_memory, n, 0.0)
        awake = run_trio(troupe_idle_memory, n, None)
    bare = run_trio(bare_idle_memory, n)
    return {"hibernating": hibernating, "awake": awake, "bare": bare}


MEMORY = Bench(
    name="idle-memory",
    run_once=memory_once,
    rows=[
        Row(
            "memory per idle actor, hibernating (hibernate_after=0), child spec included "
            "(bytes, tracemalloc)",
            "hibernating",
            "bare",
            "one bare trio task sleeping forever (trio.sleep_forever started with start_soon)",
            Target("<=", 1.0),
        ),
        Row(
            "memory per idle actor keeping its task (hibernate_after=None), child spec "
            "included (bytes, tracemalloc)",
            "awake",
            "bare",
            "the same bare sleeping task",
        ),
    ],
    notes=[
        "idle-memory: net tracemalloc growth of building 100,000 child specs and starting "
        "them under one supervisor, once all are idle, divided by 100,000 (full run).",
    ],
)


# -- a million idle actors -------------------------------------------------------
def _rss_mib() -> float:
    """This process's peak resident set size, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def _troupe_million(n: int) -> dict[str, float]:
    async with runtime.open_system(Supervisor(ROOT)) as system:
        specs = [child(Idle, name=f"a{i}", hibernate_after=0.0) for i in range(n)]
        start = perf_counter()
        await system.start_child(f"/{ROOT}", Supervisor("pool", children=specs))
        took = perf_counter() - start
        del specs
        await trio.testing.wait_all_tasks_blocked()
        # They are real actors: a sample answers.
        for i in range(0, n, max(1, n // 100)):
            assert await system.ref(f"/{ROOT}/pool/a{i}").ask(i) == i
        rss = _rss_mib()
        system.stop()
    return {"rate": n / took, "rss": rss}


async def _bare_million(n: int) -> dict[str, float]:
    async with trio.open_nursery() as nursery:
        start = perf_counter()
        for _ in range(n):
            nursery.start_soon(trio.sleep_forever)
        await trio.testing.wait_all_tasks_blocked()  # every task has run to its sleep
        took = perf_counter() - start
        rss = _rss_mib()
        nursery.cancel_scope.cancel()
    return {"rate": n / took, "rss": rss}


def _child_main(n: int, side: str) -> None:
    gc.freeze()  # what is here already is not the subject; keeps gc passes short
    if side == "troupe":
        with quiet_troupe_log():
            figures = trio.run(_troupe_million, n)
    else:
        figures = trio.run(_bare_million, n)
    print(json.dumps(figures))


def _run_child(n: int, side: str) -> dict[str, float]:
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.idle", "--child", str(n), side],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the {side} million run failed:\n{done.stderr[-2000:]}")
    figures: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return figures


def million_once(size: Size) -> Figures:
    n = size.pick(1_000_000, 2_000)
    troupe = _run_child(n, "troupe")
    bare = _run_child(n, "bare")
    return {
        "troupe_rate": troupe["rate"],
        "bare_rate": bare["rate"],
        "troupe_rss": troupe["rss"],
        "bare_rss": bare["rss"],
    }


MILLION = Bench(
    name="million",
    run_once=million_once,
    rows=[
        Row(
            "spawn 1,000,000 hibernating idle actors under one supervisor (actors/s)",
            "troupe_rate",
            "bare_rate",
            "1,000,000 bare trio tasks started with start_soon, until all sleep",
            Target(">=", 0.5),
        ),
        Row(
            "peak RSS of a process with 1,000,000 hibernating idle actors (MiB)",
            "troupe_rss",
            "bare_rss",
            "peak RSS of a process with 1,000,000 bare sleeping trio tasks",
            Target("<", 2048, absolute=True),
        ),
    ],
    notes=[
        "million: each side in a fresh process (python -m benchmarks.idle --child N side); "
        "the actors' specs are built before the timed start_child and count in the RSS; "
        "100 of the actors are asked once before the RSS is read; the median of at most 3 "
        "runs (each takes about a minute).",
    ],
    max_runs=3,
)


# -- the first message after idleness -------------------------------------------
async def first_asks(k: int, hibernate_after: float | None) -> float:
    """Mean round trip (s) of the first ask to each of `k` idle actors."""
    specs = [child(Idle, name=f"a{i}", hibernate_after=hibernate_after) for i in range(k)]
    async with runtime.open_system(Supervisor(ROOT, children=specs)) as system:
        refs = [system.ref(f"/{ROOT}/a{i}") for i in range(k)]
        await trio.testing.wait_all_tasks_blocked()
        start = perf_counter()
        for i, ref in enumerate(refs):
            await ref.ask(i)
        took = perf_counter() - start
    return took / k


def wake_once(size: Size) -> Figures:
    k = size.pick(5_000, 50)
    with quiet_troupe_log():
        woken = run_trio(first_asks, k, 0.0)
        awake = run_trio(first_asks, k, None)
    return {"woken_us": woken * 1e6, "awake_us": awake * 1e6}


WAKE = Bench(
    name="wake",
    run_once=wake_once,
    rows=[
        Row(
            "first ask to an idle hibernating actor: a task started to handle it (µs)",
            "woken_us",
            "awake_us",
            "first ask to an idle actor keeping its task (hibernate_after=None)",
            digits=1,
        )
    ],
    notes=[
        "wake: 5,000 idle actors under one supervisor, each asked once in turn; with "
        "hibernate_after=0 none has a task when its ask arrives.",
    ],
)


BENCHES = [MEMORY, MILLION, WAKE]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m benchmarks.idle")
    parser.add_argument("--child", nargs=2, metavar=("N", "SIDE"), required=True)
    args = parser.parse_args()
    _child_main(int(args.child[0]), args.child[1])

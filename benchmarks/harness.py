"""The benchmark harness: benches, rows, medians, the machine line and the table.

A `Bench` measures once per call of `run_once` and returns named figures
(Troupe's and its baseline's, measured in the same process, one after the
other).  The harness calls it ``runs`` times, takes the median of every figure
and renders one markdown `Row` per line the bench declares.

Scenario groups live in their own modules (`benchmarks.kernel` now, a
foreign-thread group later) and expose ``BENCHES: list[Bench]``; `GROUPS` in
`benchmarks.__main__` lists the modules.
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

Figures = dict[str, float]


@dataclass(frozen=True)
class Size:
    """How big one measurement is; `quick` is a smoke run, not a measurement."""

    quick: bool

    def pick(self, full: int, quick: int) -> int:
        return quick if self.quick else full


@dataclass(frozen=True)
class Target:
    """The goal for a row's ratio (Troupe / baseline): ``>= 0.4`` or ``<= 1.5``.

    With ``absolute=True`` the goal is on Troupe's own figure instead (e.g. a
    loop stall ``< 10`` ms), and the ratio is shown for reference only.
    """

    op: Literal[">=", "<=", "<", ">"]
    value: float
    absolute: bool = False

    def met(self, value: float) -> bool:
        if self.op == ">=":
            return value >= self.value
        if self.op == "<=":
            return value <= self.value
        if self.op == "<":
            return value < self.value
        return value > self.value

    def __str__(self) -> str:
        return f"{self.op} {self.value:g}" + (" (absolute)" if self.absolute else "x")


@dataclass(frozen=True)
class Row:
    """One line of the table: which figures it shows and what it aims for."""

    label: str  # includes the unit, e.g. "tell throughput (msg/s)"
    troupe: str  # key into the bench's figures
    baseline: str | None  # key, or None when there is nothing to compare with
    baseline_label: str  # what the baseline is, shown under the table
    target: Target | None = None  # None: report only
    digits: int = 0  # decimals shown


@dataclass(frozen=True)
class Bench:
    name: str  # what --only matches
    run_once: Callable[[Size], Figures]
    rows: Sequence[Row]
    notes: Sequence[str] = field(default=())
    max_runs: int | None = None  # a long scenario runs at most this often (its notes say so)


@dataclass
class Result:
    bench: Bench
    medians: Figures
    runs: int


def measure(bench: Bench, size: Size, runs: int, log: Callable[[str], None]) -> Result:
    samples: dict[str, list[float]] = {}
    if bench.max_runs is not None:
        runs = min(runs, bench.max_runs)
    for i in range(runs):
        gc.collect()
        started = time.perf_counter()
        figures = bench.run_once(size)
        log(
            f"  {bench.name} run {i + 1}/{runs} ({time.perf_counter() - started:.1f}s): "
            + ", ".join(f"{k}={v:.4g}" for k, v in figures.items())
        )
        for key, value in figures.items():
            samples.setdefault(key, []).append(value)
    medians = {key: statistics.median(values) for key, values in samples.items()}
    return Result(bench, medians, runs)


# -- the machine -------------------------------------------------------------
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def machine_line() -> str:
    import trio

    cores = os.cpu_count() or 0
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = cores
    core_text = f"{cores} cores" if usable == cores else f"{cores} cores ({usable} usable)"
    return (
        f"Machine: {cpu_model()}, {core_text}, {platform.system()} {platform.release()}; "
        f"Python {platform.python_version()} ({platform.python_implementation()}), "
        f"trio {trio.__version__}"
    )


# -- the table ---------------------------------------------------------------
def _fmt(value: float | None, digits: int) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}"


def render(
    results: Iterable[Result],
    *,
    runs: int,
    quick: bool,
    context: Sequence[str] = (),
    reproduce: Sequence[str] = (),
) -> str:
    """The report: machine line, table, baselines and notes.

    `context` lines go under the machine line (e.g. the load average), and
    `reproduce` (shell commands) into a final "To reproduce" code block; both
    are for the ``--markdown`` file.
    """
    lines = [
        "| scenario | Troupe | baseline | ratio (Troupe/baseline) | target | met |",
        "|---|---:|---:|---:|---|---|",
    ]
    baselines: list[str] = []
    notes: list[str] = []
    for result in results:
        figures: Mapping[str, float] = result.medians
        for row in result.bench.rows:
            mine = figures[row.troupe]
            base = figures.get(row.baseline) if row.baseline is not None else None
            ratio = mine / base if base else None
            if row.target is None:
                target, met = "report only", "-"
            else:
                target = str(row.target)
                judged = mine if row.target.absolute else ratio
                met = "n/a" if judged is None else ("yes" if row.target.met(judged) else "**NO**")
            ratio_text = "n/a" if ratio is None else f"{ratio:.2f}x"
            lines.append(
                f"| {row.label} | {_fmt(mine, row.digits)} | {_fmt(base, row.digits)} "
                f"| {ratio_text} | {target} | {met} |"
            )
            baselines.append(f"- {row.label}: baseline = {row.baseline_label}")
        notes.extend(f"- {note}" for note in result.bench.notes)
    mode = "QUICK SMOKE RUN (sizes too small to mean anything)" if quick else "full run"
    head = [
        "# Troupe benchmarks",
        "",
        machine_line(),
        f"Every figure is the median of {runs} run(s); {mode}.",
        *context,
        "",
    ]
    tail = ["", "Baselines:", *baselines]
    if notes:
        tail += ["", "Notes:", *notes]
    if reproduce:
        tail += ["", "To reproduce (from the repository root):", "", "```sh", *reproduce, "```"]
    return "\n".join(head + lines + tail)


def load_text() -> str:
    """The 1, 5 and 15 minute load averages, or "unknown"."""
    try:
        return ", ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover - not available
        return "unknown"


def peer_versions(names: Sequence[str]) -> str:
    """``name version`` for each installed distribution, "name not installed" otherwise."""
    from importlib import metadata

    found = []
    for name in names:
        try:
            found.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            found.append(f"{name} not installed")
    return ", ".join(found)


def eprint(text: str) -> None:
    print(text, file=sys.stderr, flush=True)

"""The benchmark harness runs end to end in quick mode and prints a complete table.

Speed is never asserted here: only that every scenario has a row with figures.
"""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SCENARIOS = (
    "tell throughput, M told at once",
    "tell throughput, bursts of 100",
    "bound: the floor plus Troupe's per-message duties, no Troupe code, M told at once",
    "bound: the same, bursts of 100",
    "ask round trip",
    "spawn 10,000 actors",
    "restart latency",
    # idle actors and hibernation (benchmarks/idle.py)
    "memory per idle actor, hibernating",
    "memory per idle actor keeping its task",
    "spawn 1,000,000 hibernating idle actors",
    "peak RSS of a process with 1,000,000 hibernating idle actors",
    "first ask to an idle hibernating actor",
    # foreign threads (benchmarks/threads.py)
    "foreign-thread tell, 1 producer thread vs run_sync_soon",
    "foreign-thread tell, 1 producer thread vs from_thread.run_sync",
    "foreign-thread tell, 4 producer threads vs run_sync_soon",
    "foreign-thread tell, 4 producer threads vs from_thread.run_sync",
    "ask_blocking round trip from a plain thread vs trio.from_thread.run_sync, on one core",
    "ask_blocking round trip from a plain thread vs trio.from_thread.run_sync, threads free",
    "longest loop step, 4 threads injecting: snapshot",
    "longest loop step, 4 threads injecting: benchmark's own",
    "max scheduling lag, 4 threads injecting",
    "ticker ticks during the stall run",
    # event bus (benchmarks/bus.py)
    "publish fan-out to 1 subscriber",
    "publish fan-out to 10 subscribers",
    "publish fan-out to 100 subscribers",
    "publish rate, 10,000 subscriptions, fixed topic",
    "publish rate, 10,000 subscriptions, rotating topics",
    "reference race: wall time",
    # bridge and pool (benchmarks/bridge.py)
    "ctx.run_blocking per-call overhead",
    "system.run_blocking per-call overhead",
    "1,000 concurrent 1 ms blocking calls, Bridge(max_workers=8)",
    "the same against asyncio with a task per call",
    "RSS after 100,000 run_blocking calls",
    "Pool(size=4, smallest_mailbox) vs one actor",
    # cluster on NATS (benchmarks/cluster.py): node processes on a real nats-server
    "remote ask round trip between two node processes",
    "remote tell throughput, 1 sender",
    "node-down detection after SIGKILL of a node process",
    "codec encode+decode, 3-field registered attrs message",
    "a tell's wire work: body + envelope",
    "cluster bus fan-out, 1 publisher to 3 subscribers on 3 nodes",
    "remote tell scaling, 2 sending nodes into 1 receiver",
    "remote tell scaling, 3 sending nodes into 1 receiver",
)

REPORT_ONLY = (
    "messages injected by 4 threads during the stall run",
    "reference race: subscribe/unsubscribe rounds by the 4 churners",
)
"""Rows with a Troupe figure and no baseline."""

MAY_BE_ZERO = ("publish rate on 4 disjoint topics while another topic's subscriber is full",)
"""Rows whose Troupe figure is 0 when the scenario hangs (then cut short by its timeout)."""

NONE_LOST = "reference race: events lost by the always-subscribed subscriber"
"""A count that must be 0, beside the same count without churners."""

PYKKA_ROWS = (
    "tell from a plain thread vs Pykka",
    "ask_blocking round trip from a plain thread vs Pykka",
)
"""Troupe's figure always; Pykka's only where pykka is installed (else "n/a")."""

THESPIAN_ROWS = (
    "tell from the calling thread vs Thespian simpleSystemBase",
    "ask_blocking round trip vs Thespian simpleSystemBase ask",
    "tell from the calling thread vs Thespian multiprocQueueBase",
    "ask_blocking round trip vs Thespian multiprocQueueBase ask",
)
"""Troupe's figure always; Thespian's only where thespian is importable (else "n/a")."""


def thespian_importable() -> bool:
    try:
        import thespian.actors  # noqa: F401
    except ImportError:
        return False
    return True


NUMBER = re.compile(r"^-?[\d,]+(\.\d+)?$")


def test_quick_run_prints_every_scenario_with_figures(tmp_path: Path) -> None:
    report = tmp_path / "report.md"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--markdown", str(report)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert re.search(r"^Machine: .+, \d+ cores.*Python [\d.]+.*trio [\d.]+", out, re.M), out

    rows = {}
    for line in out.splitlines():
        if not line.startswith("| ") or line.startswith("| scenario"):
            continue
        cells = [cell.strip() for cell in line.strip("|").split("|")]
        assert len(cells) == 6, line
        rows[cells[0]] = cells

    def row(name: str, *, positive: bool = True) -> list[str]:
        matches = [cells for label, cells in rows.items() if label.startswith(name)]
        assert len(matches) == 1, f"no single row for {name!r} in:\n{out}"
        _, troupe, _baseline, _ratio, target, _met = matches[0]
        assert NUMBER.match(troupe), (name, troupe)
        assert float(troupe.replace(",", "")) > 0 or not positive, (name, troupe)
        assert target, name
        return matches[0]

    for name in SCENARIOS:
        _, _, baseline, ratio, _, _ = row(name)
        assert NUMBER.match(baseline), (name, baseline)
        assert re.match(r"^[\d.]+x$", ratio), (name, ratio)

    for name in REPORT_ONLY:
        row(name)

    for name in MAY_BE_ZERO:
        _, _, baseline, ratio, _, _ = row(name, positive=False)
        assert NUMBER.match(baseline) and float(baseline.replace(",", "")) > 0, (name, baseline)
        assert re.match(r"^[\d.]+x$", ratio), (name, ratio)

    _, lost, calm_lost, _, target, met = row(NONE_LOST, positive=False)
    assert (lost, calm_lost, target, met) == ("0", "0", "<= 0 (absolute)", "yes"), out

    pykka = importlib.util.find_spec("pykka") is not None
    for name in PYKKA_ROWS:
        _, _, baseline, ratio, _, _ = row(name)
        if pykka:
            assert NUMBER.match(baseline), (name, baseline)
            assert re.match(r"^[\d.]+x$", ratio), (name, ratio)
        else:
            assert baseline == "n/a", (name, baseline)
            assert "pykka is not installed" in out

    thespian = thespian_importable()
    for name in THESPIAN_ROWS:
        _, _, baseline, ratio, target, _ = row(name)
        assert target == "report only", (name, target)
        if thespian:
            assert NUMBER.match(baseline), (name, baseline)
            assert float(baseline.replace(",", "")) > 0, (name, baseline)
            assert re.match(r"^[\d.]+x$", ratio), (name, ratio)
        else:
            assert baseline == "n/a", (name, baseline)
            assert ratio == "n/a", (name, ratio)
            assert "thespian is not installed" in out

    # --markdown writes the same report, plus the load and the command to reproduce it
    text = report.read_text(encoding="utf-8")
    table = [line for line in out.splitlines() if line.startswith("| ")]
    assert table and all(line in text.splitlines() for line in table)
    assert re.search(r"^Load average \(1, 5, 15 min\): ", text, re.M), text
    assert f"python -m benchmarks --quick --markdown {report}" in text, text

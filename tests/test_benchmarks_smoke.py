"""The benchmark harness runs end to end in quick mode and prints a complete table.

Speed is never asserted here: only that every scenario has a row with figures.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SCENARIOS = (
    "tell throughput, M told at once",
    "tell throughput, bursts of 100",
    "ask round trip",
    "spawn 10,000 actors",
    "memory per idle actor",
    "restart latency",
)

NUMBER = re.compile(r"^-?[\d,]+(\.\d+)?$")


def test_quick_run_prints_every_scenario_with_figures() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick"],
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

    for name in SCENARIOS:
        matches = [cells for label, cells in rows.items() if label.startswith(name)]
        assert len(matches) == 1, f"no single row for {name!r} in:\n{out}"
        _, troupe, baseline, ratio, target, _met = matches[0]
        assert NUMBER.match(troupe), (name, troupe)
        assert float(troupe.replace(",", "")) > 0, (name, troupe)
        assert NUMBER.match(baseline), (name, baseline)
        assert re.match(r"^[\d.]+x$", ratio), (name, ratio)
        assert target, name

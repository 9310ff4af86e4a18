"""The cluster demo (``make cluster-demo``) runs as an operator runs it: three node
processes on a local nats-server, one node killed and restarted on purpose, and
Ctrl-C stops all of it, leaving no process behind.

The launcher runs with ``--fast`` (batches every 0.5 s, the kill 2 s after
start-up); the nodes keep the default failure detection (5 s), so a run takes
about 15 s.
"""

from __future__ import annotations

import os
import pathlib
import queue
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parent.parent
LAUNCHER = REPO / "examples" / "cluster" / "run.py"
WAIT = 45.0


def live_processes() -> dict[int, tuple[int, str]]:
    """Every live process (zombies excluded): pid -> (process group, command name)."""
    found: dict[int, tuple[int, str]] = {}
    for stat in pathlib.Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        name = text[text.index("(") + 1 : text.rindex(")")]
        fields = text.rpartition(")")[2].split()
        if fields[0] != "Z":
            found[int(stat.parent.name)] = (int(fields[2]), name)
    return found


@pytest.mark.skipif(not pathlib.Path("/proc").is_dir(), reason="reads /proc for leftovers")
def test_the_cluster_demo_heals_a_killed_node_and_stops_cleanly_on_ctrl_c(
    tmp_path: pathlib.Path,
) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(LAUNCHER), "--fast", "--port", "0", "--logs", str(tmp_path / "logs")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", "XDG_RUNTIME_DIR": str(tmp_path)},
    )
    lines: queue.Queue[str | None] = queue.Queue()
    seen: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()

    def wait_for(*patterns: str) -> None:
        """Read on until a line matching each of `patterns` came (in any order: the
        nodes' lines interleave as they please)."""
        missing = list(patterns)
        deadline = time.monotonic() + WAIT
        while missing and time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if line is None:
                break
            seen.append(line)
            missing = [p for p in missing if not re.search(p, line)]
        if missing:
            raise AssertionError(f"no line matching {missing}; output:\n" + "\n".join(seen))

    try:
        wait_for(r"launcher \| all 3 nodes are up")
        wait_for(r"launcher \| chaos: SIGKILL node training")
        # its peers see it go down by its silence, and the watchdog gets its Terminated
        wait_for(
            r"registry \| node_down: training .*silent",
            r"data \| node_down: training .*silent",
            r"registry \| watchdog: Terminated\(NodeDown\) for troupe://training/",
        )
        wait_for(r"launcher \| chaos: restarting node training")
        # back as a new incarnation: seen up, watched again, resuming from the registry
        wait_for(
            r"registry \| node_up: training",
            r"data \| node_up: training",
            r"registry \| watchdog: watching troupe://training/",
            r"training \| trainer: (resuming from promoted v\d+|starting at v)",
        )
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=WAIT)
        while (line := lines.get(timeout=5)) is not None:
            seen.append(line)
    finally:
        if proc.poll() is None:  # a failure above: let the launcher clean up, bounded
            proc.terminate()
            try:
                proc.wait(timeout=WAIT)
            except subprocess.TimeoutExpired:
                proc.kill()  # its children get SIGTERM (PR_SET_PDEATHSIG)
                proc.wait()
    output = "\n".join(seen)
    assert proc.returncode == 0, output

    # what it started, by pid: the NATS server and every node process (two for training)
    nats = [int(p) for p in re.findall(r"nats-server on nats://\S+ \(pid (\d+)\)", output)]
    nodes = {int(p): n for n, p in re.findall(r"started node (\w+) \(pid (\d+)\)", output)}
    assert len(nats) == 1, output
    assert sorted(nodes.values()) == ["data", "registry", "training", "training"], output
    # nodes stopped gracefully (the killed one aside), and nothing is left: no server, no
    # node, no worker process of a node's bridge (each node leads its process group)
    for name in ("registry", "training", "data"):
        assert f"node {name} stopped (exit code 0)" in output
    assert "all stopped" in output
    assert ": SIGKILL (" not in output and "processes left" not in output, output
    live = live_processes()
    left = {pid: name for pid, (group, name) in live.items() if pid in nats or group in nodes}
    assert not left, f"processes left behind: {left}"

    # the pipeline made progress across the three nodes, and the nodes healed themselves
    assert re.search(r"registry \| registry: promoted v\d+ .*trained on node training", output)
    assert re.search(r"data \| healed: /pipeline/data-sync restarted by its supervisor", output)
    assert re.search(r"registry \| \[dashboard\] data up  registry up  training up", output)

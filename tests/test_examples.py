"""The examples run as a newcomer runs them."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time

EXAMPLES = pathlib.Path(__file__).resolve().parent.parent / "examples"


def start(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
    )


def test_the_flagship_pipeline_runs_heals_and_stops_on_ctrl_c(tmp_path: pathlib.Path) -> None:
    proc = start(
        "-m",
        "runtime",
        "run",
        str(EXAMPLES / "pipeline.py"),
        env={"XDG_RUNTIME_DIR": str(tmp_path)},
    )
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        line = ""
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if line.startswith("[dashboard]") or not line:
                break
        assert line.startswith("[dashboard]"), "the dashboard never reported"
        # its control socket is up: `troupe tree` sees the whole tree
        tree = subprocess.run(
            [sys.executable, "-m", "runtime", "tree"],
            capture_output=True,
            text=True,
            timeout=30,
            env={**os.environ, "XDG_RUNTIME_DIR": str(tmp_path)},
        )
        assert tree.returncode == 0, tree.stderr
        for name in ("data-sync", "trainer", "model-registry", "evaluator", "metrics-feed", "cpu"):
            assert name in tree.stdout
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err


def test_the_threads_example_runs() -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "threads.py")], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "aggregated 40000 readings" in done.stdout
    assert "high-water mark: 64 of 64" in done.stdout


def test_the_small_supervisor_script_runs_and_stops(tmp_path: pathlib.Path) -> None:
    proc = start(
        "-m",
        "runtime",
        "run",
        str(EXAMPLES / "supervisor_script.py"),
        env={"XDG_RUNTIME_DIR": str(tmp_path)},
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the reporter's first line, after about 3 s
        assert line.startswith("counter has seen")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "reporter stopping (shutdown)" in out

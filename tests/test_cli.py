"""`troupe run` as a user runs it: a subprocess, signals, exit codes."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import pytest

import runtime.cli

SCRIPT = textwrap.dedent(
    """
    import sys, trio
    from runtime import Actor, Supervisor, child

    class Greeter(Actor):
        def __init__(self, hang=False):
            self.hang = hang
        async def on_start(self):
            print("ready", flush=True)
        async def on_stop(self, reason):
            print(f"stopped {reason}", flush=True)
            if self.hang:
                await trio.sleep_forever()
        async def receive(self, msg):
            return msg

    class Crashy(Actor):
        async def on_start(self):
            self.ctx.send_after(0, "boom")
        async def receive(self, msg):
            raise ValueError("always")

    tree = Supervisor("greet", children=[child(Greeter, name="greeter")])
    stubborn = Supervisor("stubborn", children=[
        child(Greeter, name="greeter", kwargs={"hang": True}, shutdown=None)])
    def failing():
        return Supervisor("failing", max_restarts=2, within=60, children=[child(Crashy, name="c")])
    not_a_tree = 42
    """
)


@pytest.fixture
def script(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "app.py"
    path.write_text(SCRIPT)
    return path


def troupe(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "runtime", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def wait_for_line(proc: subprocess.Popen[str], text: str) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        if text in line:
            return
    raise AssertionError(f"process ended before printing {text!r}: {proc.stderr}")


def test_sigint_stops_the_tree_gracefully(script: pathlib.Path) -> None:
    proc = troupe("run", str(script))
    try:
        wait_for_line(proc, "ready")
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "stopped shutdown" in out


def test_sigterm_stops_the_tree_gracefully(script: pathlib.Path) -> None:
    proc = troupe("run", f"{script}:tree")
    try:
        wait_for_line(proc, "ready")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "stopped shutdown" in out


def test_second_sigint_stops_at_once(script: pathlib.Path) -> None:
    proc = troupe("run", f"{script}:stubborn")
    try:
        wait_for_line(proc, "ready")
        proc.send_signal(signal.SIGINT)
        wait_for_line(proc, "stopped shutdown")  # on_stop now hangs for ever
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130, err


def test_a_failing_tree_exits_non_zero_and_says_why(script: pathlib.Path) -> None:
    proc = troupe("run", f"{script}:failing")
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 1
    assert "RestartIntensityExceeded" in err
    assert "/failing" in err


def test_bad_targets_get_clear_errors(
    script: pathlib.Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert runtime.cli.main(["run", f"{script}:missing"]) == 2
    assert "has no 'missing'" in capsys.readouterr().err
    assert runtime.cli.main(["run", f"{script}:not_a_tree"]) == 2
    assert "not a Supervisor" in capsys.readouterr().err
    assert runtime.cli.main(["run", "no/such/file.py"]) == 2
    assert "no such file" in capsys.readouterr().err


def test_load_tree_accepts_a_module_name_and_a_callable(script: pathlib.Path) -> None:
    tree = runtime.cli.load_tree(f"{script}:failing")
    assert tree.name == "failing"
    sys.path.insert(0, str(script.parent))
    try:
        assert runtime.cli.load_tree("app").name == "greet"
    finally:
        sys.path.remove(str(script.parent))

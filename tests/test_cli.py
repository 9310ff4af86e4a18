"""`troupe run` as a user runs it: a subprocess, signals, exit codes."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import textwrap
from typing import Any

import pytest
import trio
from natsserver import NatsServer

import runtime
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


# -- troupe run --node/--cluster: a node of a cluster on NATS ---------------------------
NODE_SCRIPT = pathlib.Path(__file__).with_name("cluster_node.py")


def run_options(monkeypatch: pytest.MonkeyPatch, *args: str) -> dict[str, Any]:
    """The options `troupe run ARGS` passes to `runtime.run` (not run)."""
    got: dict[str, Any] = {}

    def fake_run(tree: runtime.Supervisor, **options: Any) -> None:
        got.update(options)

    monkeypatch.setattr(runtime.cli, "run", fake_run)
    assert runtime.cli.main(["run", f"{NODE_SCRIPT}:tree", *args]) == 0
    return got


def test_cluster_flags_map_to_the_run_options(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TROUPE_CLUSTER", raising=False)
    assert "node" not in run_options(monkeypatch)
    options = run_options(
        monkeypatch,
        "--node",
        "w-1",
        "--cluster",
        "nats://127.0.0.1:4222",
        "--cluster-name",
        "prod.eu",
        "--cluster-topics",
        "jobs.>",
        "metrics.*",
        "--cluster-topics",
        "alerts",
        "--cluster-control",
        "rw",
        "--heartbeat",
        "0.25",
        "--node-down-after",
        "2",
    )
    assert (options["heartbeat"], options["node_down_after"]) == (0.25, 2.0)
    assert options["node"] == "w-1"
    assert options["name"] == "w-1"  # the system is named after its node by default
    assert options["cluster"] == "nats://127.0.0.1:4222"
    assert options["cluster_name"] == "prod.eu"
    assert options["cluster_topics"] == ("jobs.>", "metrics.*", "alerts")
    assert options["cluster_control"] == "rw"
    options = run_options(
        monkeypatch,
        "--node",
        "w",
        "--name",
        "sys",
        "--cluster",
        "nats://a:1",
        "--cluster",
        "nats://b:2",
    )
    assert (options["name"], options["cluster"]) == ("sys", ["nats://a:1", "nats://b:2"])
    assert "cluster_name" not in options and "cluster_topics" not in options
    monkeypatch.setenv("TROUPE_CLUSTER", "nats://env:4222")
    assert run_options(monkeypatch, "--node", "w")["cluster"] == "nats://env:4222"
    assert run_options(monkeypatch, "--node", "w", "--cluster", "nats://flag:1")["cluster"] == (
        "nats://flag:1"
    )
    monkeypatch.setenv("TROUPE_CLUSTER", "nats://a:1, nats://b:2")
    assert run_options(monkeypatch, "--node", "w")["cluster"] == ["nats://a:1", "nats://b:2"]
    assert "node" not in run_options(monkeypatch)  # the variable alone makes no node


def test_bad_cluster_flags_get_clear_errors(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("TROUPE_CLUSTER", raising=False)
    target = f"{NODE_SCRIPT}:tree"
    for args, message in [
        (["--cluster", "nats://127.0.0.1:4222"], "--cluster needs --node"),
        (["--cluster-topics", "a.>"], "--cluster-topics needs --node"),
        (["--node", "w"], "TROUPE_CLUSTER"),
        (["--node", "a.b", "--cluster", "nats://x:1"], "invalid node name 'a.b'"),
        (["--node", "a", "--cluster", "nats://x:1", "--cluster-name", "a..b"], "cluster name"),
        (["--node", "a", "--cluster", "nats://x:1", "--cluster-topics", "a..b"], "a..b"),
        (["--heartbeat", "1"], "--heartbeat needs --node"),
        (["--node", "a", "--cluster", "nats://x:1", "--heartbeat", "0"], "--heartbeat"),
        (["--node", "a", "--cluster", "nats://x:1", "--node-down-after", "0.5"], "longer"),
    ]:
        assert runtime.cli.main(["run", target, *args]) == 2, args
        assert message in capsys.readouterr().err, args
    with pytest.raises(SystemExit):
        runtime.cli.main(["run", target, "--node", "a", "--cluster-control", "all"])
    assert "invalid choice" in capsys.readouterr().err


def test_run_starts_a_node_that_another_node_asks(nats_server: NatsServer) -> None:
    name = f"cli{os.getpid()}"
    cluster_name = f"clitest{os.getpid()}"
    proc = troupe(
        "run",
        f"{NODE_SCRIPT}:tree",
        "--node",
        name,
        "--cluster",
        nats_server.url,
        "--cluster-name",
        cluster_name,
    )
    try:
        wait_for_line(proc, f"ready {name} {proc.pid}")

        async def ask_it() -> tuple[Any, str]:
            with trio.fail_after(20):
                async with runtime.open_system(
                    runtime.Supervisor("here", children=[]),
                    node=f"{name}-here",
                    cluster=nats_server.url,
                    cluster_name=cluster_name,
                    heartbeat=0.2,
                ) as here:
                    while not here.cluster.is_up(name):
                        await trio.sleep(0.01)
                    answer = await here.ref(f"troupe://{name}/app/echo").ask("whoami")
                    proc.send_signal(signal.SIGTERM)  # a graceful stop: the node leaves
                    while here.cluster.is_up(name):
                        await trio.sleep(0.01)
                    why = next(i for i in here.cluster.nodes() if i.name == name).status
                    return answer, why

        answer, status = trio.run(ask_it)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert answer["node"] == name and answer["pid"] == proc.pid
    assert status == "down"
    assert proc.returncode == 0, err


def test_the_cli_does_not_load_the_test_tools() -> None:
    """`troupe` starts without importing pytest or trio.testing (70 ms of every start)."""
    code = (
        "import sys, runtime.cli, runtime.entry; "
        "print(sorted(m for m in ('pytest', 'trio.testing') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]", done.stdout

"""Attack on issue 15 ("Operating a cluster"): ``troupe ls|tree|top|events --cluster`` run
as subprocesses against a real nats-server (and node processes from
tests/cluster_node.py).  Each test names the contract sentence it checks; "holds"
tests pin behaviour that passes and matters.  Bounded waits on events and counts,
never on durations; every process started here is killed in a ``finally``.
"""

from __future__ import annotations

import itertools
import os
import pathlib
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
from natsserver import NatsServer, free_ports

from runtime.cluster.client import ClusterClient

WAIT = 20.0
REPO = pathlib.Path(__file__).resolve().parent.parent
_names = itertools.count()


def env(tmp: pathlib.Path) -> dict[str, str]:
    out = {
        **os.environ,
        "XDG_RUNTIME_DIR": str(tmp),
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p),
    }
    out.pop("TROUPE_CLUSTER", None)
    return out


def troupe(tmp: pathlib.Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "runtime", *args],
        capture_output=True,
        text=True,
        timeout=WAIT,
        env=env(tmp),
        cwd=tmp,
    )


class NodeProc:
    """`troupe run tests/cluster_node.py:tree --node NAME` (prints ``ready ...``)."""

    def __init__(self, tmp: pathlib.Path, url: str, cluster: str, name: str) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "runtime",
                "run",
                str(REPO / "tests" / "cluster_node.py") + ":tree",
                "--node",
                name,
                "--cluster",
                url,
                "--cluster-name",
                cluster,
                "--heartbeat",
                "0.2",
                "--node-down-after",
                "1.0",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env(tmp),
            cwd=tmp,
        )
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("ready "):
                self.ready.set()

    def wait_ready(self) -> None:
        assert self.ready.wait(WAIT), f"node {self.name} not ready"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


@pytest.fixture
def tmp(tmp_path: pathlib.Path) -> Iterator[pathlib.Path]:
    yield tmp_path


def until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


# -- findings -------------------------------------------------------------------------
def test_a_password_in_the_url_is_not_printed(tmp: pathlib.Path) -> None:
    """README/CLI help: "user:password@ in the URL ... work too"; DESIGN: NATS's
    authentication is the security boundary.  When the server cannot be reached (or
    refuses), the error echoes the URLs as given -- password included -- to stderr
    (client.py `where`, used at client.py:168-176 and in every ClusterError), so it
    lands in terminals, CI logs and bug reports."""
    port = free_ports(1)[0]
    done = troupe(tmp, "ls", "--cluster", f"nats://ops:s3cr3t-pw@127.0.0.1:{port}")
    assert done.returncode == 1
    assert "cannot reach a NATS server" in done.stderr
    assert "s3cr3t-pw" not in done.stderr, done.stderr


@pytest.mark.parametrize(
    "command",
    [["top", "--cluster", "{url}"], ["events", "--cluster", "{url}", ">"]],
    ids=["top", "events"],
)
def test_ctrl_c_while_connecting_exits_cleanly(tmp: pathlib.Path, command: list[str]) -> None:
    """Brief/DESIGN ("troupe top (live)" ends on Ctrl-C; events likewise): Ctrl-C to
    ``troupe top --cluster`` / ``events --cluster`` exits cleanly, without a traceback.
    A server that accepts the TCP connection but never speaks (a stuck or far
    server): Ctrl-C while the CLI connects.  `events` holds; `top` prints a
    KeyboardInterrupt traceback: cli.py `_cluster_top` connects (`with
    _cluster_client(args)`) outside its ``except KeyboardInterrupt``."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        listener.settimeout(WAIT)
        url = f"nats://127.0.0.1:{listener.getsockname()[1]}"
        proc = subprocess.Popen(
            [sys.executable, "-m", "runtime", *(a.format(url=url) for a in command)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env(tmp),
            cwd=tmp,
        )
        try:
            conn, _ = listener.accept()  # the CLI is connecting now
            with conn:
                proc.send_signal(signal.SIGINT)
                _, err = proc.communicate(timeout=WAIT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert "Traceback" not in err, err
    assert proc.returncode in (0, 1, 130), (proc.returncode, err)


# -- holds ----------------------------------------------------------------------------
def test_a_cluster_with_zero_nodes_is_a_clear_error(
    tmp: pathlib.Path, nats_server: NatsServer
) -> None:
    """Holds: with a server but no node, ls/tree/top --once exit 1 naming the cluster."""
    cluster = f"atk15z{os.getpid()}"
    for command in (["ls"], ["tree"], ["top", "--once"], ["stop", "n1"]):
        done = troupe(tmp, *command, "--cluster", nats_server.url, "--cluster-name", cluster)
        assert done.returncode == 1, (command, done.stderr)
        assert f"cluster {cluster!r}" in done.stderr
        assert "Traceback" not in done.stderr


def test_parsing_edge_cases(tmp: pathlib.Path) -> None:
    """Holds: a host without scheme or port, an empty
    --cluster=, a URL-less comma list, a NODE given to top and a bad pattern are usage
    errors (exit 2), never tracebacks.  (A NODE that looks like a URL is checked only
    after connecting: with an unreachable server it reports "cannot reach", exit 1.)"""
    for args in (
        ["ls", "--cluster", "127.0.0.1"],
        ["ls", "--cluster="],
        ["ls", "--cluster", ",,"],
        ["top", "--cluster", "nats://127.0.0.1:1", "a-node"],
        ["events", "--cluster", "nats://127.0.0.1:1", "a.>.b"],
    ):
        done = troupe(tmp, *args)
        assert done.returncode == 2, (args, done.stderr)
        assert "Traceback" not in done.stderr


def test_a_comma_list_with_a_dead_server_and_top_across_a_dying_node(
    tmp: pathlib.Path, nats_server: NatsServer
) -> None:
    """Holds: ``--cluster DEAD,LIVE`` reaches the live server (every time); ``top
    --cluster`` goes on while a node is SIGKILLed and seen down, and Ctrl-C ends it
    with exit 0 and no traceback."""
    cluster = f"atk15d{os.getpid()}x{next(_names)}"
    nodes = [NodeProc(tmp, nats_server.url, cluster, name) for name in ("n1", "n2")]
    top: subprocess.Popen[str] | None = None
    try:
        for node in nodes:
            node.wait_ready()
        dead = free_ports(1)[0]
        for _ in range(4):  # nats-py shuffles the servers: either order
            done = troupe(
                tmp, "ls", "--cluster", f"nats://127.0.0.1:{dead},{nats_server.url}",
                "--cluster-name", cluster,
            )  # fmt: skip
            assert done.returncode == 0, done.stderr
            assert "n1" in done.stdout and "n2" in done.stdout
        top = subprocess.Popen(
            [
                sys.executable, "-m", "runtime", "top", "--cluster", nats_server.url,
                "--cluster-name", cluster, "--interval", "0.1",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env(tmp),
            cwd=tmp,
        )  # fmt: skip
        lines: list[str] = []

        def read() -> None:
            assert top is not None and top.stdout is not None
            for line in top.stdout:
                lines.append(line)

        reader = threading.Thread(target=read, daemon=True)
        reader.start()
        # top is up and showing both nodes before one is killed (a Ctrl-C sent while
        # it was still importing would test nothing, and fail)
        until(lambda: any("n2" in line for line in lines) or top.poll() is not None, "top's n2")
        with ClusterClient(nats_server.url, cluster) as client:

            def status(name: str) -> str | None:
                return next((i["status"] for i in client.nodes() if i["name"] == name), None)

            until(lambda: status("n2") == "up", "n2 up")
            nodes[1].kill()
            until(lambda: status("n2") == "down", "n2 seen down")
        shown = len(lines)
        until(lambda: len(lines) > shown or top.poll() is not None, "a frame after the kill")
        assert top.poll() is None, top.stderr.read() if top.stderr else ""
        top.send_signal(signal.SIGINT)
        top.wait(timeout=WAIT)
        reader.join(WAIT)
        assert top.stderr is not None
        out, err = "".join(lines), top.stderr.read()
        assert top.returncode == 0, err
        assert "Traceback" not in err
        assert "n1" in out
    finally:
        if top is not None and top.poll() is None:
            top.kill()
            top.wait()
        for node in nodes:
            node.kill()

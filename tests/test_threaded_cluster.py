"""A cluster seen from plain threads and from a terminal: `ThreadedSystem.node` and
`ThreadedSystem.cluster` (a `ThreadedCluster`: the node's cluster, each call
blocking the calling thread), and ``troupe deadletters --cluster URL [NODE]``,
which reads a node's dead letters over NATS and prints them as the local command
does.

A real nats-server (the `nats_server` fixture); the systems run in this process,
each on its own thread (`start_in_thread`), the CLI as a subprocess.  Real time
with bounds only a hang reaches; every wait is a bounded poll.
"""

from __future__ import annotations

import itertools
import os
import pathlib
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest
from natsserver import NatsServer
from test_cluster_cli import until  # a bounded poll from a plain thread

import runtime
from runtime import Actor, Supervisor, child
from runtime.cluster.client import ClusterClient, ControlRefused
from runtime.entry import ThreadedCluster

WAIT = 20.0  # real seconds: a bound only a hang reaches
REPO = pathlib.Path(__file__).resolve().parent.parent
_names = itertools.count()


class Echo(Actor):
    """Answers what it gets; ``"ignore"`` (or ``"ignore ..."``) is not handled (a dead
    letter)."""

    async def receive(self, msg: Any) -> Any:
        if isinstance(msg, str) and msg.startswith("ignore"):
            return runtime.UNHANDLED
        return msg


def tree() -> Supervisor:
    return Supervisor("app", children=[child(Echo, name="echo")])


def fresh() -> str:
    return f"thr{os.getpid()}x{next(_names)}"


def options(server: NatsServer, cluster: str) -> dict[str, Any]:
    return {
        "cluster": server.url,
        "cluster_name": cluster,
        "heartbeat": 0.2,
        "node_down_after": 1.5,
    }


def all_up(system: runtime.ThreadedSystem, names: set[str]) -> bool:
    assert system.cluster is not None
    return {info.name for info in system.cluster.nodes() if info.status == "up"} >= names


def test_without_a_cluster_node_and_cluster_are_none() -> None:
    with runtime.start_in_thread(tree()) as system:
        assert system.node is None
        assert system.cluster is None
        assert system.ref("/app/echo").ask_blocking("hi", timeout=5) == "hi"


def test_the_cluster_from_a_plain_thread(nats_server: NatsServer) -> None:
    cluster = fresh()
    with (
        runtime.start_in_thread(
            tree(), node=f"{cluster}-b", cluster_control="rw", **options(nats_server, cluster)
        ) as b,
        runtime.start_in_thread(tree(), node=f"{cluster}-a", **options(nats_server, cluster)) as a,
    ):
        a_name, b_name = f"{cluster}-a", f"{cluster}-b"
        assert a.node == a_name and b.node == b_name
        handle = a.cluster
        assert isinstance(handle, ThreadedCluster)
        # nodes(): this node included, by name
        until(lambda: all_up(a, {a_name, b_name}), "b seen up by a")
        infos = handle.nodes()
        assert [info.name for info in infos] == [a_name, b_name]
        me = infos[0]
        assert me.status == "up" and me.pid == os.getpid() and me.actors >= 2
        # snapshot(): every live node's tree, this one's included
        snapshots = handle.snapshot()
        assert set(snapshots) == {a_name, b_name}
        for snapshot in snapshots.values():
            assert snapshot.find("/app/echo") is not None
        # which_children / start_child / terminate_child on the other node
        url = f"troupe://{b_name}/app"
        assert [info.name for info in handle.which_children(url)] == ["echo"]
        ref = handle.start_child(url, child(f"{Echo.__module__}:Echo", name="spawned"))
        assert ref.url == f"{url}/spawned"
        assert ref.ask_blocking("over there", timeout=5) == "over there"
        assert [info.name for info in handle.which_children(url)] == ["echo", "spawned"]
        handle.terminate_child(f"{url}/spawned")
        assert [info.name for info in b.which_children("/app")] == ["echo"]
        # what the other node refuses is raised here as it is: a takes read-only control
        assert b.cluster is not None
        with pytest.raises(runtime.RemoteError, match="PermissionError"):
            b.cluster.start_child(f"troupe://{a_name}/app", child(f"{Echo.__module__}:Echo"))
        with pytest.raises(runtime.NodeDown):
            handle.which_children(f"troupe://{cluster}-nobody/app")
        # on the loop thread (here: a bus callback) a blocking call refuses at once
        refused: list[BaseException] = []

        @a.bus.subscribe("probe.loop")
        def on_the_loop(event: Any) -> None:
            try:
                handle.nodes()
            except RuntimeError as error:
                refused.append(error)

        a.publish("probe.loop", 1)
        until(lambda: refused, "the loop-thread call refused")
    # the system stopped: every call says so
    for call in (
        handle.nodes,
        handle.snapshot,
        lambda: handle.which_children(f"troupe://{b_name}/app"),
        lambda: handle.terminate_child(f"troupe://{b_name}/app/echo"),
    ):
        with pytest.raises(runtime.RuntimeClosed):
            call()


# -- troupe deadletters --cluster -------------------------------------------------------


@pytest.fixture
def folder() -> Iterator[pathlib.Path]:
    """A short private XDG_RUNTIME_DIR (a socket's path has at most ~100 characters)."""
    path = pathlib.Path(tempfile.mkdtemp(prefix="troupe-thr-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def troupe(folder: pathlib.Path, *args: str) -> subprocess.CompletedProcess[str]:
    pythonpath = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(folder), "PYTHONPATH": pythonpath}
    for name in ("TROUPE_CLUSTER", "COLUMNS"):
        env.pop(name, None)
    return subprocess.run(
        [sys.executable, "-m", "runtime", *args],
        capture_output=True,
        text=True,
        timeout=WAIT,
        env=env,
        cwd=folder,
    )


def test_deadletters_of_a_node_over_nats_read_as_the_local_ones(
    nats_server: NatsServer, folder: pathlib.Path
) -> None:
    cluster = fresh()
    n1, n2 = f"{cluster}-n1", f"{cluster}-n2"
    with (
        runtime.start_in_thread(
            tree(),
            name=n1,
            node=n1,
            control=True,
            control_dir=folder / "troupe",
            **options(nats_server, cluster),
        ) as one,
        runtime.start_in_thread(tree(), node=n2, **options(nats_server, cluster)) as two,
    ):
        echo = one.ref("/app/echo")
        echo.tell("ignore")
        echo.tell("hello")  # answered: no dead letter
        echo.tell("ignore")
        assert echo.ask_blocking("sync", timeout=5) == "sync"  # the tells were handled
        until(lambda: all_up(one, {n1, n2}) and all_up(two, {n1, n2}), "both nodes up")
        nats = ("--cluster", nats_server.url, "--cluster-name", cluster)

        # NODE: what the local command prints, read over NATS
        local = troupe(folder, "deadletters", n1)
        assert local.returncode == 0, local.stderr
        header, first, second, footer = local.stdout.splitlines()
        assert header.split() == ["TIME", "REASON", "RECIPIENT", "TYPE", "MESSAGE"]
        for row in (first, second):
            assert re.fullmatch(r"\d\d:\d\d:\d\d  unhandled  /app/echo  str   'ignore'", row)
        assert footer == "(2 shown; 2 dead letters since start: unhandled 2)"
        remote = troupe(folder, "deadletters", *nats, n1)
        assert remote.returncode == 0, remote.stderr
        assert remote.stdout == local.stdout
        # with -n and --reason, the same as locally too
        for extra in (["-n", "1"], ["--reason", "unhandled", "--full"], ["--reason", "crashed"]):
            local = troupe(folder, "deadletters", n1, *extra)
            remote = troupe(folder, "deadletters", *nats, n1, *extra)
            assert remote.returncode == 0, remote.stderr
            assert remote.stdout == local.stdout, extra
        assert remote.stdout == "no crashed dead letters\n"

        # no NODE: a block for every node, as `troupe tree --cluster`
        every = troupe(folder, "deadletters", *nats)
        assert every.returncode == 0, every.stderr
        blocks = {block.split()[0]: block for block in every.stdout.split("== ")[1:]}
        assert set(blocks) == {n1, n2}
        assert f"pid {os.getpid()}" in blocks[n1]
        assert "(2 shown; 2 dead letters since start: unhandled 2)" in blocks[n1]
        assert blocks[n2].rstrip().endswith("no dead letters")

        # a node that is not there, or a request it refuses: clear errors
        missing = troupe(folder, "deadletters", *nats, f"{cluster}-nobody")
        assert missing.returncode == 1
        assert "is not running" in missing.stderr and "Traceback" not in missing.stderr
        with ClusterClient(nats_server.url, cluster, timeout=5) as client:
            report = client.dead_letters(n1, limit=1)
            assert [letter["repr"] for letter in report["letters"]] == ["'ignore'"]
            assert report["counts"]["unhandled"] == 2
            with pytest.raises(ControlRefused, match="limit"):
                client.dead_letters(n1, limit=0)
            with pytest.raises(ControlRefused, match="unknown reason"):
                client.dead_letters(n1, reason="nonsense")


@pytest.mark.parametrize(
    "answer",
    [
        5,
        {"letters": [{"timestamp": None}], "counts": {}},
        {"letters": [], "counts": {"crashed": "many"}},
        {
            "letters": [
                {
                    "timestamp": float("inf"),
                    "recipient": "/a",
                    "reason": "x",
                    "type": "str",
                    "repr": "'x'",
                }
            ],
            "counts": {},
        },
        {"counts": {}},
    ],
)
def test_a_malformed_dead_letter_report_is_a_cluster_error(answer: Any) -> None:
    """Whatever answers on a node's subject, the CLI prints a line, not a traceback:
    the client checks a report's shape first."""
    from runtime.cluster.client import _report

    with pytest.raises(runtime.ClusterError, match="did not answer with a dead-letter report"):
        _report("fake", answer)
    good = {
        "letters": [
            {
                "timestamp": 1.0,
                "recipient": "/a",
                "reason": "unhandled",
                "type": "str",
                "repr": "'x'",
            }
        ],
        "counts": {"unhandled": 1},
    }
    assert _report("fake", good) is good


def test_a_report_over_max_payload_says_to_ask_for_fewer(folder: pathlib.Path) -> None:
    cluster = fresh()
    with (
        NatsServer(max_payload=4096) as server,
        runtime.start_in_thread(tree(), node=f"{cluster}-n", **options(server, cluster)) as system,
    ):
        echo = system.ref("/app/echo")
        for i in range(40):
            echo.tell(f"ignore {i} " + "x" * 150)  # unhandled: long dead letters
        assert echo.ask_blocking("sync", timeout=5) == "sync"
        with ClusterClient(server.url, cluster, timeout=5) as client:
            with pytest.raises(
                ControlRefused, match=r"ask for fewer letters \(troupe deadletters -n N\)"
            ):
                client.dead_letters(f"{cluster}-n", limit=40)
            assert len(client.dead_letters(f"{cluster}-n", limit=2)["letters"]) == 2

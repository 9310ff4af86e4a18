"""A cluster seen from plain threads: `ThreadedSystem.node` and
`ThreadedSystem.cluster` (a `ThreadedCluster`: the node's cluster, each call
blocking the calling thread).

A real nats-server (the `nats_server` fixture); the systems run in this process,
each on its own thread (`start_in_thread`).  Real time
with bounds only a hang reaches; every wait is a bounded poll.
"""

from __future__ import annotations

import itertools
import os
import time
from collections.abc import Callable
from typing import Any

import pytest
from natsserver import NatsServer

import runtime
from runtime import Actor, Supervisor, child
from runtime.entry import ThreadedCluster

WAIT = 20.0  # real seconds: a bound only a hang reaches
_names = itertools.count()


class Echo(Actor):
    """Answers what it gets; ``"ignore"`` is not handled (a dead letter)."""

    async def receive(self, msg: Any) -> Any:
        if msg == "ignore":
            return runtime.UNHANDLED
        return msg


def tree() -> Supervisor:
    return Supervisor("app", children=[child(Echo, name="echo")])


def fresh() -> str:
    return f"thr{os.getpid()}x{next(_names)}"


def until(condition: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + WAIT
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


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
    # the system stopped: every call says so
    for call in (
        handle.nodes,
        handle.snapshot,
        lambda: handle.which_children(f"troupe://{b_name}/app"),
        lambda: handle.terminate_child(f"troupe://{b_name}/app/echo"),
    ):
        with pytest.raises(runtime.RuntimeClosed):
            call()

"""`troupe ls|tree|top|events|stop --cluster` as an operator runs them: a real
nats-server, node processes started with `troupe run --node` (each in its own
``XDG_RUNTIME_DIR``), and the CLI run as a subprocess that joins NATS as a plain
client.  Also `ClusterClient` used directly, and the cluster view of `top`
rendered in-process.

Real time with generous bounds; assertions on what is printed, never on durations.
Every process started here is killed in a ``finally``.
"""

from __future__ import annotations

import itertools
import os
import pathlib
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from natsserver import NatsServer, free_ports

import runtime.cli
import runtime.top
from runtime.cluster.client import ClusterClient, ControlRefused, Tagged
from runtime.errors import ClusterError

WAIT = 20.0  # real seconds: a bound that only a hang reaches
REPO = pathlib.Path(__file__).resolve().parent.parent
_clusters = itertools.count()

SCRIPT = textwrap.dedent(
    """
    import os
    import trio
    from runtime import Actor, Supervisor, child

    class Ticker(Actor):
        async def on_start(self):
            self.ctx.nursery.start_soon(self.beat)

        async def beat(self):
            n = 0
            while True:
                # demo.* is shared with the cluster (--cluster-topics); local.* is not
                self.ctx.publish_nowait("demo.tick", {"n": n, "by": self.ctx.ref})
                self.ctx.publish_nowait("local.tick", {"n": n})
                n += 1
                await trio.sleep(0.05)

        async def receive(self, msg):
            return msg

    class Worker(Actor):
        async def receive(self, msg):
            return msg

    class Ready(Actor):
        async def on_start(self):
            print("ready", self.ctx.system.node, os.getpid(), flush=True)

        async def receive(self, msg):
            return msg

    tree = Supervisor("app", children=[
        child(Ticker, name="ticker"),
        Supervisor("workers", children=[child(Worker, name="w1"), child(Worker, name="w2")]),
        child(Ready, name="ready"),
    ])
    """
)


class Node:
    """One `troupe run --node` process; stdout and stderr read by threads."""

    def __init__(self, place: Place, name: str, *flags: str) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "runtime",
                "run",
                str(place.script),
                "--node",
                name,
                "--cluster",
                place.url,
                "--cluster-name",
                place.cluster,
                "--cluster-topics",
                "demo.>",
                *flags,
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=place.env,
            cwd=place.root,
        )
        self.ready = threading.Event()
        self.err: list[str] = []
        threading.Thread(target=self._out, daemon=True).start()
        threading.Thread(target=self._err, daemon=True).start()

    def _out(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("ready "):
                self.ready.set()

    def _err(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.err.append(line)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def wait_ready(self) -> None:
        deadline = time.monotonic() + WAIT
        while not self.ready.wait(0.05):
            assert self.proc.poll() is None, f"node {self.name} exited: {''.join(self.err)}"
            assert time.monotonic() < deadline, f"node {self.name} not ready"

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)


class Place:
    """A cluster of node processes: a private XDG_RUNTIME_DIR, the script, a cluster name."""

    def __init__(self, server: NatsServer) -> None:
        self.url = server.url
        self.cluster = f"cli{os.getpid()}x{next(_clusters)}"
        self.root = pathlib.Path(tempfile.mkdtemp(prefix="troupe-ccli-"))
        self.script = self.root / "cluster_app.py"
        self.script.write_text(SCRIPT)
        pythonpath = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
        self.env = {
            **os.environ,
            "XDG_RUNTIME_DIR": str(self.root),
            "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": pythonpath,
        }
        self.env.pop("TROUPE_CLUSTER", None)
        self.nodes: dict[str, Node] = {}

    def start(self, name: str, *flags: str) -> Node:
        node = self.nodes[name] = Node(self, name, *flags)
        return node

    def troupe(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run the CLI once (a plain NATS client), to its end."""
        return subprocess.run(
            [sys.executable, "-m", "runtime", *args],
            capture_output=True,
            text=True,
            timeout=WAIT,
            env={**self.env, **(env or {})},
            cwd=self.root,
        )

    def cli(self, command: str, *args: str) -> subprocess.CompletedProcess[str]:
        """`troupe COMMAND --cluster URL --cluster-name NAME ARGS...`."""
        return self.troupe(command, "--cluster", self.url, "--cluster-name", self.cluster, *args)

    def close(self) -> None:
        for node in self.nodes.values():
            node.kill()
        shutil.rmtree(self.root, ignore_errors=True)


def until(condition: Callable[[], Any], what: str) -> Any:
    deadline = time.monotonic() + WAIT
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def place(nats_server: NatsServer) -> Iterator[Place]:
    """Nodes a and b (read-only control), c (``--cluster-control rw``, stopped over
    NATS by a test) and d (stopped through its control socket by a test)."""
    here = Place(nats_server)
    try:
        here.start("a")
        here.start("b")
        here.start("c", "--cluster-control", "rw")
        here.start("d")
        for node in here.nodes.values():
            node.wait_ready()
        with ClusterClient(here.url, here.cluster) as client:

            def seen_by(via: str) -> set[str]:
                return {
                    info["name"]
                    for info in client.nodes(via=via)
                    if info["status"] == "up" and info["actors"] > 6
                }

            # every node sees every other up, with the actor count of a heartbeat sent
            # after its tree started
            until(lambda: all(seen_by(via) >= set(here.nodes) for via in here.nodes), "all up")
        yield here
    finally:
        here.close()


def cells(line: str) -> list[str]:
    """A line of a table split on whitespace, rich's box lines dropped."""
    return re.sub(r"[│┃|]", " ", line).split()


def rows(text: str) -> dict[str, list[str]]:
    """The rows of `troupe ls --cluster` by node name (split on whitespace)."""
    out = {}
    lines = text.splitlines()
    assert lines[0].split() == [
        "NODE",
        "INCARNATION",
        "HOST",
        "PID",
        "UPTIME",
        "ACTORS",
        "STATUS",
        "LAST",
        "SEEN",
    ]
    for line in lines[1:]:
        cells = line.split()
        out[cells[0]] = cells
    return out


def test_ls_lists_every_node_up_with_its_pid(place: Place) -> None:
    done = place.cli("ls")
    assert done.returncode == 0, done.stderr
    listed = rows(done.stdout)
    for name in ("a", "b"):
        cells = listed[name]
        assert cells[3] == str(place.nodes[name].pid)
        assert cells[6] == "up"
        assert int(cells[5]) >= 6  # /app, ticker, workers, w1, w2, ready
        assert re.fullmatch(r"\d+:\d\d:\d\d", cells[4])
        assert cells[8] == "ago"


def test_tree_shows_each_nodes_actors(place: Place) -> None:
    done = place.cli("tree")
    assert done.returncode == 0, done.stderr
    blocks = {block.split()[0]: block for block in done.stdout.split("== ")[1:]}
    for name in ("a", "b"):
        assert f"pid {place.nodes[name].pid}" in blocks[name]
        for actor in ("ticker [running]", "workers [running]", "w1 [running]", "w2 [running]"):
            assert actor in blocks[name]


def test_tree_of_one_node_with_the_url_from_the_environment(place: Place) -> None:
    done = place.troupe(
        "tree", "--cluster", "b", "--cluster-name", place.cluster, env={"TROUPE_CLUSTER": place.url}
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("b  dead letters")
    assert "ticker [running]" in done.stdout
    assert "==" not in done.stdout  # one node: no headers


def test_top_once_has_a_node_column_across_nodes(place: Place) -> None:
    done = place.cli("top", "--once", "--sort", "node")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert f"cluster {place.cluster}" in lines[0]
    header = next(line for line in lines if "ACTOR" in line)
    assert cells(header)[:3] == ["NODE", "ACTOR", "STATE"]
    table = [cells(line) for line in lines]
    seen = [(row[0], row[2]) for row in table if len(row) > 2 and row[1] in ("├─", "└─")]
    for name in ("a", "b"):  # a tree per node: ticker, workers/w1 under /app
        assert (name, "ticker") in seen
        assert (name, "w1") in seen
    nodes = [node for node, _ in seen]
    assert nodes == sorted(nodes)  # --sort node


def test_events_show_cluster_topics_with_their_node(place: Place) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "runtime",
            "events",
            "--cluster",
            place.url,
            "--cluster-name",
            place.cluster,
            ">",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=place.env,
    )
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    try:
        got: list[str] = []
        deadline = time.monotonic() + WAIT
        while not {"a", "b"} <= {m.group(1) for m in map(_node_of, got) if m}:
            assert time.monotonic() < deadline, f"no events of a and b: {got}"
            try:
                got.append(lines.get(timeout=0.5))
            except queue.Empty:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        for line in got:
            # only cluster topics cross NATS; refs in payloads show as their URLs
            assert " demo.tick from /app/ticker on " in line, line
            node = line.split(" on ")[1].split(":")[0]
            assert f"'by': 'troupe://{node}/app/ticker'" in line
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            code = proc.wait(timeout=WAIT)
            assert code == 0, proc.stderr.read() if proc.stderr else ""
        finally:
            proc.kill()


def _node_of(line: str) -> re.Match[str] | None:
    return re.search(r" on ([a-d]): ", line)


def test_stop_refused_by_a_read_only_node(place: Place) -> None:
    done = place.cli("stop", "a")
    assert done.returncode == 1
    assert "node 'a' refused to stop" in done.stderr
    assert "cluster-control rw" in done.stderr
    time.sleep(0.2)
    assert place.nodes["a"].proc.poll() is None  # still running


def test_stop_stops_a_node_that_allows_it(place: Place) -> None:
    node = place.nodes["c"]
    done = place.cli("stop", "c")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "node c is stopping"
    assert node.proc.wait(timeout=WAIT) == 0
    with ClusterClient(place.url, place.cluster) as client:
        until(
            lambda: any(i["name"] == "c" and i["status"] == "down" for i in client.nodes()),
            "c seen down",
        )
    listed = rows(place.cli("ls").stdout)
    assert listed["c"][6] == "down" and listed["c"][4] == "-"
    again = place.cli("stop", "c")
    assert again.returncode == 1
    assert "node 'c' of cluster" in again.stderr


def test_local_stop_through_the_control_socket(place: Place) -> None:
    node = place.nodes["d"]
    done = place.troupe("stop", "d")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "d is stopping"
    assert node.proc.wait(timeout=WAIT) == 0


def test_unreachable_url_and_silent_cluster_are_clear_errors(place: Place) -> None:
    port = free_ports(1)[0]
    done = place.troupe("ls", "--cluster", f"nats://127.0.0.1:{port}")
    assert done.returncode == 1
    assert f"cannot reach a NATS server at nats://127.0.0.1:{port}" in done.stderr
    assert "Traceback" not in done.stderr
    done = place.troupe("tree", "--cluster", place.url, "--cluster-name", "nobody.here")
    assert done.returncode == 1
    assert "no node of cluster 'nobody.here' answered" in done.stderr
    done = place.troupe("ls", "--cluster")  # no URL and no TROUPE_CLUSTER
    assert done.returncode == 2
    assert "TROUPE_CLUSTER" in done.stderr
    done = place.troupe("ls", "--cluster-name", "x")
    assert done.returncode == 2
    assert "--cluster-name needs --cluster" in done.stderr
    done = place.cli("events", "bad..pattern")
    assert done.returncode == 2
    done = place.troupe("tree", "--cluster-creds", "ops.creds")
    assert done.returncode == 2
    assert "--cluster-creds needs --cluster" in done.stderr
    done = place.cli("ls", "--cluster-creds", str(place.root / "missing.creds"))
    assert done.returncode == 1  # the options reach nats.connect, which fails on them
    assert f"NATS server at {place.url}" in done.stderr
    assert "Traceback" not in done.stderr


def test_cluster_client_directly(place: Place) -> None:
    with ClusterClient(f" {place.url} ,", place.cluster, timeout=5.0) as client:
        assert client.ping("a")["node"] == "a"
        infos = {info["name"]: info for info in client.nodes()}
        assert infos["a"]["pid"] == place.nodes["a"].pid
        snapshots = client.snapshots(["a", "b", "nobody"])
        assert set(snapshots) == {"a", "b"}
        assert snapshots["a"]["root"]["children"]
        with pytest.raises(ControlRefused, match="read-only"):
            client.stop("b")
        with pytest.raises(ClusterError, match="'nobody' of cluster"):
            client.snapshot("nobody")
        with pytest.raises(ValueError):
            client.snapshot("not.a.name")
        events = client.events("demo.tick", timeout=WAIT)
        first = next(events)
        events.close()
        assert first["topic"] == "demo.tick" and first["node"] in place.nodes
        assert first["payload"]["by"] == f"troupe://{first['node']}/app/ticker"
        assert list(client.events("nothing.here", timeout=0.2)) == []


def test_unknown_registered_classes_are_shown_by_tag() -> None:
    from runtime.cluster import envelope as env

    client = ClusterClient("nats://127.0.0.1:1")  # never connected: decoding only
    tagged = Tagged("jobs.Job", {"id": 3})
    assert repr(tagged) == "jobs.Job(id=3)"
    import msgspec

    from runtime.cluster.codec import EXT_EVENT, EXT_OBJECT

    obj = msgspec.msgpack.Ext(EXT_OBJECT, msgspec.msgpack.encode(["jobs.Job", {"id": 3}]))
    body = msgspec.msgpack.encode(
        msgspec.msgpack.Ext(
            EXT_EVENT,
            msgspec.msgpack.encode({"topic": "jobs.new", "payload": obj, "source": "/app/x"}),
        )
    )
    event = client.decode_event(env.pack(env.EVENT, "n1", "inc1", body))
    assert event is not None
    assert (event["topic"], event["node"], event["incarnation"]) == ("jobs.new", "n1", "inc1")
    assert repr(event["payload"]) == "jobs.Job(id=3)"
    assert client.decode_event(b"garbage") is None


def test_top_renders_a_cluster_frame_with_rates_and_silent_nodes() -> None:
    def snap(processed: int) -> dict[str, Any]:
        leaf = {
            "path": "/app/w",
            "name": "w",
            "kind": "actor",
            "state": "running",
            "restarts": 0,
            "mailbox_depth": 0,
            "mailbox_capacity": 10,
            "processed": processed,
            "dead_lettered": 0,
            "children": [],
        }
        root = {**leaf, "path": "/app", "name": "app", "kind": "supervisor", "children": [leaf]}
        return {"system": "x", "root": root, "dead_letters": {"crashed": 1}, "loop": {}}

    snaps = {"n2": snap(10), "n1": snap(100)}
    rows_now = [r for node, s in snaps.items() for r in runtime.top.flatten(s["root"], node)]
    rate = runtime.top.rates(rows_now, {"troupe://n1/app/w": 0, "troupe://n2/app/w": 0}, 1.0)
    assert rate["troupe://n1/app/w"] == 100.0
    text = runtime.top.render_cluster_text(snaps, rate, sort="rate", cluster="demo", silent=["n3"])
    assert "cluster demo" in text and "2 nodes" in text and "crashed 2" in text
    assert "n3: did not answer" in text
    table = [cells(line) for line in text.splitlines()]
    order = [row[:2] for row in table if len(row) > 2 and row[2] == "running"]
    assert order[0] == ["n1", "app"]  # the busiest node's tree first
    assert runtime.cli.SORTS == runtime.top.SORTS


def test_the_cli_works_without_the_cluster_extra(tmp_path: pathlib.Path) -> None:
    code = textwrap.dedent(
        """
        import sys
        sys.modules["nats"] = sys.modules["msgspec"] = None  # the extra is not installed
        from runtime.cli import main
        local = main(["ls"])
        assert not any(name.startswith("runtime.cluster") for name in sys.modules)
        sys.exit(local * 10 + main(["ls", "--cluster", "nats://127.0.0.1:4222"]))
        """
    )
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path), "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=WAIT, env=env
    )
    assert done.returncode == 2, done.stderr  # local ls: 0; --cluster: a usage error
    assert "no Troupe systems are running" in done.stdout
    assert "--cluster needs the cluster extra" in done.stderr


def test_events_packed_in_one_nats_message_are_each_shown() -> None:
    # a node packs the events of one topic into one NATS message (as it does tells)
    from runtime.cluster import envelope as env
    from runtime.cluster.transport import pack_batch

    client = ClusterClient("nats://127.0.0.1:1")  # never connected: decoding only
    bodies = [
        client._codec.encode(runtime.Event(topic="jobs.new", payload=n, source="/app/x"))
        for n in (1, 2)
    ]
    data = pack_batch([env.pack(env.EVENT, "n1", "inc1", body) for body in bodies])
    events = client.decode_events(data)
    assert [(e["topic"], e["payload"], e["node"]) for e in events] == [
        ("jobs.new", 1, "n1"),
        ("jobs.new", 2, "n1"),
    ]


def test_a_block_per_node_says_why_a_node_shows_nothing(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``troupe tree|deadletters --cluster`` without NODE: a block per node, each
    headed by its host, pid and incarnation; a node down says since when, one up that
    refused says what it answered, one up that is missing did not answer, and only an
    up node without its text makes the exit code 1."""
    now = time.time()

    def info(name: str, status: str = "up") -> dict[str, Any]:
        return {
            "name": name,
            "host": "h",
            "pid": 7,
            "incarnation": f"i-{name}",
            "status": status,
            "last_seen": now - 3,
        }

    infos = [info("a"), info("b", "down"), info("c"), info("d")]
    shown = {"a": "the tree of a", "c": ControlRefused("c", "unknown operation 'x'")}
    assert runtime.cli._node_blocks(infos, shown) == 1
    blocks = capsys.readouterr().out.split("\n\n")
    assert blocks[0] == "== a  (h pid 7, incarnation i-a)\nthe tree of a"
    assert re.fullmatch(
        r"== b  \(h pid 7, incarnation i-b\)\n\(down: last seen 3\.\ds ago\)", blocks[1]
    )
    assert blocks[2].startswith("== c  (h pid 7, incarnation i-c)\n(refused: ")
    assert "unknown operation 'x'" in blocks[2]
    assert blocks[3] == "== d  (h pid 7, incarnation i-d)\n(did not answer)\n"
    assert runtime.cli._node_blocks([info("a"), info("b", "down")], shown) == 0

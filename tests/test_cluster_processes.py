"""Nodes as separate OS processes (tests/cluster_node.py) and one node in this process,
on a real nats-server: SIGKILL, restart under the same name, SIGSTOP/SIGCONT (a frozen
node rejoins as a new incarnation), accounting of tells across processes, a name clash.

Real time with generous bounds (`trio.fail_after`); assertions on counts and types,
never on durations.  Every process started here is killed in a ``finally``.
"""

from __future__ import annotations

import itertools
import os
import pathlib
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
from natsserver import NatsServer

import runtime
from runtime import Actor, Supervisor

WAIT = 15.0
HEARTBEAT = 0.2
DOWN_AFTER = 1.0
NODE_SCRIPT = pathlib.Path(__file__).with_name("cluster_node.py")
REPO = NODE_SCRIPT.parent.parent
_names = itertools.count()


def fresh(prefix: str) -> str:
    return f"{prefix}{os.getpid()}x{next(_names)}"


class NodeProcess:
    """One node process; its stdout and stderr read by threads (never a full pipe)."""

    def __init__(self, command: list[str]) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
        self.proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self.ready_line: str | None = None
        self._threads = [
            threading.Thread(target=self._read, args=(self.proc.stdout, self.out), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _read(self, stream: Any, into: list[str]) -> None:
        for line in stream:
            into.append(line)
            if into is self.out and line.startswith("ready ") and self.ready_line is None:
                self.ready_line = line.strip()

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def incarnation(self) -> str:
        assert self.ready_line is not None
        return self.ready_line.split()[3]

    async def ready(self) -> None:
        await until(
            lambda: self.ready_line is not None or self.proc.poll() is not None, "ready line"
        )
        if self.ready_line is None:
            await self.exited()
            raise AssertionError(f"the node exited ({self.proc.returncode}): {self.stderr}")

    async def exited(self) -> int:
        code = await trio.to_thread.run_sync(self.proc.wait)
        for thread in self._threads:
            await trio.to_thread.run_sync(thread.join, 5.0)
        return code

    @property
    def stderr(self) -> str:
        return "".join(self.err)

    def signal(self, sig: int) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)  # a stopped process dies on SIGKILL too
            self.proc.kill()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            pass


class Processes:
    """Starts node processes; `close` kills every one of them."""

    def __init__(self, server: NatsServer, cluster_name: str) -> None:
        self.server = server
        self.cluster_name = cluster_name
        self.started: list[NodeProcess] = []

    def script(self, name: str, **options: Any) -> NodeProcess:
        command = [
            sys.executable,
            str(NODE_SCRIPT),
            "--node",
            name,
            "--cluster",
            self.server.url,
            "--cluster-name",
            self.cluster_name,
            "--heartbeat",
            str(options.get("heartbeat", HEARTBEAT)),
            "--node-down-after",
            str(options.get("node_down_after", DOWN_AFTER)),
        ]
        return self._start(command)

    def cli(self, name: str) -> NodeProcess:
        command = [
            sys.executable,
            "-m",
            "runtime",
            "run",
            f"{NODE_SCRIPT}:tree",
            "--node",
            name,
            "--cluster",
            self.server.url,
            "--cluster-name",
            self.cluster_name,
        ]
        return self._start(command)

    def _start(self, command: list[str]) -> NodeProcess:
        node = NodeProcess(command)
        self.started.append(node)
        return node

    def close(self) -> None:
        for node in self.started:
            node.kill()


@pytest.fixture
def procs(nats_server: NatsServer) -> Iterator[Processes]:
    processes = Processes(nats_server, fresh("p"))
    try:
        yield processes
    finally:
        processes.close()


async def until(condition: Any, what: str, limit: float = WAIT) -> None:
    with trio.move_on_after(limit):
        while not condition():
            await trio.sleep(0.01)
        return
    raise AssertionError(f"timed out waiting for {what}")


class Watcher(Actor):
    """Watches the actors it is told to (``["watch", url]``) and records all it gets."""

    def __init__(self, seen: list[Any]) -> None:
        self.seen = seen

    async def receive(self, msg: Any) -> Any:
        if isinstance(msg, list) and msg and msg[0] == "watch":
            self.ctx.watch(self.ctx.system.ref(msg[1]))
            return None
        self.seen.append(msg)
        return None


@asynccontextmanager
async def local_node(
    procs: Processes, seen: list[Any] | None = None, down_after: float = DOWN_AFTER
) -> AsyncIterator[tuple[runtime.System, list[runtime.Event]]]:
    """This process's node, with `/here/watcher` (recording into `seen`), and the
    ``system.cluster.>`` events it saw."""
    seen = seen if seen is not None else []
    name = fresh("here")
    tree = Supervisor("here", children=[runtime.child(Watcher, name="watcher", args=(seen,))])
    async with runtime.open_system(
        tree,
        name=name,
        node=name,
        cluster=procs.server.url,
        cluster_name=procs.cluster_name,
        heartbeat=HEARTBEAT,
        node_down_after=down_after,
    ) as system:
        events: list[runtime.Event] = []
        system.bus.subscribe("system.cluster.>")(events.append)
        yield system, events


def info(system: runtime.System, node: str) -> Any:
    found = [i for i in system.cluster.nodes() if i.name == node]
    return found[0] if found else None


def topics(events: list[runtime.Event], node: str) -> list[str]:
    return [e.topic for e in events if e.payload.get("node") == node]


async def started(system: runtime.System, node: NodeProcess, name: str) -> None:
    await node.ready()
    await until(
        lambda: system.cluster.is_up(name) and info(system, name).incarnation == node.incarnation,
        f"{name} up as {node.incarnation}",
    )


async def test_a_killed_node_is_down_for_its_watchers_asks_and_members(
    procs: Processes,
) -> None:
    with trio.fail_after(WAIT * 2):
        seen: list[Any] = []
        async with local_node(procs, seen) as (here, events):
            name = fresh("b")
            node = procs.script(name)
            await started(here, node, name)
            echo = here.ref(f"troupe://{name}/app/echo")
            assert (await echo.ask("whoami"))["pid"] == node.pid
            here.ref("/here/watcher").tell(["watch", f"troupe://{name}/app/tree"])
            await trio.sleep(0.3)  # the watch crossed (without it: NodeDown all the same)
            node.signal(signal.SIGKILL)
            assert await node.exited() == -signal.SIGKILL
            # fails fast: NATS says nobody listens, or the node is known to be down
            with trio.fail_after(WAIT / 2):
                with pytest.raises(runtime.NodeDown):
                    await echo.ask("after", timeout=60.0)
            await until(lambda: len(seen) >= 1, "Terminated")
            await until(lambda: info(here, name).status == "down", "status down")
            await until(lambda: "system.cluster.node_down" in topics(events, name), "event")
            assert not here.cluster.is_up(name)
            with pytest.raises(runtime.NodeDown):  # known down: at once
                await echo.ask("again", timeout=60.0)
            await trio.sleep(3 * HEARTBEAT)
            assert len(seen) == 1, seen
            terminated = seen[0]
            assert isinstance(terminated, runtime.Terminated)
            assert terminated.ref.url == f"troupe://{name}/app/tree"
            assert isinstance(terminated.reason, runtime.NodeDown)
            assert terminated.reason.node == name
            assert topics(events, name).count("system.cluster.node_down") == 1
            # a tell to a down node is dead-lettered here, `undeliverable`
            before = here.dead_letters.counts["undeliverable"]
            echo.tell("lost")
            assert here.dead_letters.counts["undeliverable"] == before + 1


async def test_a_killed_node_restarted_at_once_is_a_new_incarnation(procs: Processes) -> None:
    with trio.fail_after(WAIT * 2):
        seen: list[Any] = []
        async with local_node(procs, seen) as (here, events):
            name = fresh("b")
            first = procs.script(name)
            await started(here, first, name)
            here.ref("/here/watcher").tell(["watch", f"troupe://{name}/app/echo"])
            await trio.sleep(0.3)
            first.signal(signal.SIGKILL)
            await first.exited()
            second = procs.script(name)  # at once: "no responders", the name is free
            await started(here, second, name)
            assert second.incarnation != first.incarnation
            assert info(here, name).pid == second.pid
            echo = here.ref(f"troupe://{name}/app/echo")
            me = await echo.ask("whoami")
            assert (me["pid"], me["incarnation"]) == (second.pid, second.incarnation)
            assert await here.ref(f"troupe://{name}/app/counter").ask("count") == {
                "handled": 0,
                "in_order": True,
                "last": None,
            }
            # the old incarnation went down once (silent, or replaced), the new came up
            await until(lambda: len(seen) == 1, "Terminated for the old incarnation")
            assert isinstance(seen[0], runtime.Terminated)
            assert isinstance(seen[0].reason, runtime.NodeDown)
            assert seen[0].reason.incarnation == first.incarnation
            ups = [e for e in events if e.topic == "system.cluster.node_up"]
            assert [e.payload["incarnation"] for e in ups if e.payload["node"] == name] == [
                first.incarnation,
                second.incarnation,
            ]
            assert topics(events, name).count("system.cluster.node_down") == 1
            await trio.sleep(3 * HEARTBEAT)
            assert len(seen) == 1


async def test_a_frozen_node_is_declared_down_and_rejoins_as_a_new_incarnation(
    procs: Processes,
) -> None:
    with trio.fail_after(WAIT * 2):
        seen: list[Any] = []
        async with local_node(procs, seen) as (here, events):
            name = fresh("f")
            node = procs.script(name)
            await started(here, node, name)
            old = node.incarnation
            watcher = here.ref("/here/watcher")
            watcher.tell(["watch", f"troupe://{name}/app/tree/a"])
            # the ticker there tells the watcher ["tick", its incarnation, n] all along
            await here.ref(f"troupe://{name}/app/ticker").ask(["tick_to", watcher, 0.02])
            await until(lambda: any(isinstance(m, list) for m in seen), "ticks")
            node.signal(signal.SIGSTOP)
            try:
                await until(lambda: info(here, name).status == "down", "declared down")
                await until(
                    lambda: any(isinstance(m, runtime.Terminated) for m in seen), "Terminated"
                )
                with pytest.raises(runtime.NodeDown):
                    await here.ref(f"troupe://{name}/app/echo").ask("frozen", timeout=60.0)
            finally:
                node.signal(signal.SIGCONT)
            await until(
                lambda: here.cluster.is_up(name) and info(here, name).incarnation != old,
                "rejoined as a new incarnation",
            )
            me = await here.ref(f"troupe://{name}/app/echo").ask("whoami")
            assert me["pid"] == node.pid  # the same process, its actors still running
            assert me["incarnation"] == info(here, name).incarnation != old
            assert node.proc.poll() is None
            new = me["incarnation"]
            await until(lambda: any(m[1] == new for m in seen if isinstance(m, list)), "new ticks")
            # exactly one Terminated, NodeDown for the old incarnation, and no tick of
            # the old incarnation delivered after it
            terminations = [i for i, m in enumerate(seen) if isinstance(m, runtime.Terminated)]
            assert len(terminations) == 1
            reason = seen[terminations[0]].reason
            assert isinstance(reason, runtime.NodeDown)
            assert reason.incarnation == old
            after = [m for m in seen[terminations[0] :] if isinstance(m, list)]
            assert after, "ticks after the rejoin"
            assert {m[1] for m in after} == {new}, "a tick of the old incarnation came through"
            ticks = [m[2] for m in seen if isinstance(m, list)]
            assert ticks == sorted(ticks)  # FIFO, across the rejoin too
            node_events = topics(events, name)
            assert node_events.count("system.cluster.node_down") == 1
            assert node_events.count("system.cluster.node_up") == 2


async def count_of(ref: runtime.ActorRef) -> tuple[dict[str, Any], int]:
    """The counter's answer to ``"count"``, and how many asks its full mailbox refused."""
    refused = 0
    while True:
        try:
            return await ref.ask("count", timeout=WAIT), refused
        except runtime.MailboxFull:
            refused += 1
            await trio.sleep(0.05)


async def test_tells_across_processes_are_all_accounted_for_in_order(procs: Processes) -> None:
    n = 2_000
    with trio.fail_after(WAIT * 2):
        async with local_node(procs) as (here, _events):
            name = fresh("c")
            node = procs.script(name)
            await started(here, node, name)
            before = (await here.cluster.snapshot())[name]
            for target in ("counter", "tiny"):  # tiny: a mailbox of 100, so some overflow
                url = f"troupe://{name}/app/{target}"
                ref = here.ref(url)
                sent_dead = here.dead_letters.by_recipient.get(url, 0)
                for i in range(n):
                    ref.tell(i)
                    if i % 500 == 0:
                        await trio.sleep(0)
                count, refused = await count_of(ref)
                sent_dead = here.dead_letters.by_recipient.get(url, 0) - sent_dead
                after = (await here.cluster.snapshot())[name]
                received_dead = (
                    sum(
                        after.dead_letters[r] - before.dead_letters[r]
                        for r in ("overflow", "undeliverable")
                    )
                    - refused
                )  # the asks "count" the full mailbox refused were dead-lettered
                assert after.cluster is not None
                lost = after.cluster["peers"][here.node]["lost_in_transit"]
                assert count["handled"] + sent_dead + received_dead + lost == n, (
                    target,
                    count,
                    sent_dead,
                    received_dead,
                    lost,
                )
                assert count["in_order"], target
                before = after
            # the small mailbox did overflow: the count above covered a real loss
            assert before.dead_letters["overflow"] > 0


async def test_a_node_name_held_by_a_live_node_fails_the_start(procs: Processes) -> None:
    with trio.fail_after(WAIT * 2):
        name = fresh("dup")
        first = procs.script(name)
        await first.ready()
        for second in (procs.script(name), procs.cli(name)):
            code = await second.exited()
            assert code != 0
            assert "ClusterError" in second.stderr
            assert f"the node name {name!r} is taken" in second.stderr
            assert second.ready_line is None
        assert first.proc.poll() is None  # the live node is untouched


# -- accounting at the edges: no responders, rejoins ----------------------------------
async def gone_from(server: NatsServer, node: str) -> None:
    """Wait until the NATS server has seen the killed `node`'s connection close: a
    request published before that finds its subscription still there, so no "no
    responders" answer comes (the ask would wait for node_down_after instead)."""
    await until(lambda: f"troupe {node}" not in server.client_names(), f"{node} gone from NATS")


async def test_tells_to_a_node_nobody_listens_on_are_dead_lettered(procs: Processes) -> None:
    with trio.fail_after(WAIT * 2):
        # node_down_after long: the node stays "up" here for the whole test (even on a
        # loaded machine, where a few seconds pass between the kill and the last check)
        async with local_node(procs, down_after=60.0) as (here, _events):
            name = fresh("k")
            node = procs.script(name)
            await started(here, node, name)
            node.signal(signal.SIGKILL)
            await node.exited()
            await gone_from(procs.server, name)
            url = f"troupe://{name}/app/counter"
            ref = here.ref(url)
            with pytest.raises(runtime.NodeDown):  # NATS knows nobody listens there now
                await ref.ask("count", timeout=60.0)
            assert here.cluster.is_up(name)  # not known down yet: the tells go out
            undecodable = here.cluster.undecodable
            before = here.dead_letters.by_recipient.get(url, 0)
            for i in range(20):
                ref.tell(i)
            with trio.move_on_after(WAIT):  # ends when the 20 are in
                while here.dead_letters.by_recipient.get(url, 0) - before < 20:
                    await trio.sleep(0.01)
            assert here.cluster.is_up(name)
            dead = here.dead_letters.by_recipient.get(url, 0) - before
            assert (dead, here.cluster.undecodable - undecodable) == (20, 0)


async def test_no_responders_for_a_tell_dead_letters_that_tell_and_no_other(
    procs: Processes,
) -> None:
    with trio.fail_after(WAIT * 2):
        async with local_node(procs, down_after=60.0) as (here, _events):
            alive, dead = fresh("y"), fresh("x")
            first = procs.script(alive, node_down_after=60.0)  # here stays up for it too
            await started(here, first, alive)  # seen first: first in the peers' order
            second = procs.script(dead)
            await started(here, second, dead)
            alive_url = f"troupe://{alive}/app/counter"
            dead_url = f"troupe://{dead}/app/counter"
            for i in range(5):
                here.ref(alive_url).tell(i)
            assert (await here.ref(alive_url).ask("count"))["handled"] == 5
            second.signal(signal.SIGKILL)
            await second.exited()
            await gone_from(procs.server, dead)
            with pytest.raises(runtime.NodeDown):  # NATS knows nobody listens there now
                await here.ref(dead_url).ask("count", timeout=60.0)
            letters = here.dead_letters.by_recipient
            base = {url: letters.get(url, 0) for url in (dead_url, alive_url)}

            def new_letters(url: str) -> int:
                return letters.get(url, 0) - base[url]

            for i in range(5):
                here.ref(dead_url).tell(i)
            with trio.move_on_after(WAIT):  # ends when the 5 are in
                while new_letters(dead_url) + new_letters(alive_url) < 5:
                    await trio.sleep(0.01)
            await trio.sleep(0.2)
            assert here.cluster.is_up(dead)
            assert (new_letters(dead_url), new_letters(alive_url)) == (5, 0)


async def test_lost_in_transit_survives_a_rejoin(procs: Processes) -> None:
    with trio.fail_after(WAIT * 2):
        async with local_node(procs) as (here, _events):
            name = fresh("r")
            node = procs.script(name)
            await started(here, node, name)
            counter = here.ref(f"troupe://{name}/app/counter")

            async def lost() -> int:
                snapshot = (await here.cluster.snapshot())[name]
                assert snapshot.cluster is not None
                return int(snapshot.cluster["peers"][here.node]["lost_in_transit"])

            async def tell_losing_one(count: int) -> None:
                for i in range(count):
                    if i == count // 2:  # one message lost inside NATS: a gap in the numbers
                        here.cluster._peers[name].seq += 1
                    counter.tell(i)
                await counter.ask("count")

            await tell_losing_one(20)
            assert await lost() == 1  # counted
            node.signal(signal.SIGSTOP)
            try:
                await until(lambda: info(here, name).status == "down", "declared down")
            finally:
                node.signal(signal.SIGCONT)
            await until(
                lambda: (
                    here.cluster.is_up(name) and info(here, name).incarnation != node.incarnation
                ),
                "rejoined",
            )
            await tell_losing_one(4)
            assert await lost() == 2  # the one before the freeze, and the one after

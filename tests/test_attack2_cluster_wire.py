"""Second attack pass on the cluster's wire: what a node sends back must always fit the
NATS server's max_payload (a crash with a huge message, a huge stop reason), and the
errors a sender gets stay readable.  A real nats-server; real time with generous bounds,
counts and types, never durations."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from natsserver import NatsServer
from test_cluster import Watcher, pair, until
from test_cluster_hostile import spoof

import runtime
from runtime import Actor, child
from runtime.cluster import envelope as env
from runtime.cluster.client import ClusterClient

WAIT = 20.0
HUGE = 700_000  # characters: three copies (message, traceback, text) pass 1 MiB


class Explodes(Actor):
    """Crashes on every message with an error whose message is `HUGE` characters."""

    async def receive(self, msg: Any) -> Any:
        raise ValueError("x" * HUGE)


async def watched_crasher(
    a: runtime.System, b: runtime.System, crasher: type[Actor], seen: list[Any]
) -> str:
    """Start `crasher` as /app/boom on b, watched from a by a `Watcher` that keeps what
    it is told in `seen`, once the watch has reached b; returns boom's URL."""
    await b.start_child("/app", child(crasher, name="boom", restart="temporary"))
    url = f"troupe://{b.node}/app/boom"
    await a.start_child("/app", child(Watcher, name="watcher", args=(url, seen)))
    await until(lambda: b.cluster._watched_by.get("/app/boom"), "the watch arrived")
    return url


async def test_a_crash_with_a_huge_message_still_reaches_the_remote_asker_and_watcher(
    nats_server: NatsServer,
) -> None:
    """DESIGN: "A remote crash gives `ActorCrashed` whose `__cause__` is a `RemoteError`
    carrying type, message and traceback text", and a remote watch "delivers exactly one
    `Terminated`".  An error whose text is larger than max_payload made the answer (and
    the TERMINATED notice) fail to publish: it was dropped silently, the asker got
    `AskTimeout` after its whole timeout and the watcher never heard of the stop.  Now
    the texts are cut to fit and say so."""
    seen: list[Any] = []
    with trio.fail_after(WAIT):
        async with pair(nats_server) as (a, b):
            url = await watched_crasher(a, b, Explodes, seen)
            with pytest.raises(runtime.ActorCrashed) as info:
                await a.ref(url).ask("go", timeout=WAIT / 2)
            cause = info.value.__cause__
            assert isinstance(cause, runtime.RemoteError)
            assert cause.type == "ValueError"
            assert cause.message.startswith("xxxx") and "cut" in cause.message
            assert len(cause.message) < HUGE and len(str(info.value)) < HUGE
            assert "ValueError" in cause.traceback
            await until(lambda: seen, "Terminated for the watcher")
            (terminated,) = seen
            assert isinstance(terminated, runtime.Terminated)
            assert isinstance(terminated.reason, runtime.RemoteError)
            assert terminated.reason.type == "ValueError"


async def test_an_envelope_over_max_payload_names_a_bounded_url(nats_server: NatsServer) -> None:
    """The NotSerializable for an envelope over max_payload "names its size and the
    limit"; it printed the whole recipient URL, so a path of a megabyte made an error
    text of a megabyte.  The URL is cut."""
    with trio.fail_after(WAIT):
        async with pair(nats_server) as (a, b):
            limit = a.cluster._transport.max_payload
            ref = a.ref(f"troupe://{b.node}/app/" + "p" * limit)
            for call in (lambda: ref.tell("x"), lambda: ref.ask("x")):
                with pytest.raises(runtime.NotSerializable) as info:
                    result = call()
                    if result is not None:
                        await result
                text = str(info.value)
                assert len(text) < 1_000, len(text)
                assert f"{limit:,}" in text and b.node in text


class Explodes5k(Actor):
    async def receive(self, msg: Any) -> Any:
        raise ValueError("y" * 5_000)


async def test_a_crash_over_a_small_max_payload_still_reaches_asker_and_watcher() -> None:
    """On a server with a small max_payload (4 KiB) even the bounded texts of an error do
    not fit: the asker still gets `ActorCrashed` (saying the answer was too large), not
    `AskTimeout` after its whole timeout, and the watcher its `Terminated`."""
    seen: list[Any] = []
    with NatsServer(max_payload=4096) as server, trio.fail_after(WAIT):
        async with pair(server) as (a, b):
            url = await watched_crasher(a, b, Explodes5k, seen)
            with pytest.raises(runtime.ActorCrashed) as info:
                await a.ref(url).ask("go", timeout=WAIT / 2)
            assert isinstance(info.value.__cause__, runtime.RemoteError)
            assert "max_payload" in info.value.__cause__.message
            await until(lambda: seen, "Terminated for the watcher")
            assert isinstance(seen[0].reason, runtime.RemoteError)
            assert seen[0].reason.type == "ValueError"


async def test_a_heartbeat_with_a_huge_host_does_not_break_nodes_for_plain_clients(
    nats_server: NatsServer,
) -> None:
    """A heartbeat's ``host`` is a host name (at most 253 characters): two of 600 KB
    (a hostile or broken client on the node's subjects) were kept whole, so every answer
    to ``troupe ls --cluster`` (the ``nodes`` request) was over max_payload and became an
    error for as long as that peer was remembered.  The host is cut."""
    with trio.fail_after(WAIT):
        async with pair(nats_server) as (_a, b):
            subject = f"{b.cluster.cluster_name}.node.{b.node}.s"
            info = {"host": "h" * 600_000, "pid": 1, "started": 0.0, "actors": 1}
            beats = [
                (subject, env.pack(env.HEARTBEAT, name, "i1", info, False))
                for name in ("bighost", "bighost2")
            ]
            await spoof(nats_server, beats)
            await until(lambda: "bighost2" in b.cluster._peers, "the heartbeats arrived")

            def ls() -> list[dict[str, Any]]:
                with ClusterClient(nats_server.url, b.cluster.cluster_name) as client:
                    return client.nodes(via=b.node)

            names = {n["name"]: n for n in await trio.to_thread.run_sync(ls)}
            assert len(names["bighost"]["host"]) <= 253

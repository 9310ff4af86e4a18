"""Second attack pass on the cluster: a NATS server killed and restarted under two running
nodes while asks and sends wait for their answers.  A real nats-server of the test's
own; real time with generous bounds, never durations."""

from __future__ import annotations

from typing import Any

import trio
from natsserver import NatsServer
from test_cluster import fresh, until

import runtime
from runtime import Actor, Supervisor, child

WAIT = 30.0


class Gate(Actor):
    """Holds ``"hold"`` until the test opens its gate; a mailbox of one, blocking."""

    mailbox = runtime.Mailbox(capacity=1, overflow="block")

    def __init__(self, gate: trio.Event) -> None:
        self.gate = gate

    async def receive(self, msg: Any) -> Any:
        if msg == "hold":
            await self.gate.wait()
        return msg


def options(cluster: str, url: str) -> dict[str, Any]:
    return {
        "cluster": url,
        "cluster_name": cluster,
        "heartbeat": 0.2,
        "node_down_after": WAIT,  # nobody is declared down: the outage is the NATS server's
        "nats_options": {"reconnect_time_wait": 0.1},
    }


async def test_answers_made_while_the_answering_node_was_disconnected_still_arrive(
    fresh_nats_server: NatsServer,
) -> None:
    """`await ref.send(msg)` "returns once the remote mailbox has accepted the message",
    and an ask gets its answer or fails typed, "never silently".  The answering node's
    acknowledgement of a send (and its answer to an ask) made while its NATS connection
    was down was dropped: the send waited forever (it has no timeout) although the
    message was handled, and both nodes stayed up.  Now such answers are kept and sent
    once the node has reconnected."""
    server = fresh_nats_server
    cluster = fresh("out")
    gate = trio.Event()
    tree = Supervisor("app", children=[child(Gate, name="gate", args=(gate,))])
    results: dict[str, Any] = {}
    with trio.fail_after(WAIT):
        async with (
            runtime.open_system(
                Supervisor("app"), node=f"{cluster}-a", **options(cluster, server.url)
            ) as a,
            runtime.open_system(tree, node=f"{cluster}-b", **options(cluster, server.url)) as b,
        ):
            await until(lambda: a.cluster.is_up(b.node) and b.cluster.is_up(a.node), "up")
            ref = a.ref(f"troupe://{b.node}/app/gate")
            ref.tell("hold")
            info = lambda: b.snapshot().find("/app/gate")  # noqa: E731
            await until(lambda: info().current is not None, "the gate holds")

            async def ask() -> None:
                results["ask"] = await ref.ask("q", timeout=WAIT)

            async def send() -> None:
                await ref.send("s")
                results["send"] = "accepted"

            async with trio.open_nursery() as nursery:
                nursery.start_soon(ask)
                await until(lambda: info().mailbox_depth == 1, "the ask queued at b")
                nursery.start_soon(send)
                await until(lambda: len(a.cluster._asks) == 2, "both waiting")
                await trio.to_thread.run_sync(server.kill)
                await until(lambda: not b.cluster.stats()["connected"], "b sees the outage")
                gate.set()  # b answers both while it cannot reach NATS
                await until(lambda: info().processed == 3, "hold, q and s handled at b")
                await trio.to_thread.run_sync(server.restart)
            assert results == {"ask": "q", "send": "accepted"}
            assert not a.cluster._asks

"""Node `data` of the cluster demo: the data-sync daemon and the metrics thread.

    troupe run examples/cluster/data_node.py --node data --cluster nats://127.0.0.1:4222 \\
        --cluster-topics 'data.>' 'training.>' 'model.>'

- `data-sync` (a Daemon) pulls a batch every 2 s through the thread bridge `io`
  and publishes it as a `Batch` on ``data.synced``, a cluster topic: the
  trainer on node `training` gets it.  Every 7th pull fails on purpose (the
  daemon crashes, its supervisor restarts it, the upstream cursor carries on);
- `metrics-feed` owns a plain thread that tells `Sample`s to the dashboard on
  node `registry` through a remote ref (`system.ref("troupe://registry/...")`).
"""

from __future__ import annotations

import itertools
import random
import threading

from shared import DASHBOARD, DATA_INTERVAL, Announcer, Batch, Ready, Sample, pull_batch, say

import runtime
from actors import Daemon
from runtime import Actor, Bridge, Supervisor, child

UPSTREAM = itertools.count(1)
"""The upstream's cursor: it lives outside the actor, so a restarted daemon carries on."""


class DataSync(Daemon):
    interval = DATA_INTERVAL

    async def tick(self) -> None:
        number = next(UPSTREAM)
        if number % 7 == 0:
            raise ConnectionError(f"upstream timed out on batch {number} (injected fault)")
        rows = await self.ctx.run_blocking(pull_batch, number, timeout=10.0, bridge="/pipeline/io")
        await self.ctx.publish("data.synced", Batch(number, rows))


class MetricsFeed(Actor):
    """Owns a plain thread (think: a legacy library's callback thread) that pushes
    samples to an actor on another node."""

    async def on_start(self) -> None:
        self.stop_flag = threading.Event()
        dashboard = self.ctx.system.ref(DASHBOARD)  # a RemoteRef: tell works from any thread

        def feed() -> None:  # a foreign thread: only thread-safe calls in here
            while not self.stop_flag.wait(0.5):
                try:
                    dashboard.tell(Sample("queue_depth", random.random() * 10))
                except runtime.RuntimeClosed:
                    return

        self.thread = threading.Thread(target=feed, name="metrics-feed", daemon=True)
        self.thread.start()
        say(f"metrics-feed: a plain thread tells samples to {DASHBOARD}")

    async def on_stop(self, reason: runtime.ExitReason) -> None:
        self.stop_flag.set()
        await self.ctx.run_blocking(self.thread.join, 5.0)


tree = Supervisor(
    "pipeline",
    strategy="one_for_one",
    max_restarts=10,
    within=30.0,
    children=[
        child(Announcer, name="announcer"),
        child(Bridge, name="io", kwargs={"mode": "thread", "max_workers": 2}),
        child(DataSync, name="data-sync"),
        child(MetricsFeed, name="metrics-feed"),
        child(Ready, name="ready"),
    ],
)

"""What the three nodes of the cluster demo share: the messages that cross the
wire (registered on every node under the same tags), the node and actor URLs,
the demo's pace, and `Announcer`, which prints one line per notable event.

Each node script imports this module as ``shared`` (``troupe run`` puts the
script's folder on ``sys.path``); it also puts ``examples/`` there and
re-exports the blocking and CPU-bound work of the single-process demo
(``pipeline_work``: worker processes find it there too).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import attrs

import runtime
from runtime import Actor, Event, wire

_EXAMPLES = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _EXAMPLES not in sys.path:  # process-bridge workers inherit sys.path (spawn)
    sys.path.insert(0, _EXAMPLES)

from pipeline_work import evaluate, pull_batch, train_step  # noqa: E402 - after the path

__all__ = ["evaluate", "pull_batch", "train_step"]  # re-exported for the node scripts

FAST = os.environ.get("TROUPE_DEMO_FAST", "") not in ("", "0")
"""The accelerated pace (``run.py --fast``, the test): batches every 0.5 s, not 2 s."""
DATA_INTERVAL = 0.5 if FAST else 2.0
DASHBOARD_EVERY = 2.0 if FAST else 5.0

# Where things live: refs cross nodes as these URLs.
MODEL_REGISTRY = "troupe://registry/pipeline/models/model-registry"
WATCHDOG = "troupe://registry/pipeline/watchdog"
DASHBOARD = "troupe://registry/pipeline/dashboard"

CLUSTER_TOPICS = ("data.>", "training.>", "model.>")
"""The bus topics shared by every node (``troupe run --cluster-topics``)."""


# -- the messages that cross the wire: registered below, on every node, same tags --
@attrs.frozen
class Batch:
    """A batch of training rows, published by `data` on ``data.synced``."""

    number: int
    rows: list[float]


@attrs.frozen
class Model:
    """A trained model, published by `training` on ``training.done``."""

    version: int
    weight: float
    loss: float
    batch: int


@attrs.frozen
class Scored:
    """A model and its score, published by `registry` on ``model.promoted`` /
    ``model.rolled_back``."""

    model: Model
    score: float


@attrs.frozen
class Resume:
    """Asked of the model registry by a (re)started trainer: where to carry on from."""


@attrs.frozen
class ResumeFrom:
    """The registry's answer: the promoted model (if any) and the next version number."""

    promoted: Model | None
    next_version: int


@attrs.frozen
class Hello:
    """A trainer introducing itself to the registry's watchdog (a ref crosses as its URL)."""

    trainer: runtime.ActorRef


@attrs.frozen
class Sample:
    """A reading pushed from the metrics thread on `data` to the dashboard on `registry`."""

    name: str
    value: float


for _cls in (Batch, Model, Scored, Resume, ResumeFrom, Hello, Sample):
    wire.register(_cls, tag=f"cluster-demo.{_cls.__name__}")


def say(text: str) -> None:
    """One line on stdout (the launcher prefixes it with the time and the node)."""
    print(text, flush=True)


class Announcer(Actor):
    """Prints one line for each notable runtime event on this node: other nodes
    going up and down, actors crashing and their supervisors restarting them."""

    subscriptions = (
        "system.cluster.node_up",
        "system.cluster.node_down",
        "system.actor.crashed",
        "system.actor.restarted",
    )

    async def receive(self, msg: Any) -> Any:
        match msg:
            case Event(topic="system.cluster.node_up", payload=p):
                say(f"node_up: {p['node']} (incarnation {p['incarnation']})")
            case Event(topic="system.cluster.node_down", payload=p):
                say(f"node_down: {p['node']} (incarnation {p['incarnation']}: {p['reason']})")
            case Event(topic="system.actor.crashed", payload=p):
                say(f"crashed: {p['path']}: {p['error']}")
            case Event(topic="system.actor.restarted", payload=p):
                say(f"healed: {p['path']} restarted by its supervisor (restart {p['restarts']})")
            case _:
                return runtime.UNHANDLED


class Ready(Actor):
    """Started last: says the node's tree is up (the launcher waits for this line)."""

    async def on_start(self) -> None:
        cluster = self.ctx.system.cluster
        incarnation = cluster.incarnation if cluster is not None else "-"
        say(f"ready: pid {os.getpid()}, incarnation {incarnation}")

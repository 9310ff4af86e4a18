"""Node `training` of the cluster demo: the trainer and its process bridge.

    troupe run examples/cluster/training_node.py --node training \\
        --cluster nats://127.0.0.1:4222 --cluster-topics 'data.>' 'training.>' 'model.>'

- `trainer` reacts to ``data.synced`` (published on node `data`), runs the
  CPU-bound training step in the process bridge `cpu`, and publishes each new
  `Model` on ``training.done`` (the evaluator on node `registry` gets it);
- when it starts, and whenever node `registry` comes up, it asks the model
  registry where to carry on from (a remote ask, `Resume`: a trainer restarted
  with its node carries on from the promoted model) and introduces itself to
  the registry's watchdog (`Hello`: its ref crosses as its URL).

This is the node the launcher (`run.py`) kills with SIGKILL and restarts.
"""

from __future__ import annotations

from typing import Any

import attrs
from shared import (
    MODEL_REGISTRY,
    WATCHDOG,
    Announcer,
    Batch,
    Hello,
    Model,
    Ready,
    Resume,
    say,
    train_step,
)

import runtime
from runtime import Actor, Bridge, Event, Supervisor, child


@attrs.frozen
class Introduce:
    """Local only (never crosses): introduce this trainer to the registry node."""


class Trainer(Actor):
    subscriptions = ("data.synced", "system.cluster.node_up")

    def __init__(self, epochs: int = 5) -> None:
        self.epochs = epochs
        self.weight = 0.0
        self.next_version = 1

    async def on_start(self) -> None:
        cluster = self.ctx.system.cluster
        if cluster is not None and cluster.is_up("registry"):
            self.ctx.ref.tell(Introduce())  # else: when node_up says it is there

    async def receive(self, msg: Any) -> Any:
        match msg:
            case Event(topic="data.synced", payload=Batch(number=number, rows=rows)):
                self.weight, loss = await self.ctx.run_blocking(
                    train_step, self.weight, rows, self.epochs, bridge="/pipeline/cpu"
                )
                model = Model(self.next_version, self.weight, loss, number)
                self.next_version += 1
                await self.ctx.publish("training.done", model)
            case Event(topic="system.cluster.node_up", payload={"node": "registry"}):
                await self.introduce()
            case Event(topic="system.cluster.node_up"):
                pass
            case Introduce():
                await self.introduce()
            case _:
                return runtime.UNHANDLED

    async def introduce(self) -> None:
        """Ask the registry where to resume, and have its watchdog watch this trainer.

        A node is seen up as soon as it joined the cluster, which is before its
        tree started: an `ActorNotFound` then means "not yet", so try again soon.
        """
        system = self.ctx.system
        try:
            where = await system.ref(MODEL_REGISTRY).ask(Resume(), timeout=5.0)
            await system.ref(WATCHDOG).ask(Hello(self.ctx.ref), timeout=5.0)
        except runtime.ActorNotFound:
            self.ctx.send_after(0.2, Introduce())
            return
        except runtime.TroupeError as error:  # NodeDown (node_up brings us back), AskTimeout...
            why = f"{type(error).__name__}: {error}"
            say(f"trainer: could not reach the registry: {why}")
            return
        self.next_version = max(self.next_version, where.next_version)
        if where.promoted is not None and self.weight == 0.0:
            self.weight = where.promoted.weight
            say(
                f"trainer: resuming from promoted v{where.promoted.version} "
                f"(asked {MODEL_REGISTRY}); next version v{self.next_version}"
            )
        else:
            say(f"trainer: starting at v{self.next_version}")


tree = Supervisor(
    "pipeline",
    strategy="one_for_one",
    max_restarts=10,
    within=30.0,
    children=[
        child(Announcer, name="announcer"),
        child(Bridge, name="cpu", kwargs={"mode": "process", "max_workers": 2}),
        child(Trainer, name="trainer"),
        child(Ready, name="ready"),
    ],
)

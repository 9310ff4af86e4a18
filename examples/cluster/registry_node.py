"""Node `registry` of the cluster demo: the model registry, the evaluator, the
watchdog and the dashboard.

    troupe run examples/cluster/registry_node.py --node registry \\
        --cluster nats://127.0.0.1:4222 --cluster-topics 'data.>' 'training.>' 'model.>'

- under `models` (rest_for_one): `evaluator` scores each `Model` published on
  ``training.done`` by node `training` (it crashes on purpose now and then) and
  tells the score to `model-registry`, which promotes a better model and rolls
  back a worse one (``model.promoted`` / ``model.rolled_back``, cluster topics)
  and answers a (re)started trainer's `Resume` ask;
- `watchdog` watches the trainer on node `training` (`ctx.watch` on a remote
  ref, given by the trainer's `Hello`): when that node dies it gets
  `Terminated(ref, NodeDown(...))`;
- `dashboard` prints one status line every 5 s: the nodes as this one sees
  them (`system.cluster.nodes()`), the pipeline's progress, the samples the
  thread on node `data` pushes in, and restarts and dead letters summed over
  every live node (`await system.cluster.snapshot()`).
"""

from __future__ import annotations

import random
from typing import Any

import attrs
from shared import (
    DASHBOARD_EVERY,
    Announcer,
    Hello,
    Model,
    Ready,
    Resume,
    ResumeFrom,
    Sample,
    Scored,
    evaluate,
    say,
)

import runtime
from runtime import Actor, Event, NodeDown, Supervisor, Terminated, child


@attrs.frozen
class Status:
    """Local only: the dashboard's tick."""


class Evaluator(Actor):
    subscriptions = ("training.done",)

    async def receive(self, msg: Any) -> Any:
        match msg:
            case Event(topic="training.done", payload=Model() as model, node=node):
                if random.random() < 0.1:
                    raise RuntimeError(
                        f"evaluator lost its test set at v{model.version} (injected fault)"
                    )
                score = await self.ctx.run_blocking(evaluate, model.weight, model.version)
                self.ctx.system.ref("/pipeline/models/model-registry").tell(
                    (Scored(model, score), node)
                )
            case _:
                return runtime.UNHANDLED


class ModelRegistry(Actor):
    def __init__(self) -> None:
        self.current: Scored | None = None
        self.latest = 0
        self.promotions = 0
        self.rollbacks = 0

    async def receive(self, msg: Any) -> Any:
        match msg:
            case (Scored(model=model, score=score) as scored, node):
                self.latest = max(self.latest, model.version)
                if self.current is None or score >= self.current.score:
                    self.current = scored
                    self.promotions += 1
                    await self.ctx.publish("model.promoted", scored)
                    say(
                        f"registry: promoted v{model.version} (score {score:.4f}, "
                        f"batch {model.batch}, trained on node {node})"
                    )
                else:
                    self.rollbacks += 1
                    await self.ctx.publish("model.rolled_back", scored)
                    say(
                        f"registry: rolled back v{model.version} (score {score:.4f} < "
                        f"{self.current.score:.4f}); v{self.current.model.version} stays"
                    )
            case Resume():
                promoted = None if self.current is None else self.current.model
                return ResumeFrom(promoted, self.latest + 1)
            case _:
                return runtime.UNHANDLED

    def snapshot_stats(self) -> dict[str, Any]:
        version = self.current.model.version if self.current else None
        return {"version": version, "promoted": self.promotions, "rollbacks": self.rollbacks}


class Watchdog(Actor):
    """Watches the trainer on another node: one `Terminated` when it is gone."""

    def __init__(self) -> None:
        self.watching: runtime.ActorRef | None = None

    async def receive(self, msg: Any) -> Any:
        match msg:
            case Hello(trainer=trainer):
                if self.watching != trainer:
                    self.watching = trainer
                    self.ctx.watch(trainer)
                    say(f"watchdog: watching {trainer.url}")
                return "watching"
            case Terminated(ref=ref, reason=NodeDown() as reason):
                self.watching = None
                say(f"watchdog: Terminated(NodeDown) for {ref.url}: {reason}")
            case Terminated(ref=ref, reason=reason):
                self.watching = None
                say(f"watchdog: Terminated for {ref.url}: {reason!r}")
            case _:
                return runtime.UNHANDLED


class Dashboard(Actor):
    subscriptions = ("data.synced", "training.done", "model.promoted", "model.rolled_back")

    def __init__(self) -> None:
        self.batches = 0
        self.models = 0
        self.loss: float | None = None
        self.promoted = 0
        self.rolled_back = 0
        self.samples = 0

    async def on_start(self) -> None:
        self.ctx.every(DASHBOARD_EVERY, Status())

    async def receive(self, msg: Any) -> Any:
        match msg:
            case Sample():
                self.samples += 1
            case Event(topic="data.synced"):
                self.batches += 1
            case Event(topic="training.done", payload=Model(loss=loss)):
                self.models += 1
                self.loss = loss
            case Event(topic="model.promoted"):
                self.promoted += 1
            case Event(topic="model.rolled_back"):
                self.rolled_back += 1
            case Status():
                await self.report()
            case _:
                return runtime.UNHANDLED

    async def report(self) -> None:
        cluster = self.ctx.system.cluster
        nodes = "  ".join(f"{n.name} {n.status}" for n in cluster.nodes())
        snapshots = await cluster.snapshot(timeout=1.0)  # the live nodes' trees, over NATS
        restarts = sum(a.restarts for s in snapshots.values() for a in s.root.walk())
        dead = sum(sum(s.dead_letters.values()) for s in snapshots.values())
        loss = f"{self.loss:.4f}" if self.loss is not None else "-"
        say(
            f"[dashboard] {nodes} | batches {self.batches}  models {self.models}  "
            f"loss {loss}  promoted {self.promoted}  rolled back {self.rolled_back}  "
            f"samples {self.samples} | on {len(snapshots)} nodes: restarts {restarts}  "
            f"dead letters {dead}"
        )


tree = Supervisor(
    "pipeline",
    strategy="one_for_one",
    max_restarts=10,
    within=30.0,
    children=[
        child(Announcer, name="announcer"),
        Supervisor(
            "models",
            strategy="rest_for_one",
            max_restarts=5,
            within=30.0,
            children=[
                child(ModelRegistry, name="model-registry"),
                child(Evaluator, name="evaluator"),
            ],
        ),
        child(Watchdog, name="watchdog"),
        child(Dashboard, name="dashboard"),
        child(Ready, name="ready"),
    ],
)

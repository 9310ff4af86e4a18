"""Stopping the system while a supervisor waits for a child's start whose `on_start`
does not return (a `start_child`, a pool growing): the stop is passed on to that child,
so it ends within the child's shutdown timeout.

The graceful stop is shielded from outer cancellation, so a hang cannot be bounded
from inside trio: each case runs in a child process with a wall-clock timeout.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

PRELUDE = textwrap.dedent(
    """
    import trio, runtime
    from actors import Pool, Resize
    from runtime import Actor, Supervisor, child

    class HangsInW2Start(Actor):
        async def on_start(self):
            if self.ctx.name in ("w2", "h"):
                await trio.sleep_forever()
        async def receive(self, msg):
            return self.ctx.name
    """
)

POOL = PRELUDE + textwrap.dedent(
    """
    async def main():
        worker = child(HangsInW2Start, shutdown=0.5)
        tree = Supervisor("app", children=[Pool("pool", worker=worker, size=2)])
        async with runtime.open_system(tree) as system:
            system.ref("/app/pool").tell(Resize(4))
            await trio.sleep(0.5)  # the router's background task waits for w2's start
        print("stopped", flush=True)

    trio.run(main)
    """
)

START_CHILD = PRELUDE + textwrap.dedent(
    """
    async def main():
        async with trio.open_nursery() as nursery:
            async with runtime.open_system(Supervisor("app")) as system:
                async def start():
                    try:
                        spec = child(HangsInW2Start, name="h", shutdown=0.5)
                        await system.start_child("/app", spec)
                    except BaseException:
                        pass
                nursery.start_soon(start)
                await trio.sleep(0.5)
        print("stopped", flush=True)

    trio.run(main)
    """
)


@pytest.mark.parametrize("script", [POOL, START_CHILD], ids=["pool-grow", "start_child"])
def test_stopping_while_a_child_hangs_in_on_start_ends_within_its_shutdown_timeout(
    script: str,
) -> None:
    # DESIGN: leaving open_system runs the graceful stop, "bounded by those
    # timeouts".  (A running supervisor starting a dynamic child used to keep the
    # stop waiting for ever.)
    env = dict(os.environ, PYTHONPATH=ROOT)
    try:
        done = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=20
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the system's stop did not end within 20 s (child process killed)")
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "stopped"

"""A system run with `open_system` on a background thread, the System object at hand.

`runtime.start_in_thread` gives users a thread-safe handle; tests that look at
kernel internals from outside the loop use this instead.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import trio

import runtime
from runtime import Supervisor, open_system

WAIT = 30.0  # generous real-time bound for anything that involves threads


class SystemThread:
    """`open_system(tree)` in `trio.run` on a thread; the test drives it from outside."""

    def __init__(self, tree: Supervisor, name: str = "troupe-test") -> None:
        self.tree = tree
        self.system: runtime.System | None = None
        self.token: trio.lowlevel.TrioToken | None = None
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._stop: trio.Event | None = None
        self.thread = threading.Thread(target=self._main, name=name, daemon=True)

    def start(self) -> SystemThread:
        self.thread.start()
        assert self._ready.wait(WAIT), "the system did not start"
        if self.system is None:
            self.thread.join(WAIT)
            assert self.error is not None
            raise self.error
        return self

    def _main(self) -> None:
        try:
            trio.run(self._amain)
        except BaseException as exc:
            self.error = exc
        finally:
            self._ready.set()

    async def _amain(self) -> None:
        async with open_system(self.tree) as system:
            self.system = system
            self.token = trio.lowlevel.current_trio_token()
            self._stop = trio.Event()
            self._ready.set()
            await self._stop.wait()

    @property
    def alive(self) -> bool:
        return self.thread.is_alive()

    def call(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `fn(*args)` on the loop thread."""
        return trio.from_thread.run_sync(fn, *args, trio_token=self.token)

    def acall(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run `await fn(*args)` on the loop thread."""
        return trio.from_thread.run(fn, *args, trio_token=self.token)

    def stop(self, *, clean: bool = False) -> None:
        """Stop it and join; `clean=True` also requires that it ended without error."""
        assert self._stop is not None
        try:
            self.call(self._stop.set)
        except trio.RunFinishedError:
            pass
        self.thread.join(WAIT)
        assert not self.thread.is_alive(), "the system did not stop: shutdown hangs"
        if clean:
            assert self.error is None, self.error

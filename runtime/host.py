"""`Host`: what the layers below the system need from it, and nothing more.

Cells, supervisors, the bus and the bridge never reach into `System`'s
attributes: they hold a `Host` and call these methods.  `runtime.system.System`
implements it; a test can implement it with a small fake.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from .cell import Cell
    from .deadlines import Deadlines
    from .messages import Event, ExitReason
    from .spec import ChildSpec, Supervisor
    from .system_actors import Callback
    from .threads import ThreadGate


class StepCounter(Protocol):
    """The loop monitor as a handler loop sees it: how many task steps ran so far."""

    steps: int


class Host(Protocol):
    """The system, as seen from cells, supervisors and services."""

    name: str
    """The system's name."""
    node: str | None
    """This node's name on a cluster; None on a single node."""
    rng: random.Random
    """Randomness for restart backoff jitter (seedable in tests)."""
    stuck_after: float
    """A handler running longer than this (seconds) is flagged stuck."""

    @property
    def is_running(self) -> bool:
        """True from start-up until the system has stopped for good."""
        ...

    @property
    def shutting_down(self) -> bool:
        """True once a stop began: whatever stops from now on stops for good."""
        ...

    @property
    def killed(self) -> bool:
        """True once the stop was forced (`System.kill`, a second Ctrl-C): every
        incarnation is cancelled, an `on_stop` too, also one that begins later."""
        ...

    @property
    def gate(self) -> ThreadGate:
        """The foreign-thread gate (`runtime.threads`)."""
        ...

    @property
    def deadlines(self) -> Deadlines:
        """The deadlines of reply waits (`runtime.deadlines`), kept while the system runs."""
        ...

    @property
    def steps(self) -> StepCounter:
        """The loop monitor's step counter (a handler loop reads the clock when it moved)."""
        ...

    # -- slots -----------------------------------------------------------
    def new_cell(self, spec: ChildSpec | Supervisor, parent: Cell) -> Cell:
        """Make and register the slot of a child of `parent` (ValueError if the path is taken)."""
        ...

    def slot_released(self, cell: Cell) -> None:
        """`cell` stopped for good: release its path, then as `slot_stopped`."""
        ...

    def slot_stopped(self, cell: Cell) -> None:
        """`cell` has no incarnation any more (for good, or resting: see `Cell.rest`):
        drop its subscriptions, and tell the nodes that watch it."""
        ...

    def root_exited(self, reason: ExitReason) -> None:
        """The root supervisor's incarnation ended (the tree is done)."""
        ...

    def root_failing(self) -> None:
        """The root supervisor is giving up: nothing restarts from now on."""
        ...

    def interrupted(self, error: BaseException) -> None:
        """A handler raised a BaseException that is not an Exception (e.g.
        KeyboardInterrupt): stop gracefully, then raise it from the entry point."""
        ...

    # -- accounting and events -----------------------------------------------
    def dead_letter(self, message: Any, reason: str, recipient: str) -> None:
        """Record a message that will never be handled, with its reason."""
        ...

    def system_event(self, topic: str, payload: Mapping[str, Any]) -> None:
        """Publish a runtime event (``system.*``) without waiting."""
        ...

    def supervisor_escalated(self, path: str, error: BaseException) -> None:
        """The supervisor at `path` gave up with `error`: remember it (health reads
        the recent ones) and publish ``system.supervisor.escalated`` while running."""
        ...

    # -- services an actor's context offers ------------------------------------
    async def publish_from(
        self,
        source: str,
        topic: str,
        payload: Any,
        correlation_id: str | None,
        metadata: Mapping[str, Any],
        msg_id: str | None = None,
        timeout: float | None = None,
    ) -> int:
        """`Bus.publish` for the actor at `source` (``ctx.publish``): waits in full
        ``block`` subscribers' lines, at most `timeout` seconds."""
        ...

    def publish_nowait_from(
        self,
        source: str,
        topic: str,
        payload: Any,
        correlation_id: str | None,
        metadata: Mapping[str, Any],
        msg_id: str | None = None,
        timeout: float | None = None,
    ) -> int:
        """`Bus.publish_nowait` for the actor at `source` (``ctx.publish_nowait``):
        never waits; `timeout` is checked but does not apply."""
        ...

    def subscribe_cell(
        self,
        cell: Cell,
        pattern: str,
        *,
        once: bool = False,
        filter: Callable[[Event], bool] | None = None,
        replay: int = 0,
    ) -> None: ...

    def unsubscribe_cell(self, cell: Cell, pattern: str) -> bool: ...

    def subscriptions_of(self, cell: Cell) -> tuple[str, ...]: ...

    def adopt_callback(self, callback: Callback) -> Cell:
        """Make (and have started) the actor that runs a bus callback."""
        ...

    def release_callback(self, cell: Cell) -> None:
        """Stop the actor of a bus callback."""
        ...

    async def run_blocking(
        self,
        fn: Callable[..., Any],
        *args: Any,
        timeout: float | None = None,
        bridge: str | None = None,
        **kwargs: Any,
    ) -> Any: ...


__all__ = ["Host", "StepCounter"]

"""Entry points: `open_system` (inside trio), `run` (blocking, with signals) and
`start_in_thread` (from plain synchronous code, with a thread-safe `ThreadedSystem`).

They compose a `System` with its faces (control socket, metrics).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import pathlib
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import TYPE_CHECKING, Any, TypedDict

import trio

from .bus import BusStatistics
from .control import ControlServer
from .errors import RuntimeClosed, unwrap_single
from .metrics import MetricsServer
from .monitor import TreeSnapshot
from .ref import ActorRef
from .spec import ChildInfo, ChildSpec, Supervisor
from .system import System
from .threads import ThreadStream

if TYPE_CHECKING:
    from typing_extensions import Unpack

    from .cluster.node import Cluster
    from .cluster.peers import NodeInfo

log = logging.getLogger("troupe.bus")


@asynccontextmanager
async def open_system(
    tree: Supervisor,
    *,
    name: str | None = None,
    control: bool = False,
    control_dir: str | os.PathLike[str] | None = None,
    metrics_port: int | None = None,
    dashboard_port: int | None = None,
    blocked_after: float = 0.05,
    stuck_after: float = 10.0,
    history: int = 1000,
    duplicate_window: float = 120.0,
    node: str | None = None,
    cluster: str | Sequence[str] | None = None,
    cluster_name: str = "troupe",
    cluster_topics: Sequence[str] = (),
    cluster_control: str = "ro",
    nats_options: dict[str, Any] | None = None,
    heartbeat: float = 1.0,
    node_down_after: float = 5.0,
    outbox: int = 10_000,
) -> AsyncIterator[System]:
    """Run `tree` for the body of the ``async with``; stop it gracefully on exit.

    Leaving by any route (normal exit, an exception in the body, an outer
    cancel scope or timeout, Ctrl-C) runs the graceful stop: children in
    reverse start order, `on_stop` for each within its shutdown timeout.  The
    stop is shielded from the outer cancellation and bounded by those
    timeouts.

    If the tree fails (e.g. `RestartIntensityExceeded` at its root
    supervisor) the body is cancelled and that error is raised here,
    unwrapped.  A KeyboardInterrupt or SystemExit raised by a handler stops
    the system gracefully and is raised here.  A KeyboardInterrupt that comes
    while the graceful stop runs (under a plain ``trio.run``, a second Ctrl-C)
    forces it, as under `run`: every actor is cancelled at once.

    `control`: serve the JSON control socket (``troupe ls/tree/top/events``).
    `metrics_port`: serve Prometheus metrics on 127.0.0.1 (0 picks a port:
    `system.metrics.port`).  `dashboard_port`: serve the live web dashboard on
    127.0.0.1 (0 picks a port: `system.dashboard.port`; ``troupe web`` serves
    the same page from another process).  `blocked_after`: a task step longer than this
    publishes ``system.loop.blocked``.  `stuck_after`: a handler running longer
    is flagged ``stuck`` in the snapshot.  `history`: events the bus keeps (``0``
    keeps none).  `duplicate_window`: seconds a published ``msg_id`` is
    remembered, to drop duplicates (``0`` turns that off).  Invalid options
    raise ValueError before anything starts.

    On a cluster (``cluster=`` a NATS URL or a list of them, ``node=`` this
    node's name): the node joins before the tree starts (`ClusterError` if
    its name is taken or no server answers) and leaves after it stopped.
    `cluster_name` is the subject prefix, `cluster_topics` the bus patterns
    shared with every node, `cluster_control` ``"ro"`` or ``"rw"`` (may other
    nodes start and stop actors here), `nats_options` go to
    ``nats.connect`` (credentials, TLS), `heartbeat` and `node_down_after`
    (seconds) tune failure detection, `outbox` bounds the messages queued
    per destination node.
    """
    options: SystemOptions = {
        "name": name,
        "control": control,
        "control_dir": control_dir,
        "metrics_port": metrics_port,
        "dashboard_port": dashboard_port,
        "blocked_after": blocked_after,
        "stuck_after": stuck_after,
        "history": history,
        "duplicate_window": duplicate_window,
        "node": node,
        "cluster": cluster,
        "cluster_name": cluster_name,
        "cluster_topics": cluster_topics,
        "cluster_control": cluster_control,
        "nats_options": nats_options,
        "heartbeat": heartbeat,
        "node_down_after": node_down_after,
        "outbox": outbox,
    }
    system, serving = _system_of(tree, options)
    async with _serving(system, **serving):
        yield system


class SystemOptions(TypedDict, total=False):
    """The options `run` and `start_in_thread` take: those of `open_system`."""

    name: str | None
    control: bool
    control_dir: str | os.PathLike[str] | None
    metrics_port: int | None
    dashboard_port: int | None
    blocked_after: float
    stuck_after: float
    history: int
    duplicate_window: float
    node: str | None
    cluster: str | Sequence[str] | None
    cluster_name: str
    cluster_topics: Sequence[str]
    cluster_control: str
    nats_options: dict[str, Any] | None
    heartbeat: float
    node_down_after: float
    outbox: int


CLUSTER_OPTIONS = (
    "cluster_name",
    "cluster_topics",
    "cluster_control",
    "nats_options",
    "heartbeat",
    "node_down_after",
    "outbox",
)


def _system_of(tree: Supervisor, options: SystemOptions) -> tuple[System, dict[str, Any]]:
    """A `System` made from `options`, and the rest of them, for `_serving`.

    With ``cluster=``, the system's node (`runtime.cluster.Cluster`, imported
    only then) is made too, its options checked (`ValueError`).
    """
    system = System(
        tree,
        name=options.get("name"),
        history=options.get("history", 1000),
        duplicate_window=options.get("duplicate_window", 120.0),
        stuck_after=options.get("stuck_after", 10.0),
    )
    node, servers = options.get("node"), options.get("cluster")
    if servers is None:
        if node is not None:
            raise ValueError(
                f"node={node!r} needs cluster= (the NATS server(s) the node joins through)"
            )
    else:
        if node is None:
            raise ValueError("cluster= needs node= (this node's name in the cluster)")
        from .cluster.node import Cluster

        given = {key: options[key] for key in CLUSTER_OPTIONS if options.get(key) is not None}  # type: ignore[literal-required]
        cluster = Cluster(
            system,
            node=node,
            servers=[servers] if isinstance(servers, str) else list(servers),
            **given,
        )
        system.node = node
        system.cluster = cluster
    serving = {
        "control": options.get("control", False),
        "control_dir": options.get("control_dir"),
        "metrics_port": options.get("metrics_port"),
        "dashboard_port": options.get("dashboard_port"),
        "blocked_after": options.get("blocked_after", 0.05),
    }
    return system, serving


@asynccontextmanager
async def _serving(
    system: System,
    *,
    control: bool,
    control_dir: str | os.PathLike[str] | None,
    metrics_port: int | None,
    dashboard_port: int | None,
    blocked_after: float,
) -> AsyncIterator[System]:
    """Run an already made `system` (see `open_system`)."""
    # Under a mock clock (tests) steps are still measured and counted, but not
    # published: virtual time and how fast this machine runs have nothing in common.
    # (trio.testing is only looked up: a clock can only be one if it was imported)
    testing = sys.modules.get("trio.testing")
    mock = testing is not None and isinstance(trio.lowlevel.current_clock(), testing.MockClock)
    monitor = system.loop_monitor
    monitor.blocked_after = blocked_after
    monitor.on_blocked = None if mock else system.publish_blocked
    monitor.install()
    start_error: BaseException | None = None

    async def run_tree(task_status: trio.TaskStatus[BaseException | None]) -> None:
        # The tree's tasks live here, shielded: an outer cancel scope or timeout
        # around `open_system` cancels only the body (or, during start-up, turns
        # into a stop, below), so the graceful stop that follows is not cut short.
        with trio.CancelScope(shield=True):
            async with trio.open_nursery() as nursery:
                if not mock:
                    nursery.start_soon(monitor.probe, name="troupe loop probe")
                if system.cluster is not None:  # joined before the tree starts: a name
                    # taken or a server unreachable fails the start
                    await nursery.start(system.cluster.run, name="troupe cluster node")
                error = await system.root.start(nursery)
                if error is None:
                    system.started_at = time.time()
                    if system.cluster is not None:
                        system.cluster.announce()  # the others see its actors at once
                    if control:
                        folder = pathlib.Path(control_dir) if control_dir is not None else None
                        system.control = ControlServer(system, folder)
                        await nursery.start(system.control.serve, name="troupe control socket")
                    if metrics_port is not None:
                        system.metrics = MetricsServer(system, metrics_port)
                        await nursery.start(system.metrics.serve, name="troupe metrics")
                    if dashboard_port is not None:
                        from .web import Dashboard, LocalSource  # starlette and hypercorn

                        dashboard = Dashboard(LocalSource(system), dashboard_port)
                        system.dashboard = dashboard
                        await nursery.start(dashboard.serve, name="troupe dashboard")
                task_status.started(error)
                await system.root.wait_done()
                nursery.cancel_scope.cancel()  # the probe and the faces end with the tree

    async def stop_when_cancelled() -> None:
        # Cancelled from outside (even while the tree starts): stop gracefully.
        try:
            await trio.sleep_forever()
        finally:
            system.stop()

    try:
        async with trio.open_nursery() as nursery:
            system.open(trio.lowlevel.current_trio_token())
            # asks' deadlines are kept until the tree is done (later waits keep their own)
            nursery.start_soon(system.deadlines.run, name="troupe reply deadlines")
            nursery.start_soon(stop_when_cancelled, name="troupe outer cancel")
            start_error = await nursery.start(run_tree, name="troupe tree")
            if start_error is None:
                system.on_root_exit(nursery.cancel_scope.cancel)  # the tree failed: end the body
                try:
                    # Cancelled while the tree was starting: the body does not run.
                    await trio.lowlevel.checkpoint_if_cancelled()
                    yield system
                finally:
                    system.stop()
                    # Shielded: an outer cancel scope or timeout must not skip the
                    # graceful stop.  Its length is bounded by the shutdown timeouts.
                    with trio.CancelScope(shield=True):
                        try:
                            await system.root.wait_done()
                        except KeyboardInterrupt:
                            # Ctrl-C while the graceful stop runs (under a plain
                            # trio.run, a second one): force it, as `run` does.
                            system.kill()
                            await system.root.wait_done()
                            raise
            nursery.cancel_scope.cancel()
        system.close()
    except BaseExceptionGroup as group:
        error = system.interrupt or system.failure or unwrap_single(group)
        raise error from error.__cause__  # keep its cause, drop the group
    finally:
        system.close()
        monitor.uninstall()
    if system.interrupt is not None:
        raise system.interrupt
    if system.failure is not None:
        raise system.failure
    if start_error is not None:
        raise start_error


def run(tree: Supervisor, **options: Unpack[SystemOptions]) -> None:
    """Run `tree` until it is stopped (SIGINT/SIGTERM: gracefully; a second one: at once).

    On the main thread, the first signal is acknowledged on stderr at once
    ("stopping gracefully (Ctrl-C again to force)") and the end of the stop
    too ("stopped N actors in X.Xs"); a step that blocks the loop is logged
    as a warning naming the actor (``troupe.monitor``, at most every 5 s).

    Takes the options of `open_system`.  Signals are heard from the start,
    also while the tree is starting (an `on_start` that hangs is cancelled
    after its shutdown timeout, or at once on a second signal).
    `control=True` serves the control socket for ``troupe tree/top/events``;
    `metrics_port` serves Prometheus metrics.  Raises the tree's failure,
    e.g. `RestartIntensityExceeded`; `TypeError` for an unknown option.
    """
    unknown = set(options) - set(SystemOptions.__annotations__)
    if unknown:
        raise TypeError(f"run() got unknown options: {', '.join(sorted(unknown))}")

    async def main() -> None:
        if threading.current_thread() is not threading.main_thread():
            async with open_system(tree, **options):
                await trio.sleep_forever()
            return
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            await _run_with_signals(tree, options, signals)

    trio.run(main)


async def _run_with_signals(
    tree: Supervisor, options: SystemOptions, signals: AsyncIterator[int]
) -> None:
    """`open_system` with a signal listener that runs from before the tree starts.

    On the first signal it says so on stderr at once ("stopping gracefully") and,
    once stopped, how many actors stopped in how long; a loop stall is warned of
    (logged, at most once every `STALL_WARNING_EVERY` seconds)."""
    system, serving = _system_of(tree, options)
    system.loop_monitor.warn_every = STALL_WARNING_EVERY

    seen = 0
    stopping_since: float | None = None
    actors = 0

    async def listen() -> None:
        nonlocal seen, stopping_since, actors
        async for _ in signals:
            seen += 1
            if seen == 1:
                stopping_since = time.monotonic()
                actors = system.info()["actors"]
                _say("stopping gracefully (Ctrl-C again to force)")
                system.stop()  # also while starting: the starting children are stopped
            else:
                _say("forced: cancelling every actor now")
                system.kill()  # the second one: no more graceful stop

    try:
        try:
            async with trio.open_nursery() as outer:
                outer.start_soon(listen)
                try:
                    async with _serving(system, **serving):
                        await trio.sleep_forever()
                finally:
                    outer.cancel_scope.cancel()
        finally:
            if stopping_since is not None and seen == 1 and system.failure is None:
                took = time.monotonic() - stopping_since
                _say(f"stopped {actors} actor{'s' if actors != 1 else ''} in {took:.1f}s")
    except BaseException as exc:
        error = unwrap_single(exc)
        if isinstance(error, Exception) and seen == 1 and system.failure is None:
            if system.started_at is None:
                return  # stopped by a signal while starting: that is a clean stop
        if seen < 2 or not isinstance(error, Exception):
            raise error from error.__cause__  # keep its cause, drop the group
    if seen >= 2:
        raise KeyboardInterrupt  # forced: exit as an interrupted program does (130)


STALL_WARNING_EVERY = 5.0
"""`run`: seconds between the warnings of a blocked loop (the others are counted)."""


def _say(text: str) -> None:
    """A line on stderr for the person at the terminal (not a log record)."""
    with contextlib.suppress(OSError, ValueError):
        print(f"troupe: {text}", file=sys.stderr, flush=True)


class ThreadedSystem:
    """A handle on a system running in a background thread; every method is thread-safe."""

    def __init__(self, system: System, token: trio.lowlevel.TrioToken) -> None:
        self._system = system
        self._token = token
        self._bus = ThreadedBus(self)
        self._cluster = None if system.cluster is None else ThreadedCluster(self, system.cluster)

    @property
    def name(self) -> str:
        return self._system.name

    @property
    def node(self) -> str | None:
        """This node's name on its cluster (``node=``), None without a cluster.
        Set once, before this handle exists: safe to read from any thread."""
        return self._system.node

    @property
    def cluster(self) -> ThreadedCluster | None:
        """The node's cluster, for plain threads (`ThreadedCluster`: ``nodes()``,
        ``snapshot()``, ``which_children(url)``, ...) when started with
        ``cluster=``, else None."""
        return self._cluster

    @property
    def is_running(self) -> bool:
        return self._system.is_running

    def _call(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return trio.from_thread.run_sync(fn, *args, trio_token=self._token)
        except trio.RunFinishedError:
            raise RuntimeClosed(f"actor system {self.name!r} is not running") from None

    def _acall(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return trio.from_thread.run(fn, *args, trio_token=self._token)
        except trio.RunFinishedError:
            raise RuntimeClosed(f"actor system {self.name!r} is not running") from None

    @property
    def metrics(self) -> Any:
        """The metrics server (``.port``) when started with ``metrics_port=``, else None.
        Set once, before this handle exists: safe to read from any thread."""
        return self._system.metrics

    @property
    def dashboard(self) -> Any:
        """The web dashboard (`runtime.web.Dashboard`: ``.port``, ``.url``) when
        started with ``dashboard_port=``, else None.  Set once, before this handle
        exists: safe to read from any thread."""
        return getattr(self._system, "dashboard", None)

    @property
    def bus(self) -> ThreadedBus:
        """The bus, for plain threads: publish, subscribe callbacks, history, stats."""
        return self._bus

    def ref(self, path_or_url: str) -> ActorRef:
        return self._call(self._system.ref, path_or_url)  # type: ignore[no-any-return]

    def snapshot(self) -> TreeSnapshot:
        return self._call(self._system.snapshot)  # type: ignore[no-any-return]

    def which_children(self, path: str) -> list[ChildInfo]:
        return self._call(self._system.which_children, path)  # type: ignore[no-any-return]

    def start_child(self, parent: str, spec: ChildSpec | Supervisor) -> ActorRef:
        return self._acall(self._system.start_child, parent, spec)  # type: ignore[no-any-return]

    def terminate_child(self, path: str, *, hand_over_to: ActorRef | None = None) -> None:
        """`System.terminate_child`, from this thread."""
        self._acall(
            functools.partial(self._system.terminate_child, path, hand_over_to=hand_over_to)
        )

    def publish(
        self,
        topic: str,
        payload: Any = None,
        *,
        correlation_id: str | None = None,
        msg_id: str | None = None,
        timeout: float | None = None,
        **metadata: Any,
    ) -> int:
        """Publish on the bus from this thread: blocks while a subscriber's ``block``
        mailbox is full, up to `timeout` (see `System.publish`)."""
        return self._system.publish(
            topic,
            payload,
            correlation_id=correlation_id,
            msg_id=msg_id,
            timeout=timeout,
            **metadata,
        )

    def run_blocking(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run `fn` on a bridge and wait for it here (see `System.run_blocking`)."""
        return self._acall(functools.partial(self._system.run_blocking, fn, *args, **kwargs))

    def stop(self) -> None:
        """Begin a graceful stop (returns at once; leaving the `with` block waits for it)."""
        try:
            self._call(self._system.stop)
        except RuntimeClosed:
            pass


class ThreadedBus:
    """`System.bus` for plain threads (``start_in_thread(...).bus``): each method runs
    on the loop and blocks the calling thread until it is done; `stream` gives a
    plain thread a blocking stream of events (``with bus.stream("t.*") as events:
    for event in events: ...``).  Not for the loop thread itself (use
    ``system.bus`` there: `stream` raises `RuntimeError` on it)."""

    def __init__(self, handle: ThreadedSystem) -> None:
        self._handle = handle
        self._bus = handle._system.bus
        self.publish = handle.publish
        """`ThreadedSystem.publish`: blocks this thread while subscribers are full."""

    def publish_nowait(
        self,
        topic: str,
        payload: Any = None,
        *,
        correlation_id: str | None = None,
        msg_id: str | None = None,
        **metadata: Any,
    ) -> int:
        """Publish with ``timeout=0``: a full subscriber gets it dead-lettered at once
        (the call still waits for the loop's answer, the count)."""
        return self.publish(
            topic, payload, correlation_id=correlation_id, msg_id=msg_id, timeout=0, **metadata
        )

    def subscribe(
        self, *patterns: str, **options: Any
    ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """`Bus.subscribe`: checks its arguments now (``ValueError``), and returns the
        decorator; the subscription is active when the decorator returns."""
        register = self._handle._call(lambda: self._bus.subscribe(*patterns, **options))

        def on_loop(fn: Callable[..., Any]) -> Callable[..., Any]:
            return self._handle._call(register, fn)  # type: ignore[no-any-return]

        return on_loop

    def unsubscribe(self, fn: Callable[..., Any]) -> None:
        """`Bus.unsubscribe`: done when this returns."""
        self._handle._call(self._bus.unsubscribe, fn)

    def history(self, pattern: str = ">", limit: int = 100, since: float | None = None) -> Any:
        """`Bus.history` (newest first)."""
        return self._handle._call(lambda: self._bus.history(pattern, limit, since=since))

    def clear_history(self) -> None:
        """`Bus.clear_history`."""
        self._handle._call(self._bus.clear_history)

    def statistics(self) -> BusStatistics:
        """`Bus.statistics`: blocks this thread until the loop answers (a snapshot of
        the counts then).  Raises `RuntimeClosed` once the system has stopped."""
        return self._handle._call(self._bus.statistics)  # type: ignore[no-any-return]

    def stats(self) -> dict[str, Any]:
        """`Bus.stats`: `statistics` as a plain dict; blocks and raises the same way."""
        return self._handle._call(self._bus.stats)  # type: ignore[no-any-return]

    @contextmanager
    def stream(self, pattern: str = ">", *, capacity: int = 1000) -> Iterator[ThreadStream]:
        """``with handle.bus.stream("training.*") as events: for event in events: ...``

        `Bus.stream` for a plain thread.  Entering blocks this thread until
        the loop has subscribed (the subscription is active when the block
        starts).  ``for event in events`` and ``events.receive(timeout=None)``
        block this thread, never the loop; `receive` raises `TimeoutError`
        after `timeout` seconds.  The default ``>`` is every application
        event; the runtime's own come only to a pattern that names them
        (``system.>``).  A slow reader does not slow publishers: past
        `capacity` queued events the newest are dead-lettered (``overflow``)
        and counted as dropped (``0``: only a reader already waiting gets an
        event).

        When the block ends, however it ends (the reader broke out, raised,
        or was interrupted, e.g. by Ctrl-C), leaving blocks this thread until
        the loop has ended the subscription and dead-lettered the events left
        unread (``stopped``).  When the system stops, the stream ends, once
        the user's tree has stopped and before the bridge does (a reader in
        ``run_blocking`` is let go): the reader gets the events already
        queued, then the end of its iteration (`trio.EndOfChannel` from
        ``receive()``).  If the system's loop is gone by the time the block
        ends, nothing can record what was left unread: those events are
        discarded, with a warning on the ``troupe.bus`` logger that says how
        many (no exception: the block's own must not be hidden).

        Raises `ValueError` for a bad pattern or capacity (as `Bus.stream`),
        `RuntimeClosed` once the system has stopped, and `RuntimeError` on
        the loop thread (use ``async with system.bus.stream(...)`` there).
        """
        gate = self._handle._system.gate
        if gate.on_loop_thread():
            raise RuntimeError(
                "handle.bus.stream() is for plain threads (it blocks its thread): "
                "on the trio thread use `async with system.bus.stream(...)`"
            )
        channel = ThreadStream(pattern, capacity, gate)  # ValueError for a bad capacity
        try:
            self._handle._call(self._bus.add_thread_stream, channel)
        except Exception:
            raise  # nothing was subscribed (a bad pattern, the system stopped)
        except BaseException:
            # Interrupted (Ctrl-C) while the loop subscribes it: the loop runs calls
            # in order, so this end comes after that subscription.
            self._end_stream(channel)
            raise
        try:
            yield channel
        finally:
            self._end_stream(channel)

    def _end_stream(self, channel: ThreadStream) -> None:
        """End `channel`'s subscription on the loop (`Bus.end_thread_stream`); if the
        loop is gone, discard what is left, and say so."""
        try:
            self._handle._call(self._bus.end_thread_stream, channel)
        except RuntimeClosed:
            unread = channel.take_unread()
            if unread:
                log.warning(
                    "%d event%s left unread in the thread stream of %r discarded: actor "
                    "system %r had stopped, so they could not be dead-lettered",
                    len(unread),
                    "s" if len(unread) != 1 else "",
                    channel.pattern,
                    self._handle.name,
                )


class ThreadedCluster:
    """`System.cluster` for plain threads (``start_in_thread(..., cluster=...).cluster``):
    each method runs on the loop and blocks the calling thread until it is done
    (those that ask other nodes, up to their `timeout`), and raises what the
    node's own method raises (`NodeDown`, `RemoteError`, `AskTimeout`, ...).
    Once the loop has ended (after the ``start_in_thread`` block), every method
    raises `RuntimeClosed`; while the system is stopping, the node answers as
    it still can.  On the loop thread itself (use ``system.cluster`` there)
    every method raises `RuntimeError`."""

    def __init__(self, handle: ThreadedSystem, cluster: Cluster) -> None:
        self._handle = handle
        self._cluster = cluster

    def nodes(self) -> list[NodeInfo]:
        """`Cluster.nodes`, from this thread: every node this one knows (itself
        included), by name."""
        return self._handle._call(self._cluster.nodes)  # type: ignore[no-any-return]

    def snapshot(self, timeout: float = 5.0) -> dict[str, TreeSnapshot]:
        """`Cluster.snapshot`, from this thread: every live node's `TreeSnapshot`
        (this node's included), by node name; blocks up to about `timeout`
        seconds (a node that does not answer in time is left out)."""
        return self._handle._acall(self._cluster.snapshot, timeout)  # type: ignore[no-any-return]

    def which_children(self, url: str, timeout: float = 5.0) -> list[ChildInfo]:
        """`Cluster.which_children`, from this thread: the children of the supervisor
        at ``troupe://node/path``; blocks up to `timeout` seconds for another node's."""
        return self._handle._acall(  # type: ignore[no-any-return]
            self._cluster.which_children, url, timeout
        )

    def start_child(
        self, url: str, spec: ChildSpec | Supervisor, timeout: float = 30.0
    ) -> ActorRef:
        """`Cluster.start_child`, from this thread: start `spec` under the supervisor
        at ``troupe://node/path`` (that node must allow it: ``cluster_control="rw"``)
        and return its ref; blocks until it has started, up to `timeout` seconds
        for another node."""
        return self._handle._acall(  # type: ignore[no-any-return]
            self._cluster.start_child, url, spec, timeout
        )

    def terminate_child(self, url: str, timeout: float = 30.0) -> None:
        """`Cluster.terminate_child`, from this thread: stop the child at
        ``troupe://node/path`` and remove it; blocks until it has stopped, up to
        `timeout` seconds for another node."""
        self._handle._acall(self._cluster.terminate_child, url, timeout)


@contextmanager
def start_in_thread(
    tree: Supervisor, *, start_timeout: float = 30.0, **options: Unpack[SystemOptions]
) -> Iterator[ThreadedSystem]:
    """Run `tree` on a background thread for plain synchronous programs.

    Leaving the ``with`` block stops the system gracefully and joins the
    thread; an error inside the runtime (e.g. `RestartIntensityExceeded`, or
    a child failing to start) is raised in the calling thread.  Takes the
    options of `open_system`: ``control=True`` serves the control socket
    (``troupe tree/top/events/ask/...`` see the program), ``metrics_port``
    Prometheus metrics.  A system that does not start within
    `start_timeout` seconds is stopped, and `RuntimeError` raised.
    """
    unknown = set(options) - set(SystemOptions.__annotations__)
    if unknown:
        raise TypeError(f"start_in_thread() got unknown options: {', '.join(sorted(unknown))}")
    ready = threading.Event()
    box: dict[str, Any] = {}
    name = options.get("name")

    async def main() -> None:
        with trio.CancelScope() as scope:
            token = trio.lowlevel.current_trio_token()
            box["abandon"] = functools.partial(
                trio.from_thread.run_sync, scope.cancel, trio_token=token
            )
            if box.get("abandoned"):  # the caller gave up before we could be told
                scope.cancel()
            async with open_system(tree, **options) as system:
                box["handle"] = ThreadedSystem(system, trio.lowlevel.current_trio_token())
                ready.set()
                await trio.sleep_forever()

    def target() -> None:
        try:
            trio.run(main)
        except BaseException as exc:  # carried to the caller's thread
            box["error"] = exc
        finally:
            ready.set()

    thread = threading.Thread(target=target, name=f"troupe:{name or tree.name}", daemon=True)
    thread.start()
    if not ready.wait(start_timeout):
        # Give up on it, and leave nothing running: cancelled while it starts, the
        # system stops what has started (each within its shutdown timeout).
        box["abandoned"] = True  # seen by main() if it has not set "abandon" yet
        abandon = box.get("abandon")
        if abandon is not None:
            with contextlib.suppress(trio.RunFinishedError):
                abandon()
        thread.join()
        raise RuntimeError(
            f"the actor system did not start within {start_timeout}s and was stopped; "
            "give it a larger start_timeout, or look for an on_start that hangs"
        )
    if "handle" not in box:
        thread.join()
        raise box["error"]
    handle: ThreadedSystem = box["handle"]
    try:
        yield handle
    finally:
        handle.stop()
        thread.join()
        if "error" in box:
            raise box["error"]


__all__ = [
    "ThreadedBus",
    "ThreadedCluster",
    "ThreadedSystem",
    "open_system",
    "run",
    "start_in_thread",
]

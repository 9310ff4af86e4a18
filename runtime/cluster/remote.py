"""`RemoteRef`: a ref to an actor on another node, with the API of a local one."""

from __future__ import annotations

from concurrent.futures import Future, InvalidStateError
from typing import TYPE_CHECKING, Any

import trio

from ..errors import RuntimeClosed
from ..ref import ActorRef
from ..spec import check_timeout

if TYPE_CHECKING:
    from ..cell import Cell
    from .node import Cluster


class RemoteRef(ActorRef):
    """The actor at `path` on the cluster node `node` (``troupe://node/path``).

    Location-transparent: `tell`, `send`, `ask`, `ask_blocking` and watching
    work as on a local ref; the message crosses the wire (msgspec
    MessagePack: builtins, `Event`, refs, and attrs classes registered with
    `runtime.wire.register`; anything else raises `NotSerializable` here, in
    the sender).  Like a local ref it names a slot, not an incarnation: it
    keeps working across restarts of the actor, and of its node (a new
    incarnation of the node is reached once it is up).
    """

    __slots__ = ("_cluster", "_node", "_path")

    def __init__(self, cluster: Cluster, node: str, path: str) -> None:
        self._cluster = cluster
        self._node = node
        self._path = path

    @property
    def path(self) -> str:
        return self._path

    @property
    def name(self) -> str:
        return self._path.rsplit("/", 1)[-1] or "/"

    @property
    def node(self) -> str:
        return self._node

    @property
    def url(self) -> str:
        return f"troupe://{self._node}{self._path}"

    @property
    def is_alive(self) -> bool:
        """True while its node is known to be up and this system runs (the remote
        actor itself is not asked: watch it to learn when it stops)."""
        return self._cluster.is_up(self._node)

    @property
    def is_busy(self) -> bool:
        """Unknown for a remote actor: always False."""
        return False

    @property
    def mailbox_depth(self) -> int:
        """Unknown for a remote actor: always 0 (see the remote node's snapshot)."""
        return 0

    def __repr__(self) -> str:
        return f"<RemoteRef {self.url}>"

    def tell(self, msg: Any, *, timeout: float | None = None) -> None:
        """Fire and forget, from the trio thread or any other thread.

        The message is encoded here (`NotSerializable` if it cannot cross) and
        queued in the outbox of its node (FIFO per sender and receiver).  On
        the trio thread a full outbox raises `MailboxFull`; another thread
        waits for room up to `timeout` (None: no limit), then `MailboxFull`.
        A tell to a node known to be down, or that NATS says nobody listens
        on, is dead-lettered here (``undeliverable``).  Raises `RuntimeClosed`
        once the system has stopped.
        """
        limit = check_timeout(timeout) if timeout is not None else None
        self._cluster.tell(self, msg, limit)

    async def send(self, msg: Any) -> None:
        """An acknowledged tell: returns once the remote mailbox has taken the
        message (waiting there for room like a local `send`), so a sender is
        paced by its receiver.  Raises `NodeDown`, `NotSerializable`,
        `MailboxFull` (the remote mailbox refused it), `ActorNotFound`,
        `RuntimeClosed`."""
        await self._cluster.send(self, msg)

    async def ask(self, msg: Any, timeout: float | None = 5.0) -> Any:
        """Send `msg` and wait for the remote handler's answer, within `timeout`.

        Raises as a local ask does (`AskTimeout`, `ActorCrashed` with a
        `RemoteError` as its cause, `UnhandledMessage`, `ActorStopped`,
        `MailboxFull`, `ActorNotFound`), plus `NodeDown` at once when the node
        is known down or NATS says nobody listens, `NotSerializable` for a
        message that cannot cross, and `RemoteError` for an answer this node
        cannot decode.
        """
        return await self._cluster.ask(self, msg, check_timeout(timeout))

    def ask_blocking(self, msg: Any, timeout: float | None = 5.0) -> Any:
        """`ask` for plain threads: blocks the calling thread, never the loop.

        Raises what `ask` raises; on the trio thread, `RuntimeError` at once.
        """
        return self._cluster.ask_blocking(self, msg, check_timeout(timeout))

    def ask_future(self, msg: Any, timeout: float | None = 5.0) -> Future[Any]:
        """`ask` for plain threads that do not want to block: a `concurrent.futures.Future`
        that completes with the answer or fails with what `ask_blocking` raises.

        The ask runs as a task of this node's cluster nursery (no thread per
        call); this thread waits only for the loop to start it, which queues
        the message unless the outbox to that node is full (then the task waits
        for room, within `timeout`).  Raises at once only `ValueError` (a bad
        timeout) and, on the trio thread, `RuntimeError`.
        """
        cluster = self._cluster
        gate = cluster.system.gate
        if gate.on_loop_thread():
            raise RuntimeError(
                "ask_future() is for plain threads: on the trio thread use `await ref.ask(msg)`"
            )
        limit = check_timeout(timeout)
        future: Future[Any] = Future()
        closed = f"actor system {cluster.system.name!r} is not running"

        def settle(value: Any, error: BaseException | None) -> None:
            try:
                if error is None:
                    future.set_result(value)
                else:
                    future.set_exception(error)
            except InvalidStateError:  # its owner cancelled it
                pass

        async def ask(task_status: trio.TaskStatus[None]) -> None:
            task_status.started()  # this task runs on to its first wait: queued by then
            try:
                value = await cluster.ask(self, msg, limit)
            except trio.Cancelled:
                settle(None, RuntimeClosed(closed))
                raise
            except Exception as error:
                settle(None, error)
            else:
                settle(value, None)

        token = gate.token
        try:
            if token is None:
                raise RuntimeClosed(closed)
            trio.from_thread.run(cluster.start_task, ask, trio_token=token)
        except trio.RunFinishedError:
            settle(None, RuntimeClosed(closed))
        except RuntimeClosed as error:
            settle(None, error)
        return future

    def deliver_ask(self, msg: Any, reply: Any) -> None:
        """Only for local actors (a remote ask crosses the wire: use `ask`)."""
        raise TypeError(f"{self!r} is on another node: ask it with `await ref.ask(msg)`")

    async def send_ask(self, msg: Any, reply: Any) -> None:
        """Only for local actors (a remote ask crosses the wire: use `ask`)."""
        raise TypeError(f"{self!r} is on another node: ask it with `await ref.ask(msg)`")

    def _watch_from(self, cell: Cell) -> None:
        self._cluster.watch(cell, self)

    def _unwatch_from(self, cell: Cell) -> None:
        self._cluster.unwatch(cell, self)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, RemoteRef)
            and other._node == self._node
            and other._path == self._path
            and other._cluster is self._cluster
        )

    def __hash__(self) -> int:
        return hash((self._node, self._path))

"""Every error Troupe raises on purpose derives from `TroupeError`."""

from __future__ import annotations

from typing import TypeVar

E = TypeVar("E", bound=BaseException)


class TroupeError(Exception):
    """Base class of all Troupe errors."""


class ActorNotFound(TroupeError, LookupError):
    """No actor lives at that path (never existed, or stopped for good)."""


class ActorStopped(TroupeError):
    """The actor stopped for good before it could answer."""


class ActorCrashed(TroupeError):
    """The actor crashed while handling this message; `__cause__` is the original error."""


class AskTimeout(TroupeError, TimeoutError):
    """No reply within the ask's timeout; a late reply goes to dead letters."""


class UnhandledMessage(TroupeError):
    """The actor's `receive` returned `UNHANDLED` for this message."""


class MailboxFull(TroupeError):
    """The mailbox is at capacity and its overflow policy refuses to wait."""


class Deadlock(MailboxFull):
    """Waiting would close a cycle of actors waiting on each other (design rule 5).

    Raised by `send` and `ask` before anything is queued; the message names
    the cycle, e.g. ``/app/a -> /app/b -> /app/a``.  `cycle` holds the paths.
    """

    def __init__(self, cycle: list[str], what: str) -> None:
        super().__init__(
            f"deadlock: {what} would wait in a cycle {' -> '.join(cycle)}; "
            "nothing was sent (tell instead, defer_reply(), or break the cycle)"
        )
        self.cycle = cycle


class RuntimeClosed(TroupeError):
    """The actor system is not running (any more)."""


class RestartIntensityExceeded(TroupeError):
    """A supervisor saw more than `max_restarts` restarts within `within` seconds and gave up."""

    def __init__(self, path: str, max_restarts: int, within: float, last: str) -> None:
        super().__init__(
            f"supervisor {path} gave up: more than {max_restarts} restarts within "
            f"{within:g}s (last failure: {last})"
        )
        self.path = path
        self.max_restarts = max_restarts
        self.within = within


class NotSerializable(TroupeError, TypeError):
    """A value cannot cross to another process: it cannot be pickled for a worker
    process, or encoded for the cluster's wire (an unregistered type, a message
    larger than the NATS server's `max_payload`)."""


class ClusterError(TroupeError):
    """A node cannot join its cluster: its name is taken or invalid, or no NATS
    server answered at the URL it was given."""


class NodeDown(TroupeError):
    """The node an actor lives on is down (it left, was silent past
    `node_down_after`, or came back as a new incarnation).

    Raised by an ask to an actor on it, and the `reason` of the `Terminated`
    that its watchers get.  Attributes: `node` (its name), `incarnation` (the
    incarnation that went down, or None if it was never seen).
    """

    def __init__(self, node: str, incarnation: str | None = None, why: str = "") -> None:
        text = f"node {node!r} is down"
        super().__init__(f"{text}: {why}" if why else text)
        self.node = node
        self.incarnation = incarnation
        self.why = why

    def __reduce__(self) -> tuple[type[NodeDown], tuple[str, str | None, str]]:
        return (NodeDown, (self.node, self.incarnation, self.why))


class RemoteError(TroupeError):
    """A failure elsewhere (e.g. in a worker process), carried as text, not as a pickled exception.

    Attributes: `type` (the remote exception's qualified type name), `message`
    (its ``str()``) and `traceback` (its formatted traceback, as text).
    """

    def __init__(self, type: str, message: str, traceback: str = "") -> None:
        super().__init__(f"{type}: {message}" if message else type)
        self.type = type
        self.message = message
        self.traceback = traceback

    def __reduce__(self) -> tuple[type[RemoteError], tuple[str, str, str]]:
        return (RemoteError, (self.type, self.message, self.traceback))


def unwrap_single(exc: E) -> E | BaseException:
    """The one exception inside nested single-exception groups (trio's nurseries wrap
    what they raise), or `exc` itself when it holds several or is not a group."""
    inner: BaseException = exc
    while isinstance(inner, BaseExceptionGroup) and len(inner.exceptions) == 1:
        inner = inner.exceptions[0]
    return inner

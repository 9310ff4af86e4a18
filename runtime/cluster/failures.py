"""Errors and exit reasons as they cross the wire: type, message and traceback text,
never a pickled exception."""

from __future__ import annotations

from typing import Any

from .. import errors
from ..errors import (
    ActorCrashed,
    ActorNotFound,
    ActorStopped,
    AskTimeout,
    MailboxFull,
    NodeDown,
    RemoteError,
    RuntimeClosed,
    TroupeError,
    UnhandledMessage,
)
from ..messages import ErrorInfo, describe

MESSAGE_MAX = 4_000
"""Characters of an error's message (and of its text) that cross the wire."""
TRACEBACK_MAX = 16_000
"""Characters of a traceback that cross the wire (its start and its end are kept)."""


def bounded(text: str, limit: int, *, keep_end: bool = False) -> str:
    """`text` cut to about `limit` characters, saying how many were cut: an error's
    texts must fit in one NATS message, however large the original was.  With
    `keep_end`, the first quarter and the end are kept (a traceback's last lines name
    the error)."""
    if len(text) <= limit:
        return text
    cut = len(text) - limit
    if keep_end:
        head = limit // 4
        return f"{text[:head]}\n... ({cut:,} characters cut) ...\n{text[head + cut :]}"
    return f"{text[:limit]}... ({cut:,} characters cut)"


def encode_error(error: BaseException) -> list[Any]:
    """An error as it crosses the wire: [kind, type, message, traceback]."""
    kind = "remote"
    source: BaseException = error
    if isinstance(error, ActorCrashed):
        kind = "crashed"
        source = error.__cause__ or error
    elif isinstance(error, errors.Deadlock):
        kind = "deadlock"
    elif isinstance(error, MailboxFull):
        kind = "full"
    elif isinstance(error, ActorNotFound):
        kind = "notfound"
    elif isinstance(error, UnhandledMessage):
        kind = "unhandled"
    elif isinstance(error, ActorStopped | RuntimeClosed):
        kind = "stopped"
    elif isinstance(error, AskTimeout):
        kind = "timeout"
    elif isinstance(error, NodeDown):
        kind = "nodedown"
    if isinstance(source, RemoteError):
        type_, message, traceback = source.type, source.message, source.traceback
    else:
        info = ErrorInfo.of(source)
        type_, message, traceback = info.type, info.message, info.traceback
    return [
        kind,
        bounded(type_, MESSAGE_MAX),
        bounded(message, MESSAGE_MAX),
        bounded(traceback, TRACEBACK_MAX, keep_end=True),
        bounded(describe_text(error), MESSAGE_MAX),
    ]


def describe_text(error: BaseException) -> str:
    try:
        return str(error)
    except Exception:
        return type(error).__name__


def decode_error(fields: Any, where: str) -> BaseException:
    """The error an asker gets for an error that crossed the wire."""
    if not isinstance(fields, list) or len(fields) < 5:
        return RemoteError("RemoteError", f"an undecodable error came back from {where}")
    kind, type_, message, traceback, text = (str(f) for f in fields[:5])
    remote = RemoteError(type_, message, traceback)
    error: BaseException
    if kind == "crashed":
        error = ActorCrashed(text)
        error.__cause__ = remote
        return error
    known: dict[str, type[TroupeError]] = {
        "deadlock": errors.Deadlock,
        "full": MailboxFull,
        "notfound": ActorNotFound,
        "unhandled": UnhandledMessage,
        "stopped": ActorStopped,
        "timeout": AskTimeout,
    }
    cls = known.get(kind)
    if cls is not None:
        error = cls(text)
        error.__cause__ = remote
        return error
    if kind == "nodedown":
        return NodeDown(where, None, text)
    return remote


def wire_reason(reason: object) -> Any:
    """A stop reason as it crosses the wire (its texts bounded, see `bounded`)."""
    if isinstance(reason, BaseException):
        info = ErrorInfo.of(reason)
        return [
            bounded(info.type, MESSAGE_MAX),
            bounded(info.message, MESSAGE_MAX),
            bounded(info.traceback, TRACEBACK_MAX, keep_end=True),
        ]
    return bounded(describe(reason), MESSAGE_MAX)


def reason_from_wire(reason: Any) -> Any:
    if isinstance(reason, list) and len(reason) >= 3:
        return RemoteError(str(reason[0]), str(reason[1]), str(reason[2]))
    return str(reason)

"""Troupe: an actor runtime on trio with OTP supervision.

The public API is re-exported here; everything else is internal.
"""

from .actor import Actor, Context, Timer
from .bridge import Bridge
from .bus import Event
from .cell import ErrorInfo
from .deadletters import DeadLetter, DeadLettersQuery
from .errors import (
    ActorCrashed,
    ActorNotFound,
    ActorStopped,
    AskTimeout,
    MailboxFull,
    NotSerializable,
    RemoteError,
    RestartIntensityExceeded,
    RuntimeClosed,
    TroupeError,
    UnhandledMessage,
)
from .mailbox import Mailbox
from .messages import UNHANDLED, DeferredReply, ExitReason, Terminated
from .monitor import ActorInfo, LoopHealth, TreeSnapshot
from .ref import ActorRef
from .supervisor import Backoff, ChildInfo, ChildSpec, Supervisor, child
from .system import System, open_system, run
from .threads import ThreadedSystem, start_in_thread

__all__ = [
    "UNHANDLED",
    "Actor",
    "ActorCrashed",
    "ActorInfo",
    "ActorNotFound",
    "ActorRef",
    "ActorStopped",
    "AskTimeout",
    "Backoff",
    "Bridge",
    "ChildInfo",
    "ChildSpec",
    "Context",
    "DeadLetter",
    "DeadLettersQuery",
    "DeferredReply",
    "ErrorInfo",
    "Event",
    "ExitReason",
    "LoopHealth",
    "Mailbox",
    "MailboxFull",
    "NotSerializable",
    "RemoteError",
    "RestartIntensityExceeded",
    "RuntimeClosed",
    "Supervisor",
    "System",
    "Terminated",
    "ThreadedSystem",
    "Timer",
    "TreeSnapshot",
    "TroupeError",
    "UnhandledMessage",
    "child",
    "open_system",
    "run",
    "start_in_thread",
]

"""Troupe: an actor runtime on trio with OTP supervision.

The public API is re-exported here; everything else is internal.
"""

from . import wire
from .actor import Actor, Context, Timer
from .bridge import Bridge, BridgeStatistics
from .bus import BusStatistics
from .deadletters import DeadLetter, DeadLettersQuery
from .entry import ThreadedSystem, open_system, run, start_in_thread
from .errors import (
    ActorCrashed,
    ActorNotFound,
    ActorStopped,
    AskTimeout,
    ClusterError,
    Deadlock,
    MailboxFull,
    NodeDown,
    NotSerializable,
    RemoteError,
    RestartIntensityExceeded,
    RuntimeClosed,
    TroupeError,
    UnhandledMessage,
)
from .mailbox import MailboxStatistics
from .messages import (
    UNHANDLED,
    DeferredReply,
    ErrorInfo,
    Event,
    ExitReason,
    Internal,
    Terminated,
)
from .monitor import ActorInfo, Escalation, LoopHealth, TreeSnapshot
from .ref import ActorRef
from .spec import Backoff, ChildInfo, ChildSpec, Mailbox, Supervisor, child
from .system import System

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
    "BridgeStatistics",
    "BusStatistics",
    "ChildInfo",
    "ChildSpec",
    "ClusterError",
    "Context",
    "DeadLetter",
    "DeadLettersQuery",
    "Deadlock",
    "DeferredReply",
    "ErrorInfo",
    "Escalation",
    "Event",
    "ExitReason",
    "Internal",
    "LoopHealth",
    "Mailbox",
    "MailboxFull",
    "MailboxStatistics",
    "NodeDown",
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
    "wire",
]

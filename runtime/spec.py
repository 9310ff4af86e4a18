"""Specs and their validation: `Mailbox`, `child()`/`ChildSpec`, `Supervisor`, `Backoff`.

Like OTP's ``check_childspecs``, everything a spec can get wrong is refused
here, when the spec is made, with a message that says what to write instead;
the supervising behaviour (`runtime.supervisor`) never re-checks.
"""

from __future__ import annotations

import importlib
import inspect
import math
import operator
import random
import re
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Final, Literal

import attrs

if TYPE_CHECKING:
    from .actor import Actor
    from .ref import ActorRef

Overflow = Literal["block", "drop_new", "drop_old", "fail"]
OVERFLOW_POLICIES: tuple[str, ...] = ("block", "drop_new", "drop_old", "fail")
Strategy = Literal["one_for_one", "one_for_all", "rest_for_one"]
Restart = Literal["permanent", "transient", "temporary"]
STRATEGIES: tuple[str, ...] = ("one_for_one", "one_for_all", "rest_for_one")
RESTARTS: tuple[str, ...] = ("permanent", "transient", "temporary")
HANDLERS: tuple[str, ...] = ("receive", "on_start", "on_stop")
"""The methods of an actor that the runtime awaits: each must be ``async def``."""

_NAME = re.compile(r"^[A-Za-z0-9_.\-:@+]+$")
_NOT_IN_NAMES = re.compile(r"[^A-Za-z0-9_.\-:@+]")
"""A character an actor name may not hold (`_NAME`'s complement)."""


# -- mailboxes ------------------------------------------------------------
def _check_capacity(_inst: object, _attr: object, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"mailbox capacity must be a positive int, got {value!r}")


def _check_overflow(_inst: object, _attr: object, value: str) -> None:
    if value not in OVERFLOW_POLICIES:
        raise ValueError(
            f"unknown overflow policy {value!r}; use one of {', '.join(OVERFLOW_POLICIES)}"
        )


@attrs.frozen
class Mailbox:
    """How big an actor's mailbox is and what happens when it is full.

    - ``block``: ``await ref.send`` waits for room; ``tell`` on the loop thread
      raises `MailboxFull` (it cannot wait); a foreign thread's ``tell`` blocks
      that thread.
    - ``drop_new`` / ``drop_old``: the newest / oldest message goes to dead
      letters with reason ``overflow``.
    - ``fail``: the sender gets `MailboxFull` (the message stays with it).
    """

    capacity: int = attrs.field(default=10_000, validator=_check_capacity)
    overflow: Overflow = attrs.field(default="block", validator=_check_overflow)


DEFAULT_MAILBOX = Mailbox()
"""The mailbox of a child whose spec and class name none (shared: it is frozen)."""


# -- names and timeouts ---------------------------------------------------
def check_name(name: object) -> str:
    """An actor name: one path segment."""
    if not isinstance(name, str) or not _NAME.match(name) or name in (".", ".."):
        raise ValueError(
            f"invalid actor name {name!r}: use a non-empty string of letters, digits "
            "and _ . - : @ + (no '/' or spaces)"
        )
    return name


def name_part(text: str) -> str:
    """`text` made fit to be (part of) an actor name: each character a name may not
    hold (a space, ``/``, a non-ASCII letter) becomes ``_``.  ("." and ".." stay:
    not names on their own.)"""
    return _NOT_IN_NAMES.sub("_", text)


def check_since(since: object) -> int | float | None:
    """A ``since=`` bound: a `time.time()` timestamp (a number, not a bool or NaN)
    or None (no bound).  Returns it; raises `ValueError` for anything else."""
    if since is not None and (
        isinstance(since, bool)
        or not isinstance(since, int | float)
        or (isinstance(since, float) and math.isnan(since))  # an int may be past floats
    ):
        raise ValueError(f"since must be a timestamp (time.time()) or None, got {since!r}")
    return since


def check_timeout(timeout: object, what: str = "timeout") -> float:
    """A timeout in seconds: ``None`` and ``inf`` mean none; negative or NaN is refused.

    Returns the timeout as a float (``inf`` for none).
    """
    if timeout.__class__ is float and timeout >= 0.0:  # the common case (NaN is not >= 0)
        return timeout
    if timeout is None:
        return math.inf
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise TypeError(f"{what} must be a number of seconds or None, got {timeout!r}")
    try:
        value = float(timeout)
    except OverflowError:  # an int past any float: longer than any wait, i.e. none
        if timeout < 0:
            raise ValueError(f"{what} must be >= 0 seconds (or None for no timeout)") from None
        return math.inf
    if math.isnan(value) or value < 0:
        raise ValueError(f"{what} must be >= 0 seconds (or None for no timeout), got {timeout!r}")
    return value


# -- the bus's options ---------------------------------------------------


def check_history(history: object) -> int:
    """How many events the bus keeps: a whole number >= 0 (``0`` keeps none)."""
    if not isinstance(history, bool):
        try:
            count = operator.index(history)  # type: ignore[arg-type]
        except TypeError:
            pass
        else:
            if count >= 0:
                return count
    raise ValueError(
        f"history must be a whole number of events >= 0 (0 keeps none), got {history!r}"
    )


def check_msg_id(msg_id: object) -> str | None:
    """An event's ``msg_id`` for duplicate suppression: a string, or None for none."""
    if msg_id is not None and not isinstance(msg_id, str):
        raise TypeError(f"msg_id must be a string (or None), got {msg_id!r}")
    return msg_id


def check_correlation_id(correlation_id: object) -> str | None:
    """An event's ``correlation_id``: a string, or None for none."""
    if correlation_id is not None and not isinstance(correlation_id, str):
        raise TypeError(
            f"correlation_id must be a string (or None), got {type(correlation_id).__name__}: "
            "pass str(value) to correlate by a number"
        )
    return correlation_id


def check_stream_capacity(capacity: object) -> int:
    """A bus stream's capacity: a whole number of events >= 0 (``0``: only a reader
    already waiting gets an event); a stream is never unbounded.  For
    ``system.bus.stream`` and the thread handle's ``bus.stream`` alike."""
    if isinstance(capacity, bool) or not isinstance(capacity, int) or capacity < 0:
        raise ValueError(
            f"a stream's capacity is a whole number of events >= 0 (it is bounded), "
            f"got {capacity!r}"
        )
    return capacity


def check_duplicate_window(window: object) -> float:
    """Seconds a ``msg_id`` is remembered: >= 0 (``0`` turns duplicate suppression off)."""
    if isinstance(window, int | float) and not isinstance(window, bool):
        value = float(window)
        if value >= 0:  # False for NaN
            return value
    raise ValueError(
        f"duplicate_window must be a number of seconds >= 0 (0 turns duplicate "
        f"suppression off), got {window!r}"
    )


def _check_name(_i: object, _a: object, value: Any) -> None:
    check_name(value)


def _one_of(choices: tuple[str, ...], what: str) -> Any:
    def check(_i: object, _a: object, value: object) -> None:
        if value not in choices:
            raise ValueError(f"unknown {what} {value!r}; use one of {', '.join(choices)}")

    return check


def _fits_a_float(value: float) -> bool:
    """Whether `value` (an int or float) converts to a float: an int past 1.8e308 does
    not, and `math` refuses it (OverflowError) where a timeout would be used."""
    try:
        float(value)
    except OverflowError:
        return False
    return True


def _seconds_or_none(what: str, meaning: str, *, finite: bool) -> Any:
    """An attrs validator: `what` is seconds >= 0 (finite with `finite`) or None;
    `meaning` says what the number and None mean, in the error."""

    def check(_i: object, _a: object, value: float | None) -> None:
        if value is None:
            return
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not _fits_a_float(value)
            or math.isnan(value)
            or value < 0
            or (finite and math.isinf(value))
        ):
            raise ValueError(f"{what} must be seconds >= 0{meaning}, got {value!r}")

    return check


_check_shutdown = _seconds_or_none("shutdown", " or None (wait forever)", finite=False)
_check_hibernate_after = _seconds_or_none(
    "hibernate_after",
    " (how long an idle actor keeps its task) or None (never hibernate)",
    finite=True,
)


_CHECKED: weakref.WeakKeyDictionary[type, tuple[Any, ...]] = weakref.WeakKeyDictionary()
"""Classes whose handlers passed `check_handlers`, with the handlers checked (a class
whose handlers are replaced later is checked again)."""


def check_handlers(factory: Callable[..., Any]) -> None:
    """Refuse an actor class whose `receive`, `on_start` or `on_stop` is a plain ``def``."""
    if not isinstance(factory, type):
        return  # a factory function: what it makes is checked when it runs
    handlers = tuple(getattr(factory, method, None) for method in HANDLERS)
    if _CHECKED.get(factory) == handlers:
        return  # checked already (this runs at every start of an actor of the class)
    for method in HANDLERS:
        fn = getattr(factory, method, None)
        if fn is not None and not inspect.iscoroutinefunction(fn):
            raise TypeError(
                f"{factory.__qualname__}.{method} must be 'async def {method}(...)': "
                "the runtime awaits it; a plain def would block the loop or return a value "
                "that is not awaitable"
            )
    _CHECKED[factory] = handlers


# -- cluster names ---------------------------------------------------------
URL_SCHEME = "troupe://"
"""How an actor's URL begins: ``troupe://<node>/<path>``."""
NODE_NAME = re.compile(r"[A-Za-z0-9_-]+")
"""A node name: one NATS subject token."""
CLUSTER_NAME = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
"""A cluster name: one or more dot-separated tokens (the NATS subject prefix)."""


def check_node_name(name: object) -> str:
    """`name` as a node name, else `ValueError` saying what one is."""
    if not isinstance(name, str) or not NODE_NAME.fullmatch(name):
        raise ValueError(
            f"a node name is one NATS subject token (letters, digits, '-' and '_'), got {name!r}"
        )
    return name


SUBJECT_KINDS: Final = ("bus", "node", "ctl")
"""The words after a cluster's name that its nodes subscribe under with wildcards (or
per node): no cluster name has one after its first word."""


def check_cluster_name(name: object) -> str:
    """`name` as a cluster name, else `ValueError` saying what one is."""
    if not isinstance(name, str) or not CLUSTER_NAME.fullmatch(name):
        raise ValueError(
            "a cluster name is one or more dot-separated tokens of letters, digits, '-' "
            f"and '_', got {name!r}"
        )
    words = name.split(".")
    for i, word in enumerate(words[1:], 1):
        if word in SUBJECT_KINDS:
            raise ValueError(
                f"cluster name {name!r}: {word!r} may not follow its first word: its "
                f"subjects would fall under those of cluster {'.'.join(words[:i])!r} "
                f"({'.'.join(words[: i + 1])}.>), and the two clusters would see each other"
            )
    return name


# -- child specs ----------------------------------------------------------
IMPORT_STRING = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_][\w.]*")
"""``"package.module:Class"``: a factory named by where to import it from."""


def resolve_factory(factory: Callable[..., Actor] | str) -> Callable[..., Actor]:
    """The factory itself; an import string is imported (and checked like a class).

    Raises `ImportError` naming the string when its module or attribute is
    missing, `TypeError` when it is not callable or has a plain-def handler.
    """
    if not isinstance(factory, str):
        return factory
    module_name, _, attribute = factory.partition(":")
    try:
        found: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as error:
        raise ImportError(f"cannot import the actor factory {factory!r}: {error}") from error
    if not callable(found):
        raise TypeError(f"{factory!r} names {found!r}, which is not an Actor subclass or factory")
    check_handlers(found)
    return found  # type: ignore[no-any-return]


@attrs.frozen
class ChildSpec:
    """How a supervisor makes, restarts and stops one worker. Build it with `child()`.

    `factory` may be an import string (``"package.module:Class"``), resolved
    when the child starts, on the node that starts it.
    """

    factory: Callable[..., Actor] | str
    name: str = attrs.field(validator=_check_name)
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = attrs.field(factory=dict)
    restart: Restart = attrs.field(default="permanent", validator=_one_of(RESTARTS, "restart type"))
    shutdown: float | None = attrs.field(default=5.0, validator=_check_shutdown)
    mailbox: Mailbox | None = None
    hibernate_after: float | None = attrs.field(default=None, validator=_check_hibernate_after)
    kind: ClassVar[str] = "actor"

    def mailbox_spec(self) -> Mailbox:
        """The mailbox this child gets: the spec's, else the class's, else the default."""
        spec = self.mailbox
        if spec is None:
            spec = getattr(resolve_factory(self.factory), "mailbox", None)
        return spec if isinstance(spec, Mailbox) else DEFAULT_MAILBOX

    @property
    def cls_name(self) -> str:
        if isinstance(self.factory, str):
            return self.factory.rpartition(":")[2]
        return str(getattr(self.factory, "__qualname__", repr(self.factory)))


def _default_name(factory: Callable[..., Any] | str) -> str:
    if isinstance(factory, str):
        raw = factory.rpartition(":")[2].rpartition(".")[2] or "actor"
    else:
        raw = getattr(factory, "__name__", "actor")
    return re.sub(r"(?<!^)(?=[A-Z])", "-", raw).lower()


def child(
    factory: Callable[..., Actor] | str,
    *,
    name: str | None = None,
    args: Sequence[Any] = (),
    kwargs: Mapping[str, Any] | None = None,
    restart: Restart = "permanent",
    shutdown: float | None = 5.0,
    mailbox: Mailbox | None = None,
    hibernate_after: float | None = None,
) -> ChildSpec:
    """A worker child: `factory(*args, **kwargs)` makes a fresh actor at every (re)start.

    `factory` is an Actor subclass (or a function returning an actor), or an
    import string ``"package.module:Class"`` resolved when the child starts (on
    the node that starts it: how a child is started on another node).

    `restart`: ``permanent`` (always), ``transient`` (only after a crash),
    ``temporary`` (never).  `shutdown`: seconds `on_stop` may take before the
    incarnation is cancelled (None waits forever).

    `hibernate_after`: seconds an idle actor keeps its trio task (OTP's
    ``hibernate_after``).  Past them, with nothing queued and no task of its
    own in ``ctx.nursery`` (timers included), the task ends and the actor
    hibernates: it keeps its instance and state, stays ``running`` in
    snapshots, and the next message (or watch notice, ...) starts a fresh
    task in the same incarnation; so does a stop, to run an ``on_stop`` of
    its own (without one it stops with no task).  An actor class without an
    ``on_start`` of its own starts hibernating.  None (the default): the
    actor keeps its task while it runs.

    Raises `TypeError` if `factory` is not callable or its `receive`,
    `on_start` or `on_stop` is not ``async def``; `ValueError` for a bad
    name, restart type, shutdown or hibernate_after.
    """
    if isinstance(factory, str):
        if not IMPORT_STRING.fullmatch(factory):
            raise ValueError(
                f"an import string names a class as 'package.module:Class', got {factory!r}"
            )
    elif not callable(factory):
        raise TypeError(f"child() needs an Actor subclass or factory, got {factory!r}")
    else:
        check_handlers(factory)
    if mailbox is not None and not isinstance(mailbox, Mailbox):
        raise TypeError(f"mailbox= takes a Mailbox(capacity=..., overflow=...), got {mailbox!r}")
    return ChildSpec(
        factory=factory,
        name=name if name is not None else _default_name(factory),
        args=tuple(args),
        kwargs=dict(kwargs or {}),
        restart=restart,
        shutdown=shutdown,
        mailbox=mailbox,
        hibernate_after=hibernate_after,
    )


# -- supervisors ----------------------------------------------------------
@attrs.frozen
class Backoff:
    """Exponential delay before each restart: ``min * 2**(n-1)`` capped at ``max``,
    plus up to ``jitter`` of itself at random (n = restarts in the intensity window)."""

    min: float = 0.1
    max: float = 10.0
    jitter: float = 0.2

    def __attrs_post_init__(self) -> None:
        if not (0 <= self.min <= self.max) or not (0 <= self.jitter <= 1):
            raise ValueError("Backoff needs 0 <= min <= max and 0 <= jitter <= 1")
        if not _fits_a_float(self.max) or not math.isfinite(self.max):
            raise ValueError("Backoff needs a finite max delay")

    def delay(self, attempt: int, rng: random.Random) -> float:
        try:
            base = min(self.max, self.min * 2.0 ** max(0, attempt - 1))
        except OverflowError:  # 2.0 ** 1024 and up: far past any max
            base = self.max
        return float(base * (1 + self.jitter * rng.random()))


def _children(value: Iterable[ChildSpec | Supervisor]) -> tuple[ChildSpec | Supervisor, ...]:
    specs = tuple(value)
    seen: set[str] = set()
    for spec in specs:
        if not isinstance(spec, ChildSpec | Supervisor):
            raise TypeError(
                f"supervisor children must be child(...) specs or Supervisors, got {spec!r}"
            )
        if spec.name in seen:
            raise ValueError(
                f"two children are named {spec.name!r}; names are unique per supervisor"
            )
        seen.add(spec.name)
    return specs


def _check_intensity(_i: object, _a: object, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"max_restarts must be an int >= 0, got {value!r}")


def _check_within(_i: object, _a: object, value: float) -> None:
    if not (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and _fits_a_float(value)
        and value > 0
        and math.isfinite(value)
    ):
        raise ValueError(f"within must be a positive number of seconds, got {value!r}")


@attrs.frozen
class Supervisor:
    """A supervisor spec: usable as a tree's root or as a child of another supervisor."""

    name: str = attrs.field(validator=_check_name)
    strategy: Strategy = attrs.field(
        default="one_for_one", kw_only=True, validator=_one_of(STRATEGIES, "strategy")
    )
    max_restarts: int = attrs.field(default=3, kw_only=True, validator=_check_intensity)
    within: float = attrs.field(default=5.0, kw_only=True, validator=_check_within)
    children: tuple[ChildSpec | Supervisor, ...] = attrs.field(
        default=(), kw_only=True, converter=_children
    )
    backoff: Backoff | None = attrs.field(default=None, kw_only=True)
    restart: Restart = attrs.field(
        default="permanent", kw_only=True, validator=_one_of(RESTARTS, "restart type")
    )
    shutdown: float | None = attrs.field(default=None, kw_only=True, validator=_check_shutdown)
    receiver: str | None = attrs.field(default=None, kw_only=True)
    """The child that receives the messages sent to this supervisor's path (e.g. a
    pool's router): `system.ref(path)` of this supervisor returns that child's ref.
    It must be a ``permanent`` child."""
    kind: ClassVar[str] = "supervisor"
    cls_name: ClassVar[str] = "Supervisor"

    def __attrs_post_init__(self) -> None:
        if self.receiver is not None:
            named = [c for c in self.children if c.name == self.receiver]
            if not named:
                raise ValueError(
                    f"receiver={self.receiver!r} is not one of {self.name!r}'s children: "
                    "name the child that takes the messages sent to this supervisor"
                )
            if named[0].restart != "permanent":
                raise ValueError(
                    f"receiver={self.receiver!r} is a {named[0].restart} child of "
                    f"{self.name!r}: once it stopped for good, nothing could reach "
                    "this supervisor's path; make it permanent"
                )
        if self.backoff is not None and not isinstance(self.backoff, Backoff):
            raise TypeError(f"backoff= takes a Backoff(...), got {self.backoff!r}")

    mailbox: ClassVar[Mailbox] = Mailbox(capacity=1000, overflow="fail")
    """Supervisors handle no user messages; a few are kept for dead letters."""

    def mailbox_spec(self) -> Mailbox:
        return self.mailbox


@attrs.frozen
class ChildInfo:
    """One row of `system.which_children(path)` (OTP's which_children)."""

    name: str
    path: str
    ref: ActorRef
    kind: str
    state: str
    restart: str
    dynamic: bool


__all__ = [
    "OVERFLOW_POLICIES",
    "Backoff",
    "ChildInfo",
    "ChildSpec",
    "Mailbox",
    "Overflow",
    "Restart",
    "Strategy",
    "Supervisor",
    "check_correlation_id",
    "check_duplicate_window",
    "check_handlers",
    "check_history",
    "check_msg_id",
    "check_name",
    "check_since",
    "check_stream_capacity",
    "check_timeout",
    "child",
]

"""The cluster's envelope: what wraps every message between nodes.

An envelope is a msgpack array ``[kind, from_node, from_incarnation, ...]``;
the user's message travels inside it as separately encoded bytes (the
`Codec`'s), so that an envelope whose body cannot be decoded can still be
answered or dead-lettered using its sender and path.

Subjects (``C`` is the cluster name, ``N`` a node):

- ``C.node.N.u``: N's user lane (tells, asks, sends, in the order sent)
- ``C.node.N.s``: N's system lane (watches, control requests, direct heartbeats)
- ``C.node.N.r.<incarnation>.<id>``: replies to N's asks
- ``C.node.N.probe``: the probe of N's name at start
- ``C.hb``: heartbeats and leaves of every node
- ``C.ctl.N`` and ``C.ctl`` (one node of the cluster answers): requests of plain
  NATS clients such as ``troupe ls --cluster`` (a msgpack ``[op, args]``; the
  answer is ``[ok, value]``), which join no membership
- ``C.bus.<topic>``: events of the cluster-wide topics
"""

from __future__ import annotations

import re
from typing import Any, Final

import msgspec

# user messages name the receiver's incarnation they were numbered for (`to`)
TELL: Final = 1  # [TELL, node, inc, to, seq, path, body]
ASK: Final = 2  # [ASK, node, inc, to, seq, path, body, ask_id, remaining_timeout]
SEND: Final = 3  # [SEND, node, inc, to, seq, path, body, ask_id, remaining_timeout]
SKIP: Final = 4  # [SKIP, node, inc, to, first_seq, last_seq]: dead-lettered at the sender
REPLY: Final = 5  # [REPLY, node, inc, ok, body | error]
HEARTBEAT: Final = 6  # [HEARTBEAT, node, inc, info, answer_me]
LEAVE: Final = 7  # [LEAVE, node, inc]
WATCH: Final = 8  # [WATCH, node, inc, target_path, watcher_path]
UNWATCH: Final = 9  # [UNWATCH, node, inc, target_path, watcher_path]
TERMINATED: Final = 10  # [TERMINATED, node, inc, target_path, watcher_path, reason]
DOWN: Final = 11  # [DOWN, node, inc, your_incarnation]: you were declared down
CONTROL: Final = 12  # [CONTROL, node, inc, op, args]
EVENT: Final = 13  # [EVENT, node, inc, body]
MARK: Final = 14  # [MARK, node, inc, to, last_seq]: the last number sent so far (in order)

INCARNATION = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""What a node incarnation id may look like (ours are hex: milliseconds since the
epoch and a random part); anything else is not from a node."""

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder()


def pack(*fields: Any) -> bytes:
    """An envelope's bytes."""
    return _encoder.encode(fields)


def unpack(data: bytes) -> list[Any] | None:
    """An envelope's fields, or None if `data` is not one (then it is ignored)."""
    try:
        fields = _decoder.decode(data)
    except (msgspec.DecodeError, ValueError, TypeError, RecursionError):
        return None
    if (
        not isinstance(fields, list)
        or len(fields) < 3
        or not isinstance(fields[0], int)
        or not isinstance(fields[1], str)
        or not isinstance(fields[2], str)
    ):
        return None
    return fields


def unpack_request(data: bytes) -> tuple[str, Any] | None:
    """A client's ``[op, args]``, or None if `data` is not one."""
    try:
        fields = _decoder.decode(data)
    except (msgspec.DecodeError, ValueError, TypeError, RecursionError):
        return None
    if not isinstance(fields, list) or len(fields) != 2 or not isinstance(fields[0], str):
        return None
    return fields[0], fields[1]


def unpack_batch(data: bytes) -> list[list[Any]] | None:
    """The envelopes of a batch (tells, or events, packed in one NATS message), or None.

    Each is checked as `unpack` checks one; their kinds are the caller's to check."""
    try:
        items = _decoder.decode(data)
    except (msgspec.DecodeError, ValueError, TypeError, RecursionError):
        return None
    if not isinstance(items, list) or not items:
        return None
    for fields in items:
        if (
            not isinstance(fields, list)
            or len(fields) < 4
            or not isinstance(fields[0], int)
            or not isinstance(fields[1], str)
            or not isinstance(fields[2], str)
        ):
            return None
    return items


class Subjects:
    """The NATS subjects of one cluster, as seen from one node."""

    def __init__(self, cluster: str, node: str) -> None:
        self.cluster = cluster
        self.node = node
        self.heartbeats = f"{cluster}.hb"
        self.control_any = f"{cluster}.ctl"
        self.control_mine = f"{cluster}.ctl.{node}"
        self.mine = f"{cluster}.node.{node}.>"
        self.probe = f"{cluster}.node.{node}.probe"
        self._replies = f"{cluster}.node.{node}.r."

    def user(self, node: str) -> str:
        return f"{self.cluster}.node.{node}.u"

    def system(self, node: str) -> str:
        return f"{self.cluster}.node.{node}.s"

    def reply(self, incarnation: str, ask_id: int) -> str:
        return f"{self._replies}{incarnation}.{ask_id}"

    def tell_reply(self, incarnation: str, node: str, to: str) -> str:
        """The prefix of the reply subject of tells to incarnation `to` of `node`: the
        writer appends ``<first seq>-<last seq>``; NATS writes there that nobody
        listens."""
        return f"{self._replies}{incarnation}.{node}.{to}."

    def topic(self, topic: str) -> str:
        """The subject of a cluster-wide topic (or pattern: the syntax is NATS's)."""
        return f"{self.cluster}.bus.{topic}"

    def lane(self, subject: str) -> tuple[str, str | None, int | None]:
        """Which of this node's subjects `subject` is: ``("u"|"s"|"probe", None, None)``,
        ``("r", incarnation, ask_id)``, ``("t", incarnation, None)`` (tells' reply
        subject), ``("hb", ...)``, ``("ctl", ...)`` (a client's request), ``("bus",
        ...)`` or ``("?", ...)``."""
        if subject == self.heartbeats:
            return "hb", None, None
        if subject == self.control_mine or subject == self.control_any:
            return "ctl", None, None
        prefix = f"{self.cluster}.node.{self.node}."
        if subject.startswith(prefix):
            rest = subject[len(prefix) :]
            if rest in ("u", "s", "probe"):
                return rest, None, None
            if rest.startswith("r."):
                parts = rest.split(".")
                if len(parts) == 3 and parts[2].isascii() and parts[2].isdigit():
                    return "r", parts[1], int(parts[2])
                if len(parts) == 5:
                    return "t", parts[1], None
            return "?", None, None
        if subject.startswith(f"{self.cluster}.bus."):
            return "bus", None, None
        return "?", None, None

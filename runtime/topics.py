"""Topic and pattern syntax (NATS's: ``*`` one segment, ``>`` the rest) and `PatternIndex`.

Topics whose first segment is ``system`` belong to the runtime and are kept
apart: a pattern whose first segment is a wildcard (``>``, ``*.x``, ``*.>``)
does not match them; a pattern must name them (``system.>``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

if TYPE_CHECKING:
    from .messages import Event

MATCH_CACHE = 4096
"""Topics whose matching subscriptions the index remembers (then it starts over)."""
SYSTEM = "system"
"""The first segment of the runtime's own topics."""


class Indexed(Protocol):
    """What the index needs of a subscription: its pattern's segments and its age."""

    segments: tuple[str, ...]
    seq: int


T = TypeVar("T", bound=Indexed)


def _segments(text: object, what: str) -> tuple[str, ...]:
    if not isinstance(text, str):
        raise ValueError(f"a {what} is a dot-separated string like 'training.done', got {text!r}")
    parts = tuple(text.split("."))
    if not text or any(not part or any(c.isspace() for c in part) for part in parts):
        raise ValueError(
            f"invalid {what} {text!r}: segments are non-empty, dot-separated and contain no "
            "whitespace"
        )
    return parts


def check_topic(topic: object) -> tuple[str, ...]:
    """Validate a topic to publish on: no wildcards."""
    parts = _segments(topic, "topic")
    for part in parts:
        if "*" in part or ">" in part:
            raise ValueError(
                f"invalid topic {topic!r}: wildcards '*' and '>' belong in subscription "
                "patterns, not in published topics"
            )
    return parts


def check_user_topic(topic: object) -> tuple[str, ...]:
    """`check_topic`, and refuse the runtime's own topics (``system`` and ``system.*``)."""
    parts = check_topic(topic)
    if parts[0] == SYSTEM:
        raise ValueError(
            f"cannot publish on {topic!r}: topics under 'system.' belong to the runtime; "
            "choose another first segment"
        )
    return parts


def check_pattern(pattern: object) -> tuple[str, ...]:
    """Validate a NATS-style pattern: ``*`` is one whole segment, ``>`` the last one."""
    parts = _segments(pattern, "pattern")
    for i, part in enumerate(parts):
        if part in ("*", ">"):
            if part == ">" and i != len(parts) - 1:
                raise ValueError(f"invalid pattern {pattern!r}: '>' must be the last segment")
        elif "*" in part or ">" in part:
            raise ValueError(
                f"invalid pattern {pattern!r}: a wildcard must be a whole segment ('a.*', not 'a*')"
            )
    return parts


def matches(pattern: str, topic: str) -> bool:
    """Does `topic` match `pattern`? (The slow, obvious definition; the index is faster.)"""
    return _segments_match(check_pattern(pattern), check_topic(topic))


def _segments_match(pat: tuple[str, ...], top: tuple[str, ...]) -> bool:
    if top[0] == SYSTEM and pat[0] in ("*", ">"):
        return False  # the runtime's topics are matched only by patterns that name them
    for i, part in enumerate(pat):
        if part == ">":
            return len(top) > i
        if i >= len(top) or (part != "*" and part != top[i]):
            return False
    return len(top) == len(pat)


def covers(outer: str, inner: str) -> bool:
    """Does every topic that matches `inner` match `outer`?  (``jobs.>`` covers
    ``jobs.high.*``; ``*.x`` covers ``a.x``; ``a.x`` does not cover ``*.x``.)
    Raises `ValueError` for an invalid pattern."""
    out, inn = check_pattern(outer), check_pattern(inner)
    if inn[0] == SYSTEM and out[0] in ("*", ">"):
        return False  # as `matches`: wildcards-first do not reach the runtime's topics
    for i, part in enumerate(out):
        if part == ">":
            return len(inn) > i
        if i >= len(inn) or inn[i] == ">" or (part != "*" and part != inn[i]):
            return False
    return len(inn) == len(out)


def _widest(patterns: Iterable[str]) -> list[str]:
    """`patterns` without those another one covers (`covers`; of equal ones, the
    first), in their order: a topic matches one of the result iff it matches one
    of `patterns`.  Raises `ValueError` for an invalid pattern."""
    kept: list[str] = []
    for pattern in patterns:
        check_pattern(pattern)
        if any(covers(other, pattern) for other in kept):
            continue
        kept = [other for other in kept if not covers(pattern, other)]
        kept.append(pattern)
    return kept


def cover(patterns: Iterable[str]) -> str | None:
    """One pattern every topic of `patterns` matches, as narrow as their common
    leading words allow: the one of them that covers the others if there is one,
    else those words and ``>`` (``jobs.>`` for ``jobs.a.>`` and ``jobs.b.*``;
    ``>`` for ``a.>`` and ``b.>``, and for ``alerts`` and ``metrics``).  None for
    no patterns.  For application topics: with ``system.*`` patterns among
    others the cover is NATS's (where ``>`` takes ``system.*`` subjects too),
    not `matches`'s.  Raises `ValueError` for an invalid pattern."""
    kept = _widest(patterns)
    if len(kept) <= 1:
        return kept[0] if kept else None
    words = [pattern.split(".") for pattern in kept]
    common = 0
    while all(
        common < len(w) - 1 and w[common] not in ("*", ">") and w[common] == words[0][common]
        for w in words
    ):
        common += 1
    return ".".join([*words[0][:common], ">"])


def matching(pattern: str, events: Iterable[Event]) -> Iterator[Event]:
    """The events whose (already valid) topics match `pattern`, checked once."""
    pat = check_pattern(pattern)
    for event in events:
        if _segments_match(pat, tuple(event.topic.split("."))):
            yield event


class _Node:
    __slots__ = ("children", "here", "star", "tail")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.star: _Node | None = None
        self.here: list[Any] = []  # patterns ending at this node
        self.tail: list[Any] = []  # patterns ending in '>' below this node


class PatternIndex(Generic[T]):
    """A trie of subscription patterns: matching walks the topic, not every subscription."""

    def __init__(self) -> None:
        self._root = _Node()
        self._cache: dict[str, list[T]] = {}
        self.count = 0

    def add(self, sub: T) -> None:
        node = self._root
        for part in sub.segments:
            if part == ">":
                node.tail.append(sub)
                break
            if part == "*":
                if node.star is None:
                    node.star = _Node()
                node = node.star
            else:
                nxt = node.children.get(part)
                if nxt is None:
                    nxt = node.children[part] = _Node()
                node = nxt
        else:
            node.here.append(sub)
        self.count += 1
        self._cache.clear()

    def remove(self, sub: T) -> None:
        path: list[tuple[_Node, str]] = []
        node = self._root
        for part in sub.segments:
            if part == ">":
                node.tail.remove(sub)
                break
            nxt = node.star if part == "*" else node.children.get(part)
            assert nxt is not None
            path.append((node, part))
            node = nxt
        else:
            node.here.remove(sub)
        self.count -= 1
        self._cache.clear()
        # prune empty branches so that churn does not leak nodes
        for parent, part in reversed(path):
            child = parent.star if part == "*" else parent.children[part]
            assert child is not None
            if child.here or child.tail or child.children or child.star is not None:
                break
            if part == "*":
                parent.star = None
            else:
                del parent.children[part]

    def match(self, topic: str, segments: tuple[str, ...]) -> list[T]:
        """The subscriptions whose patterns match `topic` (its `segments`), oldest first.

        A runtime topic (first segment ``system``) is matched only by patterns
        that begin with ``system``: the walk skips the root's wildcards.
        """
        found = self._cache.get(topic)
        if found is not None:
            return found
        found = []
        if segments[0] == SYSTEM:
            named = self._root.children.get(SYSTEM)
            if named is not None:
                self._walk(named, segments, 1, found)
        else:
            self._walk(self._root, segments, 0, found)
        if len(found) > 1:
            found.sort(key=lambda sub: sub.seq)
        if len(self._cache) >= MATCH_CACHE:
            self._cache.clear()
        self._cache[topic] = found
        return found

    def _walk(self, node: _Node, segments: tuple[str, ...], i: int, out: list[T]) -> None:
        if i == len(segments):
            out.extend(node.here)
            return
        if node.tail:
            out.extend(node.tail)
        nxt = node.children.get(segments[i])
        if nxt is not None:
            self._walk(nxt, segments, i + 1, out)
        if node.star is not None:
            self._walk(node.star, segments, i + 1, out)


__all__ = [
    "SYSTEM",
    "PatternIndex",
    "check_pattern",
    "check_topic",
    "check_user_topic",
    "cover",
    "covers",
    "matches",
    "matching",
]

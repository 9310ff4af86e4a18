"""Dead letters: where every message that was not handled is recorded, with a reason."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

import attrs

from .actor import Actor
from .messages import DEAD_LETTER_REASONS, UNHANDLED, short_repr

REASONS = DEAD_LETTER_REASONS
"""The reasons a message can be dead-lettered for (see `runtime.messages`)."""

MAX_REPORT = 1000
"""The most letters one `DeadLetterOffice.report` returns: as many as an office keeps
whole by default."""


@attrs.frozen
class DeadLetter:
    """One message that was not handled, as `DeadLettersQuery` returns it."""

    message: Any
    """The message itself (for an ask, what was asked)."""
    reason: str
    """Why it was not handled: one of `REASONS` (``crashed``, ``overflow``, ...)."""
    recipient: str
    """The path of the actor it was for."""
    timestamp: float
    """When it was recorded (a `time.time` value)."""


class DeadLetterOffice:
    """The bounded record behind ``/system/deadletters``.

    Recording is synchronous and never fails, so that the runtime can account
    for a message at the very place it gives up on it.  Counts are kept for
    ever; only the last ``capacity`` letters are kept whole.
    """

    def __init__(self, capacity: int = MAX_REPORT) -> None:
        self._recent: deque[DeadLetter] = deque(maxlen=capacity)
        self.counts: dict[str, int] = dict.fromkeys(REASONS, 0)
        self.by_recipient: dict[str, int] = {}

    def record(self, message: Any, reason: str, recipient: str) -> None:
        if reason not in self.counts:
            raise ValueError(f"unknown dead-letter reason {reason!r}")
        self.counts[reason] += 1
        self.by_recipient[recipient] = self.by_recipient.get(recipient, 0) + 1
        self._recent.append(DeadLetter(message, reason, recipient, time.time()))

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def recent(self, limit: int = 100, reason: str | None = None) -> list[DeadLetter]:
        """The newest `limit` letters (of `reason` only, if given), newest first; none
        for a `limit` of 0 or less."""
        out: list[DeadLetter] = []
        if limit <= 0:
            return out
        for letter in reversed(self._recent):
            if reason is None or letter.reason == reason:
                out.append(letter)
                if len(out) >= limit:
                    break
        return out

    def report(self, limit: int = 20, reason: str | None = None) -> dict[str, Any]:
        """What ``troupe deadletters`` shows, as JSON-ready values: ``letters``, the
        newest `limit` (of `reason` only, if given), newest first, each with
        ``timestamp, recipient, reason, type`` (the message's class) and ``repr``
        (a short one, see `runtime.messages.short_repr`); and ``counts``, the
        totals by reason since start.  The control socket and a cluster node
        (over NATS) answer with it.

        Raises `ValueError` for a `limit` that is not a whole number from 1 to
        `MAX_REPORT`, or an unknown `reason`.
        """
        if type(limit) is not int or not 0 < limit <= MAX_REPORT:
            raise ValueError(f'"limit" is a whole number from 1 to {MAX_REPORT}')
        if reason is not None and reason not in REASONS:
            raise ValueError(
                f"unknown reason {short_repr(reason, 60)}; use one of {', '.join(REASONS)}"
            )
        letters = [
            {
                "timestamp": letter.timestamp,
                "recipient": letter.recipient,
                "reason": letter.reason,
                "type": type(letter.message).__qualname__,
                "repr": short_repr(letter.message),
            }
            for letter in self.recent(limit, reason)
        ]
        return {"letters": letters, "counts": dict(self.counts)}


@attrs.frozen
class DeadLettersQuery:
    """Ask ``/system/deadletters`` for its newest letters: the reply is a list of
    `DeadLetter`, newest first, at most `limit` of them, only those of `reason` if
    given.  The last 1,000 letters are kept whole; the counts by reason (in
    `TreeSnapshot.dead_letters`) are kept for ever."""

    limit: int = 100
    reason: str | None = None


class DeadLetters(Actor):
    """The system actor at ``/system/deadletters``: answers `DeadLettersQuery`."""

    async def receive(self, msg: Any) -> Any:
        if issubclass(type(msg), DeadLettersQuery):  # (`type`: a dead proxy's __class__ raises)
            return self.ctx.system.dead_letters.recent(msg.limit, msg.reason)
        return UNHANDLED

    def snapshot_stats(self) -> dict[str, Any]:
        office = self.ctx.system.dead_letters
        return {"total": office.total, **office.counts}

"""`log_once`: report each problem of the faces once, not once per request or event."""

from __future__ import annotations

import logging


class LogOnce:
    """Logs each problem once, not once per request, event or snapshot.

    A problem is a (kind, name) pair, e.g. ``("a cycle", "dict")``; at most
    `limit` are remembered, and past that new ones are no longer logged.
    """

    def __init__(self, limit: int = 256) -> None:
        self.limit = limit
        self._seen: set[tuple[str, str]] = set()
        self._full = False

    def __call__(
        self,
        logger: logging.Logger,
        level: int,
        kind: str,
        name: str,
        msg: str,
        *args: object,
        exc_info: BaseException | None = None,
    ) -> None:
        key = (kind, name)
        if key in self._seen:
            return
        if len(self._seen) >= self.limit:
            if not self._full:
                self._full = True
                logger.warning("%d different problems reported: no more are logged", self.limit)
            return
        self._seen.add(key)
        logger.log(level, msg, *args, exc_info=exc_info, stacklevel=2)

    def clear(self) -> None:
        self._seen.clear()
        self._full = False


log_once = LogOnce()
"""Shared by the faces (control socket, metrics, snapshots)."""


__all__ = ["LogOnce", "log_once"]

"""Logging helpers: `log_once` (report each problem of the faces once, not once per
request or event), `log_crash` (one line and one traceback per failure, however
many supervisors it goes through), and the console of ``troupe run``
(`configure_console`: repeated errors summarized)."""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from .errors import RestartIntensityExceeded
from .messages import describe


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


# -- crashes: one line and one traceback per failure ---------------------------------
def first_leaf(exc: BaseException) -> BaseException:
    """The exception an exception group is about: the one inside nested single-exception
    groups (trio's nurseries wrap what they raise), else the first leaf."""
    while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
        exc = exc.exceptions[0]
    return exc


_ROOT = "_troupe_root_cause"
_LOGGED = "_troupe_logged"


def note_root_cause(error: BaseException, path: str, cause: BaseException) -> None:
    """Remember that `error` (e.g. a supervisor giving up) was caused by `cause`, a
    failure of the actor at `path` (see `root_cause`)."""
    with contextlib.suppress(Exception):
        setattr(error, _ROOT, (path, cause))


def root_cause(path: str, exc: BaseException) -> tuple[str, BaseException]:
    """The failure at the bottom of `exc`, which ended the actor at `path`: an
    exception group's first leaf; for a supervisor that gave up, the failure of the
    actor that made it give up (and so on down).  Returns ``(path, exception)``."""
    for _ in range(100):  # a bounded walk: noted causes never loop, but be sure
        exc = first_leaf(exc)
        noted = getattr(exc, _ROOT, None)
        if noted is None:
            break
        path, exc = noted
    return path, exc


def _mark_logged(exc: BaseException) -> bool:
    """Note that `exc` was logged; False if it already was (a supervisor above the
    actor that failed sees the same exception again)."""
    both = (exc, first_leaf(exc))
    seen = any(getattr(each, _LOGGED, False) for each in both)
    for each in both:
        with contextlib.suppress(Exception):
            setattr(each, _LOGGED, True)
    return not seen


NO_TRACEBACK = "troupe_no_traceback"
"""A record attribute (``extra={NO_TRACEBACK: True}``): the console shows the line
without its traceback (the failure's traceback was logged already)."""


def log_crash(
    logger: logging.Logger, path: str, during: str, exc: BaseException, text: str
) -> None:
    """Log a crash once: ``PATH DURING: TEXT`` with its traceback, at ERROR.

    The same exception reaching the supervisors above (a child that fails to start
    fails its parent's start, a supervisor that gives up fails the root's) is
    logged again at DEBUG only.  A supervisor that gives up (`summary_only`: its
    error's traceback repeats the one of the crash that made it give up) is one
    line: the record keeps its exception (for `runtime.testing.expect_crashes`)
    but the console leaves the traceback out.
    """
    if not _mark_logged(exc):
        logger.debug("%s %s: %s (logged above)", path, during, text)
        return
    extra = {NO_TRACEBACK: True} if getattr(exc, _ROOT, None) is not None else None
    logger.error("%s %s: %s", path, during, text, exc_info=exc, extra=extra)


# -- the console of `troupe run` ---------------------------------------------------------
class ConsoleFormatter(logging.Formatter):
    """``HH:MM:SS LEVEL logger: message``; no traceback for records marked `NO_TRACEBACK`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")

    def format(self, record: logging.LogRecord) -> str:
        if getattr(record, NO_TRACEBACK, False) and record.exc_info:
            saved, saved_text = record.exc_info, record.exc_text
            record.exc_info, record.exc_text = None, None
            try:
                return super().format(record)
            finally:
                record.exc_info, record.exc_text = saved, saved_text
        return super().format(record)


class RepeatFilter(logging.Filter):
    """Summarizes repeated identical errors: the first is shown in full; the same one
    again within `window` seconds is counted, not shown; the next one after the window
    (or `flush`, or a timer at the window's end) prints one line,
    ``... (same error 40 more times in 10 s)``, and a new window begins.

    Identical: same logger, same message template and arguments (an actor's crash:
    its path, what it was doing, the error's type and text).  Only ERROR and above
    are summarized.  For a handler (the console), not a logger.
    """

    def __init__(
        self,
        window: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        emit: Callable[[logging.LogRecord], object] | None = None,
    ) -> None:
        super().__init__()
        self.window = window
        self.clock = clock
        self.emit = emit  # where a timer's summary goes (the handler's `handle`)
        self._lock = threading.Lock()
        # key -> [window start, repeats not shown, a record to summarize]
        self._open: dict[tuple[Any, ...], list[Any]] = {}
        # one thread ends the windows of every error (not a timer per error)
        self._sweeper: threading.Thread | None = None
        self._stop = threading.Event()

    @staticmethod
    def _key(record: logging.LogRecord) -> tuple[Any, ...] | None:
        if record.levelno < logging.ERROR or getattr(record, "troupe_summary", False):
            return None
        try:
            args: Any = record.args
            if isinstance(args, tuple):
                args = tuple(a if isinstance(a, str | int | float) else repr(a) for a in args)
            else:
                args = repr(args)
            return (record.name, str(record.msg), args)
        except Exception:
            return None

    def filter(self, record: logging.LogRecord) -> bool:
        key = self._key(record)
        if key is None:
            return True
        now = self.clock()
        with self._lock:
            state = self._open.get(key)
            if state is not None and now - state[0] < self.window:
                state[1] += 1
                state[2] = record
                return False
            summary = None
            if state is not None and state[1]:  # its window is over, not yet swept
                if self.emit is not None:  # its own line, before this one in full
                    summary = logging.makeLogRecord(dict(state[2].__dict__))
                    self._summarize(summary, state[1], now - state[0])
                else:  # nowhere else to say it: this record becomes the summary
                    self._summarize(record, state[1] + 1, now - state[0])
            self._open[key] = [now, 0, record]
            self._ensure_sweeper()
            if len(self._open) > 1000:  # forget the oldest
                self._open.pop(next(iter(self._open)))
        if summary is not None and self.emit is not None:
            self.emit(summary)
        return True

    def _summarize(self, record: logging.LogRecord, repeats: int, seconds: float) -> None:
        """Turn `record` into the one-line summary of `repeats` like it."""
        plural = "s" if repeats != 1 else ""
        record.msg = (
            f"{record.getMessage()} (same error {repeats} more time{plural} in "
            f"{max(seconds, 1.0):.0f} s)"
        )
        record.args = None
        record.exc_info = None
        record.exc_text = None
        record.troupe_summary = True

    def _ensure_sweeper(self) -> None:
        """Make sure the one sweeper thread runs (it ends every error's window)."""
        if self.emit is None or self._sweeper is not None:
            return
        self._sweeper = threading.Thread(target=self._sweep, name="troupe log repeats", daemon=True)
        self._sweeper.start()

    def _sweep(self) -> None:
        """The sweeper thread: end the windows that are over, a few times a window."""
        while not self._stop.wait(max(self.window / 4, 0.05)):
            now = self.clock()
            with self._lock:
                over = [key for key, state in self._open.items() if now - state[0] >= self.window]
            for key in over:
                self._expire(key)

    def _expire(self, key: tuple[Any, ...]) -> None:
        """The window of `key` is over: print the summary of the repeats not shown, and
        keep counting for another window; none: forget it (the next one is shown in
        full)."""
        with self._lock:
            state = self._open.get(key)
            if state is None:
                return
            if not state[1]:
                del self._open[key]
                return
            now = self.clock()
            summary = logging.makeLogRecord(dict(state[2].__dict__))
            self._summarize(summary, state[1], now - state[0])
            self._open[key] = [now, 0, state[2]]
        if self.emit is not None:
            self.emit(summary)

    def flush(self) -> None:
        """Print the summaries still pending and forget everything (at exit)."""
        with self._lock:
            keys = list(self._open)
        for key in keys:
            self._expire(key)
        self.close()

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            self._open.clear()


class Console:
    """The log output of ``troupe run`` (see `configure_console`); `close` when done."""

    def __init__(self, handler: logging.Handler, repeats: RepeatFilter, level: int) -> None:
        self.handler = handler
        self.repeats = repeats
        self._saved_level = level

    def flush(self) -> None:
        """Print the summaries of repeated errors still pending."""
        self.repeats.flush()

    def close(self) -> None:
        """Flush, and take the handler off the root logger (its level restored)."""
        self.repeats.flush()
        root = logging.getLogger()
        root.removeHandler(self.handler)
        root.setLevel(self._saved_level)


def configure_console(
    level: int | str = logging.INFO,
    *,
    quiet: bool = False,
    stream: Any = None,
    window: float = 10.0,
) -> Console:
    """Log to stderr (or `stream`) as `troupe run` does: `ConsoleFormatter`, repeated
    errors summarized (`RepeatFilter`); `quiet` shows warnings and errors only.  A
    handler on the root logger until `Console.close`."""
    if isinstance(level, str):
        number = logging.getLevelName(level.upper())
        if not isinstance(number, int):
            raise ValueError(f"unknown log level {level!r}")
        level = number
    if quiet:
        level = max(level, logging.WARNING)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(ConsoleFormatter())
    repeats = RepeatFilter(window, emit=handler.handle)
    handler.addFilter(repeats)
    root = logging.getLogger()
    console = Console(handler, repeats, root.level)
    root.addHandler(handler)
    root.setLevel(level)
    return console


def describe_failure(path: str, exc: BaseException) -> str:
    """A one-line text for the failure `exc` of the actor at `path` that names its root
    cause: never an exception group (its first leaf instead); for a supervisor that
    gave up, how and the failure that made it (see `root_cause`)."""
    where, cause = root_cause(path, exc)
    own = first_leaf(exc)
    if cause is own:
        return describe(cause)
    if isinstance(own, RestartIntensityExceeded):
        head = f"gave up: more than {own.max_restarts} restarts within {own.within:g}s"
    else:
        head = describe(own)
    return f"{head}; root cause: {where}: {describe(cause)}"


__all__ = [
    "Console",
    "ConsoleFormatter",
    "LogOnce",
    "RepeatFilter",
    "configure_console",
    "describe_failure",
    "first_leaf",
    "log_crash",
    "log_once",
    "note_root_cause",
    "root_cause",
]

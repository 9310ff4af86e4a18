"""Peer actor libraries (issue 8): Thespian's `simpleSystemBase` and `multiprocQueueBase`.

Thespian is driven from a plain synchronous caller (`ActorSystem().tell` /
`.ask`), so Troupe is driven the same way: a system in
`runtime.start_in_thread`, `ref.tell` and `ref.ask_blocking` called from the
benchmark's own (calling) thread.  Troupe and Thespian are measured in the same
process, one right after the other, with the same M and K.

Thespian is optional (the ``bench`` extra): without it the Thespian cells show
n/a and a note says why.  Every Thespian ActorSystem is shut down, even when a
measurement fails, and any process it started that outlives the shutdown is
reaped, or terminated by its pid, and reported.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from importlib import metadata
from time import perf_counter
from typing import Any

import runtime
from runtime import Supervisor, child

from .harness import Bench, Figures, Row, Size, eprint
from .kernel import quiet_troupe_log
from .threads import JOIN_TIMEOUT, ROOT, Echo, counter_tree

try:
    from thespian.actors import Actor as ThespianActor
    from thespian.actors import ActorSystem
except ImportError:  # the bench extra is not installed
    THESPIAN = False
    THESPIAN_VERSION = ""
else:
    THESPIAN = True
    try:
        THESPIAN_VERSION = metadata.version("thespian")
    except metadata.PackageNotFoundError:  # pragma: no cover - imported from a checkout
        THESPIAN_VERSION = "unknown version"

    class ThespianCounter(ThespianActor):  # type: ignore[misc]
        """Counts int messages; replies with the count to ``"count"``."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.n = 0

        def receiveMessage(self, msg: Any, sender: Any) -> None:  # Thespian's API
            if isinstance(msg, int):
                self.n += 1
            elif msg == "count":
                self.send(sender, self.n)

    class ThespianEcho(ThespianActor):  # type: ignore[misc]
        """Sends every int message back to its sender (ignores system messages)."""

        def receiveMessage(self, msg: Any, sender: Any) -> None:  # Thespian's API
            if isinstance(msg, int):
                self.send(sender, msg)


ASK_TIMEOUT = 10.0  # seconds, for every Thespian ask
REAP_GRACE = 5.0  # seconds a Thespian process may take to exit after shutdown()


# -- processes ------------------------------------------------------------------
# Thespian's multiproc bases daemonise their admin: our child calls setsid(),
# forks the real admin and exits, so the admin (and the logger and actors it
# forks) are re-parented to init.  They stay in the session our child led, so
# "ours" is: new children of this process, their descendants, and every
# process in a session one of them leads.
def processes() -> dict[int, tuple[str, int, int]]:
    """pid -> (state, ppid, session id), from /proc (empty where there is none)."""
    found: dict[int, tuple[str, int, int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:  # pragma: no cover - not Linux
        return found
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8") as f:
                stat = f.read()
        except OSError:  # gone meanwhile
            continue
        # "pid (comm) state ppid pgrp session ...": comm may hold spaces and parentheses
        fields = stat[stat.rfind(")") + 2 :].split()
        found[int(entry)] = (fields[0], int(fields[1]), int(fields[3]))
    return found


def spawned_since(before: set[int]) -> set[int]:
    """Processes this one started (directly or not) that were not in `before`."""
    procs = processes()
    me = os.getpid()
    ours = {pid for pid, (_, ppid, _) in procs.items() if ppid == me and pid not in before}
    grew = True
    while grew:
        more = {
            pid
            for pid, (_, ppid, sid) in procs.items()
            if pid not in ours and pid not in before and (ppid in ours or sid in ours)
        }
        ours |= more
        grew = bool(more)
    return ours


def _alive(pid: int) -> bool:
    """Running (not gone, not a zombie); reaps it first if it is our own child."""
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)  # Thespian detaches its admin: nobody else reaps it
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            stat = f.read()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2 :].split()[0] != "Z"


def settle(started: set[int], label: str) -> int:
    """Wait for the processes in `started` to exit; terminate (by pid) any that do
    not within REAP_GRACE seconds.  Returns how many had to be terminated."""
    deadline = time.monotonic() + REAP_GRACE
    left = {pid for pid in started if _alive(pid)}
    while left and time.monotonic() < deadline:
        time.sleep(0.02)
        left = {pid for pid in left if _alive(pid)}
    for pid in sorted(left):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    if left:
        eprint(
            f"  WARNING: {label}: {len(left)} process(es) outlived shutdown(), "
            f"terminated: {sorted(left)}"
        )
        time.sleep(0.1)
        for pid in left:
            _alive(pid)  # reap our own
    return len(left)


@contextlib.contextmanager
def thespian_system(base: str) -> Iterator[Any]:
    """A Thespian ActorSystem on `base`, always shut down, leaving no process behind."""
    before = set(processes())
    system = None
    try:
        system = ActorSystem(base)
        yield system
    finally:
        started = spawned_since(before)  # admin, logger and actor processes
        try:
            if system is not None:
                system.shutdown()
        finally:
            settle(started, base)


# -- measurements ----------------------------------------------------------------
def troupe_tell(m: int) -> float:
    """Seconds for the calling thread to `ref.tell` m messages into `start_in_thread`
    and for the counting actor to have handled the m-th one."""
    done = threading.Event()
    with quiet_troupe_log(), runtime.start_in_thread(counter_tree(m, done)) as system:
        tell = system.ref(f"/{ROOT}/counter").tell
        start = perf_counter()
        for i in range(m):
            tell(i)
        if not done.wait(JOIN_TIMEOUT):
            raise RuntimeError("the Troupe counter did not get every message in time")
        return perf_counter() - start


def troupe_ask(k: int, warmup: int) -> float:
    """Mean seconds per `ref.ask_blocking` round trip from the calling thread."""
    tree = Supervisor(ROOT, children=[child(Echo, name="echo")])
    with quiet_troupe_log(), runtime.start_in_thread(tree) as system:
        ask = system.ref(f"/{ROOT}/echo").ask_blocking
        return time_asks(lambda msg: ask(msg, timeout=ASK_TIMEOUT), k, warmup)


def time_asks(ask: Callable[[Any], Any], k: int, warmup: int) -> float:
    for i in range(warmup):
        if ask(i) != i:
            raise RuntimeError(f"wrong or no reply to warm-up ask {i}")
    start = perf_counter()
    for i in range(k):
        if ask(i) != i:
            raise RuntimeError(f"wrong or no reply to ask {i}")
    return (perf_counter() - start) / k


def thespian_tell(system: Any, m: int) -> float:
    """Seconds for the calling thread to `tell` m messages to a counting actor and
    for the actor to report (through an ask) that it has all of them."""
    counter = system.createActor(ThespianCounter)
    tell = system.tell
    start = perf_counter()
    for i in range(m):
        tell(counter, i)
    while True:
        n = system.ask(counter, "count", ASK_TIMEOUT)
        if n == m:
            return perf_counter() - start
        if not isinstance(n, int) or perf_counter() - start > JOIN_TIMEOUT:
            raise RuntimeError(f"the Thespian counter answered {n!r}, expected {m}")


def thespian_ask(system: Any, k: int, warmup: int) -> float:
    echo = system.createActor(ThespianEcho)
    ask = system.ask
    return time_asks(lambda msg: ask(echo, msg, ASK_TIMEOUT), k, warmup)


def peer_once(base: str, m: int, k: int, warmup: int) -> Figures:
    figures: Figures = {
        "troupe_tell": m / troupe_tell(m),
        "troupe_ask_us": troupe_ask(k, warmup) * 1e6,
    }
    if THESPIAN:
        with thespian_system(base) as system:
            figures["thespian_tell"] = m / thespian_tell(system, m)
            figures["thespian_ask_us"] = thespian_ask(system, k, warmup) * 1e6
    return figures


def simple_once(size: Size) -> Figures:
    return peer_once(
        "simpleSystemBase", size.pick(100_000, 1_000), size.pick(5_000, 100), size.pick(200, 10)
    )


def mpq_once(size: Size) -> Figures:
    return peer_once(
        "multiprocQueueBase", size.pick(10_000, 200), size.pick(1_000, 20), size.pick(100, 5)
    )


# -- the benches -----------------------------------------------------------------
MISSING = (
    "thespian is not installed or not importable (pip install -e '.[bench]'): its rows show n/a."
)


def _rows(base: str, what: str) -> list[Row]:
    missing = "not measured: thespian is not installed. " if not THESPIAN else ""
    return [
        Row(
            f"tell from the calling thread vs Thespian {base} (msg/s)",
            "troupe_tell",
            "thespian_tell",
            f"{missing}Thespian {base} ({what}): ActorSystem().tell(addr, msg) from the "
            "calling thread to a counting actor, until an ask for its count returns M",
        ),
        Row(
            f"ask_blocking round trip vs Thespian {base} ask (µs)",
            "troupe_ask_us",
            "thespian_ask_us",
            f"{missing}Thespian {base}: sequential ActorSystem().ask(addr, msg, "
            f"{ASK_TIMEOUT:g}) to an echo actor from the calling thread",
            digits=1,
        ),
    ]


def _notes(name: str, base: str, sizes: str) -> list[str]:
    version = f" (thespian {THESPIAN_VERSION})" if THESPIAN else ""
    return [
        f"{name}: Thespian {base}{version} against Troupe in runtime.start_in_thread, both "
        f"driven from the calling thread: {sizes}. Troupe's counter has a Mailbox of "
        "capacity M and the clock stops at its M-th handler call; Thespian's stops when an "
        "ask for the count returns M. Asks are timed after warm-up asks, mean per ask. "
        "Start-up, actor creation and shutdown are not timed.",
        *([] if THESPIAN else [f"{name}: {MISSING}"]),
    ]


THESPIAN_SIMPLE = Bench(
    name="thespian-simple",
    run_once=simple_once,
    rows=_rows("simpleSystemBase", "actors run synchronously inside the caller's tell/ask"),
    notes=_notes(
        "thespian-simple",
        "simpleSystemBase",
        "tell M = 100,000; 5,000 asks after 200 warm-up asks",
    ),
)

THESPIAN_MPQ = Bench(
    name="thespian-mpq",
    run_once=mpq_once,
    rows=_rows("multiprocQueueBase", "each actor in its own process, multiprocessing queues"),
    notes=_notes(
        "thespian-mpq",
        "multiprocQueueBase",
        "tell M = 10,000 (kept small: a few seconds per run); 1,000 asks after 100 warm-up "
        "asks. Its admin, logger and actor processes are checked gone after shutdown()",
    ),
)


BENCHES = [THESPIAN_SIMPLE, THESPIAN_MPQ]

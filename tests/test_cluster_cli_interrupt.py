"""Ctrl-C on `troupe events --cluster` (and `ClusterClient`) wherever it lands.

`ClusterClient` drives nats-py on an asyncio loop from the calling thread; while
it does, a SIGINT cancels what it is running and comes out as KeyboardInterrupt,
which the CLI turns into a quiet exit 0.  A SIGINT that came right as that SIGINT
handling was put in place came out as a bare ``asyncio.CancelledError`` instead:
``asyncio.Runner.run`` (Python 3.11) installs its handler and only then resets its
count of interrupts, so the interrupt the handler had counted was forgotten.  The
command then died with a CancelledError traceback, exit 1 (seen once in CI, one
run in about fifty when SIGINT came while events were flowing).

Here the SIGINT is raised (`signal.raise_signal`, in-process) from inside
``signal.signal`` just after a SIGINT handler other than Python's default was
installed: the exact point, deterministically, for the n-th time the client takes
SIGINT over (1: connecting, 2: subscribing, 3: waiting for the first message,
more: waiting for a later one, with raw messages flowing on the bus).
"""

from __future__ import annotations

import asyncio
import gc
import signal
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from natsserver import NatsServer

import runtime.cli
from runtime.cluster.client import ClusterClient

WAIT = 20.0  # real seconds: a bound that only a hang reaches

pytestmark = [
    pytest.mark.skipif(not hasattr(signal, "raise_signal"), reason="needs raise_signal"),
    pytest.mark.usefixtures("default_sigint"),
]


@pytest.fixture
def watchdog() -> Iterator[threading.Event]:
    """A second SIGINT to the main thread after `WAIT` seconds, should a test hang
    (a Ctrl-C lost); the event is set when it fired."""
    fired = threading.Event()
    main = threading.main_thread().ident
    assert main is not None

    def fire() -> None:
        fired.set()
        signal.pthread_kill(main, signal.SIGINT)

    timer = threading.Timer(WAIT, fire)
    timer.start()
    yield fired
    timer.cancel()


def ctrl_c_when_taken_over(monkeypatch: pytest.MonkeyPatch, nth: int) -> list[int]:
    """Press Ctrl-C right after the `nth` time a SIGINT handler other than Python's
    default is installed.  Returns the list of the handlers' numbers installed so far."""
    real: Callable[..., Any] = signal.signal
    installed: list[int] = []

    def fake(signum: int, handler: Any) -> Any:
        old = real(signum, handler)
        if signum == signal.SIGINT and handler is not signal.default_int_handler:
            installed.append(len(installed) + 1)
            if len(installed) == nth:
                signal.raise_signal(signal.SIGINT)  # its handler runs before this returns
        return old

    monkeypatch.setattr(signal, "signal", fake)
    return installed


@pytest.fixture
def traffic(nats_server: NatsServer) -> Iterator[str]:
    """A cluster name whose bus gets a raw (undecodable) message every few ms, from
    a thread of its own, until the test ends (at most `WAIT` seconds)."""
    cluster = "interrupted"
    stop = threading.Event()

    async def publish() -> None:
        import nats

        nc = await nats.connect(nats_server.url)
        try:
            for _ in range(int(WAIT / 0.005)):
                if stop.is_set():
                    break
                await nc.publish(f"{cluster}.bus.noise", b"not an event")
                await asyncio.sleep(0.005)
        finally:
            await nc.close()

    thread = threading.Thread(target=asyncio.run, args=(publish(),), daemon=True)
    thread.start()
    yield cluster
    stop.set()
    thread.join(WAIT)


@pytest.mark.parametrize("nth", [1, 2, 3, 4, 7])
def test_events_ends_quietly_on_a_ctrl_c_right_as_sigint_is_taken_over(
    nth: int,
    nats_server: NatsServer,
    traffic: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    watchdog: threading.Event,
) -> None:
    installed = ctrl_c_when_taken_over(monkeypatch, nth)
    code = runtime.cli.main(["events", "--cluster", nats_server.url, "--cluster-name", traffic])
    assert not watchdog.is_set(), "the Ctrl-C was lost"
    assert len(installed) >= nth
    assert code == 0
    assert capsys.readouterr().err == ""


def test_a_request_interrupted_right_as_sigint_is_taken_over_raises_keyboard_interrupt(
    nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch, watchdog: threading.Event
) -> None:
    with ClusterClient(nats_server.url, "interrupted") as client:
        ctrl_c_when_taken_over(monkeypatch, 1)
        with pytest.raises(KeyboardInterrupt):
            client.ping()
        monkeypatch.undo()  # the next request is not interrupted
        with pytest.raises(Exception, match="no node of cluster 'interrupted'"):
            client.ping()  # the client still works
    assert not watchdog.is_set()


def test_events_ends_on_a_second_ctrl_c_that_lands_inside_the_loop(
    nats_server: NatsServer,
    traffic: str,
    monkeypatch: pytest.MonkeyPatch,
    watchdog: threading.Event,
) -> None:
    """A second Ctrl-C raises KeyboardInterrupt at once, wherever the loop is: here
    as it is about to run a callback (the wakeup of the task the first one cancelled),
    which is then lost and its task never ends.  ``troupe events`` hung in the
    client's close (asyncio.Runner.close waits for every task, unbounded); seen with
    two quick Ctrl-C, ``python -X dev -m runtime events --cluster``."""
    real_run = asyncio.events.Handle._run
    second: list[bool] = []

    def run(handle: asyncio.Handle) -> None:
        if len(installed) >= 3 and not second:
            second.append(True)
            signal.raise_signal(signal.SIGINT)  # the second Ctrl-C: raises here
        real_run(handle)

    installed = ctrl_c_when_taken_over(monkeypatch, 3)  # waiting for the first message
    monkeypatch.setattr(asyncio.events.Handle, "_run", run)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code = runtime.cli.main(["events", "--cluster", nats_server.url, "--cluster-name", traffic])
        gc.collect()  # the task never woken, and its coroutine, are gone
    assert not watchdog.is_set(), "the client's close hung"
    assert second
    assert code == 0
    assert [str(w.message) for w in caught if "never awaited" in str(w.message)] == []


def test_a_ctrl_c_the_task_shrugs_off_still_comes_out_as_keyboard_interrupt(
    watchdog: threading.Event,
) -> None:
    """A task may finish anyway when cancelled (Python 3.11's ``asyncio.wait_for``
    returns the result when what it waits for finished as it was cancelled: the
    client's connect and nats-py's requests wait that way); the Ctrl-C was lost and
    ``troupe events`` went on streaming."""
    from runtime.cluster.client import _drive

    async def shrugs() -> str:
        try:
            signal.raise_signal(signal.SIGINT)  # Ctrl-C while it runs: it is cancelled
            await asyncio.sleep(WAIT)
        except asyncio.CancelledError:
            return "finished anyway"
        return "slept"

    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(KeyboardInterrupt):
            _drive(loop, shrugs())
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        loop.close()
    assert not watchdog.is_set()


def test_a_ctrl_c_as_the_client_gives_sigint_back_leaves_the_default_handler(
    monkeypatch: pytest.MonkeyPatch, watchdog: threading.Event
) -> None:
    """A Ctrl-C landing as the call ends, while the client puts Python's default
    handler back, raises KeyboardInterrupt: and the default handler is back all the
    same (the client's stayed installed, and no later call took SIGINT over)."""
    from runtime.cluster.client import _drive

    real: Callable[..., Any] = signal.getsignal
    calls: list[int] = []

    def getsignal(signum: int) -> Any:
        calls.append(signum)
        if len(calls) == 2:  # the first asks whether to take over, the second gives back
            signal.raise_signal(signal.SIGINT)
        return real(signum)

    async def quick() -> str:
        return "done"

    loop = asyncio.new_event_loop()
    try:
        monkeypatch.setattr(signal, "getsignal", getsignal)
        with pytest.raises(KeyboardInterrupt):
            _drive(loop, quick())
        monkeypatch.undo()
        assert len(calls) >= 2
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        loop.close()
    assert not watchdog.is_set()


def test_leaving_an_events_iteration_is_bounded_when_unsubscribing_hangs(
    nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch, watchdog: threading.Event
) -> None:
    """The unsubscribe as the iteration ends was the one unbounded step on the way
    out of `troupe events --cluster`: a server that never takes it held the exit
    for ever.  It is bounded by the client's `timeout`, like every other step."""
    from nats.aio.subscription import Subscription

    async def never(self: Any, limit: int = 0) -> None:
        await asyncio.Event().wait()

    monkeypatch.setattr(Subscription, "unsubscribe", never)
    with ClusterClient(nats_server.url, "stuck", timeout=0.2) as client:
        assert list(client.events(">", timeout=0.05)) == []  # ends, then unsubscribes
    assert not watchdog.is_set()

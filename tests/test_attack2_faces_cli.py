"""Attack on the CLI's local commands when the system stops answering: a system
whose loop is blocked (its socket takes the request, no answer comes) and a
system that dies while it answers (the connection closes with no reply line).

A fake control socket stands for the system: a listener on ``<name>-<pid>.sock``
(this process's pid, so it is not stale) in a thread of its own, and `main` runs
in this process, pointed at it through ``XDG_RUNTIME_DIR``."""

from __future__ import annotations

import contextlib
import os
import pathlib
import socket
import tempfile
import threading
from collections.abc import Iterator

import pytest

import runtime.cli
import runtime.control
from runtime.cli import main

WAIT = 30.0  # real seconds: a bound only a hang reaches


@contextlib.contextmanager
def fake_system(answer: str) -> Iterator[pathlib.Path]:
    """A control socket that reads each request and then, by `answer`, closes the
    connection ("dies") or keeps it open without a word ("blocked")."""
    root = pathlib.Path(tempfile.mkdtemp(prefix="atk2-cli-"))
    folder = root / "troupe"
    folder.mkdir(mode=0o700)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(folder / f"fake-{os.getpid()}.sock"))
    listener.listen(8)
    listener.settimeout(0.05)  # looks at `stop` that often
    held: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(WAIT)
            with contextlib.suppress(OSError):
                conn.recv(65536)  # the request
            if answer == "dies":
                conn.close()
            else:
                held.append(conn)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield root
    finally:
        stop.set()
        thread.join(WAIT)
        listener.close()
        for conn in held:
            conn.close()


COMMANDS = [
    ["tree"],
    ["deadletters"],
    ["stop"],
    ["send", "/app/a", "1"],
    ["ask", "/app/a", "1", "--timeout", "0.2"],
    ["kill", "/app/a"],
]


@pytest.mark.parametrize("answer", ["dies", "blocked"])
@pytest.mark.parametrize("argv", COMMANDS, ids=lambda argv: argv[0])
def test_a_system_that_stops_answering_is_reported_without_a_traceback(
    answer: str,
    argv: list[str],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # `troupe tree` against a system whose loop was blocked raised TimeoutError out of
    # `main` (a traceback, exit 1 from the interpreter), and against a system that died
    # mid-answer ConnectionError("the system closed the connection"); `send`, `kill`,
    # `stop`, `deadletters` and `top` the same.  Each should say what happened on stderr
    # and exit 1.
    monkeypatch.setattr(runtime.control.Client.__init__, "__defaults__", (0.3,))
    monkeypatch.setattr(runtime.cli, "ASK_SLACK", 0.1)  # ask waits --timeout + this
    with fake_system(answer) as root:
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(root))
        code = main(argv)
    err = capsys.readouterr().err
    assert code == 1, err
    assert err.startswith("troupe: "), err
    assert "fake-" in err, err  # names the system
    if answer == "dies":
        assert "closed the connection" in err, err
    else:
        assert "did not answer" in err, err


def test_top_on_a_system_that_stops_answering_says_so_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # `troupe top` asks again on a fresh connection when one fails; when that one
    # times out too, TimeoutError left `main` as a traceback.  (A system that closes
    # the connection is "the system stopped", as before.)
    monkeypatch.setattr(runtime.control.Client.__init__, "__defaults__", (0.3,))
    with fake_system("blocked") as root:
        monkeypatch.setenv("XDG_RUNTIME_DIR", str(root))
        code = main(["top", "--once"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert err.startswith("troupe: fake-") and "did not answer" in err, err

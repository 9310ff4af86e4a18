"""Attack on `troupe run`'s console (runtime/logs.py): the repeated-error filter under
many different errors, its effect on other handlers, `--quiet`, and Ctrl-C twice."""

from __future__ import annotations

import io
import logging
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

from runtime.logs import configure_console

WAIT = 30.0

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_many_different_errors_do_not_hold_a_thread_each() -> None:
    # Issue 16: "repeated identical crashes are summarized"; the brief: many different
    # errors must not make unbounded pending work.
    # threading.Timer (an OS thread, alive for the whole 10 s window) per distinct
    # error; a crash loop whose messages differ (an id, a count, a time in the text)
    # holds up to 1000 threads at once, each started from the trio thread as the
    # crash is logged.  runtime/logs.py:203 (`self._timer(key)` per new key) and
    # :225 (`threading.Timer(...).start()`); the cap at :204 is 1000 keys.
    # One timer (or a sweep on the next record) would do.
    stream = io.StringIO()
    console = configure_console(logging.INFO, stream=stream)
    before = threading.active_count()
    try:
        log = logging.getLogger("troupe")
        for n in range(300):
            log.error("%s %s: %s", f"/app/w{n}", "crashed", f"ValueError('job {n}')")
        grown = threading.active_count() - before
    finally:
        console.close()
    assert stream.getvalue().count("crashed") == 300  # each shown once: fine
    assert grown <= 10, f"{grown} threads alive after 300 different errors"


def test_the_summary_does_not_rewrite_the_record_other_handlers_see() -> None:
    #
    # record itself into the summary line (msg replaced, args, exc_info and exc_text
    # dropped) before returning True.  The record is shared: a handler that runs after
    # the console (a file log the program added) gets "(same error N more times ...)"
    # without the crash's traceback.  runtime/logs.py:202 (`_summarize(record,
    # ...)` on the live record; the timer path copies it, :242).
    clock = [0.0]
    stream = io.StringIO()
    console = configure_console(logging.INFO, stream=stream)
    console.repeats.clock = lambda: clock[0]
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    keep = Keep()
    logging.getLogger().addHandler(keep)
    try:
        log = logging.getLogger("troupe")
        try:
            raise ValueError("same")
        except ValueError as exc:
            error = exc
        for t in (0.0, 1.0, 20.0):
            clock[0] = t
            log.error("%s %s: %s", "/app/w", "crashed", "ValueError('same')", exc_info=error)
    finally:
        logging.getLogger().removeHandler(keep)
        console.close()
    assert len(seen) == 3
    last = seen[-1]
    assert last.exc_info is not None, last.getMessage()
    assert "same error" not in last.getMessage()


SCRIPT = textwrap.dedent(
    """
    import trio
    from runtime import Actor, Supervisor, child

    class Crasher(Actor):
        async def on_start(self):
            self.ctx.nursery.start_soon(self.tick)

        async def tick(self):
            await trio.sleep(0.2)
            self.ctx.self.tell("boom")

        async def receive(self, msg):
            raise ValueError("boom on purpose")

    class Slow(Actor):
        async def on_stop(self, reason):
            await trio.sleep(60)   # a stop that takes long: the second Ctrl-C forces it

        async def receive(self, msg):
            return msg

    tree = Supervisor("con", max_restarts=1000, within=1.0, children=[
        child(Crasher, name="crasher"),
        child(Slow, name="slow"),
    ])
    """
)


def _run(root: pathlib.Path, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "XDG_RUNTIME_DIR": str(root), "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "runtime", "run", "con_app.py", *args],
        cwd=root,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_error(proc: subprocess.Popen[str]) -> list[str]:
    assert proc.stderr is not None
    lines: list[str] = []
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        lines.append(line)
        if "ERROR" in line and "crashed" in line:
            return lines
    raise AssertionError(f"no crash line: {lines}")


def test_quiet_still_shows_errors_and_ctrl_c_twice_forces_a_clean_exit() -> None:
    # holds: `--quiet` shows the crash (ERROR) line; two quick SIGINTs during a slow
    # graceful stop end the process at once, exit 130, no traceback.
    root = pathlib.Path(tempfile.mkdtemp(prefix="atk16-con-"))
    try:
        (root / "con_app.py").write_text(SCRIPT)
        proc = _run(root, "--quiet")
        try:
            _wait_for_error(proc)
            proc.send_signal(signal.SIGINT)
            time.sleep(0.05)
            proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=WAIT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate(timeout=WAIT)
        assert proc.returncode == 130, err
        assert "Traceback" not in err.split("stopping gracefully")[-1], err
        assert "INFO" not in err, err
    finally:
        shutil.rmtree(root, ignore_errors=True)

"""`troupe top` and `troupe tree`: frames laid out at 80 and 140 columns, the
indented tree, hiding /system, sorting, the detail pane, keys; and the real
command against a system serving its control socket in this process: `--once`
with real rates, `troupe tree`'s loop health, and a live `troupe top` under a
pseudo-terminal that quits on `q` (and on Ctrl-C) with the terminal restored."""

from __future__ import annotations

import os
import pathlib
import pty
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from typing import Any

import trio

import runtime
import runtime.top as top
from runtime import Actor, Supervisor, child
from runtime.monitor import TreeSnapshot

TRACEBACK = (
    "Traceback (most recent call last):\n"
    '  File "/srv/app/model.py", line 12, in receive\n'
    "    raise ValueError('boom')\n"
    "ValueError: boom\n"
)


def actor(path: str, **over: Any) -> dict[str, Any]:
    """An actor's snapshot dict as the control socket sends it."""
    info: dict[str, Any] = {
        "path": path,
        "name": path.rsplit("/", 1)[-1] or "/",
        "kind": "actor",
        "cls": "Worker",
        "state": "running",
        "restarts": 0,
        "mailbox_depth": 0,
        "mailbox_capacity": 10_000,
        "mailbox_high_water": 0,
        "processed": 0,
        "failed": 0,
        "dead_lettered": 0,
        "current": None,
        "current_for": None,
        "stuck": False,
        "last_error": None,
        "uptime": 30.0,
        "subscriptions": [],
        "stats": {},
        "children": [],
    }
    info.update(over)
    return info


def sup(path: str, *children: dict[str, Any], **over: Any) -> dict[str, Any]:
    return actor(path, kind="supervisor", cls="Supervisor", children=list(children), **over)


def snapshot() -> dict[str, Any]:
    """/app with a nested supervisor, a crashed and restarting actor, a stuck one
    and a long name; /system with its actors.  Children are in name order."""
    error = {"type": "ValueError", "message": "boom", "traceback": TRACEBACK}
    app = sup(
        "/app",
        actor("/app/evaluator", state="restarting", restarts=2, failed=2, last_error=error),
        sup(
            "/app/models",
            actor("/app/models/model-registry", processed=1234, mailbox_depth=17),
            actor(
                "/app/models/trainer",
                current="TrainStep",
                current_for=12.0,
                stuck=True,
                mailbox_depth=3,
                mailbox_capacity=20,
                mailbox_high_water=17,
                processed=40,
            ),
        ),
        actor("/app/ready"),
    )
    system = sup(
        "/system",
        actor("/system/bridge", stats={"active": 0, "healthy": True}),
        actor("/system/bus"),
        actor("/system/deadletters"),
    )
    return {
        "system": "shop",
        "root": sup("/", app, system),
        "dead_letters": {"crashed": 2, "stopped": 0},
        "loop": {
            "longest_step": 0.0123,
            "longest_step_task": "/app/models/trainer",
            "longest_step_at": None,
            "max_lag": 0.004,
            "last_lag": 0.001,
            "steps": 10,
            "blocked": 1,
            "last_blocked": None,
        },
        "taken_at": time.time(),
    }


def table(text: str) -> list[str]:
    """The table's lines (its header first)."""
    lines = text.splitlines()
    return lines[next(i for i, line in enumerate(lines) if line.startswith("ACTOR")) :]


def labels(text: str) -> list[str]:
    """The tree column of a frame."""
    header, *rows = table(text)
    return [row[: header.index("STATE")].rstrip() for row in rows]


STATES = ("running", "restarting")


def test_frames_fit_80_and_140_columns_with_states_whole() -> None:
    snap = snapshot()
    rate = {"/app/models/model-registry": 25.0}
    narrow = top.render_text(snap, rate, sort="path", width=80)
    wide = top.render_text(snap, rate, sort="path", width=140)
    for text, width in ((narrow, 80), (wide, 140)):
        assert all(len(line) <= width for line in text.splitlines()), text
        rows = table(text)[1:]
        assert len(rows) == 11
        for line in rows:  # every state whole, in its own column
            assert re.search(r"  (running|restarting)(  |$)", line), line
        assert "runn…" not in text and "restart…" not in text
    header80, header140 = table(narrow)[0].split(), table(wide)[0].split()
    # at 80: the important columns, abbreviated; at 140: all of them, in full
    assert header80[:2] == ["ACTOR", "STATE"]
    assert header80 == ["ACTOR", "STATE", "MBOX", "MSG/S", "RST", "NOW/ERROR"]
    # at 80, one column says what an actor is doing, else its last error
    assert "TrainStep 12.0s STUCK" in next(line for line in table(narrow) if "trainer" in line)
    assert "ValueError: boom" in next(line for line in table(narrow) if "evaluator" in line)
    assert header140 == [
        "ACTOR", "STATE", "MAILBOX", "MSG/S", "PROCESSED", "RESTARTS", "DEAD", "NOW", "LAST",
        "ERROR",
    ]  # fmt: skip
    trainer = next(line for line in table(wide) if "trainer" in line)
    assert "3/20" in trainer and "TrainStep 12.0s STUCK" in trainer
    registry = next(line for line in table(narrow) if "model-registry" in line)
    assert re.search(r"17/10k +25 ", registry)  # MBOX, MSG/S
    evaluator = next(line for line in table(wide) if "evaluator" in line)
    assert "restarting" in evaluator and "ValueError: boom" in evaluator
    # the header: system, actors, dead letters; loop health under it
    first, loop = wide.splitlines()[:2]
    assert first.startswith("shop  11 actors  dead letters: crashed 2")
    assert loop == ("loop: longest step 12.3 ms (/app/models/trainer), max lag 4.0 ms, blocked 1")
    # a very narrow terminal: the tree is cut before the state is
    tiny = top.render_text(snap, rate, sort="path", width=30)
    assert all(len(line) <= 30 for line in tiny.splitlines())
    assert sum("restarting" in line for line in table(tiny)) == 1


def test_the_tree_has_troupe_trees_shape() -> None:
    snap = snapshot()
    text = top.render_text(snap, sort="path", width=140)
    drawn = labels(text)
    tree = TreeSnapshot.from_dict(snap).render().splitlines()[2:]  # after the header, loop
    assert drawn == [line.split(" [")[0] for line in tree]
    assert drawn[:6] == [
        "/",
        "├─ app",
        "│  ├─ evaluator",
        "│  ├─ models",
        "│  │  ├─ model-registry",
        "│  │  └─ trainer",
    ]
    assert drawn[-1] == "   └─ deadletters"


def test_sorting_orders_siblings_by_their_subtree() -> None:
    snap = snapshot()

    def names(text: str) -> list[str]:
        return [label.strip("│├└─ ") for label in labels(text)]

    # depth: /app/models holds the deepest mailbox (17), so it leads /app's children
    by_depth = names(top.render_text(snap, sort="depth"))
    assert by_depth[1:5] == ["app", "models", "model-registry", "trainer"]
    by_restarts = names(top.render_text(snap, sort="restarts"))
    assert by_restarts[1:3] == ["app", "evaluator"]
    rate = {"/system/bus": 50.0, "/app/ready": 1.0}
    by_rate = names(top.render_text(snap, rate, sort="rate"))
    assert by_rate[1:3] == ["system", "bus"]
    assert by_rate.index("ready") < by_rate.index("evaluator")
    view = top.View({None: snap})
    seen = []
    for _ in top.SORTS:
        view.key("s")
        seen.append(view.sort)
    assert seen == [*top.SORTS[1:], "depth"]
    view.key("4")
    assert view.sort == "path"


def test_hide_system() -> None:
    snap = snapshot()
    hidden = top.render_text(snap, sort="path", width=100, hide_system=True)
    assert "/system hidden" in hidden.splitlines()[0]
    assert "bridge" not in hidden and "system" not in "".join(table(hidden))
    assert table(hidden)[-1].startswith("   └─ ready")  # /app is now the last child
    view = top.View({None: snap})
    assert any("bridge" in top.plain([line]) for line in view.frame(100, None))
    view.key("h")
    assert not any("bridge" in top.plain([line]) for line in view.frame(100, None))
    view.key("h")
    assert view.hide_system is False


def test_the_detail_pane() -> None:
    snap = snapshot()
    view = top.View({None: snap}, sort="path")
    rows = view.rows()
    for _ in range(6):  # /, app, evaluator, models, model-registry, trainer
        view.key("down", rows)
    assert view.selected == "/app/models/trainer"
    text = top.plain(view.frame(100, 40, help_line=True))
    assert "/app/models/trainer  Worker (actor)  running" in text
    assert "in hand: TrainStep for 12.0s  STUCK" in text
    assert "mailbox: 3/20  high water 17  processed 40" in text
    assert "restarts: 0  (up 30.0s, since " in text
    assert "last error: none" in text
    assert "q quit" in text.splitlines()[-1]
    assert len(text.splitlines()) == 40
    # the crashed one: its restarts and its last error with the whole traceback
    view.key("k")
    view.key("k")
    view.key("k")
    assert view.selected == "/app/evaluator"
    text = top.plain(view.frame(100, 40))
    assert "restarts: 2" in text
    assert "last error: ValueError: boom" in text
    for line in TRACEBACK.splitlines():
        assert "  " + line in text, line
    assert "in hand: nothing (idle)" in text
    # a short screen keeps the end of the traceback (where the error is)
    short = top.plain(view.frame(100, 20)).splitlines()
    assert len(short) == 20
    assert "last error: ValueError: boom" in "\n".join(short)
    assert short[-1].strip() == "ValueError: boom"
    assert any("lines above" in line for line in short)
    # the selection follows the actor when the order changes; it scrolls into view
    view.key("2")
    assert view.selected == "/app/evaluator"
    view.key("G")
    assert view.selected == "/system/deadletters"
    assert "deadletters" in top.plain(view.frame(100, 16))
    # d hides the pane
    view.key("d")
    assert "last error:" not in top.plain(view.frame(100, 40))
    # a supervisor's details; bridge stats
    view.key("d")
    view.key("k")
    view.key("k")
    assert view.selected == "/system/bridge"
    assert "stats: active=0, healthy=True" in top.plain(view.frame(100, 40))
    view.key("k")
    assert view.selected == "/system"
    assert "children: 3" in top.plain(view.frame(100, 40))


def test_restarts_seen_between_samples_have_their_times() -> None:
    first = snapshot()
    second = snapshot()
    evaluator = second["root"]["children"][0]["children"][0]
    evaluator.update(restarts=3, uptime=1.5)
    view = top.View({})
    view.sample({None: first})
    view.sample({None: second})
    view.selected = "/app/evaluator"
    text = top.plain(view.frame(120, 40))
    stamp = time.strftime("%H:%M:%S", time.localtime(second["taken_at"] - 1.5))
    assert f"restarts: 3  seen at {stamp}  (up 1.5s, since {stamp})" in text


def test_keys_from_the_terminal() -> None:
    keys = top.parse_keys(b"j\x1b[A\x1bOBk\x1b[6~\x1b[5~\x1b[H\x1b[Fq\x1b[99;5Rs\x03")
    assert keys == ["j", "up", "down", "k", "pgdn", "pgup", "home", "end", "q", "s", "ctrl-c"]
    view = top.View({None: snapshot()})
    assert view.key("q") and view.key("ctrl-c") and not view.key("j")


def test_tree_render_has_loop_health() -> None:
    text = TreeSnapshot.from_dict(snapshot()).render().splitlines()
    assert text[0] == "shop  dead letters: crashed 2"
    assert text[1] == "loop: longest step 12.3 ms (/app/models/trainer), max lag 4.0 ms, blocked 1"
    assert text[2] == "/ [running]"


def test_cluster_frame_has_a_node_column_and_a_tree_per_node() -> None:
    snaps = {"n2": snapshot(), "n1": snapshot()}
    text = top.render_cluster_text(
        snaps, sort="node", width=80, cluster="demo", silent=["n3"], hide_system=True
    )
    assert "cluster demo  2 nodes  22 actors" in text
    assert "n3: did not answer" in text
    assert re.search(r"^n1: loop: longest step", text, re.M)
    lines = text.splitlines()
    head = next(i for i, line in enumerate(lines) if line.startswith("NODE"))
    assert lines[head].split()[:3] == ["NODE", "ACTOR", "STATE"]
    body = lines[head + 1 :]
    assert [line.split()[0] for line in body] == ["n1"] * 7 + ["n2"] * 7
    assert all(len(line) <= 80 for line in lines)


# -- the real command, against a system in this process -----------------------------------


class Sink(Actor):
    async def receive(self, msg: Any) -> Any:
        return msg


def cli_env(folder: pathlib.Path) -> dict[str, str]:
    return {**os.environ, "XDG_RUNTIME_DIR": str(folder), "PYTHONUNBUFFERED": "1"}


async def feed(system: runtime.System) -> None:
    ref = system.ref("/app/sink")
    while True:
        ref.tell("x")
        await trio.sleep(0.005)


async def test_once_has_real_rates_and_tree_has_loop_health(tmp_path: pathlib.Path) -> None:
    sockets = tmp_path / "troupe"
    sockets.mkdir(mode=0o700)
    tree = Supervisor("app", children=[child(Sink, name="sink"), child(Sink, name="idle")])
    command = [sys.executable, "-m", "runtime"]
    with trio.fail_after(20):
        async with (
            runtime.open_system(tree, name="feed", control=True, control_dir=sockets) as system,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(feed, system)
            once, tree_out = await trio.to_thread.run_sync(
                lambda: [
                    subprocess.run(
                        [*command, *args],
                        capture_output=True,
                        text=True,
                        env=cli_env(tmp_path),
                        timeout=15,
                    )
                    for args in (
                        ("top", "--once", "--width", "100", "--interval", "0.3"),
                        ("tree",),
                    )
                ]
            )
            nursery.cancel_scope.cancel()
    assert once.returncode == 0, once.stderr
    assert "\x1b[" not in once.stdout
    lines = table(once.stdout)
    sink = next(line for line in lines if "└─ sink" in line or "├─ sink" in line)
    idle = next(line for line in lines if "idle" in line)
    header = lines[0]
    at = header.index("MSG/S") + len("MSG/S")
    assert float(sink[:at].split()[-1]) > 20  # ~200 msg/s fed; the column right-aligned
    assert float(idle[:at].split()[-1]) == 0
    assert tree_out.returncode == 0, tree_out.stderr
    assert tree_out.stdout.splitlines()[1].startswith("loop: longest step ")
    assert "max lag" in tree_out.stdout and "blocked" in tree_out.stdout


def run_under_pty(folder: pathlib.Path, stop: bytes | None) -> tuple[int, bytes, list[Any]]:
    """`troupe top` on a pseudo-terminal (100x30): wait for the first frames, press
    j then `stop` (or send SIGINT when `stop` is None); return its exit code, what
    it wrote, and the terminal's attributes while it ran."""
    master, slave = pty.openpty()
    termios.tcsetattr(slave, termios.TCSANOW, termios.tcgetattr(slave))
    import fcntl

    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    proc = subprocess.Popen(
        [sys.executable, "-m", "runtime", "top", "--interval", "0.2"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env={**cli_env(folder), "TERM": "xterm"},
        start_new_session=True,
    )
    out = b""
    during: list[Any] = []
    deadline = time.monotonic() + 15

    def read_until(what: bytes) -> None:
        nonlocal out
        while what not in out:
            assert time.monotonic() < deadline, (what, out[-2000:])
            ready, _, _ = select.select([master], [], [], 0.1)
            if ready:
                out += os.read(master, 65536)

    try:
        read_until(b"q quit")
        read_until(b"sink")
        during = termios.tcgetattr(slave)
        os.write(master, b"j")
        read_until(b"children: 2")  # the detail pane of the selected actor: /app
        if stop is None:
            proc.send_signal(signal.SIGINT)
        else:
            os.write(master, stop)
        while proc.poll() is None:
            assert time.monotonic() < deadline, out[-2000:]
            ready, _, _ = select.select([master], [], [], 0.05)
            if ready:
                out += os.read(master, 65536)
        while select.select([master], [], [], 0.05)[0]:
            chunk = os.read(master, 65536)
            if not chunk:
                break
            out += chunk
        return proc.returncode, out, [during, termios.tcgetattr(slave)]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
        os.close(slave)


async def test_live_top_quits_on_q_and_ctrl_c_restoring_the_terminal(
    tmp_path: pathlib.Path,
) -> None:
    sockets = tmp_path / "troupe"
    sockets.mkdir(mode=0o700)
    tree = Supervisor("app", children=[child(Sink, name="sink")])
    with trio.fail_after(40):
        async with (
            runtime.open_system(tree, name="live", control=True, control_dir=sockets) as system,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(feed, system)
            runs = [
                await trio.to_thread.run_sync(run_under_pty, tmp_path, stop)
                for stop in (b"q", None)
            ]
            nursery.cancel_scope.cancel()
    for code, out, (during, after) in runs:
        assert code == 0, out[-2000:]
        assert b"Traceback" not in out
        assert b"\x1b[?1049h" in out  # the alternate screen ...
        assert out.rstrip(b"\r\n").endswith(b"\x1b[?25h\x1b[?1049l")  # ... left, cursor back
        assert not during[3] & (termios.ICANON | termios.ECHO)  # cbreak while it ran
        assert after[3] & termios.ICANON and after[3] & termios.ECHO  # restored
        assert b"live  " in out and b"MSG/S" in out


def test_the_detail_pane_says_an_actor_hibernates() -> None:
    info = {
        "path": "/app/session",
        "cls": "Session",
        "kind": "actor",
        "state": "running",
        "current": None,
        "hibernating": True,
        "mailbox_depth": 0,
        "mailbox_capacity": 10,
        "processed": 3,
    }
    text = top.plain(top.detail_lines(info))
    assert "hibernating until its next message" in text
    assert "in hand: nothing (idle)" not in text

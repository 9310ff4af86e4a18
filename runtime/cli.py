"""The ``troupe`` command (also ``python -m runtime``)."""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import TYPE_CHECKING, Any

from .control import Client, ControlError, endpoints, pick
from .entry import SystemOptions, run
from .errors import ClusterError
from .logs import configure_console, first_leaf
from .messages import DEAD_LETTER_REASONS
from .spec import NODE_NAME, Supervisor, check_cluster_name
from .topics import check_pattern

if TYPE_CHECKING:
    from .cluster.client import ClusterClient as ClusterClientType

SORTS = ("depth", "rate", "restarts", "path", "node")
"""The orders of `troupe top` (as `runtime.top.SORTS`, which imports rich)."""

CLUSTER_ENV = "TROUPE_CLUSTER"
ASK_SLACK = 5.0
"""Seconds `troupe ask` waits for the system past its --timeout (the system answers
within --timeout; a system that does not is reported as not answering)."""
"""The NATS URL(s) (comma-separated) `troupe run --node` joins through when no
``--cluster`` is given, and that ``troupe ls|tree|top|events|deadletters|stop --cluster`` use
when ``--cluster`` has no URL."""


class UsageError(Exception):
    """Bad command-line input: printed without a traceback."""


def load_tree(target: str) -> Supervisor:
    """Resolve ``SCRIPT[:NAME]`` to a Supervisor (NAME defaults to ``tree``)."""
    script, _, name = target.partition(":")
    if not name and target.count(":") == 0:
        name = "tree"
    if not script or not name:
        raise UsageError(f"expected SCRIPT[:NAME], got {target!r}")
    module = _import(script)
    try:
        obj = getattr(module, name)
    except AttributeError:
        raise UsageError(
            f"{script} has no {name!r}; define a module-level Supervisor called {name!r} "
            f"or name it: troupe run {script}:NAME"
        ) from None
    if not isinstance(obj, Supervisor) and callable(obj):
        obj = obj()
    if not isinstance(obj, Supervisor):
        raise UsageError(
            f"{script}:{name} is {obj!r}, not a Supervisor (or a callable returning one)"
        )
    return obj


def _import(script: str) -> ModuleType:
    if script.endswith(".py") or os.sep in script or os.path.exists(script):
        path = os.path.abspath(script)
        if not os.path.exists(path):
            raise UsageError(f"no such file: {script}")
        folder = os.path.dirname(path)
        if folder not in sys.path:
            sys.path.insert(0, folder)  # so the script can import its neighbours
        module_name = os.path.splitext(os.path.basename(path))[0]
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None or spec.loader is None:
            raise UsageError(f"cannot import {script}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
        return module
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        return importlib.import_module(script)
    except ModuleNotFoundError as exc:
        raise UsageError(f"cannot import module {script!r}: {exc}") from None


def cluster_options(args: argparse.Namespace) -> SystemOptions:
    """The `run` options of ``--node/--cluster/--cluster-*`` (none without ``--node``);
    `UsageError` for a flag without ``--node``, a missing URL or a bad name."""
    options: SystemOptions = {}
    cluster_flags = [
        flag
        for flag, value in (
            ("--cluster", args.cluster),
            ("--cluster-name", args.cluster_name),
            ("--cluster-topics", args.cluster_topics),
            ("--cluster-control", args.cluster_control),
            ("--heartbeat", args.heartbeat),
            ("--node-down-after", args.node_down_after),
        )
        if value is not None
    ]
    if args.node is None:
        if cluster_flags:
            raise UsageError(
                f"{cluster_flags[0]} needs --node NAME (this node's name in the cluster)"
            )
        return options
    if not NODE_NAME.fullmatch(args.node):
        raise UsageError(
            f"invalid node name {args.node!r}: one NATS subject token "
            "(letters, digits, '-' and '_')"
        )
    servers: list[str] = list(args.cluster or [])
    if not servers:
        from_env = os.environ.get(CLUSTER_ENV, "")
        servers = [url.strip() for url in from_env.split(",") if url.strip()]
    if not servers:
        raise UsageError(
            f"--node {args.node} needs --cluster URL (a NATS server, e.g. "
            f"nats://127.0.0.1:4222) or the {CLUSTER_ENV} environment variable"
        )
    options["node"] = args.node
    options["cluster"] = servers[0] if len(servers) == 1 else servers
    if args.cluster_name is not None:
        try:
            options["cluster_name"] = check_cluster_name(args.cluster_name)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    if args.cluster_topics is not None:
        for pattern in args.cluster_topics:
            try:
                check_pattern(pattern)
            except ValueError as exc:
                raise UsageError(f"--cluster-topics {pattern!r}: {exc}") from None
        options["cluster_topics"] = tuple(args.cluster_topics)
    if args.cluster_control is not None:
        options["cluster_control"] = args.cluster_control
    heartbeat = args.heartbeat if args.heartbeat is not None else 1.0
    if args.heartbeat is not None:
        if not (0 < args.heartbeat < float("inf")):
            raise UsageError(f"--heartbeat is a positive number of seconds, got {args.heartbeat}")
        options["heartbeat"] = args.heartbeat
    if args.node_down_after is not None:
        if not (heartbeat < args.node_down_after < float("inf")):
            raise UsageError(
                f"--node-down-after is a number of seconds longer than the heartbeat "
                f"({heartbeat:g}), got {args.node_down_after}"
            )
        options["node_down_after"] = args.node_down_after
    return options


def _cmd_run(args: argparse.Namespace) -> int:
    options = cluster_options(args)
    options["name"] = args.name if args.name is not None else options.get("node")
    options["control"] = True
    options["metrics_port"] = args.metrics_port
    tree = load_tree(args.target)
    try:
        console = configure_console(args.log_level, quiet=args.quiet)
    except ValueError as exc:
        raise UsageError(f"--log-level: {exc}") from None
    try:
        run(tree, **options)
    except KeyboardInterrupt:
        print("troupe: killed", file=sys.stderr)
        return 130
    except ClusterError as exc:
        print(f"troupe: cannot join the cluster: ClusterError: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        console.flush()  # the summaries of repeated errors still pending, first
        error = first_leaf(exc)  # never an exception group: what it is about
        # (a supervisor that gave up names its limits and the root cause)
        print(f"troupe: the tree failed: {type(error).__name__}: {error}", file=sys.stderr)
        return 1
    finally:
        console.close()  # the summaries of repeated errors still pending, if any
    return 0


def _client(system: str | None) -> Client:
    try:
        endpoint = pick(system)
    except LookupError as exc:
        raise UsageError(str(exc)) from None
    try:
        return Client(endpoint)
    except OSError as exc:
        raise UsageError(f"cannot reach {endpoint.label}: {exc}") from None


def _cmd_ls(args: argparse.Namespace) -> int:
    if args.cluster is not None:
        return _cluster_ls(args)
    rows = []
    for endpoint in endpoints():
        try:
            with Client(endpoint) as client:
                info = client.call("info")
        except (OSError, ControlError, ValueError):
            continue  # going away as we look
        rows.append(
            (info["name"], str(info["pid"]), _duration(info["uptime"]), str(info["actors"]))
        )
    if not rows:
        print("no Troupe systems are running")
        return 0
    widths = [
        max(len(r[i]) for r in [("SYSTEM", "PID", "UPTIME", "ACTORS"), *rows]) for i in range(4)
    ]
    for row in [("SYSTEM", "PID", "UPTIME", "ACTORS"), *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _cmd_tree(args: argparse.Namespace) -> int:
    if args.cluster is not None:
        return _cluster_tree(args)
    with _client(args.system) as client:
        reply = client.call("tree")
    print(reply["text"])
    return 0


def _width(full: bool) -> int | None:
    """The width lines are cut to: ``$COLUMNS`` if set, else the terminal's; None (no
    cut) with ``--full`` or when the output is not a terminal (a pipe, a file)."""
    if full:
        return None
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    if sys.stdout.isatty():
        return shutil.get_terminal_size().columns
    return None


def _fit(line: str, width: int | None) -> str:
    """`line` on one line (control characters shown as spaces: a repr cannot move or
    colour the operator's terminal), cut to `width` terminal cells (None: whole)."""
    from .top import fit, one_line

    line = one_line(line)
    return line if width is None else fit(line, width)


def _names_a_system(name: str) -> bool:
    """Whether `name` is a running system's NAME, NAME-PID or PID."""
    return any(name in (e.system, e.label, str(e.pid)) for e in endpoints())


def _cmd_events(args: argparse.Namespace) -> int:
    if args.cluster is not None:
        return _cluster_events(args)
    system, pattern = args.system, args.pattern
    if pattern is None:
        # One positional: a running system's name (NAME, NAME-PID or PID) means that
        # system, every event; anything else is a PATTERN (SYSTEM omitted).  Give both
        # (`troupe events NAME PATTERN`) for a pattern spelled like a system's name.
        if system is None or not _names_a_system(system):
            system, pattern = None, system or ">"
        else:
            pattern = ">"
    width = _width(args.full)
    try:
        with _client(system) as client:
            for reply in client.stream("events", pattern=pattern):
                event = reply["event"]
                stamp = time.strftime("%H:%M:%S", time.localtime(event["timestamp"]))
                line = f"{stamp} {event['topic']} from {event['source']}: {event['payload']!r}"
                print(_fit(line, width), flush=True)
    except ControlError as exc:
        raise UsageError(str(exc)) from None
    except (KeyboardInterrupt, BrokenPipeError):
        return 0
    except ConnectionError:
        print("troupe: the system stopped", file=sys.stderr)
    return 0


def _top_view(args: argparse.Namespace) -> dict[str, Any]:
    """How `troupe top` shows what it samples, local or across a cluster."""
    return {
        "sort": args.sort,
        "interval": args.interval,
        "once": args.once,
        "width": args.width,
        "hide_system": args.hide_system,
    }


def _cmd_top(args: argparse.Namespace) -> int:
    if args.width is not None and args.width < 20:
        raise UsageError(f"--width {args.width}: at least 20 columns")
    if args.interval <= 0:
        raise UsageError(f"--interval {args.interval}: a number of seconds above 0")
    if args.cluster is not None:
        return _cluster_top(args)
    from .top import run_top

    with _client(args.system) as client:
        try:
            run_top(client, **_top_view(args))
        except KeyboardInterrupt:
            pass
        except ConnectionError:
            print("troupe: the system stopped", file=sys.stderr)
    return 0


def _cmd_deadletters(args: argparse.Namespace) -> int:
    if args.n < 1:
        raise UsageError(f"-n is how many dead letters to show (1 or more), got {args.n}")
    if args.cluster is not None:
        return _cluster_deadletters(args)
    with _client(args.system) as client:
        # a refusal (ControlError) is printed by `main`, as for every command
        reply = client.call("deadletters", limit=min(args.n, 1000), reason=args.reason)
    print(_dead_letters_text(reply, args.reason, _width(args.full)))
    return 0


def _dead_letters_text(report: dict[str, Any], reason: str | None, width: int | None) -> str:
    """What `troupe deadletters` prints of a ``deadletters`` answer (the control
    socket's or a node's over NATS: `DeadLetterOffice.report`): a table of the
    letters, oldest first, and the totals by reason; lines cut to `width`."""
    counts = {name: n for name, n in report["counts"].items() if n}
    letters = list(reversed(report["letters"]))  # oldest first, the newest last
    if not letters:
        return f"no {reason + ' ' if reason else ''}dead letters"
    header = ("TIME", "REASON", "RECIPIENT", "TYPE", "MESSAGE")
    rows = [
        (
            time.strftime("%H:%M:%S", time.localtime(letter["timestamp"])),
            _fit(letter["reason"], None),
            _fit(letter["recipient"], None),
            _fit(letter["type"], None),
            _fit(letter["repr"], None),
        )
        for letter in letters
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
    lines = []
    for row in [header, *rows]:
        cells = [cell.ljust(w) for cell, w in zip(row[:4], widths, strict=True)]
        lines.append(_fit("  ".join([*cells, row[4]]).rstrip(), width))
    total = sum(report["counts"].values())
    shown = ", ".join(f"{name} {n}" for name, n in counts.items())
    noun = "dead letter" if total == 1 else "dead letters"
    lines.append(f"({len(letters)} shown; {total} {noun} since start: {shown})")
    return "\n".join(lines)


def _message_arg(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise UsageError(
            f"the message is not JSON ({exc}): {text!r}; e.g. '{{\"n\": 1}}', '[1, 2]', "
            "or a quoted string '\"hello\"'"
        ) from None


def _cmd_send(args: argparse.Namespace) -> int:
    message = _message_arg(args.json)
    with _client(args.system) as client:
        try:
            reply = client.call("send", path=args.path, message=message)
        except ControlError as exc:
            print(f"troupe: cannot send to {args.path}: {exc}", file=sys.stderr)
            return 1
    print(f"sent to {reply['sent']}")
    return 0


def _cmd_ask(args: argparse.Namespace) -> int:
    message = _message_arg(args.json)
    if not 0 < args.timeout <= 300:
        raise UsageError(f"--timeout is seconds above 0, at most 300, got {args.timeout}")
    with _client(args.system) as client:
        client.sock.settimeout(args.timeout + ASK_SLACK)
        try:
            reply = client.call("ask", path=args.path, message=message, timeout=args.timeout)
        except ControlError as exc:
            print(f"troupe: ask {args.path} failed: {exc}", file=sys.stderr)
            return 1
        except TimeoutError:
            print(f"troupe: {client.endpoint.label} did not answer", file=sys.stderr)
            return 1
    if "reply" in reply:
        print(json.dumps(reply["reply"], ensure_ascii=False))
    else:  # not JSON: its repr
        print(reply["reply_repr"])
    return 0


def _cmd_kill(args: argparse.Namespace) -> int:
    with _client(args.system) as client:
        try:
            reply = client.call("kill", path=args.path)
        except ControlError as exc:
            print(f"troupe: cannot kill {args.path}: {exc}", file=sys.stderr)
            return 1
    print(
        f"killed {reply['killed']}: it crashes now, and its supervisor "
        f"{reply['supervisor']} decides what follows (see `troupe tree`)"
    )
    return 0


def _version() -> str:
    try:
        return importlib.metadata.version("trio-troupe")
    except importlib.metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _cmd_stop(args: argparse.Namespace) -> int:
    if args.cluster is not None:
        return _cluster_stop(args)
    with _client(args.system) as client:
        reply = client.call("stop")
    print(f"{reply['stopping']} is stopping")
    return 0


# -- the cluster (`--cluster`): a plain NATS client, never a node ---------------------
def _cluster_target(args: argparse.Namespace, *positionals: str | None) -> list[str]:
    """Resolve ``--cluster [URL]``: set ``args.servers``, and return the positional
    arguments, an argument that `--cluster` swallowed first (a value without ``:``
    is not a URL: ``troupe tree --cluster NODE`` means NODE, with $TROUPE_CLUSTER)."""
    value: str = args.cluster
    given = [p for p in positionals if p is not None]
    if value and ":" not in value:
        given.insert(0, value)
        value = ""
    if not value:
        value = os.environ.get(CLUSTER_ENV, "")
        if not value.strip():
            raise UsageError(
                f"--cluster needs a NATS URL (e.g. nats://127.0.0.1:4222; comma-separated "
                f"for several) or the {CLUSTER_ENV} environment variable"
            )
    args.servers = [url.strip() for url in value.split(",") if url.strip()]
    return given


def _cluster_client(args: argparse.Namespace) -> ClusterClientType:
    try:
        from .cluster.client import ClusterClient
    except ImportError as exc:
        raise UsageError(
            f"--cluster needs the cluster extra (pip install 'trio-troupe[cluster]'): {exc}"
        ) from None
    options = {} if args.cluster_creds is None else {"user_credentials": args.cluster_creds}
    try:
        return ClusterClient(
            args.servers, cluster_name=args.cluster_name or "troupe", nats_options=options
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _cluster_command(run_it: Callable[[argparse.Namespace], int]) -> Callable[..., int]:
    """`run_it`, with a cluster's errors printed as ``troupe: ...`` (exit 1) and a
    Ctrl-C that comes before `run_it` handles it ending quietly (exit 130)."""

    def wrapped(args: argparse.Namespace) -> int:
        try:
            return run_it(args)
        except KeyboardInterrupt:  # e.g. while still connecting: a quiet exit
            return 130
        except ClusterError as exc:
            print(f"troupe: {exc}", file=sys.stderr)
            return 1
        except ValueError as exc:  # a bad node name or pattern
            raise UsageError(str(exc)) from None

    return wrapped


def _no_more(given: list[str], what: str) -> None:
    if given:
        raise UsageError(
            f"unexpected argument {given[0]!r} {what} (a NATS URL has a ':', e.g. nats://HOST:4222)"
        )


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    return f"{seconds:.1f}s ago" if seconds < 60 else _duration(seconds) + " ago"


@_cluster_command
def _cluster_ls(args: argparse.Namespace) -> int:
    _no_more(_cluster_target(args), "for `troupe ls --cluster`")
    with _cluster_client(args) as client:
        infos = client.nodes()
    now = time.time()
    header = ("NODE", "INCARNATION", "HOST", "PID", "UPTIME", "ACTORS", "STATUS", "LAST SEEN")
    rows = [header]
    for info in infos:
        up = info["status"] == "up"
        rows.append(
            (
                str(info["name"]),
                str(info["incarnation"]),
                str(info["host"]),
                str(info["pid"]),
                _duration(now - info["started"]) if up else "-",
                str(info["actors"]),
                str(info["status"]),
                _ago(now - info["last_seen"]),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def _node_or_every_node(
    args: argparse.Namespace,
    command: str,
    one: Callable[[ClusterClientType, str], str],
    every: Callable[[ClusterClientType, list[str]], Mapping[str, str | Exception]],
) -> int:
    """`troupe COMMAND --cluster URL [NODE]`: print `one` of NODE; without NODE, a
    block for every node (`_node_blocks`) of what `every` shows of those up."""
    given = _cluster_target(args, args.system)
    node = given.pop(0) if given else None
    _no_more(given, f"for `troupe {command} --cluster [NODE]`")
    with _cluster_client(args) as client:
        if node is not None:
            print(one(client, node))
            return 0
        infos = client.nodes()
        shown = every(client, [info["name"] for info in infos if info["status"] == "up"])
    return _node_blocks(infos, shown)


@_cluster_command
def _cluster_tree(args: argparse.Namespace) -> int:
    from .monitor import TreeSnapshot

    def render(snapshot: dict[str, Any]) -> str:
        return TreeSnapshot.from_dict(snapshot).render()

    return _node_or_every_node(
        args,
        "tree",
        lambda client, node: render(client.snapshot(node)),
        lambda client, up: {
            name: render(snapshot) for name, snapshot in client.snapshots(up).items()
        },
    )


def _node_blocks(infos: list[dict[str, Any]], shown: Mapping[str, str | Exception]) -> int:
    """Print a block for each node of `infos` (`troupe tree|deadletters --cluster`):
    its header, then its text in `shown`, why it has none (its error, down since
    when, or that it did not answer).  Returns the exit code: 1 if a node that is
    up showed nothing."""
    blocks = []
    failed = 0
    for info in infos:
        title = (
            f"== {info['name']}  ({info['host']} pid {info['pid']}, "
            f"incarnation {info['incarnation']})"
        )
        text = shown.get(info["name"])
        if isinstance(text, str):
            blocks.append(f"{title}\n{text}")
        elif info["status"] != "up":
            blocks.append(f"{title}\n(down: last seen {_ago(time.time() - info['last_seen'])})")
        else:
            failed += 1
            blocks.append(f"{title}\n({_no_answer_text(text)})")
    print("\n\n".join(blocks))
    return 1 if failed else 0


def _no_answer_text(error: Exception | None) -> str:
    from .cluster.client import ControlRefused

    if isinstance(error, ControlRefused):
        return f"refused: {error}"
    return "did not answer"


@_cluster_command
def _cluster_deadletters(args: argparse.Namespace) -> int:
    """`troupe deadletters --cluster URL [NODE]`: NODE's dead letters as the local
    command shows them; without NODE, a block for every node (as `tree --cluster`),
    the nodes asked at once."""
    limit, width = min(args.n, 1000), _width(args.full)

    def show(report: dict[str, Any]) -> str:
        return _dead_letters_text(report, args.reason, width)

    return _node_or_every_node(
        args,
        "deadletters",
        lambda client, node: show(client.dead_letters(node, limit, args.reason)),
        lambda client, up: {
            name: report if isinstance(report, ClusterError) else show(report)
            for name, report in client.dead_letters_of(up, limit, args.reason).items()
        },
    )


@_cluster_command
def _cluster_top(args: argparse.Namespace) -> int:
    from .top import run_cluster_top

    _no_more(_cluster_target(args, args.system), "for `troupe top --cluster`")
    with _cluster_client(args) as client:

        def fetch() -> tuple[dict[str, dict[str, Any]], list[str]]:
            up = [info["name"] for info in client.nodes() if info["status"] == "up"]
            snapshots = client.snapshots(up)
            return snapshots, [name for name in up if name not in snapshots]

        try:
            run_cluster_top(fetch, cluster=client.cluster_name, **_top_view(args))
        except KeyboardInterrupt:
            pass
    return 0


@_cluster_command
def _cluster_events(args: argparse.Namespace) -> int:
    given = _cluster_target(args, args.system, args.pattern)
    pattern = given.pop(0) if given else ">"
    _no_more(given, "for `troupe events --cluster PATTERN`")
    try:
        check_pattern(pattern)
    except ValueError as exc:
        raise UsageError(f"bad pattern {pattern!r}: {exc}") from None
    width = _width(args.full)
    try:
        with _cluster_client(args) as client:
            for event in client.events(pattern):
                stamp = time.strftime("%H:%M:%S", time.localtime(event.get("timestamp") or 0))
                if "error" in event:
                    print(f"{stamp} undecodable event from {event['node']}: {event['error']}")
                    continue
                line = (
                    f"{stamp} {event['topic']} from {event['source']} on {event['node']}: "
                    f"{event['payload']!r}"
                )
                print(_fit(line, width), flush=True)
    except (KeyboardInterrupt, BrokenPipeError):
        return 0
    return 0


@_cluster_command
def _cluster_stop(args: argparse.Namespace) -> int:
    from .cluster.client import ControlRefused

    given = _cluster_target(args, args.system)
    if not given:
        raise UsageError("troupe stop --cluster URL NODE: which node?")
    node = given.pop(0)
    _no_more(given, "for `troupe stop --cluster URL NODE`")
    with _cluster_client(args) as client:
        try:
            client.stop(node)
        except ControlRefused as exc:
            print(f"troupe: node {node!r} refused to stop: {exc}", file=sys.stderr)
            return 1
    print(f"node {node} is stopping")
    return 0


def _cmd_web(args: argparse.Namespace) -> int:
    try:
        import trio

        from .web import DEFAULT_PORT, ClusterSource, ControlSource, Dashboard, Source
    except ImportError as exc:  # pragma: no cover - starlette and hypercorn are dependencies
        raise UsageError(f"the dashboard needs starlette and hypercorn: {exc}") from None
    if not (0 < args.interval < float("inf")):
        raise UsageError(f"--interval is a positive number of seconds, got {args.interval}")
    port = DEFAULT_PORT if args.port is None else args.port
    if not 0 <= port <= 65535:
        raise UsageError(f"--port is 0..65535 (0 picks a free port), got {port}")
    source: Source
    if args.cluster is not None:
        _no_more(_cluster_target(args, args.system), "for `troupe web --cluster`")
        _cluster_client(args)  # checks the options now (a UsageError), connects later
        source = ClusterSource(lambda: _cluster_client(args))
    else:
        try:
            source = ControlSource(args.system)
        except LookupError as exc:
            raise UsageError(str(exc)) from None
    logging.basicConfig(level=logging.WARNING, format="troupe web: %(levelname)s %(message)s")
    dashboard = Dashboard(source, port, interval=args.interval)

    async def serve() -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(dashboard.serve)
            what = source.title if source.mode == "cluster" else f"system {source.title}"
            print(f"troupe web: {what} on {dashboard.url} (Ctrl-C stops)", flush=True)

    try:
        trio.run(serve)
    except KeyboardInterrupt:
        return 0
    except OSError as exc:
        print(f"troupe: cannot serve the dashboard on port {port}: {exc}", file=sys.stderr)
        return 1
    finally:
        if isinstance(source, ClusterSource):
            source.close()
    return 0


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="troupe", description="Run and watch Troupe actor systems."
    )
    parser.add_argument("--version", action="version", version=f"troupe {_version()}")
    commands = parser.add_subparsers(dest="command", required=True)
    run_cmd = commands.add_parser(
        "run",
        help="run a supervisor tree from a script or module",
        description="Run SCRIPT[:NAME]: NAME is a module-level Supervisor (default 'tree') "
        "or a callable returning one. Ctrl-C stops gracefully; a second Ctrl-C at once. "
        "The control socket is on, for `troupe tree/top/events` from another terminal.",
    )
    run_cmd.add_argument("target", metavar="SCRIPT[:NAME]")
    run_cmd.add_argument(
        "--name", help="system name (default: the node's name, else the root supervisor's)"
    )
    run_cmd.add_argument(
        "--metrics-port",
        type=int,
        help="serve Prometheus metrics on 127.0.0.1:PORT/metrics, and /healthz and /readyz",
    )
    run_cmd.add_argument(
        "--log-level",
        default="INFO",
        type=str.upper,
        choices=("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"),
        help="the least severe log records shown (default INFO)",
    )
    run_cmd.add_argument("--quiet", "-q", action="store_true", help="show warnings and errors only")
    node = run_cmd.add_argument_group(
        "cluster",
        "run the tree as a node of a cluster on NATS (refs as troupe://NODE/PATH)",
    )
    node.add_argument("--node", metavar="NAME", help="this node's name, unique in the cluster")
    node.add_argument(
        "--cluster",
        metavar="URL",
        action="append",
        help=f"a NATS server to join through (repeat for several; default: ${CLUSTER_ENV}, "
        "comma-separated)",
    )
    node.add_argument(
        "--cluster-name", metavar="NAME", help="the cluster's subject prefix (default 'troupe')"
    )
    node.add_argument(
        "--cluster-topics",
        metavar="PATTERN",
        nargs="+",
        action="extend",
        help="bus patterns shared with every node of the cluster, e.g. 'jobs.>'",
    )
    node.add_argument(
        "--cluster-control",
        choices=("ro", "rw"),
        help="may other nodes start and stop actors here (default 'ro': read-only)",
    )
    node.add_argument(
        "--heartbeat", type=float, metavar="SECONDS", help="seconds between heartbeats (1.0)"
    )
    node.add_argument(
        "--node-down-after",
        type=float,
        metavar="SECONDS",
        help="a node silent this long is down (5.0); longer than the heartbeat",
    )
    run_cmd.set_defaults(func=_cmd_run)
    ls_cmd = commands.add_parser(
        "ls",
        help="list the running systems (with --cluster: the cluster's nodes)",
        description="List the Troupe systems running on this machine (their control "
        "sockets); with --cluster, every node of the cluster: NODE, INCARNATION, HOST, "
        "PID, UPTIME, ACTORS, STATUS (up/down) and LAST SEEN (its last heartbeat).",
    )
    _cluster_flags(ls_cmd, "troupe ls --cluster nats://HOST:4222")
    ls_cmd.set_defaults(func=_cmd_ls)
    system_help = (
        "NAME, NAME-PID or PID (may be omitted when only one system runs); with --cluster, a NODE"
    )
    tree_cmd = commands.add_parser(
        "tree",
        help="print a system's actor tree once (with --cluster: every node's, or one)",
    )
    tree_cmd.add_argument("system", nargs="?", metavar="SYSTEM|NODE", help=system_help)
    _cluster_flags(tree_cmd, "troupe tree --cluster nats://HOST:4222 [NODE]")
    tree_cmd.set_defaults(func=_cmd_tree)
    top_cmd = commands.add_parser(
        "top",
        help="a live tree of a system's actors (with --cluster: of every node's)",
        description="A live, indented tree of the actors, its columns fitted to the "
        "terminal. Keys: q quit, s (or 1-5) sort, h hide /system, arrows or j/k select "
        "an actor (its details show below: message in hand, mailbox high water, "
        "restarts, last error with its traceback), PgUp/PgDn, d hide the details.",
    )
    top_cmd.add_argument("system", nargs="?", metavar="SYSTEM", help=system_help)
    top_cmd.add_argument(
        "--sort",
        choices=SORTS,
        default="depth",
        help="the order of siblings: the deepest mailbox, the highest rate or the most "
        "restarts under each first (default depth); path: by name; node: the nodes by name",
    )
    top_cmd.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    top_cmd.add_argument(
        "--once",
        action="store_true",
        help="print one frame and exit (two samples min(INTERVAL, 0.5 s) apart: real rates)",
    )
    top_cmd.add_argument(
        "--width", type=int, metavar="N", help="lay out for N columns (default: the terminal's)"
    )
    top_cmd.add_argument(
        "--hide-system", action="store_true", help="start with /system hidden (key h)"
    )
    _cluster_flags(top_cmd, "troupe top --cluster nats://HOST:4222 (a NODE column)")
    top_cmd.set_defaults(func=_cmd_top)
    events_cmd = commands.add_parser(
        "events",
        help="print bus events as they happen",
        description="Print bus events as they happen. With one argument: a running "
        "system's NAME (or NAME-PID, PID) means that system's events, anything else is a "
        "PATTERN; give both (SYSTEM PATTERN) for a pattern spelled like a system's name. "
        "Lines are cut to the terminal's width ($COLUMNS) unless --full; piped, never.",
    )
    events_cmd.add_argument("system", nargs="?", metavar="SYSTEM", help=system_help)
    events_cmd.add_argument(
        "pattern",
        nargs="?",
        help="NATS-style pattern, e.g. 'training.>' (default '>': every event but the "
        "runtime's own system.* ones; 'system.>' shows those)",
    )
    events_cmd.add_argument(
        "--full", action="store_true", help="print whole payloads, not cut to the terminal"
    )
    _cluster_flags(
        events_cmd,
        "troupe events --cluster nats://HOST:4222 PATTERN: the events of the cluster's "
        "topics (those the nodes share, their --cluster-topics) and the node that "
        "published each",
    )
    events_cmd.set_defaults(func=_cmd_events)
    local_help = "NAME, NAME-PID or PID (may be omitted when only one system runs)"
    dead_cmd = commands.add_parser(
        "deadletters",
        help="the newest dead letters: time, reason, recipient, message type and repr "
        "(with --cluster: of a node, or of every node)",
        description="The newest dead letters of a system (oldest first, the newest last), "
        "and the totals by reason since it started. Lines are cut to the terminal's width "
        "unless --full. With --cluster, those of NODE, or a block for every node.",
    )
    dead_cmd.add_argument("system", nargs="?", metavar="SYSTEM|NODE", help=system_help)
    dead_cmd.add_argument("--reason", choices=DEAD_LETTER_REASONS, help="only this reason")
    dead_cmd.add_argument(
        "-n", type=int, default=20, metavar="N", help="how many (default 20, at most 1000)"
    )
    dead_cmd.add_argument("--full", action="store_true", help="do not cut lines")
    _cluster_flags(dead_cmd, "troupe deadletters --cluster nats://HOST:4222 [NODE]")
    dead_cmd.set_defaults(func=_cmd_deadletters)
    json_help = "the message, as JSON: '{\"n\": 1}', '[1, 2]', '\"hello\"', 42"
    path_help = "the actor's path, e.g. /app/worker"
    send_cmd = commands.add_parser(
        "send",
        help="send an actor a JSON message (tell: no reply)",
        description="Send the actor at PATH a message: the JSON value, decoded (objects "
        "arrive as dicts, arrays as lists). Errors (no such actor, a full mailbox) exit 1; "
        "JSON that does not parse exits 2. The runtime's own actors (/system) and "
        "supervisors take no messages from here.",
    )
    send_cmd.add_argument("system", nargs="?", metavar="SYSTEM", help=local_help)
    send_cmd.add_argument("path", metavar="PATH", help=path_help)
    send_cmd.add_argument("json", metavar="JSON", help=json_help)
    _local_only(send_cmd, _cmd_send)
    ask_cmd = commands.add_parser(
        "ask",
        help="ask an actor with a JSON message and print its reply",
        description="Ask the actor at PATH with the JSON message and print its reply as "
        "JSON (a reply that is not JSON is printed as its repr). A crash, an unhandled "
        "message, no such actor or no reply within --timeout: one line on stderr, exit 1; "
        "JSON that does not parse exits 2.",
    )
    ask_cmd.add_argument("system", nargs="?", metavar="SYSTEM", help=local_help)
    ask_cmd.add_argument("path", metavar="PATH", help=path_help)
    ask_cmd.add_argument("json", metavar="JSON", help=json_help)
    ask_cmd.add_argument(
        "--timeout", type=float, default=5.0, metavar="S", help="seconds to wait (default 5)"
    )
    _local_only(ask_cmd, _cmd_ask)
    kill_cmd = commands.add_parser(
        "kill",
        help="crash an actor on purpose; its supervisor decides what follows",
        description="Crash the actor at PATH on purpose (after the message in hand), as "
        "Erlang's observer can: its supervisor then does what its strategy says (restart, "
        "backoff, escalate). Supervisors and the runtime's own actors (/system) are refused.",
    )
    kill_cmd.add_argument("system", nargs="?", metavar="SYSTEM", help=local_help)
    kill_cmd.add_argument("path", metavar="PATH", help=path_help)
    _local_only(kill_cmd, _cmd_kill)
    stop_cmd = commands.add_parser(
        "stop",
        help="stop a system gracefully (with --cluster: a node that allows it)",
        description="Stop a system gracefully through its control socket; with --cluster, "
        "stop NODE, which it allows only if it runs with --cluster-control rw (a read-only "
        "node refuses: exit 1).",
    )
    stop_cmd.add_argument("system", nargs="?", metavar="SYSTEM|NODE", help=system_help)
    _cluster_flags(stop_cmd, "troupe stop --cluster nats://HOST:4222 NODE")
    stop_cmd.set_defaults(func=_cmd_stop)
    web_cmd = commands.add_parser(
        "web",
        help="serve a live web dashboard of a system (with --cluster: of every node)",
        description="Serve the dashboard on http://127.0.0.1:PORT/: the tree with each "
        "actor's state, mailbox, msg/s and restarts, dead letters, loop health, bus events "
        "and one actor's detail, updated live. Read-only. It reads SYSTEM through its "
        "control socket (with --cluster, every node through NATS). Ctrl-C stops it.",
    )
    web_cmd.add_argument("system", nargs="?", metavar="SYSTEM", help=system_help)
    web_cmd.add_argument(
        "--port", type=int, help="the port on 127.0.0.1 (default 8321; 0 picks a free one)"
    )
    web_cmd.add_argument(
        "--interval", type=float, default=1.0, help="seconds between samples (default 1)"
    )
    _cluster_flags(web_cmd, "troupe web --cluster nats://HOST:4222 (a node selector)")
    web_cmd.set_defaults(func=_cmd_web)
    return parser


def _local_only(command: argparse.ArgumentParser, func: Callable[..., int]) -> None:
    """A command of this machine's systems only (no ``--cluster``)."""
    command.set_defaults(func=func, cluster=None, cluster_name=None, cluster_creds=None)


def _cluster_flags(command: argparse.ArgumentParser, usage: str) -> None:
    group = command.add_argument_group(
        "cluster",
        f"{usage}. The command joins NATS as a plain client, never as a node. "
        f"URL: a NATS server (nats://HOST:PORT; comma-separated for several); "
        f"--cluster without a URL uses ${CLUSTER_ENV}. A value without ':' is not a URL "
        f"but the next argument, so `--cluster NODE` uses ${CLUSTER_ENV} too. "
        "Errors (no server, no node answering) exit 1.",
    )
    group.add_argument(
        "--cluster",
        metavar="URL",
        nargs="?",
        const="",
        help=f"the cluster reached through URL (default ${CLUSTER_ENV}) instead of this "
        "machine's control sockets",
    )
    group.add_argument(
        "--cluster-name",
        metavar="NAME",
        help="the cluster's subject prefix (default 'troupe'; needs --cluster)",
    )
    group.add_argument(
        "--cluster-creds",
        metavar="FILE",
        help="a NATS credentials file (user:password@ in the URL and tls:// URLs work too)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command != "run" and args.cluster is None:
            for flag, value in (
                ("--cluster-name", args.cluster_name),
                ("--cluster-creds", args.cluster_creds),
            ):
                if value is not None:
                    raise UsageError(f"{flag} needs --cluster [URL]")
        code: int = args.func(args)
    except UsageError as exc:
        print(f"troupe: {exc}", file=sys.stderr)
        return 2
    except ControlError as exc:  # the system refused (e.g. its control socket is busy)
        print(f"troupe: {exc}", file=sys.stderr)
        return 1
    except (TimeoutError, ConnectionError) as exc:  # it stopped answering, or went away
        print(f"troupe: {exc}", file=sys.stderr)
        return 1
    return code


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())

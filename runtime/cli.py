"""The ``troupe`` command (also ``python -m runtime``)."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import sys
import time
from collections.abc import Sequence
from types import ModuleType

from .control import Client, ControlError, endpoints, pick
from .entry import SystemOptions, run
from .errors import ClusterError
from .spec import CLUSTER_NAME, NODE_NAME, Supervisor
from .topics import check_pattern

CLUSTER_ENV = "TROUPE_CLUSTER"
"""The NATS URL(s) (comma-separated) `troupe run --node` joins through when no
``--cluster`` is given."""


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
        if not CLUSTER_NAME.fullmatch(args.cluster_name):
            raise UsageError(
                f"invalid cluster name {args.cluster_name!r}: dot-separated tokens of "
                "letters, digits, '-' and '_'"
            )
        options["cluster_name"] = args.cluster_name
    if args.cluster_topics is not None:
        for pattern in args.cluster_topics:
            try:
                check_pattern(pattern)
            except ValueError as exc:
                raise UsageError(f"--cluster-topics {pattern!r}: {exc}") from None
        options["cluster_topics"] = tuple(args.cluster_topics)
    if args.cluster_control is not None:
        options["cluster_control"] = args.cluster_control
    return options


def _cmd_run(args: argparse.Namespace) -> int:
    options = cluster_options(args)
    options["name"] = args.name if args.name is not None else options.get("node")
    options["control"] = True
    options["metrics_port"] = args.metrics_port
    tree = load_tree(args.target)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        run(tree, **options)
    except KeyboardInterrupt:
        print("troupe: killed", file=sys.stderr)
        return 130
    except ClusterError as exc:
        print(f"troupe: cannot join the cluster: ClusterError: {exc}", file=sys.stderr)
        return 1
    except Exception as exc:
        print(f"troupe: the tree failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
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
    with _client(args.system) as client:
        reply = client.call("tree")
    print(reply["text"])
    return 0


def _cmd_events(args: argparse.Namespace) -> int:
    system, pattern = args.system, args.pattern
    if pattern is None:  # `troupe events PATTERN` with SYSTEM omitted
        system, pattern = None, system or ">"
    try:
        with _client(system) as client:
            for reply in client.stream("events", pattern=pattern):
                event = reply["event"]
                stamp = time.strftime("%H:%M:%S", time.localtime(event["timestamp"]))
                print(
                    f"{stamp} {event['topic']} from {event['source']}: {event['payload']!r}",
                    flush=True,
                )
    except ControlError as exc:
        raise UsageError(str(exc)) from None
    except (KeyboardInterrupt, BrokenPipeError):
        return 0
    except ConnectionError:
        print("troupe: the system stopped", file=sys.stderr)
    return 0


def _cmd_top(args: argparse.Namespace) -> int:
    from .top import run_top

    with _client(args.system) as client:
        try:
            run_top(client, sort=args.sort, interval=args.interval, once=args.once)
        except KeyboardInterrupt:
            pass
        except ConnectionError:
            print("troupe: the system stopped", file=sys.stderr)
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
        "--metrics-port", type=int, help="serve Prometheus metrics on 127.0.0.1:PORT"
    )
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
    run_cmd.set_defaults(func=_cmd_run)
    ls_cmd = commands.add_parser("ls", help="list the running systems")
    ls_cmd.set_defaults(func=_cmd_ls)
    system_help = "NAME, NAME-PID or PID (may be omitted when only one system runs)"
    tree_cmd = commands.add_parser("tree", help="print a system's actor tree once")
    tree_cmd.add_argument("system", nargs="?", help=system_help)
    tree_cmd.set_defaults(func=_cmd_tree)
    top_cmd = commands.add_parser("top", help="a live view of a system's actors")
    top_cmd.add_argument("system", nargs="?", help=system_help)
    top_cmd.add_argument("--sort", choices=("depth", "rate", "restarts", "path"), default="depth")
    top_cmd.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    top_cmd.add_argument("--once", action="store_true", help="print one frame and exit")
    top_cmd.set_defaults(func=_cmd_top)
    events_cmd = commands.add_parser("events", help="print bus events as they happen")
    events_cmd.add_argument("system", nargs="?", help=system_help)
    events_cmd.add_argument(
        "pattern",
        nargs="?",
        help="NATS-style pattern, e.g. 'training.>' (default '>': every event but the "
        "runtime's own system.* ones; 'system.>' shows those)",
    )
    events_cmd.set_defaults(func=_cmd_events)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except UsageError as exc:
        print(f"troupe: {exc}", file=sys.stderr)
        return 2
    return code


def entry() -> None:
    """Console-script entry point."""
    sys.exit(main())

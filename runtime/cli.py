"""The ``troupe`` command (also ``python -m runtime``)."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import os
import sys
from collections.abc import Sequence
from types import ModuleType

from .supervisor import Supervisor
from .system import run


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


def _cmd_run(args: argparse.Namespace) -> int:
    tree = load_tree(args.target)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        run(tree, name=args.name)
    except KeyboardInterrupt:
        print("troupe: killed", file=sys.stderr)
        return 130
    except Exception as exc:
        print(f"troupe: the tree failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="troupe", description="Run and watch Troupe actor systems."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run_cmd = commands.add_parser(
        "run",
        help="run a supervisor tree from a script or module",
        description="Run SCRIPT[:NAME]: NAME is a module-level Supervisor (default 'tree') "
        "or a callable returning one. Ctrl-C stops gracefully; a second Ctrl-C at once.",
    )
    run_cmd.add_argument("target", metavar="SCRIPT[:NAME]")
    run_cmd.add_argument("--name", help="system name (default: the root supervisor's name)")
    run_cmd.set_defaults(func=_cmd_run)
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

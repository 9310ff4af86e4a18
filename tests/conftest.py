"""Shared pytest options and the fixtures that start real NATS servers (`nats_server`,
`fresh_nats_server`, `nats_cluster`).

Tests marked ``slow`` need long stretches of real time (the cluster chaos suite):
the default run leaves them out; ``pytest -m slow`` runs only them (CI's second step),
``pytest --slow`` runs everything, with the property-based and chaos suites sized long.
With ``-m EXPR`` the expression alone decides.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import tempfile
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest
from natsserver import NatsCluster, NatsServer, NatsServerError

T = TypeVar("T")


# pytest-xdist's workers set COLUMNS (and LINES) for their own output; the CLI cuts
# its lines to $COLUMNS, so a `troupe` subprocess inheriting it would print cut lines
# that a run without xdist never shows.  The tests set COLUMNS where they mean it.
for _name in ("COLUMNS", "LINES"):
    os.environ.pop(_name, None)

# A run started with SIGINT ignored (a background job of a shell script, nohup) passes
# that on to every process it starts, and the tests that stop a `troupe` subprocess with
# SIGINT (Ctrl-C) would wait for it in vain: the subprocesses get the default again.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--slow",
        action="store_true",
        default=False,
        help="also run the tests marked slow, and run the property-based and chaos suites "
        "long (more examples, bigger trees)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "slow: needs long stretches of real time; left out of the default run "
        "(`pytest -m slow` runs only these, `pytest --slow` everything, sized long)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Leave the tests marked slow out, unless ``--slow`` or an ``-m`` expression says."""
    if config.getoption("--slow") or config.getoption("markexpr"):
        return
    slow = [item for item in items if item.get_closest_marker("slow") is not None]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if item.get_closest_marker("slow") is None]


@pytest.fixture
def default_sigint() -> Iterator[None]:
    """Python's default SIGINT handler for the test (restored after): trio.run and the
    cluster client turn SIGINT into KeyboardInterrupt only from it, as a CLI has it."""
    old = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, old)


@pytest.fixture
def slow(request: pytest.FixtureRequest) -> bool:
    """True when the run was started with ``--slow``."""
    return bool(request.config.getoption("--slow"))


# -- real NATS servers (tests/natsserver.py) -----------------------------------
def _nats_or_fail(make: Callable[[], T]) -> T:
    """`make()`, turning a missing binary into a loud failure naming the package."""
    try:
        return make()
    except NatsServerError as error:
        if "binary is missing" in str(error):
            pytest.fail(str(error), pytrace=False)
        raise


@pytest.fixture(scope="module")
def nats_server() -> Iterator[NatsServer]:
    """One `nats-server` shared by the tests of a module (don't kill it: use
    `fresh_nats_server` for that)."""
    server = _nats_or_fail(lambda: NatsServer().start())
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def fresh_nats_server() -> Iterator[NatsServer]:
    """A `nats-server` of this test's own: kill it, restart it, fill it."""
    server = _nats_or_fail(lambda: NatsServer().start())
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(scope="module")
def nats_cluster() -> Iterator[NatsCluster]:
    """Three `nats-server`s joined by routes, shared by the tests of a module."""
    cluster = _nats_or_fail(lambda: NatsCluster().start())
    try:
        yield cluster
    finally:
        cluster.close()


@pytest.fixture
def folder() -> Iterator[pathlib.Path]:
    """A private folder with a short path for control sockets (AF_UNIX paths are limited
    to ~107 bytes): pass it as ``control_dir=``.  (test_threaded_cluster has its own
    `folder`, used as XDG_RUNTIME_DIR.)"""
    parent = pathlib.Path(tempfile.mkdtemp(prefix="troupe-ctl-"))
    try:
        yield parent / "troupe"
    finally:
        shutil.rmtree(parent, ignore_errors=True)

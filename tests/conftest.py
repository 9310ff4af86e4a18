"""Shared pytest options: ``--slow`` runs the property and chaos suites long."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--slow",
        action="store_true",
        default=False,
        help="run the property-based and chaos suites long (more examples, bigger trees)",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slow: sized by --slow (bounded by default, long with --slow)"
    )


@pytest.fixture
def slow(request: pytest.FixtureRequest) -> bool:
    """True when the run was started with ``--slow``."""
    return bool(request.config.getoption("--slow"))

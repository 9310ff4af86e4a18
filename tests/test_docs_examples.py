"""Every Python example in README.md and in docs/ runs as written.

A ```` ```python ```` block is one of:

- a script: run with this interpreter; each ``print(...)  # 13`` in it promises
  that the line ``13`` is printed, in that order (other output may come between);
- a test file, when its first line is ``# test_<name>.py ...``: run under pytest,
  where it must pass;
- not executed, when the line before its fence is ``<!-- not executed: REASON -->``
  (a program that runs forever or needs a second terminal): it must still compile,
  must say why, and there are only a few of them.

A script that mentions ``NATS_URL`` gets a real NATS server (the ``nats_server``
fixture) in that variable.
"""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
from typing import NamedTuple

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.parts)]

FENCE = re.compile(
    r"(?:<!-- not executed: (?P<reason>[^\n]*?) -->\n)?^```python\n(?P<code>.*?)^```", re.S | re.M
)
MOST_NOT_EXECUTED = 3


class Example(NamedTuple):
    page: pathlib.Path
    number: int  # 1-based, within its page
    code: str
    skipped: str | None  # why it is not executed

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}#{self.number}"


def _examples() -> list[Example]:
    found = []
    for page in PAGES:
        for number, match in enumerate(FENCE.finditer(page.read_text()), start=1):
            found.append(Example(page, number, match["code"], match["reason"]))
    return found


def _checkout_first() -> dict[str, str]:
    """The environment for an example: this checkout's packages, whatever is installed."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


EXAMPLES = _examples()
RUN = [e for e in EXAMPLES if e.skipped is None]
SCRIPTS = [e for e in RUN if not e.code.startswith("# test_")]
PYTEST_FILES = [e for e in RUN if e.code.startswith("# test_")]
NOT_EXECUTED = [e for e in EXAMPLES if e.skipped is not None]


def test_the_readme_has_a_quickstart_that_runs() -> None:
    assert [e for e in SCRIPTS if e.page == README]


def test_the_docs_have_examples_and_test_examples() -> None:
    in_docs = [e for e in EXAMPLES if e.page != README]
    assert len(in_docs) >= 20
    assert [e for e in PYTEST_FILES if e.page != README]


def test_examples_not_executed_are_few_compile_and_say_why() -> None:
    assert len(NOT_EXECUTED) <= MOST_NOT_EXECUTED, [e.id for e in NOT_EXECUTED]
    for example in NOT_EXECUTED:
        assert example.skipped and len(example.skipped) > 10, f"{example.id}: say why"
        compile(example.code, example.id, "exec")


@pytest.mark.parametrize("example", PYTEST_FILES, ids=[e.id for e in PYTEST_FILES])
def test_test_examples_pass_under_pytest(example: Example, tmp_path: pathlib.Path) -> None:
    name = example.code.split()[1]  # "# test_x.py -- ..."
    (tmp_path / name).write_text(example.code)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", name],
        cwd=tmp_path,
        env=_checkout_first(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert " passed" in done.stdout


@pytest.mark.parametrize("example", SCRIPTS, ids=[e.id for e in SCRIPTS])
def test_script_examples_run_and_print_what_they_promise(
    example: Example, tmp_path: pathlib.Path, request: pytest.FixtureRequest
) -> None:
    code = example.code
    script = tmp_path / "example.py"
    script.write_text(code)
    env = _checkout_first()
    if "NATS_URL" in code:  # a cluster example: a real server for it
        env["NATS_URL"] = request.getfixturevalue("nats_server").url
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    # `print(...)  # 13` promises that the line `13` is printed; promised lines
    # must appear in that order (other output may come between)
    promised = [m.strip() for m in re.findall(r"print\(.*\)[ \t]*#[ \t]*(.+)$", code, flags=re.M)]
    assert promised, "every example shows what it prints"
    lines = iter(line.strip() for line in done.stdout.splitlines())
    missing = [p for p in promised if not any(line == p for line in lines)]
    assert not missing, f"promised but not printed (in order): {missing}\n{done.stdout}"

"""Every Python snippet in README.md runs as written."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys

import pytest

README = pathlib.Path(__file__).resolve().parent.parent / "README.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_snippets() -> None:
    assert len(SNIPPETS) >= 2


SCRIPTS = [code for code in SNIPPETS if not code.startswith("# test_")]
PYTEST_FILES = [code for code in SNIPPETS if code.startswith("# test_")]


def test_readme_has_a_test_example() -> None:
    assert PYTEST_FILES


@pytest.mark.parametrize("code", PYTEST_FILES, ids=[f"test{i}" for i in range(len(PYTEST_FILES))])
def test_readme_test_examples_pass_under_pytest(code: str, tmp_path: pathlib.Path) -> None:
    name = code.split()[1]  # "# test_x.py -- ..."
    (tmp_path / name).write_text(code)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", name],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert " passed" in done.stdout


@pytest.mark.parametrize("code", SCRIPTS, ids=[f"snippet{i}" for i in range(len(SCRIPTS))])
def test_readme_snippet_runs(
    code: str, tmp_path: pathlib.Path, request: pytest.FixtureRequest
) -> None:
    script = tmp_path / "snippet.py"
    script.write_text(code)
    env = dict(os.environ)
    if "NATS_URL" in code:  # a cluster snippet: a real server for it
        env["NATS_URL"] = request.getfixturevalue("nats_server").url
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=60, env=env
    )
    assert done.returncode == 0, done.stderr
    # `print(...)  # 13` in a snippet promises that the line `13` is printed;
    # promised lines must appear in that order (other output may come between)
    promised = [m.strip() for m in re.findall(r"print\(.*\)\s*#\s*(.+)$", code, flags=re.M)]
    assert promised, "every README snippet shows what it prints"
    lines = iter(line.strip() for line in done.stdout.splitlines())
    missing = [p for p in promised if not any(line == p for line in lines)]
    assert not missing, f"promised but not printed (in order): {missing}\n{done.stdout}"

"""Every Python example in README.md and in the site (docs/, and CHANGELOG.md and
CONTRIBUTING.md, which it includes) runs as written.

Code blocks are found as MyST finds them (markdown-it, CommonMark): fences inside
list items and quotes, ``~~~`` and longer fences count.  A block must name its
language, and Python is spelled ``python`` (a ``py``, ``python3``, ``pycon`` or
``{code-block} python`` block would be shown as Python and never run).  A
```` ```python ```` block is one of:

- a script: run with this interpreter; each ``print(...)  # 13`` in it promises
  that this very call runs and prints the line ``13`` (each time it runs), and
  the promised lines come in that order (other output may come between);
- a test file, when its first line is ``# test_<name>.py ...``: run under pytest,
  where every test function in it must pass (none skipped or xfailed);
- not executed, when the line before its fence is ``<!-- not executed: REASON -->``
  (a program that runs forever or needs a second terminal): it must still compile,
  must say why, and there are only a few of them.

A script that mentions ``NATS_URL`` gets a real NATS server (the ``nats_server``
fixture) in that variable.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import subprocess
import sys
from typing import NamedTuple

import pytest
from markdown_it import MarkdownIt
from markdown_it.token import Token

ROOT = pathlib.Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
# README, the pages of the site, and the files the site includes ({include})
PAGES = [
    README,
    ROOT / "CHANGELOG.md",
    ROOT / "CONTRIBUTING.md",
    *sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.parts),
]

# What is a code block is decided as the site decides it: MyST parses pages with
# markdown-it (CommonMark), so a fence inside a list item or a quote, a ~~~ fence and
# a ```` fence are code blocks as much as a ``` fence at the margin is.
MARKDOWN = MarkdownIt("commonmark")
MARKER = re.compile(r"<!-- not executed: (?P<reason>.*?) -->")
PYTHON_ALIASES = {  # Pygments' names for Python (and Python sessions): shown as Python
    "py", "py2", "py3", "pyi", "python2", "python3", "sage", "pycon", "python-console",
    "ipython", "ipython2", "ipython3", "ipythonconsole",
}  # fmt: skip
CODE_DIRECTIVES = {"code-block", "code", "sourcecode", "code-cell"}
COLON_DIRECTIVE = re.compile(r"^[ \t>]*:{3,}[ \t]*\{(?P<name>[\w-]+)\}[ \t]*(?P<arg>\S*)", re.M)
MOST_NOT_EXECUTED = 3


class Example(NamedTuple):
    page: pathlib.Path
    number: int  # 1-based, within its page
    code: str
    skipped: str | None  # why it is not executed

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}#{self.number}"


def _language(info: str) -> str:
    return info.split()[0] if info.split() else ""


def _python_fences(text: str) -> list[tuple[Token, str | None]]:
    """The ```python fences of a page, each with the reason of the `not executed`
    marker (an HTML comment block) right above it, or None."""
    found = []
    before: Token | None = None
    for token in MARKDOWN.parse(text):
        if token.type == "fence" and _language(token.info) == "python":
            marker = None
            if before is not None and before.type == "html_block":
                marker = MARKER.fullmatch(before.content.strip())
            found.append((token, marker["reason"] if marker else None))
        before = token
    return found


def _python_blocks(text: str) -> list[tuple[str, str | None]]:
    """The Python examples of a page: (code, why it is not executed or None).

    A block is not executed when the line just above its fence is
    ``<!-- not executed: REASON -->``.
    """
    return [(token.content, reason) for token, reason in _python_fences(text)]


def _is_python(language: str) -> bool:
    return language.lower() in PYTHON_ALIASES or language.lower() == "python"


def _misspelled(text: str) -> list[str]:
    """Code blocks of a page that the site shows but the runner would not run, or that
    do not say what they are; and `not executed` markers that mark no Python block."""
    problems = []
    for token in MARKDOWN.parse(text):
        line = token.map[0] + 1 if token.map else 0
        if token.type == "code_block":
            problems.append(f"line {line}: an indented code block: fence it, with its language")
        if token.type != "fence":
            continue
        words = token.info.split()
        language = words[0] if words else ""
        if not language:
            problems.append(f"line {line}: a fence without a language (```python, ```sh, ```text)")
        elif language != "python" and _is_python(language):
            problems.append(f"line {line}: ```{language} is not run: spell it ```python")
        elif language.startswith("{"):
            directive = language.strip("{}")
            argument = words[1] if len(words) > 1 else ""
            if directive in CODE_DIRECTIVES and (not argument or _is_python(argument)):
                problems.append(f"line {line}: {language} {argument} is not run: use ```python")
            if directive == "eval-rst" and re.search(r"code-block::|code::|>>>", token.content):
                problems.append(f"line {line}: code inside {language} is not run: use ```python")
    for match in COLON_DIRECTIVE.finditer(text):
        if match["name"] in CODE_DIRECTIVES and (not match["arg"] or _is_python(match["arg"])):
            line = text.count("\n", 0, match.start()) + 1
            problems.append(f"line {line}: :::{{{match['name']}}} is not run: use ```python")
    marked = sum(1 for _, reason in _python_fences(text) if reason is not None)
    markers = [
        token
        for token in MARKDOWN.parse(text)
        if token.type == "html_block" and MARKER.search(token.content)
    ]
    if len(markers) != marked:
        problems.append("a `not executed` marker that is not right above a ```python fence")
    return problems


def _examples() -> list[Example]:
    found = []
    for page in PAGES:
        for number, (code, reason) in enumerate(_python_blocks(page.read_text()), start=1):
            found.append(Example(page, number, code, reason))
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


def test_every_page_of_the_site_is_read_for_examples() -> None:
    """Pages pulled into the site with {include} (CHANGELOG.md, CONTRIBUTING.md) too."""
    included = {
        (page.parent / target).resolve()
        for page in PAGES
        if page.is_relative_to(DOCS)
        for target in re.findall(r"^```\{include\} (\S+)", page.read_text(), flags=re.M)
    }
    assert included and included <= set(PAGES), sorted(map(str, included - set(PAGES)))


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_code_block_says_what_it_is_and_python_runs(page: pathlib.Path) -> None:
    assert not _misspelled(page.read_text())


def test_the_docs_have_examples_and_test_examples() -> None:
    in_docs = [e for e in EXAMPLES if e.page != README]
    assert len(in_docs) >= 20
    assert [e for e in PYTEST_FILES if e.page != README]


def test_examples_not_executed_are_few_compile_and_say_why() -> None:
    assert len(NOT_EXECUTED) <= MOST_NOT_EXECUTED, [e.id for e in NOT_EXECUTED]
    for example in NOT_EXECUTED:
        assert example.skipped and len(example.skipped) > 10, f"{example.id}: say why"
        compile(example.code, example.id, "exec")


def _run_test_file(code: str, folder: pathlib.Path, env: dict[str, str]) -> str | None:
    """Run `code` (``# test_<name>.py ...``) under pytest in `folder`; what is wrong, or
    None. Every test function in it must pass: none skipped, none an expected failure."""
    name = code.split()[1]  # "# test_x.py -- ..."
    (folder / name).write_text(code)
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA", name],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        return f"exit status {done.returncode}\n{done.stdout}{done.stderr}"
    tests = len(re.findall(r"^(?:async )?def test_", code, flags=re.M))
    passed = re.findall(r"^PASSED ", done.stdout, flags=re.M)
    if len(passed) != tests or re.search(r"\b(skipped|xfailed|xpassed|deselected)\b", done.stdout):
        return f"{tests} test(s) in it, {len(passed)} passed\n{done.stdout}"
    return None


@pytest.mark.parametrize("example", PYTEST_FILES, ids=[e.id for e in PYTEST_FILES])
def test_test_examples_pass_under_pytest(example: Example, tmp_path: pathlib.Path) -> None:
    problem = _run_test_file(example.code, tmp_path, _checkout_first())
    assert problem is None, problem


PROMISE = re.compile(r"print\(.*\)[ \t]*#[ \t]*(.+)$")
PROMISE_MODULE = """\
import builtins, io, json, os

LOG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "promises.jsonl")


def printer(number):
    def promised_print(*args, sep=" ", end="\\n", file=None, flush=False):
        text = io.StringIO()
        builtins.print(*args, sep=sep, end=end, file=text)
        builtins.print(text.getvalue(), end="", file=file, flush=flush)
        with open(LOG, "a", encoding="utf-8") as log:
            log.write(json.dumps([number, text.getvalue()]) + "\\n")

    return promised_print
"""


def _keeping_track(code: str) -> tuple[str, list[str]]:
    """`code` with each promising ``print(`` made to record what it printed, and the
    promises: the nth promising print calls ``_docs_promises.printer(n)`` instead (same
    line, same arguments), which prints as ``print`` does and logs the text."""
    lines = code.splitlines(keepends=True)
    promises = []
    for index, line in enumerate(lines):
        match = PROMISE.search(line)
        if match:
            call = f"__import__('_docs_promises').printer({len(promises)})("
            lines[index] = line[: match.start()] + call + line[match.start() + len("print(") :]
            promises.append(match[1].strip())
    return "".join(lines), promises


def _run_script(code: str, folder: pathlib.Path, env: dict[str, str]) -> str | None:
    """Run `code` as a script in `folder`; what is wrong with it, or None.

    Each ``print(...)  # 13`` promises that this very call prints the line ``13``
    every time it runs, and that it runs; the promised lines must also come in
    that order in the output (other output may come between).
    """
    tracked, promised = _keeping_track(code)
    if not promised:
        return "every example shows what it prints"
    (folder / "example.py").write_text(tracked)
    (folder / "_docs_promises.py").write_text(PROMISE_MODULE)
    done = subprocess.run(
        [sys.executable, "example.py"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=folder,
    )
    if done.returncode != 0:
        return f"exit status {done.returncode}\n{done.stderr}"
    log = folder / "promises.jsonl"
    printed: dict[int, list[str]] = {}
    for record in log.read_text().splitlines() if log.exists() else []:
        number, text = json.loads(record)
        printed.setdefault(number, []).append(text.strip())
    broken = [
        f"{promise!r} printed {printed.get(number, 'nothing')}"
        for number, promise in enumerate(promised)
        if not printed.get(number) or any(text != promise for text in printed[number])
    ]
    if broken:
        return f"promises broken: {broken}\n{done.stdout}"
    lines = iter(line.strip() for line in done.stdout.splitlines())
    missing = [p for p in promised if not any(line == p for line in lines)]
    if missing:
        return f"promised but not printed (in order): {missing}\n{done.stdout}"
    return None


@pytest.mark.parametrize("example", SCRIPTS, ids=[e.id for e in SCRIPTS])
def test_script_examples_run_and_print_what_they_promise(
    example: Example, tmp_path: pathlib.Path, request: pytest.FixtureRequest
) -> None:
    env = _checkout_first()
    if "NATS_URL" in example.code:  # a cluster example: a real server for it
        env["NATS_URL"] = request.getfixturevalue("nats_server").url
    problem = _run_script(example.code, tmp_path, env)
    assert problem is None, problem


# -- the runner's own holes -----------------------------------------------------


@pytest.mark.parametrize(
    "page",
    [
        "- a step:\n\n  ```python\n  print(1)  # 1\n  ```\n",  # a fence inside a list item
        "1. a step\n   ```python\n   print(1)  # 1\n   ```\n",
        "~~~python\nprint(1)  # 1\n~~~\n",
        "````python\nprint(1)  # 1\n````\n",
        "> quoted:\n>\n> ```python\n> print(1)  # 1\n> ```\n",
    ],
)
def test_every_spelling_of_a_python_fence_is_found(page: str) -> None:
    assert _python_blocks(page) == [("print(1)  # 1\n", None)]


@pytest.mark.parametrize(
    "block",
    [
        "```py\nprint(1)\n```",
        "```python3\nprint(1)\n```",
        "```Python\nprint(1)\n```",
        "```pycon\n>>> print(1)\n1\n```",
        "```ipython\nprint(1)\n```",
        "```\nprint(1)\n```",  # no language: nobody knows it is Python
        "```{code-block} python\nprint(1)\n```",
        ":::{code-block} python\nprint(1)\n:::",
        "```{eval-rst}\n.. code-block:: python\n\n   print(1)\n```",
        "<!-- not executed: a marker that marks no python block -->\n```sh\nls\n```",
    ],
)
def test_a_code_block_that_would_not_run_is_refused(block: str) -> None:
    assert _misspelled(f"# Page\n\nText.\n\n{block}\n")


@pytest.mark.parametrize(
    "code",
    [
        'print("21.0")\nprint(20.0)  # 21.0\n',  # the promised print printed something else
        'print("ready")\nif False:\n    print("ready")  # ready\n',  # it never ran
        "for n in (1, 2):\n    print(n)  # 2\n",  # it printed something else once
        "print(1, 2)  # 1 2\nprint('1 2')  # 1 2\nprint(3)  # 1 2\n",
    ],
)
def test_a_promise_is_kept_by_the_print_that_makes_it(code: str, tmp_path: pathlib.Path) -> None:
    assert _run_script(code, tmp_path, _checkout_first()) is not None


def test_a_kept_promise_passes(tmp_path: pathlib.Path) -> None:
    code = (
        "import sys\nprint('noise')\nprint(21.0)  # 21.0\n"
        "print(*'ab', sep='-', file=sys.stdout)  # a-b\n"
    )
    assert _run_script(code, tmp_path, _checkout_first()) is None


@pytest.mark.parametrize(
    "code",
    [
        "# test_s.py\nimport pytest\ndef test_a(): pass\ndef test_b(): pytest.skip('later')\n",
        "# test_x.py\nimport pytest\ndef test_a(): pass\n@pytest.mark.xfail\ndef test_b(): 1 / 0\n",
    ],
)
def test_a_test_example_passes_only_if_every_test_in_it_passed(
    code: str, tmp_path: pathlib.Path
) -> None:
    assert _run_test_file(code, tmp_path, _checkout_first()) is not None


def test_a_test_example_whose_tests_all_pass_passes(tmp_path: pathlib.Path) -> None:
    code = "# test_ok.py\nasync def helper(): pass\ndef test_a(): pass\ndef test_b(): pass\n"
    assert _run_test_file(code, tmp_path, _checkout_first()) is None

"""The documentation stands on its own: the API reference names every public name
(and only what it means to show), links between pages resolve (as MyST anchors
them), nothing shown points outside the repository, the names docstrings put in
backticks exist, and the tables that restate the code (layers, design rules)
agree with it.

(The examples are run by test_docs_examples.py; `make docs` builds the site with
warnings as errors.)
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import pathlib
import pkgutil
import re
import tomllib

import pytest
from markdown_it import MarkdownIt
from test_docs_examples import DOCS, PAGES, README, ROOT

API = "\n".join(p.read_text() for p in sorted((DOCS / "api").glob("*.rst")))

MARKDOWN = MarkdownIt("commonmark")  # what MyST parses with (GitHub: the same CommonMark)
LABEL = re.compile(r"^\((.+)\)=$", re.M)
ANCHOR_LEVELS = int(
    re.findall(r"^myst_heading_anchors = (\d+)", (DOCS / "conf.py").read_text(), re.M)[0]
)
"""Headings up to this level get an anchor (conf.py's ``myst_heading_anchors``)."""


@pytest.mark.parametrize("module", ["runtime", "runtime.testing", "runtime.wire", "actors"])
def test_the_api_reference_documents_every_public_name(module: str) -> None:
    names = importlib.import_module(module).__all__
    documented = set(re.findall(r"^\.\. (?:auto\w+|py:\w+):: ([\w.]+)", API, flags=re.M))
    for listing in re.findall(
        rf"^\.\. automodule:: {re.escape(module)}\n\s+:members: (.+)$", API, flags=re.M
    ):
        documented |= {f"{module}.{name.strip()}" for name in listing.split(",")}
    missing = [
        name
        for name in names
        if f"{module}.{name}" not in documented and not importlib.util.find_spec(f"{module}.{name}")
    ]
    assert not missing, f"not in docs/api/: {missing}"


def _slug(heading: str) -> str:
    """The anchor GitHub and MyST give a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(page: pathlib.Path) -> set[str]:
    """The anchors MyST gives the page: its headings up to `ANCHOR_LEVELS`, its labels."""
    text = page.read_text()
    tokens = MARKDOWN.parse(text)
    headings = [
        tokens[i + 1].content
        for i, token in enumerate(tokens)
        if token.type == "heading_open" and int(token.tag[1:]) <= ANCHOR_LEVELS
    ]
    return {_slug(h) for h in headings} | set(LABEL.findall(text))


def _links(page: pathlib.Path) -> list[str]:
    """The targets of the page's links and images that are not URLs (code is no link)."""
    found = []
    for token in MARKDOWN.parse(page.read_text()):
        for child in token.children or []:
            target = child.attrGet("href") if child.type == "link_open" else child.attrGet("src")
            if isinstance(target, str) and not re.match(r"[a-z]+:", target):
                found.append(target)
    return found


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_links_between_pages_resolve(page: pathlib.Path) -> None:
    for target in _links(page):
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        assert file.exists(), f"{page.name}: {target} does not exist"
        assert file.is_relative_to(ROOT), f"{page.name}: {target} is outside the repository"
        if anchor and file.suffix == ".md":
            assert anchor in _anchors(file), f"{page.name}: no heading {anchor!r} in {path}"


OUTSIDE = ("DESIGN.md", "shared design", "../shared", "/work/")
"""What points at documents that live outside the repository."""


def test_the_readme_points_only_inside_the_repository() -> None:
    text = README.read_text()
    for outside in ("../", *OUTSIDE):
        assert outside not in text


def _linked_files() -> set[pathlib.Path]:
    """The Markdown files of the repository that the pages link to (e.g. the benchmark report)."""
    found = set()
    for page in PAGES:
        for target in _links(page):
            path = (page.parent / target.partition("#")[0]).resolve()
            if path.suffix == ".md" and path.is_relative_to(ROOT) and path.exists():
                found.add(path)
    return found


def _documented_sources() -> list[pathlib.Path]:
    """The modules whose docstrings the API reference renders."""
    return sorted([*(ROOT / "runtime").glob("*.py"), *(ROOT / "actors").glob("*.py")])


def test_nothing_the_docs_show_points_outside_the_repository() -> None:
    """Not the pages, the files they link to, nor the docstrings of the API reference."""
    shown = {*PAGES, *_linked_files(), *_documented_sources()}
    found = [
        f"{path.relative_to(ROOT)}: {outside}"
        for path in sorted(shown)
        for outside in OUTSIDE
        if outside in path.read_text()
    ]
    assert not found


def test_the_readme_keeps_set_up_quickstart_tables_and_links_into_the_docs() -> None:
    text = README.read_text()
    assert "make demo" in text and "make test" in text
    for heading in ("## Quickstart", "## How it compares", "## Benchmarks", "## Documentation"):
        assert heading in text
    assert "docs/dashboard.png" in text
    linked = {t.partition("#")[0] for t in _links(README)}
    for page in ("docs/tutorial.md", "docs/concepts/index.md", "docs/architecture.md"):
        assert page in linked
    assert len(text.splitlines()) < 250


def test_the_concepts_document_idle_actors_and_hibernation() -> None:
    actors = (DOCS / "concepts" / "actors.md").read_text()
    section = actors.split("### Idle actors and hibernation", 1)[1].split("\n### ", 1)[0]
    assert "hibernate_after" in section and "TODO" not in section


def test_the_design_rules_the_code_cites_are_numbered_on_the_architecture_page() -> None:
    """Docstrings cite "rule 5", "design rule 5": the architecture page numbers them."""
    text = (DOCS / "architecture.md").read_text()
    assert "## The design rules" in text
    section = text.split("## The design rules", 1)[1].split("\n## ", 1)[0]
    numbered = {int(n) for n in re.findall(r"^(\d+)\. \*\*", section, flags=re.M)}
    cited = {
        int(n)
        for path in _documented_sources()
        for match in re.finditer(r"\brules? (\d+)(?: and (\d+))?\b", path.read_text(), re.I)
        for n in match.groups()
        if n
    }
    assert cited and cited <= numbered, f"cited {sorted(cited)}, numbered {sorted(numbered)}"


@pytest.mark.parametrize("page", ["CONTRIBUTING.md", "docs/architecture.md"])
def test_the_layers_tables_are_the_import_contract(page: str) -> None:
    """The layers as pyproject.toml's import-linter contract has them, top first."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contract = next(c for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers")
    layers = [
        {name.strip().removeprefix("runtime.") for name in layer.split(":")}
        for layer in contract["layers"]
    ]
    text = (ROOT / page).read_text()
    table = text.split("\n| layer | modules |", 1)[1].split("\n\n", 1)[0]
    rows = [
        {name.rstrip("/") for name in re.findall(r"`([\w/]+)`", row.split("|")[2])}
        for row in table.splitlines()[2:]  # after the header and its |---|
    ]
    assert rows == layers


def test_no_member_list_in_the_api_reference_is_overridden_by_the_default() -> None:
    """With ``autodoc_default_options = {"members": True}``, autodoc replaces the
    ``:members: a, b`` list of an autoclass with its default (every member): the
    list must be spelled as ``:no-members:`` and one directive per member."""
    namespace: dict[str, object] = {"__file__": str(DOCS / "conf.py")}
    exec(compile((DOCS / "conf.py").read_text(), str(DOCS / "conf.py"), "exec"), namespace)
    defaults = namespace.get("autodoc_default_options") or {}
    assert isinstance(defaults, dict)
    if isinstance(defaults.get("members"), str):
        return  # a string default is extended by a directive's list, not replaced
    listed = re.findall(
        r"^\.\. auto(?:class|exception|module):: ([\w.]+).*\n(?:   .*\n)*?   :members: \S",
        API,
        re.M,
    )
    assert not listed, f"their :members: lists are ignored: {listed}"


def test_only_the_headings_myst_anchors_are_link_targets(tmp_path: pathlib.Path) -> None:
    """conf.py's ``myst_heading_anchors = 3``: a link to a level-4 heading fails the
    build, so the link test must not accept it; nor a '#' line inside a code block."""
    page = tmp_path / "page.md"
    page.write_text("# Top\n\n### Third\n\n#### Fourth\n\n```sh\n# a comment\n```\n")
    assert _anchors(page) == {"top", "third"}


# A `Name` or `Name.attr` in single backticks in a docstring becomes a link when
# it names a documented object; when it names nothing, Sphinx shows it as code and
# `make docs` passes (only nitpicky mode warns, and it warns on every parameter
# name too). So the names that look like classes must resolve somewhere.
ROLE = re.compile(r"(?<![`\w:])`([A-Z]\w*(?:\.\w+)*)(?:\(\))?`(?![`\w])")
NAMESPACES = [
    "runtime",
    "actors",
    *(f"runtime.{m.name}" for m in pkgutil.iter_modules([str(ROOT / "runtime")])),
    *(f"runtime.cluster.{m.name}" for m in pkgutil.iter_modules([str(ROOT / "runtime/cluster")])),
    *(f"actors.{m.name}" for m in pkgutil.iter_modules([str(ROOT / "actors")])),
    "trio",
    "trio.lowlevel",
    "builtins",
    "concurrent.futures",
    "weakref",
    "queue",
    "threading",
    "logging",
]


def _documented_attributes() -> set[str]:
    """``Class.attr`` for each ``.. attribute::`` written by hand under an autoclass
    (instance attributes, which the class itself does not have)."""
    found = set()
    for cls, body in re.findall(r"^\.\. autoclass:: ([\w.]+).*\n((?:(?:   .*)?\n)*)", API, re.M):
        for attribute in re.findall(r"^   \.\. attribute:: (\w+)", body, flags=re.M):
            found.add(f"{cls.rpartition('.')[2]}.{attribute}")
    return found


def _resolves(name: str) -> bool:
    if name in _documented_attributes():
        return True
    first, *rest = name.split(".")
    for module in NAMESPACES:
        if module.endswith("__main__"):
            continue
        found = getattr(importlib.import_module(module), first, None)
        for part in rest:
            found = getattr(found, part, None)
        if found is not None:
            return True
    return False


def _import(dotted: str) -> object:
    """The object at a dotted path: the longest importable module, then attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for part in parts[cut:]:
            found = getattr(found, part)
        return found
    raise ImportError(dotted)


def _rendered_docstrings() -> dict[str, str]:
    """The docstrings the API reference shows: every object its directives name, and
    the members of the classes among them."""
    found: dict[str, str] = {}
    for dotted in re.findall(r"^\s*\.\. auto\w+:: ([\w.]+)", API, flags=re.M):
        obj = _import(dotted)
        found[dotted] = inspect.getdoc(obj) or ""
        if inspect.isclass(obj):
            for key, value in vars(obj).items():
                if isinstance(value, property):
                    value = value.fget
                if isinstance(value, staticmethod | classmethod):
                    value = value.__func__
                if callable(value) and isinstance(getattr(value, "__doc__", None), str):
                    found[f"{dotted}.{key}"] = inspect.cleandoc(value.__doc__)
    return found


def test_a_name_in_backticks_that_names_nothing_is_caught() -> None:
    assert _resolves("Bridge.start_now") and _resolves("Terminated") and _resolves("TimeoutError")
    assert _resolves("System.bus")  # an instance attribute, written in docs/api/runtime.rst
    assert not _resolves("NoSuchThing") and not _resolves("Bridge.no_such_method")


def test_the_names_the_api_reference_links_to_exist() -> None:
    shown = _rendered_docstrings()
    assert len(shown) > 100
    missing = {
        f"{where}: `{name}`"
        for where, doc in shown.items()
        for name in ROLE.findall(doc)
        if not _resolves(name)
    }
    assert not missing


def test_actors_is_forbidden_every_private_module_of_runtime() -> None:
    """DESIGN: `actors/` imports only `runtime`'s public API.  The import-linter
    contract that enforces it lists the private modules by name, so a module added
    to `runtime` must be added there too: every module but the public ones
    (`runtime`, `runtime.testing`, `runtime.wire`) is listed."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contract = next(
        c
        for c in config["tool"]["importlinter"]["contracts"]
        if c["type"] == "forbidden" and c["source_modules"] == ["actors"]
    )
    public = {"runtime.testing", "runtime.wire"}
    package = ROOT / "runtime"
    modules = {
        "runtime." + (path.stem if path.is_file() else path.name)
        for path in package.iterdir()
        if (path.suffix == ".py" and path.stem != "__init__")
        or (path.is_dir() and (path / "__init__.py").exists())
    }
    assert modules - public == set(contract["forbidden_modules"])

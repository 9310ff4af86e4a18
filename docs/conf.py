"""Sphinx configuration for Troupe's documentation (``make docs`` builds it into docs/_build).

Why Sphinx: it is what trio's own docs use, autodoc reads the reStructuredText
docstrings the code already has, and MyST keeps the pages in Markdown that
GitHub renders and the test suite can execute (tests/test_docs_examples.py).
"""

from __future__ import annotations

import pathlib
import sys
import tomllib

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # document the checkout, not whatever is installed

project = "Troupe"
author = "The Troupe developers"
copyright = "2025, the Troupe developers"  # noqa: A001 (Sphinx's name)
# The version of this checkout (an installed copy elsewhere may be older).
release = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.viewcode",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# Docstrings use `single backticks` for names (trio's convention): resolve them as Python objects.
default_role = "py:obj"

myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
python_maximum_signature_line_length = 88  # one parameter a line beyond it
autodoc_typehints_format = "short"
autodoc_default_options = {"members": True, "undoc-members": False, "show-inheritance": True}

html_theme = "furo"
html_title = f"Troupe {release}"

"""Sphinx configuration for trionet's documentation.

Build: ``python -m sphinx -W --keep-going -b html docs docs/_build/html``
(tests/test_docs.py does exactly this, warnings as errors).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # document this checkout, installed or not

import trionet  # noqa: E402

project = "trionet"
author = "the trionet authors"
copyright = "2026, the trionet authors"
version = release = trionet.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinxcontrib_trio",  # async signatures: "await net.serve(...)", "async with"
]

# Docstrings are Google style (Args / Returns / Raises) plus trio's own
# "Resource handling" and "Error handling" sections.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_custom_sections = ["Resource handling", "Error handling"]
napoleon_use_rtype = False

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
autodoc_default_options = {"members": True, "show-inheritance": False}

default_role = "py:obj"
primary_domain = "py"
highlight_language = "python3"
pygments_style = "sphinx"

exclude_patterns = ["_build", "snippets/README.md"]
html_theme = "alabaster"
html_theme_options = {
    "description": "ATS's Net module and Netty's connect path, on trio",
    "fixed_sidebar": True,
}
html_static_path: list[str] = []

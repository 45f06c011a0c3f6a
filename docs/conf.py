"""Sphinx configuration for trionet's documentation.

Build: ``python -m sphinx -W --keep-going -b html docs docs/_build/html``
(tests/test_docs.py does exactly this, warnings as errors).
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # document this checkout, installed or not

import trionet  # noqa: E402

project = "trionet"
author = "the trionet authors"
copyright = "2026, the trionet authors"
version = release = trionet.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.intersphinx",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
    "sphinxcontrib_trio",  # async signatures: "await net.serve(...)", "async with"
    "myst_parser",  # CHANGELOG.md, included by changelog.rst
]

# Every reference must resolve (trio's docs build the same way); the build
# runs with -W, so an unresolved one fails it.
nitpicky = True

# Links to Python's and trio's documentation. The inventories are files in
# docs/_inv/, not fetched at build time (the build machines have no network
# but package registries):
# - python3.11.inv is CPython 3.11's own objects.inv, as Debian's
#   python3.11-doc package ships it (/usr/share/doc/python3.11/html/).
# - trio.inv was generated here, not downloaded: Sphinx's html builder run over
#   trio's own documentation sources (docs/source of python-trio/trio at git
#   60d0c2f8, 0.34.0+dev) with a minimal configuration (autodoc, napoleon,
#   sphinxcontrib_trio and trio's local_customization; history.rst left out),
#   autodoc reading trio 0.35 as installed. Its entries are the pages and
#   anchors trio.readthedocs.io serves. Regenerate it the same way when trio's
#   reference pages move.
intersphinx_mapping = {
    "python": ("https://docs.python.org/3.11/", "_inv/python3.11.inv"),
    "trio": ("https://trio.readthedocs.io/en/stable/", "_inv/trio.inv"),
}

nitpick_ignore = [
    # Documented nowhere to link to: Python's docs have no entry for the enum
    # class (only for its AF_* members), and prometheus-client's docs publish
    # no Sphinx inventory.
    ("py:class", "socket.AddressFamily"),
    ("py:class", "prometheus_client.metrics_core.Metric"),
    # A structural type (anything with a ``stopping`` property: a Server, a
    # WorkerSupervisor), described in Readiness.watch's docstring.
    ("py:class", "trionet._core._stats_page.Accepting"),
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

exclude_patterns = ["_build", "_inv", "snippets/README.md"]
myst_heading_anchors = 2

# Read the Docs' theme, as trio's documentation uses; styles.css widens the
# content column so a 100-column code line (ruff's limit here) shows whole.
html_theme = "sphinx_rtd_theme"
html_theme_options = {"navigation_depth": 3}
html_static_path = ["_static"]
html_css_files = ["styles.css"]


# Connection's stream methods inherit their docstrings from trio.abc, where
# names are written relative to trio.abc (``SendStream.send_all``). Resolve
# those against trio's inventory under their full name.
_TRIO_ABC_NAMES = {"AsyncResource", "SendStream", "ReceiveStream", "Stream", "HalfCloseableStream"}


def _resolve_trio_abc_names(app: Any, env: Any, node: Any, contnode: Any) -> Any:
    from sphinx.ext import intersphinx

    target = node.get("reftarget", "")
    if node.get("refdomain") != "py" or target.split(".")[0] not in _TRIO_ABC_NAMES:
        return None
    node = node.deepcopy()
    node["reftarget"] = f"trio.abc.{target}"
    return intersphinx.missing_reference(app, env, node, contnode)


# Classes users are given, never construct: reference.rst and iocore.rst show
# them as ``Name()`` (trio's convention), and the constructor's parameters,
# which autodoc_typehints = "description" would list, are left out too.
PRIVATE_CONSTRUCTORS = {
    "trionet.Connection",
    "trionet.ConnectionListener",
    "trionet.Listener",
    "trionet.Server",
    "trionet.WorkerContext",
    "trionet.iocore.ConnectAction",
    "trionet.iocore.Event",
    "trionet.iocore.IOBufferReader",
    "trionet.iocore.NetAcceptAction",
    "trionet.iocore.NetVConnection",
    "trionet.iocore.UnixNetProcessor",
    "trionet.iocore.VIO",
}


def _drop_private_constructor_parameters(
    app: Any, domain: str, objtype: str, contentnode: Any
) -> None:
    from docutils import nodes

    signature = contentnode.parent[0]
    fullname = f"{signature.get('module', '')}.{signature.get('fullname', '')}"
    if domain != "py" or objtype != "class" or fullname not in PRIVATE_CONSTRUCTORS:
        return
    for field_list in [n for n in contentnode.children if isinstance(n, nodes.field_list)]:
        for field in list(field_list.children):
            # Still raw "param x" / "type x" fields here; grouped later.
            if field[0].astext().split(" ", 1)[0] in ("param", "type"):
                field_list.remove(field)
        if not field_list.children:
            contentnode.remove(field_list)


# A dataclass field with a default_factory shows as "socket=<factory>", which is
# not Python: Sphinx then falls back to a naive parse of the whole signature
# that splits other defaults at ":" (IPv6Network('::1/128') became a broken
# cross-reference). Show the factory as a call instead: socket=SocketOptions().
def _factories_as_calls(
    app: Any, what: str, name: str, obj: Any, options: Any, signature: str | None, ret: str | None
) -> tuple[str | None, str | None]:
    if signature is not None and what == "class" and dataclasses.is_dataclass(obj):
        for field in dataclasses.fields(obj):
            factory = field.default_factory
            if factory is not dataclasses.MISSING:
                call = f"{getattr(factory, '__name__', 'factory')}()"
                signature = signature.replace(f"{field.name}=<factory>", f"{field.name}={call}")
    return signature, ret


# Connection's socket end is a private base class (trionet._core._wire.Wire):
# the reference shows only the bases a user can name.
def _public_bases(app: Any, name: str, obj: Any, options: Any, bases: list[Any]) -> None:
    import trionet

    bases[:] = [
        b
        for b in bases
        if not b.__module__.startswith("trionet._") or getattr(trionet, b.__name__, None) is b
    ]


def setup(app: Any) -> None:
    app.connect("missing-reference", _resolve_trio_abc_names)
    app.connect("autodoc-process-bases", _public_bases)
    app.connect("autodoc-process-signature", _factories_as_calls)
    # After sphinx.ext.autodoc.typehints has added the parameters (priority 500).
    app.connect("object-description-transform", _drop_private_constructor_parameters, 900)

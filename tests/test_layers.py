"""The package's layering, enforced (docs/design.rst, "Module map").

* Every import inside ``trionet/`` -- at module level, under ``TYPE_CHECKING``
  or inside a function -- points to the same package or to a lower layer:
  ``_base`` < ``_core`` < ``_inbound`` | ``_outbound`` < ``_processor`` <
  ``_apps`` | ``iocore``. Layers of one rank do not import each other. Only
  ``trionet/__init__.py`` (re-exports) and ``trionet/__main__.py`` import
  from every layer; ``trionet/examples`` imports the public API only
  (``trionet`` and ``trionet.iocore``), as a user's program would.
* Reads and writes of another object's private attribute whose name another
  module defines (``conn._x`` where ``_x`` is a method or field of a class in
  another module) stay at most :data:`MAX_CROSS_PRIVATE`: a seam is declared
  (a ``typing.Protocol`` naming it, in the module that uses it) or public.

Both checks are tested on a small fabricated package first, so that a check
that could never fail would show.
"""

from __future__ import annotations

import ast
import collections
from pathlib import Path

import trionet

from .running import ROOT

# The package as imported: the checkout's, or the installed wheel's when .ci/run
# tests the wheel (its copy of the tests has no trionet/ beside it).
PACKAGE = Path(trionet.__file__).resolve().parent

RANK: dict[str, int] = {
    "_base": 0,
    "_core": 1,
    "_inbound": 2,
    "_outbound": 2,
    "_processor": 3,
    "_apps": 4,
    "iocore": 4,
    "examples": 5,
}
ENTRY_POINTS = {"__init__", "__main__"}
# Units that may import only the public API, and nothing private.
PUBLIC_ONLY = {"examples": {"trionet", "trionet.iocore"}}
MAX_CROSS_PRIVATE = 10


def _module_name(root: Path, path: Path) -> list[str]:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return parts[:-1] if parts[-1] == "__init__" else parts


def _imported_modules(root: Path, path: Path) -> list[tuple[int, list[str]]]:
    """(line, dotted module as parts) for every import of ``root``'s package in ``path``."""
    here = _module_name(root, path)
    package = here if path.name == "__init__.py" else here[:-1]
    found: list[tuple[int, list[str]]] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name.split(".")) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            # from .x (level 1) is this package; each further dot one up.
            base = package[: len(package) - (node.level - 1)] if node.level else []
            target = base + (node.module.split(".") if node.module else [])
            if node.module is None:  # from . import x: x is a module
                found += [(node.lineno, [*target, a.name]) for a in node.names]
            else:
                found.append((node.lineno, target))
    return [(line, t) for line, t in found if t[:1] == [root.name]]


def _unit(parts: list[str]) -> str:
    """The layer unit of a module: the first component under the package."""
    return parts[1] if len(parts) > 1 else "__init__"


def upward_imports(root: Path) -> list[str]:
    """Every import in ``root`` (a package directory) that breaks the layering."""
    bad = []
    for path in sorted(root.rglob("*.py")):
        source = _unit(_module_name(root, path))
        if path.parent == root and path.stem in ENTRY_POINTS:
            continue
        for line, target in _imported_modules(root, path):
            dest = _unit(target)
            if dest == source:
                continue
            if source in PUBLIC_ONLY:
                ok = ".".join(target) in PUBLIC_ONLY[source]
            else:
                ok = dest in RANK and source in RANK and RANK[dest] < RANK[source]
            if not ok:
                where = path.relative_to(root.parent)
                bad.append(f"{where}:{line}: {source} imports {'.'.join(target)} ({dest})")
    return bad


def cross_private_accesses(root: Path) -> list[str]:
    """``x._name`` (``x`` not self/cls) where ``_name`` is defined in another module:
    as a function or class, as ``self._name``, or as a ``__slots__`` string."""
    trees = {p: ast.parse(p.read_text()) for p in sorted(root.rglob("*.py"))}
    defined: dict[str, set[Path]] = collections.defaultdict(set)
    for path, tree in trees.items():
        for node in ast.walk(tree):
            name = None
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                name = node.name
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                if node.value.id in ("self", "cls"):
                    name = node.attr
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                name = node.value if node.value.isidentifier() else None
            if name and name.startswith("_"):
                defined[name].add(path)
    found = []
    for path, tree in trees.items():
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Attribute) and node.attr.startswith("_")):
                continue
            if node.attr.startswith("__"):
                continue
            if isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"):
                continue
            owners = defined.get(node.attr, set())
            if owners and path not in owners:
                where = path.relative_to(root.parent)
                found.append(f"{where}:{node.lineno}: {ast.unparse(node)}")
    return found


# ------------------------------------------------------- the checks, checked
def _fabricate(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "trionet"
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_the_import_check_sees_upward_and_sideways_imports(tmp_path: Path) -> None:
    root = _fabricate(
        tmp_path,
        {
            "__init__.py": "from ._apps._cli import main\n",
            "_base/__init__.py": "",
            "_base/_errors.py": "from .._core._stats import Counters\n",  # upward
            "_core/__init__.py": "",
            "_core/_stats.py": "from .._base._errors import X\nfrom . import _table\n",
            "_inbound/__init__.py": "",
            "_inbound/_server.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from .._outbound._connect import connect\n"  # sideways
            ),
            "_apps/__init__.py": "",
            "_apps/_cli.py": "def f():\n    import trionet.iocore._x\n    from .. import y\n",
            "examples/__init__.py": "",
            "examples/echo.py": (
                "import trionet\nfrom trionet import iocore\nfrom trionet._core import _stats\n"
            ),
        },
    )
    assert upward_imports(root) == [
        "trionet/_apps/_cli.py:2: _apps imports trionet.iocore._x (iocore)",
        "trionet/_apps/_cli.py:3: _apps imports trionet.y (y)",
        "trionet/_base/_errors.py:1: _base imports trionet._core._stats (_core)",
        "trionet/_inbound/_server.py:3: _inbound imports trionet._outbound._connect (_outbound)",
        "trionet/examples/echo.py:3: examples imports trionet._core (_core)",
    ]


def test_the_private_access_check_sees_undeclared_reaches(tmp_path: Path) -> None:
    root = _fabricate(
        tmp_path,
        {
            "_a.py": (
                "class A:\n    def __init__(self):\n        self._x = 1\n    def _m(self): ...\n"
            ),
            "_b.py": "def f(a):\n    a._m()\n    return a._x, a._own\n",
            "_c.py": (
                "from typing import Protocol\n"
                "class P(Protocol):\n    def _m(self): ...\n"
                "def g(p):\n    p._m()\n    self._x\n"
            ),
        },
    )
    assert cross_private_accesses(root) == ["trionet/_b.py:2: a._m", "trionet/_b.py:3: a._x"]


# ------------------------------------------------------------- trionet itself
def test_every_module_has_a_layer() -> None:
    units = {_unit(_module_name(PACKAGE, p)) for p in PACKAGE.rglob("*.py")}
    assert units - ENTRY_POINTS == set(RANK)


def test_imports_point_down_the_layers() -> None:
    bad = upward_imports(PACKAGE)
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_few_reaches_into_another_modules_private_names() -> None:
    found = cross_private_accesses(PACKAGE)
    assert len(found) <= MAX_CROSS_PRIVATE, "\n".join(found)


def test_the_module_map_names_every_module() -> None:
    text = (ROOT / "docs" / "design.rst").read_text()
    start = text.index("Layers and module map\n---")
    end = text.index("\n---", start + 30)  # the next section's underline
    section = text[start:end]
    modules = [p for p in sorted(PACKAGE.rglob("*.py")) if p.stem not in ENTRY_POINTS]
    missing = [str(p.relative_to(PACKAGE)) for p in modules if f"{p.name}``" not in section]
    assert not missing, f"add to the module map in docs/design.rst: {missing}"

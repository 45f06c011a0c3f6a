"""The package as users get it: the version written once, the license text and
the examples in the wheel, the metadata PyPI shows, and -- when .ci/run runs
this suite against the installed wheel -- trionet imported from there, not
from a checkout."""

from __future__ import annotations

import email
import importlib.metadata
import os
import subprocess
import sys
import sysconfig
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest

import trionet

from .running import ROOT, needs_source_tree

# Set by .ci/run for the run against the installed wheel.
INSTALLED_RUN = os.environ.get("TRIONET_TEST_INSTALLED") == "1"
EXAMPLES = ["ats_echo_server", "ats_tunnel", "echo_client", "echo_server", "tcp_proxy"]


def test_trionet_comes_from_where_this_run_says() -> None:
    """In the wheel run the package is site-packages' (the copy of the
    checkout it runs from has no trionet/); otherwise it is the checkout's
    (an editable install)."""
    imported = Path(trionet.__file__).resolve()
    if INSTALLED_RUN:
        assert imported.is_relative_to(Path(sysconfig.get_paths()["purelib"]).resolve())
        assert not (ROOT / "trionet").exists()
    else:
        assert imported == ROOT / "trionet" / "__init__.py"


def test_version_is_written_once() -> None:
    """pyproject.toml reads the version from trionet.__version__ (hatch's
    dynamic version): the installed metadata says the same."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert "version" not in project and project["dynamic"] == ["version"]
    assert importlib.metadata.version("trionet") == trionet.__version__


def test_installed_distribution_has_the_license() -> None:
    """The license text is in the installed distribution (dist-info/licenses)."""
    dist = importlib.metadata.distribution("trionet")
    assert dist.metadata["License-Expression"] == "Apache-2.0"
    [license_file] = [f for f in dist.files or () if f.name == "LICENSE"]
    text = license_file.read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert text == (ROOT / "LICENSE").read_text()


@pytest.mark.skipif(not INSTALLED_RUN, reason="an editable install lists no package files")
def test_installed_wheel_has_the_examples_and_the_type_marker() -> None:
    files = {str(f) for f in importlib.metadata.distribution("trionet").files or ()}
    for name in EXAMPLES:
        assert f"trionet/examples/{name}.py" in files
    assert "trionet/py.typed" in files
    assert "trionet/iocore/__init__.py" in files


@pytest.mark.slow
@needs_source_tree
def test_sdist_and_wheel_contents(tmp_path: Path) -> None:
    """Build both as a release would (the wheel from the sdist; hatchling
    from the test extra, so no download) and look inside."""
    subprocess.run(
        [sys.executable, "-m", "build", "-q", "--no-isolation", "--outdir", tmp_path, ROOT],
        check=True,
        capture_output=True,
        timeout=300,
    )
    [wheel] = tmp_path.glob("trionet-*.whl")
    [sdist] = tmp_path.glob("trionet-*.tar.gz")
    version = trionet.__version__
    assert wheel.name == f"trionet-{version}-py3-none-any.whl"

    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        metadata = email.message_from_bytes(whl.read(f"trionet-{version}.dist-info/METADATA"))
        license_text = whl.read(f"trionet-{version}.dist-info/licenses/LICENSE")
    assert license_text == (ROOT / "LICENSE").read_bytes()
    sources = {p.relative_to(ROOT).as_posix() for p in (ROOT / "trionet").rglob("*.py")}
    assert sources <= names  # every module, the examples included
    assert "trionet/py.typed" in names
    assert not any(n.startswith(("tests/", "docs/", "bench/")) for n in names)

    assert metadata["Version"] == version
    assert metadata["License-Expression"] == "Apache-2.0"
    classifiers = metadata.get_all("Classifier") or []
    for classifier in (
        "Framework :: Trio",
        "Typing :: Typed",
        "Operating System :: POSIX :: Linux",
        "Programming Language :: Python :: 3.11",
        "Programming Language :: Python :: 3.13",
    ):
        assert classifier in classifiers
    urls = dict(u.split(", ", 1) for u in metadata.get_all("Project-URL") or [])
    assert urls["Documentation"] == "https://trionet.readthedocs.io/"
    assert urls["Changelog"] == "https://trionet.readthedocs.io/en/latest/changelog.html"
    assert urls["Repository"] == "https://github.com/trionet/trionet"
    # The README is the PyPI page.
    assert metadata["Description-Content-Type"] == "text/markdown"
    assert metadata.get_payload() == (ROOT / "README.md").read_text()

    with tarfile.open(sdist) as tar:
        members = {m.split("/", 1)[1] for m in tar.getnames() if "/" in m}
    for path in ("LICENSE", "CHANGELOG.md", "README.md", "pyproject.toml", "docs/conf.py"):
        assert path in members, path
    assert "tests/test_package.py" in members
    assert "trionet/examples/echo_server.py" in members

"""The package version (``trionet.__version__``; the CLI prints it)."""

__version__ = "0.1.0"

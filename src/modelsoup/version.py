"""The installed package's version, from its metadata (``pyproject.toml``), so every
floor can record it without importing the package's ``__init__`` (which imports them all)."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def package_version() -> str:
    """modelsoup's installed version; ``0+unknown`` when run from a tree never installed."""
    try:
        return version("modelsoup")
    except PackageNotFoundError:
        return "0+unknown"

"""The installed vqtok's version, read from the package metadata (light: no torch)."""

from __future__ import annotations

from importlib import metadata


def vqtok_version() -> str:
    """The installed vqtok version, or ``"unknown"`` when run from an uninstalled tree."""
    try:
        return metadata.version("vqtok")
    except metadata.PackageNotFoundError:
        return "unknown"

"""Optional extras: import a module that only an extra of ``pyproject.toml`` installs, or
say in one line which ``pip install`` brings it."""

from __future__ import annotations

import importlib
from types import ModuleType


class MissingExtraError(ImportError):
    """A feature needs an optional extra that is not installed; the message names the
    ``pip install vqtok[extra]`` command that installs it."""


def require_extra(extra: str, what: str, *modules: str) -> list[ModuleType]:
    """Import ``modules`` (all from the ``extra`` extra), or raise
    :class:`MissingExtraError`: "``what`` needs the ``extra`` extra: pip install
    vqtok[``extra``] (``module`` is missing)"."""
    found = []
    for name in modules:
        try:
            found.append(importlib.import_module(name))
        except ImportError as err:
            raise MissingExtraError(f"{what} needs the {extra} extra: pip install "
                                    f"vqtok[{extra}] ({name} is missing)") from err
    return found

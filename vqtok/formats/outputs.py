"""What a command may write: never over one of its inputs, never over an existing file or
folder unless asked (``--overwrite``), never outside the folder it was given.

Every check runs before the command writes anything, so a refusal leaves the disk as it
was. The writes themselves are atomic (:mod:`vqtok.formats.atomic`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

__all__ = ["check_new_output", "check_outputs", "check_plain_name", "is_within"]


def _same(a: Path, b: Path) -> bool:
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def check_new_output(path: str | os.PathLike[str], *, inputs: Iterable[Path] = (),
                     overwrite: bool = False, folder: bool = False) -> Path:
    """Refuse ``path`` as an output (a ValueError naming it) when it is one of ``inputs``,
    when it exists and ``overwrite`` is false, or when it exists as the wrong kind (a
    folder where a file is written, or the other way round)."""
    path = Path(path)
    if any(_same(path, Path(given)) for given in inputs):
        raise ValueError(f"{path} is also an input of this command; refusing to write over "
                         f"it (choose another output)")
    if path.is_symlink() or path.exists():
        if folder and not path.is_dir():
            raise ValueError(f"{path} exists and is not a folder; choose another output")
        if not folder and path.is_dir():
            raise ValueError(f"{path} is a folder; give the file to write")
        if not overwrite:
            raise ValueError(f"{path} exists; pass --overwrite to replace it")
    return path


def check_outputs(paths: Iterable[Path], *, inputs: Iterable[Path] = (),
                  overwrite: bool = False) -> list[Path]:
    """:func:`check_new_output` for each of several files written by one command, and no
    two of them the same file, or one inside another."""
    paths = list(paths)
    inputs = list(inputs)
    seen: dict[Path, Path] = {}
    for path in paths:
        key = Path(os.path.abspath(path))
        if key in seen:
            raise ValueError(f"two outputs of this command are the same file {path}")
        seen[key] = path
    for key, path in seen.items():
        for parent in key.parents:
            if parent in seen:
                raise ValueError(f"{seen[parent]} would be written both as a file and as the "
                                 f"folder of {path}; refusing to write either")
        check_new_output(path, inputs=inputs, overwrite=overwrite)
    return paths


def is_within(path: Path, folder: Path) -> bool:
    """``path`` lies inside ``folder`` (or is it), symbolic links resolved."""
    try:
        return Path(os.path.realpath(path)).is_relative_to(os.path.realpath(folder))
    except (OSError, ValueError):
        return False


def check_plain_name(name: str, where: str) -> PurePosixPath:
    """A stored relative name such as ``photos/cat.jpg``: forward slashes, no empty, hidden,
    ``.`` or ``..`` part, no absolute path, no backslash, NUL or control character. Else a
    ValueError naming ``where`` and the name."""
    parts = name.split("/")
    bad = (not name or len(name) > 4096 or any(ord(c) < 32 or c in "\\\x7f" for c in name)
           or name.startswith("/") or any(not p or p.startswith(".") or len(p.encode()) > 255
                                          for p in parts))
    if bad:
        raise ValueError(f"{where}: unsafe image name {name!r}: a name must be a plain "
                         f"relative path (parts without '..', '.', a leading dot or '\\\\')")
    return PurePosixPath(name)

"""What a command may write: never over, into or around one of its inputs (not even with
``--overwrite``), never over an existing file or folder unless asked (``--overwrite``),
never outside the folder it was given.

Every check runs before the command writes anything, so a refusal leaves the disk as it
was. The writes themselves are atomic (:mod:`vqtok.formats.atomic`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path, PurePosixPath

_FileId = tuple[int, int]


def _file_id(path: Path) -> _FileId | None:
    """``(device, inode)`` of what ``path`` leads to (symbolic links followed), or None
    when nothing is there: two paths with one id are one file (a hard link, a link)."""
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return None
    return info.st_dev, info.st_ino


def _ancestor_ids(path: Path, cache: dict[Path, _FileId | None]) -> list[_FileId]:
    """The ids of the existing folders that hold ``path`` once links are resolved."""
    ids = []
    for parent in Path(os.path.realpath(path)).parents:
        if parent not in cache:
            cache[parent] = _file_id(parent)
        if cache[parent] is not None:
            ids.append(cache[parent])
    return ids


def check_not_an_input(path: str | os.PathLike[str], inputs: Iterable[str | os.PathLike[str]],
                       *, holding: bool = True) -> None:
    """Refuse ``path`` as an output (a ValueError naming it and the input) when it is one of
    ``inputs`` (the same file through a symbolic or hard link too), lies inside an input
    folder (a tokenizer directory, say), or, with ``holding``, is a folder that holds an
    input (an output folder is replaced as a whole). ``--overwrite`` changes none of this:
    it replaces earlier outputs, never what a command reads. Inputs that do not exist
    (a Hub repo id) are skipped."""
    path = Path(path)
    out_id = _file_id(path)
    cache: dict[Path, _FileId | None] = {}
    around = set(_ancestor_ids(path, cache))
    out_is_dir = out_id is not None and path.is_dir()
    shared = out_id is not None and not out_is_dir and os.stat(path).st_nlink > 1
    for given in map(Path, inputs):
        in_id = _file_id(given)
        if in_id is None:
            continue
        if in_id == out_id:
            through = "" if given == path else f" ({given})"
            raise ValueError(f"{path} is also an input of this command{through}; refusing to "
                             f"write over it, even with --overwrite (choose another output)")
        if in_id in around:
            raise ValueError(f"{path} is inside {given}, an input of this command; refusing "
                             f"to write there, even with --overwrite (choose an output "
                             f"outside it)")
        if holding and out_is_dir and out_id in _ancestor_ids(given, cache):
            raise ValueError(f"{path} holds {given}, an input of this command; refusing to "
                             f"replace it, even with --overwrite (choose another output)")
        if shared and given.is_dir():  # a hard link to a file inside an input folder
            for folder, _, names in os.walk(given):
                if any(_file_id(Path(folder, name)) == out_id for name in names):
                    raise ValueError(f"{path} is a hard link to a file of {given}, an input "
                                     f"of this command; refusing to write over it, even "
                                     f"with --overwrite (choose another output)")


def check_new_output(path: str | os.PathLike[str], *, inputs: Iterable[Path] = (),
                     overwrite: bool = False, folder: bool = False) -> Path:
    """Refuse ``path`` as an output (a ValueError naming it) when it is or lies inside one
    of ``inputs``, or, as a ``folder`` that is replaced whole, holds one
    (:func:`check_not_an_input`); when it exists and ``overwrite`` is false; or when it
    exists as the wrong kind (a folder where a file is written, or the other way round)."""
    path = Path(path)
    check_not_an_input(path, inputs, holding=folder)
    if path.is_symlink() or path.exists():
        if folder and not path.is_dir():
            raise ValueError(f"{path} exists and is not a folder; choose another output")
        if not folder and path.is_dir():
            raise ValueError(f"{path} is a folder; give the file to write")
        if not overwrite:
            raise ValueError(f"{path} exists; pass --overwrite to replace it")
    return path


def check_output_folder(path: str | os.PathLike[str], *,
                        inputs: Iterable[Path] = ()) -> Path:
    """A folder that a command writes files into (made when missing, never replaced as a
    whole, so it may hold an input): refused when it exists as something else, or is or
    lies inside one of ``inputs``. Each file written into it is checked on its own
    (:func:`check_outputs`)."""
    path = Path(path)
    check_not_an_input(path, inputs, holding=False)
    if (path.is_symlink() or path.exists()) and not path.is_dir():
        raise ValueError(f"{path} exists and is not a folder; choose another output")
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

"""What a command reads: regular files only. Opening a named pipe blocks until another
process writes to it (forever, if none does), and a device or socket is no image either,
so these are refused by name before anything opens them (symbolic links followed).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

_KINDS = ((stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISDIR, "a folder"))


def not_regular(path: str | os.PathLike[str]) -> str | None:
    """What ``path`` leads to when that is not a regular file (``"a named pipe (FIFO)"``,
    ``"a folder"``, ...), None for a regular file or for nothing at all."""
    try:
        mode = os.stat(path).st_mode
    except (OSError, ValueError):
        return None
    if stat.S_ISREG(mode):
        return None
    return next((kind for test, kind in _KINDS if test(mode)), "not a regular file")


def check_regular_file(path: str | os.PathLike[str]) -> Path:
    """``path`` as a Path when it is a regular file; else a ValueError naming it and what
    it is (a missing file is a FileNotFoundError)."""
    path = Path(path)
    kind = not_regular(path)
    if kind is not None:
        raise ValueError(f"{path}: {kind}, not a regular file; vqtok reads only regular files")
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    return path

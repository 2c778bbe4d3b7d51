"""Where data sets live: one user cache, filled by an explicit command (docs/data.md).

vqtok never downloads a data set as a side effect of training or loading. The cache is
``$VQTOK_DATA`` when that is set, else the platform's cache directory (``~/.cache/vqtok``
on Linux, ``~/Library/Caches/vqtok`` on macOS, ``%LOCALAPPDATA%\\vqtok\\Cache`` on
Windows); each data set has a folder in it (``fashion-mnist/``), which ``vqtok data NAME``
fills.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

DATA_ENV = "VQTOK_DATA"


class DatasetNotFoundError(FileNotFoundError):
    """A data set is not where vqtok looks for it; the message says how to put it there."""


def data_home() -> Path:
    """The data cache: ``$VQTOK_DATA``, else the platform cache directory of vqtok."""
    configured = os.environ.get(DATA_ENV, "").strip()
    return Path(configured).expanduser() if configured else Path(
        platformdirs.user_cache_dir("vqtok", appauthor=False))


def dataset_dir(name: str) -> Path:
    """The cache folder of data set ``name`` (it may not exist yet)."""
    return data_home() / name

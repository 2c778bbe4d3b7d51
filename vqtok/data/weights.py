"""Network weights that measurements need, in the data cache, fetched by one explicit
command (``vqtok data inception``; docs/eval.md#the-inception-network).

Nothing loads or downloads weights as a side effect: ``vqtok eval`` reads the cached file
when it is there, and without it reports rFID as null with a note naming the command.
"""

from __future__ import annotations

import logging
import os
import urllib.request
from pathlib import Path
from typing import BinaryIO

from vqtok.data.fashion_mnist import DownloadError, _copy_stream
from vqtok.data.home import dataset_dir
from vqtok.formats.atomic import atomic_write
from vqtok.formats.inception_weights import (
    INCEPTION_FILE,
    INCEPTION_SHA256_PREFIX,
    INCEPTION_URL,
    read_inception_weights,
)
from vqtok.formats.inputs import check_regular_file

log = logging.getLogger(__name__)

WEIGHTS_DIR = "weights"
"""The cache folder that holds weights files."""


def inception_cache_path() -> Path:
    """Where ``vqtok data inception`` puts the FID Inception weights (it may not exist)."""
    return dataset_dir(WEIGHTS_DIR) / INCEPTION_FILE


def cached_inception() -> Path | None:
    """The cached FID Inception weights file, or None when it was never fetched."""
    path = inception_cache_path()
    return path if path.is_file() else None


def fetch_inception(url: str = INCEPTION_URL, source: str | os.PathLike[str] | None = None,
                    timeout: float = 60.0, progress: bool = False,
                    sha256_prefix: str = INCEPTION_SHA256_PREFIX) -> Path:
    """Put the FID Inception weights into the cache, from ``url`` or by copy from the
    local file ``source``; returns the cached path. A file already cached and valid is
    kept. The bytes are written to a temporary file, their SHA-256 checked against the
    published prefix and the tensors against the network's names and shapes; only then
    is the file renamed into place, so a failed or corrupted fetch leaves nothing behind.
    A download that fails raises :class:`~vqtok.data.fashion_mnist.DownloadError` (an
    OSError) saying how to fetch the file by hand. ``sha256_prefix``: the digits the
    checksum must start with (the published file's; tests give their own file's)."""
    target = inception_cache_path()
    if target.is_file():
        read_inception_weights(target, sha256_prefix)  # a damaged cached file is refused, not kept
        return target
    origin = str(source) if source is not None else url

    def copy(out: BinaryIO) -> None:
        if source is not None:
            path = check_regular_file(source)
            with open(path, "rb") as f:
                _, digest = _copy_stream(f, out, path.stat().st_size, path.name, progress)
        else:
            log.info("downloading %s to %s", url, target)
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                length = resp.headers.get("Content-Length")
                _, digest = _copy_stream(resp, out, int(length) if length else None,
                                         INCEPTION_FILE, progress)
        if not digest.startswith(sha256_prefix):
            raise ValueError(f"{origin}: SHA-256 {digest[:16]}... does not start with "
                             f"{sha256_prefix}: not the published FID Inception "
                             f"weights")

    try:
        atomic_write(target, copy)
        read_inception_weights(target, sha256_prefix)
    except ValueError:
        target.unlink(missing_ok=True)
        raise
    except OSError as err:  # URLError, HTTPError, timeouts
        target.unlink(missing_ok=True)
        if source is not None:
            raise
        raise DownloadError(
            f"could not download {url}: {err}. Without network access, fetch that file on "
            f"another machine and copy it in with `vqtok data inception --from FILE`"
        ) from err
    return target


LPIPS_FILE = "lpips-vgg16.safetensors"
"""The name the LPIPS weights file has in the cache (made by ``vqtok lpips convert``)."""


def lpips_cache_path() -> Path:
    """Where ``vqtok eval`` looks for the LPIPS weights when none is given: write it there
    with ``vqtok lpips convert --out`` this path (docs/training.md#lpips)."""
    return dataset_dir(WEIGHTS_DIR) / LPIPS_FILE


def cached_lpips() -> Path | None:
    """The cached LPIPS weights file, or None."""
    path = lpips_cache_path()
    return path if path.is_file() else None

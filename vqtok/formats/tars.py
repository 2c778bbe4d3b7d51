"""Webdataset tar shards (docs/formats.md#webdataset-tars): samples of files that share a
key (``000123.jpg``, ``000123.txt``, ``000123.json``) in one tar, read in order with the
webdataset library's own tar iterator and grouping rule, so vqtok reads a tar exactly as a
webdataset pipeline does.

A sample's image is its first member with an image suffix (:data:`IMAGE_EXTENSIONS`); its
caption the ``.txt`` member (UTF-8), else the ``caption`` (or ``text``) string of its
``.json`` member. Needs the ``shards`` extra (webdataset).
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vqtok.extras import require_extra
from vqtok.formats.images import IMAGE_SUFFIXES

IMAGE_EXTENSIONS = tuple(sorted(suffix.lstrip(".") for suffix in IMAGE_SUFFIXES))
"""Member suffixes read as an image (vqtok's raster formats)."""
TAR_SUFFIXES = (".tar",)


def require_webdataset() -> Any:
    """The webdataset module, or a one-line :class:`~vqtok.extras.MissingExtraError`."""
    return require_extra("shards", "reading webdataset tars", "webdataset")[0]


def is_tar(path: str | os.PathLike[str]) -> bool:
    """Whether an input path names a webdataset tar (by its suffix)."""
    return Path(path).suffix.lower() in TAR_SUFFIXES


class NamedBytes(io.BytesIO):
    """A member's bytes that print as their place, ``shard.tar:000123.jpg``, in the errors
    of :func:`vqtok.formats.images.load_image`."""

    def __init__(self, data: bytes, name: str) -> None:
        super().__init__(data)
        self.name = name

    def __str__(self) -> str:
        return self.name

    __repr__ = __str__


@dataclass
class TarSample:
    """One sample of a tar: its key, the image member (``None`` when it has none) and the
    caption, or why the caption could not be read."""

    key: str
    image_name: str | None
    image: bytes | None
    caption: str | None
    caption_error: str | None = None


def read_caption(sample: dict[str, Any]) -> str | None:
    """The caption of a webdataset sample (module doc), None when it has none; a ValueError
    for a caption that is not UTF-8 or a ``.json`` member that is not a JSON object."""
    if "txt" in sample:
        try:
            return bytes(sample["txt"]).decode("utf-8").strip()
        except UnicodeDecodeError as err:
            raise ValueError(f"its .txt caption is not UTF-8 ({err.reason} at byte "
                             f"{err.start})") from None
    if "json" in sample:
        try:
            meta = json.loads(bytes(sample["json"]).decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as err:
            raise ValueError(f"its .json member is not UTF-8 JSON ({err})") from None
        if not isinstance(meta, dict):
            raise ValueError("its .json member is not a JSON object")
        for key in ("caption", "text"):
            if isinstance(meta.get(key), str):
                return meta[key].strip()
    return None


def tar_samples(path: str | os.PathLike[str], errors: list[str]) -> Iterator[TarSample]:
    """The samples of a tar in order. A tar that breaks off (truncated, damaged headers)
    ends there: what was read is yielded and the reason appended to ``errors``."""
    require_webdataset()
    from webdataset.tariterators import group_by_keys, tar_file_expander

    def keep_going(err: Exception) -> bool:
        reason = str(err.args[0] if err.args else err).split(" @ ")[0]  # less the stream
        errors.append(f"{path}: the tar breaks off ({type(err).__name__}: {reason})")
        return False  # stop reading this tar

    with open(path, "rb") as stream:
        members = tar_file_expander([{"url": str(path), "stream": stream}], handler=keep_going)
        for sample in group_by_keys(members, handler=keep_going):
            found = next((ext for ext in sorted(sample) if ext in IMAGE_EXTENSIONS), None)
            image_name = None if found is None else f"{sample['__key__']}.{found}"
            try:
                caption, problem = read_caption(sample), None
            except ValueError as err:
                caption, problem = None, str(err)
            yield TarSample(key=sample["__key__"], image_name=image_name,
                            image=None if found is None else bytes(sample[found]),
                            caption=caption, caption_error=problem)

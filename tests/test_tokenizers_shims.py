"""The deprecated import paths of the tokenizer (``vqtok.tokenizer``,
``vqtok.video_tokenizer``, ``vqtok.tiling``, ``vqtok.runtime`` and the moved names of
``vqtok.formats.images``) warn, and hand out the very objects of ``vqtok.tokenizers``."""

from __future__ import annotations

import importlib
import sys

import pytest

import vqtok.formats.images
from vqtok.tokenizers import image, pixels, runtime, tiling, video

SHIMS = {"vqtok.tokenizer": image, "vqtok.video_tokenizer": video, "vqtok.tiling": tiling,
         "vqtok.runtime": runtime}


@pytest.mark.parametrize("old", sorted(SHIMS))
def test_an_old_module_warns_and_re_exports_the_same_objects(old: str,
                                                            monkeypatch) -> None:
    monkeypatch.delitem(sys.modules, old, raising=False)  # import it afresh, then forget it
    with pytest.warns(DeprecationWarning, match=rf"{old} moved to vqtok\.tokenizers"):
        shim = importlib.import_module(old)
    new = SHIMS[old]
    assert shim.__all__ == new.__all__
    for name in new.__all__:
        assert getattr(shim, name) is getattr(new, name), name
    monkeypatch.delitem(sys.modules, old)


@pytest.mark.parametrize("name", ["DEFAULT_NORMALIZATION", "ImageLike", "Images",
                                  "Normalization", "replicate_pad", "split_images"])
def test_a_moved_image_name_warns_and_is_the_same_object(name: str) -> None:
    with pytest.warns(DeprecationWarning, match=rf"vqtok\.formats\.images\.{name} moved"):
        found = getattr(vqtok.formats.images, name)
    assert found is getattr(pixels, name)


def test_other_names_of_formats_images_are_still_missing() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        vqtok.formats.images.nothing  # noqa: B018

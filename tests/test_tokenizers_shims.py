"""The deprecated import paths of the tokenizer (``vqtok.tokenizer``,
``vqtok.video_tokenizer``, ``vqtok.tiling``, ``vqtok.runtime`` and the moved names of
``vqtok.formats.images``) warn, and hand out the very objects of ``vqtok.tokenizers``."""

from __future__ import annotations

import importlib
import sys

import pytest

import vqtok.formats.images
from vqtok.tokenizers import batching, image, pixels, runtime, tiling, video

# Each old module's public names, as it listed them, and where each lives now.
SHIMS = {
    "vqtok.tokenizer": {"BATCH_PIXELS": batching, "ImageTokenizer": image},
    "vqtok.video_tokenizer": {"DEFAULT_MAX_CLIP_PIXELS": video, "VideoTokenizer": video},
    "vqtok.tiling": dict.fromkeys(["DEFAULT_TILE_SIZE", "Span", "decode_tiled", "encode_tiled",
                                   "tile_spans", "tiles", "tiling_plan"], tiling),
    "vqtok.runtime": dict.fromkeys(["MAX_COMPILED_SHAPES", "CompiledCall", "compiled_indices",
                                    "cpu_per_sample_kernels", "inference_kernels",
                                    "resolve_device"], runtime),
}


@pytest.mark.parametrize("old", sorted(SHIMS))
def test_an_old_module_warns_and_re_exports_the_same_objects(old: str,
                                                            monkeypatch) -> None:
    monkeypatch.delitem(sys.modules, old, raising=False)  # import it afresh, then forget it
    with pytest.warns(DeprecationWarning, match=rf"{old} moved to vqtok\.tokenizers"):
        shim = importlib.import_module(old)
    homes = SHIMS[old]
    assert sorted(shim.__all__) == sorted(homes)
    for name, home in homes.items():
        assert getattr(shim, name) is getattr(home, name), name
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

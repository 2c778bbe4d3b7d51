"""Float images (PIL mode F, as float TIFFs hold) must be finite, like float arrays: NaN
is refused in one line naming the file, never turned into black pixels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.helpers import tiny_model
from vqtok.cli import main
from vqtok.formats.images import load_image, to_uint8_pixels
from vqtok.formats.tokenizer_dir import save_tokenizer_dir


def float_tiff(path: Path, value: float) -> Path:
    values = np.full((16, 16), 128, np.float32)
    values[3, 5] = value
    Image.fromarray(values, "F").save(path)
    return path


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_a_non_finite_float_tiff_is_refused_naming_the_file(tmp_path: Path,
                                                            value: float) -> None:
    path = float_tiff(tmp_path / "x.tif", value)
    with pytest.raises(ValueError, match=r"x\.tif: a float image \(PIL mode F\) holding NaN "
                                         r"or infinite values") as info:
        load_image(path)
    assert "\n" not in str(info.value)
    # a PIL image given directly is refused as a float array is
    with Image.open(path) as image, pytest.raises(ValueError, match="holding NaN or infinite"):
        to_uint8_pixels(image, 1)
    with pytest.raises(ValueError, match="NaN or inf"):
        to_uint8_pixels(np.full((4, 4), value), 1)


def test_encode_lists_a_nan_tiff_as_failed(tmp_path: Path, capsys) -> None:
    tok = save_tokenizer_dir(tiny_model().eval(), tmp_path / "tok")
    folder = tmp_path / "in"
    folder.mkdir()
    float_tiff(folder / "good.tif", 7.0)
    float_tiff(folder / "nan.tif", np.nan)
    npz = tmp_path / "t.npz"
    status = main(["encode", str(folder), "--tokenizer", str(tok), "--out", str(npz),
                   "--quiet"])
    assert status == 1
    with np.load(npz) as data:
        assert data["names"].tolist() == ["good.tif"]
        assert data["failed_paths"].tolist() == [str(folder / "nan.tif")]
        assert "holding NaN or infinite values" in data["failed_reasons"][0]

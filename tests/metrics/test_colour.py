"""The colourfulness measure on hand-made images, and on the demo's held-out photo."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from vqtok.apps.demo import _colour_line
from vqtok.data import PHOTOS_DIR
from vqtok.metrics import colourfulness


def test_a_grey_image_has_no_colour() -> None:
    grey = np.random.default_rng(0).integers(0, 256, size=(20, 30, 1), dtype=np.uint8)
    assert colourfulness(np.repeat(grey, 3, axis=-1)) == 0.0


def test_hand_computed_values() -> None:
    # (10, 20, 60): grey level 30, deviations 20, 10, 30 -> 20
    assert colourfulness(np.full((4, 5, 3), (10, 20, 60), dtype=np.uint8)) == pytest.approx(20.0)
    # pure red: grey 85, deviations 170, 85, 85 -> 113.33; beside as many grey pixels, half
    half = np.zeros((2, 2, 3), dtype=np.uint8)
    half[0] = (255, 0, 0)
    half[1] = (77, 77, 77)
    assert colourfulness(half) == pytest.approx(340 / 3 / 2)


def test_uint8_values_do_not_wrap() -> None:
    # 0 - 255 in uint8 would wrap around; the measure computes in float
    assert colourfulness(np.array([[[0, 255, 0]]], dtype=np.uint8)) == pytest.approx(113.333, abs=1e-3)


def test_channel_axis() -> None:
    image = np.random.default_rng(1).integers(0, 256, size=(6, 7, 3), dtype=np.uint8)
    assert colourfulness(image.transpose(2, 0, 1), channel_axis=0) == pytest.approx(
        colourfulness(image))
    with pytest.raises(ValueError, match="3 channels"):
        colourfulness(image[..., :2])


def test_the_held_out_china_photo_measures_10_8() -> None:
    photo = np.asarray(Image.open(PHOTOS_DIR / "test" / "china.png").convert("RGB"))
    assert colourfulness(photo) == pytest.approx(10.82, abs=0.01)


def test_the_demo_colour_line() -> None:
    photo = np.full((2, 2, 3), (10, 20, 60), dtype=np.uint8)  # colourfulness 20
    washed = np.full((2, 2, 3), (25, 30, 50), dtype=np.uint8)  # grey 35: 10, 5, 15 -> 10
    assert _colour_line(photo, washed) == "colourfulness         10.0 of 20.0 (50% kept)"
    grey = np.full((2, 2, 3), 9, dtype=np.uint8)
    assert _colour_line(grey, grey).endswith("(a grey photo)")

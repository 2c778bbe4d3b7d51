"""The one contract every quantizer follows (docs/algorithms.md#quantizer-contract).

A quantizer takes a channel-first feature map ``(B, D, *spatial)`` with one, two or three
spatial dims and returns a :class:`QuantizerOutput`. It always computes in float32, also
under bf16/fp16 autocast: rounding in low precision picks other codes (bf16 has 8
bits of mantissa), which has been seen to halve FSQ's codebook usage.

Ids are ``(B, *spatial)``, one per position, except for a multi-stage quantizer
(:class:`~vqtok.quantizers.ResidualQuantizer`, ``num_stages = S``): its ids carry a
trailing stage axis, ``(B, *spatial, s)`` with ``1 <= s <= S``, one id per stage for a
prefix of its stages, each in ``[0, codebook_size)`` (``codebook_size`` is then the size
of one stage's codebook).
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import torch
from einops import rearrange
from torch import Tensor, nn

from vqtok.validation import check_positive


@dataclass
class QuantizerOutput:
    """What every quantizer returns, whatever its algorithm."""

    z_q: Tensor
    """``(B, D, *spatial)``, same shape and dtype as the input: what the decoder sees."""
    indices: Tensor
    """``(B, *spatial)`` int64 code ids in ``[0, codebook_size)``. A multi-stage quantizer
    (``num_stages = S``) adds a trailing stage axis: ``(B, *spatial, s)``, one id per stage
    for the ``s`` stages that ran (``s = S`` in eval mode; ``1 <= s <= S`` in training
    under quantize dropout)."""
    losses: dict[str, Tensor] = field(default_factory=dict)
    """Named, already weighted scalar auxiliary losses; ``{}`` when there are none."""


class Quantizer(nn.Module, ABC):
    """Base class: input checks, float32 computation and the channel-last reshapes.

    Subclasses implement :meth:`indices_to_codes` and either :meth:`quantize_rows` on
    ``(N, D)`` float32 rows (the search-based quantizers) or, when the maths can stay
    channel-first and skip the layout copies, :meth:`quantize_map` (FSQ).
    """

    codebook_size: int
    dim: int
    num_stages: int | None = None
    """``None``: one id per position. ``S``: a multi-stage quantizer whose ids carry a
    trailing stage axis ``(B, *spatial, s)``, ``1 <= s <= S``."""

    def forward(self, z: Tensor) -> QuantizerOutput:
        self.check_input(z)
        with float32_compute(z):
            z_q, indices, losses = self.quantize_map(z.float())
        return QuantizerOutput(z_q=z_q.to(z.dtype), indices=indices, losses=losses)

    def quantize_map(self, z: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Quantize a float32 map ``(B, D, *spatial)``: returns ``(z_q (B, D, *spatial),
        ids (B, *spatial), losses)``. By default through :meth:`quantize_rows`."""
        batch, spatial = z.shape[0], z.shape[2:]
        rows = rearrange(z, "b d ... -> (b ...) d")  # (N, D)
        z_q_rows, idx, losses = self.quantize_rows(rows)
        return rows_to_map(z_q_rows, batch, spatial), idx.reshape(batch, *spatial), losses

    def quantize_rows(self, rows: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """Quantize float32 rows ``(N, D)``: returns ``(z_q rows (N, D), ids (N,), losses)``."""
        raise NotImplementedError(f"{type(self).__name__} implements neither quantize_rows "
                                  "nor quantize_map")

    @abstractmethod
    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """``(B, *spatial)`` ids -> ``(B, D, *spatial)`` float32 codes: exactly the ``z_q``
        that ``forward`` produced for those ids in eval mode. A multi-stage quantizer takes
        ``(B, *spatial, s)`` ids of its first ``s`` stages and returns their codes' sum."""

    # ---- checks shared by every quantizer -------------------------------------------
    def check_input(self, z: Tensor) -> None:
        if not isinstance(z, Tensor):
            raise TypeError(f"expected a torch.Tensor, got {type(z).__name__}")
        if not z.is_floating_point():
            raise ValueError(f"expected a floating-point feature map, got dtype {z.dtype}")
        if z.ndim not in (3, 4, 5):
            raise ValueError(
                f"expected a channel-first map (B, D, *spatial) with 1 to 3 spatial dims, "
                f"got shape {tuple(z.shape)}"
            )
        if z.shape[1] != self.dim:
            raise ValueError(
                f"expected {self.dim} channels in dim 1, got shape {tuple(z.shape)} "
                f"({z.shape[1]} channels)"
            )
        if torch.compiler.is_exporting():
            return  # a graph cannot branch on values (docs/formats.md#onnx)
        # One cheap pass: a NaN or inf anywhere makes the sum non-finite. Only then run the
        # exact check (a finite map can also overflow the sum), which takes three passes.
        # Skipped inside torch.compile: a branch on a tensor's value splits the graph there
        # (docs/training.md#torch-compile).
        if torch.compiler.is_compiling():
            return
        if not torch.isfinite(z.detach().sum()) and not torch.isfinite(z).all():
            bad = int((~torch.isfinite(z)).sum())
            raise ValueError(f"feature map holds {bad} non-finite values (NaN or inf)")

    def check_indices(self, indices: Tensor) -> None:
        if not isinstance(indices, Tensor):
            raise TypeError(f"expected a torch.Tensor of ids, got {type(indices).__name__}")
        if indices.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise ValueError(f"expected integer ids (int64), got dtype {indices.dtype}")
        stages = self.num_stages
        extra = 0 if stages is None else 1  # the trailing stage axis
        if indices.ndim < 2 + extra or indices.ndim > 4 + extra:
            layout = "(B, *spatial)" if stages is None else "(B, *spatial, stages)"
            raise ValueError(
                f"expected ids of shape {layout} with 1 to 3 spatial dims, "
                f"got shape {tuple(indices.shape)}"
            )
        if stages is not None and not 1 <= indices.shape[-1] <= stages:
            raise ValueError(
                f"expected a trailing stage axis of 1 to {stages} stages, got shape "
                f"{tuple(indices.shape)} ({indices.shape[-1]} stages)"
            )
        if torch.compiler.is_exporting():
            return  # a graph cannot branch on values (docs/formats.md#onnx)
        if indices.numel() and (indices.min() < 0 or indices.max() >= self.codebook_size):
            raise ValueError(
                f"ids must lie in [0, {self.codebook_size}), got values in "
                f"[{int(indices.min())}, {int(indices.max())}]"
            )

    def extra_repr(self) -> str:
        return f"codebook_size={self.codebook_size}, dim={self.dim}"


GRAD_ESTIMATORS = ("ste", "rotation")
MAX_CODEBOOK_ELEMENTS = 1 << 28
"""At most 2^28 codebook entries (K x D, 1 GiB of float32): caps what a config file can make
vqtok allocate before any weight is read (K = 262,144 codes of dim 1,024 fit)."""
"""Gradient estimators of the search-based quantizers (docs/algorithms.md#rotation-trick)."""


class CodebookQuantizer(Quantizer):
    """A quantizer that searches a codebook (VQ, SimVQ): the arguments they share."""

    def _set_codebook_args(self, codebook_size: int, dim: int, codebook_weight: float,
                           commitment_weight: float, grad_estimator: str,
                           chunk_rows: int | None) -> None:
        """Check and store the shared arguments (see the subclasses' docs)."""
        check_positive(codebook_size=codebook_size, dim=dim)
        for name, weight in (("codebook_weight", codebook_weight),
                             ("commitment_weight", commitment_weight)):
            if not weight >= 0:
                raise ValueError(f"{name} must be >= 0, got {weight!r}")
        if grad_estimator not in GRAD_ESTIMATORS:
            raise ValueError(f"grad_estimator must be one of {GRAD_ESTIMATORS}, got "
                             f"{grad_estimator!r}")
        if chunk_rows is not None:
            check_positive(chunk_rows=chunk_rows)
        if codebook_size * dim > MAX_CODEBOOK_ELEMENTS:
            raise ValueError(f"codebook_size x dim must stay <= 2^28, got {codebook_size} x "
                             f"{dim}")
        self.codebook_size, self.dim = codebook_size, dim
        self.codebook_weight = float(codebook_weight)
        self.commitment_weight = float(commitment_weight)
        self.grad_estimator, self.chunk_rows = grad_estimator, chunk_rows


def float32_compute(z: Tensor) -> contextlib.AbstractContextManager:
    """Disable autocast for the tensor's device so the quantizer maths stays in float32."""
    device_type = z.device.type if z.device.type in ("cuda", "cpu", "xpu", "mps") else "cpu"
    return torch.autocast(device_type=device_type, enabled=False)


def rows_to_map(rows: Tensor, batch: int, spatial: tuple[int, ...] | torch.Size) -> Tensor:
    """``(B * prod(spatial), D)`` rows back to a channel-first ``(B, D, *spatial)`` map.

    A view with channels-last strides, not a copy: convolutions accept it as it is, and a
    copy here would take about a fifth of an FSQ step (benchmarks/RESULTS.md's setting)."""
    return rows.reshape(batch, *spatial, rows.shape[-1]).movedim(-1, 1)


class ProjectedQuantizer(Quantizer):
    """A quantizer of a few numbers per position (FSQ, LFQ, BSQ), channel-first
    throughout, with linear maps ``project_in`` (dim -> channels) and ``project_out``
    (channels -> dim) when the feature width differs from its channel count."""

    def _set_projections(self, dim: int | None, channels: int) -> None:
        dim = channels if dim is None else dim
        if not isinstance(dim, int) or isinstance(dim, bool) or not 1 <= dim <= 1 << 16:
            raise ValueError(f"dim must be an int in [1, 65536] or None, got {dim!r}")
        self.dim = dim
        needs_projection = dim != channels
        self.project_in = nn.Linear(dim, channels) if needs_projection else nn.Identity()
        self.project_out = nn.Linear(channels, dim) if needs_projection else nn.Identity()

    def _to_channels(self, z: Tensor) -> Tensor:
        """``(B, dim, *spatial)`` -> ``(B, channels, S)``."""
        return pointwise_linear(self.project_in, z.reshape(z.shape[0], self.dim, -1))

    def _to_map(self, codes: Tensor, spatial: tuple[int, ...] | torch.Size) -> Tensor:
        """Codes ``(B, channels, S)`` -> ``(B, dim, *spatial)``."""
        z_q = pointwise_linear(self.project_out, codes)  # (B, dim, S)
        return z_q.reshape(codes.shape[0], self.dim, *spatial)


def pointwise_linear(layer: nn.Module, x: Tensor) -> Tensor:
    """Apply a ``Linear`` (or ``Identity``) to each position of a ``(B, C, S)`` map.

    One ``baddbmm`` per call: about twice as fast, forward and backward, as moving the
    channels last for ``nn.Linear`` and back. The result is a contiguous ``(B, out, S)``."""
    if isinstance(layer, nn.Identity):
        return x
    weight = layer.weight.expand(x.shape[0], -1, -1)  # (B, out, in), no copy
    return torch.baddbmm(layer.bias[None, :, None], weight, x)

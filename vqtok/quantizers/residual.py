"""Residual quantization: S quantizers in a row, each coding what the previous ones missed.

Zeghidour et al. 2021, "SoundStream: An End-to-End Neural Audio Codec", section 3.3
(Algorithm 1): r_0 = z, q_s = Q_s(r_{s-1}), r_s = r_{s-1} - q_s, z_q = sum_s q_s. A
position gets S ids, one per stage, so S codebooks of K codes describe K^S points. With
quantize dropout (same section) a training step uses only a random prefix of the stages,
so the first s stages alone already reconstruct: a coarser token stream can be cut from
the ids by keeping their first s entries. Maths and gradients in
docs/algorithms.md#residual-quantization.
"""

from __future__ import annotations

import random
from typing import Any

import torch
from torch import Tensor, nn

from vqtok.quantizers.base import Quantizer
from vqtok.registry import build, class_path, register, spec_of

MAX_STAGES = 256


@register
class ResidualQuantizer(Quantizer):
    """S stages of any vqtok quantizers on the successive residuals.

    ``codebook_size`` is K, the size of *each* stage's codebook (every stage must have the
    same K and the same ``dim``); ids are ``(B, *spatial, S)``, stage s's id in
    ``[..., s]``, each in ``[0, K)``. ``indices_to_codes`` accepts the ids of any prefix of
    stages, ``(B, *spatial, s)`` with ``s <= S``, and returns the sum of their codes.

    Losses are the stages' own, named ``"stage{s}/{name}"`` (e.g. ``"stage0/commitment"``),
    already weighted by each stage. Gradients follow the recursion as written. A stage
    whose ``z_q`` passes the gradient unchanged (VQ or SimVQ with the straight-through
    estimator) leaves ``r_s = r_{s-1} - q_s`` without gradient to ``z``: a stack of such
    stages passes the gradient to ``z`` exactly once, through stage 0, and the later
    stages train their own codebooks (codebook loss or EMA) while their commitment terms,
    still reported, do not move the encoder (EnCodec, Défossez et al. 2022, does the same).

    Args:
        stages: the S quantizers, each a registered :class:`Quantizer` module or its
            ``{"class_path", "init_args"}`` spec (built through :func:`vqtok.registry.build`; a
            spec builds a fresh module, so S copies of one spec give S independent stages).
            A residual quantizer cannot be a stage.
        quantize_dropout: in training mode, run only the first ``n`` stages, ``n`` drawn
            uniformly from ``1..S`` per forward call (SoundStream, section 3.3); ids then
            have ``n`` entries on the stage axis and only those stages' losses appear.
            Eval mode always runs every stage. Under DDP, stages a step skips get no
            gradient (use ``find_unused_parameters=True``).
        dropout_seed: seed of the depth draws. The k-th training call draws from
            ``(dropout_seed, k)`` alone, so every DDP rank draws the same depth and the
            global RNG is left alone.

    The ``init_args`` recorded for export hold every stage as its spec, so
    ``registry.spec_of`` gives plain JSON that rebuilds the same quantizer.
    """

    def __init__(
        self,
        stages: list[Quantizer | dict[str, Any]],
        *,
        quantize_dropout: bool = False,
        dropout_seed: int = 0,
    ) -> None:
        super().__init__()
        if isinstance(stages, (Quantizer, dict)) or not isinstance(stages, (list, tuple)):
            raise ValueError(  # noqa: TRY004 (project rule: bad input is a ValueError)
                f"stages must be a list of quantizers or their specs, got {type(stages).__name__}"
            )
        if not 1 <= len(stages) <= MAX_STAGES:
            raise ValueError(f"stages must hold 1 to {MAX_STAGES} quantizers, got {len(stages)}")
        modules = [stage if isinstance(stage, nn.Module) else _build_stage(stage, i)
                   for i, stage in enumerate(stages)]
        for i, stage in enumerate(modules):
            if not isinstance(stage, Quantizer):
                raise ValueError(  # noqa: TRY004 (project rule: bad input is a ValueError)
                    f"stage {i} must be a vqtok Quantizer, got {type(stage).__name__}"
                )
            if stage.num_stages is not None:
                raise ValueError(f"stage {i} is itself multi-stage ({type(stage).__name__}); "
                                 "give its stages to this ResidualQuantizer instead")
            class_path(stage)  # a ValueError unless exportable as a spec
        first = modules[0]
        for i, stage in enumerate(modules[1:], start=1):
            if (stage.codebook_size, stage.dim) != (first.codebook_size, first.dim):
                raise ValueError(
                    f"every stage needs the same codebook_size and dim: stage 0 has "
                    f"({first.codebook_size}, {first.dim}), stage {i} has "
                    f"({stage.codebook_size}, {stage.dim})"
                )
        if not isinstance(quantize_dropout, bool):
            raise ValueError(  # noqa: TRY004 (project rule: bad input is a ValueError)
                f"quantize_dropout must be a bool, got {quantize_dropout!r}")
        if not isinstance(dropout_seed, int) or isinstance(dropout_seed, bool) or dropout_seed < 0:
            raise ValueError(f"dropout_seed must be an int >= 0, got {dropout_seed!r}")

        self.stages = nn.ModuleList(modules)
        self.num_stages = len(modules)
        self.codebook_size = first.codebook_size
        self.dim = first.dim
        self.quantize_dropout = quantize_dropout
        self.dropout_seed = dropout_seed
        self._draws = 0  # training calls that drew a depth so far

    @property
    def init_args(self) -> dict[str, Any]:
        """The constructor's arguments as plain JSON: every stage as its registry spec."""
        return {
            "stages": [spec_of(stage) for stage in self.stages],
            "quantize_dropout": self.quantize_dropout,
            "dropout_seed": self.dropout_seed,
        }

    @init_args.setter
    def init_args(self, recorded: dict[str, Any]) -> None:  # @register sets it; the stages win
        pass

    # ---- the quantizer contract --------------------------------------------------------
    def quantize_map(self, z: Tensor) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        depth = self.draw_depth() if self.training and self.quantize_dropout else self.num_stages
        residual = z  # r_0 = z
        z_q: Tensor | None = None
        ids: list[Tensor] = []
        losses: dict[str, Tensor] = {}
        for s in range(depth):
            # SoundStream, Algorithm 1: q_s = Q_s(r_{s-1}); r_s = r_{s-1} - q_s; z_q = sum q_s
            q, idx, stage_losses = self.stages[s].quantize_map(residual)
            z_q = q if z_q is None else z_q + q
            if s + 1 < depth:
                # r - q computed as (-q) + r: the same bits, in the layout of q (channels
                # last for the search-based stages), so the next stage's rows are a view
                residual = (-q).add_(residual)
            ids.append(idx)
            losses.update({f"stage{s}/{name}": value for name, value in stage_losses.items()})
        assert z_q is not None  # depth >= 1
        return z_q, torch.stack(ids, dim=-1), losses  # ids (B, *spatial, depth)

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        self.check_indices(indices)
        codes: Tensor | None = None
        for s in range(indices.shape[-1]):
            # the same sum in the same order as forward, so the bits agree
            code = self.stages[s].indices_to_codes(indices[..., s])
            codes = code if codes is None else codes + code
        assert codes is not None  # check_indices: at least one stage
        return codes

    def draw_depth(self) -> int:
        """The number of stages of the next training step under quantize dropout, uniform
        in ``1..S``: never zero, so every step trains at least the first stage."""
        rng = random.Random((self.dropout_seed << 32) + self._draws)
        self._draws += 1
        return rng.randint(1, self.num_stages)

    def extra_repr(self) -> str:
        return (
            f"codebook_size={self.codebook_size} per stage, dim={self.dim}, "
            f"num_stages={self.num_stages}, quantize_dropout={self.quantize_dropout}"
        )


def _build_stage(spec: Any, index: int) -> nn.Module:
    if not isinstance(spec, dict):
        raise ValueError(  # noqa: TRY004 (project rule: bad input is a ValueError)
            f"stage {index} must be a Quantizer module or a {{'class_path', 'init_args'}} "
            f"spec, got {type(spec).__name__}"
        )
    return build(spec)

"""The multimodal language model: a decoder-only transformer over token streams of text,
image and video codes, with constrained generation.

Pre-norm blocks (RMSNorm, Zhang & Sennrich 2019), causal self-attention of any kind in
:mod:`vqtok.lm.attention`, a SwiGLU MLP (Shazeer 2020, eq. 6), rotary positions
from a scheme in :mod:`vqtok.lm.positions`, tied or untied embeddings.

Generation in one call::

    vocab = Vocabulary(image_codebook_size=1024)
    model = MultimodalLM(LMConfig(vocab_size=vocab.size))
    grid = generate_image(model, vocab, "a photo of an ankle boot", 8, 8)  # (8, 8) LongTensor

:meth:`MultimodalLM.generate` is the general form: a :class:`GridConstraint` forces
"BOI, then h x w image codes, then EOI", masking the logits outside the image-code range
and giving the patches their grid positions, so the output always holds a decodable grid.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqtok.lm import attention as att
from vqtok.lm.positions import SCHEMES, grid_shape3, make_scheme
from vqtok.lm.streams import (
    Vocabulary,
    build_stream,
    collate,
    extract_images,
    extract_videos,
)
from vqtok.registry import register
from vqtok.validation import check_positive


@dataclass
class LMConfig:
    """Hyper-parameters of :class:`MultimodalLM` (JSON-friendly: names, not classes)."""

    vocab_size: int
    """Size of the joint vocabulary (``Vocabulary.size``)."""
    d_model: int = 256
    """Width of the residual stream."""
    n_layers: int = 4
    """Number of transformer blocks."""
    n_heads: int = 4
    """Query heads per attention layer."""
    head_dim: int | None = None
    """Per-head query/key/value size ``d_k``; ``None`` means ``d_model // n_heads``."""
    attention: str = "mha"
    """``"mha"``, ``"gqa"``, ``"mqa"`` or ``"mla"`` (docs/algorithms.md#attention-variants)."""
    n_kv_heads: int | None = None
    """Key/value groups ``g`` for ``"gqa"`` (must divide ``n_heads``); unused otherwise."""
    d_latent: int | None = None
    """MLA latent size ``d_c``; ``None`` means ``4 * head_dim`` (DeepSeek-V2's ratio)."""
    d_rope: int | None = None
    """MLA decoupled RoPE size ``d_r`` (even); ``None`` means ``head_dim // 2``."""
    mlp_hidden: int | None = None
    """SwiGLU hidden size; ``None`` means ``8/3 d_model`` rounded up to a multiple of 8."""
    position_scheme: str = "1d"
    """``"1d"``, ``"rope_tie_v2"``, ``"mrope"`` or ``"nope"``
    (docs/algorithms.md#streams-and-positions). The default follows the position ablation
    in ``benchmarks/RESULTS_decoder.md``: 1D gave the lowest held-out image-token loss on
    8 x 8 and 16 x 16 image grids and on 5 x 8 x 8 video grids."""
    rope_base: float = 10000.0
    """RoPE base: ``theta_i = rope_base^(-2i/d)``."""
    norm_eps: float = 1e-5
    """RMSNorm epsilon."""
    tie_embeddings: bool = True
    """Share the token embedding with the output projection."""
    init_std: float = 0.02
    """Standard deviation of the normal weight init (residual outputs are scaled by
    ``1/sqrt(2 n_layers)``, as in GPT-2)."""

    def __post_init__(self) -> None:
        if self.attention not in att.ATTENTION_KINDS:
            raise ValueError(f"attention must be one of {att.ATTENTION_KINDS}, got "
                             f"{self.attention!r}")
        if self.position_scheme not in SCHEMES:
            raise ValueError(f"position_scheme must be one of {sorted(SCHEMES)}, got "
                             f"{self.position_scheme!r}")
        check_positive(vocab_size=self.vocab_size, d_model=self.d_model,
                       n_layers=self.n_layers, n_heads=self.n_heads)
        if self.head_dim is None and self.d_model % self.n_heads:
            raise ValueError(f"d_model={self.d_model} is not divisible by n_heads={self.n_heads}; "
                             "set head_dim")
        for name in ("head_dim", "d_rope"):
            value = getattr(self, name)
            if value is not None and (value < 2 or value % 2):
                raise ValueError(f"{name} must be an even number >= 2, got {value}")
        if self.attention == "gqa" and (not self.n_kv_heads or self.n_heads % self.n_kv_heads):
            raise ValueError(f"gqa needs n_kv_heads dividing n_heads={self.n_heads}, got "
                             f"{self.n_kv_heads}")

    @property
    def resolved_head_dim(self) -> int:
        return self.head_dim or self.d_model // self.n_heads

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict of the fields."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LMConfig:
        """Inverse of :meth:`to_dict`; unknown keys raise."""
        unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown LMConfig fields {unknown}")
        return cls(**data)


class SwiGLU(nn.Module):
    """``W_down (silu(x W_gate) * x W_up)`` (Shazeer 2020, "GLU Variants", eq. 6)."""

    def __init__(self, d_model: int, hidden: int) -> None:
        super().__init__()
        self.w_gate = nn.Linear(d_model, hidden, bias=False)
        self.w_up = nn.Linear(d_model, hidden, bias=False)
        self.w_down = nn.Linear(hidden, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


class Block(nn.Module):
    """Pre-norm residual block: ``x + attn(norm(x))`` then ``x + mlp(norm(x))``."""

    def __init__(self, cfg: LMConfig, rope_mode: str) -> None:
        super().__init__()
        head_dim = cfg.resolved_head_dim
        hidden = cfg.mlp_hidden or 8 * math.ceil(8 * cfg.d_model / 3 / 8)
        self.norm_attn = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = att.make_attention(
            cfg.attention, cfg.d_model, cfg.n_heads, head_dim, n_kv_heads=cfg.n_kv_heads,
            d_latent=cfg.d_latent or 4 * head_dim, d_rope=cfg.d_rope or max(2, head_dim // 2),
            rope_mode=rope_mode, rope_base=cfg.rope_base)
        self.norm_mlp = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp = SwiGLU(cfg.d_model, hidden)

    def forward(self, x: Tensor, positions: Tensor, attn_mask: Tensor | None,
                cache: att.LayerCache | None) -> Tensor:
        x = x + self.attn(self.norm_attn(x), positions, attn_mask, cache)
        return x + self.mlp(self.norm_mlp(x))


@dataclass
class GridConstraint:
    """Force the next generated tokens to be exactly one grid: the begin marker, ``h x w``
    (or ``t x h x w``) image codes sampled only among the codebook ids, the end marker."""

    vocab: Vocabulary
    shape: tuple[int, ...]
    """``(h, w)`` for an image (BOI/EOI), ``(t, h, w)`` for a video (BOV/EOV)."""
    begin: bool = True
    """Emit the begin marker; ``False`` when the prompt already ends with it."""

    def __post_init__(self) -> None:
        grid_shape3(self.shape)  # validates
        self.shape = tuple(int(s) for s in self.shape)

    @property
    def markers(self) -> tuple[int, int]:
        video = len(self.shape) == 3
        return (self.vocab.bov, self.vocab.eov) if video else (self.vocab.boi, self.vocab.eoi)

    @property
    def length(self) -> int:
        """Tokens the constraint emits: markers included."""
        return math.prod(self.shape) + 1 + int(self.begin)


@dataclass
class GenerationOutput:
    """Prompt and generated tokens together."""

    ids: Tensor
    """``(B, T + n)`` ids; the new tokens are ``ids[:, T:]``."""
    positions: Tensor
    """``(B, T + n, 3)`` positions of every token."""
    mask: Tensor
    """``(B, T + n)`` bool, False only on prompt padding."""


@register
class MultimodalLM(nn.Module):
    """The language model, a decoder-only transformer:
    ``forward(ids, positions, mask, cache) -> logits``."""

    def __init__(self, config: LMConfig | dict[str, Any]) -> None:
        super().__init__()
        cfg = config if isinstance(config, LMConfig) else LMConfig.from_dict(config)
        self.config = cfg
        self.scheme = make_scheme(cfg.position_scheme)
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg, self.scheme.rope_mode) for _ in range(cfg.n_layers))
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight
        self._init_weights()

    @property
    def init_args(self) -> dict[str, Any]:
        """``{"config": {...}}`` as plain JSON, so ``registry.spec_of(model)`` is serialisable
        and ``registry.build`` rebuilds the model from it."""
        return {"config": self.config.to_dict()}

    @init_args.setter
    def init_args(self, recorded: dict[str, Any]) -> None:  # @register sets it; config wins
        pass

    def _init_weights(self) -> None:
        std = self.config.init_std
        residual_std = std / math.sqrt(2 * self.config.n_layers)  # GPT-2's residual scaling
        for name, p in self.named_parameters():
            if p.dim() < 2:  # RMSNorm gains stay at 1
                continue
            last = name.rsplit(".", 2)[-2]
            nn.init.normal_(p, std=residual_std if last in ("wo", "w_down") else std)

    def new_cache(self) -> att.KVCache:
        """An empty cache for incremental decoding with :meth:`forward`."""
        return att.KVCache(len(self.blocks))

    def forward(self, ids: Tensor, positions: Tensor, mask: Tensor | None = None,
                cache: att.KVCache | None = None) -> Tensor:
        """Logits ``(B, T, vocab_size)`` for ``ids (B, T)`` at ``positions (B, T, 3)``.

        ``mask (B, T)`` marks real tokens (False on padding) of *these* ``T`` tokens. With a
        ``cache`` the tokens continue the cached ones, which the cache remembers (with their
        mask), and the cache is extended.
        """
        b, t = ids.shape if ids.dim() == 2 else (0, 0)
        if ids.dim() != 2 or positions.shape != (b, t, 3):
            raise ValueError(f"need ids (B, T) and positions (B, T, 3), got shapes "
                             f"{tuple(ids.shape)} and {tuple(positions.shape)}")
        if mask is not None and mask.shape != (b, t):
            raise ValueError(f"mask must be (B, T) = {(b, t)}, got {tuple(mask.shape)}")
        if t == 0 or int(ids.min()) < 0 or int(ids.max()) >= self.config.vocab_size:
            raise ValueError(f"ids must be non-empty and lie in [0, {self.config.vocab_size}), "
                             f"got shape {tuple(ids.shape)}")
        past = cache.length if cache is not None else 0
        key_mask = mask
        if cache is not None and (cache.mask is not None or mask is not None):
            # The cache remembers which keys are padding, for every later call.
            ones = ids.new_ones(b, past + t, dtype=torch.bool)
            old = cache.mask if cache.mask is not None else ones[:, :past]
            new = mask if mask is not None else ones[:, past:]
            key_mask = cache.mask = torch.cat([old, new], dim=1)  # (B, past + T)
        attn_mask = att.attention_mask(key_mask, t, past + t, ids.device)
        x = self.embed(ids)  # (B, T, D)
        for i, block in enumerate(self.blocks):
            x = block(x, positions, attn_mask, cache.layers[i] if cache is not None else None)
        return self.lm_head(self.norm(x))  # (B, T, V)

    @torch.no_grad()
    def generate(
        self,
        prompt_ids: Tensor,
        prompt_positions: Tensor,
        max_new_tokens: int,
        *,
        prompt_mask: Tensor | None = None,
        cursor: Tensor | None = None,
        temperature: float = 1.0,
        top_k: int | None = None,
        constraint: GridConstraint | None = None,
        generator: torch.Generator | None = None,
        use_cache: bool = True,
    ) -> GenerationOutput:
        """Sample ``max_new_tokens`` after a (left-padded) prompt ``(B, T)``.

        With a ``constraint`` the first ``constraint.length`` new tokens are its grid (begin
        marker, codes at the grid positions of the scheme, end marker); any further tokens
        are free text. ``cursor (B,)`` is the text counter after each prompt (as in
        ``StreamBatch.cursor``); by default it is read from the last prompt position, which
        must then be a one-dimensional token ``(P, P, P)``. ``temperature = 0`` is greedy;
        ``top_k`` keeps the k most likely allowed ids. ``use_cache=False`` recomputes the whole
        sequence every step (the reference the cache is checked and timed against).
        """
        b, t = prompt_ids.shape
        if max_new_tokens < 1 or temperature < 0 or (top_k is not None and top_k < 1):
            raise ValueError(f"need max_new_tokens >= 1, temperature >= 0, top_k >= 1; got "
                             f"{max_new_tokens}, {temperature}, {top_k}")
        if constraint is not None and (max_new_tokens < constraint.length
                                       or constraint.vocab.size != self.config.vocab_size):
            raise ValueError(f"max_new_tokens={max_new_tokens} must hold the constrained grid of "
                             f"{constraint.length} tokens (markers included) and the vocabulary "
                             f"size {constraint.vocab.size} match the model's "
                             f"{self.config.vocab_size}")
        if cursor is None:
            last = prompt_positions[:, -1]  # (B, 3)
            if not bool((last == last[:, :1]).all()):
                raise ValueError("the prompt must end with a 1D token (equal position components)"
                                 f" to continue it, got {last.tolist()}; pass cursor")
            cursor = last[:, 0]
        rel, forced, restricted = self._schedule(max_new_tokens, constraint)
        new_pos = cursor.to(torch.float64)[:, None, None] + rel.to(cursor.device)  # (B, n, 3)
        new_pos = new_pos.to(prompt_positions.dtype)
        lo, hi = (constraint.vocab.image_range if constraint is not None else (0, 0))

        ids, positions = prompt_ids, prompt_positions
        mask = prompt_ids.new_ones(b, t, dtype=torch.bool) if prompt_mask is None else prompt_mask
        cache = self.new_cache() if use_cache else None
        logits = self(prompt_ids, prompt_positions, prompt_mask, cache)[:, -1]  # (B, V)
        for step in range(max_new_tokens):
            if forced[step] >= 0:
                token = prompt_ids.new_full((b,), forced[step])
            else:
                token = sample_next(logits, temperature, top_k,
                                    (lo, hi) if restricted[step] else None, generator)
            pos = new_pos[:, step : step + 1]  # (B, 1, 3)
            ids = torch.cat([ids, token[:, None]], dim=1)
            positions = torch.cat([positions, pos], dim=1)
            mask = torch.cat([mask, mask.new_ones(b, 1)], dim=1)
            if step + 1 < max_new_tokens:
                if cache is not None:
                    logits = self(token[:, None], pos, None, cache)[:, -1]
                else:
                    logits = self(ids, positions, mask)[:, -1]
        return GenerationOutput(ids=ids, positions=positions, mask=mask)

    def _schedule(self, n: int, constraint: GridConstraint | None
                  ) -> tuple[Tensor, list[int], list[bool]]:
        """Positions relative to the cursor ``(n, 3)``, forced ids (-1 = sample) and whether
        a step samples only image codes. Every scheme is shift-equivariant in the cursor."""
        parts: list[Tensor] = []
        forced: list[int] = []
        restricted: list[bool] = []
        at = 0.0
        if constraint is not None:
            begin, end = constraint.markers
            if constraint.begin:
                pos, at = self.scheme.text(at, 1)
                parts.append(pos)
                forced.append(begin)
                restricted.append(False)
            grid, at = self.scheme.grid(at, constraint.shape)
            close, at = self.scheme.text(at, 1)
            parts += [grid, close]
            codes = grid.shape[0]
            forced += [-1] * codes + [end]
            restricted += [True] * codes + [False]
        free = n - len(forced)
        if free:
            parts.append(self.scheme.text(at, free)[0])
            forced += [-1] * free
            restricted += [False] * free
        return torch.cat(parts), forced, restricted


def sample_next(logits: Tensor, temperature: float, top_k: int | None,
                allowed: tuple[int, int] | None, generator: torch.Generator | None) -> Tensor:
    """One id per row from ``logits (B, V)``, only among ``[allowed[0], allowed[1])`` if
    given; ``temperature = 0`` takes the argmax."""
    logits = logits.float()
    if allowed is not None:
        keep = torch.zeros(logits.shape[-1], dtype=torch.bool, device=logits.device)
        keep[allowed[0] : allowed[1]] = True
        logits = logits.masked_fill(~keep, float("-inf"))
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


@torch.no_grad()
def generate_grid(
    model: MultimodalLM,
    vocab: Vocabulary,
    prompt_text: str | list[str],
    shape: tuple[int, ...],
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    add_bos: bool = True,
) -> Tensor:
    """Generate one grid of codebook indices per prompt, constrained to the full
    ``shape`` (:class:`GridConstraint`): ``(h, w)`` is an image between BOI and EOI,
    ``(t, h, w)`` a video between BOV and EOV. Returns ``shape`` for a string prompt,
    ``(B, *shape)`` for a list. The prompt is ``[BOS] text`` and the grid follows it."""
    if vocab.size != model.config.vocab_size:
        raise ValueError(f"vocabulary size {vocab.size} != model vocab_size "
                         f"{model.config.vocab_size}")
    texts = [prompt_text] if isinstance(prompt_text, str) else list(prompt_text)
    streams = [build_stream([s] if s else [], vocab, model.scheme, add_bos=add_bos) for s in texts]
    batch = collate(streams, vocab, side="left")  # prompts end together
    device = next(model.parameters()).device
    constraint = GridConstraint(vocab, tuple(shape))
    out = model.generate(
        batch.ids.to(device), batch.positions.to(device), constraint.length,
        prompt_mask=batch.mask.to(device), cursor=batch.cursor.to(device),
        temperature=temperature, top_k=top_k, constraint=constraint, generator=generator)
    prompt_len = batch.ids.shape[1]
    extract = extract_videos if len(constraint.shape) == 3 else extract_images
    grids = torch.stack([extract(row[prompt_len:].cpu(), vocab, constraint.shape)[0]
                         for row in out.ids])
    return grids[0] if isinstance(prompt_text, str) else grids


def generate_image(
    model: MultimodalLM,
    vocab: Vocabulary,
    prompt_text: str | list[str],
    h: int,
    w: int,
    **kwargs: Any,
) -> Tensor:
    """:func:`generate_grid` of an ``(h, w)`` image: ``(h, w)`` for a string prompt,
    ``(B, h, w)`` for a list."""
    return generate_grid(model, vocab, prompt_text, (h, w), **kwargs)


def generate_video(
    model: MultimodalLM,
    vocab: Vocabulary,
    prompt_text: str | list[str],
    t: int,
    h: int,
    w: int,
    **kwargs: Any,
) -> Tensor:
    """:func:`generate_grid` of a ``(t, h, w)`` video: ``(t, h, w)`` for a string prompt,
    ``(B, t, h, w)`` for a list."""
    return generate_grid(model, vocab, prompt_text, (t, h, w), **kwargs)

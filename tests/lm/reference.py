"""Independent float64 references for the multimodal tests: loops over pairs and heads,
written from the papers' formulas, sharing no code with vqtok.lm."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def rope_1d(x: Tensor, p: Tensor, base: float = 10000.0) -> Tensor:
    """RoFormer RoPE-1D: pair (x[2i], x[2i+1]) rotated by p * base^(-2i/d).
    ``x (T, d)``, ``p (T,)``; float64."""
    x = x.double()
    out = torch.empty_like(x)
    d = x.shape[-1]
    for i in range(d // 2):
        angle = p.double() * base ** (-2.0 * i / d)
        a, b = x[:, 2 * i], x[:, 2 * i + 1]
        out[:, 2 * i] = a * torch.cos(angle) - b * torch.sin(angle)
        out[:, 2 * i + 1] = a * torch.sin(angle) + b * torch.cos(angle)
    return out


def rope_axes(x: Tensor, pos: Tensor, base: float = 10000.0) -> Tensor:
    """RoPE-Tie-v2 rotation: pair i uses axis i mod 3. ``x (T, d)``, ``pos (T, 3)``."""
    x = x.double()
    out = torch.empty_like(x)
    d = x.shape[-1]
    for i in range(d // 2):
        angle = pos[:, i % 3].double() * base ** (-2.0 * i / d)
        a, b = x[:, 2 * i], x[:, 2 * i + 1]
        out[:, 2 * i] = a * torch.cos(angle) - b * torch.sin(angle)
        out[:, 2 * i + 1] = a * torch.sin(angle) + b * torch.cos(angle)
    return out


def causal_attention(x: Tensor, wq: Tensor, wk: Tensor, wv: Tensor, wo: Tensor, n_heads: int,
                     n_kv_heads: int, pos: Tensor) -> Tensor:
    """Single-sequence causal attention with explicit head loop; ``x (T, D)``; ``w*`` are
    nn.Linear weights ``(out, in)``; query head j reads kv head j // (n_heads / n_kv_heads)."""
    x = x.double()
    t = x.shape[0]
    d_k = wq.shape[0] // n_heads
    q = (x @ wq.double().T).view(t, n_heads, d_k)
    k = (x @ wk.double().T).view(t, n_kv_heads, d_k)
    v = (x @ wv.double().T).view(t, n_kv_heads, d_k)
    heads = []
    for j in range(n_heads):
        g = j // (n_heads // n_kv_heads)
        qj, kj = rope_axes(q[:, j], pos), rope_axes(k[:, g], pos)
        scores = qj @ kj.T / math.sqrt(d_k)
        scores = scores.masked_fill(torch.ones(t, t).triu(1).bool(), float("-inf"))
        heads.append(scores.softmax(-1) @ v[:, g])
    return torch.cat(heads, dim=-1) @ wo.double().T

"""Causal self-attention with an incremental KV cache (docs/algorithms.md#attention-variants).

``kind`` selects the variant; cache elements per token per layer are
- ``"mha"``: multi-head attention (Vaswani et al. 2017), ``2 h d_k``;
- ``"gqa"``: grouped-query attention (Ainslie et al. 2023), ``g`` key/value heads each
  shared by ``h / g`` query heads, ``2 g d_k``;
- ``"mqa"``: multi-query attention (Shazeer 2019), one key/value head, ``2 d_k``;
- ``"mla"``: multi-head latent attention (DeepSeek-V2, DeepSeek-AI 2024, section 2.1), which
  caches only the latent ``c`` (``d_c``) and the decoupled RoPE key (``d_r``): ``d_c + d_r``.

Every module takes ``x (B, T, D)``, ``positions (B, T, 3)``, a boolean mask ``(B|1, 1, T, S)``
(True = may attend; ``None`` = attend to every cached key, used for one new token) and an
optional :class:`LayerCache`; with a cache, ``T`` new tokens follow the ``S - T`` cached ones.
The cache is meant for inference (no gradients through it).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vqtok.lm.rope import RotaryEmbedding

ATTENTION_KINDS = ("mha", "gqa", "mqa", "mla")


class LayerCache:
    """Growing per-layer buffers; every cached tensor has time at dim ``-2``."""

    def __init__(self) -> None:
        self._buffers: dict[str, Tensor] = {}
        self.length = 0

    def update(self, **new: Tensor) -> dict[str, Tensor]:
        """Append ``new`` tensors ``(..., T_new, E)``; return all cached ``(..., S, E)``."""
        t_new = next(iter(new.values())).shape[-2]
        if self._buffers and set(new) != set(self._buffers):
            raise ValueError(f"cache holds {sorted(self._buffers)}, got {sorted(new)}")
        needed = self.length + t_new
        capacity = next(iter(self._buffers.values())).shape[-2] if self._buffers else 0
        if needed > capacity:  # grow by doubling: amortised O(1) appends
            capacity = max(2 * capacity, needed, 16)
            for name, x in new.items():
                buf = x.new_empty(*x.shape[:-2], capacity, x.shape[-1])
                if name in self._buffers:
                    buf[..., : self.length, :] = self._buffers[name][..., : self.length, :]
                self._buffers[name] = buf
        for name, x in new.items():
            self._buffers[name][..., self.length : needed, :] = x
        self.length = needed
        return self.tensors()

    def tensors(self) -> dict[str, Tensor]:
        """The filled part of each buffer, ``(..., S, E)``."""
        return {name: buf[..., : self.length, :] for name, buf in self._buffers.items()}

    def nbytes(self) -> int:
        """Bytes held by the filled part of the cache tensors."""
        return sum(t.numel() * t.element_size() for t in self.tensors().values())


class KVCache:
    """The cache of a whole model: one :class:`LayerCache` per layer plus the key padding
    mask ``(B, S)`` of the tokens seen so far."""

    def __init__(self, n_layers: int) -> None:
        self.layers = [LayerCache() for _ in range(n_layers)]
        self.mask: Tensor | None = None

    @property
    def length(self) -> int:
        return self.layers[0].length if self.layers else 0

    def bytes_per_token_per_layer(self) -> float:
        """Cache bytes per cached token (per batch row) per layer, from the tensors."""
        if self.length == 0:
            raise ValueError("the cache is empty")
        batch = next(iter(self.layers[0].tensors().values())).shape[0]
        total = sum(layer.nbytes() for layer in self.layers)
        return total / (batch * self.length * len(self.layers))


def attention_mask(key_mask: Tensor | None, t_new: int, total: int, device: torch.device
                   ) -> Tensor | None:
    """``(B|1, 1, t_new, total)`` bool mask of the last ``t_new`` of ``total`` tokens:
    causal, minus padded keys (``key_mask (B, total)``, True = real token). A query always
    sees itself, so a padding query never has an empty softmax. ``None`` when one new token
    may attend to everything."""
    if t_new == 1 and key_mask is None:
        return None
    q_idx = torch.arange(total - t_new, total, device=device)[:, None]
    k_idx = torch.arange(total, device=device)[None, :]
    allowed = k_idx <= q_idx  # (t_new, total)
    if key_mask is None:
        return allowed[None, None]
    allowed = (allowed & key_mask[:, None, :]) | (k_idx == q_idx)  # (B, t_new, total)
    return allowed[:, None]


class GroupedQueryAttention(nn.Module):
    """MHA (``n_kv_heads = n_heads``), GQA (``1 < n_kv_heads < n_heads``) or MQA
    (``n_kv_heads = 1``): query head ``i`` reads key/value head ``i // (n_heads/n_kv_heads)``."""

    def __init__(self, d_model: int, n_heads: int, n_kv_heads: int, head_dim: int,
                 rope_mode: str = "axes", rope_base: float = 10000.0) -> None:
        super().__init__()
        if n_kv_heads < 1 or n_heads % n_kv_heads:
            raise ValueError(f"n_kv_heads={n_kv_heads} must divide n_heads={n_heads}")
        self.n_heads, self.n_kv_heads, self.head_dim = n_heads, n_kv_heads, head_dim
        self.wq = nn.Linear(d_model, n_heads * head_dim, bias=False)
        self.wk = nn.Linear(d_model, n_kv_heads * head_dim, bias=False)
        self.wv = nn.Linear(d_model, n_kv_heads * head_dim, bias=False)
        self.wo = nn.Linear(n_heads * head_dim, d_model, bias=False)
        self.rope = RotaryEmbedding(head_dim, base=rope_base, mode=rope_mode)

    def forward(self, x: Tensor, positions: Tensor, attn_mask: Tensor | None,
                cache: LayerCache | None = None) -> Tensor:
        b, t, _ = x.shape
        q = self.wq(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)  # (B, h, T, d_k)
        k = self.wk(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, g, T, d_k)
        v = self.wv(x).view(b, t, self.n_kv_heads, self.head_dim).transpose(1, 2)
        q, k = self.rope(q, positions), self.rope(k, positions)
        if cache is not None:  # cache rotated keys and values: 2 g d_k per token
            kv = cache.update(k=k, v=v)
            k, v = kv["k"], kv["v"]  # (B, g, S, d_k)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, enable_gqa=self.n_kv_heads != self.n_heads)
        return self.wo(out.transpose(1, 2).reshape(b, t, -1))  # (B, T, h d_k) -> (B, T, D)


class MultiHeadLatentAttention(nn.Module):
    """DeepSeek-V2 MLA (section 2.1.2-2.1.3). Per head ``h``: ``q = [x W_q^h ; RoPE(x W_qr^h)]``,
    ``k = [c W_uk^h ; k_r]``, ``v = c W_uv^h`` with latent ``c = x W_dkv`` (``d_c``) and a
    decoupled RoPE key ``k_r = RoPE(x W_kr)`` (``d_r``) shared by all heads. Only ``c`` and
    ``k_r`` are cached.

    ``absorbed=True`` (default) computes scores against the cache directly: ``W_uk`` is
    absorbed into the query (``q^h W_uk^h^T`` lives in latent space) and ``W_uv`` into the
    output projection (``W_uv^h W_o^h``), so no per-head key or value is ever built;
    ``absorbed=False`` up-projects the cache to keys and values (the naive path).
    """

    def __init__(self, d_model: int, n_heads: int, head_dim: int, d_latent: int, d_rope: int,
                 rope_mode: str = "axes", rope_base: float = 10000.0) -> None:
        super().__init__()
        self.n_heads, self.head_dim = n_heads, head_dim
        self.d_latent, self.d_rope = d_latent, d_rope
        self.wq = nn.Linear(d_model, n_heads * (head_dim + d_rope), bias=False)
        self.w_dkv = nn.Linear(d_model, d_latent, bias=False)
        self.w_kr = nn.Linear(d_model, d_rope, bias=False)
        bound = 1.0 / math.sqrt(d_latent)  # nn.Linear's scale for a d_latent fan-in
        self.w_uk = nn.Parameter(torch.empty(n_heads, d_latent, head_dim).uniform_(-bound, bound))
        self.w_uv = nn.Parameter(torch.empty(n_heads, d_latent, head_dim).uniform_(-bound, bound))
        self.wo = nn.Linear(n_heads * head_dim, d_model, bias=False)
        self.rope = RotaryEmbedding(d_rope, base=rope_base, mode=rope_mode)
        # DeepSeek-V2 section 2.1.3: scores are divided by sqrt(d_h + d_h^R).
        self.scale = 1.0 / math.sqrt(head_dim + d_rope)
        self.absorbed = True
        self._memo: tuple[tuple, Tensor] | None = None

    def forward(self, x: Tensor, positions: Tensor, attn_mask: Tensor | None,
                cache: LayerCache | None = None) -> Tensor:
        b, t, _ = x.shape
        q = self.wq(x).view(b, t, self.n_heads, self.head_dim + self.d_rope).transpose(1, 2)
        q_c, q_r = q.split([self.head_dim, self.d_rope], dim=-1)  # (B, h, T, d_k), (B, h, T, d_r)
        q_r = self.rope(q_r, positions)
        c = self.w_dkv(x)  # (B, T, d_c): section 2.1.2, the cached latent
        k_r = self.rope(self.w_kr(x), positions)  # (B, T, d_r): section 2.1.3, shared by heads
        if cache is not None:
            kv = cache.update(c=c, k_r=k_r)
            c, k_r = kv["c"], kv["k_r"]  # (B, S, d_c), (B, S, d_r)
        if self.absorbed:
            return self._absorbed(q_c, q_r, c, k_r, attn_mask)
        return self._naive(q_c, q_r, c, k_r, attn_mask)

    def _naive(self, q_c: Tensor, q_r: Tensor, c: Tensor, k_r: Tensor,
               attn_mask: Tensor | None) -> Tensor:
        b, h, t, _ = q_c.shape
        # Section 2.1.2 up-projections of the latent to per-head keys and values.
        k_c = torch.einsum("bsc,hck->bhsk", c, self.w_uk)  # (B, h, S, d_k)
        v = torch.einsum("bsc,hcv->bhsv", c, self.w_uv)  # (B, h, S, d_k)
        k = torch.cat([k_c, k_r[:, None].expand(-1, h, -1, -1)], dim=-1)  # 2.1.3: [k_c ; k_r]
        q = torch.cat([q_c, q_r], dim=-1)  # (B, h, T, d_k + d_r)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, scale=self.scale)
        return self.wo(out.transpose(1, 2).reshape(b, t, -1))  # (B, T, h d_k) -> (B, T, D)

    def _absorbed(self, q_c: Tensor, q_r: Tensor, c: Tensor, k_r: Tensor,
                  attn_mask: Tensor | None) -> Tensor:
        # Section 2.1.2: q_c . (c W_uk) = (q_c W_uk^T) . c, so the query moves to latent space.
        q_lat = torch.einsum("bhtk,hck->bhtc", q_c, self.w_uk)  # (B, h, T, d_c)
        b, h, t, _ = q_lat.shape
        q = torch.cat([q_lat, q_r], dim=-1).view(b, h * t, -1)  # (B, h T, d_c + d_r)
        k = torch.cat([c, k_r], dim=-1)  # (B, S, d_c + d_r): one key for every head
        scores = (q @ k.transpose(1, 2)).view(b, h, t, -1) * self.scale  # (B, h, T, S)
        if attn_mask is not None:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        out = scores.softmax(dim=-1).view(b, h * t, -1) @ c  # (B, h T, d_c)
        # ... and (sum_s p_s c_s) W_uv^h W_o^h: W_uv folds into the output projection.
        out = out.view(b, h, t, -1).transpose(1, 2).reshape(b, t, -1)  # (B, T, h d_c)
        return out @ self._output_weight()  # (B, T, D)

    def _output_weight(self) -> Tensor:
        """``(h d_c, D)`` stack of ``W_uv^h W_o^h``; memoised while the weights are unchanged
        (their version counters) and no gradient is needed, recomputed otherwise."""
        key = (self.w_uv._version, self.wo.weight._version, self.w_uv.data_ptr(),
               self.wo.weight.data_ptr(), self.w_uv.dtype, self.w_uv.device)
        if torch.is_grad_enabled() or self._memo is None or self._memo[0] != key:
            w_o = self.wo.weight.view(-1, self.n_heads, self.head_dim)  # (D, h, d_k)
            w_uvo = torch.einsum("hcv,dhv->hcd", self.w_uv, w_o)  # (h, d_c, D)
            if torch.is_grad_enabled():
                return w_uvo.reshape(-1, w_uvo.shape[-1])
            self._memo = (key, w_uvo.reshape(-1, w_uvo.shape[-1]))
        return self._memo[1]


def make_attention(kind: str, d_model: int, n_heads: int, head_dim: int, *,
                   n_kv_heads: int | None = None, d_latent: int | None = None,
                   d_rope: int | None = None, rope_mode: str = "axes",
                   rope_base: float = 10000.0) -> nn.Module:
    """Build the attention of ``kind`` (one of :data:`ATTENTION_KINDS`)."""
    if kind == "mla":
        if not d_latent or not d_rope:
            raise ValueError(f"mla needs d_latent and d_rope > 0, got {d_latent}, {d_rope}")
        return MultiHeadLatentAttention(d_model, n_heads, head_dim, d_latent, d_rope,
                                        rope_mode, rope_base)
    groups = {"mha": n_heads, "mqa": 1, "gqa": n_kv_heads}.get(kind, -1)
    if groups == -1:
        raise ValueError(f"unknown attention kind {kind!r}; expected one of {ATTENTION_KINDS}")
    if groups is None:
        raise ValueError("gqa needs n_kv_heads (the number of key/value groups g)")
    return GroupedQueryAttention(d_model, n_heads, groups, head_dim, rope_mode, rope_base)

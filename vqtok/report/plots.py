"""The report's figures, each returned as PNG bytes.

Figures are drawn on :class:`matplotlib.figure.Figure` objects with the Agg canvas (no
pyplot, no global state, no display needed) and fixed margins (a layout engine would
draw every figure twice); PNGs carry no software metadata. Big
codebooks are thinned only where a plot cannot show more than a screen's worth: the heat
map averages rows into at most ``max_rows`` bins, the PCA scatter draws at most
``max_points`` codes (a fixed random subset).
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image

from vqtok.report.history import RunHistory

_DPI = 100


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=_DPI, metadata={"Software": None})
    return buffer.getvalue()


def training_curves(runs: Sequence[RunHistory], normalised: bool = False) -> bytes:
    """Validation usage (%), perplexity (or normalised entropy when ``normalised``) and
    PSNR against the training step, one line per run; a single run also gets its
    per-training-batch usage and perplexity (which cannot exceed batch ids / K)."""
    fig = Figure(figsize=(13, 3.6))
    fig.subplots_adjust(left=0.05, right=0.99, bottom=0.14, top=0.9, wspace=0.25)
    ax_use, ax_ppl, ax_psnr = fig.subplots(1, 3)
    second = "normalized_entropy" if normalised else "perplexity"
    for run in runs:
        steps = [v["step"] for v in run.validations]
        ax_use.plot(steps, [100 * v["usage"] for v in run.validations], "o-", label=run.name)
        ax_ppl.plot(steps, [v[second] for v in run.validations], "o-", label=run.name)
        psnr = [(s, v["psnr"]) for s, v in zip(steps, run.validations) if v["psnr"] is not None]
        if psnr:
            ax_psnr.plot(*zip(*psnr), "o-", label=run.name)
    if len(runs) == 1 and runs[0].train:
        train = runs[0].train
        label = f"per training batch (at most {train[-1]['batch_ids']:,} ids)"
        ax_use.plot([t["step"] for t in train], [100 * t["batch_usage"] for t in train],
                    color="0.6", lw=1, label=label)
        if not normalised:
            ax_ppl.plot([t["step"] for t in train], [t["batch_perplexity"] for t in train],
                        color="0.6", lw=1, label=label)
    ax_use.set(title="codebook usage (validation)", xlabel="step", ylabel="codes used (%)")
    ax_ppl.set(title=f"{second.replace('_', ' ')} (validation)", xlabel="step",
               ylabel="normalised entropy" if normalised else "perplexity")
    ax_psnr.set(title="PSNR (validation)", xlabel="step", ylabel="dB")
    for ax in (ax_use, ax_ppl, ax_psnr):
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return _png(fig)


def sorted_frequencies(items: Sequence[tuple[str, np.ndarray]]) -> bytes:
    """Code frequencies n_k / sum n, sorted from most to least used, on log-log axes (never
    used codes cannot appear on a log axis: the line stops at the last used rank)."""
    fig = Figure(figsize=(6.4, 4.2))
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.12, top=0.9)
    ax = fig.subplots()
    for name, counts in items:
        share = np.sort(counts[counts > 0])[::-1] / counts.sum()
        ax.loglog(np.arange(1, share.size + 1), share, label=f"{name} ({share.size:,} used)")
        if len(items) == 1:
            k = counts.shape[0]
            ax.axhline(1.0 / k, color="0.5", ls="--", lw=1, label=f"uniform over {k:,} codes")
    ax.set(title="sorted code frequencies (last validation)", xlabel="rank",
           ylabel="share of tokens")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    return _png(fig)


def binned_shares(counts: np.ndarray, max_rows: int) -> np.ndarray:
    """``(V, K)`` counts -> ``(min(K, max_rows), V)`` share of each validation run's tokens
    per code, codes sorted by final use (descending, ties by id) and averaged over
    consecutive bins of near-equal size."""
    k = counts.shape[1]
    order = np.lexsort((np.arange(k), -counts[-1]))  # final use descending, then id
    share = (counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)).T[order]  # (K, V)
    edges = np.linspace(0, k, min(max_rows, k) + 1).round().astype(int)
    return np.add.reduceat(share, edges[:-1], axis=0) / np.diff(edges)[:, None]


def usage_heatmap(counts: np.ndarray, steps: Sequence[int | None], max_rows: int = 512) -> bytes:
    """Share of tokens per code (log10) at each validation run; rows are codes sorted by
    their final use (most used on top), averaged into at most ``max_rows`` bins."""
    v, k = counts.shape
    binned = binned_shares(counts, max_rows)  # (bins, V)
    bins = binned.shape[0]
    with np.errstate(divide="ignore"):
        logged = np.where(binned > 0, np.log10(binned), np.nan)
    fig = Figure(figsize=(6.4, 4.6))
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.12, top=0.9)
    ax = fig.subplots()
    image = ax.imshow(np.ma.masked_invalid(logged), aspect="auto", interpolation="nearest",
                      cmap="viridis", extent=(-0.5, v - 0.5, k, 0))
    ax.set_facecolor("0.85")  # never used: grey
    ax.set_xticks(range(v), [str(s) if s is not None else "-" for s in steps],
                  rotation=90 if v > 12 else 0, fontsize=7)
    ax.set(title="per-code usage over validation runs (grey: unused)", xlabel="step",
           ylabel=f"codes sorted by final use ({k:,})")
    fig.colorbar(image, ax=ax, label="log10 share of tokens" + (" (bin mean)" if bins < k else ""))
    return _png(fig)


def codebook_pca(xy: np.ndarray, counts: np.ndarray, title: str,
                 max_points: int = 50_000) -> bytes:
    """Codes on their two leading principal axes, coloured by log10 of their final
    validation count; never used codes in grey."""
    k = xy.shape[0]
    keep = np.arange(k)
    if k > max_points:
        keep = np.sort(np.random.default_rng(0).choice(k, max_points, replace=False))
    used = counts[keep] > 0
    fig = Figure(figsize=(6.4, 5.0))
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.12, top=0.9)
    ax = fig.subplots()
    size = 4 if keep.size > 5000 else 12
    ax.scatter(xy[keep][~used, 0], xy[keep][~used, 1], s=size, c="0.75", lw=0,
               label=f"never used ({int((counts == 0).sum()):,})", rasterized=True)
    if used.any():
        points = ax.scatter(xy[keep][used, 0], xy[keep][used, 1], s=size, lw=0,
                            c=np.log10(counts[keep][used]), cmap="viridis",
                            label=f"used ({int((counts > 0).sum()):,})", rasterized=True)
        fig.colorbar(points, ax=ax, label="log10 validation count")
    shown = "" if keep.size == k else f", {keep.size:,} of {k:,} codes shown"
    ax.set(title=f"{title} in 2-D PCA{shown}", xlabel="PC 1", ylabel="PC 2")
    ax.legend(fontsize=7, markerscale=2)
    return _png(fig)


def nn_distances(distances: np.ndarray, used: np.ndarray, duplicates: int) -> bytes:
    """Histogram of each code's distance to its nearest other code, used and never used
    codes stacked; duplicate codes pile up at 0."""
    fig = Figure(figsize=(6.4, 4.0))
    fig.subplots_adjust(left=0.13, right=0.97, bottom=0.12, top=0.9)
    ax = fig.subplots()
    top = float(distances.max()) if distances.size and distances.max() > 0 else 1.0
    ax.hist([distances[used], distances[~used]], bins=60, range=(0.0, top), stacked=True,
            color=["tab:blue", "0.7"],
            label=[f"used ({int(used.sum()):,})", f"never used ({int((~used).sum()):,})"])
    ax.set(title=f"nearest-neighbour distance between codes ({duplicates:,} duplicates)",
           xlabel="Euclidean distance to the nearest other code", ylabel="codes")
    ax.legend(fontsize=7)
    return _png(fig)


def image_grid(originals: np.ndarray, reconstructions: np.ndarray, min_side: int = 96) -> bytes:
    """Originals (top row) over their reconstructions (bottom row), uint8 ``(n, H, W, C)``
    with C 1 or 3, scaled up by an integer factor (nearest) to at least ``min_side``."""
    n, h, w, c = originals.shape
    scale = max(1, -(-min_side // min(h, w)))
    gap = 4
    canvas = np.full((2 * h + gap, n * (w + gap) - gap, c), 255, dtype=np.uint8)
    for i in range(n):
        left = i * (w + gap)
        canvas[:h, left:left + w] = originals[i]
        canvas[h + gap:, left:left + w] = reconstructions[i]
    image = Image.fromarray(canvas[..., 0] if c == 1 else canvas)
    image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()

"""Decoder benchmarks: KV-cache size per attention kind and cached generation speed.

1. KV-cache bytes per token per layer for MHA, GQA, MQA and MLA at one model size, measured
   from the cache tensors after a prefill, next to the formula of docs/algorithms.md#attention-variants
   (MHA 2 h d_k; GQA 2 g d_k; MQA 2 d_k; MLA d_c + d_r elements).
2. Generation of 512 new tokens with the KV cache vs recomputing the whole sequence every
   step (``generate(use_cache=False)``), median of a few runs with ``torch.set_num_threads(2)``.

Run: ``.venv/bin/python benchmarks/decoder.py`` (about 15 minutes with ``--threads 1`` on a
busy 2-core machine; ``--runs 1`` for a quicker look). Writes ``benchmarks/RESULTS_decoder.md`` unless ``--out``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import torch

from vqtok.lm import LMConfig, MultimodalLM, Vocabulary, build_stream

KINDS = ("mha", "gqa", "mqa", "mla")
SIZE = {"d_model": 256, "n_layers": 4, "n_heads": 8, "head_dim": 32}
GROUPS, D_LATENT, D_ROPE = 2, 128, 16  # GQA g; MLA d_c = 4 d_k, d_r = d_k / 2 (DeepSeek-V2)


def model_for(kind: str, vocab: Vocabulary, size: dict[str, int]) -> MultimodalLM:
    torch.manual_seed(0)
    cfg = LMConfig(vocab_size=vocab.size, attention=kind, n_kv_heads=GROUPS,
                        d_latent=D_LATENT, d_rope=D_ROPE, **size)
    return MultimodalLM(cfg).eval()


def formula(kind: str, size: dict[str, int]) -> tuple[str, int]:
    h, d_k = size["n_heads"], size["head_dim"]
    return {
        "mha": ("2 h d_k", 2 * h * d_k),
        "gqa": ("2 g d_k", 2 * GROUPS * d_k),
        "mqa": ("2 d_k", 2 * d_k),
        "mla": ("d_c + d_r", D_LATENT + D_ROPE),
    }[kind]


def cache_table(vocab: Vocabulary) -> list[str]:
    prompt = build_stream(["a photo of an ankle boot", torch.zeros(8, 8, dtype=torch.long)], vocab)
    rows = ["| kind | formula | elements | formula bytes (fp32) | measured bytes | vs MHA |",
            "|---|---|---:|---:|---:|---:|"]
    mha_bytes = None
    for kind in KINDS:
        model = model_for(kind, vocab, SIZE)
        cache = model.new_cache()
        with torch.no_grad():
            model(prompt.ids[None], prompt.positions[None], cache=cache)
        measured = cache.bytes_per_token_per_layer()
        text, elements = formula(kind, SIZE)
        mha_bytes = mha_bytes or measured
        rows.append(f"| {kind} | {text} | {elements} | {4 * elements} | {measured:.0f} | "
                    f"{measured / mha_bytes:.3f} |")
    return rows


def time_generation(model: MultimodalLM, vocab: Vocabulary, new_tokens: int,
                    use_cache: bool, runs: int) -> float:
    prompt = build_stream(["a photo of an ankle boot"], vocab)
    times = []
    for run in range(runs):
        g = torch.Generator().manual_seed(run)
        start = time.perf_counter()
        model.generate(prompt.ids[None], prompt.positions[None], new_tokens, generator=g,
                       use_cache=use_cache)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def speed_table(vocab: Vocabulary, new_tokens: int, runs: int) -> list[str]:
    rows = ["| kind | cached (s) | recompute (s) | speed-up | target >= 5x |",
            "|---|---:|---:|---:|---|"]
    for kind in KINDS:
        model = model_for(kind, vocab, SIZE)
        cached = time_generation(model, vocab, new_tokens, True, runs)
        full = time_generation(model, vocab, new_tokens, False, runs)
        ratio = full / cached
        rows.append(f"| {kind} | {cached:.2f} | {full:.2f} | {ratio:.1f}x | "
                    f"{'met' if ratio >= 5 else 'NOT met'} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--new-tokens", type=int, default=512)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).with_name("RESULTS_decoder.md"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    vocab = Vocabulary(image_codebook_size=1024)
    size = ", ".join(f"{k}={v}" for k, v in SIZE.items())
    lines = [
        "## Decoder: KV cache and cached generation",
        "",
        (f"Model: {size}, vocabulary {vocab.size} (256 bytes + 1024 image codes + 7 specials), "
         f"GQA g={GROUPS}, MLA d_c={D_LATENT}, d_r={D_ROPE}, RoPE-Tie-v2, float32. "
         f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
         f"torch.set_num_threads({args.threads}), {os.cpu_count()} cores."),
        "",
        ("KV-cache bytes per token per layer, measured from the cache tensors after a prefill "
         "(BOS + 24 text bytes + an 8x8 image), next to the formula of docs/algorithms.md#attention-variants:"),
        "",
        *cache_table(vocab),
        "",
        (f"Generation of {args.new_tokens} new tokens after a 25-token prompt, median of "
         f"{args.runs} runs: KV cache vs recomputing the whole sequence every step:"),
        "",
        *speed_table(vocab, args.new_tokens, args.runs),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    args.out.write_text(text)


if __name__ == "__main__":
    main()

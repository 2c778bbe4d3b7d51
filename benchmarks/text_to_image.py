"""Text-to-image quality: do generated images show the class the prompt names?

1. A small CNN is trained on the Fashion-MNIST training split (its test accuracy is
   reported); it is the judge.
2. A decoder is trained on the caption + image streams (RoPE-Tie-v2), or loaded with
   ``--decoder``, and exported to ``--export`` (``checkpoints/decoder_fmnist``).
3. For each of the 10 class prompts, ``--per-class`` images are generated with the
   constrained ``generate_image`` (always an 8 x 8 grid) and decoded by the tokenizer; the
   judge labels them. Agreement = share labelled as the prompted class (target >= 70%).
   As a ceiling, the judge also labels the tokenizer's reconstructions of real test images.

Run: ``.venv/bin/python benchmarks/text_to_image.py --tokenizer checkpoints/fmnist_fsq``.
Replaces its own section of ``benchmarks/RESULTS_decoder.md`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decoder_ablation import (
    add_common_arguments,
    environment,
    quiet,
    train_decoder,
    update_section,
)

from vqtok.data import FashionMNIST
from vqtok.lm import generate_image
from vqtok.lm.captions import expand_prompt
from vqtok.lm.lm_dir import load_lm_dir
from vqtok.tokenizers import ImageTokenizer

HEADING = "## Decoder: text-to-image agreement"
log = logging.getLogger("text_to_image")


class Judge(nn.Module):
    """Three 3x3 conv blocks and a linear head: 32 x 32 grey in [-1, 1] -> 10 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # (32, 16, 16)
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (64, 8, 8)
            nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (64, 4, 4)
        )
        self.head = nn.Linear(64 * 16, 10)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).flatten(1))


def images_and_labels(root: str | None, split: str) -> tuple[Tensor, Tensor]:
    data = FashionMNIST(root, split, pad_to=32)
    return data.normalization.to_model(data.images.unsqueeze(1)), data.labels  # (N, 1, 32, 32)


@torch.no_grad()
def predict(judge: Judge, x: Tensor, batch: int = 500) -> Tensor:
    judge.eval()
    return torch.cat([judge(x[i:i + batch]).argmax(-1) for i in range(0, len(x), batch)])


def get_judge(args: argparse.Namespace) -> tuple[Judge, float, str]:
    """The classifier (trained here, or read from ``--judge-cache``) and its test accuracy."""
    judge = Judge()
    cache = Path(args.judge_cache)
    if cache.is_file():
        judge.load_state_dict(load_file(str(cache)), strict=True)
        origin = (f"trained by this script's `get_judge` ({args.judge_epochs} epochs of Adam, "
                  f"lr 1e-3, batch 128, seed 0, on the 60,000 training images) and cached in "
                  f"`{cache}`")
    else:
        torch.manual_seed(0)
        x, y = images_and_labels(args.data_root, "train")
        opt = torch.optim.Adam(judge.parameters(), lr=1e-3)
        start = time.perf_counter()
        for epoch in range(args.judge_epochs):
            judge.train()
            order = torch.randperm(len(x))
            for i in range(0, len(x), 128):
                idx = order[i:i + 128]
                xb = x[idx]
                if args.judge_shift:  # random shifts of up to 2 px: robust to small offsets
                    dx, dy = torch.randint(-2, 3, (2,)).tolist()
                    xb = torch.roll(xb, (dy, dx), dims=(2, 3))
                loss = F.cross_entropy(judge(xb), y[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
            log.info("judge epoch %d done (%.0f s)", epoch + 1, time.perf_counter() - start)
        cache.parent.mkdir(parents=True, exist_ok=True)
        save_file(judge.state_dict(), str(cache))
        origin = (f"trained here: {args.judge_epochs} epochs of Adam (lr 1e-3, batch 128) on the "
                  f"60,000 training images")
    x_test, y_test = images_and_labels(args.data_root, "test")
    accuracy = (predict(judge, x_test) == y_test).float().mean().item()
    return judge, accuracy, origin


def reconstruction_ceiling(judge: Judge, tokenizer: ImageTokenizer, root: str, n: int
                           ) -> tuple[float, list[float]]:
    """Judge accuracy on tokenizer reconstructions of the first ``n`` test images: overall
    and per class."""
    x, y = images_and_labels(root, "test")
    ids = tokenizer.encode(x[:n], batch_size=250)
    recon = tokenizer.decode_to_tensor(ids, batch_size=250).clamp(-1, 1)
    right = predict(judge, recon) == y[:n]
    per_class = [right[y[:n] == c].float().mean().item() for c in range(10)]
    return right.float().mean().item(), per_class


def sample_sheet(rows: list[Tensor], path: Path) -> None:
    """One row of decoded samples per class, ``(n, 1, 32, 32)`` each, as one grey PNG."""
    sheet = torch.cat([torch.cat(list(r[:, 0]), dim=1) for r in rows], dim=0)  # (10*32, n*32)
    pixels = ((sheet.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    Image.fromarray(pixels).save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser, steps=800, d_model=128, layers=4, warmup=50)
    parser.add_argument("--decoder", default=None, help="evaluate this decoder, no training")
    parser.add_argument("--export", default="checkpoints/decoder_fmnist")
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--settings", nargs="+", default=["1.0:0", "0.7:0"],
                        help="sampling settings TEMPERATURE:TOP_K (0 = no top-k); the first "
                             "is the headline and the sample sheet")
    parser.add_argument("--judge-cache", default="runs/fmnist_judge.safetensors")
    parser.add_argument("--judge-epochs", type=int, default=2)
    parser.add_argument("--judge-shift", action="store_true")
    parser.add_argument("--ceiling-images", type=int, default=1000)
    parser.add_argument("--samples-png", type=Path,
                        default=Path(__file__).with_name("text_to_image_samples.png"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    quiet()
    env = environment(args.threads)

    judge, judge_acc, judge_origin = get_judge(args)
    log.info("judge test accuracy %.4f", judge_acc)
    tokenizer = ImageTokenizer.from_pretrained(args.tokenizer)
    ceiling, class_ceiling = reconstruction_ceiling(judge, tokenizer, args.data_root,
                                                    args.ceiling_images)
    log.info("judge accuracy on tokenizer reconstructions %.4f", ceiling)

    if args.decoder:
        model, vocab, config = load_lm_dir(args.decoder)
        extra = config.get("extra", {})
        made = {k: extra[k] for k in ("produced_by", "val_image_loss") if k in extra}
        provenance = f"Decoder read from `{args.decoder}` ({json.dumps(made)})"
    else:
        module, data, metrics = train_decoder(args, "rope_tie_v2", args.seed)
        command = (f".venv/bin/python benchmarks/text_to_image.py --tokenizer {args.tokenizer} "
                   f"--steps {args.steps} --batch-size {args.batch_size} --d-model "
                   f"{args.d_model} --layers {args.layers} --heads {args.heads} --lr {args.lr} "
                   f"--warmup {args.warmup} --seed {args.seed}")
        info = {"produced_by": command, "steps": args.steps, "batch_size": args.batch_size,
                "val_image_loss": metrics["val/image_loss"], "val_loss": metrics["val/loss"]}
        module.export(args.export, data, extra=info)
        model, vocab, config = load_lm_dir(args.export)
        provenance = (f"Decoder trained here for {args.steps} steps of {args.batch_size} "
                      f"streams in {metrics['train_s']:.0f} s (d_model={args.d_model}, "
                      f"{args.layers} layers, {args.heads} heads, RoPE-Tie-v2; val image loss "
                      f"{metrics['val/image_loss']:.4f}), exported to `{args.export}` "
                      f"(`{command}`)")
    log.info("%s", provenance)

    labels = config["extra"]["labels"] if "labels" in config.get("extra", {}) else [
        c.lower() for c in FashionMNIST.CLASSES]
    h, w = config["image_tokens"]
    table: dict[str, list[float]] = {}
    gen_seconds = 0.0
    for number, setting in enumerate(args.settings):
        temperature, top_k = float(setting.split(":")[0]), int(setting.split(":")[1]) or None
        generator = torch.Generator().manual_seed(args.seed)
        rows, agreement = [], []
        for c, label in enumerate(labels):
            caption = expand_prompt(label, config["caption_template"])
            start = time.perf_counter()
            grids = generate_image(model, vocab, [caption] * args.per_class, h, w,
                                   temperature=temperature, top_k=top_k, generator=generator)
            gen_seconds += time.perf_counter() - start
            images = tokenizer.decode_to_tensor(grids).clamp(-1, 1)  # (n, 1, 32, 32)
            agreement.append((predict(judge, images) == c).float().mean().item())
            rows.append(images)
        table[setting] = agreement
        log.info("T=%g top_k=%s: overall %.3f per class %s", temperature, top_k,
                 float(np.mean(agreement)), [round(a, 2) for a in agreement])
        if number == 0:
            sample_sheet([r[:10] for r in rows], args.samples_png)

    header = "| class | " + " | ".join(
        f"T={s.split(':')[0]}" + (f", top-k {s.split(':')[1]}" if s.split(":")[1] != "0" else "")
        for s in args.settings) + " | ceiling: judge on reconstructions |"
    lines = [header, "|---|" + "---:|" * (len(args.settings) + 1)]
    for c, label in enumerate(labels):
        lines.append(f"| {label} | " + " | ".join(f"{100 * table[s][c]:.0f}%" for s in
                                                  args.settings)
                     + f" | {100 * class_ceiling[c]:.0f}% |")
    overall = [float(np.mean(table[s])) for s in args.settings]
    lines.append("| **overall** | " + " | ".join(f"**{100 * o:.1f}%**" for o in overall)
                 + f" | {100 * ceiling:.1f}% |")
    head = overall[0]
    text = "\n".join([
        HEADING, "",
        (f"Judge: a 3-layer CNN, {judge_origin}; Fashion-MNIST test accuracy "
         f"**{100 * judge_acc:.2f}%**; on the tokenizer's reconstructions of the first "
         f"{args.ceiling_images} test images {100 * ceiling:.1f}% (the ceiling for generated "
         f"images). Tokenizer `{args.tokenizer}`. {provenance}. {env}."), "",
        (f"{args.per_class} images per class prompt (`a photo of a(n) <class>`), generated with "
         f"the constrained `generate_image` (BOI, 8x8 codes, EOI), decoded by the tokenizer and "
         f"labelled by the judge; agreement = share labelled as the prompted class "
         f"(target >= 70% overall: **{'met' if head >= 0.7 else 'NOT met'}**, "
         f"{100 * head:.1f}% with the first setting). Generation took {gen_seconds:.0f} s for "
         f"{len(args.settings) * 10 * args.per_class} images (KV cache). Samples of the first "
         f"setting (one row per class, in the table's order): "
         f"`benchmarks/{args.samples_png.name}`."), "",
        *lines, "",
    ])
    print(text)
    update_section(args.out, HEADING, text)


if __name__ == "__main__":
    main()

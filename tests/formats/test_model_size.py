"""A model directory's config.json cannot make vqtok allocate a model its weights file does
not hold: sizes within every per-argument cap still multiply, so the model is first built
on the meta device and compared with the safetensors header (and MAX_MODEL_BYTES).

Each hostile directory is a small valid one whose config.json asks for a larger model.
They are loaded in a subprocess whose address space is capped a little above what it
uses after importing vqtok, so a loader that allocated the described model before
refusing it fails there instead of answering with the expected one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import ROOT, tiny_model
from vqtok.formats import model_dir
from vqtok.formats.tokenizer_dir import save_tokenizer_dir
from vqtok.lm import LMConfig, MultimodalLM, Vocabulary
from vqtok.lm.lm_dir import save_lm_dir
from vqtok.models import VideoDecoder, VideoEncoder, VQAutoencoder
from vqtok.quantizers import FSQ

HEADROOM = 256 << 20
"""Bytes the loading subprocess may allocate beyond what it holds after its imports."""

LOADER = f"""
import resource, sys, torch
torch.set_num_threads(1)
from vqtok.lm.lm_dir import load_lm_dir
from vqtok.formats.tokenizer_dir import load_tokenizer_dir
for line in open("/proc/self/status"):
    if line.startswith("VmSize:"):
        size = int(line.split()[1]) * 1024
limit = size + {HEADROOM}
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
for kind, folder in zip(sys.argv[1::2], sys.argv[2::2]):
    try:
        (load_lm_dir if kind == "decoder" else load_tokenizer_dir)(folder)
        print("loaded")
    except ValueError as err:
        print(err)
    except BaseException as err:  # what a loader that allocates gets under the limit
        print("UNEXPECTED", type(err).__name__, " ".join(str(err).split()))
print("imported torch._dynamo" if "torch._dynamo" in sys.modules else "no torch._dynamo")
"""


def edit(folder: Path, change) -> Path:
    config = json.loads((folder / "config.json").read_text())
    change(config)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def widen(channels: int, blocks: int):
    """A change to a tokenizer config: encoder and decoder levels all ``channels`` wide
    (their number kept) with ``blocks`` residual blocks, each within the documented caps."""
    def change(config: dict) -> None:
        for role in ("encoder", "decoder"):
            args = config[role]["init_args"]
            args.update(channels=channels, num_res_blocks=blocks,
                        channel_mult=[1] * len(args["channel_mult"]))
    return change


def deepen(d_model: int, n_layers: int):
    def change(config: dict) -> None:
        config["decoder"]["init_args"]["config"].update(d_model=d_model, n_layers=n_layers)
    return change


@pytest.fixture(scope="module")
def answers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """What loading each hostile directory says, one line each, from one subprocess."""
    root = tmp_path_factory.mktemp("hostile")
    torch.manual_seed(0)
    kw = {"channels": 4, "channel_mult": (1, 2, 2, 2), "dim": 4, "num_groups": 2}
    video = VQAutoencoder(VideoEncoder(in_channels=1, **kw), FSQ(levels=[5, 5, 5, 5], dim=4),
                          VideoDecoder(out_channels=1, **kw))
    vocab = Vocabulary(image_codebook_size=12)
    decoder = MultimodalLM(LMConfig(vocab_size=vocab.size, d_model=16, n_layers=1,
                                              n_heads=2))
    cases = {
        # 628 GB of parameters, every argument within its cap
        "image over the cap": ("tokenizer", edit(save_tokenizer_dir(
            tiny_model(), root / "a"), widen(8192, 64))),
        # 756 MB, under the cap, but not what model.safetensors holds
        "image not the file": ("tokenizer", edit(save_tokenizer_dir(
            tiny_model(), root / "b"), widen(1024, 4))),
        "video over the cap": ("tokenizer", edit(save_tokenizer_dir(
            video, root / "c"), widen(8192, 64))),
        "video not the file": ("tokenizer", edit(save_tokenizer_dir(  # 524 MB
            video, root / "d"), widen(256, 4))),
        "decoder over the cap": ("decoder", edit(save_lm_dir(
            decoder, vocab, root / "e", (2, 2), caption_template=None), deepen(16384, 512))),
        "decoder not the file": ("decoder", edit(save_lm_dir(  # 1.6 GB
            decoder, vocab, root / "f", (2, 2), caption_template=None), deepen(2048, 8))),
        "image as saved": ("tokenizer", save_tokenizer_dir(tiny_model(), root / "g")),
        "video as saved": ("tokenizer", save_tokenizer_dir(video, root / "h")),
        "decoder as saved": ("decoder", save_lm_dir(decoder, vocab, root / "i", (2, 2),
                                                         caption_template=None)),
    }
    argv = [str(item) for kind, folder in cases.values() for item in (kind, folder)]
    done = subprocess.run([sys.executable, "-c", LOADER, *argv], check=False,
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    *lines, imports = done.stdout.strip().splitlines()
    assert len(lines) == len(cases), done.stdout
    return {**dict(zip(cases, lines)), "imports": imports}


@pytest.mark.parametrize("case", ["image", "video", "decoder"])
def test_a_config_over_the_size_cap_is_refused_before_allocating(answers: dict[str, str],
                                                                 case: str) -> None:
    answer = answers[f"{case} over the cap"]
    what = "language model" if case == "decoder" else "tokenizer"
    assert f"config.json: describes a {what} of " in answer, answer
    assert f"over the {model_dir.MAX_MODEL_BYTES:,} a {what} directory may hold" in answer


@pytest.mark.parametrize("case", ["image", "video", "decoder"])
def test_a_config_that_is_not_its_weights_file_is_refused_before_allocating(
        answers: dict[str, str], case: str) -> None:
    answer = answers[f"{case} not the file"]
    what = "language model" if case == "decoder" else "tokenizer"
    assert (f"model.safetensors: weights do not match the {what} that config.json describes"
            in answer), answer


def test_directories_as_saved_load_under_the_same_limit(answers: dict[str, str]) -> None:
    assert [answers[f"{kind} as saved"] for kind in ("image", "video", "decoder")] == [
        "loaded"] * 3
    # sizing on the meta device stays off PyTorch's Python kernels, which would import
    # torch._dynamo (seconds of start-up)
    assert answers["imports"] == "no torch._dynamo"

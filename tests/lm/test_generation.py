"""`vqtok lm fit` and `vqtok generate` end to end on tiny models, and their errors."""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import needs_fashion_mnist
from tests.lm.test_train import tiny_tokenizer_dir
from vqtok.cli import LM_COMMANDS, build_parser
from vqtok.lm import LMConfig, MultimodalLM, Vocabulary, generate_image
from vqtok.lm.captions import expand_prompt
from vqtok.lm.cli import run_lm_cli
from vqtok.lm.command import output_paths
from vqtok.lm.lm_dir import load_lm_dir, save_lm_dir
from vqtok.tokenizers import ImageTokenizer

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = "a photo of a {label}"


def parse(argv: list[str]) -> argparse.Namespace:
    return build_parser().parse_args(argv)  # the real `vqtok` parser


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A random tiny tokenizer (64 codes, 4x downsampling) and a random tiny LM that
    writes 4 x 4 grids (16 x 16 pixel images)."""
    tmp = tmp_path_factory.mktemp("generate")
    tok = tiny_tokenizer_dir(tmp / "tok")
    vocab = Vocabulary(image_codebook_size=64)
    torch.manual_seed(0)
    model = MultimodalLM(LMConfig(vocab_size=vocab.size, d_model=16, n_layers=1,
                                            n_heads=2, init_std=0.5))
    dec = save_lm_dir(model, vocab, tmp / "dec", (4, 4), caption_template=TEMPLATE)
    return tok, dec


def generate(dirs: tuple[Path, Path], out: Path, *extra: str, prompt: str = "ankle boot"
             ) -> int:
    tok, dec = dirs
    args = parse(["generate", "--lm", str(dec), "--tokenizer", str(tok), "--prompt", prompt,
                  "--out", str(out), *extra])
    return args.func(args).status


def test_expand_prompt_and_output_paths() -> None:
    assert expand_prompt(" Ankle boot ", TEMPLATE) == "a photo of an ankle boot"
    assert expand_prompt("a photo of a bag", TEMPLATE) == "a photo of a bag"  # already one
    assert expand_prompt("bag", None) == "bag"
    assert output_paths("x/out.png", 1) == [Path("x/out.png")]
    assert output_paths("x/out.png", 2) == [Path("x/out_000.png"), Path("x/out_001.png")]


def test_generate_writes_the_decoded_grid(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    tok_dir, dec_dir = dirs
    out = tmp_path / "sub" / "boot.png"
    assert generate(dirs, out, "--seed", "3", "--top-k", "10") == 0
    image = Image.open(out)
    assert image.size == (16, 16) and image.mode == "L"  # 4 x 4 tokens, factor 4, grey
    # The same image, built by hand: the templated caption, the same seed, then decoding.
    model, vocab, _ = load_lm_dir(dec_dir)
    grid = generate_image(model, vocab, ["a photo of an ankle boot"], 4, 4, top_k=10,
                          generator=torch.Generator().manual_seed(3))
    expected = ImageTokenizer.from_pretrained(tok_dir).decode(grid)[0]
    assert np.array_equal(np.asarray(image), np.asarray(expected))


def test_generate_several_images_is_seeded(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    assert generate(dirs, tmp_path / "a.png", "--num", "3", "--seed", "1") == 0
    assert generate(dirs, tmp_path / "b.png", "--num", "3", "--seed", "1") == 0
    assert generate(dirs, tmp_path / "c.png", "--num", "3", "--seed", "2") == 0
    a, b, c = ([np.asarray(Image.open(tmp_path / f"{s}_{i:03d}.png")) for i in range(3)]
               for s in "abc")
    assert all(x.shape == (16, 16) for x in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c))
    assert not (tmp_path / "a.png").exists()


@pytest.mark.parametrize("prompt", ["", "   "])
def test_empty_prompt_is_refused(dirs: tuple[Path, Path], tmp_path: Path, prompt: str) -> None:
    with pytest.raises(ValueError, match="prompt must be non-empty text"):
        generate(dirs, tmp_path / "x.png", prompt=prompt)
    assert not (tmp_path / "x.png").exists()


def test_the_first_spellings_of_the_command_still_parse() -> None:
    """`vqtok generate --decoder` and `vqtok decoder fit` are `--lm` and `vqtok lm fit`."""
    words = ["--tokenizer", "T", "--prompt", "p", "--out", "o.png"]
    assert parse(["generate", "--decoder", "D", *words]).lm == "D"
    assert parse(["generate", "--lm", "D", *words]).lm == "D"
    assert LM_COMMANDS == ("lm", "decoder")


def test_bad_lm_directories(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    tok, _ = dirs
    with pytest.raises(ValueError, match="nowhere: not a language model directory"):
        generate((tok, tmp_path / "nowhere"), tmp_path / "x.png")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="config.json: not valid JSON"):
        generate((tok, broken), tmp_path / "x.png")
    with pytest.raises(ValueError, match="a vqtok language model directory"):  # a tokenizer instead
        generate((tok, tok), tmp_path / "x.png")


def test_decoder_of_another_codebook_is_refused(dirs: tuple[Path, Path], tmp_path: Path) -> None:
    tok, _ = dirs
    vocab = Vocabulary(image_codebook_size=27)
    model = MultimodalLM(LMConfig(vocab_size=vocab.size, d_model=16, n_layers=1,
                                            n_heads=2))
    dec = save_lm_dir(model, vocab, tmp_path / "dec27", (4, 4))
    with pytest.raises(ValueError, match="codebook of 27 but tokenizer .* has 64 codes"):
        generate((tok, dec), tmp_path / "x.png")


@needs_fashion_mnist
def test_decoder_fit_exports_a_decoder_that_generates(tmp_path: Path) -> None:
    tok = tiny_tokenizer_dir(tmp_path / "tok")
    export = tmp_path / "decoder"
    cli = run_lm_cli([
        "fit", f"--config={ROOT / 'experiments' / 'decoder' / 'fmnist.yaml'}",
        f"--data.tokenizer={tok}", "--data.limit_train=8",
        "--data.val_size=4", "--data.batch_size=4", f"--data.cache_dir={tmp_path / 'cache'}",
        "--model.config.d_model=16", "--model.config.n_layers=1",
        "--model.config.n_heads=2", "--model.config.position_scheme=mrope",
        "--trainer.max_steps=2", "--trainer.val_check_interval=2",
        "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false", f"--trainer.logger.init_args.save_dir={tmp_path}",
        f"--trainer.default_root_dir={tmp_path}", f"--export_dir={export}",
    ])
    assert cli.trainer.global_step == 2
    assert cli.datamodule.position_scheme == "mrope"  # linked from the model
    assert torch.isfinite(cli.trainer.callback_metrics["val/image_loss"])
    model, vocab, config = load_lm_dir(export)
    assert config["image_tokens"] == [8, 8] and vocab.image_codebook_size == 64
    assert config["extra"]["labels"][9] == "ankle boot"
    assert model.config.position_scheme == "mrope" and model.config.d_model == 16
    for ckpt in tmp_path.rglob("*.ckpt"):
        torch.load(ckpt, map_location="cpu", weights_only=True)
    out = tmp_path / "boot.png"
    assert generate((tok, export), out) == 0
    assert Image.open(out).size == (32, 32)

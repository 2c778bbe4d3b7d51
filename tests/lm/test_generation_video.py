"""Caption + video streams: the data module with a video tokenizer, `vqtok decoder fit` on
them, and `vqtok generate --video` writing animated GIFs, on tiny random models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence

from tests.data.test_moving_fmnist import write_sprites
from tests.lm.test_generation import ROOT, parse
from vqtok.data import MovingFashionMNIST
from vqtok.formats.tokenizer_dir import fingerprint
from vqtok.lm import LMConfig, MultimodalLM, Vocabulary, generate_video
from vqtok.lm.cli import run_lm_cli
from vqtok.lm.data import CaptionImageDataModule
from vqtok.lm.lm_dir import load_lm_dir, save_lm_dir
from vqtok.models import VideoDecoder, VideoEncoder, VQAutoencoder
from vqtok.quantizers import FSQ
from vqtok.tokenizers import VideoTokenizer

NET = {"channels": 8, "channel_mult": (1, 2, 2), "num_res_blocks": 1, "dim": 4,
       "temporal_factor": 4, "num_groups": 4}
"""4x in space and in time: 5 frames of 16 x 16 are 2 x 4 x 4 tokens."""


def tiny_video_tokenizer(path: Path, seed: int = 0) -> Path:
    torch.manual_seed(seed)
    model = VQAutoencoder(VideoEncoder(in_channels=1, **NET), FSQ(levels=[4, 4, 4], dim=4),
                          VideoDecoder(out_channels=1, **NET))
    return VideoTokenizer(model.eval()).save_pretrained(path)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny video tokenizer (64 codes) and a random decoder trained (nominally) on
    2 x 4 x 4 grids, 5-frame clips of 16 x 16."""
    tmp = tmp_path_factory.mktemp("generate_video")
    tok = tiny_video_tokenizer(tmp / "tok")
    vocab = Vocabulary(image_codebook_size=64)
    torch.manual_seed(0)
    model = MultimodalLM(LMConfig(vocab_size=vocab.size, d_model=16, n_layers=1,
                                            n_heads=2, init_std=0.5))
    dec = save_lm_dir(model, vocab, tmp / "dec", (4, 4), video_tokens=(2, 4, 4),
                           extra={"tokenizer": {"path": str(tok), "sha256": fingerprint(tok)}})
    return tok, dec


def generate(dirs: tuple[Path, Path], out: Path, *extra: str,
             prompt: str = "a bag moving up") -> int:
    tok, dec = dirs
    args = parse(["generate", "--video", "--decoder", str(dec), "--tokenizer", str(tok),
                  "--prompt", prompt, "--out", str(out), *extra])
    return args.func(args).status


def gif_frames(path: Path) -> list[np.ndarray]:
    with Image.open(path) as gif:
        assert gif.format == "GIF" and gif.is_animated
        return [np.asarray(frame.convert("L")) for frame in ImageSequence.Iterator(gif)]


@pytest.mark.parametrize(("frames", "latent"), [(None, 2), ("9", 3), ("1", 1)])
def test_generate_video_writes_the_requested_frames(dirs: tuple[Path, Path], tmp_path: Path,
                                                    frames: str | None, latent: int) -> None:
    tok_dir, dec_dir = dirs
    out = tmp_path / "clip.gif"
    extra = ["--seed", "3"] + ([] if frames is None else ["--frames", frames])
    assert generate(dirs, out, *extra) == 0
    expected_count = 1 + 4 * (latent - 1)  # 1 + 4k frames <-> 1 + k latent frames
    if expected_count == 1:  # a one-frame GIF is not animated
        with Image.open(out) as gif:
            assert gif.format == "GIF" and getattr(gif, "n_frames", 1) == 1
        return
    got = gif_frames(out)
    assert len(got) == expected_count and got[0].shape == (16, 16)
    # The same clip built by hand: the caption as given (no template), the seed, decoding.
    model, vocab, _ = load_lm_dir(dec_dir)
    grid = generate_video(model, vocab, ["a bag moving up"], latent, 4, 4,
                          generator=torch.Generator().manual_seed(3))[0]
    clip = VideoTokenizer.from_pretrained(tok_dir).decode(grid)  # (T, 16, 16, 1)
    assert clip.shape[0] == expected_count
    assert all(np.array_equal(g, c[..., 0]) for g, c in zip(got, clip))


def test_generate_video_errors_are_one_line_and_write_nothing(dirs: tuple[Path, Path],
                                                              tmp_path: Path) -> None:
    out = tmp_path / "x.gif"
    with pytest.raises(ValueError, match=r"frames must be 1 \+ 4 k .* got 8"):
        generate(dirs, out, "--frames", "8")
    tok, _ = dirs
    vocab = Vocabulary(image_codebook_size=64)
    image_decoder = save_lm_dir(
        MultimodalLM(LMConfig(vocab_size=vocab.size, d_model=16, n_layers=1,
                                        n_heads=2)), vocab, tmp_path / "img_dec", (4, 4))
    with pytest.raises(ValueError, match="trained on images .* without --video"):
        generate((tok, image_decoder), out)
    with pytest.raises(ValueError, match="frames is for videos"):
        args = parse(["generate", "--decoder", str(image_decoder), "--tokenizer", str(tok),
                      "--prompt", "bag", "--out", str(out), "--frames", "5"])
        args.func(args)
    assert not out.exists()


def test_datamodule_serves_caption_then_video_tokens(tmp_path: Path) -> None:
    write_sprites(tmp_path / "fm")
    tok_dir = tiny_video_tokenizer(tmp_path / "tok")
    dm = CaptionImageDataModule(str(tok_dir), root=str(tmp_path / "fm"), limit_train=4,
                                val_size=3, batch_size=3, num_frames=5, image_size=32,
                                cache_dir=str(tmp_path / "cache"), seed=2)
    assert dm.video_tokens == (2, 8, 8) and dm.image_tokens == (8, 8)
    dm.setup("fit")
    assert len(dm.train_set) == 4 and len(dm.val_set) == 3
    held_out = MovingFashionMNIST(tmp_path / "fm", "test", num_frames=5, size=32, seed=2)
    tok = VideoTokenizer.from_pretrained(tok_dir)
    batch = next(iter(dm.val_dataloader()))
    vocab = dm.vocab
    for row in range(3):
        clip, caption = held_out[row]
        codes = tok.encode(clip.numpy())
        expected = ([vocab.bos] + list(caption.encode()) + [vocab.bov]
                    + (codes.flatten() + vocab.image_offset).tolist() + [vocab.eov, vocab.eos])
        assert batch.ids[row, :len(expected)].tolist() == expected
    assert sorted(p.name.split("-")[1] for p in (tmp_path / "cache").iterdir()) == [
        "test", "train"]


def test_decoder_fit_on_clips_exports_a_video_decoder(tmp_path: Path) -> None:
    write_sprites(tmp_path / "fm")
    tok = tiny_video_tokenizer(tmp_path / "tok")
    export = tmp_path / "decoder"
    cli = run_lm_cli([
        "fit", f"--config={ROOT / 'experiments' / 'decoder' / 'moving_fmnist_video.yaml'}",
        f"--data.tokenizer={tok}", f"--data.root={tmp_path / 'fm'}", "--data.limit_train=6",
        "--data.val_size=2", "--data.batch_size=2", "--data.num_frames=5",
        "--data.image_size=32", f"--data.cache_dir={tmp_path / 'cache'}",
        "--model.config.d_model=16", "--model.config.n_layers=1", "--model.config.n_heads=2",
        "--trainer.max_steps=2", "--trainer.val_check_interval=2",
        "--trainer.limit_val_batches=1", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false", f"--trainer.logger.init_args.save_dir={tmp_path}",
        f"--trainer.default_root_dir={tmp_path}", f"--export_dir={export}",
    ])
    assert cli.trainer.global_step == 2
    assert torch.isfinite(cli.trainer.callback_metrics["val/image_loss"])
    _, vocab, config = load_lm_dir(export)
    assert vocab.image_codebook_size == 64
    assert config["video_tokens"] == [2, 8, 8] and config["caption_template"] is None
    out = tmp_path / "bag.gif"
    assert generate((tok, export), out) == 0
    assert len(gif_frames(out)) == 5

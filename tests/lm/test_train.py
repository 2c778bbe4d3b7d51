"""Decoder training: captions, the token cache, the stream losses, the LightningModule."""

from __future__ import annotations

import inspect
import math
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from tests.helpers import FASHION_MNIST, needs_fashion_mnist, tiny_model
from vqtok.formats.tokenizer_dir import fingerprint, save_tokenizer_dir
from vqtok.lm import LMConfig, Modality, Vocabulary, build_stream, collate
from vqtok.lm.captions import caption_for
from vqtok.lm.data import CaptionImageDataModule
from vqtok.lm.token_cache import encode_cached
from vqtok.lm.train import LMModule, stream_losses
from vqtok.quantizers import FSQ
from vqtok.tokenizer import ImageTokenizer
from vqtok.training.data import FashionMNISTDataModule
from vqtok.training.optim import warmup_cosine

TINY_DECODER = {"d_model": 32, "n_layers": 2, "n_heads": 2, "init_std": 0.02}


def tiny_tokenizer_dir(path: Path, levels: tuple[int, ...] = (4, 4, 4), seed: int = 0) -> Path:
    """A randomly initialised grey tokenizer with 4x downsampling (8 x 8 tokens at 32 px)."""
    model = tiny_model(FSQ(list(levels), dim=4), seed=seed, in_channels=1)
    return save_tokenizer_dir(model.eval(), path)


def tiny_decoder(image_codebook_size: int = 10, **kwargs) -> LMModule:
    return LMModule.from_vocabulary(Vocabulary(image_codebook_size=image_codebook_size),
                                         **TINY_DECODER, **kwargs)


# ---- captions and losses ------------------------------------------------------------------


def test_caption_for() -> None:
    assert caption_for("Ankle boot") == "a photo of an ankle boot"
    assert caption_for("T-shirt/top") == "a photo of a t-shirt/top"
    assert caption_for("bag", "{label}!") == "bag!"
    with pytest.raises(ValueError, match="must contain '{label}'"):
        caption_for("bag", "a photo")
    with pytest.raises(ValueError, match="label must be non-empty"):
        caption_for("  ")


def _toy_batch(vocab: Vocabulary) -> tuple[list, object]:
    g = torch.Generator().manual_seed(0)
    streams = [build_stream(["ab", torch.randint(0, 6, (2, 2), generator=g)], vocab,
                            add_eos=True),
               build_stream(["xyz!", torch.randint(0, 6, (1, 3), generator=g)], vocab),
               build_stream(["v", torch.randint(0, 6, (2, 1, 2), generator=g)], vocab)]
    return streams, collate(streams, vocab)


def test_stream_losses_match_a_token_loop() -> None:
    vocab = Vocabulary(image_codebook_size=6)
    streams, batch = _toy_batch(vocab)
    logits = torch.randn(*batch.ids.shape, vocab.size, generator=torch.Generator().manual_seed(1))
    terms = stream_losses(logits, batch)
    sums = {"all": [], "image": [], "text": []}
    for row, s in enumerate(streams):  # every real next token, read from the stream itself
        for t in range(s.ids.numel() - 1):
            target = int(s.ids[t + 1])
            lp = logits[row, t].double()
            nll = math.log(sum(math.exp(v) for v in lp.tolist())) - float(lp[target])
            sums["all"].append(nll)
            if s.modality[t + 1] in (Modality.IMAGE, Modality.VIDEO):  # every code
                sums["image"].append(nll)
            if s.modality[t + 1] == Modality.TEXT:
                sums["text"].append(nll)
    assert len(sums["image"]) == 4 + 3 + 4 and len(sums["text"]) == 2 + 4 + 1  # BOS: no target
    for key, name in (("all", "loss"), ("image", "image_loss"), ("text", "text_loss")):
        expected = sum(sums[key]) / len(sums[key])
        assert terms[name].item() == pytest.approx(expected, rel=1e-5)
    assert int(terms["n_image"]) == 11 and int(terms["n_all"]) == len(sums["all"])
    assert int(terms["n_text"]) == len(sums["text"])


def test_padding_is_never_a_target() -> None:
    vocab = Vocabulary(image_codebook_size=6)
    module = tiny_decoder(6).eval()
    streams, batch = _toy_batch(vocab)
    with torch.no_grad():
        both = stream_losses(module(batch), batch)
        alone = [stream_losses(module(b), b) for b in (collate([s], vocab) for s in streams)]
    n = [float(a["n_all"]) for a in alone]
    weighted = sum(a["loss"].item() * k for a, k in zip(alone, n)) / sum(n)
    assert both["loss"].item() == pytest.approx(weighted, rel=1e-5)


def test_warmup_cosine_schedule() -> None:
    assert warmup_cosine(0, warmup=4, total=14, floor=0.1) == pytest.approx(0.25)
    assert warmup_cosine(3, warmup=4, total=14, floor=0.1) == pytest.approx(1.0)
    assert warmup_cosine(4, warmup=4, total=14, floor=0.1) == pytest.approx(1.0)
    assert warmup_cosine(9, warmup=4, total=14, floor=0.1) == pytest.approx(0.55)  # half way
    assert warmup_cosine(14, warmup=4, total=14, floor=0.1) == pytest.approx(0.1)
    assert warmup_cosine(99, warmup=0, total=14, floor=0.0) == pytest.approx(0.0)


# ---- the LightningModule ----------------------------------------------------------------


def synthetic_loader(vocab: Vocabulary, scheme: str = "rope_tie_v2") -> DataLoader:
    """Four captions, each followed by its own fixed 3 x 3 grid: learnable in a few steps."""
    g = torch.Generator().manual_seed(0)
    grids = torch.randint(0, vocab.image_codebook_size, (4, 3, 3), generator=g)
    names = ["cat", "dog", "owl", "ant"]
    streams = [build_stream([f"a {names[i % 4]}", grids[i % 4]], vocab, scheme, add_eos=True)
               for i in range(16)]
    return DataLoader(streams, batch_size=8, shuffle=True,
                      collate_fn=lambda items: collate(items, vocab))


def _trainer(tmp_path: Path, steps: int) -> pl.Trainer:
    return pl.Trainer(max_steps=steps, logger=False, enable_progress_bar=False,
                      enable_model_summary=False, default_root_dir=tmp_path, accelerator="cpu",
                      enable_checkpointing=False, num_sanity_val_steps=0)


def test_module_trains_loss_decreases_and_checkpoint_is_weights_only(tmp_path: Path) -> None:
    torch.manual_seed(0)
    module = tiny_decoder(lr=1e-2, warmup_steps=5)
    vocab = module.vocab
    loader = synthetic_loader(vocab)
    batch = next(iter(loader))
    with torch.no_grad():
        before = stream_losses(module(batch), batch)
    assert before["loss"].item() == pytest.approx(math.log(vocab.size), rel=0.1)  # near uniform
    trainer = _trainer(tmp_path, 60)
    trainer.fit(module, loader)
    module.eval()
    with torch.no_grad():
        after = stream_losses(module(batch), batch)
    assert after["loss"] < 0.3 * before["loss"]
    assert after["image_loss"] < 0.3 * before["image_loss"]

    path = tmp_path / "decoder.ckpt"
    trainer.save_checkpoint(path)
    ckpt = torch.load(path, map_location="cpu", weights_only=True)  # no pickle of objects
    hparams = ckpt["hyper_parameters"]
    assert hparams["image_codebook_size"] == 10 and hparams["config"]["d_model"] == 32
    restored = LMModule.load_from_checkpoint(path, weights_only=True).eval()
    with torch.no_grad():
        assert torch.equal(restored(batch), module(batch))


def test_config_and_vocabulary() -> None:
    vocab = Vocabulary(image_codebook_size=9)
    cfg = LMConfig(vocab_size=vocab.size, d_model=24, n_layers=1, n_heads=3,
                        attention="mqa", position_scheme="mrope", head_dim=8)
    module = LMModule(cfg, 9, lr=1e-4)
    assert module.config == cfg and module.hparams.lr == 1e-4
    assert module.vocab.size == vocab.size == module.model.lm_head.out_features
    assert LMModule(cfg.to_dict(), 9).config == cfg  # what a checkpoint holds
    with pytest.raises(ValueError, match="vocab_size"):
        LMModule(cfg, 8)
    built = LMModule.from_vocabulary(vocab, d_model=24, n_layers=1, n_heads=3,
                                          attention="mqa", position_scheme="mrope", head_dim=8)
    assert built.config == cfg


class _StubData(pl.LightningDataModule):
    def __init__(self, vocab: Vocabulary, scheme: str) -> None:
        super().__init__()
        self.vocab, self.position_scheme = vocab, scheme

    def train_dataloader(self) -> DataLoader:
        return synthetic_loader(self.vocab, self.position_scheme)


def test_fit_rejects_data_of_another_scheme_or_vocabulary(tmp_path: Path) -> None:
    module = tiny_decoder(position_scheme="rope_tie_v2")
    with pytest.raises(ValueError, match="position_scheme '1d' differs"):
        _trainer(tmp_path, 1).fit(module, datamodule=_StubData(module.vocab, "1d"))
    with pytest.raises(ValueError, match="does not match the model"):
        _trainer(tmp_path, 1).fit(module, datamodule=_StubData(
            Vocabulary(image_codebook_size=11), "rope_tie_v2"))


def test_default_position_scheme_is_1d() -> None:
    # The position ablations (benchmarks/RESULTS_decoder.md) chose it; model and data agree.
    assert LMConfig(vocab_size=300).position_scheme == "1d"
    assert inspect.signature(CaptionImageDataModule).parameters["position_scheme"].default \
        == "1d"


# ---- the token cache and the DataModule ---------------------------------------------------


class _CountingTokenizer:
    """Wraps a tokenizer, counting the images it encodes."""

    def __init__(self, tokenizer: ImageTokenizer) -> None:
        self.inner, self.encoded = tokenizer, 0

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def encode(self, images, batch_size: int = 16):
        self.encoded += len(images)
        return self.inner.encode(images, batch_size=batch_size)


def test_encode_cached_reuses_and_extends_the_cache(tmp_path: Path) -> None:
    tok = ImageTokenizer.from_pretrained(tiny_tokenizer_dir(tmp_path / "tok"))
    images = torch.rand(10, 1, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    dataset = TensorDataset(images, torch.zeros(10, dtype=torch.long))
    cache = tmp_path / "cache" / "toy.npz"
    counting = _CountingTokenizer(tok)
    first = encode_cached(counting, dataset, [7, 2, 5], cache)
    assert torch.equal(first, tok.encode(images[[7, 2, 5]]))
    assert counting.encoded == 3 and cache.is_file()
    again = encode_cached(counting, dataset, [2, 9, 7, 0], cache)
    assert counting.encoded == 3 + 2  # only 9 and 0 were missing
    assert torch.equal(again, tok.encode(images[[2, 9, 7, 0]]))
    assert torch.equal(encode_cached(counting, dataset, [5, 0], cache),
                       tok.encode(images[[5, 0]]))
    assert counting.encoded == 5
    assert sorted(p.name for p in cache.parent.iterdir()) == ["toy.npz"]  # no temp left


def test_fingerprint_follows_the_weights_not_the_file_bytes(tmp_path: Path) -> None:
    first = tiny_tokenizer_dir(tmp_path / "a")
    tok = ImageTokenizer.from_pretrained(first)
    tok.save_pretrained(tmp_path / "b", extra={"note": "same weights, other metadata"})
    assert (first / "config.json").read_bytes() != (tmp_path / "b" / "config.json").read_bytes()
    assert fingerprint(first) == fingerprint(tmp_path / "b")
    with torch.no_grad():
        next(tok.model.parameters()).view(-1)[0] += 1e-3
    tok.save_pretrained(tmp_path / "c")
    assert fingerprint(first) != fingerprint(tmp_path / "c")


@needs_fashion_mnist
def test_datamodule_streams_hold_caption_then_image_tokens(tmp_path: Path) -> None:
    tok_dir = tiny_tokenizer_dir(tmp_path / "tok")
    dm = CaptionImageDataModule(str(tok_dir), root=str(FASHION_MNIST), limit_train=8, val_size=6,
                                batch_size=6, cache_dir=str(tmp_path / "cache"))
    dm.setup("fit")
    assert dm.image_tokens == (8, 8) and dm.vocab.image_codebook_size == 64
    assert len(dm.train_set) == 8 and len(dm.val_set) == 6
    # The same held-out images as the tokenizer's DataModule with the same seed.
    ref = FashionMNISTDataModule(root=str(FASHION_MNIST), val_size=6, limit_train=8)
    ref.setup("fit")
    images = torch.stack([ref.val_set[i][0] for i in range(6)])
    labels = [ref.val_set[i][1] for i in range(6)]
    grids = ImageTokenizer.from_pretrained(tok_dir).encode(images)
    batch = next(iter(dm.val_dataloader()))
    vocab = dm.vocab
    for row in range(6):
        name = ["t-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                "sneaker", "bag", "ankle boot"][labels[row]]
        article = "an" if name[0] in "aeiou" else "a"
        expected = ([vocab.bos] + list(f"a photo of {article} {name}".encode()) + [vocab.boi]
                    + (grids[row].flatten() + vocab.image_offset).tolist()
                    + [vocab.eoi, vocab.eos])
        n = len(expected)
        assert batch.ids[row, :n].tolist() == expected
        assert bool(batch.mask[row, :n].all()) and not bool(batch.mask[row, n:].any())
        assert bool((batch.ids[row, n:] == vocab.pad).all())
    # A second DataModule reads the cache instead of running the tokenizer.
    again = CaptionImageDataModule(str(tok_dir), root=str(FASHION_MNIST), limit_train=8,
                                   val_size=6, cache_dir=str(tmp_path / "cache"))
    again.tokenizer = counting = _CountingTokenizer(again.tokenizer)
    again.setup("fit")
    assert counting.encoded == 0
    assert torch.equal(again.val_set.grids, grids)


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"batch_size": 0}, "batch_size must be a positive int"),
    ({"limit_train": 0}, "limit_train must be a positive int"),
    ({"position_scheme": "2d"}, "unknown position scheme '2d'"),
])
def test_datamodule_rejects_bad_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    tok_dir = tiny_tokenizer_dir(tmp_path / "tok")
    with pytest.raises(ValueError, match=match):
        CaptionImageDataModule(str(tok_dir), **kwargs)


def bilinear_2x(image: np.ndarray) -> np.ndarray:
    """Bilinear 2x upscale of ``(H, W)`` with half-pixel centres: output pixel ``i`` samples
    the input at ``(i + 0.5) / 2 - 0.5``, clamped to the edge (float64 reference)."""
    def weights(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        src = np.clip((np.arange(2 * n) + 0.5) / 2 - 0.5, 0, n - 1)
        low = np.floor(src).astype(int)
        return low, np.minimum(low + 1, n - 1), src - low
    (r0, r1, fr), (c0, c1, fc) = weights(image.shape[0]), weights(image.shape[1])
    rows = image[r0] * (1 - fr)[:, None] + image[r1] * fr[:, None]
    return rows[:, c0] * (1 - fc) + rows[:, c1] * fc


@needs_fashion_mnist
def test_datamodule_image_size_gives_larger_grids(tmp_path: Path) -> None:
    tok_dir = tiny_tokenizer_dir(tmp_path / "tok")
    dm = CaptionImageDataModule(str(tok_dir), root=str(FASHION_MNIST), limit_train=4, val_size=3,
                                image_size=64, cache_dir=str(tmp_path / "cache"))
    assert dm.image_tokens == (16, 16)
    dm.setup("fit")
    ref = FashionMNISTDataModule(root=str(FASHION_MNIST), val_size=3, limit_train=4)
    ref.setup("fit")
    images = torch.stack([
        torch.from_numpy(bilinear_2x(ref.val_set[i][0][0].double().numpy())).float()[None]
        for i in range(3)])  # (3, 1, 64, 64)
    expected = ImageTokenizer.from_pretrained(tok_dir).encode(images)
    assert dm.val_set.grids.shape == (3, 16, 16)
    assert torch.equal(dm.val_set.grids, expected)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [dm.cache_file("train").name]
    assert "size64" in dm.cache_file("train").name  # not the 32 x 32 grids' cache

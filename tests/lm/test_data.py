"""The language model's captioned data: captions, the token cache, the DataModule."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import TensorDataset

from tests.helpers import FASHION_MNIST, needs_fashion_mnist
from tests.lm.test_train import tiny_tokenizer_dir
from vqtok.formats.tokenizer_dir import fingerprint
from vqtok.lm.captions import caption_for
from vqtok.lm.data import CaptionImageDataModule
from vqtok.lm.token_cache import encode_cached
from vqtok.tokenizers import ImageTokenizer
from vqtok.training.data import FashionMNISTDataModule


def test_caption_for() -> None:
    assert caption_for("Ankle boot") == "a photo of an ankle boot"
    assert caption_for("T-shirt/top") == "a photo of a t-shirt/top"
    assert caption_for("bag", "{label}!") == "bag!"
    with pytest.raises(ValueError, match="must contain '{label}'"):
        caption_for("bag", "a photo")
    with pytest.raises(ValueError, match="label must be non-empty"):
        caption_for("  ")


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

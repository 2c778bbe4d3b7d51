"""The language model's captioned data: caption + image (or video) token streams.

:class:`CaptionImageDataModule` serves streams
``[BOS] "a photo of an ankle boot" [BOI] 8x8 codes [EOI] [EOS]`` padded with a mask, from
one of three sources: a sharded token dataset with its own captions (:class:`ShardSource`,
any images or clips that ``vqtok encode --shard-size`` tokenized), or, tokenized once
here with an exported tokenizer and cached (:mod:`vqtok.lm.token_cache`), Fashion-MNIST
images (:class:`ImageSource`, with an image tokenizer) or Moving Fashion-MNIST clips
(:class:`ClipSource`, with a video tokenizer).
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from vqtok.data import MovingFashionMNIST
from vqtok.data.captions import class_name
from vqtok.data.fashion_mnist import CLASSES
from vqtok.formats.token_shards import TokenShards
from vqtok.formats.tokenizer_dir import fingerprint
from vqtok.lm.captions import DEFAULT_TEMPLATE, caption_for
from vqtok.lm.positions import make_scheme
from vqtok.lm.streams import Stream, Vocabulary, build_stream, collate
from vqtok.lm.token_cache import cached_grids, encode_cached
from vqtok.tokenizers import ImageTokenizer, VideoTokenizer, load_tokenizer
from vqtok.training.data import FashionMNISTDataModule, make_loader, train_val_split
from vqtok.validation import check_positive


class CaptionImageDataset(Dataset):
    """``(grids (N, h, w), labels (N,))`` as streams ``[BOS] caption [BOI] grid [EOI] [EOS]``;
    video grids ``(N, t, h, w)`` go between BOV and EOV. Item ``i``'s caption is
    ``captions[labels[i]]`` (a clip's own caption: ``labels = arange(N)``)."""

    def __init__(self, grids: Tensor, labels: Tensor, captions: list[str], vocab: Vocabulary,
                 scheme: str) -> None:
        if grids.dim() not in (3, 4) or labels.shape != grids.shape[:1]:
            raise ValueError(f"need grids (N, h, w) or (N, t, h, w) and labels (N,), got shapes "
                             f"{tuple(grids.shape)} and {tuple(labels.shape)}")
        self.grids, self.labels = grids, labels
        self.captions, self.vocab, self.scheme = captions, vocab, make_scheme(scheme)

    def __len__(self) -> int:
        return self.grids.shape[0]

    def __getitem__(self, index: int) -> Stream:
        caption = self.captions[int(self.labels[index])]
        segments = [caption, self.grids[index]] if caption else [self.grids[index]]
        return build_stream(segments, self.vocab, self.scheme, add_eos=True)


class Rescaled(Dataset):
    """``(image, label)`` items of ``dataset`` with the ``(C, H, W)`` image scaled to
    ``(C, size, size)`` (bilinear, corners not aligned)."""

    def __init__(self, dataset: Dataset, size: int) -> None:
        self.dataset, self.size = dataset, size

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Tensor, Any]:
        image, label = self.dataset[index]
        image = F.interpolate(image[None], size=(self.size, self.size), mode="bilinear",
                              align_corners=False)[0]
        return image, label


class ImageSource:
    """Fashion-MNIST images with the train/val split of
    :class:`~vqtok.training.data.FashionMNISTDataModule`, each captioned from its class by
    a template."""

    video = False

    def __init__(self, tokenizer: ImageTokenizer, hp: Any) -> None:
        self.images = FashionMNISTDataModule(root=hp.root, batch_size=hp.encode_batch_size,
                                             val_size=hp.val_size, limit_train=hp.limit_train,
                                             pad_to=hp.pad_to, seed=hp.seed)
        self.tokenizer = tokenizer
        self.hp = hp
        self.caption_template: str | None = hp.caption_template
        self.captions = [caption_for(class_name(c), hp.caption_template)
                         for c in range(len(CLASSES))]
        self.image_size = hp.pad_to if hp.image_size is None else hp.image_size
        self.image_tokens = self.tokenizer.tokens_shape(self.image_size, self.image_size)
        self.video_tokens: tuple[int, int, int] | None = None

    def cache_stem(self, split: str) -> str:
        size = "" if self.image_size == self.hp.pad_to else f"-size{self.image_size}"
        return f"fashion_mnist-{split}-pad{self.hp.pad_to}{size}"

    def fit_sets(self, data: CaptionImageDataModule
                 ) -> tuple[CaptionImageDataset, CaptionImageDataset]:
        self.images.setup("fit")
        return (self._streams(data, self.images.train_set, "train"),
                self._streams(data, self.images.val_set, "train"))

    def test_set(self, data: CaptionImageDataModule) -> CaptionImageDataset:
        self.images.setup("test")
        test = self.images.test_set
        count = min(len(test), self.hp.limit_test or len(test))
        return self._streams(data, Subset(test, range(count)), "test")

    def _streams(self, data: CaptionImageDataModule, images: Dataset, split: str
                 ) -> CaptionImageDataset:
        """Tokenize a split (a Subset of the full Fashion-MNIST split, or all of it)."""
        full, indices = (images.dataset, list(images.indices)) if isinstance(images, Subset) \
            else (images, list(range(len(images))))  # type: ignore[arg-type]
        source = full if self.image_size == self.hp.pad_to else Rescaled(full, self.image_size)
        grids = encode_cached(self.tokenizer, source, indices, data.cache_file(split),
                              self.hp.encode_batch_size)
        return data.streams(grids, full.labels[indices], self.captions)


class ClipSource:
    """Moving Fashion-MNIST clips and their own captions ("a bag moving up"): training
    clips from the train split, validation and test clips from the test split."""

    video = True

    def __init__(self, tokenizer: VideoTokenizer, hp: Any) -> None:
        check_positive(val_size=hp.val_size)
        self.tokenizer = tokenizer
        self.hp = hp
        self.image_size = 64 if hp.image_size is None else hp.image_size
        self.clips = {split: MovingFashionMNIST(hp.root, split, num_frames=hp.num_frames,
                                                size=self.image_size,
                                                max_sprites=hp.max_sprites, seed=hp.seed)
                      for split in ("train", "test")}
        if hp.val_size >= len(self.clips["test"]):
            raise ValueError(f"val_size={hp.val_size} leaves no test clip: the test split has "
                             f"{len(self.clips['test'])}")
        self.caption_template: str | None = None  # clips carry their own captions
        self.video_tokens = self.tokenizer.tokens_shape(hp.num_frames, self.image_size,
                                                        self.image_size)
        self.image_tokens = self.video_tokens[1:]

    def cache_stem(self, split: str) -> str:
        hp = self.hp
        return (f"moving_fashion_mnist-{split}-f{hp.num_frames}-s{self.image_size}-"
                f"m{hp.max_sprites}-seed{hp.seed}")

    def fit_sets(self, data: CaptionImageDataModule
                 ) -> tuple[CaptionImageDataset, CaptionImageDataset]:
        train = self.clips["train"]
        count = min(len(train), self.hp.limit_train or len(train))
        return (self._streams(data, "train", range(count)),
                self._streams(data, "test", range(self.hp.val_size)))

    def test_set(self, data: CaptionImageDataModule) -> CaptionImageDataset:
        total = len(self.clips["test"])
        stop = min(total, self.hp.val_size + (self.hp.limit_test or total))
        return self._streams(data, "test", range(self.hp.val_size, stop))

    def _streams(self, data: CaptionImageDataModule, split: str, indices: range
                 ) -> CaptionImageDataset:
        """Tokenize clips ``indices`` of a Moving Fashion-MNIST split (cached)."""
        clips = self.clips[split]

        def encode(part: np.ndarray) -> Tensor:
            return torch.stack([self.tokenizer.encode(clips[int(i)][0].numpy()) for i in part])

        grids = cached_grids(encode, len(clips), self.video_tokens, self.tokenizer.codebook_size,
                             list(indices), data.cache_file(split), chunk=256, what="clips")
        captions = [clips.caption(i) for i in indices]
        return data.streams(grids, torch.arange(len(indices)), captions)


class ShardSource:
    """The rows of a sharded token dataset (``vqtok encode --shard-size``,
    :mod:`vqtok.formats.token_shards`) and their own captions: any images or clips, any
    tokenizer, captions from the shards (a row without one trains the image alone).
    ``val_size`` rows, drawn with ``seed``, are held out for validation and testing."""

    def __init__(self, tokenizer: ImageTokenizer | VideoTokenizer, hp: Any) -> None:
        self.tokenizer, self.hp = tokenizer, hp
        self.shards = TokenShards(hp.tokens)
        made = self.shards.manifest["tokenizer"]
        if made["fingerprint"] != fingerprint(hp.tokenizer):
            raise ValueError(f"{hp.tokens} was encoded with another tokenizer (fingerprint "
                             f"{made['fingerprint'][:12]}) than {hp.tokenizer}")
        shapes = [tuple(g["shape"]) for g in self.shards.manifest["grids"]]
        if len(shapes) != 1:
            raise ValueError(f"{hp.tokens} holds token grids of {len(shapes)} shapes "
                             f"{shapes[:4]}; the language model trains on one: encode images "
                             f"of one size")
        self.shape = shapes[0]
        self.video = isinstance(tokenizer, VideoTokenizer)
        self.video_tokens = self.shape if self.video else None
        self.image_tokens = self.shape[-2:]
        self.caption_template: str | None = None
        self.class_names: list[str] = []
        self.rows: tuple[Tensor, list[str | None]] | None = None
        self.image_size = None  # set from the rows

    def _read(self) -> tuple[Tensor, list[str | None]]:
        """Every row's grid ``(N, *shape)`` (int32) and caption, in the dataset's order."""
        if self.rows is None:
            grids = torch.empty((len(self.shards), *self.shape), dtype=torch.int32)
            captions: list[str | None] = []
            for shard in self.shards:
                for ids, caption in zip(shard.ids, shard.captions):
                    grids[len(captions)] = torch.from_numpy(ids.astype(np.int32))
                    captions.append(caption)
            self.rows = grids, captions
        return self.rows

    def _split(self) -> tuple[list[int], list[int]]:
        train, val = train_val_split(len(self.shards), self.hp.val_size, self.hp.seed)
        return train[:self.hp.limit_train], val

    def _streams(self, data: CaptionImageDataModule, indices: list[int]) -> CaptionImageDataset:
        grids, captions = self._read()
        return data.streams(grids[indices], torch.arange(len(indices)),
                            [captions[i] for i in indices])

    def fit_sets(self, data: CaptionImageDataModule
                 ) -> tuple[CaptionImageDataset, CaptionImageDataset]:
        train, val = self._split()
        return self._streams(data, train), self._streams(data, val)

    def test_set(self, data: CaptionImageDataModule) -> CaptionImageDataset:
        val = self._split()[1]
        return self._streams(data, val[:self.hp.limit_test])


class CaptionImageDataModule(pl.LightningDataModule):
    """Fashion-MNIST captions + image or video tokens for the language model.

    With an image tokenizer, the images and their train/val split are those of
    :class:`~vqtok.training.data.FashionMNISTDataModule` with the same ``root``,
    ``val_size``, ``limit_train``, ``pad_to`` and ``seed``, captioned by
    ``caption_template``.

    With ``tokens``, a sharded token dataset that ``tokenizer`` wrote (``vqtok encode
    --shard-size``), the streams are its rows with their own captions, images or clips
    (:class:`ShardSource`); Fashion-MNIST and Moving Fashion-MNIST are then not read.

    With a video tokenizer (:class:`~vqtok.VideoTokenizer`), the streams are
    ``[BOS] caption [BOV] t x h x w codes [EOV] [EOS]`` of
    :class:`~vqtok.data.MovingFashionMNIST` clips (``num_frames`` frames of ``image_size``
    pixels, default 64, ``max_sprites`` sprites, generated with ``seed``) and their own
    captions ("a bag moving up"): training clips ``0 .. limit_train - 1`` of the train split
    (default: 60,000), validation clips ``0 .. val_size - 1`` of the test split (sprites
    never seen in training), test clips the next ``limit_test`` of the test split.

    Args:
        tokenizer: an exported tokenizer directory (``vqtok fit`` writes one).
        tokens: a sharded token dataset written with ``tokenizer`` (its rows and captions
            are the data); None: Fashion-MNIST images or Moving Fashion-MNIST clips.
        root: folder with the Fashion-MNIST IDX files; ``None``: the user cache.
        caption_template: caption of an image from its lower-cased class name.
        position_scheme: ``"rope_tie_v2"``, ``"mrope"``, ``"1d"`` or ``"nope"``; must be the
            model's (the CLI links it to ``model.config.position_scheme``).
        batch_size: streams per batch.
        val_size: training images held out for validation.
        limit_train: keep only the first this-many training images (None: all).
        limit_test: keep only the first this-many test images (None: all 10,000).
        pad_to: image side after zero padding.
        image_size: scale the padded images to this side (bilinear) before tokenizing, for
            larger token grids (64 with a 4x tokenizer: 16 x 16 tokens); None keeps
            ``pad_to``. Clips: the frame side (None: 64).
        num_frames: frames per clip (video tokenizer only).
        max_sprites: sprites per clip, 1 or 2 (video tokenizer only).
        cache_dir: where tokenized datasets are cached (keyed by the tokenizer's
            fingerprint); None: no cache.
        encode_batch_size: images per tokenizer forward pass.
        num_workers: DataLoader worker processes.
        seed: fixes the train/val split (images) or the clips (video).
    """

    def __init__(self, tokenizer: str, root: str | None = None,
                 caption_template: str = DEFAULT_TEMPLATE,
                 position_scheme: str = "1d", batch_size: int = 64,
                 val_size: int = 1000, limit_train: int | None = None,
                 limit_test: int | None = None, pad_to: int = 32,
                 image_size: int | None = None, cache_dir: str | None = "runs/token_cache",
                 encode_batch_size: int = 256, num_workers: int = 0, seed: int = 0,
                 num_frames: int = 17, max_sprites: int = 2, tokens: str | None = None) -> None:
        super().__init__()
        check_positive(batch_size=batch_size)
        if limit_test is not None:
            check_positive(limit_test=limit_test)
        if image_size is not None:
            check_positive(image_size=image_size)
        make_scheme(position_scheme)  # validates the name
        self.save_hyperparameters()
        self.tokenizer_dir = str(tokenizer)
        loaded = load_tokenizer(tokenizer)
        self.source: ImageSource | ClipSource | ShardSource = (
            ShardSource(loaded, self.hparams) if tokens is not None
            else ClipSource(loaded, self.hparams) if isinstance(loaded, VideoTokenizer)
            else ImageSource(loaded, self.hparams))
        self.video = self.source.video
        self.tokenizer = self.source.tokenizer
        if self.tokenizer.num_stages is not None:
            raise ValueError(f"tokenizer {tokenizer} gives {self.tokenizer.num_stages} ids per "
                             f"position (a multi-stage quantizer); the language model's "
                             f"streams take one id per image token")
        self.fingerprint = fingerprint(tokenizer)
        self.class_names = getattr(self.source, "class_names", None)
        if self.class_names is None:
            self.class_names = [class_name(c) for c in range(len(CLASSES))]
        self.caption_template = self.source.caption_template
        self.vocab = Vocabulary(image_codebook_size=self.tokenizer.codebook_size)
        # Read by the CLI's links into the model's arguments.
        self.image_codebook_size, self.vocab_size = self.vocab.image_codebook_size, self.vocab.size
        self.image_size = self.source.image_size
        self.image_tokens, self.video_tokens = self.source.image_tokens, self.source.video_tokens
        self.position_scheme = position_scheme
        self.batch_size, self.num_workers = batch_size, num_workers
        self.train_set: CaptionImageDataset | None = None
        self.val_set: CaptionImageDataset | None = None
        self.test_set: CaptionImageDataset | None = None

    def cache_file(self, split: str) -> Path | None:
        """The token cache of one split for this tokenizer."""
        cache_dir = self.hparams.cache_dir
        if cache_dir is None:
            return None
        return Path(cache_dir) / f"{self.source.cache_stem(split)}-{self.fingerprint[:16]}.npz"

    def streams(self, grids: Tensor, labels: Tensor, captions: list[str]) -> CaptionImageDataset:
        """Token grids captioned by ``captions[labels[i]]``, as this module's streams."""
        return CaptionImageDataset(grids, labels, captions, self.vocab, self.position_scheme)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None and stage in (None, "fit", "validate"):
            self.train_set, self.val_set = self.source.fit_sets(self)
        if self.test_set is None and stage in (None, "test"):
            self.test_set = self.source.test_set(self)

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        return make_loader(dataset, self.batch_size, shuffle, self.num_workers,
                           collate_fn=functools.partial(collate, vocab=self.vocab))

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)

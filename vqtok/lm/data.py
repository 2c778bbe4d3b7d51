"""Training the multimodal decoder on caption + image streams.

:class:`CaptionImageDataModule` tokenizes a labelled image dataset (Fashion-MNIST, through
:class:`~vqtok.training.data.FashionMNISTDataModule` and its split) once with an exported
:class:`~vqtok.tokenizer.ImageTokenizer`, caching the ids, and serves streams
``[BOS] "a photo of an ankle boot" [BOI] 8x8 codes [EOI] [EOS]`` padded with a mask.
:class:`DecoderModule` trains a :class:`~vqtok.multimodal.MultimodalDecoder` on them with
the next-token loss and logs the loss on image tokens alone (the position-scheme ablation's
metric).
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Subset

from vqtok.data import FashionMNIST, MovingFashionMNIST
from vqtok.formats.decoder_dir import save_decoder_dir
from vqtok.formats.token_cache import read_token_cache, write_token_cache
from vqtok.formats.tokenizer_dir import fingerprint
from vqtok.formats.tokenizer_dir import read_config as read_tokenizer_config
from vqtok.generation import caption_for
from vqtok.multimodal.decoder import DecoderConfig, MultimodalDecoder
from vqtok.multimodal.positions import make_scheme
from vqtok.multimodal.streams import (
    Modality,
    Stream,
    StreamBatch,
    Vocabulary,
    build_stream,
    collate,
)
from vqtok.tokenizer import ImageTokenizer
from vqtok.training.data import FashionMNISTDataModule, check_positive, make_loader
from vqtok.training.optim import adamw_warmup_cosine
from vqtok.video_tokenizer import VideoTokenizer

__all__ = [
    "CaptionImageDataModule",
    "CaptionImageDataset",
    "DecoderModule",
    "cached_grids",
    "encode_cached",
    "stream_losses",
]

log = logging.getLogger(__name__)


# ---- the token cache -------------------------------------------------------------------


def cached_grids(encode: Callable[[np.ndarray], Tensor], n: int, grid_shape: tuple[int, ...],
                 codebook_size: int, indices: list[int], cache_file: Path | None,
                 chunk: int = 4096, what: str = "images") -> Tensor:
    """Token grids ``(len(indices), *grid_shape)`` of items ``indices`` of a dataset of
    ``n``, reusing and extending ``cache_file`` (:mod:`vqtok.formats.token_cache`): only the
    missing requested items are encoded, ``chunk`` at a time, by ``encode(item indices)``,
    and the cache is written after each chunk (an interrupted run keeps what it did)."""
    dtype = np.dtype(np.uint16 if codebook_size <= 1 << 16 else np.int32)
    shape = (n, *grid_shape)
    cached = read_token_cache(cache_file, shape, dtype) if cache_file is not None else None
    ids, done = cached or (np.zeros(shape, dtype=dtype), np.zeros(n, dtype=bool))
    wanted = np.asarray(indices, dtype=np.int64)
    missing = wanted[~done[wanted]]
    if missing.size:
        start = time.perf_counter()
        for part in np.array_split(missing, math.ceil(missing.size / chunk)):
            ids[part] = encode(part).numpy()
            done[part] = True
            if cache_file is not None:
                write_token_cache(cache_file, ids, done)
        log.info("tokenized %d %s in %.1f s", missing.size, what, time.perf_counter() - start)
    return torch.from_numpy(ids[wanted].astype(np.int64))


def encode_cached(tokenizer: ImageTokenizer, dataset: Dataset, indices: list[int],
                  cache_file: Path | None, batch_size: int = 256) -> Tensor:
    """Token ids ``(len(indices), h, w)`` of the images ``dataset[i][0]`` (float ``(C, H, W)``
    in the tokenizer's input space, one size for all), through :func:`cached_grids`."""

    def encode(part: np.ndarray) -> Tensor:
        x = torch.stack([dataset[int(i)][0] for i in part])  # (m, C, H, W)
        if x.shape[1] == 1 and tokenizer.channels == 3:
            x = x.expand(-1, 3, -1, -1)
        return tokenizer.encode(x, batch_size=batch_size)

    grid = tokenizer.tokens_shape(*dataset[0][0].shape[-2:])
    return cached_grids(encode, len(dataset), grid, tokenizer.codebook_size,  # type: ignore[arg-type]
                        indices, cache_file)


# ---- data --------------------------------------------------------------------------------


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
        return build_stream([caption, self.grids[index]], self.vocab, self.scheme, add_eos=True)


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


def is_video_tokenizer(path: str | Path) -> bool:
    """Whether the tokenizer directory ``path`` holds a video tokenizer (its config records a
    temporal factor, docs/formats.md); a Hub repo id counts as an image tokenizer."""
    config = Path(path) / "config.json"
    return config.is_file() and "video" in read_tokenizer_config(config)


class CaptionImageDataModule(pl.LightningDataModule):
    """Fashion-MNIST captions + image or video tokens for the multimodal decoder.

    With an image tokenizer, the images and their train/val split are those of
    :class:`~vqtok.training.data.FashionMNISTDataModule` with the same ``root``,
    ``val_size``, ``limit_train``, ``pad_to`` and ``seed``, captioned by
    ``caption_template``.

    With a video tokenizer (:class:`~vqtok.VideoTokenizer`), the streams are
    ``[BOS] caption [BOV] t x h x w codes [EOV] [EOS]`` of
    :class:`~vqtok.data.MovingFashionMNIST` clips (``num_frames`` frames of ``image_size``
    pixels, default 64, ``max_sprites`` sprites, generated with ``seed``) and their own
    captions ("a bag moving up"): training clips ``0 .. limit_train - 1`` of the train split
    (default: 60,000), validation clips ``0 .. val_size - 1`` of the test split (sprites
    never seen in training), test clips the next ``limit_test`` of the test split.

    Args:
        tokenizer: an exported tokenizer directory (``vqtok fit`` writes one).
        root: folder with the Fashion-MNIST IDX files; ``None``: the user cache.
        caption_template: caption of an image from its lower-cased class name.
        position_scheme: ``"rope_tie_v2"``, ``"mrope"``, ``"1d"`` or ``"nope"``; must be the
            decoder's (the CLI links it to ``model.config.position_scheme``).
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
                 caption_template: str = "a photo of a {label}",
                 position_scheme: str = "1d", batch_size: int = 64,
                 val_size: int = 1000, limit_train: int | None = None,
                 limit_test: int | None = None, pad_to: int = 32,
                 image_size: int | None = None, cache_dir: str | None = "runs/token_cache",
                 encode_batch_size: int = 256, num_workers: int = 0, seed: int = 0,
                 num_frames: int = 17, max_sprites: int = 2) -> None:
        super().__init__()
        check_positive(batch_size=batch_size)
        if limit_test is not None:
            check_positive(limit_test=limit_test)
        if image_size is not None:
            check_positive(image_size=image_size)
        make_scheme(position_scheme)  # validates the name
        self.save_hyperparameters()
        self.tokenizer_dir = str(tokenizer)
        self.video = is_video_tokenizer(tokenizer)
        if self.video:
            check_positive(val_size=val_size)
            self.tokenizer = VideoTokenizer.from_pretrained(tokenizer)
            side = 64 if image_size is None else image_size
            self.clips = {split: MovingFashionMNIST(root, split, num_frames=num_frames, size=side,
                                                    max_sprites=max_sprites, seed=seed)
                          for split in ("train", "test")}
            if val_size >= len(self.clips["test"]):
                raise ValueError(f"val_size={val_size} leaves no test clip: the test split has "
                                 f"{len(self.clips['test'])}")
        else:
            self.images = FashionMNISTDataModule(root=root, batch_size=encode_batch_size,
                                                 val_size=val_size, limit_train=limit_train,
                                                 pad_to=pad_to, seed=seed)
            self.tokenizer = ImageTokenizer.from_pretrained(tokenizer)
        if self.tokenizer.num_stages is not None:
            raise ValueError(f"tokenizer {tokenizer} gives {self.tokenizer.num_stages} ids per "
                             f"position (a multi-stage quantizer); the decoder's streams take "
                             f"one id per image token")
        self.fingerprint = fingerprint(tokenizer)
        self.class_names = [c.lower() for c in FashionMNIST.CLASSES]
        # Clips carry their own captions: no template.
        self.caption_template = None if self.video else caption_template
        self.captions = [caption_for(c, caption_template) for c in self.class_names]
        self.vocab = Vocabulary(image_codebook_size=self.tokenizer.codebook_size)
        # Read by the CLI's links into the model's arguments.
        self.image_codebook_size, self.vocab_size = self.vocab.image_codebook_size, self.vocab.size
        if self.video:
            self.image_size = side
            self.video_tokens = self.tokenizer.tokens_shape(num_frames, side, side)
            self.image_tokens = self.video_tokens[1:]
        else:
            self.image_size = pad_to if image_size is None else image_size
            self.video_tokens = None
            self.image_tokens = self.tokenizer.tokens_shape(self.image_size, self.image_size)
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
        if self.video:
            hp = self.hparams
            return Path(cache_dir) / (f"moving_fashion_mnist-{split}-f{hp.num_frames}-s"
                                      f"{self.image_size}-m{hp.max_sprites}-seed{hp.seed}-"
                                      f"{self.fingerprint[:16]}.npz")
        size = "" if self.image_size == self.hparams.pad_to else f"-size{self.image_size}"
        name = (f"fashion_mnist-{split}-pad{self.hparams.pad_to}{size}-"
                f"{self.fingerprint[:16]}.npz")
        return Path(cache_dir) / name

    def _streams(self, images: Dataset, split: str) -> CaptionImageDataset:
        """Tokenize a split (a Subset of the full Fashion-MNIST split, or all of it)."""
        full, indices = (images.dataset, list(images.indices)) if isinstance(images, Subset) \
            else (images, list(range(len(images))))  # type: ignore[arg-type]
        source = full if self.image_size == self.hparams.pad_to else Rescaled(full,
                                                                              self.image_size)
        grids = encode_cached(self.tokenizer, source, indices, self.cache_file(split),
                              self.hparams.encode_batch_size)
        return CaptionImageDataset(grids, full.labels[indices], self.captions, self.vocab,
                                   self.position_scheme)

    def _clip_streams(self, split: str, indices: range) -> CaptionImageDataset:
        """Tokenize clips ``indices`` of a Moving Fashion-MNIST split (cached)."""
        clips = self.clips[split]

        def encode(part: np.ndarray) -> Tensor:
            return torch.stack([self.tokenizer.encode(clips[int(i)][0].numpy()) for i in part])

        grids = cached_grids(encode, len(clips), self.video_tokens, self.tokenizer.codebook_size,
                             list(indices), self.cache_file(split), chunk=256, what="clips")
        captions = [clips.caption(i) for i in indices]
        return CaptionImageDataset(grids, torch.arange(len(indices)), captions, self.vocab,
                                   self.position_scheme)

    def _setup_clips(self, stage: str | None) -> None:
        hp = self.hparams
        if self.train_set is None and stage in (None, "fit", "validate"):
            count = min(len(self.clips["train"]), hp.limit_train or len(self.clips["train"]))
            self.train_set = self._clip_streams("train", range(count))
            self.val_set = self._clip_streams("test", range(hp.val_size))
        if self.test_set is None and stage in (None, "test"):
            total = len(self.clips["test"])
            stop = min(total, hp.val_size + (hp.limit_test or total))
            self.test_set = self._clip_streams("test", range(hp.val_size, stop))

    def setup(self, stage: str | None = None) -> None:
        if self.video:
            self._setup_clips(stage)
            return
        if self.train_set is None and stage in (None, "fit", "validate"):
            self.images.setup("fit")
            self.train_set = self._streams(self.images.train_set, "train")
            self.val_set = self._streams(self.images.val_set, "train")
        if self.test_set is None and stage in (None, "test"):
            self.images.setup("test")
            test = self.images.test_set
            count = min(len(test), self.hparams.limit_test or len(test))
            self.test_set = self._streams(Subset(test, range(count)), "test")

    def _loader(self, dataset: Dataset, shuffle: bool) -> DataLoader:
        return make_loader(dataset, self.batch_size, shuffle, self.num_workers,
                           collate_fn=functools.partial(collate, vocab=self.vocab))

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_set, shuffle=False)


# ---- model -------------------------------------------------------------------------------


def stream_losses(logits: Tensor, batch: StreamBatch) -> dict[str, Tensor]:
    """Next-token cross-entropy of ``logits (B, T, V)`` on ``batch``: ``"loss"`` over every
    real target token, ``"image_loss"`` over codebook targets only (image and video codes),
    ``"text_loss"`` over text bytes; padding is never a target. Also the token counts ``"n_image"``, ``"n_text"``
    and ``"n_all"``, the weights of those means."""
    targets = batch.ids[:, 1:]  # token t+1 is predicted at t
    real = batch.mask[:, 1:] & batch.mask[:, :-1]
    nll = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(),
                          reduction="none").view_as(targets)  # (B, T-1)
    modality = batch.modality[:, 1:]
    image = real & ((modality == Modality.IMAGE) | (modality == Modality.VIDEO))
    text = real & (batch.modality[:, 1:] == Modality.TEXT)

    def mean(where: Tensor) -> Tensor:
        return (nll * where).sum() / where.sum().clamp_min(1)

    return {"loss": mean(real), "image_loss": mean(image), "text_loss": mean(text),
            "n_image": image.sum(), "n_text": text.sum(), "n_all": real.sum()}


class DecoderModule(pl.LightningModule):
    """A :class:`MultimodalDecoder` trained with the next-token loss on stream batches.

    Args:
        config: the decoder's architecture; ``vocab_size`` must equal the vocabulary's size
            (the CLI links it from the data).
        image_codebook_size: the tokenizer's codebook size (the CLI links it from the data).
        text_vocab: text ids (256 UTF-8 bytes).
        lr: peak AdamW learning rate.
        betas: AdamW betas.
        weight_decay: AdamW weight decay on matrices (not on norms).
        warmup_steps: linear warm-up steps, then cosine decay to ``min_lr_ratio * lr`` at the
            trainer's last step.
        min_lr_ratio: final learning rate as a fraction of ``lr``.
    """

    def __init__(self, config: DecoderConfig, image_codebook_size: int, text_vocab: int = 256,
                 lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.95),
                 weight_decay: float = 0.1, warmup_steps: int = 100,
                 min_lr_ratio: float = 0.1) -> None:
        super().__init__()
        config = config if isinstance(config, DecoderConfig) else DecoderConfig.from_dict(config)
        self.vocab = Vocabulary(text_vocab, image_codebook_size=image_codebook_size)
        if config.vocab_size != self.vocab.size:
            raise ValueError(f"config.vocab_size {config.vocab_size} != the size "
                             f"{self.vocab.size} of the vocabulary ({self.vocab})")
        self.save_hyperparameters(ignore=["config"])
        # Plain numbers and strings only: the checkpoint loads with weights_only=True.
        self.hparams.pop("_instantiator", None)
        self.hparams.pop("_class_path", None)
        self.hparams["config"] = config.to_dict()
        self.model = MultimodalDecoder(config)

    @classmethod
    def from_vocabulary(cls, vocab: Vocabulary, **kwargs: Any) -> DecoderModule:
        """A module for ``vocab`` whose ``config`` fields other than ``vocab_size`` are
        given as keyword arguments (next to the training ones, e.g. ``lr``)."""
        names = set(DecoderConfig.__dataclass_fields__) - {"vocab_size"}
        arch = {k: kwargs.pop(k) for k in list(kwargs) if k in names}
        return cls(DecoderConfig(vocab_size=vocab.size, **arch), vocab.image_codebook_size,
                   vocab.text_vocab, **kwargs)

    @property
    def config(self) -> DecoderConfig:
        return self.model.config

    def forward(self, batch: StreamBatch) -> Tensor:
        """Logits ``(B, T, vocab_size)`` of a padded stream batch."""
        return self.model(batch.ids, batch.positions, batch.mask)

    def setup(self, stage: str) -> None:
        """Refuse a DataModule whose vocabulary or position scheme is not the decoder's."""
        data = self.trainer.datamodule  # None when fit was given dataloaders
        if data is None:
            return
        vocab, scheme = getattr(data, "vocab", None), getattr(data, "position_scheme", None)
        if vocab is not None and vocab.size != self.vocab.size:
            raise ValueError(f"the data's vocabulary ({vocab}) does not match the decoder's "
                             f"({self.vocab})")
        if scheme is not None and scheme != self.config.position_scheme:
            raise ValueError(f"the data's position_scheme {scheme!r} differs from the "
                             f"decoder's {self.config.position_scheme!r}")

    def export(self, out_dir: str | Path, datamodule: CaptionImageDataModule,
               extra: dict | None = None) -> Path:
        """Write the decoder directory with what the data knows: the token grid, the
        caption template and class names, and which tokenizer made the tokens (plus any
        ``extra`` JSON metadata)."""
        extra = {
            "labels": list(datamodule.class_names),
            "tokenizer": {"path": str(datamodule.tokenizer_dir), "sha256": datamodule.fingerprint},
            **(extra or {}),
        }
        return save_decoder_dir(self.model, self.vocab, out_dir, datamodule.image_tokens,
                                caption_template=datamodule.caption_template, extra=extra,
                                video_tokens=getattr(datamodule, "video_tokens", None))

    def training_step(self, batch: StreamBatch, batch_idx: int) -> Tensor:
        terms = stream_losses(self(batch), batch)
        size = batch.ids.shape[0]
        self.log("train/loss", terms["loss"], prog_bar=True, batch_size=size)
        self.log("train/image_loss", terms["image_loss"], batch_size=size)
        return terms["loss"]

    def validation_step(self, batch: StreamBatch, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: StreamBatch, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def _evaluate(self, batch: StreamBatch, stage: str) -> None:
        terms = stream_losses(self(batch), batch)
        # Epoch values are token-weighted means: weight each batch by its token counts.
        self.log(f"{stage}/loss", terms["loss"], batch_size=int(terms["n_all"]), sync_dist=True,
                 prog_bar=True)
        self.log(f"{stage}/image_loss", terms["image_loss"], batch_size=int(terms["n_image"]),
                 sync_dist=True, prog_bar=True)
        self.log(f"{stage}/text_loss", terms["text_loss"], batch_size=int(terms["n_text"]),
                 sync_dist=True)

    def configure_optimizers(self) -> dict[str, Any]:
        hp = self.hparams
        return adamw_warmup_cosine(
            self.model.named_parameters(), lr=hp.lr, betas=hp.betas,
            weight_decay=hp.weight_decay, warmup_steps=hp.warmup_steps,
            total_steps=int(self.trainer.estimated_stepping_batches),
            min_lr_ratio=hp.min_lr_ratio)

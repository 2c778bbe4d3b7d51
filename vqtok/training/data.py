"""LightningDataModules for tokenizer training; the datasets they wrap are
:mod:`vqtok.data`'s.

Every batch is ``(images, labels)``: images float32 ``(B, C, H, W)`` in [-1, 1] (clips
``(B, C, T, H, W)`` for a video tokenizer), labels int64 ``(B,)`` (zeros when a dataset
has none). Each module exposes ``in_channels``,
``image_size`` (so a config can size the encoder from the data) and ``normalization``
(which the tokenizer records when it is exported).
"""

from __future__ import annotations

import inspect
from pathlib import Path

import lightning.pytorch as pl
import torch
import yaml
from torch.utils.data import DataLoader, Dataset, Subset

try:  # a dependency: loaders whose position Lightning saves in checkpoints
    from torchdata.stateful_dataloader import StatefulDataLoader
except ImportError:  # pragma: no cover - a broken install; mid-epoch resume then refuses
    StatefulDataLoader = None

from vqtok.data import (
    Clips,
    FashionMNIST,
    ImageFolder,
    MovingFashionMNIST,
    PhotoPatches,
    download_fashion_mnist,
)
from vqtok.data.fashion_mnist import check_files, default_root
from vqtok.tokenizers.pixels import DEFAULT_NORMALIZATION
from vqtok.validation import check_positive

RESUMABLE_LOADERS = StatefulDataLoader is not None
"""Whether training loaders can resume mid-epoch (torchdata is installed, as vqtok requires):
see :func:`make_loader`. Without it a mid-epoch resume is refused
(:class:`~vqtok.training.callbacks.RunCheckpoint`)."""


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, num_workers: int,
                **kwargs: object) -> DataLoader:
    """The DataLoader of every vqtok DataModule: torchdata's ``StatefulDataLoader`` (torchdata
    is a dependency of vqtok), else torch's ``DataLoader``.

    A stateful loader reports its position in the epoch (the shuffling generator, the
    batches served, each worker's dataset state) through ``state_dict``; Lightning stores it
    in every checkpoint and restores it on ``--ckpt_path``, so a run stopped mid-epoch
    continues with the very batches it would have seen (docs/training.md#exact-resume).
    A plain DataLoader would restart the epoch instead, so a mid-epoch resume without
    torchdata is refused.
    """
    loader = StatefulDataLoader if StatefulDataLoader is not None else DataLoader
    return loader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                  persistent_workers=num_workers > 0, **kwargs)


def train_val_split(n: int, n_val: int, seed: int) -> tuple[list[int], list[int]]:
    """Random disjoint (train, val) index lists of sizes ``n - n_val`` and ``n_val``;
    a ValueError unless ``n_val`` leaves at least one training item."""
    if n_val >= n:
        raise ValueError(f"val_size must be below the {n} training images, got {n_val}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return sorted(perm[n_val:]), sorted(perm[:n_val])


class _LoaderMixin:
    """The loaders and pixel normalisation shared by the modules: ``setup`` fills
    ``train_set`` and ``val_set`` (and ``test_set``, else testing uses ``val_set``)."""

    batch_size: int
    num_workers: int
    shuffle_train = True
    normalization = DEFAULT_NORMALIZATION
    train_set: Dataset | None = None
    val_set: Dataset | None = None
    test_set: Dataset | None = None

    def _loader(self, dataset: Dataset | None, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError(f"{type(self).__name__}: call setup() before asking for a loader")
        return make_loader(dataset, self.batch_size, shuffle, self.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, shuffle=self.shuffle_train)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.val_set if self.test_set is None else self.test_set,
                            shuffle=False)


class PhotoDataModule(_LoaderMixin, pl.LightningDataModule):
    """Random patches of the ``train/`` photos; validation (and test) on fixed crops of
    the held-out ``test/`` photos.

    Args:
        root: folder with ``train/`` and ``test/`` photo subfolders; ``None`` for the
            photos embedded in vqtok.
        patch_size: side of each square RGB patch.
        train_patches: patches per training epoch (fresh random crops and flips each time).
        val_patches: validation patches, the same crops every epoch (fixed by ``seed``).
        batch_size: patches per batch.
        num_workers: DataLoader worker processes.
        seed: fixes the validation crops.
        grey_weight: chance of a training crop coming from a grey photo relative to a
            colour one (1: every photo alike, 0: colour photos only); see
            :class:`~vqtok.data.PhotoPatches`.
        colour_augment: random channel order and saturation of the training crops of
            colour photos (:class:`~vqtok.data.PhotoPatches`).
    """

    in_channels = 3
    shuffle_train = False  # every access is a fresh random crop

    def __init__(self, root: str | None = None, patch_size: int = 64,
                 train_patches: int = 8192, val_patches: int = 512, batch_size: int = 32,
                 num_workers: int = 0, seed: int = 0, grey_weight: float = 1.0,
                 colour_augment: bool = False) -> None:
        super().__init__()
        check_positive(patch_size=patch_size, train_patches=train_patches,
                        val_patches=val_patches, batch_size=batch_size)
        for split in ("train", "test"):  # fail now, before a run folder or a model exists
            if root is not None and not (Path(root) / split).is_dir():
                raise FileNotFoundError(f"photo folder {Path(root) / split} does not exist "
                                        f"(root must hold train/ and test/ folders)")
        self.save_hyperparameters()
        self.root, self.patch_size, self.seed = root, patch_size, seed
        self.train_patches, self.val_patches = train_patches, val_patches
        self.batch_size, self.num_workers = batch_size, num_workers
        self.grey_weight, self.colour_augment = grey_weight, colour_augment

    @property
    def image_size(self) -> int:
        return self.patch_size

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None and stage in (None, "fit"):
            self.train_set = PhotoPatches(self.root, "train", self.patch_size,
                                          self.train_patches, seed=self.seed, random_crops=True,
                                          grey_weight=self.grey_weight,
                                          colour_augment=self.colour_augment)
        if self.val_set is None:
            self.val_set = PhotoPatches(self.root, "test", self.patch_size, self.val_patches,
                                        seed=self.seed, random_crops=False)


class FashionMNISTDataModule(_LoaderMixin, pl.LightningDataModule):
    """Fashion-MNIST, grey ``(1, 32, 32)``: train on the train split minus ``val_size``
    held-out images (a random choice fixed by ``seed``), validate on those, test on the
    10,000 test images.

    Args:
        root: folder with the four IDX files (gzipped or not); ``None``: the user cache,
            which ``vqtok data fashion-mnist`` fills (docs/data.md).
        batch_size: images per batch.
        num_workers: DataLoader worker processes.
        val_size: images of the train split held out for validation.
        limit_train: keep only the first this-many training images (None: all).
        pad_to: side after zero padding; 32 suits factors 4, 8 and 16.
        seed: fixes the train/val split.
        download: fetch the files in ``prepare_data`` when they are missing (needs a
            network). Otherwise missing files are an error here, at construction, with the
            command that fetches them.
    """

    in_channels = 1

    def __init__(self, root: str | None = None, batch_size: int = 128,
                 num_workers: int = 0, val_size: int = 2000, limit_train: int | None = None,
                 pad_to: int = 32, seed: int = 0, download: bool = False) -> None:
        super().__init__()
        check_positive(batch_size=batch_size, val_size=val_size, pad_to=pad_to)
        if limit_train is not None:
            check_positive(limit_train=limit_train)
        self.save_hyperparameters()
        self.root = default_root() if root is None else Path(root)
        self.pad_to, self.seed, self.download = pad_to, seed, download
        self.val_size, self.limit_train = val_size, limit_train
        self.batch_size, self.num_workers = batch_size, num_workers
        if not download:
            check_files(self.root)  # fail now, before a run folder or a model exists

    @property
    def image_size(self) -> int:
        return self.pad_to

    def prepare_data(self) -> None:
        if self.download:
            download_fashion_mnist(self.root)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None and stage in (None, "fit", "validate"):
            full = FashionMNIST(self.root, "train", pad_to=self.pad_to)
            train_idx, val_idx = train_val_split(len(full), self.val_size, self.seed)
            if self.limit_train is not None:
                train_idx = train_idx[: self.limit_train]
            self.train_set, self.val_set = Subset(full, train_idx), Subset(full, val_idx)
        if self.test_set is None and stage in (None, "test", "predict"):
            self.test_set = FashionMNIST(self.root, "test", pad_to=self.pad_to)


class ImageFolderDataModule(_LoaderMixin, pl.LightningDataModule):
    """Any folder of images (see :class:`~vqtok.data.ImageFolder` for the rule), split
    into train and validation at random (fixed by ``seed``).

    Args:
        root: folder searched recursively.
        size: images are scaled (shorter side) and centre-cropped to ``size x size``.
        batch_size: images per batch.
        val_fraction: share of the images held out for validation (at least one image
            when positive).
        num_workers: DataLoader worker processes.
        seed: fixes the split.
    """

    in_channels = 3

    def __init__(self, root: str, size: int = 64, batch_size: int = 32,
                 val_fraction: float = 0.1, num_workers: int = 0, seed: int = 0) -> None:
        super().__init__()
        check_positive(size=size, batch_size=batch_size)
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must lie in [0, 1), got {val_fraction!r}")
        if not Path(root).is_dir():  # fail now, before a run folder or a model exists
            raise FileNotFoundError(f"image folder {Path(root).resolve()} does not exist")
        self.save_hyperparameters()
        self.root, self.size, self.val_fraction, self.seed = root, size, val_fraction, seed
        self.batch_size, self.num_workers = batch_size, num_workers

    @property
    def image_size(self) -> int:
        return self.size

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        full = ImageFolder(self.root, self.size)
        n_val = max(1, round(len(full) * self.val_fraction)) if self.val_fraction > 0 else 0
        if n_val >= len(full):
            raise ValueError(
                f"val_fraction={self.val_fraction} leaves no training image out of "
                f"{len(full)} in {self.root}"
            )
        train_idx, val_idx = train_val_split(len(full), n_val, self.seed)
        self.train_set, self.val_set = Subset(full, train_idx), Subset(full, val_idx)


class MovingFashionMNISTDataModule(_LoaderMixin, pl.LightningDataModule):
    """Moving Fashion-MNIST clips (:class:`~vqtok.data.MovingFashionMNIST`, grey, made on
    the fly from the Fashion-MNIST files): train on clips of the train split, validate
    (and test) on the first ``val_clips`` clips of the test split, whose sprites no
    training clip shows. Batches are ``(clips (B, 1, T, H, W) in [-1, 1], zeros)``.

    Args:
        root: Fashion-MNIST folder; ``None``: the user cache (docs/data.md).
        batch_size: clips per batch.
        num_workers: DataLoader worker processes.
        train_clips: clips per training epoch (``None``: 60,000, one per training image).
        val_clips: held-out clips.
        num_frames: frames of each generated clip, and of every validation clip.
        train_frames: frames of each training clip, a window of the generated clip at a
            random start (fewer frames train faster; the model is convolutional in time).
            ``None``: all ``num_frames``.
        size: frame side in pixels.
        max_sprites: 1 or 2 sprites per clip.
        seed: selects the clips.
    """

    in_channels = 1

    def __init__(self, root: str | None = None, batch_size: int = 8, num_workers: int = 0,
                 train_clips: int | None = None, val_clips: int = 256, num_frames: int = 17,
                 train_frames: int | None = None, size: int = 64, max_sprites: int = 2,
                 seed: int = 0) -> None:
        super().__init__()
        check_positive(batch_size=batch_size, val_clips=val_clips, num_frames=num_frames,
                       size=size)
        if train_clips is not None:
            check_positive(train_clips=train_clips)
        if train_frames is not None:
            check_positive(train_frames=train_frames)
            if train_frames > num_frames:
                raise ValueError(f"train_frames={train_frames} exceeds num_frames={num_frames}")
        self.save_hyperparameters()
        self.root = default_root() if root is None else Path(root)
        check_files(self.root)  # fail now, before a run folder or a model exists
        self.batch_size, self.num_workers = batch_size, num_workers
        self.train_clips, self.val_clips = train_clips, val_clips
        self.num_frames, self.size, self.max_sprites, self.seed = (num_frames, size,
                                                                   max_sprites, seed)
        self.train_frames = num_frames if train_frames is None else train_frames

    @property
    def image_size(self) -> int:
        return self.size

    def _clips(self, split: str, count: int | None) -> MovingFashionMNIST:
        return MovingFashionMNIST(self.root, split, num_clips=count, num_frames=self.num_frames,
                                  size=self.size, max_sprites=self.max_sprites, seed=self.seed)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None and stage in (None, "fit"):
            self.train_set = Clips(self._clips("train", self.train_clips), self.train_frames,
                                   random_start=self.train_frames < self.num_frames)
        if self.val_set is None:
            self.val_set = Clips(self._clips("test", self.val_clips), self.num_frames,
                                 random_start=False)


class WebDatasetDataModule(_LoaderMixin, pl.LightningDataModule):
    """Images streamed from webdataset tar shards, local or remote
    (:class:`~vqtok.data.webdata.TarImages`, docs/data.md#webdataset-shards): training on
    random-resized crops (and horizontal flips) of samples from shards drawn at random, each
    process and loader worker its own stream, through a shuffle buffer; validation on the
    centre crops of ``val_samples`` samples of ``val_shards`` (default: the first samples
    of the training shards, which training also sees), split among the processes.

    Args:
        train_shards: shard URLs or brace patterns (``data/{000000..000099}.tar``).
        val_shards: validation shards; None: the training shards.
        size: the side of each image.
        in_channels: 3 (RGB) or 1 (grey).
        batch_size: images per batch and process.
        train_samples: training images per epoch and process.
        val_samples: validation images in all (divided among the processes).
        shuffle_buffer: samples in the shuffle buffer of each stream.
        min_scale: the smallest random crop, as a fraction of the image's area.
        num_workers: DataLoader worker processes (each reads its own stream).
        seed: the seed of every random choice.
    """

    shuffle_train = False  # an iterable stream: the shuffle buffer shuffles

    def __init__(self, train_shards: str | list[str], val_shards: str | list[str] | None = None,
                 size: int = 64, in_channels: int = 3, batch_size: int = 32,
                 train_samples: int = 10_000, val_samples: int = 256,
                 shuffle_buffer: int = 1000, min_scale: float = 0.35, num_workers: int = 0,
                 seed: int = 0) -> None:
        super().__init__()
        from vqtok.data.webdata import TarImages

        check_positive(size=size, batch_size=batch_size, train_samples=train_samples,
                       val_samples=val_samples)
        self.save_hyperparameters()
        self.in_channels, self.size, self.seed = in_channels, size, seed
        self.batch_size, self.num_workers = batch_size, num_workers
        common = {"size": size, "channels": in_channels, "seed": seed}
        # built now, so that a bad shard list or option fails before a run folder exists
        self._train = TarImages(train_shards, samples=train_samples, train=True,
                                shuffle_buffer=shuffle_buffer, min_scale=min_scale, **common)
        self._val = TarImages(val_shards or train_shards, samples=val_samples, train=False,
                              **common)

    @property
    def image_size(self) -> int:
        return self.size

    def setup(self, stage: str | None = None) -> None:
        world = self.trainer.world_size if self.trainer is not None else 1
        self._val.samples = max(1, self.hparams.val_samples // world)
        self.train_set, self.val_set = self._train, self._val


def datamodule_from_config(path: str | Path) -> pl.LightningDataModule:
    """One of this module's DataModules, built from a YAML config (an experiment config's
    ``data:`` section, or a bare ``class_path``/``init_args``) and set up for validation.
    Only classes of this module are built: such a config cannot import other code.

    Raises:
        ValueError: unreadable YAML, no ``class_path``, a class that is not one of these
            DataModules, or arguments it does not take (one line naming the file).
    """
    path = Path(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError, RecursionError) as err:
        raise ValueError(f"{path}: unreadable YAML ({str(err).splitlines()[0]})") from err
    section = doc.get("data", doc) if isinstance(doc, dict) else doc
    if not isinstance(section, dict) or not isinstance(section.get("class_path"), str):
        raise ValueError(  # noqa: TRY004 (project rule: bad input is a ValueError)
            f"{path}: expected a `data:` section (or a top level) with class_path and "
            f"init_args")
    name = section["class_path"].rpartition(".")[2]
    allowed = sorted(n for n, c in globals().items()
                     if inspect.isclass(c) and issubclass(c, pl.LightningDataModule)
                     and c.__module__ == __name__)
    if name not in allowed or section["class_path"] not in (name, f"{__name__}.{name}"):
        raise ValueError(f"{path}: class_path {section['class_path']!r} is not one of vqtok's "
                         f"DataModules {[f'{__name__}.{n}' for n in allowed]}")
    init_args = section.get("init_args") or {}
    if not isinstance(init_args, dict):
        raise ValueError(  # noqa: TRY004 (project rule: bad input is a ValueError)
            f"{path}: init_args of {section['class_path']} must be a mapping")
    try:
        datamodule = globals()[name](**init_args)
        datamodule.setup("validate")
    except (TypeError, FileNotFoundError) as err:
        raise ValueError(f"{path}: cannot build {section['class_path']}: {err}") from err
    return datamodule


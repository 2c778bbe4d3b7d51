"""What every tokenizer shares: the model and where it runs, loading and saving a tokenizer
directory (locally or on the Hugging Face Hub), the pixel budget, the shape facts and the
kernels the model runs on."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import torch

from vqtok.formats.hub import check_push, push_model_dir, resolve_model_dir
from vqtok.formats.tokenizer_dir import (
    TokenizerFormatError,
    is_video_model,
    load_tokenizer_dir,
    save_tokenizer_dir,
)
from vqtok.interop.common import SOURCE_NORMALIZATION
from vqtok.interop.diffusers import is_diffusers_dir, load_diffusers
from vqtok.models.autoencoder import VQAutoencoder
from vqtok.tokenizers.pixels import Normalization
from vqtok.tokenizers.runtime import inference_kernels, resolve_device

T = TypeVar("T", bound="Tokenizer")


class Tokenizer:
    """A trained :class:`~vqtok.models.VQAutoencoder` in eval mode on ``device``, with the
    pixel normalisation it was trained with. Subclasses say which models they take
    (:attr:`video`) and how pixels go in and out."""

    video: ClassVar[bool]
    """Whether the tokenizer takes clips: a model whose encoder has a ``temporal_factor``
    (:func:`vqtok.formats.tokenizer_dir.is_video_model`, the one rule)."""
    wrong_kind: ClassVar[str]
    """The error for a model of the other kind."""
    batch_invariant: bool = False
    """Whether the model runs on batch-independent kernels (:meth:`_kernels`)."""

    def __init__(self, model: VQAutoencoder, device: str | torch.device,
                 normalization: Normalization) -> None:
        self._check_model(model)
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.normalization = normalization

    @classmethod
    def _check_model(cls, model: VQAutoencoder) -> None:
        """A TypeError for anything but a VQAutoencoder, a ValueError for one of the other
        kind (image or video) that names the class to use."""
        if not isinstance(model, VQAutoencoder):
            raise TypeError(f"expected a VQAutoencoder, got {type(model).__name__}")
        if is_video_model(model) != cls.video:
            raise ValueError(cls.wrong_kind)

    # ---- persistence --------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls: type[T], path: str | os.PathLike[str],  # noqa: PYI019
                        device: str | torch.device = "cpu", *, revision: str | None = None,
                        subfolder: str | None = None, **options: Any) -> T:
        """Load a tokenizer directory (config.json + model.safetensors, no pickle; see
        :mod:`vqtok.formats.tokenizer_dir`): a local path, or a Hugging Face Hub repo id
        ``"org/name"`` at ``revision`` (branch, tag or commit; needs the ``hub`` extra;
        docs/formats.md#hugging-face-hub). A diffusers ``VQModel`` folder or repo (its
        ``subfolder``, such as ``"vqvae"``) is converted as it loads
        (:func:`vqtok.interop.diffusers.load_diffusers`, docs/interop.md). ``options`` are
        those of the class's constructor. Raises
        :class:`~vqtok.formats.tokenizer_dir.TokenizerFormatError` (a ValueError) for a bad
        directory, a repo id that cannot be resolved, or a tokenizer of the other kind
        (naming the class to use), and a
        :class:`~vqtok.interop.ConversionError` (a ValueError) for a diffusers folder that
        cannot be converted."""
        device = resolve_device(device)  # before reading anything
        root = resolve_model_dir(path, "tokenizer", TokenizerFormatError, revision,
                                 subfolder=subfolder)
        if subfolder is not None or is_diffusers_dir(root):
            if cls.video:
                raise TokenizerFormatError(f"{path}: a diffusers VQModel encodes images; load "
                                           f"it with vqtok.ImageTokenizer.from_pretrained")
            converted = load_diffusers(path, subfolder=subfolder, revision=revision)
            return cls(converted.model, device=device,
                       normalization=Normalization(**SOURCE_NORMALIZATION), **options)
        model, config = load_tokenizer_dir(root, video=cls.video)
        return cls._from_loaded(model, config, device=device, **options)

    @classmethod
    def _from_loaded(cls: type[T], model: VQAutoencoder, config: dict[str, Any],  # noqa: PYI019
                    device: str | torch.device = "cpu", **options: Any) -> T:
        """The tokenizer of a model and its validated ``config.json``, as
        :func:`~vqtok.formats.tokenizer_dir.load_tokenizer_dir` returns them."""
        return cls(model, device=device,
                   normalization=Normalization(**config["normalization"]),
                   **cls._config_options(config), **options)

    def save_pretrained(
        self, path: str | os.PathLike[str], extra: dict[str, Any] | None = None, *,
        push_to_hub: bool = False, repo_id: str | None = None, private: bool | None = None,
        token: str | None = None, commit_message: str | None = None,
    ) -> Path:
        """Write the tokenizer directory atomically (:mod:`vqtok.formats.tokenizer_dir`; a
        video tokenizer's ``config.json`` carries ``"video": {"temporal_factor": ...}``).

        ``push_to_hub=True`` then uploads it to the Hub model repo ``repo_id`` (default:
        the directory's name, under the token's user), created if missing, in one commit
        (:func:`vqtok.formats.hub.push_model_dir`; needs the ``hub`` extra)."""
        repo_id = repo_id or Path(path).name
        if push_to_hub:
            check_push(repo_id)  # before writing anything
        saved = save_tokenizer_dir(self.model, path, normalization=self.normalization,
                                   extra=extra, **self._dir_options())
        if push_to_hub:
            push_model_dir(saved, repo_id, private=private, token=token,
                           commit_message=commit_message)
        return saved

    @classmethod
    def _config_options(cls, config: dict[str, Any]) -> dict[str, Any]:
        """Constructor arguments a tokenizer directory records besides the normalisation."""
        return {}

    def _dir_options(self) -> dict[str, Any]:
        """What :meth:`save_pretrained` records besides the model and the normalisation."""
        return {}

    # ---- shape facts --------------------------------------------------------------------
    @property
    def codebook_size(self) -> int:
        """Token ids lie in ``[0, codebook_size)``."""
        return self.model.codebook_size

    @property
    def downsample_factor(self) -> int:
        """Pixels per token along each side (of an image, or of a frame)."""
        return self.model.downsample_factor

    @property
    def num_stages(self) -> int | None:
        """S when ids carry a trailing stage axis (a multi-stage quantizer), else None."""
        return self.model.quantizer.num_stages

    @property
    def channels(self) -> int:
        """Image channels of the model: 1 (grey, decoded as mode L) or 3 (RGB)."""
        return self.model.in_channels

    # ---- internals ----------------------------------------------------------------------
    @staticmethod
    def _budget(max_pixels: int | None | str, auto: int | None) -> int | None:
        """``max_pixels`` checked, ``"auto"`` meaning ``auto``."""
        if max_pixels == "auto":
            max_pixels = auto
        if max_pixels is not None and (isinstance(max_pixels, bool) or
                                       not isinstance(max_pixels, int) or max_pixels < 1):
            raise ValueError(f"max_pixels must be a positive int, None or 'auto', got "
                             f"{max_pixels!r}")
        return max_pixels

    def _dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @contextlib.contextmanager
    def _kernels(self, alone: bool = False) -> Iterator[None]:
        """Eval mode, inference mode and, with :attr:`batch_invariant`, batch-independent
        kernels (:func:`~vqtok.tokenizers.runtime.inference_kernels`); ``alone``: the
        inputs run one at a time, which is batch-independent on torch's default kernels."""
        self.model.eval()
        with inference_kernels(self.device, self.batch_invariant and not alone):
            yield

"""``vqtok eval``: a tokenizer's reconstructions measured the way tokenizer papers report
them, over a whole image set, on one or several processes (docs/eval.md).

Each image is preprocessed by the pinned rule of :mod:`vqtok.data.eval_images` (``size x
size``, ADM's centre crop), encoded, decoded to 8-bit pixels, and compared with its
original:

* rFID: the Fréchet distance (:mod:`vqtok.metrics.frechet`) between the FID Inception
  features (:mod:`vqtok.models.inception`) of the originals (or a given statistics file)
  and of the reconstructions; null without the Inception weights.
* ``fd_lite0``: the same Fréchet distance in EfficientNet-Lite0's feature space
  (:mod:`vqtok.models.efficientnet_lite`), a number for comparing tokenizers where the
  Inception weights cannot be had, NOT comparable with rFID; null without its weights.
* LPIPS (VGG16, :mod:`vqtok.models.lpips`): the mean over images; null without its
  weights.
* PSNR and SSIM as the training module and ``vqtok report`` measure them (torchmetrics,
  [-1, 1] pixel space, data range 2; PSNR of the mean squared error over all pixels), in
  float64; also the mean of the per-image PSNR, and the worst images by it.
* Codebook usage, perplexity and normalised entropy of all the ids
  (:class:`vqtok.metrics.CodebookUsage`; pooled and per stage for a multi-stage
  quantizer), and the token count.

Every metric is a torchmetrics state summed (or gathered) across processes. Each process
reads its own share of the images (rank r takes images r, r + N, ..., none twice, none
padded), so N processes (Lightning, ``--devices N --strategy ddp``) give the one-process
result; the networks that make features run on batches of a fixed size, so an image's
features do not depend on the images beside it.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.utilities.exceptions import SIGTERMException
from torch import Tensor
from torch.utils.data import DataLoader, Dataset
from torchmetrics import MeanMetric
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from vqtok.apps import Stopped
from vqtok.apps.files import find_images
from vqtok.data.eval_images import EvalDataModuleImages, EvalImages, collate_as_list
from vqtok.data.weights import cached_inception, cached_lpips, lpips_cache_path
from vqtok.formats.eval_result import FORMAT, FORMAT_VERSION, write_eval
from vqtok.formats.fid_stats import read_fid_stats, write_fid_stats
from vqtok.formats.inception_weights import FETCH_HINT, INCEPTION_FILE, load_inception
from vqtok.formats.lite0_weights import LITE0_HINT, installed_lite0, load_lite0
from vqtok.formats.outputs import check_new_output
from vqtok.metrics import CodebookUsage, usage_stats
from vqtok.metrics.frechet import FrechetDistance
from vqtok.metrics.per_image import PerImage, psnr_per_image
from vqtok.models.lpips import LPIPS
from vqtok.tokenizers import ImageTokenizer, load_tokenizer
from vqtok.training.data import datamodule_from_config
from vqtok.validation import check_positive
from vqtok.version import vqtok_version

log = logging.getLogger(__name__)

FEATURE_BATCH = 8
"""Images per pass of the Inception and LPIPS networks, always (a short batch is filled
with blank images): the kernels then see one shape whatever the split across processes."""
CONFIG_SUFFIXES = (".yaml", ".yml")
"""A ``--data`` file with one of these suffixes is a config of one of vqtok's DataModules
(:func:`vqtok.training.data.datamodule_from_config`)."""
LIST_SUFFIXES = (".txt", ".lst")
"""A ``--data`` file with one of these suffixes lists image paths, one a line (relative
ones from the list's folder; blank lines and lines starting with # skipped)."""


@dataclass
class EvalOptions:
    """What ``vqtok eval`` measures, on what, and how it runs."""

    tokenizer: str
    """A tokenizer directory or Hugging Face Hub repo id (anything ``load_tokenizer`` reads)."""
    data: str | Sequence[str]
    """An image folder (recursive), image files, a list file (:data:`LIST_SUFFIXES`), or a
    DataModule config (:data:`CONFIG_SUFFIXES`), whose validation images are measured."""
    size: int = 256
    """The side of the square each image is cropped to (docs/eval.md#preprocessing)."""
    out: str | None = "eval.json"
    """The JSON to write (docs/formats.md#eval); None: none."""
    inception: str | None = None
    """The FID Inception weights file; None: the cached one, if fetched."""
    lpips: str | None = None
    """The LPIPS weights file (``vqtok lpips convert``); None: the cached one, if any."""
    lite0: str | None = None
    """The EfficientNet-Lite0 weights file; None: the installed ``lite0`` extra's, if any."""
    reference_stats: str | None = None
    """An ``.npz`` with ``mu`` and ``sigma`` of the reference set; None: the statistics of
    the same preprocessed originals."""
    save_stats: str | None = None
    """Write the originals' Inception statistics to this ``.npz`` (for later runs)."""
    batch_size: int = 16
    workers: int = 0
    devices: int = 1
    accelerator: str = "cpu"
    strategy: str = "auto"
    worst: int = 5
    """How many of the worst images by PSNR to list."""
    progress: bool = True
    overwrite: bool = False


@dataclass
class EvalResult:
    """What :func:`evaluate` measured: the JSON document (docs/formats.md#eval)."""

    doc: dict[str, Any]
    path: Path | None = None
    """The JSON written, if any."""
    notes: list[str] = field(default_factory=list)


def list_images(data: str | Sequence[str]) -> list[tuple[Path, str]]:
    """``(path, name)`` of every image of ``--data``: a list file, or what
    :func:`vqtok.apps.files.find_images` finds in folders and files."""
    given = [data] if isinstance(data, (str, os.PathLike)) else list(data)
    if len(given) == 1 and Path(given[0]).is_file() and (
            Path(given[0]).suffix.lower() in LIST_SUFFIXES):
        listing = Path(given[0])
        try:
            lines = listing.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"{listing}: cannot read the list of images ({err})") from err
        paths = [listing.parent / line.strip() for line in lines
                 if line.strip() and not line.lstrip().startswith("#")]
        if not paths:
            raise ValueError(f"{listing}: the list names no image")
        return [(path, str(Path(line))) for path, line in zip(paths, (
            ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")))]
    return find_images(given)


def _resolve_weights(options: EvalOptions
                     ) -> tuple[Path | None, Path | None, Path | None, list[str]]:
    """The Inception, LPIPS and EfficientNet-Lite0 weights files to use, and the notes for
    those missing."""
    notes = []
    inception = Path(options.inception) if options.inception else cached_inception()
    if inception is None:
        notes.append(f"rfid is null: no FID Inception weights ({FETCH_HINT})")
    lpips = Path(options.lpips) if options.lpips else cached_lpips()
    if lpips is None:
        notes.append(f"lpips is null: no LPIPS weights (make the file with `vqtok lpips "
                     f"convert --out {lpips_cache_path()}`, or give --lpips FILE; "
                     f"docs/training.md#lpips)")
    lite0 = Path(options.lite0) if options.lite0 else installed_lite0()
    if lite0 is None:
        notes.append(f"fd_lite0 is null: no EfficientNet-Lite0 weights ({LITE0_HINT})")
    return inception, lpips, lite0, notes


def evaluate(options: EvalOptions, *, inception: torch.nn.Module | None = None,
             lpips: LPIPS | None = None, lite0: torch.nn.Module | None = None
             ) -> EvalResult | None:
    """Measure ``options.tokenizer`` on ``options.data`` (module doc) and write the JSON.

    ``inception``, ``lpips`` and ``lite0``: networks to use instead of the weights files
    (tests give random ones; a feature network may be any module from uint8 images
    ``(B, 3, H, W)`` to features ``(B, D)`` with an attribute ``num_features = D``).
    Returns the result on the process of global rank 0 and None on the others. Everything
    a user can get wrong (the tokenizer, the data, the weights and statistics files, the
    output) is checked before any image is measured."""
    check_positive(size=options.size, batch_size=options.batch_size, worst=options.worst,
                   devices=options.devices)
    tokenizer = load_tokenizer(options.tokenizer)
    if not isinstance(tokenizer, ImageTokenizer):
        raise ValueError(  # noqa: TRY004 (project rule: bad input is a ValueError)
            f"{options.tokenizer}: a video tokenizer; `vqtok eval` measures image tokenizers")
    data_inputs = [Path(d) for d in ([options.data] if isinstance(options.data, str)
                                     else options.data)]
    config = (data_inputs[0] if len(data_inputs) == 1 and data_inputs[0].is_file()
              and data_inputs[0].suffix.lower() in CONFIG_SUFFIXES else None)
    if config is None:
        files = list_images(options.data)
        dataset: Dataset = EvalImages([path for path, _ in files], options.size,
                                      tokenizer.channels)
    else:
        dataset = EvalDataModuleImages(datamodule_from_config(config), str(config),
                                       options.size, tokenizer.channels)
        files = [(Path(name), name.rpartition("#")[2]) for name in dataset.files]
    outputs = [o for o in (options.out, options.save_stats) if o is not None]
    for out in outputs:
        check_new_output(out, inputs=[*data_inputs, Path(options.tokenizer)],
                         overwrite=options.overwrite)
    inception_file, lpips_file, lite0_file, notes = _resolve_weights(options)
    if inception is None and inception_file is not None:
        inception = load_inception(inception_file)
    elif inception is not None:
        inception_file, notes = None, [n for n in notes if not n.startswith("rfid")]
    if lpips is None and lpips_file is not None:
        lpips = LPIPS.from_file(lpips_file)
    elif lpips is not None:
        lpips_file, notes = None, [n for n in notes if not n.startswith("lpips")]
    if lite0 is None and lite0_file is not None:
        lite0 = load_lite0(lite0_file)
    elif lite0 is not None:
        lite0_file, notes = None, [n for n in notes if not n.startswith("fd_lite0")]
    reference = None
    if options.reference_stats is not None:
        if inception is None:
            raise ValueError("--reference-stats needs the FID Inception weights; "
                             + FETCH_HINT)
        reference = read_fid_stats(options.reference_stats, inception.num_features)
    if options.save_stats is not None and (inception is None or reference is not None):
        raise ValueError("--save-stats writes the originals' Inception statistics: it needs "
                         "the Inception weights and no --reference-stats")

    module = EvalModule(tokenizer, options.tokenizer, dataset, inception=inception,
                        lpips=lpips, lite0=lite0, reference=reference,
                        batch_size=options.batch_size, workers=options.workers)
    trainer = pl.Trainer(accelerator=options.accelerator, devices=options.devices,
                         strategy=options.strategy, logger=False, enable_checkpointing=False,
                         enable_model_summary=False, use_distributed_sampler=False,
                         enable_progress_bar=options.progress, num_nodes=1)
    try:
        trainer.test(module, verbose=False)
    except SIGTERMException:
        pass  # Lightning stops between batches; the check below says so
    if trainer.received_sigterm:  # also when the signal came during the last batch
        raise Stopped("stopped by SIGTERM before the end; nothing written")
    if not trainer.is_global_zero:
        return None
    measured = module.measured
    failed = [{"path": str(files[i][0]), "reason": reason} for i, reason in measured.failed]
    if measured.images == 0:
        raise ValueError(f"no image could be measured: all {len(files)} failed (first: "
                         f"{failed[0]['path']}: {failed[0]['reason']})")
    if measured.images < 2 and (inception is not None or lite0 is not None):
        notes.append("rfid and fd_lite0 are null: a covariance needs at least 2 images")
    worst = [{"name": files[i][1], "psnr": _finite(v)}
             for i, v in measured.worst[:options.worst]]
    doc = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "vqtok_version": vqtok_version(),
        "tokenizer": str(options.tokenizer),
        "data": ", ".join(str(d) for d in data_inputs),
        "protocol": {
            "size": options.size,
            "preprocessing": "ADM centre crop: box-halve while the shorter side >= 2 size, "
                             "bicubic to the shorter side = size, centre crop",
            "reconstruction": "encode, decode, 8-bit pixels",
            "inception": (None if inception is None else
                          INCEPTION_FILE if inception_file is not None else "given network"),
            "reference": ("statistics file " + str(options.reference_stats)
                          if reference is not None else "the same preprocessed originals"),
            "lpips": None if lpips is None else ("vgg16 v0.1" if lpips_file is not None
                                                 else "given network"),
            "lite0": (None if lite0 is None else "efficientnet-lite0-57934424.pth"
                      if lite0_file is not None else "given network"),
            "processes": trainer.world_size,
        },
        "images": measured.images,
        "failed": failed,
        "rfid": measured.rfid, "fd_lite0": measured.fd_lite0, "lpips": measured.lpips,
        "psnr": measured.psnr, "psnr_per_image_mean": measured.psnr_mean,
        "ssim": measured.ssim,
        **measured.usage,
        "codebook_size": tokenizer.codebook_size,
        "stages": measured.stages,
        "tokens": measured.tokens,
        "tokens_per_image": measured.tokens // measured.images,
        "worst": worst,
        "notes": notes,
    }
    path = None
    if options.save_stats is not None:
        write_fid_stats(options.save_stats, *measured.reference_moments)
    if options.out is not None:
        path = write_eval(Path(options.out), doc)
    return EvalResult(doc=doc, path=path, notes=notes)


@dataclass
class _Measured:
    """The synchronised values at the end of the test loop (every rank holds them)."""

    images: int
    failed: list[tuple[int, str]]
    rfid: float | None
    fd_lite0: float | None
    lpips: float | None
    psnr: float | None
    psnr_mean: float | None
    ssim: float | None
    usage: dict[str, Any]
    stages: list[dict[str, Any]] | None
    tokens: int
    worst: list[tuple[int, float]]
    reference_moments: tuple[np.ndarray, np.ndarray] | None


class EvalModule(pl.LightningModule):
    """The test loop of :func:`evaluate`: one step per batch of images, metrics as
    torchmetrics states (module doc)."""

    def __init__(self, tokenizer: ImageTokenizer, source: str, dataset: Dataset, *,
                 inception: torch.nn.Module | None, lpips: LPIPS | None,
                 lite0: torch.nn.Module | None,
                 reference: tuple[np.ndarray, np.ndarray] | None, batch_size: int,
                 workers: int) -> None:
        super().__init__()
        self.tokenizer, self.source = tokenizer, source
        self.dataset, self.batch_size, self.workers = dataset, batch_size, workers
        self.lpips_net = lpips
        # A Fréchet distance per feature space: "rfid" (Inception), "fd_lite0".
        self.feature_nets = torch.nn.ModuleDict(
            {k: v for k, v in (("rfid", inception), ("fd_lite0", lite0)) if v is not None})
        self.usage = CodebookUsage(tokenizer.codebook_size, tokenizer.num_stages)
        self.psnr = PeakSignalNoiseRatio(data_range=2.0).set_dtype(torch.float64)
        self.ssim = StructuralSimilarityIndexMeasure(data_range=2.0).set_dtype(torch.float64)
        self.lpips_mean = MeanMetric().set_dtype(torch.float64)
        self.per_image = PerImage()
        self.frechet = torch.nn.ModuleDict({
            name: FrechetDistance(net.num_features, reference=None if (
                reference is None or name != "rfid") else tuple(map(torch.from_numpy, reference)))
            for name, net in self.feature_nets.items()})
        self.failed: list[tuple[int, str]] = []
        self.measured: _Measured | None = None

    def setup(self, stage: str) -> None:
        if self.device.type != self.tokenizer.device.type:  # a GPU: run the tokenizer there
            self.tokenizer = load_tokenizer(self.source, device=self.device)

    def test_dataloader(self) -> DataLoader:
        rank, world = self.global_rank, self.trainer.world_size
        share = list(range(rank, len(self.dataset), world))  # no image twice, none padded
        return DataLoader(self.dataset, batch_size=self.batch_size, sampler=share,
                          collate_fn=collate_as_list, num_workers=self.workers)

    def test_step(self, batch: list[tuple[int, Tensor | str]], batch_idx: int) -> None:
        good = [(i, x) for i, x in batch if isinstance(x, Tensor)]
        for i, reason in ((i, x) for i, x in batch if isinstance(x, str)):
            log.warning("skipping %s: %s", self.dataset.files[i], reason)
            self.failed.append((i, reason))
        if not good:
            return
        index = torch.tensor([i for i, _ in good])
        x = torch.stack([p for _, p in good])  # (B, C, S, S) uint8
        ids, sizes = self.tokenizer.encode_with_sizes(x.permute(0, 2, 3, 1).numpy(),
                                                      batch_size=len(good))
        decoded = self.tokenizer.decode(ids, sizes, batch_size=len(good))
        r = torch.from_numpy(np.stack([np.asarray(im, dtype=np.uint8).reshape(x.shape[2],
                                                                              x.shape[3], -1)
                                       for im in decoded])).permute(0, 3, 1, 2)  # like x
        self.usage.update(ids)
        xf, rf = _unit(x), _unit(r)  # [-1, 1], float64
        self.psnr.update(rf, xf)
        self.ssim.update(rf, xf)
        self.per_image.update(index, psnr_per_image(x, r))
        x3, r3 = _rgb(x), _rgb(r)
        for name, net in self.feature_nets.items():
            metric = self.frechet[name]
            if metric.reference is None:
                metric.update(_fixed_batches(net, x3), real=True)
            metric.update(_fixed_batches(net, r3), real=False)
        if self.lpips_net is not None:
            distances = _fixed_batches(lambda a, b: self.lpips_net(a, b),
                                       _unit(x3).float(), _unit(r3).float())
            self.lpips_mean.update(distances.to(torch.float64))

    def on_test_epoch_end(self) -> None:
        failed = self.failed
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            gathered: list[Any] = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(gathered, self.failed)
            failed = sorted(item for part in gathered for item in part)
        with warnings.catch_warnings():  # a rank without images has nothing to add: fine
            warnings.filterwarnings("ignore", message=".*was called before the ``update``")
            index, values = self.per_image.compute()  # gathered from every process
        images = int(index.numel())
        with self.usage.sync_context():  # the counts summed over processes, for this block
            counts = self.usage.counts.clone()
        if images == 0:  # every rank agrees: index is gathered
            self.measured = _Measured(0, failed, None, None, None, None, None, None, {}, None,
                                      0, [], None)
            return
        usage = _usage(counts)
        stages = None if self.tokenizer.num_stages is None else [
            _usage(row) for row in counts.view(-1, self.tokenizer.codebook_size)]
        distances = {name: float(metric.compute()) if images >= 2 else None
                     for name, metric in self.frechet.items()}
        moments = None
        if "rfid" in self.frechet and images >= 2:
            mu, sigma = self.frechet["rfid"].reference_moments()
            moments = (mu.cpu().numpy(), sigma.cpu().numpy())
        order = torch.argsort(values, stable=True)
        self.measured = _Measured(
            images=images, failed=failed, rfid=distances.get("rfid"),
            fd_lite0=distances.get("fd_lite0"),
            lpips=float(self.lpips_mean.compute()) if self.lpips_net is not None else None,
            psnr=_finite(float(self.psnr.compute())),
            psnr_mean=_finite(float(values.mean())),
            ssim=float(self.ssim.compute()),
            usage=usage, stages=stages, tokens=int(counts.sum()),
            worst=[(int(index[j]), float(values[j])) for j in order.tolist()],
            reference_moments=moments)


def _usage(counts: Tensor) -> dict[str, Any]:
    """:func:`~vqtok.metrics.usage_stats` of per-code counts, as JSON numbers."""
    stats = usage_stats(counts)
    return {"usage": float(stats["usage"]), "perplexity": float(stats["perplexity"]),
            "normalized_entropy": float(stats["normalized_entropy"]),
            "dead_codes": int(stats["dead_codes"])}


def _unit(x: Tensor) -> Tensor:
    """uint8 pixels -> float64 in [-1, 1] (vqtok's default normalisation)."""
    return x.to(torch.float64) / 127.5 - 1.0


def _rgb(x: Tensor) -> Tensor:
    """``(B, 1 or 3, H, W)`` -> ``(B, 3, H, W)``, grey repeated (the networks take RGB)."""
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


def _fixed_batches(fn: Any, *inputs: Tensor) -> Tensor:
    """``fn`` over the inputs in batches of exactly :data:`FEATURE_BATCH` (the last filled
    with blank images, whose outputs are dropped); the outputs concatenated."""
    n = inputs[0].shape[0]
    outputs = []
    for start in range(0, n, FEATURE_BATCH):
        chunk = [t[start:start + FEATURE_BATCH] for t in inputs]
        short = FEATURE_BATCH - chunk[0].shape[0]
        if short:
            chunk = [torch.cat([t, t.new_zeros((short, *t.shape[1:]))]) for t in chunk]
        with torch.inference_mode():
            outputs.append(fn(*chunk)[:FEATURE_BATCH - short].detach().cpu().clone())
    return torch.cat(outputs)


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def format_table(result: EvalResult) -> str:
    """The lines ``vqtok eval`` prints."""
    d = result.doc

    def num(value: float | None, spec: str, unit: str = "") -> str:
        return "null" if value is None else f"{value:{spec}}{unit}"

    p = d["protocol"]
    lines = [(f"{d['tokenizer']} on {d['data']}: {d['images']} images at {p['size']} x "
             f"{p['size']}, {p['processes']} process{'es' if p['processes'] > 1 else ''}")]
    rows = [
        ("rFID (Inception)", num(d["rfid"], ".3f")),
        ("FD (EffNet-Lite0)", f"{num(d['fd_lite0'], '.3f')} (not comparable with rFID)"),
        ("LPIPS (VGG16)", num(d["lpips"], ".4f")),
        ("PSNR", (f"{num(d['psnr'], '.2f', ' dB')} (per-image mean "
                 f"{num(d['psnr_per_image_mean'], '.2f', ' dB')})")),
        ("SSIM", num(d["ssim"], ".4f")),
        ("codebook usage", (f"{d['usage']:.1%} of {d['codebook_size']:,} codes, perplexity "
                           f"{d['perplexity']:.1f}, normalised entropy "
                           f"{d['normalized_entropy']:.3f}")),
        ("tokens", f"{d['tokens_per_image']:,} per image, {d['tokens']:,} in all"),
    ]
    for s, stage in enumerate(d["stages"] or []):
        rows.append((f"  stage {s}", (f"usage {stage['usage']:.1%}, perplexity "
                                     f"{stage['perplexity']:.1f}")))
    if d["worst"]:
        rows.append(("worst by PSNR", ", ".join(f"{w['name']} {num(w['psnr'], '.2f')}"
                                                for w in d["worst"])))
    lines += [f"{name:<18}{value}" for name, value in rows]
    lines += [f"skipped {f['path']}: {f['reason']}" for f in d["failed"]]
    lines += [f"note: {n}" for n in d["notes"]]
    if result.path is not None:
        lines.append(f"wrote {result.path}")
    return "\n".join(lines)

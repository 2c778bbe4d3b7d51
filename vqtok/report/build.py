"""``vqtok report``: read runs (or measure tokenizers), analyse, draw, write HTML + JSON.

Per run the page shows the final metrics and verdict, usage and perplexity over training,
sorted code frequencies, the per-code usage heat map, and, when the run directory holds
the exported tokenizer (``RUN_DIR/tokenizer``), the codebook in 2-D PCA, the distribution
of nearest-neighbour distances between codes, and held-out images with their
reconstructions (see :mod:`vqtok.report.samples` for which images). With several runs a
comparison table and overlaid curves come first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from vqtok.formats import report as report_format
from vqtok.formats.atomic import atomic_write_bytes
from vqtok.formats.eval_result import read_eval
from vqtok.formats.outputs import check_outputs
from vqtok.report import plots
from vqtok.report.analysis import (
    LEVELS,
    Verdict,
    comparison_notes,
    final_metrics,
    thresholds,
    verdict,
)
from vqtok.report.codebook import (
    DUPLICATE_REL_TOL,
    codebook_vectors,
    duplicate_count,
    nearest_other_distances,
    pca_2d,
)
from vqtok.report.history import TOKENIZER_SUBDIR, RunHistory, load_run
from vqtok.report.html import Figure, render_html
from vqtok.report.samples import held_out_images, measure_tokenizer, reconstruct, to_model_input
from vqtok.tokenizers import ImageTokenizer
from vqtok.validation import check_positive


def build_report(
    run_dirs: Sequence[str | Path] = (),
    out: str | Path = "report.html",
    *,
    tokenizers: Sequence[str | Path] = (),
    data: str | Path | None = None,
    same_codebook: bool = False,
    image_size: int = 64,
    max_images: int | None = None,
    samples: int = 6,
    device: str = "cpu",
    overwrite: bool = False,
) -> tuple[Path, Path]:
    """Write the report for ``run_dirs`` (and ``tokenizers`` measured on ``data``).

    Args:
        run_dirs: run directories holding a codebook history (written by ``vqtok fit``).
        out: the HTML file; ``report.json`` is written beside it (same name, ``.json``).
        tokenizers: exported tokenizer directories to measure on ``data`` (no history).
        data: image folder or DataModule YAML: what ``tokenizers`` are measured on, and
            the images every run reconstructs (default: each run's own validation data,
            from the ``config.yaml`` in its run directory; failing that, the embedded
            held-out photos).
        same_codebook: refuse runs whose codebook sizes differ (otherwise noted).
        image_size: side of the crops of photos or folder images (rounded up to a
            multiple of each tokenizer's downsampling factor).
        max_images: measure ``tokenizers`` on at most this many images.
        samples: images reconstructed per run.
        device: where tokenizers run.
        overwrite: replace an existing page or JSON (checked before anything is read);
            never one of the inputs, nor a file inside a tokenizer directory.

    Returns:
        ``(html path, json path)``.
    """
    html_path = Path(out)
    if html_path.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"--out must name an .html file, got {str(out)!r}")
    if not run_dirs and not tokenizers:
        raise ValueError("nothing to report: give RUN_DIR(s) or --tokenizer DIR with --data")
    if tokenizers and data is None:
        raise ValueError("--tokenizer needs --data (an image folder or a DataModule YAML) to "
                         "measure the tokenizer on")
    check_positive(image_size=image_size, samples=samples)
    # What the report reads: every file of each run, each tokenizer directory as a whole
    # (nothing may be written into it) and a --data config file.
    inputs = [p for d in run_dirs if Path(d).is_dir() for p in Path(d).rglob("*") if p.is_file()]
    inputs += [*map(Path, tokenizers), *(Path(d) / TOKENIZER_SUBDIR for d in run_dirs)]
    inputs += [Path(data)] if data is not None and Path(data).is_file() else []
    json_path = html_path.with_suffix(".json")
    check_outputs([html_path, json_path], inputs=inputs, overwrite=overwrite)
    runs = [load_run(d) for d in run_dirs]
    runs += [measure_tokenizer(t, data, image_size=image_size, max_images=max_images,
                               device=device) for t in tokenizers]
    _unique_names(runs)
    notes = comparison_notes({r.name: r.codebook_size for r in runs}, same_codebook)
    analysed = [analyse_run(r, data=data, image_size=image_size, samples=samples,
                            device=device) for r in runs]
    report = {
        "format": report_format.FORMAT,
        "format_version": report_format.FORMAT_VERSION,
        "thresholds": {**thresholds(), "duplicate_rel_tol": DUPLICATE_REL_TOL},
        "runs": [doc for doc, _ in analysed],
        "comparison": {"runs": len(runs),
                       "same_codebook_size": len({r.codebook_size for r in runs}) == 1,
                       "notes": notes},
    }
    figures = _comparison_figures(runs) if len(runs) > 1 else []
    page = render_html(report, [figs for _, figs in analysed], figures)
    report_format.write_report(json_path, report)
    atomic_write_bytes(html_path, page.encode("utf-8"))
    return html_path, json_path


def _unique_names(runs: list[RunHistory]) -> None:
    seen: dict[str, int] = {}
    for run in runs:
        seen[run.name] = seen.get(run.name, 0) + 1
        if seen[run.name] > 1:
            run.name = f"{run.name} ({seen[run.name]})"


def _comparison_figures(runs: Sequence[RunHistory]) -> list[Figure]:
    figures = []
    trained = [r for r in runs if r.source == "history"]
    if trained:
        normalised = len({r.codebook_size for r in runs}) > 1
        figures.append(("validation curves of every run", plots.training_curves(trained,
                                                                                normalised)))
    figures.append(("sorted code frequencies of every run (last validation)",
                    plots.sorted_frequencies([(r.name, r.final_counts) for r in runs])))
    return figures


def analyse_run(run: RunHistory, *, data: str | Path | None = None, image_size: int = 64,
                samples: int = 6, device: str = "cpu") -> tuple[dict[str, Any], list[Figure]]:
    """One run's ``report.json`` entry and its figures."""
    tokenizer = None
    if run.tokenizer_dir is not None:  # fail on a bad tokenizer before drawing anything
        tokenizer = ImageTokenizer.from_pretrained(run.tokenizer_dir, device=device)
        if tokenizer.codebook_size != run.codebook_size:
            raise ValueError(f"{run.tokenizer_dir} has {tokenizer.codebook_size} codes but the "
                             f"history of {run.path} counts {run.codebook_size}")
    counts = run.final_counts
    final = final_metrics(counts, run.validations[-1])
    run_verdict = verdict(counts)
    notes: list[str] = []
    figures: list[Figure] = []
    if run.source == "history":
        caption = ("usage and perplexity over training: validation runs (points); grey: "
                   "single training batches")
        figures.append((caption, plots.training_curves([run])))
    else:
        notes.append("measured once on the given data: no training history, so no curves")
    if run.num_stages > 1:
        run_verdict = _stage_verdicts(counts, run, notes)
    steps = [v["step"] for v in run.validations]
    figures.append(("sorted code frequencies, log-log", plots.sorted_frequencies(
        [(run.name, counts)])))
    figures.append(("per-code usage over validation runs, codes sorted by final use",
                    plots.usage_heatmap(run.counts, steps)))
    book: dict[str, Any] = {"tokenizer": None, "duplicate_codes": None,
                            "nn_codes_measured": None, "nn_distance_min": None,
                            "nn_distance_median": None}
    sample_info: dict[str, Any] = {"source": None, "count": 0}
    if tokenizer is None:
        notes.append(f"no exported tokenizer at {run.path / TOKENIZER_SUBDIR} (has the run "
                     f"finished? was --export_dir used?): no codebook or reconstruction plots")
    else:
        book["tokenizer"] = str(run.tokenizer_dir)
        figures += _codebook_figures(run, tokenizer, book, notes)
        figures.append(_samples_figure(tokenizer, run, data, image_size, samples, sample_info,
                                       notes))
    doc = {
        "name": run.name, "path": str(run.path), "source": run.source,
        "quantizer": run.quantizer, "quantizer_config": run.quantizer_config,
        "codebook_size": run.codebook_size,
        "verdict": asdict(run_verdict),
        "final": final, "validations": run.validations, "train": run.train,
        "codebook": book, "samples": sample_info, "notes": notes,
    }
    evaluation = run.path / EVAL_NAME
    if run.source == "history" and evaluation.is_file():
        doc["eval"] = eval_summary(evaluation)
    return doc, figures


EVAL_NAME = "eval.json"
"""A ``vqtok eval`` result in a run directory, shown beside the run's history."""


def eval_summary(path: Path) -> dict[str, Any]:
    """The numbers of the ``eval.json`` at ``path`` that a report shows."""
    doc = read_eval(path)
    return {"path": str(path), "data": doc["data"], "size": doc["protocol"]["size"],
            **{k: doc[k] for k in report_format.EVAL_KEYS if k not in ("path", "data", "size")}}


def _stage_verdicts(counts: np.ndarray, run: RunHistory, notes: list[str]) -> Verdict:
    """A multi-stage run: a verdict per stage in the notes; the run's is its worst stage's.
    The final metrics are pooled over the stages' (stage, code) slots."""
    per_stage = [verdict(row) for row in counts.reshape(run.num_stages, -1)]
    notes.append(f"{run.num_stages} stages of {run.codebook_size:,} codes: usage and "
                 f"perplexity are pooled over the stages; each stage's own verdict follows")
    notes += [f"stage {s}: {v.text}" for s, v in enumerate(per_stage)]
    worst = max(range(run.num_stages), key=lambda s: (-LEVELS.index(per_stage[s].level), s))
    return Verdict(per_stage[worst].level, f"stage {worst}: {per_stage[worst].text}")


def _codebook_figures(run: RunHistory, tokenizer: ImageTokenizer, book: dict[str, Any],
                      notes: list[str]) -> list[Figure]:
    quantizer = tokenizer.model.quantizer
    codes = codebook_vectors(quantizer)  # (K, D)
    what = "FSQ grid" if type(quantizer).__name__ == "FSQ" else "codebook"
    figures = [(f"the {what} (codes from indices_to_codes) in 2-D PCA, coloured by use",
                plots.codebook_pca(pca_2d(codes), run.final_counts, what))]
    if codes.shape[0] < 2:
        notes.append("a single code: no nearest-neighbour distances")
        return figures
    distances, ids = nearest_other_distances(codes)
    duplicates = duplicate_count(distances, codes)
    book.update({"duplicate_codes": duplicates, "nn_codes_measured": int(ids.size),
                 "nn_distance_min": float(distances.min()),
                 "nn_distance_median": float(np.median(distances))})
    if ids.size < codes.shape[0]:
        notes.append(f"nearest-neighbour distances measured for a random {ids.size:,} of "
                     f"{codes.shape[0]:,} codes (each against all codes)")
    used = run.final_counts[ids] > 0
    caption = "distance from each code to its nearest other code (duplicates: a spike at 0)"
    figures.append((caption, plots.nn_distances(distances, used, duplicates)))
    return figures


def _samples_figure(tokenizer: ImageTokenizer, run: RunHistory, data: str | Path | None,
                    image_size: int, samples: int, info: dict[str, Any],
                    notes: list[str]) -> Figure:
    """Held-out images and their reconstructions. Which images: ``--data`` if given; else
    the validation split of the data the run trained on (the ``data:`` section of the
    ``config.yaml`` that ``vqtok fit`` saves in the run directory), so a Fashion-MNIST
    model is shown Fashion-MNIST; else, or when that data cannot be loaded here, the
    embedded held-out photos."""
    f = tokenizer.downsample_factor
    size = math.ceil(image_size / f) * f
    source = str(data) if data is not None else "embedded held-out photos (vqtok/data/photos/test)"
    run_config = run.path / "config.yaml"
    images = None
    if data is None and run.source == "history" and run_config.is_file():
        try:
            images = held_out_images(run_config, samples, size)
            source = f"validation images of the run's training data ({run_config})"
        except ValueError as err:
            notes.append(f"reconstructions show the embedded photos: the run's own data "
                         f"could not be loaded ({err})")
    if images is None:
        images = held_out_images(data, samples, size)
    x = to_model_input(images, tokenizer)  # (n, C, H, W) in the model's space and channels
    x_hat, _ = reconstruct(tokenizer, x)
    originals = tokenizer.normalization.to_uint8(x).permute(0, 2, 3, 1).numpy()  # (n, H, W, C)
    recons = tokenizer.normalization.to_uint8(x_hat).permute(0, 2, 3, 1).numpy()
    info.update({"source": source, "count": int(images.shape[0])})
    return (f"held-out images (top) and their reconstructions (bottom): {source}",
            plots.image_grid(originals, recons))

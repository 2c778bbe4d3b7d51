"""The report as one self-contained HTML page.

Everything is inline: a ``<style>`` block, and figures as ``data:image/png;base64`` URIs.
The page has no script, no link, no font and no URL, so it opens offline and the same
bytes are readable anywhere. All text from runs is escaped.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from typing import Any

from vqtok.report.analysis import COLLAPSED_BELOW, PARTIAL_BELOW, SKEWED_ENTROPY_BELOW, percent
from vqtok.report.codebook import DUPLICATE_REL_TOL

Figure = tuple[str, bytes]  # (caption, PNG bytes)

_STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1400px; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.3em; margin-top: 2em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.verdict { font-size: 1.1em; font-weight: bold; padding: 0.4em 0.6em; display: inline-block; }
.collapsed { background: #f8d0d0; } .partly-collapsed { background: #fbe3c4; }
.skewed { background: #fbf0c4; } .healthy { background: #d3f0d3; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
figure img { max-width: 100%; } figcaption { font-size: 0.85em; color: #555; }
.note { color: #8a5300; } .small { font-size: 0.85em; color: #555; }
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any, fmt: str = "{:,.2f}") -> str:
    return "-" if value is None else fmt.format(value)


def _img(figure: Figure) -> str:
    caption, png = figure
    data = base64.b64encode(png).decode("ascii")
    return (f'<figure><img alt="{_e(caption)}" src="data:image/png;base64,{data}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>")


def _metrics_row(run: dict[str, Any], with_name: bool) -> str:
    f = run["final"]
    cells = [_e(run["name"])] if with_name else []
    cells += [
        _e(run["quantizer"].rpartition(".")[2]), f"{run['codebook_size']:,}",
        percent(f["usage"]), f"{f['used_codes']:,}", f"{f['dead_codes']:,}",
        _num(f["perplexity"], "{:,.1f}"), _num(f["normalized_entropy"], "{:.3f}"),
        _num(f["psnr"], "{:.2f}"), _num(f["ssim"], "{:.3f}"), _num(f["step"], "{:,}"),
    ]
    if with_name:
        cells.append(f'<span class="{run["verdict"]["level"].replace(" ", "-")}">'
                     f'{_e(run["verdict"]["level"])}</span>')
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def _metrics_table(runs: Sequence[dict[str, Any]], with_name: bool) -> str:
    head = (["run"] if with_name else []) + [
        "quantizer", "codes K", "usage", "used", "dead", "perplexity", "norm. entropy",
        "PSNR (dB)", "SSIM", "step"] + (["verdict"] if with_name else [])
    rows = "".join(_metrics_row(r, with_name) for r in runs)
    return ("<table><tr>" + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr>" + rows
            + "</table>")


def _run_section(index: int, run: dict[str, Any], figures: Sequence[Figure]) -> str:
    level = run["verdict"]["level"]
    parts = [
        f'<h2 id="run-{index}">{_e(run["name"])}</h2>',
        f'<p class="verdict {_e(level.replace(" ", "-"))}">{_e(run["verdict"]["text"])}</p>',
        (f'<p class="small">{_e(run["path"])}<br>{_e(run["quantizer"])}'
         f'({_e(run["quantizer_config"])})<br>source: {_e(run["source"])}, '
         f'{len(run["validations"])} validation run(s), {len(run["train"])} train-curve '
         f"point(s)</p>"),
        _metrics_table([run], with_name=False),
    ]
    if "eval" in run:
        parts.append(_eval_table(run["eval"]))
    book = run["codebook"]
    if book["duplicate_codes"] is not None:
        parts.append(
            f'<p class="small">Codebook from {_e(book["tokenizer"])}: '
            f'{book["duplicate_codes"]:,} duplicate code(s) among {book["nn_codes_measured"]:,}'
            f' measured; nearest-neighbour distance min {_num(book["nn_distance_min"], "{:.4g}")}'
            f', median {_num(book["nn_distance_median"], "{:.4g}")}</p>')
    parts += [f'<p class="note">{_e(n)}</p>' for n in run["notes"]]
    parts += [_img(f) for f in figures]
    return "\n".join(parts)


def _eval_table(ev: dict[str, Any]) -> str:
    """A run's ``vqtok eval`` numbers beside its training history."""
    head = ["vqtok eval on", "images", "size", "rFID", "LPIPS", "PSNR (dB)", "SSIM", "usage",
            "perplexity"]
    cells = [_e(ev["data"]), f"{ev['images']:,}", f"{ev['size']}", _num(ev["rfid"], "{:.3f}"),
             _num(ev["lpips"], "{:.4f}"), _num(ev["psnr"], "{:.2f}"), _num(ev["ssim"], "{:.3f}"),
             percent(ev["usage"]), _num(ev["perplexity"], "{:,.1f}")]
    return ('<table><tr>' + "".join(f"<th>{_e(h)}</th>" for h in head) + "</tr><tr>"
            + "".join(f"<td>{c}</td>" for c in cells) + "</tr></table>"
            + f'<p class="small">from {_e(ev["path"])} (docs/eval.md; - : no weights)</p>')


def _legend() -> str:
    return (
        "<h2>How to read this report</h2><ul class=\"small\">"
        "<li>Usage, perplexity, dead codes and normalised entropy come from the per-code "
        "counts over the whole validation set (one batch cannot show more than N/K usage). "
        "Perplexity = exp(entropy) lies in [1, K]; normalised entropy = log(perplexity) / "
        "log K.</li>"
        f"<li>Verdict: with <i>measurable</i> = min(K, validation tokens), "
        f"<b>collapsed</b> when used / measurable &lt; {percent(COLLAPSED_BELOW)}, "
        f"<b>partly collapsed</b> when &lt; {percent(PARTIAL_BELOW)}, <b>skewed</b> when "
        f"log(perplexity) / log(measurable) is &lt; {SKEWED_ENTROPY_BELOW} (the normalised "
        "entropy when there are at least K validation tokens), else <b>healthy</b>.</li>"
        "<li>The grey train curve is the usage of single training batches: it can never "
        "exceed batch tokens / K and is not the codebook's usage.</li>"
        f"<li>Duplicates: codes whose nearest other code lies within {DUPLICATE_REL_TOL:g} "
        "times the codes' RMS norm; they show as a spike at 0 in the distance plot.</li>"
        "<li>PSNR and SSIM are measured in [-1, 1] pixel space (data range 2).</li></ul>"
    )


def render_html(report: dict[str, Any], run_figures: Sequence[Sequence[Figure]],
                comparison_figures: Sequence[Figure]) -> str:
    """The page for a report dict (``report.json``'s content) and its figures."""
    runs = report["runs"]
    body = ["<h1>vqtok codebook report</h1>",
            (f'<p class="small">{len(runs)} run(s); format {_e(report["format"])} '
             f'v{report["format_version"]}</p>')]
    if len(runs) > 1:
        body.append("<h2>Comparison</h2>")
        body.append(_metrics_table(runs, with_name=True))
        body += [f'<p class="note">{_e(n)}</p>' for n in report["comparison"]["notes"]]
        body += [_img(f) for f in comparison_figures]
    for i, (run, figures) in enumerate(zip(runs, run_figures)):
        body.append(_run_section(i, run, figures))
    body.append(_legend())
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<title>vqtok codebook report</title><style>" + _STYLE + "</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")

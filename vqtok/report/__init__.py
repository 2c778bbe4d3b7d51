"""Codebook-collapse reports (DESIGN.md section 1, layer 6): ``vqtok report``.

:func:`build_report` reads run directories (the history written by
:class:`~vqtok.training.callbacks.CodebookHistory`) or measures exported tokenizers on a
dataset, and writes one self-contained HTML page plus ``report.json`` (schema in
:mod:`vqtok.report.schema`).
"""

from vqtok.report.analysis import Verdict, verdict
from vqtok.report.build import build_report
from vqtok.report.history import RunHistory, load_run
from vqtok.report.schema import REPORT_FORMAT, REPORT_VERSION, validate_report

__all__ = [
    "REPORT_FORMAT",
    "REPORT_VERSION",
    "RunHistory",
    "Verdict",
    "build_report",
    "load_run",
    "validate_report",
    "verdict",
]

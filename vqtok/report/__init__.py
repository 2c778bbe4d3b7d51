"""Codebook-collapse reports, ``vqtok report`` (an application: docs/architecture.md).

:func:`build_report` reads run directories (the history written by
:class:`~vqtok.training.callbacks.CodebookHistory`) or measures exported tokenizers on a
dataset, and writes one self-contained HTML page plus its JSON (:mod:`vqtok.formats.report`).
"""

from vqtok.report.analysis import Verdict, verdict
from vqtok.report.build import build_report
from vqtok.report.history import RunHistory, load_run

__all__ = [
    "RunHistory",
    "Verdict",
    "build_report",
    "load_run",
    "verdict",
]

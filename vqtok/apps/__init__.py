"""The applications behind the ``vqtok`` command (docs/architecture.md): the demo, file
tokenization (``encode``/``decode``) and the LPIPS weights file (``lpips convert``). The
codebook-collapse report is :mod:`vqtok.report`; text-to-image output (``generate``) is
:mod:`vqtok.lm.command`; argument parsing is :mod:`vqtok.cli`."""


class Stopped(Exception):
    """A command stopped by a signal before it finished, with nothing written; ``vqtok``
    exits with ``status`` (128 + the signal's number, as a shell reports it)."""

    def __init__(self, message: str, status: int = 143) -> None:
        super().__init__(message)
        self.status = status

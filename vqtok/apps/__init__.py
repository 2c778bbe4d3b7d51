"""The applications behind the ``vqtok`` command (docs/architecture.md): the demo, file
tokenization (``encode``/``decode``) and the LPIPS weights file (``lpips convert``). The
codebook-collapse report is :mod:`vqtok.report`; text-to-image output (``generate``) is
:mod:`vqtok.lm.command`; argument parsing is :mod:`vqtok.cli`."""

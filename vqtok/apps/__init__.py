"""The applications behind the ``vqtok`` command (docs/architecture.md): the demo, file
tokenization (``encode``/``decode``) and text-to-image output (``generate``) and the LPIPS weights
file (``lpips convert``). The
codebook-collapse report is :mod:`vqtok.report`; argument parsing is :mod:`vqtok.cli`."""

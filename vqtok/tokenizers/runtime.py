"""Where and how inference runs: device names checked up front, and the kernels that keep
a result independent of the batch and of the input's size (the determinism rules of
:mod:`vqtok.tokenizers.image`)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` as a torch device that exists here; a ValueError that says why not."""
    try:
        found = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as err:
        raise ValueError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from err
    if found.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: this torch sees no CUDA device; use cpu")
    if found.type == "cuda" and found.index is not None and (
            found.index >= torch.cuda.device_count()):
        raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA "
                         f"device(s) here")
    if found.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"device {device!r}: MPS is not available here; use cpu")
    if found.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device {device!r}: vqtok runs on cpu, cuda or mps")
    return found


@contextlib.contextmanager
def cpu_per_sample_kernels() -> Iterator[None]:
    """oneDNN and NNPACK off while the block runs (restored after): every CPU conv then
    goes through the native im2col + GEMM kernel, which computes each sample, and each
    position of it, with the same arithmetic whatever the batch and the input size."""
    # torch picks oneDNN for batches > 1 and NNPACK for batches >= 16 but the native
    # kernel for a single small image; the native kernel alone is per-sample.
    mkldnn = torch.backends.mkldnn.enabled
    nnpack = torch.backends.nnpack.set_flags(False)[0]
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = mkldnn
        torch.backends.nnpack.set_flags(nnpack)


@contextlib.contextmanager
def inference_kernels(device: torch.device, batch_invariant: bool) -> Iterator[None]:
    """Inference mode, and with ``batch_invariant`` the batch-independent kernels of the
    device: per-sample kernels on the CPU, deterministic cuDNN without TF32 on CUDA."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.inference_mode())
        if batch_invariant and device.type == "cpu":
            stack.enter_context(cpu_per_sample_kernels())
        elif batch_invariant and device.type == "cuda":
            stack.enter_context(torch.backends.cudnn.flags(
                enabled=True, benchmark=False, deterministic=True, allow_tf32=False))
        yield


MAX_COMPILED_SHAPES = 8
"""Input shapes a :class:`CompiledCall` compiles a graph for; further shapes run eager (a
graph costs seconds to build, so a folder of many image sizes would spend its time
compiling)."""


class CompiledCall:
    """``fn(x)`` through ``torch.compile`` (inductor, static shapes: one graph per input
    shape, built on the first call with that shape), falling back to eager ``fn``:

    * for shapes beyond the first :data:`MAX_COMPILED_SHAPES`;
    * for good, with one warning, when compiling fails (inductor needs a C++ compiler on
      the CPU; an op it cannot lower).

    Inductor fuses the elementwise steps between convolutions (activations, norms,
    additions) that eager mode runs one memory pass at a time; the convolutions and matrix
    products stay torch's own kernels, so results match eager up to float rounding.
    """

    def __init__(self, fn: Callable[[Tensor], Tensor], name: str) -> None:
        self.fn = fn
        self.name = name
        self.compiled = torch.compile(fn, dynamic=False)
        self.shapes: set[tuple[int, ...]] = set()
        self.failed: str | None = None

    def __call__(self, x: Tensor) -> Tensor:
        shape = tuple(x.shape)
        if self.failed is None and (shape in self.shapes or
                                    len(self.shapes) < MAX_COMPILED_SHAPES):
            if shape not in self.shapes:
                log.info("compiling the %s for inputs of shape %s (once per shape)",
                         self.name, shape)
            try:
                out = self.compiled(x)
            except Exception as err:  # noqa: BLE001 - any compiler failure: run eager
                reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
                self.failed = reason
                log.warning("torch.compile of the %s failed (%s); running it eagerly",
                            self.name, reason[:200])
            else:
                self.shapes.add(shape)
                return out
        return self.fn(x)


def compiled_indices(model: nn.Module) -> CompiledCall:
    """``model.encode(x).indices`` (a :class:`~vqtok.models.autoencoder.VQAutoencoder`) as a
    :class:`CompiledCall`."""
    return CompiledCall(lambda x: model.encode(x).indices, "encoder")

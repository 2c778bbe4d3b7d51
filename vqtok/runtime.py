"""Where and how inference runs: device names checked up front, and the kernels that keep
a result independent of the batch and of the input's size (the determinism rules of
:mod:`vqtok.tokenizer`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


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


__all__ = ["cpu_per_sample_kernels", "inference_kernels", "resolve_device"]

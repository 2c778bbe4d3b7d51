"""``vqtok.tokenizers.runtime.CompiledCall``: when it compiles, and how it falls back to eager."""

from __future__ import annotations

import logging

import pytest
import torch

from vqtok.tokenizers import runtime
from vqtok.tokenizers.runtime import CompiledCall


def double(x: torch.Tensor) -> torch.Tensor:
    return x * 2


class Recorder:
    """Stands in for the compiled function: records the shapes it is called with."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[int, ...]] = []
        self.fail = fail

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls.append(tuple(x.shape))
        if self.fail:
            raise RuntimeError("InductorError: no working C++ compiler found\nmore detail")
        return x * 2


def test_a_failed_compile_warns_once_and_runs_eager(caplog: pytest.LogCaptureFixture) -> None:
    call = CompiledCall(double, "encoder")
    call.compiled = recorder = Recorder(fail=True)
    x = torch.arange(6.0).reshape(2, 3)
    with caplog.at_level(logging.WARNING, logger="vqtok.tokenizers.runtime"):
        assert torch.equal(call(x), x * 2)
        assert torch.equal(call(x + 1), (x + 1) * 2)
    assert recorder.calls == [(2, 3)]  # not tried again
    assert call.failed == "InductorError: no working C++ compiler found"
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == [("torch.compile of the encoder failed (InductorError: no working C++ "
                         "compiler found); running it eagerly")]


def test_shapes_beyond_the_limit_run_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "MAX_COMPILED_SHAPES", 2)
    call = CompiledCall(double, "encoder")
    call.compiled = recorder = Recorder()
    for n in (1, 2, 1, 3, 2, 4):
        x = torch.ones(n, 3)
        assert torch.equal(call(x), x * 2)
    assert recorder.calls == [(1, 3), (2, 3), (1, 3), (2, 3)]  # 3 and 4 ran eager
    assert call.shapes == {(1, 3), (2, 3)}

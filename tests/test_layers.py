"""Inference never imports Lightning (docs/architecture.md): checked in a fresh interpreter,
since this test process has Lightning loaded already."""

from __future__ import annotations

import json
import subprocess
import sys

STEPS = {
    **{f"import {m}": f"import {m}" for m in (
        "vqtok", "vqtok.tokenizers", "vqtok.lm", "vqtok.lm.command",
        "vqtok.formats.tokenizer_dir", "vqtok.lm.lm_dir", "vqtok.formats.hub", "vqtok.onnx_export",
        "vqtok.data", "vqtok.apps.files", "vqtok.apps.videos", "vqtok.cli",
        "vqtok.apps.shards", "vqtok.formats.token_shards", "vqtok.data.webdata")},
    **{f"vqtok {c} --help": f"from vqtok.cli import main\ntry:\n    main([{c!r}, '--help'])\n"
                           f"except SystemExit:\n    pass"
       for c in ("encode", "decode", "generate", "export", "data")},
}


def lightning_after_each(steps: dict[str, str]) -> dict[str, list[str]]:
    """Run ``steps`` in order in one fresh interpreter; the Lightning modules loaded after
    each."""
    lines = ["import contextlib, io, json, sys", "loaded = {}"]
    for name, body in steps.items():
        lines.append("with contextlib.redirect_stdout(io.StringIO()):")
        lines += [f"    {line}" for line in body.splitlines()]
        lines.append(f"loaded[{name!r}] = sorted(m for m in sys.modules if m.split('.')[0] in "
                     f"('lightning', 'pytorch_lightning'))")
    lines.append("print(json.dumps(loaded))")
    done = subprocess.run([sys.executable, "-c", "\n".join(lines)], capture_output=True,
                          text=True, check=False, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_inference_api_and_plain_commands_load_no_lightning() -> None:
    loaded = lightning_after_each(STEPS)
    assert list(loaded) == list(STEPS)
    assert {step: modules for step, modules in loaded.items() if modules} == {}


def test_the_probe_sees_lightning_when_it_is_imported() -> None:
    loaded = lightning_after_each({"training": "import vqtok.training.module"})
    assert "lightning.pytorch" in loaded["training"]

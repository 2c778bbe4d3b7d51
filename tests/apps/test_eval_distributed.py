"""`vqtok eval` on two processes (Lightning DDP, gloo on the CPU) gives the one-process
numbers: counts exactly, the Fréchet distance and LPIPS to 1e-6 relative, PSNR and SSIM
to float64 rounding; files that fail on either rank are listed once. Marked slow: each run starts
Lightning's processes (about a minute for both runs on two busy cores)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.apps.test_eval import smooth_image
from tests.helpers import ROOT, tiny_model
from vqtok.tokenizers import ImageTokenizer

SCRIPT = """
import sys
from tests.apps.test_eval import TinyFeatures
from vqtok.apps.evaluate import EvalOptions, evaluate
from vqtok.models.lpips import LPIPS

tokenizer, data, out, devices = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
evaluate(EvalOptions(tokenizer=tokenizer, data=data, size=32, out=out, batch_size=3,
                     devices=devices, strategy="ddp" if devices > 1 else "auto",
                     progress=False),
         inception=TinyFeatures(), lpips=LPIPS.random(seed=4), lite0=TinyFeatures(seed=1))
"""


@pytest.mark.slow
def test_two_processes_give_the_one_process_numbers(tmp_path: Path) -> None:
    tok = tmp_path / "tok"
    ImageTokenizer(tiny_model(seed=2)).save_pretrained(tok)
    data = tmp_path / "images"
    data.mkdir()
    for i in range(9):  # 9 readable images: 5 on rank 0, 4 on rank 1, in uneven batches
        Image.fromarray(smooth_image(40 + 3 * i, 36, i)).save(data / f"im{i}.png")
    (data / "x-broken.png").write_bytes(b"\x89PNG broken")  # image 9: rank 1's
    Image.fromarray(smooth_image(20, 40, 0)).save(data / "y-small.png")  # image 10: rank 0's
    script = tmp_path / "run_eval.py"
    script.write_text(SCRIPT)
    docs = []
    for devices in (1, 2):
        out = tmp_path / f"eval{devices}.json"
        # a new process, so that Lightning's launcher can start the second rank as a copy
        done = subprocess.run([sys.executable, str(script), str(tok), str(data), str(out),
                               str(devices)], cwd=tmp_path, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"},
                              timeout=600, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        docs.append(json.loads(out.read_text()))
    one, two = docs
    assert one["protocol"]["processes"] == 1 and two["protocol"]["processes"] == 2
    for key in ("images", "tokens", "tokens_per_image", "dead_codes", "failed", "codebook_size",
                "usage", "perplexity", "normalized_entropy"):
        assert one[key] == two[key], key
    assert one["images"] == 9 and len(one["failed"]) == 2
    assert two["rfid"] == pytest.approx(one["rfid"], rel=1e-6)
    assert two["fd_lite0"] == pytest.approx(one["fd_lite0"], rel=1e-6)
    for key in ("psnr", "psnr_per_image_mean", "ssim"):  # float64 sums of uint8 differences
        assert two[key] == pytest.approx(one[key], rel=1e-9), key
    # LPIPS runs VGG16 in float32 and an image's place in its fixed batch differs between
    # the runs; its kernels' low bits may too (about 1e-8 measured)
    assert two["lpips"] == pytest.approx(one["lpips"], rel=1e-6)
    assert [w["name"] for w in one["worst"]] == [w["name"] for w in two["worst"]]

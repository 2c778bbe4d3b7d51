"""One-off parity of ``vqtok convert --from llamagen`` against LlamaGen's own model code,
which is not a package (docs/interop.md#llamagen). Prints the lines recorded in
``benchmarks/RESULTS_llamagen_parity.md``; not part of the test suite.

Protocol. ``VQ_PY`` is ``tokenizer/tokenizer_image/vq_model.py`` of a checkout of
github.com/FoundationVision/LlamaGen, copied to a scratch folder outside this repository
(it imports ``huggingface_hub``, nothing else beyond torch). For VQ-8 and VQ-16 at the
published sizes (16,384 codes of dim 8), its ``VQ_models[arch]`` is built with random
values in every parameter (norm scales and biases included), saved as ``{"model":
state_dict}`` as LlamaGen publishes its files, and converted by vqtok. Four random 128 x 128
images in [-1, 1] are encoded by both (LlamaGen: ``encode``'s indices) and the ids decoded
by both (LlamaGen: ``decode_code``).

Run: python benchmarks/llamagen_parity.py /tmp/llamagen/vq_model.py
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.interop.references import randomize
from vqtok.interop.llamagen import load_llamagen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("vq_py", type=Path, help="LlamaGen's vq_model.py, outside the repo")
    args = parser.parse_args()
    spec = importlib.util.spec_from_file_location("llamagen_vq_model", args.vq_py)
    llamagen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(llamagen)
    folder = Path(tempfile.mkdtemp())
    for seed, arch in enumerate(("VQ-8", "VQ-16")):
        reference = randomize(llamagen.VQ_models[arch](codebook_size=16384,
                                                       codebook_embed_dim=8), seed)
        torch.save({"model": reference.state_dict()}, folder / f"{arch}.pt")
        converted = load_llamagen(folder / f"{arch}.pt")
        x = torch.rand(4, 3, 128, 128, generator=torch.Generator().manual_seed(7)) * 2 - 1
        side = 128 // converted.model.downsample_factor
        with torch.no_grad():
            _, _, (_, _, ids) = reference.encode(x)
            ids = ids.reshape(4, side, side)
            pixels = reference.decode_code(ids.flatten(), shape=(4, 8, side, side))
            ours = converted.model.encode(x).indices
            decoded = converted.model.decode_indices(ours)
        print(f"{arch}: ids equal at {int((ours == ids).sum())} of {ids.numel()} positions "
              f"({len(ids.unique())} distinct codes); decoded pixels max |diff| "
              f"{(decoded - pixels).abs().max().item():.1e} (values up to "
              f"{pixels.abs().max().item():.2f}); ignored: {converted.ignored}")
    print(f"torch {torch.__version__}")


if __name__ == "__main__":
    main()

"""Suite-wide settings.

* Data sets are read through ``VQTOK_DATA`` (docs/data.md). Beside a checkout with the
  project's ``../shared/data`` folder, and unless ``VQTOK_DATA`` is already set, that folder
  is used; otherwise tests that need Fashion-MNIST skip with the command that fetches it.
* One intra-op thread in every test module: tiny tensors run faster without threading and
  results do not depend on the machine's core count.
* Nothing reaches the Hugging Face Hub: ``HF_HUB_OFFLINE=1`` is set before huggingface_hub
  (the hub extra) is first imported, so a path that is not a directory and looks like a
  repo id is looked up in the Hub cache only (docs/formats.md#hugging-face-hub).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
if not os.environ.get("VQTOK_DATA") and SHARED_DATA.is_dir():
    os.environ["VQTOK_DATA"] = str(SHARED_DATA)
os.environ["HF_HUB_OFFLINE"] = "1"


@pytest.fixture(autouse=True, scope="module")
def _single_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)

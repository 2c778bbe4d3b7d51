"""The multimodal language model (LM): text to image and to video, on the token grids of a
vqtok tokenizer.

==========================  ==============================================================
:mod:`.streams`              one vocabulary for text, image codes and markers; token streams
:mod:`.positions`            position schemes (docs/algorithms.md#streams-and-positions)
:mod:`.rope`, :mod:`.attention`  rotary embedding, attention variants with a KV cache
:mod:`.model`                :class:`MultimodalLM` and constrained generation of grids
:mod:`.lm_dir`               its directory format (``config.json`` + ``model.safetensors``)
:mod:`.captions`             the captions it learns and is prompted with
:mod:`.generation`           prompt -> images or clips, through the tokenizer
:mod:`.command`              ``vqtok generate``
:mod:`.token_cache`          the token ids of a dataset, cached per tokenizer
:mod:`.data`                 captioned streams for training (Lightning)
:mod:`.train`                :class:`~vqtok.lm.train.LMModule` (Lightning)
:mod:`.cli`                  ``vqtok lm fit|validate|test`` (Lightning)
==========================  ==============================================================

Importing this package loads no Lightning; only :mod:`.data`, :mod:`.train` and
:mod:`.cli` do. Within vqtok only the top layer (``vqtok.cli``) imports it.
"""

from vqtok.lm.captions import caption_for, expand_prompt
from vqtok.lm.generation import generate_from_prompt, video_from_prompt
from vqtok.lm.lm_dir import LMFormatError, load_lm_dir, save_lm_dir
from vqtok.lm.model import (
    GridConstraint,
    LMConfig,
    MultimodalLM,
    generate_grid,
    generate_image,
    generate_video,
)
from vqtok.lm.streams import (
    Modality,
    Vocabulary,
    build_stream,
    collate,
    extract_images,
    extract_videos,
)

__all__ = [
    "GridConstraint",
    "LMConfig",
    "LMFormatError",
    "Modality",
    "MultimodalLM",
    "Vocabulary",
    "build_stream",
    "caption_for",
    "collate",
    "expand_prompt",
    "extract_images",
    "extract_videos",
    "generate_from_prompt",
    "generate_grid",
    "generate_image",
    "generate_video",
    "load_lm_dir",
    "save_lm_dir",
    "video_from_prompt",
]

"""Multimodal token streams and a decoder-only transformer over them
(docs/algorithms.md#streams-and-positions and #attention-variants).

Pure torch; no dependency on the quantizers: a stream holds codebook indices, whichever
tokenizer produced them.
"""

from vqtok.multimodal.attention import (
    ATTENTION_KINDS,
    GroupedQueryAttention,
    KVCache,
    LayerCache,
    MultiHeadLatentAttention,
    make_attention,
)
from vqtok.multimodal.decoder import (
    DecoderConfig,
    GenerationOutput,
    GridConstraint,
    MultimodalDecoder,
    generate_grid,
    generate_image,
    generate_video,
    sample_next,
)
from vqtok.multimodal.positions import SCHEMES, PositionScheme, make_scheme
from vqtok.multimodal.rope import RotaryEmbedding
from vqtok.multimodal.streams import (
    Modality,
    Span,
    Stream,
    StreamBatch,
    Vocabulary,
    build_stream,
    collate,
    extract_images,
    extract_videos,
)

__all__ = [
    "ATTENTION_KINDS",
    "SCHEMES",
    "DecoderConfig",
    "GenerationOutput",
    "GridConstraint",
    "GroupedQueryAttention",
    "KVCache",
    "LayerCache",
    "Modality",
    "MultiHeadLatentAttention",
    "MultimodalDecoder",
    "PositionScheme",
    "RotaryEmbedding",
    "Span",
    "Stream",
    "StreamBatch",
    "Vocabulary",
    "build_stream",
    "collate",
    "extract_images",
    "extract_videos",
    "generate_grid",
    "generate_image",
    "generate_video",
    "make_attention",
    "make_scheme",
    "sample_next",
]

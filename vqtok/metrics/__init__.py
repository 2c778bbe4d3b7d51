"""Metrics computed from code ids alone, so they work for every quantizer
(docs/algorithms.md#codebook-usage), and the colourfulness of an image."""

from vqtok.metrics.colour import GREY_COLOURFULNESS, colourfulness
from vqtok.metrics.usage import CodebookUsage, stage_slots, usage_stats

__all__ = ["GREY_COLOURFULNESS", "CodebookUsage", "colourfulness", "stage_slots", "usage_stats"]

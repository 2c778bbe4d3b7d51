"""Metrics computed from code ids alone, so they work for every quantizer
(docs/algorithms.md#codebook-usage)."""

from vqtok.metrics.usage import CodebookUsage, stage_slots, usage_stats

__all__ = ["CodebookUsage", "stage_slots", "usage_stats"]

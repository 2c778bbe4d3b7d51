"""Metrics computed from code ids alone, so they work for every quantizer (DESIGN.md
section 4)."""

from vqtok.metrics.usage import CodebookUsage, usage_stats

__all__ = ["CodebookUsage", "usage_stats"]

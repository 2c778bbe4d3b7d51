"""Argument checks that every layer shares, so that one mistake is worded one way."""

from __future__ import annotations


def is_positive_int(value: object) -> bool:
    """Whether ``value`` is an int >= 1 (a bool is not, nor a float such as ``2.0``)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_positive(**values: object) -> None:
    """A ValueError naming the first of ``values`` that is not a positive int:
    ``check_positive(batch_size=batch_size, dim=dim)``."""
    for name, value in values.items():
        if not is_positive_int(value):
            raise ValueError(f"{name} must be a positive int, got {value!r}")


def check_positive_or_none(**values: object) -> None:
    """Like :func:`check_positive`, letting ``None`` (an unset option) through."""
    for name, value in values.items():
        if value is not None and not is_positive_int(value):
            raise ValueError(f"{name} must be a positive int or None, got {value!r}")

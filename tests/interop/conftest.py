"""Fixtures of the conversion tests: the offline Hub cache of the Hub tests."""

from tests.formats.test_hub import cache  # noqa: F401 (a fixture, used by name)

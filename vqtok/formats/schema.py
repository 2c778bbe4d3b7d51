"""One declarative validator for every file vqtok reads (docs/formats.md).

A format is described once, as data: a tree of specs saying which keys an object has and
what type and range each value takes. :func:`validate` walks a parsed document (JSON, or
the arrays of an ``.npz``) against it and raises :class:`FormatError` naming the first
offending key path, e.g. ``image.channels must be an integer >= 1, got true``. Checks that
relate several fields (ids in range of a codebook size, rows matching steps) stay in the
format's module, after this one pass.

Rules common to every spec: ``bool`` is never an integer or a float (JSON ``true`` is not
a count), floats are finite, an integer is accepted where a float is expected (JSON writes
``1.0`` as ``1``), and objects have exactly their declared keys.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np


class FormatError(ValueError):
    """A file that does not follow its format; the message names the file and the key."""


def is_int(value: Any) -> bool:
    """An ``int`` (or numpy integer) that is not a ``bool``."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _show(value: Any) -> str:
    """A value as it reads in the file: JSON spelling for JSON values, shape and dtype for
    arrays, never a long repr."""
    if isinstance(value, np.ndarray):
        return f"an array of shape {value.shape} and dtype {value.dtype}"
    if isinstance(value, np.generic):
        value = value.item()  # np.int64(5) reads as 5
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:77]}..."


class Spec:
    """What one value must be. Subclasses implement :meth:`check`."""

    def check(self, value: Any, where: str) -> None:
        raise NotImplementedError

    def fail(self, where: str, expected: str, value: Any) -> FormatError:
        return FormatError(f"{where} must be {expected}, got {_show(value)}")


def _bounds(low: float | None, high: float | None, low_open: bool = False) -> str:
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        parts.append(f"<= {high:g}")
    return (" " + " and ".join(parts)) if parts else ""


@dataclass(frozen=True)
class Int(Spec):
    """An integer, optionally within ``[min, max]``."""

    min: int | None = None
    max: int | None = None

    def check(self, value: Any, where: str) -> None:
        if (not is_int(value) or (self.min is not None and value < self.min)
                or (self.max is not None and value > self.max)):
            raise self.fail(where, f"an integer{_bounds(self.min, self.max)}", value)


@dataclass(frozen=True)
class Float(Spec):
    """A finite number (an integer is accepted), optionally bounded; ``above`` is an
    exclusive lower bound."""

    min: float | None = None
    max: float | None = None
    above: float | None = None

    def check(self, value: Any, where: str) -> None:
        ok = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
            value, (bool, np.bool_)) and math.isfinite(value)
        ok = ok and (self.min is None or value >= self.min) and (
            self.max is None or value <= self.max) and (self.above is None or value > self.above)
        if not ok:
            low, low_open = (self.above, True) if self.above is not None else (self.min, False)
            raise self.fail(where, f"a finite number{_bounds(low, self.max, low_open)}", value)


@dataclass(frozen=True)
class Str(Spec):
    """A string; ``contains``: a substring it must hold; ``nonempty``: not ``""``;
    ``pattern``: a regular expression the whole string matches, described by ``what``."""

    contains: str | None = None
    nonempty: bool = False
    pattern: str | None = None
    what: str = "a string"

    def check(self, value: Any, where: str) -> None:
        if not isinstance(value, str):
            raise self.fail(where, self.what, value)
        if self.nonempty and not value:
            raise self.fail(where, "a non-empty string", value)
        if self.contains is not None and self.contains not in value:
            raise self.fail(where, f"a string containing {self.contains!r}", value)
        if self.pattern is not None and re.fullmatch(self.pattern, value) is None:
            raise self.fail(where, self.what, value)


class Bool(Spec):
    """``true`` or ``false``."""

    def check(self, value: Any, where: str) -> None:
        if not isinstance(value, bool):
            raise self.fail(where, "true or false", value)


def _same(a: Any, b: Any) -> bool:
    """Equal in type and value (``1`` is not ``true``, ``1.0`` is not ``1``)."""
    return type(a) is type(b) and a == b


class OneOf(Spec):
    """One of a few allowed values."""

    def __init__(self, *values: Any) -> None:
        self.values = values

    def check(self, value: Any, where: str) -> None:
        if not any(_same(value, v) for v in self.values):
            raise self.fail(where, "one of " + ", ".join(map(_show, self.values)), value)


@dataclass(frozen=True)
class Const(Spec):
    """Exactly ``value``: the ``format`` key that says what kind of file this is.
    ``what`` names the kind in the message ("a vqtok tokenizer directory")."""

    value: Any
    what: str | None = None

    def check(self, value: Any, where: str) -> None:
        if not _same(value, self.value):
            kind = f" ({self.what})" if self.what else ""
            raise FormatError(f"{where} must be {_show(self.value)}{kind}, got {_show(value)}")


@dataclass(frozen=True)
class Version(Spec):
    """A format version this vqtok reads; a newer one says to upgrade."""

    version: int

    def check(self, value: Any, where: str) -> None:
        if not is_int(value) or value != self.version:
            newer = is_int(value) and value > self.version
            hint = " (written by a newer vqtok? upgrade vqtok)" if newer else ""
            raise FormatError(f"unsupported {where} {_show(value)}; this vqtok reads "
                              f"{self.version}{hint}")


@dataclass(frozen=True)
class Nullable(Spec):
    """``null`` or what ``inner`` accepts."""

    inner: Spec

    def check(self, value: Any, where: str) -> None:
        if value is not None:
            self.inner.check(value, where)


class Anything(Spec):
    """Any value of the given Python types (default: any JSON object), not looked into:
    free metadata, or init args that the registry checks when it builds the module."""

    def __init__(self, *types: type, what: str = "an object") -> None:
        self.types, self.what = types or (dict,), what

    def check(self, value: Any, where: str) -> None:
        if not isinstance(value, self.types):
            raise self.fail(where, self.what, value)


@dataclass(frozen=True)
class ListOf(Spec):
    """A list of ``item``; ``length``: exactly that many items."""

    item: Spec
    length: int | None = None

    def check(self, value: Any, where: str) -> None:
        if not isinstance(value, list) or (self.length is not None and len(value) != self.length):
            size = f" of {self.length} items" if self.length is not None else ""
            raise self.fail(where, f"a list{size}", value)
        for i, item in enumerate(value):
            self.item.check(item, f"{where}[{i}]")


class Obj(Spec):
    """An object with the ``required`` keys and any of the ``optional`` ones; other keys
    are an error unless ``open`` (a file whose other keys belong to another program).

    The :class:`Const` and :class:`Version` keys (the ``format`` header) are checked first,
    so a foreign file is called foreign rather than listed key by key; then unknown and
    missing keys, then every value in declaration order.
    """

    def __init__(self, required: Mapping[str, Spec], optional: Mapping[str, Spec] | None = None,
                 open: bool = False) -> None:
        self.required, self.optional, self.open = dict(required), dict(optional or {}), open

    @property
    def keys(self) -> set[str]:
        """Every key the object may hold."""
        return set(self.required) | set(self.optional)

    def check(self, value: Any, where: str) -> None:
        if not isinstance(value, Mapping):
            raise self.fail(where or "the document", "an object", value)
        prefix = f"{where}." if where else ""
        for key, spec in self.required.items():
            if isinstance(spec, (Const, Version)):
                spec.check(value.get(key), prefix + key)
        known = {**self.required, **self.optional}
        unknown = sorted(map(str, set(value) - set(known)))
        if unknown and not self.open:
            raise FormatError(f"unknown keys {unknown} in {where or 'the document'}; "
                              f"expected {sorted(known)}")
        missing = [key for key in self.required if key not in value]
        if missing:
            raise FormatError(f"missing keys {missing} in {where or 'the document'}")
        for key, spec in known.items():
            if key in value:
                spec.check(value[key], prefix + key)


_KINDS = {"i": "integers", "u": "integers", "f": "floats", "b": "booleans", "U": "text"}


@dataclass(frozen=True)
class Array(Spec):
    """A numpy array (an ``.npz`` member): ``kinds`` are the allowed dtype kinds
    (``"iu"`` integers, ``"f"`` floats, ``"b"`` booleans, ``"U"`` text); ``shape`` its
    shape with ``None`` for a free size; ``min``: a lower bound on every value."""

    kinds: str
    shape: tuple[int | None, ...]
    min: int | None = None

    def check(self, value: Any, where: str) -> None:
        kinds = " or ".join(sorted({_KINDS[k] for k in self.kinds}))
        dims = "a scalar" if not self.shape else "an array of shape (" + ", ".join(
            "n" if s is None else str(s) for s in self.shape) + (",)" if len(self.shape) == 1
                                                                 else ")")
        expected = f"{dims} of {kinds}"
        if not isinstance(value, np.ndarray) or value.dtype.kind not in self.kinds or (
                value.ndim != len(self.shape)) or any(
                s is not None and s != n for s, n in zip(self.shape, value.shape)):
            raise self.fail(where, expected, value)
        if self.min is not None and value.size and value.min() < self.min:
            raise FormatError(f"{where} must be >= {self.min}, got a minimum of "
                              f"{value.min().item()}")


@dataclass(frozen=True)
class Scalar(Spec):
    """A 0-d numpy array (an ``.npz`` member holding one value) whose value, as a Python
    ``str``, ``int`` or ``float``, ``inner`` accepts."""

    inner: Spec

    def check(self, value: Any, where: str) -> None:
        if not isinstance(value, np.ndarray) or value.shape != () or value.dtype.kind not in "iufU":
            raise self.fail(where, "a single number or string", value)
        self.inner.check(value.item(), where)


def validate(doc: Any, spec: Spec, source: str = "", error: type[Exception] = FormatError
             ) -> None:
    """Check ``doc`` against ``spec``; on the first problem raise ``error`` with the message
    ``"<source>: <problem>"`` (``source`` names the file)."""
    try:
        spec.check(doc, "")
    except FormatError as err:
        if error is FormatError and not source:
            raise
        raise error(f"{source}: {err}" if source else str(err)) from None

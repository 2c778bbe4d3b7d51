"""Names for the building blocks, so configs store names and init args, never classes.

``@register`` records a class under its import path (``vqtok.quantizers.fsq.FSQ`` and the
short public path such as ``vqtok.quantizers.FSQ`` both resolve) and captures the
arguments each instance was built with. An exported tokenizer's ``config.json`` is then
``{"class_path": ..., "init_args": ...}`` per module, and loading rebuilds modules only
from this registry: a config cannot make vqtok import or run arbitrary code. A class is
known once its module has been imported; :mod:`vqtok.formats.model_dir` imports every
building block vqtok ships before it builds one from a file.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any, TypeVar

T = TypeVar("T", bound=type)

_REGISTRY: dict[str, type] = {}


def register(cls: T) -> T:
    """Class decorator: register ``cls`` by name and record its init args on each instance
    as ``instance.init_args`` (a dict of JSON-friendly values as passed, defaults filled)."""
    init = cls.__init__
    signature = inspect.signature(init)

    @functools.wraps(init)
    def wrapped(self, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        recorded = dict(bound.arguments)
        recorded.pop("self")
        for name, param in signature.parameters.items():
            if param.kind is inspect.Parameter.VAR_KEYWORD:
                recorded.update(recorded.pop(name, {}))
        init(self, *args, **kwargs)
        # A registered subclass calling super().__init__ keeps its own (outer) args.
        if type(self) is cls:
            self.init_args = recorded

    cls.__init__ = wrapped  # type: ignore[method-assign]
    _REGISTRY[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return cls


def class_path(obj: Any) -> str:
    """The registered name of an instance's class."""
    name = f"{type(obj).__module__}.{type(obj).__qualname__}"
    if name not in _REGISTRY:
        raise ValueError(f"{name} is not a registered vqtok class; decorate it with @register")
    return name


def resolve(name: str) -> type:
    """Class for a registered name; also accepts the short public path
    (``vqtok.quantizers.FSQ`` for ``vqtok.quantizers.fsq.FSQ``)."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    package, _, short = name.rpartition(".")
    matches = [
        c for full, c in _REGISTRY.items()
        if full.rpartition(".")[2] == short and full.startswith(package + ".")
    ]
    if len(matches) == 1:
        return matches[0]
    known = ", ".join(sorted(_REGISTRY))
    raise ValueError(f"unknown class_path {name!r}; known classes: {known}")


def build(spec: dict[str, Any]) -> Any:
    """Instantiate ``{"class_path": name, "init_args": {...}}`` from the registry only."""
    if not isinstance(spec, dict) or "class_path" not in spec:
        raise ValueError(f"expected a dict with 'class_path' and 'init_args', got {spec!r}")
    unknown = set(spec) - {"class_path", "init_args"}
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)} in module spec {spec['class_path']!r}")
    cls = resolve(spec["class_path"])
    init_args = spec.get("init_args") or {}
    params = inspect.signature(cls.__init__).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        bad = sorted(set(init_args) - set(params) - {"self"})
        if bad:
            raise ValueError(f"unknown init_args {bad} for {spec['class_path']}")
    return cls(**init_args)


def spec_of(obj: Any) -> dict[str, Any]:
    """``{"class_path", "init_args"}`` of a registered instance, ready for JSON."""
    return {"class_path": class_path(obj), "init_args": dict(obj.init_args)}


"""Names for the building blocks, so configs store names and init args, never classes.

``@register`` records a class under its import path (``vqtok.quantizers.fsq.FSQ`` and the
short public path such as ``vqtok.quantizers.FSQ`` both resolve) and captures the
arguments each instance was built with. An exported tokenizer's ``config.json`` is then
``{"class_path": ..., "init_args": ...}`` per module, and loading rebuilds modules only
from this registry: a config cannot make vqtok import or run arbitrary code. A class is
known once its module has been imported; :mod:`vqtok.formats.model_dir` imports every
building block vqtok ships before it builds one from a file.

A registered class whose ``__init__`` ends in ``**kwargs`` passes them to its base class's
``__init__``, whose named arguments it then takes, by keyword only: arguments shared by a
family of classes (an encoder and its mirror decoder) are written once, on their base. The
recorded init args, :func:`build`'s checks and ``inspect.signature`` of the class all list
them, defaults filled; jsonargparse follows the same rule when it reads a signature.
"""

from __future__ import annotations

import collections.abc
import functools
import inspect
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T", bound=type)

_REGISTRY: dict[str, type] = {}


def register(cls: T) -> T:
    """Class decorator: register ``cls`` by name and record its init args on each instance
    as ``instance.init_args`` (a dict of JSON-friendly values as passed, defaults filled)."""
    init = cls.__init__
    signature = _signature(cls)

    @functools.wraps(init)
    def wrapped(self, *args: Any, **kwargs: Any) -> None:
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        recorded = dict(bound.arguments)
        recorded.pop("self")
        init(self, *args, **kwargs)
        # A registered subclass calling super().__init__ keeps its own (outer) args.
        if type(self) is cls:
            self.init_args = recorded

    wrapped.__signature__ = signature  # type: ignore[attr-defined]
    cls.__init__ = wrapped  # type: ignore[method-assign]
    _REGISTRY[f"{cls.__module__}.{cls.__qualname__}"] = cls
    return cls


def _inits(cls: type) -> list[Any]:
    """The ``__init__`` functions whose arguments ``cls`` takes: the one it runs and, while
    the last ends in ``**kwargs``, the next one up the method resolution order (where
    ``super().__init__`` goes)."""
    inits = []
    for owner in [k for k in cls.__mro__ if "__init__" in vars(k)]:
        inits.append(inspect.unwrap(vars(owner)["__init__"]))
        kinds = [p.kind for p in inspect.signature(inits[-1]).parameters.values()]
        if len(inits) > 1 and inspect.Parameter.VAR_POSITIONAL in kinds:
            raise TypeError(f"{cls.__qualname__}.__init__ passes **kwargs to "
                            f"{owner.__qualname__}.__init__, which does not name its arguments")
        if inspect.Parameter.VAR_KEYWORD not in kinds:
            return inits
    raise TypeError(f"{cls.__qualname__} has no __init__ that names its arguments")


def _signature(cls: type) -> inspect.Signature:
    """The arguments ``cls`` takes (module doc): its ``__init__``'s, with ``**kwargs``
    replaced by the base's named arguments, keyword only."""
    inits = _inits(cls)
    params: dict[str, inspect.Parameter] = {}
    for depth, init in enumerate(inits):
        for name, param in list(inspect.signature(init).parameters.items())[depth > 0:]:
            if param.kind is not inspect.Parameter.VAR_KEYWORD and name not in params:
                params[name] = param.replace(kind=inspect.Parameter.KEYWORD_ONLY) if depth \
                    else param
    return inspect.signature(inits[0]).replace(parameters=list(params.values()))


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
    if not isinstance(init_args, dict):
        raise ValueError(  # noqa: TRY004 (project rule: bad input is a ValueError)
            f"init_args of {spec['class_path']} must be an object, got "
            f"{type(init_args).__name__}")
    params = inspect.signature(cls.__init__).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        bad = sorted(set(init_args) - set(params) - {"self"})
        if bad:
            raise ValueError(f"unknown init_args {bad} for {spec['class_path']}")
    check_init_args(cls, init_args, spec["class_path"])
    return cls(**init_args)


def check_init_args(cls: type, init_args: dict[str, Any], name: str) -> None:
    """Raise ValueError unless each value has the type its ``__init__`` annotation names,
    the way JSON spells it: ``true`` is not an int, an int is a float, a list is a
    sequence. Ranges are the constructor's to check."""
    hints: dict[str, Any] = {}
    for init in reversed(_inits(cls)):  # a class's own annotation wins over its base's
        try:
            hints.update(typing.get_type_hints(init))
        except (NameError, TypeError):  # an annotation that cannot be resolved: no check
            continue
    for key, value in init_args.items():
        if key in hints and not _matches(value, hints[key]):
            raise ValueError(f"init_args.{key} of {name} must be {_describe(hints[key])}, "
                             f"got {value!r}")


def _matches(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint in (Any, object):
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (list, tuple, collections.abc.Sequence):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(map(_matches, value, args))
        item = args[0] if args else Any
        return all(_matches(v, item) for v in value)
    if origin in (dict, collections.abc.Mapping):
        key_type, value_type = args if args else (Any, Any)
        return isinstance(value, dict) and all(
            _matches(k, key_type) and _matches(v, value_type) for k, v in value.items())
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True  # a typing construct this checker does not read


def _describe(hint: Any) -> str:
    text = getattr(hint, "__name__", None) if isinstance(hint, type) else None
    return text or str(hint).replace("typing.", "").replace("collections.abc.", "")


def spec_of(obj: Any) -> dict[str, Any]:
    """``{"class_path", "init_args"}`` of a registered instance, ready for JSON."""
    return {"class_path": class_path(obj), "init_args": dict(obj.init_args)}


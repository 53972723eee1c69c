"""The registry of attention implementations.

Each built-in module calls `register(...)` once beside its implementation. Users (and the tests)
add their own impls by naming modules in the environment variable ATTNPROF_PLUGINS
(comma separated, importable); worker processes import the same modules, so a plugin impl is
measured exactly like a built-in one.
"""

from __future__ import annotations

import importlib
import os

from attnprof.errors import UsageError
from attnprof.impls.base import AttentionImpl

_REGISTRY: dict[str, AttentionImpl] = {}
BUILTIN_MODULES = ("softmax", "sdpa", "cosformer", "nystromformer", "combiner")
_loaded = False


def register(impl: AttentionImpl) -> AttentionImpl:
    if impl.name in _REGISTRY and _REGISTRY[impl.name].fn is not impl.fn:
        raise ValueError(f"impl {impl.name!r} is registered twice")
    _REGISTRY[impl.name] = impl
    return impl


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in BUILTIN_MODULES:
        try:
            importlib.import_module(f"attnprof.impls.{module}")
        except ModuleNotFoundError as error:
            if error.name != f"attnprof.impls.{module}":
                raise
    for module in filter(None, (m.strip() for m in os.environ.get("ATTNPROF_PLUGINS", "").split(","))):
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise UsageError(f"cannot import plugin module {module!r} from ATTNPROF_PLUGINS: {error}") from None


def get(name: str) -> AttentionImpl:
    _load()
    if name not in _REGISTRY:
        raise UsageError(f"unknown impl {name!r}; known: {', '.join(names())}")
    return _REGISTRY[name]


def names() -> list[str]:
    _load()
    return sorted(_REGISTRY)


def all_impls() -> list[AttentionImpl]:
    return [get(n) for n in names()]

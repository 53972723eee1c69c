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
_imported: set[str] = set()


def register(impl: AttentionImpl) -> AttentionImpl:
    if impl.name in _REGISTRY and _REGISTRY[impl.name].fn is not impl.fn:
        raise ValueError(f"impl {impl.name!r} is registered twice")
    _REGISTRY[impl.name] = impl
    return impl


def _load() -> None:
    """Import the built-in modules once, and any plugin module named in ATTNPROF_PLUGINS not imported yet."""
    if not _imported:
        for module in BUILTIN_MODULES:
            _import_builtin(module)
        _imported.add("")
    for module in filter(None, (m.strip() for m in os.environ.get("ATTNPROF_PLUGINS", "").split(","))):
        if module in _imported:
            continue
        try:
            importlib.import_module(module)
        except ImportError as error:
            raise UsageError(f"cannot import plugin module {module!r} from ATTNPROF_PLUGINS: {error}") from None
        except Exception as error:  # the plugin's own code failed: its fault, one line, not our traceback
            raise UsageError(f"plugin module {module!r} from ATTNPROF_PLUGINS failed on import: {type(error).__name__}: {error}") from None
        _imported.add(module)


def _import_builtin(module: str) -> None:
    try:
        importlib.import_module(f"attnprof.impls.{module}")
    except ModuleNotFoundError as error:
        if error.name != f"attnprof.impls.{module}":  # a missing dependency inside the module is a real error
            raise


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

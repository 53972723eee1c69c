"""The registry of attention implementations.

Each built-in module calls `register(...)` once beside its implementation. Users (and the tests)
add their own impls by naming modules in the environment variable ATTNPROF_PLUGINS
(comma separated, importable); worker processes import the same modules, so a plugin impl is
measured exactly like a built-in one. An impl registered by a module the sweep's process imported some
other way (a notebook's `import mykernels`) reaches the workers too: they import the modules
`worker_modules()` names. One registered in an interactive session itself cannot: `unreachable` says so.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import re
import sys

from attnprof.errors import UsageError
from attnprof.impls.base import AttentionImpl

_REGISTRY: dict[str, AttentionImpl] = {}
_REGISTERED_BY: dict[str, str] = {}  # impl name -> the module that registered it
_REGISTERED_IN: dict[str, str] = {}  # impl name -> that module's file, where it has one
BUILTIN_MODULES = ("softmax", "sdpa", "cosformer", "nystromformer", "combiner")
_imported: set[str] = set()


NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")  # what --impl can spell: no ':', ',', '=', brackets or spaces
MAIN_MODULES = ("__main__", "__mp_main__")  # a script, as run and as a spawned worker imports it


def register(impl: AttentionImpl) -> AttentionImpl:
    """Add `impl` to the registry. The same module registering a name again replaces its impl (a notebook cell run
    again, a reloaded module); another module taking a registered name, or any taking a built-in's, is refused."""
    _validate(impl)
    registering = sys._getframe(1).f_globals
    by = registering.get("__name__", "?")  # the module registering it: the one a worker imports
    if not by.startswith("attnprof.") and not _imported:
        # the built-ins first: a user's "softmax" registered before them was accepted, and every later lookup
        # then failed with "registered twice"
        _load_builtins()
    existing = _REGISTRY.get(impl.name)
    # A name a notebook cell registered may be taken over by a module (what the sweep's refusal of the cell's impl
    # advises): "registered twice: by __main__ and by mine2mod" left a kernel restart as the way out (an API audit)
    taken_from_a_session = existing is not None and unreachable([impl.name]) == [impl.name]
    if existing is not None and existing.fn is not impl.fn and module_of(existing) != by and not taken_from_a_session:
        if module_of(existing).startswith("attnprof."):
            raise UsageError(f"impl name {impl.name!r} is a built-in's ({module_of(existing)}): register yours under another name")
        raise UsageError(f"impl {impl.name!r} is registered twice: by {module_of(existing)} and by {by}")
    _REGISTRY[impl.name] = impl
    _REGISTERED_BY[impl.name] = by
    _REGISTERED_IN[impl.name] = registering.get("__file__") or ""
    return impl


def file_of(name: str) -> str:
    """The file of the module that registered impl `name` ("" for a session's own cell, or an unknown name)."""
    return _REGISTERED_IN.get(name, "")


def unregister(name: str) -> None:
    """Take back a plugin's impl `name` (a notebook's cell registered it; a module's, to register it again under new
    code). Built-ins stay: a name not registered, or a built-in's, is a UsageError."""
    impl = get(name)
    if is_builtin(impl):
        raise UsageError(f"impl {name!r} is a built-in ({module_of(impl)}): it cannot be unregistered")
    del _REGISTRY[name]
    _REGISTERED_BY.pop(name, None)
    _REGISTERED_IN.pop(name, None)


def _validate(impl: AttentionImpl) -> None:
    """What --impl and the sweep grid can use: a name they can spell, support declared as the grid's own values."""
    from attnprof.impls.base import ALL_DEVICES
    from attnprof.spec import DTYPES, MODES

    if not isinstance(impl.name, str) or not NAME.fullmatch(impl.name) or impl.name == "all":
        raise UsageError(f"impl name {impl.name!r}: use letters, digits and _ . + - (not 'all'), as --impl spells it")
    for field, allowed in (("devices", ALL_DEVICES), ("dtypes", DTYPES), ("modes", MODES), ("causal", (False, True))):
        declared = getattr(impl, field)
        if not isinstance(declared, (tuple, list)) or not declared or any(value not in allowed for value in declared):
            raise UsageError(f"impl {impl.name!r}: {field}={declared!r}; give a tuple of {', '.join(map(repr, allowed))}")
    bad = [key for key in impl.options if not isinstance(key, str) or not key.isidentifier()]
    if bad:
        raise UsageError(f"impl {impl.name!r}: option name {bad[0]!r} is not an identifier (--impl {impl.name}:key=value)")
    for role, fn, arguments in (("fn", impl.fn, "q, k, v"), ("reference", impl.reference, "q, k, v"),
                                ("row_reference", impl.row_reference, "q, k, v, rows"),
                                ("coupled_row_reference", impl.coupled_row_reference, "q, k, v, heads, rows")):  # fmt: skip
        _check_callable_as_an_impl(impl, role, fn, arguments)


def _check_callable_as_an_impl(impl: AttentionImpl, role: str, fn, arguments: str = "q, k, v") -> None:
    """`fn(q, k, v)` without `causal` (or an option) was accepted, and every row then read "TypeError: plain() got
    an unexpected keyword argument 'causal'"."""
    if fn is None:
        return
    if not callable(fn):
        raise UsageError(f"impl {impl.name!r}: {role} is a {type(fn).__name__}, not a function")
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin or C function: nothing to read, it answers when called
        return
    try:
        signature.bind(*[None] * len(arguments.split(",")), causal=False, **impl.options)
    except TypeError as error:
        name = getattr(fn, "__name__", role)
        raise UsageError(
            f"impl {impl.name!r}: {role} {name}{signature} cannot be called as {role}({arguments}, *, causal, **options) "
            f"with its options ({', '.join(impl.options) or 'none'}): {error}"
        ) from None


def is_builtin(impl: AttentionImpl) -> bool:
    """Whether one of attnprof's own modules registered the impl (its code is trusted to run in the sweep's process)."""
    return module_of(impl).startswith("attnprof.impls.")


def module_of(impl: AttentionImpl) -> str:
    """The module that registered the impl (the one a worker imports to know it); for an impl not registered, the
    module defining its function (a functools.partial's function's). Not the function's alone: a plugin
    registering functools.partial(softmax_attention) was taken for a built-in, and workers never imported it."""
    if _REGISTRY.get(impl.name) is impl and impl.name in _REGISTERED_BY:
        return _REGISTERED_BY[impl.name]
    fn = getattr(impl.fn, "func", impl.fn)
    return getattr(fn, "__module__", None) or "?"


def worker_modules(names=None) -> tuple[str, ...]:
    """Modules a worker imports to know the impls `names` (default: every impl registered here): those of the impls
    that are neither built-in, nor a script's (spawn imports the script itself), nor importable by name only in
    this process. Only the sweep's own: a module of another impl that workers cannot import failed every sweep."""
    modules = []
    wanted = None if names is None else set(names)
    for impl in list(_REGISTRY.values()):
        if wanted is not None and impl.name not in wanted:
            continue
        module = module_of(impl)
        if module.startswith("attnprof.") or module in MAIN_MODULES or module in modules:
            continue
        loaded = sys.modules.get(module)
        spec = getattr(loaded, "__spec__", None)
        # a module executed from a file but never put in sys.modules is one too: its impls read "unknown impl" in workers
        if loaded is None or (spec is not None and spec.origin not in (None, "built-in")):
            modules.append(module)
    return tuple(modules)


def import_modules(modules) -> None:
    """Import plugin modules (a worker: those `worker_modules` named in its sweep's process), after the built-ins."""
    _load()  # first: `_imported` empty is what says the built-ins are still to import
    for module in modules:
        if module not in _imported and module not in sys.modules:
            _import_plugin(module, "the sweep's process")
            _imported.add(module)


def unimportable(names) -> list[tuple[str, str]]:
    """(impl, module) for impls among `names` whose module a worker cannot import by name: loaded from a file
    (importlib's spec_from_file_location) in a folder not on sys.path, which spawned workers share."""
    found = []
    for module in worker_modules(names):
        loaded = sys.modules.pop(module, None)  # find_spec answers from sys.modules: ask the import path itself
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            spec = None
        finally:
            if loaded is not None:
                sys.modules[module] = loaded
        if spec is None:
            found.extend((name, module) for name in names if module_of(get(name)) == module)
    return found


def unreachable(names) -> list[str]:
    """Impls among `names` that workers cannot import: registered in an interactive session's __main__ (a notebook,
    `python -c`, `python - < file`), which a spawned worker does not run."""
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    interactive = not main_file or not os.path.isfile(main_file)
    return [name for name in names if interactive and module_of(get(name)) == "__main__"]


def _load() -> None:
    """Import the built-in modules once, and any plugin module named in ATTNPROF_PLUGINS not imported yet."""
    if not _imported:
        _load_builtins()
    for module in filter(None, (m.strip() for m in os.environ.get("ATTNPROF_PLUGINS", "").split(","))):
        if module in _imported:
            continue
        _import_plugin(module, "ATTNPROF_PLUGINS")
        _imported.add(module)


def _load_builtins() -> None:
    _imported.add("")  # first: the built-ins' own register() calls must not come back here
    try:
        for module in BUILTIN_MODULES:
            _import_builtin(module)
    except BaseException:
        # Not marked loaded: the next call raises the same error. Marked, a process (a notebook) went on with half the
        # built-ins, and said "unknown impl 'cosformer'" (found running the tests on torch 2.4, whose custom_op failed)
        _imported.discard("")
        raise


def _import_plugin(module: str, named_by: str) -> None:
    try:
        importlib.import_module(module)
    except ImportError as error:
        hint = ""
        top = module.split(".")[0]
        if isinstance(error, ModuleNotFoundError) and error.name == top:
            here = os.path.isfile(f"{top}.py") or os.path.isdir(top)
            # `python -m attnprof` puts the current folder on sys.path; the `attnprof` command does not
            hint = (
                "; it is in the current folder, which the attnprof command does not search: PYTHONPATH=. attnprof ..."
                if here
                else ("; its folder must be on PYTHONPATH")
            )
        raise UsageError(f"cannot import plugin module {module!r} from {named_by}: {error}{hint}") from None
    except Exception as error:  # the plugin's own code failed: its fault, one line, not our traceback
        raise UsageError(f"plugin module {module!r} from {named_by} failed on import: {type(error).__name__}: {error}") from None


def _import_builtin(module: str) -> None:
    try:
        importlib.import_module(f"attnprof.impls.{module}")
    except ModuleNotFoundError as error:
        if error.name != f"attnprof.impls.{module}":  # a missing dependency inside the module is a real error
            raise


def get(name: str) -> AttentionImpl:
    _load()
    if name not in _REGISTRY:
        hint = "" if os.environ.get("ATTNPROF_PLUGINS") else " (an impl of your own: name its module in ATTNPROF_PLUGINS)"
        raise UsageError(f"unknown impl {name!r}; known: {', '.join(names())}{hint}")
    return _REGISTRY[name]


def names() -> list[str]:
    _load()
    return sorted(_REGISTRY)


def all_impls() -> list[AttentionImpl]:
    return [get(n) for n in names()]

"""Public API: ``direct``, ``delayed`` and the transformer objects they make.

(docs/transformations.md.)  A transformer wraps a plain ``def`` function: it captures the
code text once, and each call binds the arguments, encodes them (a snapshot), and builds a
``Transformation`` handle.  ``delayed`` transformers return the handle; ``direct`` ones run it.

Per-transformer state that is the same for every handle (the canonical text of globals and
modules, the fast binding plan) is computed once and recomputed only when ``.args``,
``.globals`` or ``.modules`` change, so the per-call path is: bind, encode, hash.
"""

from __future__ import annotations

import functools
import inspect
import types

from .batches import TransformationList, parallel, parallel_async
from .code import FunctionCode, capture, capture_module
from .encoding import Encoded, canonical_json, encode, encode_argument
from .transformation import Transformation

__all__ = ["direct", "delayed", "Transformation", "Transformer", "spawn", "has_spawned",
           "parallel", "parallel_async", "TransformationList"]

_P = inspect.Parameter
_ENTRY_ATTRS = ("args", "globals", "modules")
_KIND_CODE = {_P.POSITIONAL_ONLY: 0, _P.POSITIONAL_OR_KEYWORD: 1, _P.VAR_POSITIONAL: 2,
              _P.KEYWORD_ONLY: 3, _P.VAR_KEYWORD: 4}


class _Entries:
    """Attribute-and-item access over a dict, validating on write (``f.args.n = 10``)."""

    __slots__ = ("_owner", "_store", "_check")

    def __init__(self, owner, store: dict, check):
        object.__setattr__(self, "_owner", owner)
        object.__setattr__(self, "_store", store)
        object.__setattr__(self, "_check", check)

    def __setattr__(self, name, value):
        self[name] = value

    def __getattr__(self, name):
        try:
            return self._store[name][0]
        except KeyError:
            raise AttributeError(name) from None

    def __delattr__(self, name):
        del self[name]

    def __setitem__(self, name, value):
        if not isinstance(name, str):
            raise TypeError(f"names must be str, got {name!r}")
        self._store[name] = (value, self._check(name, value))
        self._owner._changed()

    def __getitem__(self, name):
        return self._store[name][0]

    def __delitem__(self, name):
        del self._store[name]
        self._owner._changed()

    def __contains__(self, name):
        return name in self._store

    def __iter__(self):
        return iter(self._store)

    def __len__(self):
        return len(self._store)

    def keys(self):
        return self._store.keys()

    def __repr__(self):
        return repr({k: v[0] for k, v in self._store.items()})


class Transformer:
    """A function made into a transformer; ``delayed`` ones return handles, ``direct`` ones run."""

    __name__: str  # with the rest of the function's metadata, from functools.update_wrapper
    _func: types.FunctionType
    _code: FunctionCode
    _signature: inspect.Signature
    _args_store: dict
    _globals_store: dict
    _modules_store: dict
    local: bool

    def __init__(self, func, kind: str, _copy_from: "Transformer | None" = None):
        self._kind = kind
        if _copy_from is not None:
            src = _copy_from
            self._func = src._func
            self._code = src._code
            self._signature = src._signature
            args = dict(src._args_store)
            globals_ = dict(src._globals_store)
            modules = dict(src._modules_store)
            self.local = src.local
        else:
            self._code = capture(func, kind)
            self._func = func
            self._signature = inspect.signature(func)
            args, globals_, modules = {}, {}, {}
            self.local = False
        self._args_store = args
        self._globals_store = globals_
        self._modules_store = modules
        object.__setattr__(self, "args", _Entries(self, args, self._check_arg))
        object.__setattr__(self, "globals", _Entries(self, globals_, self._check_global))
        object.__setattr__(self, "modules", _Entries(self, modules, self._check_module))
        functools.update_wrapper(self, self._func)
        self._params = tuple((p.name, _KIND_CODE[p.kind])
                             for p in self._signature.parameters.values())
        self._simple = all(p.kind == _P.POSITIONAL_OR_KEYWORD
                           for p in self._signature.parameters.values())
        self._names = tuple(self._signature.parameters)
        self._defaults = {p.name: p.default for p in self._signature.parameters.values()
                          if p.default is not _P.empty}
        self._changed()

    # ------------------------------------------------------------ options

    def __setattr__(self, name, value):
        """Only ``.local`` is assigned; a name nobody reads (``f.meta``, a typo) is refused
        instead of silently ignored.  Private and dunder names are the machinery's."""
        if name == "local" or name.startswith("_"):
            object.__setattr__(self, name, value)
            return
        label = self._func.__name__
        if name in _ENTRY_ATTRS:
            raise AttributeError(f"{label}.{name} cannot be replaced; set its entries: "
                                 f"{label}.{name}.x = value, {label}.{name}['x'] = value, "
                                 f"del {label}.{name}.x")
        import difflib

        close = difflib.get_close_matches(name, ("local",) + _ENTRY_ATTRS, n=1)
        fix = (f"did you mean {label}.{close[0]}?" if close else
               f"to make a value visible in the body: {label}.globals.{name} = value")
        raise AttributeError(
            f"{self._kind} transformer {label} has no attribute {name!r} to set; it accepts "
            f"{label}.local = True/False and entries of .args, .globals and .modules ({fix})")

    def _check_arg(self, name, value):
        params = self._signature.parameters
        if name not in params or params[name].kind in (_P.VAR_POSITIONAL, _P.VAR_KEYWORD):
            accepted = ", ".join(n for n, p in params.items()
                                 if p.kind not in (_P.VAR_POSITIONAL, _P.VAR_KEYWORD))
            raise TypeError(f"{self.__name__}.args has no parameter {name!r} to set "
                            f"(the signature takes: {accepted or 'no named parameters'})")
        return None

    def _check_global(self, name, value):
        if isinstance(value, types.ModuleType):
            raise TypeError(f"{self.__name__}.globals.{name} is a module ({value.__name__}); "
                            f"use .modules: {self.__name__}.modules.{name} = {value.__name__}")
        if isinstance(value, (types.FunctionType, Transformer)):
            func = value._func if isinstance(value, Transformer) else value
            return ("function", capture(func, "globals"))
        return ("value", encode(value, f"{self.__name__}.globals.{name}"))

    def _check_module(self, name, value):
        return capture_module(value)

    def _changed(self):
        """Recompute what every handle shares: the canonical text of globals and modules."""
        globals_desc = {}
        values, functions = {}, {}
        for name, (_value, (what, item)) in self._globals_store.items():
            if what == "function":
                functions[name] = item
                globals_desc[name] = ["function", item.checksum]
            else:
                values[name] = item
                globals_desc[name] = [item.kind, item.checksum]
        modules = {name: entry for name, (_m, entry) in self._modules_store.items()}
        modules_desc = {name: [e.mode, e.identity] for name, e in modules.items()}
        self._statics = ('"encoding":1,"globals":' + canonical_json(globals_desc) +
                         ',"language":"python","modules":' + canonical_json(modules_desc) +
                         ',"result":"any"}')
        self._global_values = values
        self._global_functions = functions
        self._modules = modules
        self._has_embedded = any(e.mode == "source" for e in modules.values())

    # ------------------------------------------------------------ calls

    def _bind(self, args, kwargs) -> dict:
        if self._simple and not kwargs and len(args) <= len(self._names):
            bound = dict(zip(self._names, args))
            if len(args) < len(self._names):
                for name in self._names[len(args):]:
                    if name in self._args_store:
                        bound[name] = self._args_store[name][0]
                    elif name in self._defaults:
                        bound[name] = self._defaults[name]
                    else:
                        missing = [n for n in self._names[len(args):]
                                   if n not in self._args_store and n not in self._defaults]
                        raise TypeError(
                            f"{self.__name__}() missing {len(missing)} required argument"
                            f"{'s' if len(missing) > 1 else ''}: "
                            + ", ".join(repr(m) for m in missing))
            return bound
        merged = dict(kwargs)
        positional = {p.name for p, _ in zip(self._signature.parameters.values(), args)}
        for name, (value, _) in self._args_store.items():
            if name not in merged and name not in positional:
                merged[name] = value
        try:
            ba = self._signature.bind(*args, **merged)
        except TypeError as exc:
            raise TypeError(f"{self.__name__}(): {exc}") from None
        ba.apply_defaults()
        return ba.arguments

    def _refresh_embedded_modules(self):
        """Embedded module files are re-read when their size or modification time changes."""
        changed = False
        for name, (module, entry) in list(self._modules_store.items()):
            if entry.mode == "source":
                fresh = capture_module(module)
                if fresh.identity != entry.identity:
                    self._modules_store[name] = (module, fresh)
                    changed = True
        if changed:
            self._changed()

    def _handle(self, args, kwargs) -> Transformation:
        name = self.__name__
        if self._has_embedded:
            self._refresh_embedded_modules()
        arguments: dict[str, Transformation | Encoded] = {}
        for pname, value in self._bind(args, kwargs).items():
            if isinstance(value, Transformation):
                arguments[pname] = value
            else:
                arguments[pname] = encode_argument(value, f"argument {pname!r} of {name}")
        return Transformation(name, self._code, self._params, arguments, self._global_values,
                              self._global_functions, self._modules, self._statics, self.local)

    def __call__(self, *args, **kwargs):
        handle = self._handle(args, kwargs)
        if self._kind == "direct":
            return handle.run()
        return handle

    def __repr__(self):
        return f"<{self._kind} transformer {self.__qualname__}>"


def _make(func, kind):
    if func is None:
        raise TypeError(f"{kind}() needs a function; write @{kind} without parentheses")
    if isinstance(func, Transformer):
        return Transformer(None, kind, _copy_from=func)
    return Transformer(func, kind)


def delayed(func=None) -> Transformer:
    """Make ``func`` a delayed transformer: calling it returns a handle and runs nothing."""
    return _make(func, "delayed")


def direct(func=None) -> Transformer:
    """Make ``func`` a direct transformer: calling it runs the transformation, returns the value."""
    return _make(func, "direct")


def spawn(N=None) -> None:
    """Start the worker pool of ``N`` processes (default: the ``workers`` setting).

    Returns at once: the workers start in the background and are reused for every later
    transformation (docs/worker-pool.md, "Turning it on").
    """
    from . import config
    from .errors import ConfigurationError
    from .execution import dispatch

    if N is not None:
        if isinstance(N, bool) or not isinstance(N, int):
            raise TypeError(f"spawn() needs a positive integer number of workers, got {N!r} "
                            f"(a {type(N).__name__}); use spawn() for the default worker count")
        if N <= 0:
            raise ValueError(f"spawn() needs a positive integer number of workers, got {N!r}; "
                             f"use spawn() for the default worker count")
    if dispatch.in_worker():
        raise RuntimeError("spawn() cannot be called inside a pool worker: nested "
                           "transformations already use the parent's pool")
    pool = dispatch.live_backend("spawn")
    if pool is not None:
        raise RuntimeError(
            f"spawn() was already called: {pool.describe()} is active "
            f"(call spawn() once, check has_spawned() first, or seamless.close() the pool "
            f"before spawning a new one)")
    if config.get("execution") == "remote":
        raise ConfigurationError(
            "spawn() cannot start a local pool while execution is 'remote' (remove "
            "'execution: remote' from the configuration, or run on the Dask cluster)",
            key="execution", value="remote")
    if N is not None:
        config._set_python("workers", N)
    config._set_python("execution", "spawn")
    dispatch.backend("spawn")


def has_spawned() -> bool:
    """True while a worker pool exists in this process, and inside a pool worker."""
    from .execution import dispatch

    return dispatch.has_spawned()


def __dir__():
    """The public API only: ``dir()`` and tab completion should not offer our imports."""
    return list(__all__)

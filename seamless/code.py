"""Code identity: what a function may be, its code text, and the namespace its body runs in.

(docs/transformations.md.)  A transformer captures its function's source once, at
creation: the ``def`` line to the end, decorators dropped, dedented, one final newline.  The
code checksum is the SHA-256 of that text.  The body runs by compiling the text (with the user's
file name and line numbers, so tracebacks point at their file) and executing it in a fresh
namespace: ``__builtins__``, the ``.globals`` entries, the ``.modules`` names and the function
itself.  Compiled code objects are kept per code checksum, so a transformer called many times
compiles once.
"""

from __future__ import annotations

import ast
import builtins
import functools
import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
import sysconfig
import textwrap
import threading
import types
from typing import NamedTuple

from .checksum import Checksum, _trusted

__all__ = ["FunctionCode", "capture", "namespace_for", "ModuleEntry", "capture_module"]


class FunctionCode(NamedTuple):
    """A function's code text and where it came from."""

    name: str
    text: str
    checksum: Checksum
    filename: str
    first_line: int  # line of the ``def`` in ``filename``


def _refuse(kind: str, given: str, why: str, fix: str):
    return TypeError(f"{kind}() needs {given}, {why} ({fix})")


def capture(func, kind: str = "delayed") -> FunctionCode:
    """Check that ``func`` can be a transformation and capture its code text.

    ``kind`` ("delayed", "direct", "globals") words the refusals.
    """
    if isinstance(func, (classmethod, staticmethod)) or inspect.ismethod(func):
        owner = getattr(func, "__self__", None)
        owner_name = owner.__name__ if isinstance(owner, type) else type(owner).__name__
        qual = getattr(func, "__qualname__", None) or getattr(
            getattr(func, "__func__", None), "__qualname__", repr(func))
        what = "bound method" if owner is not None and not isinstance(owner, type) else "method"
        if owner is not None and "." not in qual:
            qual = f"{owner_name}.{qual}"
        return_kind = "instance" if what == "bound method" else "class"
        raise TypeError(
            f"{kind}() needs a plain function, got {what} {qual}, whose result depends on its "
            f"{return_kind} (make it a module-level function and pass the data as arguments)")
    if isinstance(func, (types.BuiltinFunctionType, types.BuiltinMethodType)) or (
            callable(func) and not isinstance(func, type) and not isinstance(
                func, (types.FunctionType, functools.partial))
            and type(func).__name__ in ("ufunc", "_ArrayFunctionDispatcher", "method-wrapper",
                                        "wrapper_descriptor", "method_descriptor")):
        name = getattr(func, "__name__", repr(func))
        raise TypeError(
            f"{kind}() needs a Python function with source code, got builtin function {name} "
            f"(wrap it: `def f(x): return {name}(x)`)")
    if not isinstance(func, types.FunctionType):
        what = ("functools.partial" if isinstance(func, functools.partial)
                else f"class {func.__qualname__}" if isinstance(func, type)
                else f"{type(func).__qualname__} object")
        raise TypeError(
            f"{kind}() needs a function written with def, got {what}, which is not a function "
            f"with source of its own (write a def; bind fixed arguments with .args)")
    if func.__name__ == "<lambda>":
        raise TypeError(
            f"{kind}() needs a function written with def, got a lambda, which has no source of "
            f"its own to identify it (write `def name(...):` instead)")
    flags = func.__code__.co_flags
    if flags & (inspect.CO_COROUTINE | inspect.CO_GENERATOR | inspect.CO_ASYNC_GENERATOR):
        what = ("an async def function" if flags & (inspect.CO_COROUTINE |
                                                   inspect.CO_ASYNC_GENERATOR)
                else "a generator function")
        raise TypeError(
            f"{kind}() cannot use {func.__name__}: it is {what}, whose call yields no value to "
            f"cache (write a plain function that returns the value)")
    if func.__code__.co_freevars:
        names = ", ".join(func.__code__.co_freevars)
        first = func.__code__.co_freevars[0]
        raise TypeError(
            f"{kind}() cannot use {func.__name__}: it reads {names} from its enclosing function, "
            f"which cannot be part of its identity (pass {names} as an argument, or define "
            f"{func.__name__} at module level and set {func.__name__}.globals.{first})")
    return _source_of(func, kind)


def _source_of(func, kind) -> FunctionCode:
    try:
        lines, start = inspect.getsourcelines(func)
        filename = inspect.getsourcefile(func) or func.__code__.co_filename
    except (OSError, TypeError):
        raise TypeError(
            f"{kind}() cannot use {func.__name__}: its source cannot be read (it was defined at "
            f"the interactive prompt or by exec); define it in a file or a notebook cell"
        ) from None
    source = textwrap.dedent("".join(lines))
    tree = ast.parse(source)
    node = next(n for n in tree.body
                if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))
    def_line = node.lineno  # the def line, after any decorators
    body_lines = source.splitlines(keepends=True)[def_line - 1:]
    text = "".join(body_lines).rstrip() + "\n"
    checksum = _trusted(hashlib.sha256(text.encode("utf-8")).hexdigest())
    return FunctionCode(func.__name__, text, checksum, filename, start + def_line - 1)


_compiled: dict = {}
_compiled_lock = threading.Lock()


def compiled(code: FunctionCode):
    """The code object of ``code.text``, with the user's file name and line numbers."""
    key = (code.checksum, code.filename, code.first_line)
    obj = _compiled.get(key)
    if obj is None:
        tree = ast.parse(code.text, code.filename)
        ast.increment_lineno(tree, code.first_line - 1)
        obj = compile(tree, code.filename, "exec")
        with _compiled_lock:
            _compiled[key] = obj
    return obj


# ---------------------------------------------------------------- modules

class ModuleEntry(NamedTuple):
    """A ``.modules`` entry: imported by name, or embedded by source."""

    mode: str          # "import" or "source"
    import_name: str
    identity: str      # "name==version" for import, checksum of the file index for source
    files: dict        # relative posix path -> source text (embedded only)
    is_package: bool


def _is_installed(path: str) -> bool:
    path = os.path.realpath(path)
    roots = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    roots = {os.path.realpath(r) for r in roots}
    return any(path == r or path.startswith(r + os.sep) for r in roots) or \
        "site-packages" in path.split(os.sep) or "dist-packages" in path.split(os.sep)


def _distribution_version(name: str):
    from importlib import metadata

    top = name.split(".")[0]
    try:
        dists = metadata.packages_distributions().get(top) or [top]
        return metadata.version(dists[0])
    except Exception:  # no metadata: the identity then records the name alone
        return None


def capture_module(module) -> ModuleEntry:
    """Decide how a module travels: embedded by source (local pure Python) or imported by name."""
    if not isinstance(module, types.ModuleType):
        raise TypeError(
            f".modules takes module objects, got {type(module).__name__} {module!r} "
            f"(values and helper functions go in .globals)")
    name = module.__name__
    path = getattr(module, "__file__", None)
    is_package = hasattr(module, "__path__")
    if path is None or _is_installed(path) or not path.endswith(".py"):
        version = _distribution_version(name)
        return ModuleEntry("import", name, f"{name}=={version}" if version else name, {},
                           is_package)
    root = os.path.dirname(path)
    files = {}
    if is_package:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            for fn in sorted(filenames):
                if fn.endswith((".so", ".pyd")):
                    version = _distribution_version(name)
                    return ModuleEntry("import", name,
                                       f"{name}=={version}" if version else name, {}, True)
                if fn.endswith(".py"):
                    full = os.path.join(dirpath, fn)
                    rel = os.path.relpath(full, root).replace(os.sep, "/")
                    files[rel] = _read_source(full)
    else:
        files[os.path.basename(path)] = _read_source(path)
    from .encoding import canonical_json

    index = {rel: hashlib.sha256(text.encode("utf-8")).hexdigest()
             for rel, text in files.items()}
    identity = hashlib.sha256(canonical_json(index).encode("utf-8")).hexdigest()
    return ModuleEntry("source", name, identity, files, is_package)


_source_files: dict = {}


def _read_source(path: str) -> str:
    """Read a module file, re-reading only when its size or modification time changed."""
    st = os.stat(path)
    key = (path, st.st_size, st.st_mtime_ns)
    text = _source_files.get(key)
    if text is None:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        _source_files[key] = text
    return text


class _EmbeddedFinder:
    """Serves an embedded package's submodules from its captured sources while it loads."""

    def __init__(self, entry: ModuleEntry, alias: str):
        self.entry = entry
        self.alias = alias

    def find_spec(self, fullname, path=None, target=None):
        if fullname != self.alias and not fullname.startswith(self.alias + "."):
            return None
        rel = fullname[len(self.alias):].lstrip(".").replace(".", "/")
        for candidate, is_pkg in ((f"{rel}/__init__.py" if rel else "__init__.py", True),
                                  (f"{rel}.py", False)):
            if candidate in self.entry.files:
                loader = _EmbeddedLoader(self.entry.files[candidate], candidate)
                spec = importlib.util.spec_from_loader(fullname, loader, is_package=is_pkg)
                return spec
        return None


class _EmbeddedLoader:
    def __init__(self, source: str, rel: str):
        self.source = source
        self.rel = rel

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        code = compile(self.source, f"<seamless embedded {self.rel}>", "exec")
        exec(code, module.__dict__)


_embedded: dict = {}
_embedded_lock = threading.Lock()


def load_module(entry: ModuleEntry):
    """The module object for a ``.modules`` entry, where the body runs."""
    if entry.mode == "import":
        return importlib.import_module(entry.import_name)
    with _embedded_lock:
        module = _embedded.get(entry.identity)
        if module is not None:
            return module
        alias = f"_seamless_embedded_{entry.identity[:16]}"
        if entry.is_package:
            finder = _EmbeddedFinder(entry, alias)
            sys.meta_path.insert(0, finder)
            try:
                module = importlib.import_module(alias)
            finally:
                sys.meta_path.remove(finder)
        else:
            (rel, source), = entry.files.items()
            module = types.ModuleType(entry.import_name)
            module.__file__ = f"<seamless embedded {rel}>"
            exec(compile(source, module.__file__, "exec"), module.__dict__)
        _embedded[entry.identity] = module
        return module


def namespace_for(code: FunctionCode, values: dict, functions: dict, modules: dict):
    """A fresh namespace holding only builtins, ``.modules``, ``.globals`` and the function.

    ``values``: name -> decoded value; ``functions``: name -> FunctionCode of a helper, defined
    by executing its own code text (and renamed when bound under another name).
    Returns the function object.
    """
    ns = {"__builtins__": builtins}
    for name, entry in modules.items():
        ns[name] = load_module(entry)
    ns.update(values)
    for name, helper in functions.items():
        exec(compiled(helper), ns)
        if name != helper.name:
            ns[name] = ns.pop(helper.name)
    exec(compiled(code), ns)
    return ns[code.name]

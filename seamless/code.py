"""Code identity: what a function may be, its code text, and the namespace its body runs in.

(docs/transformations.md.)  A transformer captures its function's source once, at
creation: the ``def`` line to the end, decorators dropped, dedented, one final newline.  The
code checksum is the SHA-256 of that text.  The body runs by compiling the text (with the user's
file name and line numbers, so tracebacks point at their file) and executing it in a fresh
namespace: ``__builtins__``, the ``.globals`` entries, the ``.modules`` names and the function
itself.  Compiled code objects are kept per code checksum, so a transformer called many times
compiles once.

Functions whose source cannot be read (``python -c``, ``python - <<EOF``, the plain REPL,
``exec``) are identified by their compiled code object instead:

- identity: ``_canonical`` walks the code object (bytecode, constants recursively,
  names, argument counts, flags, exception table; not the file name nor line numbers) and the
  function's defaults into bytes of its own format; the checksum is the SHA-256 of those bytes
  after a tag naming the Python implementation and version, so a new Python version gives new
  checksums.  ``marshal`` is not used for identity: its output depends on reference counts.
- transport: the ``FunctionCode`` keeps its shape; its ``text`` is a marker line with that tag,
  then ``marshal.dumps`` of the code object and of the defaults, base64-encoded.  The text is
  made by the capturing process and travels like source text (pool workers keep it in their
  codebook); where the body runs, ``_define`` checks the tag and rebuilds the function on the
  fresh namespace.  Unmarshalled code objects are cached per checksum like compiled source;
  defaults are unmarshalled for every namespace, as source re-evaluates them.
"""

from __future__ import annotations

import ast
import base64
import builtins
import functools
import hashlib
import importlib
import importlib.util
import inspect
import marshal
import os
import struct
import sys
import sysconfig
import textwrap
import threading
import types
from typing import NamedTuple

from .checksum import Checksum, _trusted

__all__ = ["FunctionCode", "capture", "namespace_for", "ModuleEntry", "capture_module"]


class FunctionCode(NamedTuple):
    """A function's code text and where it came from.

    ``text`` is the source text, or, for a function without readable source, its code object
    in transport form (``kind == "code-object"``)."""

    name: str
    text: str
    checksum: Checksum
    filename: str
    first_line: int  # line of the ``def`` in ``filename``

    @property
    def kind(self) -> str:
        """``"source"``, or ``"code-object"`` (marked text: source text starts with ``def``)."""
        return "code-object" if self.text.startswith(_CODE_OBJECT_MARKER) else "source"


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
        return _code_object_of(func, kind)
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


# ---------------------------------------------------------------- code objects

_CODE_OBJECT_MARKER = "#seamless code object "
_PYTHON_TAG = sys.implementation.cache_tag or (
    f"{sys.implementation.name}-{sys.version_info[0]}{sys.version_info[1]}")


def _blob(tag: bytes, data: bytes) -> bytes:
    return tag + struct.pack("<Q", len(data)) + data


def _canonical(value, where: str) -> bytes:
    """Self-delimiting bytes of a constant, a default or a code object, equal in every process.

    Exact types only (``True`` is not ``1``, ``-0.0`` is not ``0.0``); sets are sorted by
    these bytes, so string hash randomisation does not change the result."""
    kind = type(value)
    if value is None:
        return b"N"
    if value is Ellipsis:
        return b"E"
    if kind is bool:
        return b"T" if value else b"F"
    if kind is int:
        return _blob(b"i", value.to_bytes(value.bit_length() // 8 + 1, "little", signed=True))
    if kind is float:
        return b"f" + struct.pack("<d", value)
    if kind is complex:
        return b"c" + struct.pack("<dd", value.real, value.imag)
    if kind is str:
        return _blob(b"s", value.encode("utf-8", "surrogatepass"))
    if kind is bytes:
        return _blob(b"b", value)
    if kind in (tuple, list):
        return _blob(b"t" if kind is tuple else b"l",
                     b"".join(_canonical(v, where) for v in value))
    if kind in (frozenset, set):
        return _blob(b"z" if kind is frozenset else b"S",
                     b"".join(sorted(_canonical(v, where) for v in value)))
    if kind is dict:
        return _blob(b"d", b"".join(_canonical(k, where) + _canonical(v, where)
                                    for k, v in value.items()))
    if kind is types.CodeType:
        return _blob(b"C", b"".join([
            _canonical(value.co_name, where),
            _canonical((value.co_argcount, value.co_posonlyargcount, value.co_kwonlyargcount,
                        value.co_flags), where),
            _blob(b"b", value.co_code),
            _canonical(value.co_consts, where),
            _canonical((value.co_names, value.co_varnames, value.co_freevars,
                        value.co_cellvars), where),
            _blob(b"x", getattr(value, "co_exceptiontable", b"")),
        ]))
    raise TypeError(f"{where} is a {kind.__qualname__}")


def _code_object_of(func, kind: str) -> FunctionCode:
    """Identify a function without readable source by its compiled code (module docstring)."""
    code = func.__code__
    defaults, kwdefaults = func.__defaults__, func.__kwdefaults__
    named = dict(zip(code.co_varnames[code.co_argcount - len(defaults or ()):code.co_argcount],
                     defaults or ()))
    named.update(kwdefaults or {})
    for param, value in named.items():
        try:
            _canonical(value, param)
        except TypeError:
            raise TypeError(
                f"{kind}() cannot use {func.__name__}: its source cannot be read, so it travels "
                f"as compiled code, and the default {param}={value!r:.60} (a "
                f"{type(value).__qualname__}) cannot travel with it (make the default None, a "
                f"bool, int, float, complex, str, bytes or a tuple, list, dict or set of these; "
                f"or drop it and set {func.__name__}.args.{param}; or define {func.__name__} "
                f"in a file)"
            ) from None
    identity = b"".join([_CODE_OBJECT_MARKER.encode(), _PYTHON_TAG.encode(), b"\n",
                         _canonical(func.__name__, "name"),
                         _canonical(code, f"a constant of {func.__name__}"),
                         _canonical(defaults, "defaults"), _canonical(kwdefaults, "defaults")])
    checksum = _trusted(hashlib.sha256(identity).hexdigest())
    text = "\n".join([_CODE_OBJECT_MARKER + _PYTHON_TAG,
                      base64.b64encode(marshal.dumps(code)).decode("ascii"),
                      base64.b64encode(marshal.dumps((defaults, kwdefaults))).decode("ascii"),
                      ""])
    return FunctionCode(func.__name__, text, checksum, code.co_filename, code.co_firstlineno)


def _function_from_code_object(code: FunctionCode, ns: dict):
    """Rebuild a function captured as compiled code, its globals being ``ns``."""
    header, code_b64, defaults_b64 = code.text.splitlines()
    tag = header[len(_CODE_OBJECT_MARKER):]
    if tag != _PYTHON_TAG:
        raise RuntimeError(
            f"{code.name} has no source: it was captured as compiled code of {tag}, and this "
            f"process runs {_PYTHON_TAG}, whose bytecode differs (run it with the same Python "
            f"version, or define {code.name} in a file so that it travels as source)")
    key = (code.checksum, "code-object")
    code_object = _compiled.get(key)
    if code_object is None:
        code_object = marshal.loads(base64.b64decode(code_b64))
        with _compiled_lock:
            _compiled[key] = code_object
    defaults, kwdefaults = marshal.loads(base64.b64decode(defaults_b64))
    func = types.FunctionType(code_object, ns, code.name, defaults)
    func.__kwdefaults__ = kwdefaults
    return func


def _define(code: FunctionCode, ns: dict) -> None:
    """Define ``code``'s function in ``ns`` under ``code.name``."""
    if code.kind == "source":
        exec(compiled(code), ns)
    else:
        ns[code.name] = _function_from_code_object(code, ns)


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
    by executing its own code text or rebuilding its code object (and renamed when bound under
    another name).
    Returns the function object.
    """
    ns = {"__builtins__": builtins}
    for name, entry in modules.items():
        ns[name] = load_module(entry)
    ns.update(values)
    for name, helper in functions.items():
        _define(helper, ns)
        if name != helper.name:
            ns[name] = ns.pop(helper.name)
    _define(code, ns)
    return ns[code.name]

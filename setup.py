"""Build the compiled core: one extension per seamless/_ipc/*.pyx (metadata: pyproject.toml).

Environment switches, read at build time:
  SEAMLESS_PUREPYTHON=1  build no extension (the pure-Python twins in seamless/_ipc/_pure are used)
  SEAMLESS_ANNOTATE=1    also write seamless/_ipc/<module>.html (Cython's view of Python overhead)
  SEAMLESS_LINETRACE=1   debug build with line tracing (coverage/profilers see Cython lines), -O0 -g
Accepted values: 1/true/yes on; 0/false/no/empty off.

shm_array cimports numpy (its data-memory handler API, numpy >= 1.22): built against numpy's
headers with NPY_TARGET_VERSION 1.22, so the wheel runs on any numpy from 1.22 on.
"""

import os
import pathlib
import re

from setuptools import Extension, setup

CYTHON_DEPENDENCY = "Cython>=3.0,<4"
# Modules that cimport numpy (they need its headers).
NUMPY_MODULES = frozenset({"shm_array"})
HERE = pathlib.Path(__file__).resolve().parent
_ON = {"1", "true", "yes"}
_OFF = {"", "0", "false", "no"}


def _switch(name):
    value = os.environ.get(name, "").strip().lower()
    if value in _ON:
        return True
    if value in _OFF:
        return False
    raise SystemExit(
        f"{name} must be one of 1, true, yes, 0, false, no or empty, got {os.environ[name]!r}")


def _cython_version_ok():
    try:
        import Cython
    except ImportError:
        return False
    match = re.match(r"(\d+)\.", Cython.__version__)
    return match is not None and 3 <= int(match.group(1)) < 4


def _extensions():
    if _switch("SEAMLESS_PUREPYTHON"):
        return []
    if not _cython_version_ok():
        raise SystemExit(f"install {CYTHON_DEPENDENCY} to build seamless from source")
    from Cython.Build import cythonize

    linetrace = _switch("SEAMLESS_LINETRACE")
    directives = {"language_level": 3, "embedsignature": True}
    macros = []
    cflags = ["-O3", "-pthread"]
    if linetrace:
        directives["linetrace"] = True
        macros = [("CYTHON_TRACE", "1"), ("CYTHON_TRACE_NOGIL", "1")]
        cflags = ["-O0", "-g", "-pthread"]
    extensions = []
    for pyx in sorted((HERE / "seamless" / "_ipc").glob("*.pyx")):
        include_dirs = [str(pyx.parent.relative_to(HERE))]
        module_macros = list(macros)
        if pyx.stem in NUMPY_MODULES:
            import numpy

            include_dirs.append(numpy.get_include())
            module_macros += [("NPY_NO_DEPRECATED_API", "NPY_1_22_API_VERSION"),
                              ("NPY_TARGET_VERSION", "NPY_1_22_API_VERSION")]
        extensions.append(Extension(
            f"seamless._ipc.{pyx.stem}",
            [str(pyx.relative_to(HERE))],
            include_dirs=include_dirs,
            define_macros=module_macros,
            extra_compile_args=cflags,
            extra_link_args=["-pthread"],
        ))
    # force: directives (linetrace) are not in Cython's staleness check, so a .c left by
    # a build in another mode would be reused; regenerating the small modules is cheap.
    return cythonize(
        extensions,
        compiler_directives=directives,
        annotate=_switch("SEAMLESS_ANNOTATE"),
        force=True,
    )


setup(ext_modules=_extensions())

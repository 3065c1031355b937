"""Build the compiled core: one extension per seamless/_ipc/*.pyx (metadata: pyproject.toml).

Environment switches, read at build time:
  SEAMLESS_PUREPYTHON=1  build no extension (the pure-Python twins in seamless/_ipc/_pure are used)
  SEAMLESS_ANNOTATE=1    also write seamless/_ipc/<module>.html (Cython's view of Python overhead)
  SEAMLESS_LINETRACE=1   debug build with line tracing (coverage/profilers see Cython lines), -O0 -g
Accepted values: 1/true/yes on; 0/false/no/empty off.

Build time (a fresh clone on 2 cores, numbers in README.md): pip runs this file three times (build
requirements, metadata, wheel), so Cython runs only in the third, inside ``build_ext``; the
extensions compile in parallel, one compiler per core.

shm_array cimports numpy (its data-memory handler API, numpy >= 1.22): built against numpy's
headers with NPY_TARGET_VERSION 1.22, so the wheel runs on any numpy from 1.22 on.
"""

import os
import pathlib
import re

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

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
    """The extensions with their .pyx sources; ``CythonizeFirst`` turns them into C later."""
    if _switch("SEAMLESS_PUREPYTHON"):
        return []
    macros = []
    cflags = ["-O3", "-pthread"]
    if _switch("SEAMLESS_LINETRACE"):
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
    return extensions


class CythonizeFirst(build_ext):
    """Cythonize when the extensions are really built, then compile them in parallel."""

    def finalize_options(self):
        super().finalize_options()
        if self.parallel is None:
            self.parallel = len(os.sched_getaffinity(0))

    def run(self):
        if self.extensions:
            if not _cython_version_ok():
                raise SystemExit(f"install {CYTHON_DEPENDENCY} to build seamless from source")
            from Cython.Build import cythonize

            directives = {"language_level": 3, "embedsignature": True}
            if _switch("SEAMLESS_LINETRACE"):
                directives["linetrace"] = True
            # force: directives (linetrace) are not in Cython's staleness check, so a .c left
            # by a build in another mode would be reused; regenerating the modules is cheap.
            generated = cythonize(
                self.extensions,
                compiler_directives=directives,
                annotate=_switch("SEAMLESS_ANNOTATE"),
                force=True,
                nthreads=self.parallel if self.parallel > 1 else 0,
            )
            # keep setuptools' Extension objects; only their sources become the C files
            c_sources = {ext.name: ext.sources for ext in generated}
            for ext in self.extensions:
                ext.sources = c_sources[ext.name]
        super().run()


setup(ext_modules=_extensions(), cmdclass={"build_ext": CythonizeFirst})

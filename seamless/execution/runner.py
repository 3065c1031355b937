"""Run one transformation body in this process and turn its outcome into data.

Used by the in-process executor now and by pool workers later: the input is a ``Work`` (code,
argument buffers, globals, modules), the output an ``Outcome`` holding either the result's
canonical encoding or the failure *text* (docs/transformations.md): a failure never travels as an
exception object, so a handle never keeps frames and their locals alive.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from typing import NamedTuple

from ..code import FunctionCode, namespace_for
from ..encoding import Encoded, decode, encode

__all__ = ["Work", "Failure", "Outcome", "run", "failure_from_exception"]

_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

NAME_HINT = ("; the transformation body runs in a fresh namespace: import it inside the function "
             "or add it to .modules (values and helper functions: .globals)")


class Work(NamedTuple):
    """Everything needed to run a body; arguments already resolved to encodings."""

    name: str
    code: FunctionCode
    params: tuple        # ((name, inspect.Parameter kind as int), ...) in signature order
    arguments: dict      # name -> Encoded
    values: dict         # .globals values: name -> Encoded
    functions: dict      # .globals helpers: name -> FunctionCode
    modules: dict        # name -> ModuleEntry


class Failure(NamedTuple):
    """A failure as text: ``summary`` is "ValueError: boom", ``text`` the whole failure text.

    ``crash`` is set when the process running the body died (pool workers): a dict with
    ``exitcode``, ``signal``, ``pid`` and ``cause`` (the machinery's own error text, or None).
    ``exception_type``: the qualified name of the class the body raised (None when no
    exception of the body is behind it); the caller raises that class too if it can.
    """

    summary: str
    text: str
    crash: dict | None = None
    exception_type: str | None = None


class Outcome(NamedTuple):
    """What became of a job; ``from_cache`` marks outcomes that need no recording."""

    result: Encoded | None
    failure: Failure | None
    duration: float
    from_cache: bool = False


_POSITIONAL_ONLY, _POSITIONAL_OR_KEYWORD, _VAR_POSITIONAL, _KEYWORD_ONLY, _VAR_KEYWORD = range(5)


def _call(func, params, values):
    """Call with every bound parameter: those before ``*args`` positionally, in order."""
    args, kwargs = [], {}
    for name, kind in params:
        if name not in values:
            continue
        if kind <= _POSITIONAL_OR_KEYWORD:
            args.append(values[name])
        elif kind == _VAR_POSITIONAL:
            args.extend(values[name])
        elif kind == _KEYWORD_ONLY:
            kwargs[name] = values[name]
        else:
            kwargs.update(values[name])
    return func(*args, **kwargs)


def run(work: Work, defer_checksum: bool = False) -> Outcome:
    """Execute the body; never raises for the body's own failure (KeyboardInterrupt aside).

    ``defer_checksum`` (pool workers): a large result is built in a segment without hashing;
    its checksum is ``None`` and the worker hashes it after sending it.
    """
    t0 = time.perf_counter()
    try:
        values = {n: decode(e.kind, e.buffer, e.checksum) for n, e in work.arguments.items()}
        gvalues = {n: decode(e.kind, e.buffer, e.checksum) for n, e in work.values.items()}
        func = namespace_for(work.code, gvalues, work.functions, work.modules)
        result = _call(func, work.params, values)
        # Only this frame holds the result (getrefcount adds one): the body kept no
        # reference that could change it after it is shared, so it may travel in place.
        sole_owner = sys.getrefcount(result) <= 2
    except KeyboardInterrupt:
        raise
    except BaseException as exc:  # SystemExit and MemoryError in a body fail only that body
        return Outcome(None, failure_from_exception(exc), time.perf_counter() - t0)
    duration = time.perf_counter() - t0
    try:
        encoded = encode(result, f"result of {work.name}", fix="return data, not objects",
                         defer=defer_checksum, claim=defer_checksum and sole_owner)
    except (TypeError, ValueError) as exc:
        line = f"{type(exc).__name__}: {exc}"
        return Outcome(None, Failure(line, line + "\n", exception_type=type(exc).__name__),
                       duration)
    return Outcome(encoded, None, duration)


def _user_traceback(tb):
    """Drop the leading frames of seamless's own modules: the text starts at the user's code."""
    while tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(
            _PACKAGE_DIR + os.sep):
        tb = tb.tb_next
    return tb


def failure_from_exception(exc: BaseException) -> Failure:
    """The failure text of an exception raised by a body, with the NameError hint applied."""
    if isinstance(exc, NameError) and exc.args and "is not defined" in str(exc.args[0]) \
            and NAME_HINT not in str(exc.args[0]):
        exc.args = (str(exc.args[0]) + NAME_HINT,) + exc.args[1:]
    te = traceback.TracebackException(type(exc), exc, _user_traceback(exc.__traceback__),
                                      compact=True)
    text = "".join(te.format())
    summary = "".join(te.format_exception_only()).strip().splitlines()[-1]
    return Failure(summary, text, exception_type=_exception_type(exc))


def _exception_type(exc: BaseException) -> str:
    """The qualified class name; for a child's error re-raised by a body, the class the child
    raised, so ``except KeyError:`` still catches it two levels up."""
    from ..errors import TransformationError, qualified_name

    if isinstance(exc, TransformationError) and getattr(exc, "exception_type", None):
        return exc.exception_type
    return qualified_name(type(exc))

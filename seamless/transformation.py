"""The ``Transformation`` handle (docs/transformations.md).

A handle is built by calling a delayed transformer.  It owns the canonical encodings of its
arguments (snapshots taken at build time), knows its transformation checksum (or computes it
once its dependencies are done), and moves through

    pending -> running -> done | failed        pending/running -> cancelled

Every member is thread-safe.  A started handle owns a completion word (``seamless.completion``,
taken by ``start()``, given back when the handle is garbage; a handle never started has none)
that mirrors the status.  The terminal move is the word's compare-and-swap, made under the
handle's lock by whoever comes first: the outcome arriving from the dispatcher
(``_job_finished``, ``_fail_dependency``, any thread) or ``cancel()``; the winner then writes
``_outcome``/``_failure_line`` and ``_status`` (before the lock goes), the loser changes
nothing.  The CAS wakes the waiters: threads blocked in ``slab.wait()`` and event loops
watching the slab's eventfd (``.task()``); a woken waiter takes the lock once before it reads
the status, so it sees the winner's fields.  A failure is kept as text and turned into a
``TransformationError`` only when someone asks for the value.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from hashlib import sha256

from . import completion
from .checksum import Checksum, _trusted
from .encoding import Encoded, PendingChecksum, decode, resolved
from .errors import (
    RemoteTraceback,
    SeamlessError,
    TransformationCancelledError,
    TransformationError,
    WorkerCrashedError,
    error_class,
)
from .execution import dispatch
from .execution.backend import materialize
from .execution.runner import Failure, Outcome, Work

__all__ = ["Transformation"]

_log = logging.getLogger("seamless")

def _our_frames_hidden(method):
    """Re-raise seamless's own usage errors (a bad configuration, a full /dev/shm ...) with
    the frames inside seamless dropped: the user sees their call and the message.  A body's
    failure (``TransformationError``) keeps its traceback."""
    @functools.wraps(method)
    def public(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except SeamlessError as exc:
            if isinstance(exc, TransformationError):
                raise
            raise exc.with_traceback(None) from None
    return public


PENDING, RUNNING, DONE, FAILED, CANCELLED = "pending", "running", "done", "failed", "cancelled"
_FINISHED = (DONE, FAILED, CANCELLED)
_NO_VALUE = object()


def description_checksum(code_checksum: str, arguments: dict, statics: str) -> Checksum:
    """SHA-256 of the canonical description (docs/transformations.md, "Identity").

    ``arguments``: name -> (kind, checksum); ``statics``: the canonical text of the
    ``"encoding"``..``"result"`` members, fixed per transformer state.  Built as text because
    the key order is fixed, so no dict has to be sorted per call.
    """
    return _trusted(_description_hex(code_checksum, arguments, statics))


def _description_hex(code_checksum: str, arguments: dict, statics: str) -> str:
    """``description_checksum`` as a plain ``str`` (what a handle keeps: see ``_checksum``)."""
    names = sorted(arguments) if len(arguments) > 1 else arguments
    args = ",".join([f'"{n}":["{arguments[n][0]}","{resolved(arguments[n][1])}"]'
                     for n in names])
    text = '{"arguments":{' + args + '},"code":"' + code_checksum + '",' + statics
    return sha256(text.encode("utf-8")).hexdigest()


class Transformation:
    """Handle of one transformation; built by calling a delayed transformer."""

    _seamless_handle = True
    # ``_checksum`` is a plain ``str`` (``Checksum`` only where it is handed out): like the
    # plain-str checksums of the arguments (``encode_argument``) it keeps the handle's objects
    # out of the cyclic garbage collector's walks.  ``_callbacks`` is None until the first
    # one.  ``_simple``: no dependency and no checksum still being computed among the
    # arguments, so starting needs no callbacks and the arguments are the work's as they are.
    __slots__ = ("name", "_code", "_params", "_arguments", "_values", "_functions", "_modules",
                 "_statics", "_local", "_checksum", "_status", "_outcome", "_failure_line",
                 "_job", "_slab", "_slot", "_generation", "_lock", "_callbacks",
                 "_value", "_simple", "__weakref__")

    def __init__(self, name, code, params, arguments, values, functions, modules, statics,
                 local):
        self.name = name
        self._code = code
        self._params = params
        self._arguments = arguments    # name -> Encoded | Transformation (dependency)
        self._values = values
        self._functions = functions
        self._modules = modules
        self._statics = statics
        self._local = local
        self._status = PENDING
        self._outcome: Outcome | None = None
        self._failure_line: str | None = None
        self._job = None
        self._slab = None  # the completion word (slab, slot, generation), taken by start()
        self._slot = 0
        self._generation = 0
        self._lock = threading.Lock()
        self._callbacks = None
        self._value = _NO_VALUE
        self._checksum = None
        self._simple = False
        for a in arguments.values():
            if type(a) is Transformation or type(a.checksum) is PendingChecksum:
                break  # known once the dependency (or the worker's deferred hash) is done
        else:
            self._simple = True
            self._checksum = self._compute_checksum(arguments)

    # ------------------------------------------------------------ identity

    def _compute_checksum(self, arguments) -> str:
        """``arguments``: name -> Encoded (a (kind, checksum, buffer) tuple)."""
        return _description_hex(self._code.checksum, arguments, self._statics)

    def _dependencies(self):
        if self._simple:
            return []
        return [a for a in self._arguments.values() if isinstance(a, Transformation)]

    def _unfinished_dependencies(self):
        if self._simple:
            return []
        return [d for d in self._dependencies() if d._status not in _FINISHED]

    def _pending_checksums(self):
        """Input checksums a pool worker is still computing (results passed on at once)."""
        if self._simple:
            return []
        pending = []
        for arg in self._arguments.values():
            if isinstance(arg, Transformation):
                if arg._status != DONE:
                    continue
                arg = arg._outcome.result
            if type(arg.checksum) is PendingChecksum and not arg.checksum.done():
                pending.append(arg.checksum)
        return pending

    def _resolved_arguments(self):
        """Arguments with dependencies replaced by their results; or the first failed dependency."""
        if self._simple:
            return self._arguments, None  # never changed after construction: shared as is
        out = {}
        for name, arg in self._arguments.items():
            if isinstance(arg, Transformation):
                if arg._status != DONE:
                    return None, (name, arg)
                out[name] = arg._outcome.result
            else:
                out[name] = arg
        return out, None

    def _resolve(self):
        """(checksum, Work) once dependencies are done; None after failing for a dependency."""
        arguments, failed = self._resolved_arguments()
        if failed is not None:
            self._fail_dependency(*failed)
            return None
        if self._checksum is None:
            self._checksum = self._compute_checksum(arguments)
        work = Work(self.name, self._code, self._params, arguments, self._values,
                    self._functions, self._modules)
        return self._checksum, work

    def _provisional_checksum(self) -> str:
        """Identity used in messages when a dependency never produced a result: each
        dependency stands in with its own transformation checksum."""
        args = {}
        for name, arg in self._arguments.items():
            if isinstance(arg, Transformation):
                args[name] = ("transformation", arg._provisional_checksum()
                              if arg._checksum is None else arg._checksum)
            else:
                cs = arg.checksum
                args[name] = (arg.kind, cs if type(cs) is not PendingChecksum or cs.done()
                              else "pending")
        return _description_hex(self._code.checksum, args, self._statics)

    def _label(self) -> str:
        cs = self._checksum or self._provisional_checksum()
        return f"transformation {self.name} ({cs[:12]})"

    # ------------------------------------------------------------ completion

    def _finish(self, state: int) -> bool:
        """The terminal move of a started handle, lock held: True if this call won the CAS
        (and woke the waiters, who then wait for the lock to read the winner's fields)."""
        return self._slab.finish(self._slot, self._generation, state)

    def _job_finished(self, outcome: Outcome):
        failure = outcome.failure
        with self._lock:
            if not self._finish(completion.DONE if failure is None else completion.FAILED):
                return  # cancelled (or failed) meanwhile: the outcome is not ours any more
            self._job = None
            self._outcome = outcome
            if failure is None:
                self._status = DONE
                if outcome.from_cache and _log.isEnabledFor(logging.INFO):
                    _log.info("%s: cache hit", self._label())
            else:
                how = ": " if failure.crash is not None else " with "
                self._failure_line = f"{self._label()} failed{how}{failure.summary}"
                self._status = FAILED
            callbacks = self._finished_locked()
        self._run_callbacks(callbacks)

    def _fail_dependency(self, name, dep):
        how = "was cancelled" if dep._status == CANCELLED else \
            f"failed with {dep._outcome.failure.summary}" if dep._outcome is not None \
            and dep._outcome.failure is not None else f"failed: {dep._failure_line}"
        text = dep.exception or ""
        dep_cs = dep._checksum or dep._provisional_checksum()
        # A dependency's exception class is the dependent's too (as in Dask).
        dep_type = dep._outcome.failure.exception_type \
            if dep._outcome is not None and dep._outcome.failure is not None else None
        with self._lock:
            if not self._finish(completion.FAILED):
                return
            self._outcome = Outcome(None, Failure(f"dependency {name!r} {how}", text,
                                                  exception_type=dep_type), 0.0)
            self._failure_line = (f"{self._label()} failed: its dependency {name!r} "
                                  f"(transformation {dep.name}, {dep_cs[:12]}) {how}")
            self._status = FAILED
            callbacks = self._finished_locked()
        self._run_callbacks(callbacks)

    def _finished_locked(self):
        """After the winning terminal move, lock held: take the callbacks (None: none)."""
        callbacks, self._callbacks = self._callbacks, None
        return callbacks

    def _run_callbacks(self, callbacks):
        if callbacks:
            for cb in callbacks:
                cb(self)

    def _add_done_callback(self, cb):
        """Call ``cb(handle)`` once finished (now, if it already is)."""
        with self._lock:
            if self._status not in _FINISHED:
                if self._callbacks is None:
                    self._callbacks = [cb]
                else:
                    self._callbacks.append(cb)
                return
        cb(self)

    def _word(self):
        """(slab, slot, generation) of an unfinished handle, or None once it has finished.

        Under the lock: a waiter woken by the terminal CAS passes here after the winner has
        written its fields."""
        with self._lock:
            if self._status in _FINISHED:
                return None
            return self._slab, self._slot, self._generation

    def _wait(self, timeout=None) -> bool:
        """Block until finished (called after start()), in the completion word's futex;
        False if ``timeout`` seconds passed first.  With a timeout, a body waiting on a
        child does not run the child on its own thread (that could outlast the timeout)."""
        if self._status in _FINISHED:
            return True
        deadline = None
        if timeout is None:
            dispatch.help_run(self)
        else:
            deadline = time.monotonic() + timeout
        try:
            hook = dispatch.wait_hook
            if hook is not None and deadline is None:
                hook(self)  # in a pool worker: may run declined children here
                return True
            word = self._word()
            while word is not None:
                slab, slot, generation = word
                if deadline is None:
                    slab.wait(slot, generation)
                else:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    slab.wait(slot, generation, remaining)
                word = self._word()
        except KeyboardInterrupt:
            self.cancel()
            raise
        return True

    def _start_and_wait(self, timeout, method: str):
        """``.run()``/``.compute()``: check ``timeout``, start, wait (TimeoutError)."""
        if timeout is not None and (isinstance(timeout, bool) or not isinstance(
                timeout, (int, float)) or not timeout >= 0):
            raise ValueError(f"timeout must be None or a number of seconds >= 0, got "
                             f"{timeout!r} (use tf.{method}(timeout=2.5))")
        self.start()
        if not self._wait(timeout):
            raise TimeoutError(f"{self._label()} did not finish within {timeout:g} s; it goes "
                               f"on running (call .{method}() again to wait longer, or "
                               f".cancel() to stop it)")

    def _public_checksum(self) -> Checksum | None:
        checksum = self._checksum
        return None if checksum is None else _trusted(checksum)

    def _error(self) -> TransformationError:
        """The exception for a failed or cancelled handle.  The failure text is shown once:
        as the ``__cause__`` (``RemoteTraceback``, displayed first), or in the message when
        the cause is the machinery's own error."""
        checksum = self._public_checksum()
        line = self._failure_line or self._label()  # set with the terminal status
        if self._status == CANCELLED:
            return TransformationCancelledError(line, checksum=checksum, traceback=line,
                                                name=self.name)
        failure = self._failure()
        text = failure.text
        if failure.crash is not None:
            crash = failure.crash
            cause = crash["cause"]
            err = WorkerCrashedError(f"{line}\n{text}" if cause else
                                     line, checksum=checksum, traceback=text,
                                     name=self.name, exitcode=crash["exitcode"],
                                     signal=crash["signal"], pid=crash["pid"])
            err.__cause__ = SeamlessError(cause) if cause else RemoteTraceback(text)
            return err
        err = error_class(failure.exception_type)(
            line, checksum=checksum, traceback=text, name=self.name,
            exception_type=failure.exception_type)
        err.__cause__ = RemoteTraceback(text)
        return err

    def _failure(self) -> Failure:
        """The failure of a failed handle (stored with the status, under the lock)."""
        outcome = self._outcome
        assert outcome is not None and outcome.failure is not None
        return outcome.failure

    def _result(self) -> Encoded:
        """The result of a done handle (stored with the status, under the lock)."""
        outcome = self._outcome
        assert outcome is not None and outcome.result is not None
        return outcome.result

    # ------------------------------------------------------------ public API

    @_our_frames_hidden
    def start(self) -> "Transformation":
        """Schedule the computation without blocking; returns self."""
        with self._lock:
            if self._status != PENDING:
                return self
            if self._slab is None:
                self._slab, self._slot, self._generation = completion.acquire()
            self._slab.start(self._slot, self._generation)
            self._status = RUNNING
        try:
            dispatch.start(self)
        except SeamlessError:
            self._unstart()
            raise
        return self

    def _unstart(self):
        """Back to pending after seamless refused to start it (e.g. a bad configuration):
        nothing runs for it, so a later ``.run()`` must start it again rather than wait."""
        with self._lock:
            if self._status == RUNNING and self._job is None:
                self._generation = self._slab.reset(self._slot)
                self._status = PENDING

    @_our_frames_hidden
    def run(self, timeout=None):
        """Start if needed, block until finished, return the value (or raise).

        ``timeout`` (seconds): raise ``TimeoutError`` if it is not finished by then; the
        work goes on, and a later ``.run()`` waits for the same execution."""
        self._start_and_wait(timeout, "run")
        return self.value

    @_our_frames_hidden
    def compute(self, timeout=None) -> Checksum | None:
        """Start if needed, block, return the result checksum; None on failure or cancel.
        ``timeout`` as for ``.run()``."""
        self._start_and_wait(timeout, "compute")
        return self.result_checksum

    def task(self) -> "asyncio.Task":
        """An asyncio task on the running loop resolving to the value (``await tf.task()``)."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "tf.task() needs a running event loop; in synchronous code use tf.run()"
            ) from None
        self.start()
        task = loop.create_task(self._value_when_finished())
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task):
        """Cancelling the task cancels the handle (asyncio's convention)."""
        if task.cancelled():
            self.cancel()

    async def _value_when_finished(self):
        """Await the completion word through its slab's eventfd in the running loop."""
        word = self._word()
        while word is not None:
            await completion.wait_async(*word)
            word = self._word()
        return self.value

    @property
    def value(self):
        status = self._status
        if status == DONE:
            if self._value is _NO_VALUE:
                result: Encoded = self._outcome.result
                self._value = decode(result.kind, materialize(result.buffer), result.checksum)
            return self._value
        if status in (FAILED, CANCELLED):
            raise self._error()
        raise RuntimeError(f"{self._label()} is still running; call .run() to wait for it, "
                           f"or await tf.task()")

    @property
    def exception(self) -> str | None:
        if self._status == FAILED:
            return self._failure().text
        if self._status == CANCELLED:
            return self._failure_line
        return None

    @property
    def checksum(self) -> Checksum:
        """The transformation checksum; waits for unfinished dependencies."""
        if self._checksum is None:
            for dep in self._dependencies():
                dep.start()
                dep._wait()
            arguments, failed = self._resolved_arguments()
            if failed is not None:
                name, dep = failed
                raise TransformationError(
                    f"the checksum of {self._label()} is unknown: its dependency {name!r} "
                    f"({dep._label()}) did not finish successfully (status {dep._status})",
                    checksum=None, traceback=dep.exception, name=self.name)
            with self._lock:
                if self._checksum is None:
                    self._checksum = self._compute_checksum(arguments)
        return _trusted(self._checksum)

    transformation_checksum = checksum

    @property
    def result_checksum(self) -> Checksum | None:
        """The result's checksum once done (may wait for a pool worker's deferred hash)."""
        if self._status == DONE:
            checksum = self._result().checksum
            if type(checksum) is PendingChecksum:
                return checksum.wait()
            return checksum if type(checksum) is Checksum else _trusted(checksum)
        return None

    @property
    def status(self) -> str:
        return self._status

    @property
    def cached(self) -> bool:
        """True when this handle is done and its result came from a cache (this process's
        memory or the persistent cache) instead of a run; False otherwise, and before it is
        done (docs/caching.md)."""
        outcome = self._outcome
        return self._status == DONE and outcome is not None and outcome.from_cache

    def cancel(self) -> bool:
        """Cancel a pending or running handle (terminal); False if it had finished."""
        with self._lock:
            if self._slab is None:  # never started: no word, nobody waits
                if self._status in _FINISHED:
                    return False
            elif not self._finish(completion.CANCELLED):
                return False
            self._failure_line = (
                f"{self._label()} was cancelled (by .cancel(), or by parallel() stopping "
                f"early); build a new handle to run it again")
            self._status = CANCELLED
            callbacks = self._finished_locked()
        if self._job is not None:
            dispatch.withdraw(self)
            self._job = None
        self._run_callbacks(callbacks)
        return True

    def clear_exception(self):
        """Turn a failed handle back into a pending one, so the next start executes again."""
        with self._lock:
            if self._status != FAILED:
                return
            self._generation = self._slab.reset(self._slot)
            self._status = PENDING
            self._outcome = None
            self._failure_line = None

    def __del__(self, _release=completion.release):
        """Give the completion word back (bound early: works while the interpreter exits)."""
        if self._slab is not None:
            _release(self._slab, self._slot)

    def __repr__(self):
        cs = self._checksum[:12] if self._checksum else "?"
        return f"<Transformation {self.name} ({cs}) {self._status}>"

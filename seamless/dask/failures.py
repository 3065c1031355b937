"""Dask's ways of failing, as seamless ``Failure`` records (docs/scale-out.md, "Failures").

- A body that raises: the task raises ``BodyFailed`` on the worker, carrying the failure *text*
  that ``execution.runner`` made (never the exception object, which may not unpickle on the
  client).  Dask marks the key erred; the client turns it back into the same ``Failure`` a
  local run gives, so ``.run()`` raises ``TransformationError`` (of the body's class when the
  client can import it) with the remote traceback.
- A worker that died while running the task: after ``distributed.scheduler.allowed-failures``
  retries the scheduler gives up with ``KilledWorker``; it becomes a crash ``Failure``
  (``WorkerCrashedError``) naming the worker, the attempts and the setting, plus the nanny's
  memory report when the nanny restarted that worker for memory.
- Anything else (the scheduler went away, the key was cancelled elsewhere): a failure naming
  the scheduler, so nothing waits forever.

The caller releases the erred future once this record is made: the scheduler then forgets the
key and its traceback.
"""

from __future__ import annotations

import traceback

from ..execution.runner import Failure

__all__ = ["BodyFailed", "failure_from_error"]


class BodyFailed(Exception):
    """Raised by a task whose body failed: ``args`` are ``(summary, text, exception_type)``."""

    def __str__(self):
        return self.args[0]


def failure_from_error(exc: BaseException, client) -> Failure:
    """The ``Failure`` for the exception a task's future ended with."""
    if isinstance(exc, BodyFailed):
        summary, text, exception_type = exc.args
        return Failure(summary, text, exception_type=exception_type)
    from distributed.scheduler import KilledWorker

    if isinstance(exc, KilledWorker):
        return _crash(exc, client)
    line = f"{type(exc).__name__}: {exc}"
    where = _scheduler_address(client)
    summary = f"the Dask cluster at {where} did not return it ({line})"
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__, chain=False))
    return Failure(summary, f"{summary}\n{text}", exception_type="seamless.errors.SeamlessError")


def _crash(exc, client) -> Failure:
    worker = exc.last_worker.address
    allowed = exc.allowed_failures
    attempts = allowed + 1
    summary = (f"the Dask worker {worker} died while running it; it was tried on {attempts} "
               f"worker{'s' if attempts > 1 else ''} (distributed.scheduler.allowed-failures "
               f"is {allowed})")
    memory = _memory_report(client, worker)
    if memory:
        summary += f"; {memory}"
    cause = (f"{summary}\nDask: {exc}\n(a transformation that kills its process, e.g. by "
             f"running out of memory, fails this way; set distributed.scheduler.allowed-failures"
             f" to 0 to fail at the first death)")
    return Failure(summary, cause, crash={"exitcode": None, "signal": None, "pid": None,
                                          "cause": cause})


def _memory_report(client, worker: str) -> str | None:
    """What the nanny said when it restarted ``worker`` for using too much memory, if it did."""
    try:
        events = client.get_events("worker-restart-memory")
    except Exception:  # the scheduler may be gone with the worker: the crash says enough
        return None
    for _when, event in reversed(list(events)):
        if isinstance(event, dict) and event.get("worker") == worker:
            import dask

            limit = dask.config.get("distributed.worker.memory.terminate")
            return (f"its nanny restarted it because its memory ({event.get('rss')} bytes) "
                    f"passed {limit:.0%} of the worker's memory limit "
                    f"(distributed.worker.memory.terminate)")
    return None


def _scheduler_address(client) -> str:
    try:
        return client.scheduler.address
    except AttributeError:
        return "the scheduler"

"""The libraries a user would pick instead of seamless, behind one small interface.

Each adapter is a context manager that starts its peer's workers (2 unless stated), warms
them with one call, and on exit stops them; the benchmark that opened it owns it for the
length of one test.  ``round_trip(a)`` sends ``a`` to a worker, computes ``a * 2`` there and
brings the result back into this process; ``tiny(xs)`` runs ``x + 1`` for every ``x`` as one
task each, all submitted before any result is collected, and returns the results.

``open_peer(name)`` raises ``PeerMissing`` (with the reason and the fix) when the peer's
package is not installed, so the calling benchmark skips that row with the reason.  Nothing
here is a dependency of seamless: the ``bench`` extra installs the Python peers.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import warnings

WORKERS = 2


class PeerMissing(Exception):
    """The peer is not installed here; the message says what to install."""


def double(a):
    return a * 2


def increment(x):
    return x + 1


class _Pool:
    """``multiprocessing.Pool`` with the platform's default start method: pickle through pipes."""

    def __enter__(self):
        self.pool = multiprocessing.Pool(WORKERS)
        self.pool.apply(increment, (1,))
        return self

    def __exit__(self, *exc):
        self.pool.terminate()
        self.pool.join()

    def round_trip(self, a):
        return self.pool.apply(double, (a,))

    def tiny(self, xs):
        futures = [self.pool.apply_async(increment, (x,)) for x in xs]
        return [f.get() for f in futures]


class _ProcessPoolExecutor:
    """``concurrent.futures.ProcessPoolExecutor``: submit + result."""

    def __enter__(self):
        self.executor = concurrent.futures.ProcessPoolExecutor(WORKERS)
        self.executor.submit(increment, 1).result()
        return self

    def __exit__(self, *exc):
        self.executor.shutdown(wait=True)

    def round_trip(self, a):
        return self.executor.submit(double, a).result()

    def tiny(self, xs):
        futures = [self.executor.submit(increment, x) for x in xs]
        return [f.result() for f in futures]


class _Joblib:
    """joblib's ``Parallel`` on its loky backend, one pool kept for the whole test.

    ``memmap=True`` is joblib's default (arrays over 1 MB are dumped to a file in /dev/shm
    and memory-mapped by the worker); ``memmap=False`` (``max_nbytes=None``) pickles them.
    Tiny tasks use joblib's automatic batching, as a user would.
    """

    def __init__(self, memmap: bool):
        self.memmap = memmap

    def __enter__(self):
        try:
            import joblib
        except ImportError as exc:
            raise PeerMissing("joblib is not installed (pip install .[bench])") from exc
        self.joblib = joblib
        options = {} if self.memmap else {"max_nbytes": None}
        self.parallel = joblib.Parallel(n_jobs=WORKERS, backend="loky", **options)
        self.parallel.__enter__()
        self.tiny([1, 2])
        return self

    def __exit__(self, *exc):
        self.parallel.__exit__(None, None, None)

    def round_trip(self, a):
        return self.parallel([self.joblib.delayed(double)(a)])[0]

    def tiny(self, xs):
        return self.parallel(self.joblib.delayed(increment)(x) for x in xs)


class _Mpire:
    """mpire's ``WorkerPool`` (fork start), ``apply`` / ``apply_async``."""

    def __enter__(self):
        try:
            from mpire import WorkerPool
        except ImportError as exc:
            raise PeerMissing("mpire is not installed (pip install .[bench])") from exc
        self.pool = WorkerPool(n_jobs=WORKERS, start_method="fork")
        self.pool.__enter__()
        self.pool.apply(increment, (1,))
        return self

    def __exit__(self, *exc):
        self.pool.__exit__(None, None, None)

    def round_trip(self, a):
        return self.pool.apply(double, (a,))

    def tiny(self, xs):
        futures = [self.pool.apply_async(increment, (x,)) for x in xs]
        return [f.get() for f in futures]


class _Dask:
    """Dask ``LocalCluster`` (2 worker processes, 1 thread each, no dashboard).

    ``scatter=False``: ``client.submit(double, a)``, the array travels inside the task;
    ``scatter=True``: ``client.scatter(a)`` first, then ``submit`` on the future.
    """

    def __init__(self, scatter: bool):
        self.scatter = scatter

    def __enter__(self):
        try:
            from dask.distributed import Client, LocalCluster
        except ImportError as exc:
            raise PeerMissing("dask[distributed] is not installed (pip install .[bench])") \
                from exc
        self.stack = contextlib.ExitStack()
        self.stack.enter_context(warnings.catch_warnings())
        # Dask warns about large arguments in a task graph: that is the case measured here.
        warnings.simplefilter("ignore")
        cluster = self.stack.enter_context(LocalCluster(
            n_workers=WORKERS, threads_per_worker=1, processes=True, dashboard_address=None))
        self.client = self.stack.enter_context(Client(cluster))
        self.client.submit(increment, 1, pure=False).result()
        return self

    def __exit__(self, *exc):
        self.stack.close()

    def round_trip(self, a):
        if self.scatter:
            future = self.client.scatter(a)
            return self.client.submit(double, future, pure=False).result()
        return self.client.submit(double, a, pure=False).result()

    def tiny(self, xs):
        futures = [self.client.submit(increment, x, pure=False) for x in xs]
        return self.client.gather(futures)


class _Ray:
    """Ray, only when it is already importable (never installed by the bench extra)."""

    def __enter__(self):
        try:
            import ray
        except ImportError as exc:
            raise PeerMissing("ray is not importable here (optional; pip install ray)") \
                from exc
        self.ray = ray
        ray.init(num_cpus=WORKERS, include_dashboard=False, log_to_driver=False)
        self.double = ray.remote(double)
        self.increment = ray.remote(increment)
        ray.get(self.increment.remote(1))
        return self

    def __exit__(self, *exc):
        self.ray.shutdown()

    def round_trip(self, a):
        return self.ray.get(self.double.remote(a))

    def tiny(self, xs):
        return self.ray.get([self.increment.remote(x) for x in xs])


_PEERS = {
    "multiprocessing.Pool": _Pool,
    "ProcessPoolExecutor": _ProcessPoolExecutor,
    "joblib (loky, memmap)": lambda: _Joblib(memmap=True),
    "joblib (loky, no memmap)": lambda: _Joblib(memmap=False),
    "joblib (loky, auto-batching)": lambda: _Joblib(memmap=True),
    "mpire": _Mpire,
    "Dask submit": lambda: _Dask(scatter=False),
    "Dask scatter + submit": lambda: _Dask(scatter=True),
    "Ray": _Ray,
}

ARRAY_PEERS = [name for name in _PEERS if "batching" not in name]
# Tiny tasks: Pool, ProcessPoolExecutor, loky and mpire are P1/P2 (bench_pool.py).
TINY_TASK_PEERS = ["joblib (loky, auto-batching)", "Dask submit", "Ray"]


def open_peer(name: str):
    """A not yet entered adapter for ``name`` (in ``ARRAY_PEERS`` or ``TINY_TASK_PEERS``)."""
    return _PEERS[name]()

"""The ``distributed.Client`` that remote execution uses, from the configuration.

- ``init(dask_client=client)``: the user's client; seamless never closes it.
- ``scheduler: tcp://host:8786`` (YAML or ``SEAMLESS_SCHEDULER``): seamless makes its own
  client, waits at most Dask's connect timeout (``distributed.comm.timeouts.connect``) and
  closes it in ``Backend.close()`` (``seamless.close()`` or interpreter exit).  An unreachable
  scheduler is a ``SeamlessError`` naming the address and the timeout, never a hang.

On connecting, every worker is asked for its seamless version (one ``client.run``); a worker
with another version is a ``ConfigurationError`` naming it and both versions, since the
workers execute with their own copy of seamless.
"""

from __future__ import annotations

from ..errors import ConfigurationError, SeamlessError

__all__ = ["client_from_config", "connect_timeout", "check_versions", "cluster_threads"]


def connect_timeout() -> float:
    """Dask's connect timeout, in seconds."""
    import dask
    from dask.utils import parse_timedelta

    return parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"), "s")


def client_from_config(config) -> tuple:
    """``(client, owned)``: the configured client; ``owned`` when seamless made it."""
    client = config.get("dask_client")
    if client is not None:
        if getattr(client, "asynchronous", False):
            raise ConfigurationError(
                "seamless.config.init(dask_client=...) needs a synchronous distributed.Client; "
                "got an asynchronous one (create it without asynchronous=True)",
                key="dask_client")
        return client, False
    address = config.get("scheduler")
    if address is None:
        raise ConfigurationError(
            "execution is 'remote' but no Dask scheduler is set (set SEAMLESS_SCHEDULER, add "
            "'- scheduler: tcp://host:8786' to seamless.yaml, or call "
            "seamless.config.init(dask_client=client))", key="scheduler")
    return _connect(address), True


def _connect(address: str):
    import distributed

    timeout = connect_timeout()
    try:
        return distributed.Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise SeamlessError(
            f"cannot reach the Dask scheduler at {address} within {timeout:g} s "
            f"(distributed.comm.timeouts.connect): {exc}; check that the scheduler runs and "
            f"the 'scheduler' setting (SEAMLESS_SCHEDULER or seamless.yaml)") from exc


def _worker_version() -> str:
    import seamless

    return seamless.__version__


def check_versions(client):
    """Refuse a cluster whose workers run another version of seamless."""
    import seamless

    mine = seamless.__version__
    try:
        versions = client.run(_worker_version)
    except ImportError as exc:
        raise ConfigurationError(
            f"the Dask workers cannot import seamless ({exc}); install seamless {mine} on the "
            f"workers") from exc
    for worker, version in sorted(versions.items()):
        if version != mine:
            raise ConfigurationError(
                f"Dask worker {worker} runs seamless {version}, this client {mine}; install "
                f"the same version on the workers and the client")


def cluster_threads(client) -> int:
    """The cluster's worker threads now (at least 1: a cluster still starting has none)."""
    return max(1, sum(client.nthreads().values()))

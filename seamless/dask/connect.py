"""The ``distributed.Client`` that remote execution uses, from the configuration.

- ``init(dask_client=client)``: the user's client; seamless never closes it.
- ``scheduler: tcp://host:8786`` (YAML or ``SEAMLESS_SCHEDULER``): seamless makes its own
  client, waits at most Dask's connect timeout (``distributed.comm.timeouts.connect``) and
  closes it in ``Backend.close()`` (``seamless.close()`` or interpreter exit).  An unreachable
  scheduler is a ``SeamlessError`` naming the address and the timeout, never a hang.

On connecting, a worker plugin checks the seamless version of every worker, now and of each
worker that joins later; a worker with another version is a ``ConfigurationError`` naming it
and both versions (the workers execute with their own copy of seamless).  A worker that joins
later with another version can only log the plugin's error: there is no caller to raise to.

Large buffers (scattered inputs, fetched results) go straight between the client and the
workers when the scheduler listens on loopback: its workers then run on this machine and the
client can reach them, and the detour through the scheduler costs more than the transfer
itself.  Otherwise Dask's own choice stands (the client's ``direct_to_workers``; by default
through the scheduler, which is reachable where the workers may not be).
"""

from __future__ import annotations

from distributed import Client, WorkerPlugin

from ..errors import ConfigurationError, SeamlessError

__all__ = ["client_from_config", "connect_timeout", "check_versions", "cluster_threads",
           "direct_transfers", "VersionCheck"]


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
    timeout = connect_timeout()
    try:
        return Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise SeamlessError(
            f"cannot reach the Dask scheduler at {address} within {timeout:g} s "
            f"(distributed.comm.timeouts.connect): {exc}; check that the scheduler runs and "
            f"the 'scheduler' setting (SEAMLESS_SCHEDULER or seamless.yaml)") from exc


_PLUGIN_NAME = "seamless-version-check"


class VersionCheck(WorkerPlugin):
    """On every worker, now and when it joins later: the same seamless as the client.  Pickled
    by reference (this module's name): the workers import it from their own seamless."""

    name = _PLUGIN_NAME

    def __init__(self, wanted: str):
        self.wanted = wanted

    def setup(self, worker):
        check_worker_version(worker.address, self.wanted)


def check_worker_version(address: str, wanted: str):
    import seamless

    if seamless.__version__ != wanted:
        raise ConfigurationError(
            f"Dask worker {address} runs seamless {seamless.__version__}, the client "
            f"{wanted}; install the same version on the workers and the client")


def check_versions(client):
    """Register the version check on the workers (existing ones answer at once); a worker with
    another version, or without seamless, is a ``ConfigurationError``."""
    import seamless

    mine = seamless.__version__
    try:
        client.register_plugin(VersionCheck(mine), name=_PLUGIN_NAME)
    except ConfigurationError:
        client.unregister_worker_plugin(_PLUGIN_NAME)
        raise
    except ImportError as exc:
        client.unregister_worker_plugin(_PLUGIN_NAME)
        raise ConfigurationError(
            f"the Dask workers cannot import seamless ({exc}); install seamless {mine} on the "
            f"workers") from exc


def cluster_threads(client) -> int:
    """The cluster's worker threads now (at least 1: a cluster still starting has none)."""
    return max(1, sum(client.nthreads().values()))


def direct_transfers(client) -> bool | None:
    """The ``direct=`` argument for the client's large scatters and gathers: True when the
    client left ``direct_to_workers`` unset and the scheduler is on loopback, else None
    (Dask decides, as for any call)."""
    if getattr(client, "direct_to_workers", None) is not None:
        return None
    return True if _on_loopback(getattr(client.scheduler, "address", None)) else None


def _on_loopback(address) -> bool:
    import ipaddress

    from distributed.comm import get_address_host

    if not address:
        return False
    try:
        host = get_address_host(address)
    except ValueError:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False

"""``execution: remote``: transformations run on a Dask distributed cluster (docs/scale-out.md).

One module per job:

- ``connect``: the ``distributed.Client`` in force (the user's, or one made from ``scheduler``
  with a bounded connect timeout) and the worker plugin that checks the seamless version.
- ``ship``: a ``Work`` becomes a task payload (code text, input checksums) plus the buffers the
  cluster lacks; large buffers are scattered once per checksum, results of earlier tasks travel
  as their Dask futures (dependencies), never through the client.
- ``task``: what a worker runs: the same ``execution.runner.run`` as a pool worker.
- ``results``: what a task returns, and ``RemoteBuffer``, the lazily fetched result bytes.
- ``failures``: Dask's errors turned into seamless failures.
- ``sharedfs``: the persistent cache directory, when workers see it at the same path.
- ``backend``: the ``Backend`` of ``execution: remote`` (``create(hooks)``).

Nothing here is imported by ``import seamless``; ``distributed`` is imported only by these
modules, on first use of remote execution.
"""

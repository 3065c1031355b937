"""The command-line tools: ``seamless-run`` (``run.py``) and ``seamless-cache`` (``cache_cmd.py``).

Light package: the cache-hit path of ``seamless-run`` imports only the standard library, this
package and ``seamless.cache.persistent`` (docs/cli.md). Never import numpy, ``seamless._ipc``,
``seamless.transformer`` or YAML at module level here.
"""

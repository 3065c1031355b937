"""Shell jobs as cached transformations: the core both ``seamless-run`` and the queue server run.

``job.ShellJob`` describes a job by data; ``pipeline.run_job`` runs one (words, sidecars,
identity, cache, sandbox, atomic outputs); the other modules are its parts (docs/cli.md).
"""

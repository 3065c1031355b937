"""``seamless-queue``: a local job server for shell jobs, and its clients (docs/cli.md).

``wire`` (JSON frames), ``location`` (where a server's socket lives, safety checks), ``jobs``
(the job table: which job runs when, without I/O), ``server`` (the select loop: connections,
sidecars, job processes), ``zygote`` (the fork server that starts each job's runner from a
process that imported it once), ``client`` (``seamless-run --qsubmit``,
``seamless-queue-finish``). Every job runs ``seamless.shell.pipeline`` through
``seamless.shell.runner``: the same pipeline as a plain ``seamless-run``.
"""

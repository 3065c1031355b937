"""``seamless-queue``: a local job server for shell jobs, and its clients (docs/cli.md).

``wire`` (JSON frames), ``location`` (where a server's socket lives, safety checks), ``server``
(the select loop, jobs as subprocesses), ``client`` (``seamless-run --qsubmit``,
``seamless-queue-finish``). Jobs run ``seamless.shell.pipeline`` through
``seamless.shell.runner``, the same pipeline as a plain ``seamless-run``.
"""

"""Where transformations run: the dispatcher, the backends and the body runner.

``dispatch`` decides (cache, latch-on, backend); ``inprocess`` is the executor of
``execution: process``; ``runner`` executes a body and turns its outcome into data; ``job``
is one shared execution.
"""

"""What the compiled modules of seamless._ipc and their pure-Python twins (``_pure``) agree on.

One home for the policy both backends share, so a change is made once: word layouts, state
names, limits, argument checks and error texts (``flags``, ``window``), and, for segments,
the chunk size, the memory check and the messages of a failed allocation (``segments``).
Plain Python, imported at module level by the ``.pyx`` files and by the twins; the ``.pyx``
files call it only outside their hot paths (argument checks, error paths, once per segment).
What must be a C constant (the flag word's enum in ``flags.pxd``) is generated from
``flags`` (see ``flags.c_enum``).

Light on purpose: ``flags`` and ``window`` import nothing beyond the standard library, so a
handle's completion flags still load without numpy.
"""

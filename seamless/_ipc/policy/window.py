"""Ordered-window policy shared by seamless/_ipc/window.pyx and its twin _pure/window.py.

The window's limits and error texts (its word layout is the flag slab's: policy/flags.py).
Constants and pure functions, no state; called on error paths and at construction only.
"""

from __future__ import annotations

MAX_CAPACITY = (1 << 31) - 1
MAX_FIRST_SEQ = 1 << 62


def check_construction(capacity: int, first_seq: int) -> None:
    if not 1 <= capacity <= MAX_CAPACITY:
        raise ValueError(f"Window capacity must be in 1..{MAX_CAPACITY}, got {capacity} "
                         f"(the number of items held at once)")
    if not 0 <= first_seq <= MAX_FIRST_SEQ:
        raise ValueError(f"first_seq must be in 0..{MAX_FIRST_SEQ}, got {first_seq}")


def negative_seq(seq: int) -> ValueError:
    return ValueError(f"seq must be >= 0, got {seq}")


def closed(call: str) -> ValueError:
    """``call`` (reserve, next_ready, try_next) on a closed window."""
    return ValueError(f"this Window is closed; {call}() needs an open one (make a new Window)")


NOTHING_HELD = ("next_ready(): the window holds nothing, so nothing can become ready "
                "(reserve() an item before waiting for it)")


def started_twice(seq: int) -> ValueError:
    return ValueError(f"start({seq}): item {seq} is RUNNING already; start() moves a "
                      f"PENDING item to RUNNING once, by its one writer")

"""seamless._ipc.policy: the one source of what the compiled core and its twins share.

The flag word's layout must be a C constant in the compiled core, so flags.pxd carries a
block generated from policy/flags.py; these tests fail while that block is stale, and check
that the generator rewrites exactly that block.
"""

from __future__ import annotations

import importlib

import pytest

import seamless._ipc
from seamless._ipc.policy import flags as flags_policy


def test_the_generated_enum_in_flags_pxd_is_current():
    with open(flags_policy.PXD) as file:
        text = file.read()
    assert flags_policy.c_enum() in text, (
        "seamless/_ipc/flags.pxd is stale: run python -m seamless._ipc.policy.flags, "
        "then rebuild (python setup.py build_ext --inplace)")


def test_the_generator_rewrites_a_stale_block_and_nothing_else(tmp_path):
    with open(flags_policy.PXD) as file:
        current = file.read()
    stale = current.replace("    _DONE = 3\n", "    _DONE = 9\n")
    assert stale != current
    pxd = tmp_path / "flags.pxd"
    pxd.write_text(stale)
    assert flags_policy.write_pxd(str(pxd)) is True
    assert pxd.read_text() == current
    assert flags_policy.write_pxd(str(pxd)) is False


@pytest.mark.parametrize("state", ["PENDING", "RUNNING", "DONE", "FAILED", "CANCELLED"])
def test_the_loaded_core_stores_the_policy_layout(state):
    """Whichever core is loaded, a word reads back as generation << STATE_BITS | state with
    the policy's numbers (the compiled core uses the generated C enum)."""
    flags = seamless._ipc.flags
    value = getattr(flags_policy, state)
    assert getattr(flags, state) == value
    with flags.Slab(2) as slab:
        slot, generation = slab.acquire()
        generation = slab.reset(slot)
        if state != "PENDING":
            assert slab.start(slot, generation) is True
        if value in flags_policy.TERMINAL:
            assert slab.finish(slot, generation, value) is True
        assert slab.state(slot) == value
        assert slab.word(slot) == (generation << flags_policy.STATE_BITS) | value
        assert slab.generation(slot) == generation
        assert generation <= flags_policy.GENERATION_MASK


@pytest.mark.parametrize("name", ["flags", "window", "shm_array"])
def test_both_cores_export_the_same_names(name):
    """Each module states its public names itself (static tools read ``__all__``); the twins
    must not drift apart."""
    if not seamless._ipc._has_compiled(name):
        pytest.skip(f"seamless._ipc.{name} ships no compiled form in this checkout")
    compiled = importlib.import_module(f"seamless._ipc.{name}")
    pure = importlib.import_module(f"seamless._ipc._pure.{name}")
    assert sorted(compiled.__all__) == sorted(pure.__all__)
    assert all(hasattr(compiled, n) and hasattr(pure, n) for n in compiled.__all__)

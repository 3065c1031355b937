"""The leak check of tests/leaks.py catches each kind of leak it is for (a check that cannot
fail protects nothing)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest
from leaks import Snapshot

import seamless._ipc


def test_a_descriptor_left_open_is_named():
    before = Snapshot()
    r, w = os.pipe()
    try:
        with pytest.raises(AssertionError, match="descriptors left open: .*pipe:"):
            before.assert_nothing_new(wait=0)
    finally:
        os.close(r)
        os.close(w)
    before.assert_nothing_new(wait=0)


def test_a_thread_still_running_is_named():
    before = Snapshot()
    release = threading.Event()
    thread = threading.Thread(target=release.wait, args=(60,), name="left-behind")
    thread.start()
    try:
        with pytest.raises(AssertionError, match="threads outlived the test"):
            before.assert_nothing_new(wait=0.1)
    finally:
        release.set()
        thread.join(timeout=60)
    before.assert_nothing_new()


def test_a_child_process_still_running_is_caught():
    before = Snapshot()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        with pytest.raises(AssertionError, match="child processes outlived the test"):
            before.assert_nothing_new(wait=0.1)
    finally:
        child.kill()
        child.wait(timeout=60)
    before.assert_nothing_new()


def test_a_live_segment_is_caught():
    before = Snapshot()
    segment = seamless._ipc.shm_array.Segment.create(1000, recycle=False)
    try:
        with pytest.raises(AssertionError, match="segments outlived the test"):
            before.assert_nothing_new(wait=0)
    finally:
        del segment
    before.assert_nothing_new(wait=0)

"""Identity of many small calls (the pool's tiny-task budget depends on it).

Subject: build ``f(i)`` and read its transformation checksum, 10,000 times.  Reference: a
plain loop of ``hashlib.sha256(json.dumps(...))``, the cheapest thing that hashes each call.
The subject hashes twice per call (the argument's canonical bytes, then the description), so
about 2x is the floor of this design.  "warm" repeats the same arguments (their encodings are
memoised); "cold" uses arguments never seen before.  Reported, not gated (issue 3: aim <= 2x).
"""

from __future__ import annotations

import hashlib
import itertools
import json

import pytest

from seamless.transformer import delayed

N = 10_000


@delayed
def f(i):
    return i + 1


def reference(start):
    for i in range(start, start + N):
        hashlib.sha256(json.dumps({"code": "f", "i": i}).encode()).hexdigest()


def subject(start):
    for i in range(start, start + N):
        f(i).checksum


@pytest.mark.benchmark(group="identity")
@pytest.mark.parametrize("temperature", ["warm", "cold"])
def test_identity_of_small_calls(benchmark, time_reference, time_subject, record_ratio,
                                 temperature):
    fresh = itertools.count(10 ** 9, N)
    start = (lambda: 0) if temperature == "warm" else (lambda: next(fresh))
    ref_s = time_reference(lambda: reference(start()), rounds=7)
    subj_s, _ = time_subject(lambda: subject(start()), rounds=7)
    benchmark.extra_info["per_call_us"] = subj_s / N * 1e6
    benchmark.extra_info["reference_per_call_us"] = ref_s / N * 1e6
    # Reported, not gated: the bound is set where a regression in kind (a third hash, a
    # per-call Signature.bind) would show, not at the 2x aim.
    record_ratio(benchmark, ref_s, subj_s, bound_now=5.0, goal=2.0)

"""bench/report.py renders docs/benchmarks.md and its plots from benchmark JSON.

A small synthetic pytest-benchmark JSON (the records the benchmarks leave in ``extra_info``)
and a JUnit file go in; the Markdown must carry the machine, every ratio with its verdict,
the peer sweep, the T1 breakdown, the throughput and start-up rows and the skip reasons,
and each plot must be a PNG 800 px wide.  Nothing is timed here.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import struct

import pytest

pytest.importorskip("matplotlib", reason="the report's plots need matplotlib (pip install "
                                         ".[bench]); it is never a runtime dependency")

REPORT_PY = pathlib.Path(__file__).resolve().parents[2] / "bench" / "report.py"


@pytest.fixture(scope="module")
def report():
    spec = importlib.util.spec_from_file_location("bench_report_under_test", REPORT_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _ratio(ref, subj, bound, goal, **more):
    return {"reference_s": ref, "subject_s": subj, "ratio": subj / ref, "bound_now": bound,
            "goal": goal, "timed": True, **more}


def _bench(name, group, extra_info):
    return {"name": name, "group": group, "extra_info": extra_info, "stats": {}}


INF = float("inf")
MACHINE = {"python_version": "3.11.7", "cpu": {"brand_raw": "Generic CPU", "count": 2},
           "seamless_bench": {"cpu_model": "Test CPU 9000", "sha_ni": True, "cores": 2,
                              "memory_bytes": 24 * 2 ** 30, "python": "3.11.7",
                              "numpy": "2.4.6", "system": "Linux-test",
                              "load_average_at_end": [3.25, 2.5, 1.0]}}
SIZES = [8, 40, 400]


def _sweep(seconds, ratio):
    return {"sizes_mb": SIZES, "seconds": seconds, "peak_size_mb": 400,
            "peak_extra_bytes": 800_000_000, **_ratio(0.2, seconds[-1], INF, INF),
            "ratio": ratio}


def _runs():
    first = [
        _bench("test_t1_round_trip_400mb", "transport", _ratio(0.400, 0.520, 1.5, 1.1)),
        _bench("test_t3_growth_40_to_400mb", "transport", _ratio(0.05, 0.60, 11.0, 10.0)),
        _bench("test_p1_tiny_tasks", "pool",
               _ratio(0.2, 0.5, 1.0, 0.5, per_task_us=50.0, peer_per_task_us=20.0)),
        _bench("test_p2_tiny_tasks_other_peers[mpire]", "pool",
               _ratio(0.3, 0.5, INF, 0.5, per_task_us=50.0, peer_per_task_us=30.0)),
        _bench("test_b1_throughput_vs_pool_imap", "parallel",
               _ratio(0.03, 0.25, 1.0, 0.5, per_item_us=125.0, peer_per_item_us=15.0)),
        _bench("test_t5_peak_memory_800mb", "transport",
               {**_ratio(800e6, 1.36e9, 2.2, 2.05), "peak_extra_bytes": 1.36e9,
                "array_bytes": 800_000_000}),
        _bench("test_c1_cache_hit_latency", "cli", _ratio(0.010, 0.016, 2.0, 1.5)),
        _bench("test_q1_queued_jobs_vs_task_spooler", "queue",
               {**_ratio(2.0, 3.0, 2.0, 1.3), "jobs": 200, "tsp_s": 0.25,
                "gnu_parallel_s": 0.5}),
        _bench("test_floors", "peers-arrays",
               {"sizes_mb": SIZES, "copy_seconds": [0.0004, 0.002, 0.02],
                "hash_seconds": [0.004, 0.02, 0.19]}),
        _bench("test_seamless", "peers-arrays", _sweep([0.01, 0.05, 0.5], 2.3)),
        _bench("test_peer[multiprocessing.Pool]", "peers-arrays", _sweep([0.03, 0.4, 3.0], 14)),
        _bench("test_tiny_tasks[Dask submit]", "peers-tasks",
               _ratio(2.0, 0.05, INF, 0.5, per_task_us=48.0, peer_per_task_us=2000.0)),
        _bench("test_t1_breakdown_400mb", "transport",
               {**_ratio(0.30, 0.42, INF, 1.1),
                "floors_ms": {"hash": 190.0, "copy": 20.0, "fused_copy_and_hash": 195.0,
                              "compute_in_process": 90.0},
                "stages_ms": {"build_hash_and_copy_in": 230.0, "compute_in_worker": 95.0,
                              "dispatch_transfer_map_back": 95.0, "total": 420.0,
                              "result_hash_after_run": 180.0},
                "totals_ms": [420.0, 431.0]}),
    ]
    retry = [_bench("test_t1_round_trip_400mb", "transport", _ratio(0.400, 0.560, 1.5, 1.1))]
    return first, retry


JUNIT = """<?xml version="1.0" encoding="utf-8"?><testsuites><testsuite name="pytest">
<testcase classname="bench.bench_peers_arrays" name="test_peer[Ray]">
<skipped type="pytest.skip" message="Skipped: ray is not importable here">...</skipped></testcase>
<testcase classname="bench.bench_pool" name="test_p1_tiny_tasks">
<skipped type="pytest.xfail" message="P1 measured 2.5x">...</skipped></testcase>
</testsuite></testsuites>"""


@pytest.fixture
def rendered(report, tmp_path):
    first, retry = _runs()
    paths = []
    for i, benchmarks in enumerate([first, retry]):
        path = tmp_path / f"run-{i}.json"
        path.write_text(json.dumps({"machine_info": MACHINE, "benchmarks": benchmarks,
                                    "commit_info": {"id": "0123456789abcdef"}}))
        paths.append(str(path))
    junit = tmp_path / "run.xml"
    junit.write_text(JUNIT)
    out, img = tmp_path / "docs" / "benchmarks.md", tmp_path / "docs" / "img"
    rc = report.main(["--benchmark-json", *paths, "--junitxml", str(junit), "--out", str(out),
                      "--img-dir", str(img), "--note", "a synthetic run"])
    assert rc == 0
    return out.read_text(), img


def _row(text, first_cell):
    rows = [line for line in text.splitlines() if line.startswith(f"| {first_cell} |")]
    assert len(rows) == 1, (first_cell, rows)
    return [cell.strip() for cell in rows[0].strip("|").split("|")]


def test_machine_and_commit(rendered):
    text, _ = rendered
    assert _row(text, "CPU")[1] == "Test CPU 9000 (SHA-NI)"
    assert _row(text, "Memory")[1] == "24.0 GiB"
    assert _row(text, "numpy")[1] == "2.4.6"
    assert _row(text, "Load average (1, 5, 15 min) as the run ended")[1] == "3.2, 2.5, 1.0"
    assert "commit `0123456789ab`" in text
    assert "Note: a synthetic run" in text


def test_ratio_table_uses_the_retry_and_states_verdicts(rendered):
    text, _ = rendered
    t1 = _row(text, "T1")
    assert t1[4] == "1.400" and t1[5] == "1.50" and t1[6] == "1.10"  # the retry's 0.56 / 0.40
    assert t1[7] == "within bound"
    assert _row(text, "T3")[7] == "**over bound**"  # 12x against a bound of 11x
    assert _row(text, "P1")[7] == "over bound (known, marked xfail)"
    assert _row(text, "P2 [mpire]")[7] == "report"
    assert "| test_seamless |" not in text  # the sweep is in its own table


def test_peer_sweep_breakdown_and_rates(rendered):
    text, _ = rendered
    pool = _row(text, "multiprocessing.Pool")
    assert pool[1:4] == ["30.0 ms", "400.0 ms", "3.00 s"]
    assert pool[4] == "6.00"  # 3.0 s / seamless's 0.5 s at 400 MB
    assert pool[5] == "14.29"  # 3.0 s / (0.19 + 0.02) s, the floors of the same run
    assert pool[6] == "2.00x of 400 MB"
    assert "`test_peer[Ray]`: not measured: ray is not importable here" in text
    assert "1.70x the array" in text
    total = _row(text, "**total** (T1's subject)")
    assert total[1] == "420" and total[3] == "+120"
    # seamless: the median of its per-task times beside each peer, 50 us
    assert _row(text, "seamless .start() + .run()")[1] == "20,000"
    assert _row(text, "Dask submit")[1] == "500"
    assert _row(text, "seamless parallel()")[1] == "8,000"
    assert _row(text, "`tsp -S 2`")[1] == "1.25"


def test_plots_are_800_px_wide_pngs(rendered):
    text, img = rendered
    for name in ("transport.png", "tasks.png", "startup.png"):
        data = (img / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n", name
        width, height = struct.unpack(">II", data[16:24])
        assert width == 800 and 200 <= height <= 1000, (name, width, height)
        assert f"(img/{name})" in text


def test_bad_input_names_the_file(report, tmp_path, capsys):
    missing = tmp_path / "nowhere.json"
    assert report.main(["--benchmark-json", str(missing), "--out", str(tmp_path / "o.md")]) == 2
    assert f"cannot read benchmark JSON {missing}" in capsys.readouterr().err
    junk = tmp_path / "junk.json"
    junk.write_text("{}")
    assert report.main(["--benchmark-json", str(junk), "--out", str(tmp_path / "o.md")]) == 2
    assert "is not pytest-benchmark JSON" in capsys.readouterr().err
    assert not (tmp_path / "o.md").exists()


def test_row_ids(report):
    assert report.row_id("test_t1f_first_use_after_trim") == "T1F"
    assert report.row_id("test_p2_tiny_tasks_other_peers[loky]") == "P2 [loky]"
    assert report.row_id("test_miss_latency") == "miss latency"
    assert report.row_id("test_t1_breakdown_400mb") == "T1 stages"
